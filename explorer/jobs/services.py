"""The one place where the web app meets the engine.

Views, the API, tasks and consumers call these functions; only this module imports ``engine``.
A job's life: ``create_job`` validates the spec with the engine, refuses what cannot fit, saves
the row and enqueues a Celery task; the task calls ``run_next_job``, which runs the best queued
job of its route (``explorer.scheduling.queue``). Every kind of job runs inside ``job_run`` (queued to
running, heartbeat, cancel, the last events saved, a terminal status with the reason); a training
job's work is ``engine.train`` with callbacks that append numbered events to the database and
broadcast them on the channel layer.
"""
import contextlib
import logging
import threading
import time

from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.utils import timezone

import engine
from engine.config import events
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


def fmt_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024


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
    ``explorer.scheduling.queue`` will run them (priority, fair share, quotas), with an estimated
    start. None for jobs not queued."""
    from explorer.scheduling import queue as scheduling

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
    from explorer.scheduling.queue import PRIORITY_NAMES

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


# ---------------------------------------------------------------------------- running (in a worker)
class Heartbeat(threading.Thread):
    """Marks the job alive every few seconds and notices a cancel request from the web."""

    def __init__(self, job_id, interval=5.0, poll=0.5):
        super().__init__(daemon=True, name=f"heartbeat-{job_id}")
        self.job_id, self.interval, self.poll = job_id, interval, poll
        self.cancelled, self.stopped = threading.Event(), threading.Event()

    def run(self):
        last_beat = time.monotonic()
        try:
            while not self.stopped.wait(self.poll):
                try:
                    row = Job.objects.filter(pk=self.job_id).values("status", "cancel_requested").first()
                    # Stop on a cancel request, or when the job was ended elsewhere (the reaper).
                    if row is None or row["cancel_requested"] or row["status"] != Job.Status.RUNNING:
                        self.cancelled.set()
                    if time.monotonic() - last_beat >= self.interval:
                        Job.objects.filter(pk=self.job_id).update(heartbeat_at=timezone.now())
                        last_beat = time.monotonic()
                except Exception:  # noqa: BLE001 - a database blip must not kill the job
                    log.warning("heartbeat of job %s failed", self.job_id, exc_info=True)
                    close_old_connections()
        finally:
            connection.close()

    def stop(self):
        self.stopped.set()
        self.join(timeout=5)


class JobCancelled(Exception):
    """Raised by a job's work when it sees its cancel request (``JobRun.should_stop``): the job
    ends "cancelled", with an "end" event saying so."""


class JobRun:
    """A running job as its work sees it inside ``job_run``: the row, the event ``recorder`` (the
    engine's ``on_event``), the ``heartbeat``, and the outcome, which is "succeeded" unless the
    work calls ``cancel()`` or ``fail(reason)`` or raises."""

    def __init__(self, job, recorder, heartbeat):
        self.job, self.recorder, self.heartbeat = job, recorder, heartbeat
        self.status, self.error = Job.Status.SUCCEEDED, ""
        self.t0 = time.monotonic()

    def should_stop(self):
        """Whether a cancel was requested (or the job was ended elsewhere, by the reaper)."""
        return self.heartbeat.cancelled.is_set()

    def elapsed(self):
        return time.monotonic() - self.t0

    def cancel(self):
        self.status, self.error = Job.Status.CANCELLED, ""

    def fail(self, error):
        self.status, self.error = Job.Status.FAILED, error


@contextlib.contextmanager
def job_run(job_id, worker_name, *, what="job", explain=None, on_end=None):
    """The lifecycle of every job a worker runs (training, inference, tokenizer training).

    Moves the job from queued to running atomically and yields a ``JobRun``, or yields None
    (and does nothing) when the job is no longer queued or its cancel was requested. After the
    work: ``JobCancelled`` -> cancelled; any other exception -> failed with ``explain(exc)`` (a
    kind's own wording, or None) or ``failure_reason``; the heartbeat stops; the recorder drains,
    and a database that stayed down fails the job with that reason (a job is never called a
    success without its events); ``on_end(run)`` sees the final outcome; the terminal status is
    recorded (only from running: the reaper may have taken the job) and the background
    publisher is given a moment, so the last events reach the watchers before the task returns.
    """
    now = timezone.now()
    started = Job.objects.filter(pk=job_id, status=Job.Status.QUEUED, cancel_requested=False).update(
        status=Job.Status.RUNNING, started_at=now, heartbeat_at=now, worker=worker_name
    )
    if not started:
        log.info("%s %s is no longer queued; skipping", what, job_id)
        yield None
        return
    job = Job.objects.get(pk=job_id)
    record_status(job.pk, Job.Status.RUNNING, worker=worker_name)
    run = JobRun(job, EventRecorder(job), Heartbeat(job.pk))
    run.heartbeat.start()
    ended_by_cancel = False
    try:
        yield run
    except JobCancelled:
        run.cancel()
        ended_by_cancel = True
    except Exception as exc:  # noqa: BLE001 - the reason goes on the job; the worker lives on
        log.exception("%s %s failed", what, job_id)
        run.fail((explain(exc) if explain else None) or failure_reason(job, exc))
    finally:
        run.heartbeat.stop()
    _end_run(run, what, ended_by_cancel, on_end)


def _end_run(run, what, ended_by_cancel, on_end):
    """``job_run``'s ending: the last events saved, then the terminal status, then the broadcast."""
    job_id = run.job.pk
    try:
        if ended_by_cancel:  # (a training run's engine writes its own "end")
            run.recorder(events.EndEvent(kind="end", reason="cancelled", elapsed=round(run.elapsed(), 3)))
        run.recorder.drain()
    except Exception as exc:  # noqa: BLE001 - the job cannot be called a success without its events
        log.exception("could not save the last events of %s %s", what, job_id)
        run.fail(run.error or f"{type(exc).__name__}: {exc}")
        from explorer.jobs.recorder import fill_unsaved

        try:  # what was sent and not saved is logged as lost; the final status comes after it
            fill_unsaved(job_id, f"sent live, not saved: {type(exc).__name__}")
        except Exception:  # noqa: BLE001 - the database may still be down; the status write says so
            log.warning("%s %s: could not log its unsaved events as lost", what, job_id, exc_info=True)
    finally:
        if hasattr(run.recorder, "close"):
            run.recorder.close()
    if on_end is not None:
        try:
            on_end(run)
        except Exception:  # noqa: BLE001 - the job still gets its terminal status
            log.exception("%s %s: its end hook failed", what, job_id)
    try:
        record_status(job_id, run.status, expect=[Job.Status.RUNNING], error=run.error)
    finally:
        publisher().wait(5)


def failure_reason(job, exc):
    """What a failed job's page says went wrong: an invalid spec by field, running out of memory
    with advice (and, for training, the analysis' estimate), else the exception."""
    if isinstance(exc, engine.ConfigError):
        return "Invalid job: " + "; ".join(f"{k}: {v}" for k, v in exc.errors.items())
    if is_out_of_memory(exc):
        return out_of_memory_message(job, exc)
    return f"{type(exc).__name__}: {exc}"


def run_next_job(job_id, worker_name):
    """A run message, which names the job it was sent for: run the best queued job of that job's
    route (``explorer.scheduling.queue``: maybe another, of higher priority or a user with fewer running
    jobs), then make sure the route's remaining jobs have a message waiting."""
    from explorer.scheduling import queue as scheduling

    job = Job.objects.filter(pk=job_id).only("route", "queue").first()
    route = scheduling.route_of(job) if job else settings.CELERY_TASK_DEFAULT_QUEUE
    try:
        return scheduling.run_next(route, worker_name)
    finally:
        try:
            scheduling.kick([route])
        except Exception:  # noqa: BLE001 - the reaper kicks again on its next tick
            log.warning("could not kick route %s", route, exc_info=True)


def is_out_of_memory(exc):
    """torch's OutOfMemoryError (CUDA, MPS), Python's MemoryError, or an allocator's message."""
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or (
        isinstance(exc, RuntimeError) and ("out of memory" in str(exc).lower()
                                           or "can't allocate memory" in str(exc).lower()))


def out_of_memory_message(job, exc):
    """The failure reason of a job that ran out of memory, with the analysis' estimate beside it
    for a training job, and what to change."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    estimate = ""
    if job.kind == "train":
        try:
            spec = engine.parse_spec(job.spec)
            memory = engine.analyze(spec.model, batch_size=spec.train.batch_size)["memory"]
            estimate = (f" The analysis estimated {fmt_bytes(memory['train_total'])} for training it: weights "
                        f"{fmt_bytes(memory['weights'])}, gradients {fmt_bytes(memory['gradients'])}, optimiser "
                        f"state {fmt_bytes(memory['optimizer'])}, activations {fmt_bytes(memory['activations'])}.")
        except Exception:  # noqa: BLE001 - the reason matters more than the estimate
            pass
    from explorer.jobs import kinds

    advice = getattr(kinds.KINDS.get(job.kind), "out_of_memory_advice", "")  # what to change
    return f"Out of memory on {job.device or job.queue}: {first}.{estimate} {advice}".rstrip()


def reap_stale_jobs(timeout_s=None):
    """Take running jobs from workers that stopped sending heartbeats (killed, lost their host...):
    requeued to resume from their last checkpoint (``JOB_AUTO_RETRIES`` times), then failed."""
    timeout_s = timeout_s or settings.JOB_HEARTBEAT_TIMEOUT_S
    cutoff = timezone.now() - timezone.timedelta(seconds=timeout_s)
    reaped = []
    for job in Job.objects.filter(status=Job.Status.RUNNING, heartbeat_at__lt=cutoff):
        reason = f"Worker {job.worker or '?'} stopped responding: no heartbeat for over {timeout_s} s."
        if lose_worker(job, reason):
            reaped.append(job.pk)
    from explorer.scheduling import queue as scheduling

    scheduling.kick()  # queued jobs whose message was lost or dropped (all at a quota) get one
    return reaped


def fail_orphaned_jobs(worker_name):
    """At worker start: jobs this worker (by name) was running died with its previous process."""
    orphans = []
    for job in Job.objects.filter(status=Job.Status.RUNNING, worker=worker_name):
        if lose_worker(job, f"Worker {worker_name} restarted while running this job."):
            orphans.append(job.pk)
    return orphans


def lose_worker(job, reason):
    """A running job whose worker is gone: a training job is requeued as its next attempt,
    resuming from its last checkpoint, while it has automatic retries left; otherwise (or for
    another kind of job) it fails with ``reason``. The events up to then are kept. Returns
    whether the job was taken (False when it had meanwhile left "running")."""
    from explorer.jobs.recorder import fill_unsaved

    # what the dead worker sent but had not saved: logged as lost, so the requeue comes after it
    fill_unsaved(job.pk, f"sent live by {job.worker or 'its worker'}, which stopped before saving it")
    from explorer.jobs import kinds

    kind = kinds.KINDS.get(job.kind)
    if getattr(kind, "resumable", False) and job.auto_retries < settings.JOB_AUTO_RETRIES:
        requeued, step = kind.requeue(job, reason)
        if not requeued:
            return False
        log.warning("job %s requeued after losing its worker (resuming at step %s)", job.pk, step)
        return True
    tried = " It was already requeued once after losing a worker." if job.auto_retries else ""
    return record_status(job.pk, Job.Status.FAILED, expect=[Job.Status.RUNNING],
                         error=f"{reason} The events up to then are kept.{tried}")
