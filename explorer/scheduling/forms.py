"""The team page's forms: its quotas and adding a member."""
from django import forms


class TeamQuotaForm(forms.ModelForm):
    """A team's quotas (empty = no limit), edited by its admins."""

    class Meta:
        from explorer.accounts.models import Team

        model = Team
        fields = ["max_running", "max_running_per_user", "max_active_per_user", "gpu_hours_per_day",
                  "gpu_hours_per_day_per_user"]
        labels = {"max_running": "Running jobs (team)", "max_running_per_user": "Running jobs per member",
                  "max_active_per_user": "Queued + running per member", "gpu_hours_per_day": "GPU-hours / day (team)",
                  "gpu_hours_per_day_per_user": "GPU-hours / day per member"}
        widgets = {f: forms.NumberInput(attrs={"placeholder": "no limit", "min": 0}) for f in fields}


class MemberForm(forms.Form):
    username = forms.CharField(max_length=150, widget=forms.TextInput(attrs={"placeholder": "username"}))
    role = forms.ChoiceField(choices=[("member", "member"), ("maintainer", "maintainer"), ("admin", "admin")],
                             initial="member")
