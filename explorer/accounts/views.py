"""Sign-up, the home redirect, the account page (API tokens) and switching team; ``team_or_404``
and ``safe_next`` for every app's views."""
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from explorer.accounts.forms import ApiTokenForm, SignupForm
from explorer.accounts.models import ApiToken
from explorer.accounts.teams import create_personal_team, user_teams


def safe_next(request):
    """The ``next`` URL of a form, only when it stays on this site."""
    nxt = request.POST.get("next", "")
    return nxt if url_has_allowed_host_and_scheme(nxt, {request.get_host()}, request.is_secure()) else None


def team_or_404(request):
    if request.team is None:
        raise Http404("You belong to no team yet; ask an admin to add you to one.")
    return request.team


def home(request):
    return redirect("compose" if request.user.is_authenticated else "login")


def signup(request):
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        create_personal_team(user)
        login(request, user)
        messages.success(request, "Welcome! Your personal team is ready.")
        return redirect("compose")
    return render(request, "registration/signup.html", {"form": form})


@login_required
def account(request):
    current = request.team.pk if request.team else None
    form = ApiTokenForm(request.user, request.POST or None, initial={"team": current})
    new_token = None
    if request.method == "POST" and form.is_valid():
        _, new_token = ApiToken.issue(request.user, form.cleaned_data["name"], team=form.cleaned_data["team"])
        form = ApiTokenForm(request.user, initial={"team": current})
    return render(request, "explorer/account.html", {
        "form": form, "new_token": new_token, "nav": "account",
        "tokens": ApiToken.objects.filter(user=request.user, revoked_at=None).select_related("team"),
        "teams": user_teams(request.user),
    })


@login_required
@require_POST
def token_revoke(request, token_id):
    token = get_object_or_404(ApiToken, pk=token_id, user=request.user, revoked_at=None)
    token.revoked_at = timezone.now()
    token.save(update_fields=["revoked_at"])
    messages.info(request, f"Token “{token.name}” revoked.")
    return redirect("account")


@login_required
@require_POST
def switch_team(request):
    team = user_teams(request.user).filter(pk=request.POST.get("team")).first()
    if team is None:
        raise Http404("No such team")
    request.session["team_id"] = team.pk
    return redirect(safe_next(request) or reverse("queue"))
