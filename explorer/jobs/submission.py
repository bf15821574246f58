"""The one way a job of any kind is submitted (API and pages alike):

validate (the kind's ``plan``) -> priority (the user's role) -> quota (``check_submission``) ->
rate limit (RATELIMIT_JOBS) -> fit (a worker of the queue can hold its memory) -> create the row
and its "queued" event -> enqueue, after the commit, to the memory tier its estimate routes it to.

Every refusal is a ``SpecError`` by field (``priority``, ``quota``, the kind's ``fit_field``),
except the rate limit's, a ``RateLimited`` that the API answers with 429 and a Retry-After.
"""
import time

from django.db import transaction

from explorer.accounts import ratelimit
from explorer.jobs import kinds
from explorer.jobs import queue as scheduling
from explorer.jobs.models import Job
from explorer.jobs.services import SpecError, append_events, broadcast_team, storable
from explorer.scheduling import workers


class RateLimited(Exception):
    """Over RATELIMIT_JOBS; ``refusal`` has the message and the seconds to wait."""

    def __init__(self, refusal):
        super().__init__(refusal.message)
        self.refusal = refusal


def submit(user, team, kind_name, payload, *, name="", priority="normal", before_enqueue=None):
    """Submit a job of kind ``kind_name`` for ``user`` in ``team``; returns the queued ``Job``.
    ``before_enqueue(job)`` runs inside the transaction that creates it (a kind's own rows)."""
    kind = kinds.get(kind_name)
    plan = kind.plan(user, team, payload)
    try:
        priority_value = scheduling.check_priority(user, team, priority or "normal")
        scheduling.check_submission(user, team, plan.queue)
    except (ValueError, scheduling.NotAllowed) as exc:
        raise SpecError({"priority": str(exc)}) from None
    except scheduling.QuotaExceeded as exc:
        raise SpecError({"quota": str(exc)}) from None
    if (refusal := ratelimit.refuse_job(user)) is not None:
        raise RateLimited(refusal)
    try:  # against the memory of the queue's registered workers (WORKER_MEMORY_BUDGET_MB before any)
        workers.fit_gate(plan.queue, plan.memory_bytes, what=kind.fit_what)
    except workers.FitError as exc:
        raise SpecError({kind.fit_field: f"{exc}; {kind.fit_advice}"}) from None
    with transaction.atomic():
        job = Job.objects.create(
            team=team, owner=user, kind=kind.name, name=storable(str(name or plan.name)[:200]), spec=storable(plan.spec),
            queue=plan.queue, params=plan.params, total_steps=plan.total_steps, priority=priority_value,
            queue_order=time.time(), **plan.fields,
        )
        append_events(job.pk, [("status", {"status": "queued", "queue": job.queue})])
        if before_enqueue is not None:
            before_enqueue(job)
        transaction.on_commit(lambda: enqueue(job.pk))
    return job


def enqueue(job_id):
    """Send the job's message to the route its memory estimate fits now (a memory tier of its
    queue: only workers that can hold it take it), or to its plain queue when none does."""
    from celery import current_app

    from explorer.jobs import tasks  # noqa: F401 (registers the kinds' task names; tasks import this module's neighbours)

    job = Job.objects.get(pk=job_id)
    kind = kinds.get(job.kind)
    try:  # the estimate again, against the workers of now
        need = kind.memory_bytes(job)
    except Exception:  # noqa: BLE001 - an invalid spec fails on the worker, with the reason
        need = 0
    route = workers.route_for(job.queue, need)
    result = current_app.tasks[kind.task].apply_async(args=[job.pk], queue=route)
    Job.objects.filter(pk=job.pk).update(celery_task_id=result.id, route="" if route == job.queue else route)
    broadcast_team(job.pk)
