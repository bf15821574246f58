"""Worker→browser event latency with many jobs streaming at once, written to bench/results/event_latency.json.

    python bench/event_latency.py [--jobs 10] [--rate 50] [--seconds 20] [--flush-intervals 0.025,0]

The real path, every hop but the training: ``--jobs`` producer processes (forked, as Celery's
prefork workers are), each feeding a job's ``services.EventRecorder`` ``--rate`` step events a
second (the engine's step event, every field). The recorder (``explorer.jobs.recorder``) numbers and
sends them through the Redis channel layer every ``flush_interval`` (0.025 s, as the worker runs
it) to an ASGI server (uvicorn, started as ``tests.stack`` starts it) whose ``JobConsumer`` pushes
them down one logged-in websocket per job, opened as the job page opens it
(``?after=0&omit=attention``), and saves them in the database every 0.25 s, off the live path.
Latency = the client's receive time − the event's ``ts`` (the time the recorder took the event
from the engine; one machine, one clock).

The recorder's trace splits the latency into: waiting in its buffer (``ts`` → the send), the
hand-over to the process's background publisher (``publish_call``) and from there to the client
(Redis → consumer → websocket). Apart from the live path: ``db_write`` (each write's duration) and
``saved_after`` (``ts`` → the event is in the database). Latency is also taken from when each
event was due (``latency_from_schedule_ms``): a producer held up sends late, and ``ts`` moves with
it, as a training step held up would. ``--flush-intervals 0.025,0`` runs the worker's setting and
a send per event. An isolated SQLite database in a temporary directory
(``--database postgres``: a database of its own on 127.0.0.1:5432, dropped at the end, results in
``event_latency_postgres.json``) and Redis
database ``--redis-db`` (13) with a prefix of its own: never the dev data.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import write

TARGET_P99_MS = 50.0


# ---------------------------------------------------------------------------- the stack (shared by the app benchmarks)
def setup_django(tmp: Path, redis_db: int = 13, database: str = "sqlite") -> None:
    """Django on a fresh database, migrated: a SQLite file under ``tmp``, or with ``database``
    "postgres" a database of its own on the PostgreSQL at 127.0.0.1:5432 (dropped at exit); and
    Redis database ``redis_db``. The variables reach the ASGI server and workers that
    ``tests.stack.Stack`` starts, too."""
    url = f"sqlite:///{tmp / 'bench.sqlite3'}"
    if database == "postgres":
        url = postgres_database(f"lae_bench_{os.getpid()}")
    os.environ.update(
        EXPLORER_VAR_DIR=str(tmp),
        DATABASE_URL=url,
        REDIS_URL=f"redis://127.0.0.1:6379/{redis_db}",
        EXPLORER_CHANNEL_PREFIX=f"bench{os.getpid()}",
        EXPLORER_LOG_LEVEL="WARNING",
        DJANGO_SETTINGS_MODULE="config.settings.test",  # the app's settings; what tests.stack starts its processes with
    )
    import atexit
    import shutil

    import django
    from django.core.management import call_command

    atexit.register(shutil.rmtree, tmp, True)  # the database, logs and media of this run
    django.setup()
    call_command("migrate", verbosity=0)


def postgres_database(name: str, server: str = "postgres://postgres@127.0.0.1:5432") -> str:
    """Create database ``name`` on ``server``; drop it when this process exits."""
    import atexit

    import psycopg

    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')

    def drop():
        from django.db import connections

        connections.close_all()
        with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    atexit.register(drop)
    return f"{server}/{name}"


def start_web(tmp: Path, workers: int = 1, db_pool: int = 0):
    """The ASGI server (uvicorn) on a free port, as the integration tests start it; with ``workers``
    > 1, gunicorn supervising that many uvicorn workers (the production command); ``db_pool``:
    its DATABASE_POOL_SIZE (PostgreSQL only)."""
    from tests.stack import Stack

    stack = Stack(tmp)
    stack.env["DATABASE_POOL_SIZE"] = str(db_pool)
    stack.start_web(workers)
    return stack


def make_user(name: str):
    """A user and their personal team."""
    from django.contrib.auth import get_user_model

    from explorer.accounts.teams import create_personal_team

    user = get_user_model().objects.create_user(name, password=f"pw-{name}-123")
    return user, create_personal_team(user)


def session_cookie(user) -> str:
    """A logged-in session's cookie header, as the browser sends it after signing in."""
    from django.conf import settings
    from django.test import Client

    client = Client()
    client.force_login(user)
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"


def make_job(user, team, spec: dict, name: str):
    from explorer.jobs.models import Job

    return Job.objects.create(team=team, owner=user, name=name, spec=spec, queue="cpu", status=Job.Status.RUNNING,
                              total_steps=spec.get("train", {}).get("steps", 0))


# ---------------------------------------------------------------------------- producers
def step_event(step: int, start: float) -> dict:
    """The engine's step event (engine/train.py), every field, with plausible values."""
    elapsed = time.perf_counter() - start
    return {
        "kind": "step", "step": step, "loss": 4.2 / (1 + step / 500) + random.random() * 0.01,
        "lr": 3e-4 * min(1.0, step / 100), "grad_norm": 0.8 + random.random() * 0.1, "tokens_per_s": 51234.5 + step,
        "elapsed": elapsed, "eta": 120.0 - elapsed, "effective_batch": 32, "clipped": False,
        "update_ratio": 1.3e-3 + random.random() * 1e-4, "spike": False, "mfu": 0.0123,
    }


def produce(job_id: int, n: int, rate: float, flush_interval: float, start_at, go, out) -> None:
    """In a forked process: ``n`` step events at ``rate``/s through the worker's EventRecorder,
    which records the times of every send (channel layer) and every write (database)."""
    from django.db import connections

    from explorer.jobs import services
    from explorer.jobs.models import Job

    connections.close_all()  # the parent's connection is not ours to use
    random.seed()  # forked: each job its own phase
    recorder = services.EventRecorder(Job.objects.get(pk=job_id), flush_interval=flush_interval)
    recorder.trace = []  # each send and each write, with its times and sequence numbers
    go.wait()
    begin = start_at.value + random.random() / rate  # the jobs' steps are not in lockstep
    clock = time.perf_counter()
    late = 0
    for i in range(n):  # event i gets seq i + 1: nothing else writes to this job meanwhile
        pause = begin + i / rate - time.time()
        if pause > 0:
            time.sleep(pause)
        elif pause < -1 / rate:
            late += 1
        recorder(step_event(i + 1, clock))
    recorder.drain()  # as run_job does: everything saved
    from explorer.jobs.publisher import publisher

    publisher().wait(60)  # as run_job does: the last batches leave before the process ends
    flushes = recorder.trace
    out.put({"job": job_id, "sent": n, "late": late, "flushes": flushes, "begin": begin})


# ---------------------------------------------------------------------------- clients
async def watch(ws_url: str, origin: str, cookie: str, job_id: int, n: int, ready: asyncio.Event, done: list,
                grace: float):
    """One browser tab: the job's websocket, each event with its receive time, until all ``n``
    came or ``grace`` seconds after the producers finished (``done`` holds their end time)."""
    from websockets.asyncio.client import connect

    got = []
    url = f"{ws_url}/ws/jobs/{job_id}/?after=0&omit=attention"
    async with connect(url, additional_headers={"Cookie": cookie, "Origin": origin}, max_size=None) as ws:
        ready.set()
        while len(got) < n and not (done and time.monotonic() > done[0] + grace):
            try:
                raw = await asyncio.wait_for(ws.recv(), timeout=0.5)
            except TimeoutError:
                continue
            now = time.time()
            msg = json.loads(raw)
            if msg["type"] == "events":
                got.extend((e["seq"], e["ts"], now) for e in msg["events"])
    return got


async def watch_all(stack, cookie, job_ids, n, procs, on_ready, grace=5.0):
    readies, done = [asyncio.Event() for _ in job_ids], []
    origin = stack.url
    tasks = [asyncio.create_task(watch(stack.ws_url, origin, cookie, j, n, r, done, grace))
             for j, r in zip(job_ids, readies)]
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 30)
    await asyncio.sleep(0.3)  # the consumers' group_add and (empty) replay are done
    on_ready()
    while any(p.is_alive() for p in procs):
        await asyncio.sleep(0.1)
    done.append(time.monotonic())
    return await asyncio.gather(*tasks)


# ---------------------------------------------------------------------------- one run
def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q / 100 * len(values) + 0.5) - 1))]  # nearest rank


def summary(values: list[float]) -> dict:
    if not values:
        return {}
    return {"p50": round(pct(values, 50), 2), "p90": round(pct(values, 90), 2), "p99": round(pct(values, 99), 2),
            "max": round(max(values), 2), "mean": round(statistics.fmean(values), 2)}


def run(stack, cookie, user, team, *, jobs: int, rate: float, seconds: float, flush_interval: float) -> dict:
    from channels.layers import get_channel_layer
    from django.db import connections

    n = int(rate * seconds)
    job_ids = [make_job(user, team, {}, f"latency {flush_interval} #{i}").pk for i in range(jobs)]
    get_channel_layer()  # imported and built once, before the fork, not on each producer's first flush
    # as a Celery worker imports its tasks (and with them the engine and torch) before it forks its
    # pool: each producer importing torch itself cost ~3 s of CPU, and put them seconds behind
    from explorer.jobs import (
        recorder,  # noqa: F401
        )
    connections.close_all()
    ctx = multiprocessing.get_context("fork")
    start_at, go, out = ctx.Value("d", 0.0), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=produce, args=(j, n, rate, flush_interval, start_at, go, out), daemon=True)
             for j in job_ids]
    for p in procs:
        p.start()

    def begin():
        start_at.value = time.time() + 0.5
        go.set()

    received_ = []
    results = []

    async def collect():  # a producer's process ends only once its result is read off the queue
        task = asyncio.create_task(watch_all(stack, cookie, job_ids, n, procs, begin))
        while len(results) < len(procs):
            try:
                results.append(out.get_nowait())
            except Exception:  # noqa: BLE001 - queue.Empty: not yet
                await asyncio.sleep(0.1)
        received_.extend(await task)

    asyncio.run(collect())
    received = received_
    produced = {r["job"]: r for r in results}
    for p in procs:
        p.join(10)

    latencies, from_schedule = [], []
    # the live path: buffer (ts → the send), publish_call (the sender thread handing the batch to the
    # publisher), publish_to_client (→ received); apart from it: saved_after (ts → its write done)
    parts = {"buffer": [], "publish_call": [], "publish_to_client": [], "saved_after": [], "db_write": []}
    complete, lost, duplicated, late = 0, 0, 0, 0
    missing = {}  # job -> the first seqs it never received (to find the cause)
    for job_id, got in zip(job_ids, received):
        seqs = [s for s, _, _ in got]
        gone = sorted(set(range(1, n + 1)) - set(seqs))
        lost += len(gone)
        if gone:
            missing[job_id] = {"seqs": gone[:20], "received": len(seqs), "last_received": seqs[-1] if seqs else None}
        duplicated += len(seqs) - len(set(seqs))
        complete += seqs == list(range(1, n + 1))
        late += produced[job_id]["late"]
        trace = produced[job_id]["flushes"]
        send_of = {seq: f for f in trace if f["what"] == "send" for seq in f["seqs"]}
        save_of = {seq: f for f in trace if f["what"] == "save" for seq in f["seqs"]}
        began = produced[job_id]["begin"]
        for seq, ts, now in got:
            latencies.append(1000 * (now - ts))
            from_schedule.append(1000 * (now - (began + (seq - 1) / rate)))
            if seq in send_of:
                f = send_of[seq]
                parts["buffer"].append(1000 * (f["t0"] - ts))
                parts["publish_call"].append(1000 * (f["t1"] - f["t0"]))
                parts["publish_to_client"].append(1000 * (now - f["t1"]))
            if seq in save_of:
                parts["saved_after"].append(1000 * (save_of[seq]["t1"] - ts))
        parts["db_write"].extend(1000 * (f["t1"] - f["t0"]) for f in trace if f["what"] == "save")
    flushes = sum(f["what"] == "send" for r in produced.values() for f in r["flushes"])
    writes = sum(f["what"] == "save" for r in produced.values() for f in r["flushes"])
    stats = summary(latencies)
    return {
        "flush_interval_s": flush_interval,
        "events_sent": n * jobs,
        "events_received": len(latencies),
        "lost": lost,
        "missing": missing,
        "duplicated": duplicated,
        "jobs_complete_in_order": complete,
        "events_sent_late": late,  # a producer more than one period behind its schedule
        "flushes": flushes,
        "events_per_flush": round(n * jobs / max(1, flushes), 2),
        "database_writes": writes,
        "events_per_write": round(n * jobs / max(1, writes), 2),
        "latency_ms": stats,
        "latency_from_schedule_ms": summary(from_schedule),
        "parts_ms": {k: summary(v) for k, v in parts.items()},
        "target_p99_ms": TARGET_P99_MS,
        "meets_target": bool(stats) and stats["p99"] <= TARGET_P99_MS and not lost,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--rate", type=float, default=50.0, help="step events per second per job")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--flush-intervals", default="0.025,0",
                        help="EventRecorder flush_interval values to run (0.025: the worker's)")
    parser.add_argument("--redis-db", type=int, default=13)
    parser.add_argument("--database", default="sqlite", choices=["sqlite", "postgres"],
                        help="postgres: a database of its own on 127.0.0.1:5432, dropped at the end")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="lae-bench-"))
    setup_django(tmp, args.redis_db, args.database)
    user, team = make_user("bench")
    cookie = session_cookie(user)
    stack = start_web(tmp)
    runs = []
    try:
        for interval in (float(x) for x in args.flush_intervals.split(",")):
            r = run(stack, cookie, user, team, jobs=args.jobs, rate=args.rate, seconds=args.seconds,
                    flush_interval=interval)
            runs.append(r)
            lat, parts = r["latency_ms"], r["parts_ms"]
            print(f"flush_interval {interval:g} s: {r['events_received']}/{r['events_sent']} events "
                  f"({r['lost']} lost, {r['duplicated']} duplicated, {r['events_per_flush']} per flush); latency "
                  f"p50 {lat['p50']:.1f} p90 {lat['p90']:.1f} p99 {lat['p99']:.1f} max {lat['max']:.1f} ms "
                  f"-> target p99 ≤ {TARGET_P99_MS:g} ms {'met' if r['meets_target'] else 'NOT met'}")
            sched = r["latency_from_schedule_ms"]
            print(f"   from when each event was due: p50 {sched['p50']:.1f} p99 {sched['p99']:.1f} ms; "
                  f"{r['events_sent_late']} events sent over a period late")
            print("   median parts: " + ", ".join(f"{k} {v.get('p50', float('nan')):.1f}" for k, v in parts.items())
                  + " ms; p99: " + ", ".join(f"{k} {v.get('p99', float('nan')):.1f}" for k, v in parts.items()) + " ms")
    finally:
        stack.stop()
        web_log = stack.log("web")
    if "Traceback" in web_log:
        print("the ASGI server logged errors:\n" + web_log[-2000:], file=sys.stderr)
    write("event_latency" if args.database == "sqlite" else "event_latency_postgres", {
        "name": f"{args.jobs} jobs × {args.rate:g} step events/s for {args.seconds:g} s: "
                "EventRecorder → SQLite → Redis channel layer → uvicorn JobConsumer → websocket",
        "jobs": args.jobs, "rate_per_job": args.rate, "seconds": args.seconds,
        "database": "sqlite (WAL)" if args.database == "sqlite" else "postgresql",
        "runs": runs,
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
