"""Sign-up and API-token forms."""
from django import forms
from django.contrib.auth.forms import UserCreationForm


class ApiTokenForm(forms.Form):
    name = forms.CharField(max_length=100, widget=forms.TextInput(attrs={"placeholder": "e.g. laptop script"}))
    team = forms.ModelChoiceField(queryset=None, empty_label=None,
                                  help_text="The token sees and submits to this team only.")

    def __init__(self, user, *args, **kwargs):
        from explorer.accounts.teams import user_teams

        super().__init__(*args, **kwargs)
        self.fields["team"].queryset = user_teams(user)


class SignupForm(UserCreationForm):
    pass
