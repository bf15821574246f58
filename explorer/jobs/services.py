"""Jobs as the web side keeps and shows them: the refusal type (``SpecError``), the websocket
groups, the numbered event log (``append_events``, ``record_status``) and its broadcast
(``publish``, with every place in line after a status change), the history search, cancel, places
in line, and a job as the API and pages show it (``job_rows``, ``row_to_dict``, ``job_to_dict``).

A job's life: a kind's app validates it and ``explorer.jobs.submission`` saves and enqueues it;
its Celery task runs the best queued job of its route inside ``explorer.jobs.lifecycle.job_run``.
"""
import logging
import time

from django.db import transaction
from django.utils import timezone

from explorer.jobs.models import Job, JobEvent
from explorer.jobs.publisher import publisher
from explorer.jobs.recorder import SUMMARY_KEYS, EventRecorder, EventStoreUnavailable  # noqa: F401 (the worker's event path)

log = logging.getLogger(__name__)


class SpecError(Exception):
    """A job spec the engine or the app refused; ``errors`` maps dotted field names to messages."""

    def __init__(self, errors):
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def job_group(job_id):
    return f"job.{job_id}"


def team_group(team_id):
    return f"team.{team_id}"


# ---------------------------------------------------------------------------- options
def enqueue(job_id):
    from explorer.jobs import submission

    submission.enqueue(job_id)


def storable(value):
    """``value`` with every NUL character replaced by U+FFFD: PostgreSQL's text and jsonb cannot
    hold U+0000, which a user's text, a name or a model's sample may contain (SQLite can, so the
    same data must not fail on one database only). Recurses into dicts, lists and tuples."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(storable(v) for v in value)
    return value


def append_events(job_id, events, **job_fields):
    """Append ``(kind, data)`` events to a job's log and update the job row, atomically.

    Sequence numbers come from the job row inside the transaction, so every writer (worker, web,
    reaper) numbers events without gaps or collisions. Returns the messages to broadcast.
    """
    now = time.time()
    with transaction.atomic():
        last_seq = Job.objects.select_for_update().filter(pk=job_id).values_list("last_seq", flat=True).get()
        rows = [
            JobEvent(job_id=job_id, seq=last_seq + i, kind=kind, payload=storable(data), ts=data.pop("_ts", now))
            for i, (kind, data) in enumerate(events, start=1)
        ]
        JobEvent.objects.bulk_create(rows)
        Job.objects.filter(pk=job_id).update(last_seq=last_seq + len(rows), **storable(job_fields))
    return [row.as_message() for row in rows]


def publish(job_id, messages, team_id=None, places=False):
    """Send a batch of events to the job's websocket group in one message, and the job's brief to
    its team's group when ``team_id`` is given, with ``places`` the team's queued jobs' places in
    line (``team_places``: after a status change, so that no queue page has to refetch the list to
    learn them). Returns at once: ``explorer.jobs.publisher`` sends in the background, in order
    (the caller, often a training step, does not wait for Redis)."""
    if not messages and team_id is None:
        return
    pairs = []
    if messages:
        pairs.append((job_group(job_id), {"type": "job.events", "events": messages}))
    if team_id is not None:
        brief = {"type": "team.job", "job": job_brief_by_id(job_id)}
        if places:
            brief["places"] = team_places(team_id)
        pairs.append((team_group(team_id), brief))
    try:
        publisher().send(pairs)
    except Exception:  # noqa: BLE001 - events are saved; clients catch up from the log on reconnect
        log.warning("could not broadcast %d events of job %s", len(messages), job_id, exc_info=True)


def job_brief_by_id(job_id):
    job = Job.objects.select_related("owner", "team").get(pk=job_id)
    return job_to_dict(job, position=queue_positions([job]).get(job.pk))


def broadcast_team(job_id):
    """Tell the job's team that it is queued (or moved in line), with every place in line."""
    job = Job.objects.only("team_id").get(pk=job_id)
    publish(job_id, [], team_id=job.team_id, places=True)


TEAM_PLACES_MAX = 500


def team_places(team_id):
    """{job id (a string): {"position", "starts_in_s"}} for the team's queued jobs, the oldest
    ``TEAM_PLACES_MAX`` of them: one computation per change, sent to every page watching the team."""
    queued = list(Job.objects.filter(team_id=team_id, status=Job.Status.QUEUED).order_by("pk")[:TEAM_PLACES_MAX])
    return {str(pk): place for pk, place in queue_positions(queued).items()}


def record_status(job_id, status, *, expect=None, **fields):
    """Move a job to a new status, log it as an event and tell the job's and team's watchers.

    With ``expect`` (statuses), the move happens only from one of them; returns whether it did.
    """
    data = {"status": status}
    for key in ("error", "worker", "device"):
        if fields.get(key):
            data[key] = fields[key]
    if status in Job.TERMINAL:
        fields.setdefault("finished_at", timezone.now())
    with transaction.atomic():
        if expect is not None and not Job.objects.select_for_update().filter(pk=job_id, status__in=expect).exists():
            return False
        messages = append_events(job_id, [("status", data)], status=status, **fields)
    team_id = Job.objects.values_list("team_id", flat=True).get(pk=job_id)
    publish(job_id, messages, team_id=team_id, places=True)
    return True


def search_jobs(qs, *, status=None, owner=None, family=None, q=None, since=None, until=None, kind=None):
    """The job history's filters (the queue page and GET /api/v1/jobs); ValueError for a bad date."""
    import datetime

    if status:
        qs = qs.filter(status__in=[s for s in status.split(",") if s])
    if owner:
        qs = qs.filter(owner__username=owner)
    if kind:
        qs = qs.filter(kind=kind)
    if family:
        qs = qs.filter(kind="train", spec__model__family=family)
    if q:
        q = q.strip()
        if q.lstrip("#").isdigit():
            qs = qs.filter(pk=int(q.lstrip("#")))
        else:
            qs = qs.filter(name__icontains=storable(q))
    for value, lookup, shift in ((since, "created_at__gte", 0), (until, "created_at__lt", 1)):
        if value:
            try:
                day = datetime.date.fromisoformat(value)
            except ValueError:
                raise ValueError(f"expected a date as YYYY-MM-DD, got {value!r}") from None
            start = datetime.datetime.combine(day + datetime.timedelta(days=shift), datetime.time.min,
                                              tzinfo=datetime.UTC)
            qs = qs.filter(**{lookup: start})
    return qs


def cancel_job(job):
    """Cancel a queued job at once; ask a running one to stop at its next step.

    Returns False when the job had already ended. A queued job's task, when a worker takes it,
    finds the job cancelled and returns without running.
    """
    if record_status(job.pk, Job.Status.CANCELLED, expect=[Job.Status.QUEUED], cancel_requested=True):
        return True
    return bool(Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING).update(cancel_requested=True))


def queue_positions(jobs):
    """For each queued job, {"position" (1 = next), "starts_in_s"}: every kind in the order
    ``explorer.jobs.queue`` will run them (priority, fair share, quotas), with an estimated
    start. None for jobs not queued."""
    from explorer.jobs import queue as scheduling

    return scheduling.positions(jobs)


# fields the app fills in from ids; not for users' eyes
SERVER_PATHS = ("data.path", "data.tokenizer_file", "train.init_from", "tokenizer.path")


def public_spec(spec):
    """A job's spec as users see it: the app's file paths left out (datasets, tokenizers and
    checkpoints are named by id and name instead)."""
    return {section: {k: v for k, v in values.items() if f"{section}.{k}" not in SERVER_PATHS}
            for section, values in spec.items()}


# A job as lists read it: values(), not model instances (a page of 50 jobs built 150 of them,
# with their teams and owners, a fifth of GET /api/v1/jobs; bench/load.py --profile).
ROW_FIELDS = ("id", "name", "team_id", "team__name", "owner__username", "status", "queue", "route", "priority",
              "kind", "params", "step", "total_steps", "last_seq", "summary", "worker", "device", "error",
              "cancel_requested", "attempt", "parent_id", "parent_step", "created_at", "started_at", "finished_at",
              "dataset_id", "dataset__name")


def job_page(qs, offset, limit, spec=True):
    """Rows ``offset`` to ``offset + limit`` of ``qs`` (as ``job_rows``) and how many ``qs`` holds.
    Two queries: a ``COUNT(*) OVER ()`` riding on the rows saved one but made PostgreSQL join and
    sort every matching job before the LIMIT (49-80 ms instead of 2-4 on 10,000 jobs a team,
    bench/load.py --database postgres --profile)."""
    return job_rows(qs[offset:offset + limit], spec=spec), qs.count()


def job_rows(qs, spec=True):
    """``qs`` (a page of jobs, in its order) as rows for ``row_to_dict``, with ``queue_positions``'
    entry of each under "place"."""
    from types import SimpleNamespace

    rows = list(qs.values(*ROW_FIELDS, *(("spec",) if spec else ())))
    places = queue_positions([SimpleNamespace(pk=r["id"], status=r["status"], route=r["route"], queue=r["queue"])
                              for r in rows])
    for row in rows:
        row["place"] = places[row["id"]]
    return rows


def job_to_dict(job, position=None, spec=True):
    """The job as the API and pages show it; ``position`` is its ``queue_positions`` entry;
    without ``spec`` (a queue row: its spec is for the job's own page) the spec is not read."""
    row = {"id": job.pk, "name": job.name, "team_id": job.team_id, "team__name": job.team.name,
           "owner__username": job.owner.get_username(), "dataset__name": job.dataset.name if job.dataset_id else None,
           **{f: getattr(job, f) for f in ROW_FIELDS if "__" not in f and f != "id"}}
    if spec:
        row["spec"] = job.spec
    return row_to_dict(row, position)


def row_to_dict(row, position=None):
    """A row of ``ROW_FIELDS`` (and "spec" when it was read) as the API and pages show it: the one
    place that says what a job's dict holds (JobOut in the API's schema)."""
    from explorer.jobs.queue import PRIORITY_NAMES

    if position is None:
        position = row.get("place")
    place = position if isinstance(position, dict) else {"position": position, "starts_in_s": None}
    queued = row["status"] == Job.Status.QUEUED
    out = {
        "id": row["id"],
        "name": row["name"] or f"Job #{row['id']}",
        "team": {"id": row["team_id"], "name": row["team__name"]},
        "owner": row["owner__username"],
        "status": row["status"],
        "queue": row["queue"],
        "position": place["position"] if queued else None,
        "starts_in_s": place["starts_in_s"] if queued else None,
        "priority": PRIORITY_NAMES.get(row["priority"], "normal"),
        "kind": row["kind"],
        "params": row["params"],
        "step": row["step"],
        "total_steps": row["total_steps"],
        "last_seq": row["last_seq"],
        "summary": row["summary"],
        "worker": row["worker"],
        "device": row["device"],
        "error": row["error"],
        "cancel_requested": row["cancel_requested"],
        "attempt": row["attempt"],
        "parent": {"id": row["parent_id"], "step": row["parent_step"], "url": f"/jobs/{row['parent_id']}/"}
        if row["parent_id"] else None,
        "created_at": row["created_at"].isoformat(),
        "started_at": row["started_at"].isoformat() if row["started_at"] else None,
        "finished_at": row["finished_at"].isoformat() if row["finished_at"] else None,
    }
    if "spec" in row:
        out["spec"] = public_spec(row["spec"])
    out["dataset"] = row["dataset__name"] if row["dataset_id"] else None
    out["url"] = f"/jobs/{row['id']}/"
    return out
