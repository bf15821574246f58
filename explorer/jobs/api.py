"""The jobs API under /api/v1/jobs: submit, list and search, one job, its events (and their JSON
Schema under /api/v1/events/schema), export, cancel, priority. Every job query goes through
``jobs_visible_to``. Training's routes under /jobs/{id}/ (checkpoints, retry, attention detail) are
in ``explorer.training.api``; the API's root, authentication and error handlers in ``config.api``."""
import csv
import io
import json
from typing import Any

import orjson
from django.http import HttpResponse
from ninja import Router, Schema, Status
from ninja.errors import HttpError

from explorer.accounts.api import ErrorOut, TeamRef, team_or_400
from explorer.jobs import queue as scheduling
from explorer.jobs import services, submission
from explorer.jobs.access import get_job_or_404, jobs_visible_to
from explorer.jobs.models import JobEvent


# ---------------------------------------------------------------------------- schemas
class JobIn(Schema):
    name: str = ""
    team: str | None = None
    priority: str = "normal"
    model: dict[str, Any] = {}
    data: dict[str, Any] = {}
    train: dict[str, Any] = {}


class JobOut(Schema):
    id: int
    name: str
    team: TeamRef
    owner: str
    status: str
    queue: str
    position: int | None
    params: int
    step: int
    total_steps: int
    last_seq: int
    summary: dict[str, Any]
    worker: str
    device: str
    error: str
    cancel_requested: bool
    created_at: str
    started_at: str | None
    finished_at: str | None
    spec: dict[str, Any]
    dataset: str | None
    url: str
    attempt: int = 1
    parent: dict[str, Any] | None = None
    priority: str = "normal"
    starts_in_s: float | None = None
    kind: str = "train"


class JobList(Schema):
    count: int
    jobs: list[JobOut]


class EventOut(Schema):
    seq: int
    kind: str
    ts: float
    data: dict[str, Any]


class EventList(Schema):
    job: int
    last_seq: int
    events: list[EventOut]


# ---------------------------------------------------------------------------- jobs
jobs = Router(tags=["jobs"])


@jobs.post("", response={201: JobOut, 400: ErrorOut, 429: ErrorOut}, summary="Submit a training job")
def create_job(request, payload: JobIn):
    team = team_or_400(request, payload.team)
    job = submission.submit(request.user, team, "train", payload.dict(include={"model", "data", "train"}), name=payload.name,
                            priority=payload.priority)
    return Status(201, services.job_to_dict(job, position=services.queue_positions([job])[job.pk]))


@jobs.get("", response={200: JobList, 400: ErrorOut}, summary="Jobs of your teams, newest first; filter and search")
def list_jobs(request, team: str | None = None, status: str | None = None, limit: int = 50, offset: int = 0,
              owner: str | None = None, family: str | None = None, q: str | None = None,
              since: str | None = None, until: str | None = None, kind: str | None = None):
    """``status`` (comma-separated), ``owner`` (username), ``family`` (decoder, encoder,
    encoder_decoder), ``kind`` (train, inference, tokenizer), ``q`` (in the name, or "#12" for a
    job id), ``since`` / ``until`` (dates, YYYY-MM-DD, on the creation time, inclusive)."""
    qs = jobs_visible_to(request.user)
    if team:
        qs = qs.filter(team=team_or_400(request, team))
    try:
        qs = services.search_jobs(qs, status=status, owner=owner, family=family, q=q, since=since, until=until, kind=kind)
    except ValueError as exc:
        return Status(400, {"detail": str(exc)})
    if offset < 0:
        raise HttpError(400, f"offset must be ≥ 0 (got {offset})")
    limit = max(1, min(limit, 200))
    rows, count = services.job_page(qs, offset, limit)
    # Written as JSON here rather than through JobList: ninja's validation of 50 plain dicts took a
    # fifth of the request (bench/load.py's quiet figures). row_to_dict's keys are JobOut's, which
    # tests/explorer/jobs/test_api.py checks against the schema.
    body = {"count": count, "jobs": [services.row_to_dict(row) for row in rows]}
    return HttpResponse(orjson.dumps(body), content_type="application/json")  # a tenth of json.dumps' time


@jobs.get("/{int:job_id}", response=JobOut, summary="One job")
def get_job(request, job_id: int):
    job = get_job_or_404(request.user, job_id)
    return services.job_to_dict(job, services.queue_positions([job])[job.pk])


@jobs.get("/{int:job_id}/events", response=EventList, summary="A job's events after a sequence number")
def job_events(request, job_id: int, after: int = 0, limit: int = 5000, kind: str | None = None,
               exclude: str | None = None, last: bool = False, brief: bool = False):
    """Events with seq > ``after``, oldest first, at most ``limit``. ``kind`` (comma-separated)
    keeps only those kinds, ``exclude`` leaves them out (``exclude=attention`` skips the large
    attention maps); ``last`` takes the newest ``limit`` instead of the oldest (still in order);
    ``brief`` gives each event's data as just its ``step``: an index of, say, the attention maps
    without their bytes."""
    job = get_job_or_404(request.user, job_id)
    rows = JobEvent.objects.filter(job=job, seq__gt=max(0, after))
    if kind:
        rows = rows.filter(kind__in=kind.split(","))
    if exclude:
        rows = rows.exclude(kind__in=exclude.split(","))
    limit = max(1, min(limit, 20000))
    rows = rows.order_by("-seq" if last else "seq")
    if brief:
        rows = rows.values_list("seq", "kind", "ts", "payload__step")[:limit]
        events = [{"seq": seq, "kind": k, "ts": ts, "data": {"step": step}} for seq, k, ts, step in rows]
    else:
        events = [r.as_message() for r in rows[:limit]]
    if last:
        events.reverse()
    return {"job": job.pk, "last_seq": job.last_seq, "events": events}


EXPORT_STEP_COLUMNS = ("step", "loss", "lr", "grad_norm", "tokens_per_s", "mfu", "clipped", "spike", "update_ratio")
EXPORT_EVAL_COLUMNS = ("train_loss", "val_loss", "accuracy")


def _csv_cell(value):
    if value is None:
        return ""
    return int(value) if isinstance(value, bool) else value  # clipped / spike as 1 / 0


@jobs.get("/{int:job_id}/export", response={200: None, 400: ErrorOut, 404: ErrorOut},
          summary="Download a job's history as CSV (one row per step) or JSON (its events)")
def export_job(request, job_id: int, format: str = "json", exclude: str | None = "attention"):
    """``format=json``: the job and all its events, oldest first, less the kinds in ``exclude``
    (comma-separated; by default the large attention maps; ``exclude=`` keeps everything).
    ``format=csv``: one row per logged step (columns ``EXPORT_STEP_COLUMNS``; clipped and spike as
    1 / 0), with the evaluation at that step merged in (``EXPORT_EVAL_COLUMNS``); a missing value is
    an empty cell."""
    job = get_job_or_404(request.user, job_id)
    if format not in ("csv", "json"):
        return Status(400, {"detail": f"unknown format '{format}'; choose from ['csv', 'json']",
                            "errors": {"format": "choose csv or json"}})
    rows = JobEvent.objects.filter(job=job).order_by("seq")
    if format == "json":
        if exclude:
            rows = rows.exclude(kind__in=exclude.split(","))
        body = json.dumps({"job": services.job_to_dict(job), "events": [r.as_message() for r in rows]})
        response = HttpResponse(body, content_type="application/json")
    else:
        by_step: dict[int, dict] = {}
        for kind, data in rows.filter(kind__in=("step", "eval")).values_list("kind", "payload"):
            columns = EXPORT_STEP_COLUMNS if kind == "step" else EXPORT_EVAL_COLUMNS
            by_step.setdefault(data["step"], {}).update({c: data.get(c) for c in columns})
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        header = EXPORT_STEP_COLUMNS + EXPORT_EVAL_COLUMNS
        writer.writerow(header)
        for step in sorted(by_step):
            values = {**by_step[step], "step": step}
            writer.writerow([_csv_cell(values.get(c)) for c in header])
        response = HttpResponse(out.getvalue(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="job-{job.pk}.{format}"'
    return response


@jobs.post("/{int:job_id}/cancel", response={200: JobOut, 403: ErrorOut, 409: ErrorOut}, summary="Cancel a queued or running job")
def cancel_job(request, job_id: int):
    job = get_job_or_404(request.user, job_id)
    try:
        scheduling.check_can_act(request.user, job, "cancel")
    except scheduling.NotAllowed as exc:
        return Status(403, {"detail": str(exc)})
    if not services.cancel_job(job):
        return Status(409, {"detail": f"Job {job.pk} has already ended ({job.status})"})
    job.refresh_from_db()
    return services.job_to_dict(job, services.queue_positions([job])[job.pk])


class PriorityIn(Schema):
    priority: str


@jobs.post("/{int:job_id}/priority", response={200: JobOut, 400: ErrorOut, 403: ErrorOut, 409: ErrorOut},
           summary="Change a queued job's priority (low, normal; high for maintainers)")
def set_priority(request, job_id: int, payload: PriorityIn):
    job = get_job_or_404(request.user, job_id)
    try:
        scheduling.set_priority(request.user, job, payload.priority)
    except ValueError as exc:
        return Status(400, {"detail": str(exc), "errors": {"priority": str(exc)}})
    except scheduling.NotAllowed as exc:
        return Status(403 if job.status == "queued" else 409, {"detail": str(exc)})
    job.refresh_from_db()
    return services.job_to_dict(job, services.queue_positions([job])[job.pk])


@jobs.post("/{int:job_id}/move-to-top", response={200: JobOut, 403: ErrorOut, 409: ErrorOut},
           summary="Put a queued job first among those of its priority (maintainers)")
def move_to_top(request, job_id: int):
    job = get_job_or_404(request.user, job_id)
    try:
        scheduling.move_to_top(request.user, job)
    except scheduling.NotAllowed as exc:
        return Status(403 if job.status == "queued" else 409, {"detail": str(exc)})
    job.refresh_from_db()
    return services.job_to_dict(job, services.queue_positions([job])[job.pk])


# ---------------------------------------------------------------------------- the event contract
events_router = Router(tags=["jobs"])


@events_router.get("/schema", response=dict[str, Any], summary="The events a job emits, as JSON Schema")
def event_schema(request):
    """Every event kind of ``GET /api/v1/jobs/{id}/events`` and the job's websocket, with its keys
    and their types: a JSON Schema (draft 2020-12) built from ``engine.config.events``' definitions. An
    event's ``data`` is the schema's object without its ``kind``; ``x-kinds`` says which jobs
    emit each kind and which keys the job's ``summary`` keeps."""
    from engine.config.events import event_schema as schema

    return schema()
