"""Which jobs a user may see: those of their teams (with a team-scoped API token, that team's
only), on every page, API route and websocket."""
from django.db.models import Q
from django.http import Http404

from explorer.jobs import kinds
from explorer.jobs.models import Job


def jobs_visible_to(user):
    """Jobs of the user's teams: the only jobs a user may see anywhere (with a team-scoped API
    token, that team's only); of a private kind (a chat's turns), the user's own only."""
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
