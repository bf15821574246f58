"""A job's run on a worker: every kind runs inside ``job_run`` (queued to running, a heartbeat
that also notices a cancel, the last events saved, a terminal status with the reason, out of
memory explained), the task's entry ``run_next_job`` (the best queued job of a route), and what
happens to the jobs of a worker that is gone (``reap_stale_jobs``, ``fail_orphaned_jobs``,
``lose_worker``: requeued through their kind, or failed)."""
import contextlib
import logging
import threading
import time

from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone

import engine
from engine.config import events
from explorer.jobs.models import Job
from explorer.jobs.publisher import publisher
from explorer.jobs.recorder import EventRecorder
from explorer.jobs.services import record_status
from explorer.scheduling.workers import fmt_bytes

log = logging.getLogger(__name__)


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
    route (``explorer.jobs.queue``: maybe another, of higher priority or a user with fewer running
    jobs), then make sure the route's remaining jobs have a message waiting."""
    from explorer.jobs import queue as scheduling

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
    from explorer.jobs import queue as scheduling

    scheduling.kick()  # queued jobs whose message was lost or dropped (all at a quota) get one
    return reaped


def running_job_of(worker_name):
    """The id of the job ``worker_name`` runs now (its latest started), or None: what its heartbeat
    shows on the workers page (``scheduling.workers.register``)."""
    return (Job.objects.filter(worker=worker_name, status=Job.Status.RUNNING)
            .order_by("-started_at").values_list("pk", flat=True).first())


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
