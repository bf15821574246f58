"""The team page (members, roles, quotas) and the workers page."""
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render

from explorer.accounts import teams as teams_service
from explorer.accounts.models import Membership
from explorer.accounts.views import team_or_404
from explorer.scheduling.forms import MemberForm, TeamQuotaForm


@login_required
def team(request):
    """The current team: its members and roles, and its quotas; admins change them."""
    team = team_or_404(request)
    admin = teams_service.is_admin(request.user, team)
    quota_form = TeamQuotaForm(instance=team)
    member_form = MemberForm()
    if request.method == "POST":
        if not admin:
            messages.warning(request, f"Only admins of {team.name} can change its members and quotas.")
            return redirect("team")
        action = request.POST.get("action")
        if action == "quotas":
            quota_form = TeamQuotaForm(request.POST, instance=team)
            if quota_form.is_valid():
                quota_form.save()
                messages.success(request, "Quotas saved.")
                return redirect("team")
        elif action == "add":
            member_form = MemberForm(request.POST)
            if member_form.is_valid():
                error = teams_service.add_member(team, member_form.cleaned_data["username"], member_form.cleaned_data["role"])
                if error:
                    member_form.add_error("username", error)
                else:
                    messages.success(request, f"{member_form.cleaned_data['username']} added.")
                    return redirect("team")
        elif action in ("role", "remove"):
            error = teams_service.change_member(team, request.user, request.POST.get("user"), action,
                                                request.POST.get("role"))
            if error:
                messages.warning(request, error)
            else:
                messages.success(request, "Membership updated.")
            return redirect("team")
    memberships = Membership.objects.filter(team=team).select_related("user").order_by("user__username")
    return render(request, "explorer/team.html", {
        "team": team, "admin": admin, "memberships": memberships, "quota_form": quota_form,
        "member_form": member_form, "roles": Membership.Role.values, "nav": "team",
        "role": teams_service.role_of(request.user, team),
    })


@login_required
def workers(request):
    """The workers, live (static/js/workers.js polls /api/v1/workers)."""
    from explorer.scheduling import workers as registry

    return render(request, "explorer/workers.html", {"initial": registry.workers_for(request.user), "nav": "workers"})
