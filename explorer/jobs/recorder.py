"""The worker's event path: ``EventRecorder`` is the engine's ``on_event`` callback.

Two paths leave the recorder, at two paces:

- **live**: every ``flush_interval`` (25 ms), and at once for anything but a step event, the
  new events are numbered and sent to the job's websocket group (``services.publish``, which
  hands them to this process's background publisher). Nothing on this path waits for the
  database, so a busy or locked database (SQLite allows one writer at a time) does not hold up
  what a watcher sees.
- **durable**: every ``save_interval`` (0.25 s), at once for the ``SAVED_AT_ONCE`` kinds (the
  job's start, each checkpoint, the end: ``engine.config.events``' milestones), and at the end, the events not yet saved are written in one transaction
  together with the job row's progress fields (step, summary, heartbeat). Fewer, larger
  transactions: ten jobs streaming 50 events/s make 40 writes/s, not 400; an evaluation's
  events (eval, health, samples, maps) go out at once and are saved with the next write (saving
  each at once doubled what reporting cost a tiny model's step, bench/instrumentation_overhead.py).

By default both run on the engine's thread, at those paces (a write every 0.25 s, not every
step). With ``background=True`` they run on two threads of the recorder's own and the training
step only appends to a deque; inside a transaction (a test's ``django_db`` block) the work is
always done inline, since another thread could not see the job row.

**Numbering.** Sequence numbers come from the job row (``Job.last_seq``), which every writer
(worker, web, reaper) advances in a transaction. The recorder, the only writer of a running job,
reads where its numbers start when it is made and numbers its events itself, so it can send them
before they are saved. Each write checks that the row's ``last_seq`` is where the recorder left
it; if another writer came in between (a reaper that took the job from a worker it believed
lost), the batch is renumbered after theirs, saved and sent again, and a warning logged: nothing
is lost, and a watcher's log differs from the saved one only in that rare case, until it
reloads. (If the start cannot be read, the first batch is saved first and sent after.)

A watcher that joins while sent events are not saved yet sees a gap in the numbers: the
websocket consumer (``explorer.jobs.consumers``) then reads the gap from the database, waiting for
the write if it has not happened yet.

**Outages.** When the database refuses a write, the events stay in memory, in order, and are
written when it returns (retried every ``retry_interval``, the connection reopened); the live
path goes on meanwhile. After ``settings.EVENT_DB_OUTAGE_S`` seconds of outage, or
``MAX_BUFFERED`` unsaved events, the next call from the engine raises ``EventStoreUnavailable``
so the job fails with that reason: events are never silently dropped.
"""
import collections
import logging
import threading
import time

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from engine.config import events

log = logging.getLogger(__name__)

# from the event contract (``engine.config.events.EVENTS``): the kinds saved at once, the start (the job
# row learns its device and total steps), each checkpoint (the log then holds every step up to it,
# so a run resumed from it leaves no gap), a fine-tune's answers and saved adapter, and the end; and, by
# kind, the keys the job's summary keeps
SAVED_AT_ONCE = events.SAVED_AT_ONCE
SUMMARY_KEYS = events.SUMMARY_KEYS


class EventStoreUnavailable(RuntimeError):
    """The database refused a job's events for longer than ``EVENT_DB_OUTAGE_S``."""


class EventRecorder:
    """The engine's ``on_event`` callback (see the module's docstring).

    ``recorder(event)`` takes an event; ``flush()`` sends and saves what is pending now (returns
    whether everything is saved); ``drain()`` at the end of a job stops the writer thread and
    saves everything, giving an outage a fresh ``EVENT_DB_OUTAGE_S`` (then raises
    ``EventStoreUnavailable``); ``close()`` stops the thread without saving (after ``drain`` or
    when giving up). ``summary``, ``step``, ``total_steps`` and ``device`` are saved on the job
    row with each write. ``trace``, when a list, receives a dict per send and per write with
    their times (for ``bench/event_latency.py``).
    """

    MAX_BUFFERED = 100_000

    def __init__(self, job, flush_interval=0.025, save_interval=0.25, team_interval=1.0, retry_interval=1.0,
                 background=None):
        self.job_id, self.team_id = job.pk, job.team_id
        self.flush_interval, self.save_interval = flush_interval, save_interval
        self.team_interval, self.retry_interval = team_interval, retry_interval
        self.summary = dict(job.summary)
        self.step, self.total_steps, self.device = job.step, job.total_steps, job.device
        # locks, always taken in this order: saving (one write at a time), sending (numbering),
        # list (``unsaved``); ``incoming`` needs none (a deque's append and popleft are atomic)
        self.saving, self.sending, self.lock = threading.Lock(), threading.RLock(), threading.Lock()
        self.incoming = collections.deque()  # (kind, data) from the engine, not yet taken
        self.unsaved = []  # [seq or None, kind, data, ts], in order: sent (once numbered), not yet saved
        self.next_seq = self._first_seq()  # the number of the next event (None: the first write tells)
        self.last_send = self.last_save = self.last_team = 0.0
        self.last_event, self.gap = None, None  # when the engine last called, and the usual time between calls
        self.down_since = None  # monotonic time of the first failed write of an outage
        self.outages = 0
        self.error = None  # an exception from a writer thread, raised in the engine's thread
        self.trace = None
        self.redis, self.mark_failed, self.marked = None, False, 0
        if background is None:
            # inline by default: writer threads beside a training loop slowed small models' steps
            # 2.7x (OpenMP workers and Python threads on the same cores); sending still comes
            # before saving, and the engine's thread writes only every save_interval
            background = False
        elif background and connection.in_atomic_block:  # rows another thread could not see
            background = False
        # send_wake: an event came; hurry: one that goes out at once; save_wake: write now
        self.stopping, self.send_wake, self.hurry, self.save_wake = (threading.Event() for _ in range(4))
        self.threads = []
        if background:
            self.threads = [threading.Thread(target=self._guarded, args=(loop,), daemon=True,
                                             name=f"events-{what}-{self.job_id}")
                            for what, loop in (("send", self._sender), ("save", self._saver))]
            for thread in self.threads:
                thread.start()

    def _first_seq(self):
        """Where this recorder's numbers start: after the log's last event now (a writer that comes
        in before the first write is caught there, and the batch renumbered). None when the
        database cannot say: the first write numbers the first batch then."""
        from django.db import DatabaseError

        from explorer.jobs.models import Job

        try:
            return Job.objects.values_list("last_seq", flat=True).get(pk=self.job_id) + 1
        except DatabaseError:
            log.warning("job %s: could not read where its events start; the first write will say", self.job_id)
            return None

    # ------------------------------------------------------------------ the engine's side
    def __call__(self, event):
        if self.error is None and self.down_since is not None:
            self._check_outage(time.monotonic(), "the database is still refusing them")
        if self.error is not None:
            raise self.error
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
        self.incoming.append((kind, event))
        if self.threads:
            if kind != "step":
                self.hurry.set()  # at once: evaluations, attention maps, status
            if not self.send_wake.is_set():
                self.send_wake.set()
            return
        now = time.monotonic()  # inline: the same paces, on this thread
        if self.last_event is not None:
            gap = now - self.last_event
            self.gap = gap if self.gap is None else 0.8 * self.gap + 0.2 * gap
        self.last_event = now
        # a step goes out once flush_interval has passed since the last send, or now when the next
        # step (at the usual gap) would come after that: nothing waits much more than the interval
        due = self.last_send + self.flush_interval
        if kind != "step" or now >= due or (self.gap is not None and now + self.gap > due):
            self._send_tick()
        if kind in SAVED_AT_ONCE or self.next_seq is None or now - self.last_save >= self._save_pace():
            self._save_tick()
            if self.error is not None:
                raise self.error

    def flush(self):
        """Send and save everything taken so far, now; returns whether all of it is saved (False:
        the database is down and the events wait for the next try)."""
        self._send_tick()
        self._save_tick()
        with self.lock:
            return not self.unsaved and not self.incoming

    def drain(self):
        """At the end of a job: stop the writer threads and save everything, giving a database
        outage a fresh ``EVENT_DB_OUTAGE_S`` to end (then ``EventStoreUnavailable``)."""
        self.close()
        if self.down_since is not None:
            self.down_since = time.monotonic()
        self.error = None
        while not self.flush():
            if self.error is not None:
                raise self.error
            time.sleep(self.retry_interval)

    def close(self):
        """Stop the writer threads (what is unsaved stays in memory for ``flush``/``drain``)."""
        self.stopping.set()
        for event in (self.send_wake, self.hurry, self.save_wake):
            event.set()
        for thread in self.threads:
            thread.join(60)
        self.threads = []

    # ------------------------------------------------------------------ the writer threads
    def _save_pace(self):
        return self.retry_interval if self.down_since is not None else self.save_interval

    def _check_outage(self, now, why):
        """Give up (``self.error``) once the outage outlasts ``EVENT_DB_OUTAGE_S`` or the memory."""
        down_since, held = self.down_since, len(self.unsaved) + len(self.incoming)
        if down_since is not None and (now - down_since > settings.EVENT_DB_OUTAGE_S or held > self.MAX_BUFFERED):
            self.error = EventStoreUnavailable(
                f"the database was unavailable for {now - down_since:.0f} s ({why}); {held} events of this job "
                "could not be saved")

    def _guarded(self, loop):
        try:
            loop()
        except Exception as exc:  # noqa: BLE001 - a bug here must fail the job, not leave it silent
            log.exception("job %s: an event writer stopped", self.job_id)
            self.error = exc
        finally:
            connection.close()  # this thread's own connection

    def _sender(self):
        """Asleep until an event comes; then sends at most every ``flush_interval`` (at once for
        anything but a step event), so an idle job costs nothing and a busy one a send per interval."""
        while not self.stopping.is_set():  # (checked after each clear: close() sets stopping first)
            self.send_wake.wait()
            if self.stopping.is_set():
                return
            delay = self.last_send + self.flush_interval - time.monotonic()
            if delay > 0:
                self.hurry.wait(delay)
            self.hurry.clear()
            self.send_wake.clear()  # before taking: an event after this wakes the loop again
            self._send_tick()

    def _saver(self):
        while not self.stopping.is_set():  # paced from the start of the last try
            self.save_wake.wait(max(0.0, self.last_save + self._save_pace() - time.monotonic()))
            self.save_wake.clear()
            if self.stopping.is_set():
                return
            self._save_tick()

    def _send_tick(self):
        """Number what came in and send it (before the first write, leave it to the write)."""
        from explorer.jobs import services

        with self.sending:
            taken = [self.incoming.popleft() for _ in range(len(self.incoming))]
            if not taken:
                return
            self.last_send = time.monotonic()
            rows = []
            for kind, data in taken:
                ts = data.pop("_ts")
                seq = None
                if self.next_seq is not None:
                    seq, self.next_seq = self.next_seq, self.next_seq + 1
                rows.append([seq, kind, services.storable(data), ts])
            with self.lock:
                self.unsaved.extend(rows)
            if self.next_seq is not None:  # numbered: out to the watchers now, saved later
                self._mark_sent(rows[-1][0])  # first: a worker killed between the two has its mark
                self._send([_message(row) for row in rows], team=False)
            if self.next_seq is None or any(kind in SAVED_AT_ONCE for kind, _ in taken):
                self.save_wake.set()  # the first batch, the start, a checkpoint, the end: saved at once

    def _mark_sent(self, seq):
        """Note in Redis a number at least as high as any sent, for ``fill_unsaved`` should this
        worker die: ``MARK_AHEAD`` past the last one, so a write is needed only every so many
        events (a few "lost" entries too many in that rare case, rather than a Redis call per send)."""
        if seq <= self.marked:
            return
        try:
            if self.redis is None:
                import redis

                self.redis = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=1)
            self.redis.set(sent_key(self.job_id), seq + MARK_AHEAD, ex=SENT_KEY_TTL_S)
            self.marked = seq + MARK_AHEAD
        except Exception:  # noqa: BLE001 - only the rare death before a write loses by it
            if not self.mark_failed:
                log.warning("job %s: could not note its sent events in Redis", self.job_id, exc_info=True)
            self.mark_failed = True

    def _send(self, messages, team):
        from explorer.jobs import services

        t0 = time.time()
        send_team = team and time.monotonic() - self.last_team >= self.team_interval
        if send_team:
            self.last_team = time.monotonic()
        try:
            services.publish(self.job_id, messages, team_id=self.team_id if send_team else None)
        except Exception:  # noqa: BLE001 - e.g. the job's brief could not be read: the log has the events
            log.warning("job %s: could not send %d events", self.job_id, len(messages), exc_info=True)
        if self.trace is not None and messages:
            self.trace.append({"what": "send", "t0": t0, "t1": time.time(), "seqs": [m["seq"] for m in messages]})

    def _save_tick(self):
        """Write the unsaved events and the job's progress in one transaction."""
        from django.db import DatabaseError

        from explorer.jobs import services
        from explorer.jobs.models import Job

        with self.saving:
            now, t0 = time.monotonic(), time.time()
            self.last_save = now  # the pace counts from each try's start (or look, when there was nothing)
            with self.lock:
                rows = list(self.unsaved)
            if not rows:
                return
            numbered = rows[0][0] is not None
            progress = dict(heartbeat_at=timezone.now(), **services.storable({
                "step": self.step, "total_steps": self.total_steps, "summary": dict(self.summary),
                "device": self.device}))
            try:
                with transaction.atomic():
                    # the usual case in one statement: the log ends where this recorder left it
                    # (the update takes the row's lock, as select_for_update would)
                    in_place = numbered and Job.objects.filter(pk=self.job_id, last_seq=rows[0][0] - 1).update(
                        last_seq=rows[-1][0], **progress)
                    if not in_place:  # not numbered yet, or another writer came in between: after the log's end
                        last_seq = Job.objects.select_for_update().filter(pk=self.job_id).values_list(
                            "last_seq", flat=True).get()
                        seqs = range(last_seq + 1, last_seq + 1 + len(rows))
                        Job.objects.filter(pk=self.job_id).update(last_seq=seqs[-1], **progress)
                    else:
                        seqs = [r[0] for r in rows]
                    insert_events(self.job_id, seqs, rows)
                moved = numbered and not in_place
            except DatabaseError as exc:
                connection.close_if_unusable_or_obsolete()  # a broken connection is reopened next time
                if self.down_since is None:
                    self.down_since, self.outages = now, self.outages + 1
                    log.warning("job %s: the database refused its events (%s); buffering them", self.job_id, exc)
                self._check_outage(now, exc)
                return
            if self.trace is not None:
                self.trace.append({"what": "save", "t0": t0, "t1": time.time(), "seqs": list(seqs)})
            if self.down_since is not None:
                log.warning("job %s: the database is back after %.1f s; %d buffered events written",
                            self.job_id, now - self.down_since, len(rows))
                self.down_since = None
            with self.sending:
                with self.lock:
                    del self.unsaved[:len(rows)]
                    for row, seq in zip(rows, seqs):
                        row[0] = seq
                    later = list(self.unsaved)
                if moved:
                    log.warning("job %s: another writer added events meanwhile; %d events renumbered from %d",
                                self.job_id, len(rows) + len(later), seqs[0])
                self.next_seq = seqs[-1] + 1
                for row in later:  # taken meanwhile: numbered after these (again, after a move)
                    row[0], self.next_seq = self.next_seq, self.next_seq + 1
                # saved, then sent: a first batch (its numbers were not known before) or a renumbered
                # one, with what was taken meanwhile; the team's queue page hears of the job's
                # progress at most every team_interval
                resend = rows + later if (moved or not numbered) else []
                if resend:
                    self._mark_sent(resend[-1][0])
                    self._send([_message(row) for row in resend], team=False)
            self._send([], team=True)  # (reads the job's brief: outside the lock the sender takes)


SENT_KEY_TTL_S = 7 * 24 * 3600
MARK_AHEAD = 64


def sent_key(job_id):
    prefix = settings.CHANNEL_LAYERS["default"]["CONFIG"].get("prefix", "asgi")
    return f"{prefix}:job:{job_id}:sent"


def fill_unsaved(job_id, why):
    """After a worker stopped without saving what it had sent (killed, or its database down for
    good): log a "lost" event for each number it may have sent but never saved (up to its mark,
    ``MARK_AHEAD`` past the last it sent), so the log has no hole
    and whatever is written next (the reaper's requeue, a final status) is numbered after every
    event a watcher may have seen, and reaches it. Returns how many were filled."""
    from explorer.jobs import services
    from explorer.jobs.models import Job

    try:
        import redis

        sent = int(redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2).get(sent_key(job_id)) or 0)
    except Exception:  # noqa: BLE001 - Redis down too: nothing more can be known
        log.warning("job %s: could not read how far its events were sent", job_id, exc_info=True)
        return 0
    with transaction.atomic():
        last_seq = Job.objects.select_for_update().filter(pk=job_id).values_list("last_seq", flat=True).get()
        if sent <= last_seq:
            return 0
        messages = services.append_events(job_id, [("lost", {"note": why}) for _ in range(sent - last_seq)])
    services.publish(job_id, messages)
    log.warning("job %s: events %d-%d were sent but not saved (%s)", job_id, last_seq + 1, sent, why)
    return sent - last_seq


def insert_events(job_id, seqs, rows):
    """Insert a job's events, numbered ``seqs``, from recorder ``rows`` (``[seq, kind, data, ts]``)
    in one ``executemany``: what ``bulk_create`` writes, with the payload adapted as the ORM adapts
    a ``JSONField`` on each database, without building a model instance and compiling SQL for every
    row (that took 4.8 ms of a 6.8 ms write of 60 step events; this takes about a third of it)."""
    from explorer.jobs.models import JobEvent

    fields = [JobEvent._meta.get_field(name) for name in ("job", "seq", "kind", "payload", "ts")]
    quote, encoder = connection.ops.quote_name, fields[3].encoder
    sql = (f"INSERT INTO {quote(JobEvent._meta.db_table)} ({', '.join(quote(f.column) for f in fields)}) "
           f"VALUES ({', '.join(['%s'] * len(fields))})")
    adapt = connection.ops.adapt_json_value
    with connection.cursor() as cursor:
        cursor.executemany(sql, [(job_id, seq, kind, adapt(data, encoder), ts)
                                 for seq, (_, kind, data, ts) in zip(seqs, rows)])


def _message(row):
    seq, kind, data, ts = row
    return {"seq": seq, "kind": kind, "ts": ts, "data": data}
