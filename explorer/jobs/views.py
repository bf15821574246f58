"""The queue page (a team's queue and history), a job's page (each kind draws its own: the kind's
``page``) and cancelling a job."""
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

import engine
from explorer.accounts import teams
from explorer.accounts.views import safe_next, team_or_404
from explorer.jobs import kinds, services
from explorer.jobs import queue as scheduling
from explorer.jobs.access import get_job_or_404, jobs_visible_to


@login_required
def queue(request):
    """The team's queue and job history: filters and search in the query string, 50 a page."""
    team = team_or_404(request)
    jobs = jobs_visible_to(request.user).filter(team=team)
    filters = {k: request.GET.get(k, "").strip() for k in ("status", "owner", "family", "q", "since", "until", "kind")}
    try:
        jobs = services.search_jobs(jobs, **filters)
    except ValueError as exc:
        messages.warning(request, str(exc))
        filters["since"] = filters["until"] = ""
        jobs = services.search_jobs(jobs_visible_to(request.user).filter(team=team), **filters)
    # the rows as static/js/queue.js fills them in: a job's spec is for its own page, not a row
    page = Paginator(jobs, 50).get_page(request.GET.get("page"))
    rows = [services.row_to_dict(row) for row in services.job_rows(page.object_list, spec=False)]
    query = {k: v for k, v in filters.items() if v}
    return render(request, "explorer/queue.html", {
        "jobs": rows, "page": page, "status": filters["status"], "team": team, "nav": "queue",
        "statuses": ["queued", "running", "succeeded", "failed", "cancelled"],
        "filters": filters, "filter_query": urlencode(query),
        "status_query": urlencode({k: v for k, v in query.items() if k != "status"}),
        "members": team.members.order_by("username").values_list("username", flat=True),
        "families": engine_families(), "role": teams.role_of(request.user, team) or "",
        "searching": any(v for k, v in filters.items() if k != "status"),
    })


def engine_families():
    return engine.choices().get("family", [])


@login_required
def job_detail(request, job_id):
    job = get_job_or_404(request.user, job_id)
    data = services.job_to_dict(job, services.queue_positions([job])[job.pk])
    template, context = kinds.get(job.kind).page(request, job)
    return render(request, template, {"job": job, "job_data": data, **context})


@login_required
@require_POST
def job_cancel(request, job_id):
    job = get_job_or_404(request.user, job_id)
    try:
        scheduling.check_can_act(request.user, job, "cancel")
    except scheduling.NotAllowed as exc:
        messages.warning(request, str(exc))
        return redirect(safe_next(request) or reverse("job", args=[job.pk]))
    if services.cancel_job(job):
        messages.info(request, f"Cancelling {job.display_name}.")
    else:
        messages.warning(request, f"{job.display_name} has already ended.")
    return redirect(safe_next(request) or reverse("job", args=[job.pk]))
