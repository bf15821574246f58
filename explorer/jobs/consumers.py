"""Websockets. ``/ws/jobs/<id>/?after=<seq>``: a job's events, replayed from the database after
``seq`` and then live, with no gap and no duplicate (``&omit=attention`` leaves a kind out of the
replay only). A worker sends events before it saves them (``explorer.jobs.recorder``), so a live
message can run ahead of the log: the consumer then holds it, reads the missing events from the
database as soon as they are saved, and sends everything in order. The channel layer (Redis
pub/sub) can lose a message: one published while the server's connection to Redis was down, or
one a worker could not send. One lost in the middle shows as a gap and is read
from the log, and for one lost at the end (nothing after it to show the gap) the consumer reads
where the log ends whenever the job has been quiet for ``TAIL_CHECK_S`` (``ENDED_CHECK_S`` once
it has ended: a retry starts it again). ``/ws/teams/<id>/``: live job changes for the
queue page (another member's job of a private kind, a chat's answer, only as the places in line
it moved). Both refuse users outside the team (close code 4403) and anonymous users (4401)."""
import asyncio
import time
from urllib.parse import parse_qs

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from explorer.accounts.teams import user_teams
from explorer.jobs import kinds, services
from explorer.jobs.access import jobs_visible_to
from explorer.jobs.models import Job, JobEvent

REPLAY_CHUNK = 2000
GAP_RETRY_S = (0.05, 0.1, 0.2, 0.3, 0.5, 1.0)  # waits between reads of a gap from the log, the last repeated
TAIL_CHECK_S = 2.0  # a job quiet this long: read where its log ends (one row by key)
ENDED_CHECK_S = 10.0  # the same for a job that has ended


class LiveConsumer(AsyncJsonWebsocketConsumer):
    """Channels runs ``close_old_connections`` on its sync thread before every message it
    dispatches (channels 4.2+): a hop to that one thread and back for each live message, which
    the handlers named in ``NO_DATABASE`` do not need (what they read from the database goes
    through ``database_sync_to_async``, which closes old connections itself). With ten jobs
    streaming, those hops were a tenth of the ASGI server's time and queued every message behind
    the others' (``bench/event_latency.py``)."""

    NO_DATABASE = frozenset()  # message types whose handler needs no database connection cleanup

    async def dispatch(self, message):
        if message["type"] in self.NO_DATABASE:
            await getattr(self, get_handler_name(message))(message)
        else:
            await super().dispatch(message)


class JobConsumer(LiveConsumer):
    NO_DATABASE = frozenset({"job.events"})

    async def connect(self):
        user = self.scope["user"]
        self.job_id = self.scope["url_route"]["kwargs"]["job_id"]
        self.last_seq = 0
        self.omit = set()
        self.ahead = {}  # seq -> live event that came before the ones up to it were read
        self.order = asyncio.Lock()  # one replay or send at a time (the gap task runs beside handlers)
        self.gap_task = self.tail_task = None
        self.last_live = time.monotonic()
        if not user.is_authenticated:
            await self.close(code=4401)
            return
        job = await database_sync_to_async(lambda: jobs_visible_to(user).filter(pk=self.job_id).first())()
        if job is None:
            await self.close(code=4403)
            return
        # Join the group before reading the log: an event saved meanwhile arrives live too, and
        # ``last_seq`` drops the duplicate.
        self.group = services.job_group(self.job_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        query = parse_qs(self.scope.get("query_string", b"").decode())
        # kinds left out of the replay (the page fetches large attention maps on demand); live
        # events of every kind are still sent
        self.omit = set(",".join(query.get("omit", [])).split(",")) - {""}
        await self.send_job()
        await self.replay(_int(query.get("after", ["0"])[0]))
        self.tail_task = asyncio.ensure_future(self.watch_tail())

    async def disconnect(self, code):
        for task in (self.gap_task, self.tail_task):
            if task is not None:
                task.cancel()
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive_json(self, content, **kwargs):
        if content.get("action") == "resume":
            async with self.order:
                await self.replay(_int(content.get("after")))

    async def replay(self, after):
        """Send the log after ``after`` (at least ``last_seq``), then the held live events that follow on."""
        await self._replay(after)
        self.ahead = {seq: e for seq, e in self.ahead.items() if seq > self.last_seq}
        run = []
        while self.last_seq + len(run) + 1 in self.ahead:
            run.append(self.ahead.pop(self.last_seq + len(run) + 1))
        if run:
            await self.send_json({"type": "events", "events": run})
            self.last_seq = run[-1]["seq"]
            if any(e["kind"] == "status" for e in run):
                await self.send_job()

    async def _replay(self, after):
        self.last_seq = max(self.last_seq, after)
        while True:
            batch, last, n = await self.read_events(self.last_seq)
            if not n:
                return
            if batch:
                await self.send_json({"type": "events", "events": batch})
            self.last_seq = last
            if n < REPLAY_CHUNK:
                return

    @database_sync_to_async
    def read_events(self, after):
        """The next chunk's events, less the omitted kinds (never loaded), its last seq and size."""
        rows = JobEvent.objects.filter(job_id=self.job_id, seq__gt=after).order_by("seq")
        if not self.omit:
            batch = [row.as_message() for row in rows[:REPLAY_CHUNK]]
            return batch, batch[-1]["seq"] if batch else after, len(batch)
        seqs = list(rows.values_list("seq", flat=True)[:REPLAY_CHUNK])
        if not seqs:
            return [], after, 0
        kept = rows.filter(seq__lte=seqs[-1]).exclude(kind__in=self.omit)
        return [row.as_message() for row in kept], seqs[-1], len(seqs)

    async def send_job(self):
        job = await database_sync_to_async(services.job_brief_by_id)(self.job_id)
        await self.send_json({"type": "job", "job": job})

    async def job_events(self, message):
        self.last_live = time.monotonic()
        async with self.order:
            events = [e for e in message["events"] if e["seq"] > self.last_seq]
            if not events:
                return
            if events[0]["seq"] == self.last_seq + 1 and not self.ahead:
                await self.send_json({"type": "events", "events": events})
                self.last_seq = events[-1]["seq"]
                if any(e["kind"] == "status" for e in events):
                    await self.send_job()
                return
            # ahead of what this client has: the events between are in the log, or soon will be
            self.ahead.update((e["seq"], e) for e in events)
            await self.replay(self.last_seq)
            if self.ahead and self.gap_task is None:
                self.gap_task = asyncio.ensure_future(self.fill_gap())

    async def fill_gap(self):
        """Read the log again until the held events follow on from what was sent."""
        try:
            for tries in range(10_000):
                await asyncio.sleep(GAP_RETRY_S[min(tries, len(GAP_RETRY_S) - 1)])
                async with self.order:
                    await self.replay(self.last_seq)
                    if not self.ahead:
                        return
        finally:
            self.gap_task = None

    async def watch_tail(self):
        """While nothing comes live, read where the log ends now and then; send what this client
        lacks (a live message the channel layer lost, with nothing after it to show the gap)."""
        interval = TAIL_CHECK_S
        while True:  # (counted from the last live message or check)
            await asyncio.sleep(max(0.05, self.last_live + interval - time.monotonic()))
            if time.monotonic() - self.last_live < interval:
                continue
            row = await database_sync_to_async(
                lambda: Job.objects.filter(pk=self.job_id).values_list("last_seq", "status").first())()
            if row is None:
                return
            last_seq, status = row
            if last_seq > self.last_seq:
                async with self.order:
                    before = self.last_seq
                    await self.replay(self.last_seq)
                    if self.last_seq > before:
                        await self.send_job()  # the brief (status, progress) as of now
            self.last_live = time.monotonic()
            interval = ENDED_CHECK_S if status in Job.TERMINAL else TAIL_CHECK_S


class TeamConsumer(LiveConsumer):
    NO_DATABASE = frozenset({"team.job"})

    async def connect(self):
        user = self.scope["user"]
        team_id = self.scope["url_route"]["kwargs"]["team_id"]
        if not user.is_authenticated:
            await self.close(code=4401)
            return
        member = await database_sync_to_async(lambda: user_teams(user).filter(pk=team_id).exists())()
        if not member:
            await self.close(code=4403)
            return
        self.group = services.team_group(team_id)
        self.username = user.get_username()
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def team_job(self, message):
        job = message["job"]
        if job.get("kind") in kinds.private_kinds() and job.get("owner") != self.username:
            # another member's private job (a chat's answer): not shown, but the places in line it moved are
            if "places" in message:
                await self.send_json({"type": "places", "places": message["places"]})
            return
        out = {"type": "job", "job": job}
        if "places" in message:  # after a status change: every queued job's place in line
            out["places"] = message["places"]
        await self.send_json(out)


def _int(value):
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0
