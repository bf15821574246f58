"""Which teams a user belongs to, and which one they are working in."""
from django.db.models import Q
from django.http import Http404
from django.utils.text import slugify

from explorer.accounts.models import Membership, Team
from explorer.jobs.models import Job


def user_teams(user):
    """The user's teams; only the token's team for a request made with a team-scoped API token."""
    if not user.is_authenticated:
        return Team.objects.none()
    teams = Team.objects.filter(memberships__user=user)
    if getattr(user, "token_team_id", None) is not None:
        teams = teams.filter(pk=user.token_team_id)
    return teams.order_by("name")


def jobs_visible_to(user):
    """Jobs of the user's teams: the only jobs a user may see anywhere (with a team-scoped API
    token, that team's only); of a private kind (a chat's turns), the user's own only."""
    from explorer.jobs import kinds

    if not user.is_authenticated:
        return Job.objects.none()
    jobs = Job.objects.filter(team__memberships__user=user)
    private = kinds.private_kinds()
    if private:
        jobs = jobs.exclude(Q(kind__in=private) & ~Q(owner=user))
    if getattr(user, "token_team_id", None) is not None:
        jobs = jobs.filter(team_id=user.token_team_id)
    return jobs.select_related("team", "owner", "dataset")


def get_job_or_404(user, job_id):
    job = jobs_visible_to(user).filter(pk=job_id).first()
    if job is None:
        raise Http404("No such job")  # the same answer whether it exists in another team or not
    return job


def resolve_team(user, team_ref=None, session=None):
    """The team named by id or slug, else the session's current team, else the user's first."""
    teams = user_teams(user)
    if team_ref not in (None, ""):
        ref = str(team_ref)
        if "\x00" in ref:  # no team is named so, and PostgreSQL refuses to compare with NUL
            raise Http404(f"You are not a member of team {team_ref!r}")
        team = teams.filter(Q(slug=ref) | Q(pk=int(ref)) if ref.isdigit() else Q(slug=ref)).first()
        if team is None:
            raise Http404(f"You are not a member of team {team_ref!r}")
        return team
    if session is not None and session.get("team_id"):
        team = teams.filter(pk=session["team_id"]).first()
        if team is not None:
            return team
    return teams.first()


def create_personal_team(user):
    base = slugify(user.get_username()) or "team"
    slug, n = base, 1
    while Team.objects.filter(slug=slug).exists():
        n += 1
        slug = f"{base}-{n}"
    team = Team.objects.create(name=f"{user.get_username()}'s team", slug=slug)
    Membership.objects.create(user=user, team=team, role=Membership.Role.ADMIN)
    return team


def add_member(team, username, role):
    """Add ``username`` to ``team`` with ``role``; returns an error message or ""."""
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        return f"no user {username!r}: they sign up first"
    if Membership.objects.filter(team=team, user=user).exists():
        return f"{username} is already in {team.name}"
    Membership.objects.create(team=team, user=user, role=role)
    return ""


def change_member(team, actor, user_id, action, role=None):
    """An admin changes a member's role or removes them; the team keeps at least one admin.
    Returns an error message or ""."""
    membership = Membership.objects.filter(team=team, user_id=user_id).select_related("user").first() \
        if str(user_id or "").isdigit() else None
    if membership is None:
        return "no such member"
    admins = Membership.objects.filter(team=team, role=Membership.Role.ADMIN)
    last_admin = membership.role == Membership.Role.ADMIN and admins.count() == 1
    if action == "remove":
        if last_admin:
            return f"{membership.user.get_username()} is the last admin of {team.name}: make another member admin first"
        membership.delete()
        return ""
    if role not in Membership.Role.values:
        return f"unknown role {role!r}; choose from {Membership.Role.values}"
    if last_admin and role != Membership.Role.ADMIN:
        return f"{membership.user.get_username()} is the last admin of {team.name}: make another member admin first"
    membership.role = role
    membership.save(update_fields=["role"])
    return ""
