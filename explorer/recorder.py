"""The worker's event path: ``EventRecorder`` is the engine's ``on_event`` callback."""
import logging
import threading
import time

from django.conf import settings
from django.db import connection
from django.utils import timezone

log = logging.getLogger(__name__)

SUMMARY_KEYS = {
    "step": ("loss", "lr", "grad_norm", "tokens_per_s", "elapsed", "eta", "aux_loss", "mfu"),
    "eval": ("train_loss", "val_loss", "accuracy"),
    "start": ("params", "vocab_size", "tokens_per_step"),
}


class EventStoreUnavailable(RuntimeError):
    """The database refused a job's events for longer than ``EVENT_DB_OUTAGE_S``."""


class EventRecorder:
    """The engine's ``on_event`` callback: buffers events and flushes them in batches.

    A flush writes the batch in one transaction and broadcasts it in one channel-layer message,
    at most every ``flush_interval`` seconds for step events and at once for anything else.
    When the database is unavailable the events stay buffered, in order, and are written when it
    returns (retried at most every ``retry_interval`` s, the connection reopened); after
    ``settings.EVENT_DB_OUTAGE_S`` seconds of outage, or ``MAX_BUFFERED`` events, the flush raises
    ``EventStoreUnavailable`` so the job fails with that reason: events are never silently dropped.
    """

    MAX_BUFFERED = 100_000

    def __init__(self, job, flush_interval=0.025, team_interval=1.0, retry_interval=1.0):
        self.job_id, self.team_id = job.pk, job.team_id
        self.flush_interval, self.team_interval, self.retry_interval = flush_interval, team_interval, retry_interval
        self.buffer, self.summary = [], dict(job.summary)
        self.step, self.total_steps, self.device = job.step, job.total_steps, job.device
        self.last_flush = self.last_team = 0.0
        self.down_since = None  # monotonic time of the first failed write of an outage
        self.outages = 0
        self.lock = threading.Lock()

    def __call__(self, event):
        event = dict(event)
        kind = event.pop("kind")
        event["_ts"] = time.time()
        for key in SUMMARY_KEYS.get(kind, ()):
            if key in event:
                self.summary[key] = event[key]
        if "step" in event:
            self.step = event["step"]
        if kind == "start":
            self.total_steps, self.device = event.get("total_steps", self.total_steps), event.get("device", self.device)
        with self.lock:
            self.buffer.append((kind, event))
        interval = self.flush_interval if self.down_since is None else self.retry_interval
        if (kind != "step" and self.down_since is None) or time.monotonic() - self.last_flush >= interval:
            self.flush()

    def flush(self):
        """Write and broadcast the buffer; returns whether it is empty now (False: the database
        is down and the events wait for the next flush)."""
        from django.db import DatabaseError

        from explorer import services

        with self.lock:
            batch, self.buffer = self.buffer, []
        if not batch:
            return True
        self.last_flush = now = time.monotonic()
        try:
            messages = services.append_events(
                self.job_id, batch, step=self.step, total_steps=self.total_steps, summary=self.summary,
                device=self.device, heartbeat_at=timezone.now(),
            )
        except DatabaseError as exc:
            with self.lock:
                self.buffer = batch + self.buffer  # kept, in order, for the next try
                held = len(self.buffer)
            connection.close_if_unusable_or_obsolete()  # a broken connection is reopened next time
            if self.down_since is None:
                self.down_since, self.outages = now, self.outages + 1
                log.warning("job %s: the database refused its events (%s); buffering them", self.job_id, exc)
            if now - self.down_since > settings.EVENT_DB_OUTAGE_S or held > self.MAX_BUFFERED:
                raise EventStoreUnavailable(
                    f"the database was unavailable for {now - self.down_since:.0f} s ({exc}); {held} events of this "
                    "job could not be saved") from exc
            return False
        if self.down_since is not None:
            log.warning("job %s: the database is back after %.1f s; %d buffered events written",
                        self.job_id, now - self.down_since, len(batch))
            self.down_since = None
        send_team = now - self.last_team >= self.team_interval
        if send_team:
            self.last_team = now
        services.publish(self.job_id, messages, team_id=self.team_id if send_team else None)
        return True

    def drain(self):
        """At the end of a job: flush until the buffer is empty, giving a database outage a
        fresh ``EVENT_DB_OUTAGE_S`` to end (then ``EventStoreUnavailable``)."""
        if self.down_since is not None:
            self.down_since = time.monotonic()
        while not self.flush():
            time.sleep(self.retry_interval)
