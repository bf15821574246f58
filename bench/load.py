"""50 users on the team job queue at once, and a 10,000-job history; written to bench/results/load.json
(load_postgres.json with ``--database postgres``; a ``_<N>workers`` suffix with ``--web-workers N``).

    python bench/load.py [--users 50] [--teams 5] [--history 10000] [--queued 200] [--seconds 60]
                         [--database sqlite|postgres] [--web-workers 1]

The issue's load test: ``--users`` simulated people in ``--teams`` teams on loopback, each in a
loop of the queue page, the jobs API (sometimes a search), a job's page and now and then a
submission (POST /api/v1/jobs, a tiny spec; no worker takes it, so it stays queued), with a think
time between clicks, while holding two websockets as two open tabs would: their team's queue
(/ws/teams/<id>/) and one running job (/ws/jobs/<id>/). The queue tab does what static/js/queue.js
does: a status change's team message carries every queued job's place in line, which it applies
with no request; a message without them (a job off its page whose status changed) makes it refetch
GET /api/v1/jobs?team=<id>&limit=50 (one at a time, once more if asked meanwhile).

Around them: ``--history`` finished jobs in every team (bulk-created, realistic specs and
summaries, spread over a year), ``--queued`` queued training jobs (no broker messages: nothing
consumes them), one running job per team fed ``--event-rate`` step events a second by a forked
producer through the worker's ``services.EventRecorder`` (bench/event_latency.py's ``produce``),
and a forked "changer" that cancels the oldest queued job of each team in turn every
``--change-every`` seconds (``services.cancel_job``: the status change the queue pages must show).
Submissions (each user every ``--submit-every`` s on average) and cancellations balance, so about
``--queued`` jobs wait throughout.

Measured: p50/p95/p99 latency of every page and API call by endpoint, errors (non-2xx, exceptions,
websockets closed); queue-page update latency = from just before ``cancel_job`` to the team message
reaching each of the team's clients, and to their refetched list; event latency = a step event's
``ts`` (taken by the recorder) to its arrival on each watching client. Before the load, on a quiet
server: the history endpoints (queue page and API: first page, a search, the deepest page) timed
sequentially, and the same requests in-process with their SQL counted and the slowest query shown.

The clients (one asyncio process) and the server (one uvicorn process, or with ``--web-workers N``
gunicorn supervising N uvicorn workers, as production runs it) share the machine; the
client loop's own lag is measured (``client_loop_lag_ms``) since it adds to every figure. An
isolated SQLite database in a temporary directory (``--database postgres``: a database of its own
on 127.0.0.1:5432, dropped at the end) and Redis database ``--redis-db`` (12) with prefixes of its
own; that database is flushed at the end only if it was empty at the start.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import multiprocessing
import os
import random
import re
import shutil
import ssl
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

from common import write
from event_latency import pct, produce, session_cookie, setup_django, start_web

# ---------------------------------------------------------------------------- data
NAMES = ["lr sweep", "gqa ablation", "rope vs alibi", "moe top-2", "swiglu baseline", "sliding window",
         "tiny shakespeare", "bert mlm", "t5 span", "qk-norm", "warmup study", "dpo run"]
PAYLOADS = [  # a few architectures, so the family filter has something to find
    {"model": {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64}, "data": {"source": "synthetic", "task": "copy"},
     "train": {"steps": 2000, "batch_size": 32}},
    {"model": {"n_layer": 4, "n_head": 4, "n_kv_head": 2, "n_embd": 128, "block_size": 64, "position": "rope",
               "norm": "rmsnorm", "ffn": "swiglu", "bias": False}, "data": {"source": "synthetic", "task": "reverse"},
     "train": {"steps": 3000, "batch_size": 16}},
    {"model": {"family": "encoder", "n_layer": 2, "n_head": 4, "n_embd": 64, "block_size": 64},
     "data": {"source": "synthetic", "task": "copy"}, "train": {"steps": 1000, "batch_size": 32}},
    {"model": {"family": "encoder_decoder", "n_layer": 2, "n_head": 4, "n_embd": 64, "block_size": 64,
               "position": "t5_relative"}, "data": {"source": "synthetic", "task": "copy"}, "train": {"steps": 1000}},
]
TINY = {"model": {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16},
        "data": {"source": "synthetic", "task": "copy", "task_length": 4}, "train": {"steps": 30, "batch_size": 8}}


def full_specs():
    import engine

    out = []
    for p in PAYLOADS:
        try:
            out.append(engine.parse_spec(p).to_dict())
        except Exception as exc:  # noqa: BLE001 - an option this engine lacks: leave that one out
            print(f"note: spec left out ({exc})", file=sys.stderr)
    return out


def make_people(n_users, n_teams):
    """Users u00.. in teams t0..; the first of each team its admin. Returns teams and, per user,
    (user, team, session cookie, API token)."""
    from django.contrib.auth import get_user_model

    from explorer.accounts.models import ApiToken, Membership, Team

    teams = [Team.objects.create(name=f"team {t}", slug=f"load-team-{t}") for t in range(n_teams)]
    people = []
    for i in range(n_users):
        team = teams[i % n_teams]
        user = get_user_model().objects.create_user(f"u{i:02d}", password="pw-load-123")
        role = Membership.Role.ADMIN if i < n_teams else Membership.Role.MEMBER
        Membership.objects.create(user=user, team=team, role=role)
        _, token = ApiToken.issue(user, "load")
        people.append((user, team, session_cookie(user), token))
    return teams, people


def fill_jobs(teams, people, specs, *, history, queued, rate_seed=0):
    """``history`` finished jobs per team, ``queued`` queued training jobs in all, one running job per
    team (older than the queued ones, as a job that waited its turn). Returns
    {team_id: {"finished": [ids sample], "queued": [ids], "running": id}}."""
    from django.utils import timezone

    from explorer.jobs.models import Job

    rng = random.Random(rate_seed)
    now = timezone.now()
    members = defaultdict(list)
    for user, team, _, _ in people:
        members[team.pk].append(user)
    created = Job._meta.get_field("created_at")
    created.auto_now_add = False  # bulk_create would stamp every row "now"; a history spans a year
    try:
        for team in teams:
            rows = []
            for i in range(history):
                spec = specs[i % len(specs)]
                made = now - datetime.timedelta(days=365 * (history - i) / history, minutes=rng.random() * 60)
                started = made + datetime.timedelta(seconds=rng.uniform(1, 3600))
                status = rng.choices(["succeeded", "failed", "cancelled"], [85, 10, 5])[0]
                steps = spec["train"]["steps"]
                rows.append(Job(
                    team=team, owner=rng.choice(members[team.pk]), name=f"{rng.choice(NAMES)} {i}", spec=spec,
                    queue="cpu", status=status, params=100_000 + i, priority=1, queue_order=made.timestamp(),
                    created_at=made, started_at=started, finished_at=started + datetime.timedelta(seconds=rng.uniform(30, 900)),
                    step=steps if status == "succeeded" else rng.randrange(steps), total_steps=steps, last_seq=steps + 3,
                    error="CUDA out of memory" if status == "failed" else "", worker="cpu@box", device="cpu",
                    summary={"loss": round(rng.uniform(0.05, 3), 4), "lr": 3e-4, "tokens_per_s": rng.uniform(20_000, 60_000),
                             "elapsed": 120.0, "eta": 0.0, "val_loss": round(rng.uniform(0.1, 3), 4), "params": 100_000}))
            Job.objects.bulk_create(rows, batch_size=500)
        t0 = time.time()
        running = {}
        for k, team in enumerate(teams):
            spec = specs[0]
            running[team.pk] = Job.objects.create(
                team=team, owner=members[team.pk][0], name=f"running {k}", spec=spec, queue="cpu", status="running",
                created_at=now - datetime.timedelta(minutes=30), started_at=now - datetime.timedelta(minutes=5),
                total_steps=100_000, queue_order=t0 - 3600, worker="cpu@box", device="cpu").pk
        rows = []
        for i in range(queued):
            team = teams[i % len(teams)]
            spec = specs[i % len(specs)]
            rows.append(Job(team=team, owner=rng.choice(members[team.pk]), name=f"{rng.choice(NAMES)} queued {i}",
                            spec=spec, queue="cpu", status="queued", params=100_000, priority=rng.choice([0, 1, 1, 1, 2]),
                            queue_order=t0 - queued + i, created_at=now - datetime.timedelta(seconds=queued - i),
                            total_steps=spec["train"]["steps"], last_seq=1))
        Job.objects.bulk_create(rows, batch_size=500)
    finally:
        created.auto_now_add = True
    out = {}
    for team in teams:
        jobs = Job.objects.filter(team=team)
        out[team.pk] = {
            "finished": list(jobs.filter(status="succeeded").order_by("?").values_list("pk", flat=True)[:200]),
            "queued": list(jobs.filter(status="queued").values_list("pk", flat=True)),
            "running": running[team.pk],
        }
    return out


# ---------------------------------------------------------------------------- the changer (a forked process)
def change(team_ids, every, start_at, go, seconds, out):
    """Cancel the oldest queued job of each team in turn, every ``every`` s: the status change
    each team's queue pages must show. Reports (job, team, t_before, t_after, queued count)."""
    from django.db import connections

    from explorer.jobs import services
    from explorer.jobs.models import Job

    connections.close_all()
    go.wait()
    begin = start_at.value + 1.0  # the clients' first requests settle first
    changes, k = [], 0
    while time.time() < start_at.value + seconds - 2:
        pause = begin + k * every - time.time()
        if pause > 0:
            time.sleep(pause)
        team_id = team_ids[k % len(team_ids)]
        k += 1
        job = Job.objects.filter(team_id=team_id, status="queued").order_by("created_at").first()
        if job is None:
            continue
        t0 = time.time()
        ok = services.cancel_job(job)
        changes.append({"job": job.pk, "team": team_id, "t0": t0, "t1": time.time(), "ok": ok,
                        "queued": Job.objects.filter(status="queued").count()})
    try:  # sends may be queued to a background publisher: let them out before the process ends
        from explorer.jobs.publisher import publisher

        publisher().wait(10)
    except ImportError:
        pass
    out.put(changes)


# ---------------------------------------------------------------------------- clients
class Tally:
    """What every client saw: latencies by endpoint, errors, websocket messages."""

    def __init__(self):
        self.http = defaultdict(list)
        self.errors = Counter()
        self.team_msgs = defaultdict(list)  # user -> [(job id, status, receive time)]
        self.refetches = defaultdict(list)  # user -> [(start, end)]
        self.events = []  # (job, seq, ts, receive time)
        self.ws_drops = Counter()
        self.refetch_causes = Counter()  # why the queue tabs refetched
        self.pings = []  # websocket ping round trips (ms)
        self.server_threads = []  # the ASGI server's thread count, once a second
        self.submitted = 0
        self.started = defaultdict(list)  # name -> wall-clock start of each timed request (as http)
        self.loaded = []  # when each user's queue tab had its rows: the ramp-up ends at the last
        self.job_open = []  # (user, job id, when its job socket opened)
        self.stop_at = None  # when the clients stopped listening


async def timed(tally, client, name, method, url, **kw):
    t0, wall = time.perf_counter(), time.time()
    try:
        r = await client.request(method, url, **kw)
    except Exception as exc:  # noqa: BLE001 - a timeout or a dropped connection is an error of the run
        tally.errors[f"{name}: {type(exc).__name__}"] += 1
        return None
    tally.http[name].append(1000 * (time.perf_counter() - t0))
    tally.started[name].append(wall)
    if r.status_code >= 300:
        tally.errors[f"{name}: HTTP {r.status_code}"] += 1
    return r


class QueueTab:
    """static/js/queue.js on page one, no filter: its rows, places in line from the message, and a
    refetch, one at a time, for a changed status without them."""

    def __init__(self, tally, client, user, team_id):
        self.tally, self.client, self.user, self.team_id = tally, client, user, team_id
        self.rows = {}
        self.off_page = {}  # last status seen of jobs older than the page
        self.loaded = False
        self.busy, self.again = False, False

    async def refetch(self, name="api GET /jobs (live refetch)"):
        if self.busy:
            self.again = True
            return
        self.busy = True
        while True:
            start = time.time()
            r = await timed(self.tally, self.client, name, "GET", f"/api/v1/jobs?team={self.team_id}&limit=50")
            if r is not None and r.status_code == 200:
                self.rows = {j["id"]: j["status"] for j in r.json()["jobs"]}
                self.tally.refetches[self.user].append((start, time.time()))
            if not self.again:
                break
            self.again = False
        self.busy = False

    def on_job(self, job, places=None):
        if not self.loaded:  # queue.js opens its socket once the page's rows are made
            return
        if job["id"] in self.rows:
            changed = self.rows[job["id"]] != job["status"]
            self.rows[job["id"]] = job["status"]
            cause = "status changed"
        elif self.rows and job["id"] < max(self.rows):  # an older job, off page one: upsert()'s offPage
            before = self.off_page.get(job["id"])
            self.off_page[job["id"]] = job["status"]
            changed = before is not None and before != job["status"]
            cause = "a job off page one changed status"
        else:
            changed = True  # upsert() prepends a job it has no row for
            cause = "a new job"
            self.rows[job["id"]] = job["status"]
        if places is not None:  # a status change's message carries every place in line: no refetch
            self.tally.refetch_causes[f"{cause}: places in the message"] += 1
            self.tally.refetches[self.user].append((time.time(), time.time()))
            return
        if changed:
            self.tally.refetch_causes[cause] += 1
            asyncio.get_running_loop().create_task(self.refetch())


async def hold_ws(tally, url, origin, cookie, kind, on_message, stop, opened=None):
    from websockets.asyncio.client import connect

    try:
        async with connect(url, additional_headers={"Cookie": cookie, "Origin": origin}, max_size=None,
                           open_timeout=30, ping_interval=5) as ws:
            if opened is not None:
                opened.append(time.time())
            rtt = 0.0
            while not stop.is_set():
                if ws.latency != rtt:  # a ping answered: the server's event loop, without the app
                    rtt = ws.latency
                    tally.pings.append(1000 * rtt)
                try:
                    raw = await asyncio.wait_for(ws.recv(), timeout=0.5)
                except TimeoutError:
                    continue
                on_message(json.loads(raw), time.time())
    except Exception as exc:  # noqa: BLE001 - a refused or dropped socket
        tally.ws_drops[f"{kind}: {type(exc).__name__} {getattr(exc, 'rcvd', '') or ''}".strip()] += 1


TLS = ssl.create_default_context()


async def simulate(tally, stack, i, person, ids, args, stop, deadline, rng):
    import httpx

    user, team, cookie, token = person
    tab = QueueTab(tally, None, user.username, team.pk)
    origin = stack.url

    def team_msg(msg, now):
        if msg.get("type") == "job":
            job = msg["job"]
            tally.team_msgs[user.username].append((job["id"], job["status"], now))
            tab.on_job(job, msg.get("places"))

    opened = []  # when the job socket opened: events from before it come by replay, not live

    def job_msg(msg, now):
        if msg.get("type") == "events":
            tally.events.extend((ids[team.pk]["running"], e["seq"], e["ts"], now) for e in msg["events"]
                                if opened and e["ts"] >= opened[0])

    timeout = httpx.Timeout(30.0)
    # One TLS context for every client (loopback HTTP needs none): httpx builds one per client by
    # default, ~30 ms of CPU each, which blocked this loop for 3 s as the 100 clients started.
    async with httpx.AsyncClient(base_url=stack.url, headers={"Cookie": cookie}, timeout=timeout, verify=TLS) as browser, \
            httpx.AsyncClient(base_url=stack.url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout,
                              verify=TLS) as api:
        tab.client = browser
        running = ids[team.pk]["running"]
        await asyncio.sleep(rng.random() * args.think)  # users arrive over the first seconds, not in lockstep
        await tab.refetch("api GET /jobs (page load)")  # the queue tab's rows, as the page renders them
        tab.loaded = True
        tally.loaded.append(time.time())
        # then, as queue.js and job.js do once their page is up, the two tabs' sockets
        sockets = [
            asyncio.create_task(hold_ws(tally, f"{stack.ws_url}/ws/teams/{team.pk}/", origin, cookie, "team", team_msg, stop)),
            asyncio.create_task(hold_ws(tally, f"{stack.ws_url}/ws/jobs/{running}/?after={ids[team.pk]['after']}&omit=attention", origin, cookie,
                                        "job", job_msg, stop, opened)),
        ]
        while time.time() < deadline:
            action = rng.random()
            if action < 0.3:
                await timed(tally, browser, "page /queue/", "GET", "/queue/")
            elif action < 0.55:
                await timed(tally, api, "api GET /jobs", "GET", f"/api/v1/jobs?team={team.pk}&limit=50")
            elif action < 0.7:
                query = rng.choice([f"q={rng.choice(NAMES).split()[0]}", "status=failed", f"owner={user.username}",
                                    "family=encoder", "q=sweep&status=succeeded&since=2026-01-01"])
                await timed(tally, api, "api GET /jobs (search)", "GET", f"/api/v1/jobs?team={team.pk}&limit=50&{query}")
            else:
                pool = ids[team.pk]["queued"] if rng.random() < 0.5 else ids[team.pk]["finished"]
                await timed(tally, browser, "page /jobs/<id>/", "GET", f"/jobs/{rng.choice(pool)}/")
            if rng.random() < args.think / args.submit_every:
                r = await timed(tally, api, "api POST /jobs", "POST", "/api/v1/jobs",
                                json={**TINY, "name": f"load {user.username} {time.time():.0f}", "team": str(team.pk)})
                if r is not None and r.status_code == 201:
                    tally.submitted += 1
                    ids[team.pk]["queued"].append(r.json()["id"])
            await asyncio.sleep(rng.uniform(0.5, 1.5) * args.think)
        await asyncio.sleep(max(0.0, deadline + args.grace - time.time()))
        for task in sockets:
            await task
        if opened:
            tally.job_open.append((user.username, running, opened[0]))


def server_pids(pid):
    """``pid`` and its children: the uvicorn process, or gunicorn's master and its workers."""
    try:
        return [pid, *map(int, Path(f"/proc/{pid}/task/{pid}/children").read_text().split())]
    except OSError:
        return [pid]


def proc_cpu_s(pid):
    """User + system CPU seconds of process ``pid`` and its children so far (Linux)."""
    total = 0.0
    for p in server_pids(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return float("nan")
    return total


async def watch_server(stop, pid, out):
    while not stop.is_set():
        try:
            out.append(sum(int(re.search(r"^Threads:\s+(\d+)", Path(f"/proc/{p}/status").read_text(), re.M).group(1))
                           for p in server_pids(pid)))
        except (OSError, AttributeError):
            pass
        await asyncio.sleep(1.0)


async def loop_lag(stop, out, period=0.05):
    while not stop.is_set():
        t0 = time.perf_counter()
        await asyncio.sleep(period)
        out.append(1000 * (time.perf_counter() - t0 - period))


async def load(stack, people, ids, args, start_at, go):
    tally, lags = Tally(), []
    stop = asyncio.Event()
    start = time.time()
    start_at.value = start + 3.0  # the producers start; deliveries count from each socket's opening
    deadline = start_at.value + args.seconds
    go.set()
    lag = asyncio.create_task(loop_lag(stop, lags))
    threads = asyncio.create_task(watch_server(stop, stack.procs["web"].pid, tally.server_threads))
    users = [asyncio.create_task(simulate(tally, stack, i, p, ids, args, stop, deadline, random.Random(i)))
             for i, p in enumerate(people)]
    await asyncio.sleep(max(0.0, deadline + args.grace - time.time()))
    tally.stop_at = time.time()
    stop.set()
    done, late = await asyncio.wait(users, timeout=5)
    for task in late:  # a request still waiting on the server: counted, not waited for
        task.cancel()
    if late:
        tally.errors["unfinished at the end (cancelled)"] += len(late)
    await asyncio.gather(*late, lag, threads, return_exceptions=True)
    return tally, lags, deadline


# ---------------------------------------------------------------------------- the quiet history check
def history_requests(team_id, n_jobs):
    last_page = max(1, -(-n_jobs // 50))
    return [
        ("page /queue/ (first page)", "session", "/queue/"),
        ("page /queue/ (search q=sweep, succeeded)", "session", "/queue/?q=sweep&status=succeeded"),
        ("page /queue/ (family=encoder)", "session", "/queue/?family=encoder"),
        (f"page /queue/ (last page, {last_page})", "session", f"/queue/?page={last_page}"),
        ("api GET /jobs (first 50)", "token", f"/api/v1/jobs?team={team_id}&limit=50"),
        ("api GET /jobs (search q=sweep, succeeded)", "token", f"/api/v1/jobs?team={team_id}&limit=50&q=sweep&status=succeeded"),
        ("api GET /jobs (family=encoder)", "token", f"/api/v1/jobs?team={team_id}&limit=50&family=encoder"),
        (f"api GET /jobs (offset {n_jobs - 50})", "token", f"/api/v1/jobs?team={team_id}&limit=50&offset={n_jobs - 50}"),
    ]


def quiet_history(stack, person, n_jobs, repeats, profile=False):
    """Each history request ``repeats`` times, one at a time, over HTTP; then ``repeats`` times
    in-process (the median), and once more with the SQL counted (query count, total and the
    slowest query); with ``profile``, cProfile's view of the first pages."""
    import httpx
    from django.db import connection
    from django.test import Client

    user, team, cookie, token = person
    headers = {"session": {"Cookie": cookie}, "token": {"Authorization": f"Bearer {token}"}}
    out = {}
    with httpx.Client(base_url=stack.url, timeout=60) as client:
        requests = history_requests(team.pk, n_jobs)
        for _name, auth, url in requests:  # one warm-up each
            client.get(url, headers=headers[auth])
        for name, auth, url in requests:
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                r = client.get(url, headers=headers[auth])
                times.append(1000 * (time.perf_counter() - t0))
                assert r.status_code == 200, (url, r.status_code, r.text[:300])
            out[name] = {"url": url, "ms": summary(times)}
    local = Client(HTTP_HOST="127.0.0.1")
    local.force_login(user)
    # PostgreSQL: the web takes connections from a pool (DATABASE_POOL_SIZE), so in-process the
    # connection is kept too, rather than a server backend started for every request.
    db = connection.settings_dict
    kept = db["CONN_MAX_AGE"]
    if connection.vendor == "postgresql":
        db["CONN_MAX_AGE"] = None
    try:
        _in_process(local, team, token, n_jobs, repeats, profile, out)
    finally:
        db["CONN_MAX_AGE"] = kept
        connection.close()
    return out


def _in_process(local, team, token, n_jobs, repeats, profile, out):
    from django.db import connection, reset_queries
    from django.test.utils import CaptureQueriesContext

    for name, auth, url in history_requests(team.pk, n_jobs):
        extra = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if auth == "token" else {}
        local.get(url, **extra)  # templates and imports loaded
        walls = []
        for _ in range(repeats):  # the median of ``repeats``, without the SQL capture's overhead
            t0 = time.perf_counter()
            local.get(url, **extra)
            walls.append(1000 * (time.perf_counter() - t0))
        if profile and name.endswith("(first page)") or profile and name.endswith("(first 50)"):
            import cProfile
            import pstats

            prof = cProfile.Profile()
            prof.enable()
            for _ in range(repeats):
                local.get(url, **extra)
            prof.disable()
            print(f"---- profile of {repeats} x {name} (cumulative)")
            pstats.Stats(prof).sort_stats("cumulative").print_stats(30)
        reset_queries()
        with CaptureQueriesContext(connection) as ctx:
            local.get(url, **extra)
        queries = sorted(((float(q["time"]) * 1000, q["sql"]) for q in ctx.captured_queries), reverse=True)
        out[name]["in_process"] = {
            "wall_ms": round(pct(walls, 50), 1), "queries": len(queries), "sql_ms": round(sum(t for t, _ in queries), 1),
            "slowest_query_ms": round(queries[0][0], 1) if queries else 0.0,
            "slowest_queries": [{"ms": round(t, 1), "sql": short_sql(sql)} for t, sql in queries[:3]],
        }


def show_quiet(history):
    for name, h in history.items():
        ip = h["in_process"]
        print(f"  quiet {name:45s} p50 {h['ms']['p50']:7.1f} p95 {h['ms']['p95']:7.1f} ms over HTTP, "
              f"{ip['wall_ms']:.1f} ms in-process; {ip['queries']} queries, {ip['sql_ms']:.1f} ms SQL, slowest {ip['slowest_query_ms']:.1f} ms")


def short_sql(sql):
    """A query with its column lists folded (``<cols>``), so the FROM, WHERE and ORDER BY show."""
    sql = re.sub(r'(?:"\w+"\."\w+"(?: AS "\w+")?, )+"\w+"\."\w+"(?: AS "\w+")?', "<cols>", sql)
    return re.sub(r"\s+", " ", sql)[:700]


# ---------------------------------------------------------------------------- figures
def summary(values):
    if not values:
        return {}
    return {"n": len(values), "p50": round(pct(values, 50), 1), "p95": round(pct(values, 95), 1),
            "p99": round(pct(values, 99), 1), "max": round(max(values), 1)}


def update_latency(changes, tally, people, start):
    """Per cancellation and client of its team: team message arrival − t0, and the end of the first
    refetch started after it − t0; a client that never got the message counts as missed."""
    team_of = {p[0].username: p[1].pk for p in people}
    arrive, fresh, missed, late_at = [], [], 0, set()
    for c in changes:
        if not c["ok"]:
            continue
        for user, team_id in team_of.items():
            if team_id != c["team"]:
                continue
            got = [now for job, status, now in tally.team_msgs[user] if job == c["job"] and status == "cancelled"]
            if not got:
                missed += 1
                late_at.add(round(c["t0"] - start, 1))
                continue
            arrive.append(1000 * (got[0] - c["t0"]))
            ends = [end for start, end in tally.refetches[user] if start >= got[0]]
            if ends:
                fresh.append(1000 * (min(ends) - c["t0"]))
    return {"message_ms": summary(arrive), "refetched_list_ms": summary(fresh), "missed": missed,
            "missed_changes_at_s": sorted(late_at),
            "cancel_call_ms": summary([1000 * (c["t1"] - c["t0"]) for c in changes])}


WHAT_IF_INDEX = "explorer_job (owner_id, team_id, status), in this run's database only"


def add_index():
    """The fair-share subquery's lookup (owner, team, status = running), indexed: a what-if in this
    run's throw-away database, not a migration."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("CREATE INDEX bench_what_if_owner_team_status ON explorer_job (owner_id, team_id, status)")


def run_load(stack, teams, people, ids, args) -> dict:
    """Fork the producers and the changer, run the users, and sum up what they saw."""
    from channels.layers import get_channel_layer
    from django.db import connections

    from explorer.jobs.models import Job

    for t in teams:  # the job tabs open after the events so far, as a page opened now would
        ids[t.pk]["after"] = Job.objects.values_list("last_seq", flat=True).get(pk=ids[t.pk]["running"])
    get_channel_layer()  # built before the fork
    connections.close_all()
    ctx = multiprocessing.get_context("fork")
    start_at, go, out = ctx.Value("d", 0.0), ctx.Event(), ctx.Queue()
    n_events = int(args.event_rate * (args.seconds + 1))
    procs = [ctx.Process(target=produce, args=(ids[t.pk]["running"], n_events, args.event_rate, 0.1, start_at, go, out),
                         daemon=True) for t in teams]
    changes_q = ctx.Queue()
    procs.append(ctx.Process(target=change, args=([t.pk for t in teams], args.change_every, start_at, go,
                                                   args.seconds, changes_q), daemon=True))
    for p in procs:
        p.start()
    load_avg_before = os.getloadavg()[0]
    cpu_before = proc_cpu_s(stack.procs["web"].pid)
    tally, lags, deadline = asyncio.run(load(stack, people, ids, args, start_at, go))
    server_cpu = proc_cpu_s(stack.procs["web"].pid) - cpu_before
    load_avg_after = os.getloadavg()[0]
    changes = changes_q.get(timeout=60)
    produced = [out.get(timeout=60) for _ in teams]
    for p in procs:
        p.join(10)

    span = args.seconds + args.grace
    http = {name: summary(v) for name, v in sorted(tally.http.items())}
    requests = sum(len(v) for v in tally.http.values())
    events = [1000 * (now - ts) for _, _, ts, now in tally.events]
    watchers = Counter(ids[p[1].pk]["running"] for p in people)
    # The steady state: requests started once every user's queue tab had loaded (the first
    # seconds, as users arrive, load 50 pages and open 100 sockets; reported apart, not left out).
    ramp_end = max(tally.loaded, default=deadline - args.seconds)

    def steady(prefix):
        return summary([x for k, v in tally.http.items() if k.startswith(prefix)
                        for x, t0 in zip(v, tally.started[k], strict=True) if t0 >= ramp_end])

    # Exactly which deliveries were due: each watching client, the job's events (less the
    # attention maps it asked to omit) stamped between its socket's opening and the clients' stop.
    from explorer.jobs.models import JobEvent

    due = sum(JobEvent.objects.filter(job_id=job, ts__gte=t_open, ts__lte=tally.stop_at).exclude(kind="attention").count()
              for _, job, t_open in tally.job_open)
    arrived = sum(1 for _, _, ts, _ in tally.events if ts <= tally.stop_at)
    events_steady = [1000 * (now - ts) for _, _, ts, now in tally.events if ts >= ramp_end]
    return {
        "http_ms": http,
        "pages_ms": summary([x for k, v in tally.http.items() if k.startswith("page") for x in v]),
        "api_ms": summary([x for k, v in tally.http.items() if k.startswith("api") for x in v]),
        "ramp_up_s": round(ramp_end - (deadline - args.seconds - 3.0), 1),  # from the clients' start
        "pages_steady_ms": steady("page"),
        "api_steady_ms": steady("api"),
        "requests": requests,
        "requests_per_s": round(requests / span, 1),
        "submitted": tally.submitted,
        "errors": dict(tally.errors),
        "websocket_drops": dict(tally.ws_drops),
        "live_refetch_causes": dict(tally.refetch_causes),
        "queue_update": {**update_latency(changes, tally, people, deadline - args.seconds), "cancellations": len(changes),
                         "queued_during": [c["queued"] for c in changes][::max(1, len(changes) // 10)]},
        "event_latency_ms": summary(events),
        "event_latency_steady_ms": summary(events_steady),
        "events_sent": sum(p["sent"] for p in produced),
        # each event once per client watching its job, less those from before a socket opened
        "events_expected": sum(watchers[p["job"]] * p["sent"] for p in produced),
        "events_received": len(events),
        # the same, counted exactly: events stamped while each client's socket was open
        "events_due_while_open": due,
        "events_arrived_while_open": arrived,
        "job_sockets_open": len(tally.job_open),
        "client_loop_lag_ms": summary(lags),
        "ws_ping_rtt_ms": summary(tally.pings),
        "server_cpu_s": round(server_cpu, 1),  # the web processes, user + system, over the load
        "server_cpu_ms_per_request": round(1000 * server_cpu / max(1, requests), 1),
        "server_threads_max": max(tally.server_threads, default=None),
        "load_avg_1m_before": round(load_avg_before, 2),
        "load_avg_1m_after": round(load_avg_after, 2),
    }


def show_load(r, args):
    span = args.seconds + args.grace
    print(f"load: {r['requests']} requests in {span:.0f} s ({r['requests_per_s']}/s), {r['submitted']} submitted, "
          f"{r['queue_update']['cancellations']} cancelled; load average {r['load_avg_1m_before']:.1f} -> "
          f"{r['load_avg_1m_after']:.1f} on {os.cpu_count()} CPUs")
    for name, s in r["http_ms"].items():
        print(f"  {name:38s} n {s['n']:5d}  p50 {s['p50']:8.1f}  p95 {s['p95']:8.1f}  p99 {s['p99']:8.1f}  "
              f"max {s['max']:8.1f} ms")
    for label, key in (("all pages", "pages_ms"), ("all API calls", "api_ms"),
                       (f"pages after the {r['ramp_up_s']} s ramp-up", "pages_steady_ms"),
                       ("API calls after the ramp-up", "api_steady_ms")):
        if s := r[key]:
            print(f"  {label:38s} n {s['n']:5d}  p50 {s['p50']:8.1f}  p95 {s['p95']:8.1f}  p99 {s['p99']:8.1f} ms")
    u = r["queue_update"]
    m, f = u["message_ms"], u["refetched_list_ms"]
    if m:
        print(f"queue-page update (cancel -> team message on each client): p50 {m['p50']:.1f} p95 {m['p95']:.1f} "
              f"max {m['max']:.1f} ms over {m['n']} deliveries, {u['missed']} missed"
              + (f" (of changes at {u['missed_changes_at_s'][:5]} s into the load)" if u["missed"] else ""))
    if f:
        print(f"  ... -> refetched list shown: p50 {f['p50']:.1f} p95 {f['p95']:.1f} max {f['max']:.1f} ms")
    if e := r["event_latency_ms"]:
        print(f"event latency (ts -> client): p50 {e['p50']:.1f} p95 {e['p95']:.1f} p99 {e['p99']:.1f} "
              f"max {e['max']:.1f} ms; {r['events_received']}/{r['events_expected']} deliveries; "
              f"{r['events_arrived_while_open']}/{r['events_due_while_open']} of those stamped while each of the "
              f"{r['job_sockets_open']} job sockets was open")
    if e := r["event_latency_steady_ms"]:
        print(f"  ... after the ramp-up: p50 {e['p50']:.1f} p95 {e['p95']:.1f} p99 {e['p99']:.1f} max {e['max']:.1f} ms "
              f"over {e['n']} deliveries")
    lag, ping = r["client_loop_lag_ms"], r["ws_ping_rtt_ms"]
    print(f"queue tabs' refetches: {r['live_refetch_causes']}")
    print(f"server: {r['server_cpu_s']} CPU s ({r['server_cpu_ms_per_request']} ms a request), up to "
          f"{r['server_threads_max']} threads; websocket ping round trip p50 {ping.get('p50')} p95 {ping.get('p95')} "
          f"max {ping.get('max')} ms")
    print(f"client loop lag: p50 {lag.get('p50')} p99 {lag.get('p99')} max {lag.get('max')} ms; errors "
          f"{r['errors'] or 'none'}; websocket drops {r['websocket_drops'] or 'none'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--teams", type=int, default=5)
    parser.add_argument("--history", type=int, default=10_000, help="finished jobs per team")
    parser.add_argument("--queued", type=int, default=200, help="queued training jobs in all")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--think", type=float, default=5.0, help="mean seconds between a user's clicks")
    parser.add_argument("--submit-every", type=float, default=100.0, help="mean seconds between a user's submissions")
    parser.add_argument("--change-every", type=float, default=2.0, help="seconds between the changer's cancellations")
    parser.add_argument("--event-rate", type=float, default=10.0, help="step events/s of each running job")
    parser.add_argument("--repeats", type=int, default=5, help="times each quiet history request is timed")
    parser.add_argument("--what-if-index", action="store_true",
                        help="then add an index on job (owner_id, team_id, status), the fair-share subquery's "
                             "lookup, to this run's own database, and time the quiet check and the load again")
    parser.add_argument("--index-only", action="store_true",
                        help="only the what-if: add that index first and run once (for diagnosis)")
    parser.add_argument("--no-write", action="store_true", help="print the figures, leave bench/results alone")
    parser.add_argument("--profile", action="store_true",
                        help="only the quiet check, with a cProfile of the first pages; writes nothing")
    parser.add_argument("--grace", type=float, default=3.0, help="seconds the sockets stay open after the load")
    parser.add_argument("--redis-db", type=int, default=12)
    parser.add_argument("--database", default="sqlite", choices=["sqlite", "postgres"])
    parser.add_argument("--db-pool", type=int, default=8,
                        help="the web's DATABASE_POOL_SIZE (PostgreSQL; 0: a connection per request)")
    parser.add_argument("--web-workers", type=int, default=1,
                        help="1: one uvicorn process; more: gunicorn with that many uvicorn workers (the production command)")
    args = parser.parse_args()

    os.environ.setdefault("EXPLORER_RATELIMIT_JOBS", "30")  # the app's limit (the test settings turn it off)
    os.environ.setdefault("EXPLORER_RATELIMIT_PREFIX", f"loadbench{os.getpid()}")
    tmp = Path(tempfile.mkdtemp(prefix="lae-load-"))
    setup_django(tmp, args.redis_db, args.database)
    import redis
    from django.conf import settings
    from django.db import connections

    r = redis.Redis.from_url(settings.REDIS_URL)
    redis_was_empty = r.dbsize() == 0
    t0 = time.time()
    teams, people = make_people(args.users, args.teams)
    ids = fill_jobs(teams, people, full_specs(), history=args.history, queued=args.queued)
    if args.database == "postgres":  # as autovacuum leaves a table some time after a bulk load
        with connections["default"].cursor() as cursor:
            cursor.execute("VACUUM ANALYZE explorer_job")
    setup_s = time.time() - t0
    print(f"set up {args.users} users in {args.teams} teams, {args.history * args.teams:,} finished jobs, "
          f"{args.queued} queued, {args.teams} running in {setup_s:.0f} s")

    report = {
        "name": f"{args.users} users in {args.teams} teams for {args.seconds:g} s, {args.queued} queued, "
                f"{args.history:,} finished jobs per team",
        "args": vars(args),
        "database": "sqlite (WAL)" if args.database == "sqlite" else "postgresql",
        "web": "one uvicorn process" if args.web_workers == 1 else f"gunicorn, {args.web_workers} uvicorn workers",
        "db_pool": args.db_pool if args.database == "postgres" else None,
        "setup_s": round(setup_s, 1),
    }
    stack = start_web(tmp, args.web_workers, args.db_pool)
    try:
        if args.index_only:
            add_index()
            report["index"] = WHAT_IF_INDEX
        report["quiet_history"] = quiet_history(stack, people[0], args.history, args.repeats, args.profile)
        show_quiet(report["quiet_history"])
        if args.profile:
            return 0
        report["load"] = run_load(stack, teams, people, ids, args)
        show_load(report["load"], args)
        if args.what_if_index and not args.index_only:
            add_index()
            print("what if: the same with an index on explorer_job (owner_id, team_id, status)")
            what_if = {"index": WHAT_IF_INDEX}
            what_if["quiet_history"] = quiet_history(stack, people[0], args.history, args.repeats)
            show_quiet(what_if["quiet_history"])
            what_if["load"] = run_load(stack, teams, people, ids, args)
            show_load(what_if["load"], args)
            report["what_if_index"] = what_if
    finally:
        stack.stop()
        web_log = stack.log("web")
        if redis_was_empty:
            r.flushdb()
        connections.close_all()
        shutil.rmtree(tmp, ignore_errors=True)
    if "Traceback" in web_log:
        print("the ASGI server logged errors:\n" + web_log[-2000:], file=sys.stderr)
    if not args.no_write:
        write("load" + ("" if args.database == "sqlite" else "_postgres")
              + ("" if args.web_workers == 1 else f"_{args.web_workers}workers"), report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
