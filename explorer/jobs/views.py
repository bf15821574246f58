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
    page, rows = _page_of(jobs, request.GET.get("page"))
    members, role = teams.members_and_role(team, request.user)
    query = {k: v for k, v in filters.items() if v}
    return render(request, "explorer/queue.html", {
        "jobs": rows, "page": page, "status": filters["status"], "team": team, "nav": "queue",
        "statuses": ["queued", "running", "succeeded", "failed", "cancelled"],
        "filters": filters, "filter_query": urlencode(query),
        "status_query": urlencode({k: v for k, v in query.items() if k != "status"}),
        "members": members, "families": engine_families(), "role": role,
        "searching": any(v for k, v in filters.items() if k != "status"),
    })


def _page_of(jobs, number, per_page=50):
    """The page ``number`` of ``jobs`` (Paginator.get_page's reading: not a number → the first,
    past the end → the last) and its rows as static/js/queue.js fills them in (a job's spec is
    for its own page, not a row). The count is read once (Paginator would read it again)."""
    paginator = Paginator(jobs, per_page)
    try:
        n = max(1, int(number))
    except (TypeError, ValueError):
        n = 1
    rows, paginator.count = services.job_page(jobs, (n - 1) * per_page, per_page, spec=False)
    page = paginator.get_page(n)
    if page.number != n:  # past the end: the last page's rows
        rows, _ = services.job_page(jobs, (page.number - 1) * per_page, per_page, spec=False)
    return page, [services.row_to_dict(row) for row in rows]


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
