"""Submit through the HTTP API, train in a real Celery worker, watch through a real websocket."""
import asyncio
import json
import statistics
import time

import httpx
import pytest
from websockets.asyncio.client import connect

from explorer.accounts.models import ApiToken
from explorer.jobs.models import Job
from tests.conftest import make_user

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

SPEC = {
    "model": {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 24},
    "data": {"source": "synthetic", "task": "copy", "task_length": 6},
    "train": {"steps": 80, "batch_size": 16, "eval_interval": 20, "eval_iters": 2, "warmup_steps": 5, "sample_tokens": 12},
}
TERMINAL = {"succeeded", "failed", "cancelled"}


def user_with_token(name):
    user, _ = make_user(name)
    return user, ApiToken.issue(user, "itest")[1]


def with_steps(steps):
    spec = json.loads(json.dumps(SPEC))
    spec["train"]["steps"] = steps
    return spec


def past_step(n):
    return lambda e: e["kind"] == "step" and e["data"]["step"] >= n


def submit(stack, token, spec):
    resp = httpx.post(f"{stack.url}/api/v1/jobs", json=spec, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


async def watch(stack, cookie, job_id, after=0, until=None, timeout=120):
    """Collect (event, receive time) from the job's socket until a terminal status or ``until``."""
    got = []
    headers = {"Cookie": cookie, "Origin": stack.url}
    async with connect(f"{stack.ws_url}/ws/jobs/{job_id}/?after={after}", additional_headers=headers) as ws:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = json.loads(await asyncio.wait_for(ws.recv(), timeout=deadline - time.monotonic()))
            if msg["type"] != "events":
                continue
            now = time.time()
            for event in msg["events"]:
                got.append((event, now))
                if event["kind"] == "status" and event["data"]["status"] in TERMINAL:
                    return got
                if until and until(event):
                    return got
    raise AssertionError(f"job {job_id} did not finish in {timeout}s; last: {got[-1:]}\n{stack.log('worker')}")


def test_every_step_arrives_in_order_then_the_final_status(stack, session_cookie, capsys):
    user, token = user_with_token("ivan")
    job_id = submit(stack, token, {"name": "itest", **SPEC})
    got = asyncio.run(watch(stack, session_cookie(user), job_id))
    events = [e for e, _ in got]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))  # from 1, no gap, no duplicate
    steps = [e["data"]["step"] for e in events if e["kind"] == "step"]
    assert steps == list(range(1, SPEC["train"]["steps"] + 1))
    assert events[-1]["data"]["status"] == "succeeded"
    assert [e["kind"] for e in events].count("eval") == 4
    job = Job.objects.get(pk=job_id)
    assert job.status == "succeeded" and job.worker == stack.worker_name and job.last_seq == events[-1]["seq"]

    # Latency from the worker's send (event ts) to this client's receive, for live events only.
    first_live = next(i for i, (e, _) in enumerate(got) if e["kind"] == "step")
    latencies = sorted((t - e["ts"]) * 1000 for e, t in got[first_live:] if e["kind"] == "step")
    p50 = statistics.median(latencies)
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    tokens_per_s = job.summary.get("tokens_per_s")
    with capsys.disabled():
        print(f"\n[event latency] worker→browser over {len(latencies)} step events: p50 {p50:.1f} ms, p99 {p99:.1f} ms; "
              f"training {tokens_per_s:.0f} tokens/s (2L/2H/32d, block 24, batch 16, copy task)")
    assert p50 < 5000  # a sanity bound only; the figures are printed above


def test_reconnect_with_last_seq_has_no_gap_and_no_duplicate(stack, session_cookie):
    user, token = user_with_token("judy")
    job_id = submit(stack, token, with_steps(150))
    cookie = session_cookie(user)
    first = asyncio.run(watch(stack, cookie, job_id, until=past_step(20)))
    last_seq = first[-1][0]["seq"]
    time.sleep(0.5)  # events keep arriving while this client is away
    second = asyncio.run(watch(stack, cookie, job_id, after=last_seq))
    seqs = [e["seq"] for e, _ in first + second]
    assert seqs == list(range(1, len(seqs) + 1))
    assert Job.objects.get(pk=job_id).last_seq == seqs[-1]
    steps = [e["data"]["step"] for e, _ in first + second if e["kind"] == "step"]
    assert steps == list(range(1, 151))


def test_cancel_ends_a_running_job_as_cancelled_with_its_events_kept(stack, session_cookie):
    user, token = user_with_token("kim")
    job_id = submit(stack, token, with_steps(50000))
    cookie = session_cookie(user)
    asyncio.run(watch(stack, cookie, job_id, until=past_step(10)))
    resp = httpx.post(f"{stack.url}/api/v1/jobs/{job_id}/cancel", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert resp.status_code == 200, resp.text
    rest = asyncio.run(watch(stack, cookie, job_id, after=0, timeout=60))
    assert rest[-1][0]["data"]["status"] == "cancelled"
    job = Job.objects.get(pk=job_id)
    assert job.status == "cancelled" and 10 <= job.step < 50000
    assert job.events.filter(kind="step").count() == job.step
    assert job.events.filter(kind="end").get().payload["reason"] == "cancelled"


def test_cancel_while_queued(stack, session_cookie):
    """A job cancelled before any worker takes it ends cancelled and never runs."""
    user, token = user_with_token("lee")
    blocker = submit(stack, token, with_steps(50000))  # occupies the single worker
    waiting = submit(stack, token, SPEC)
    auth = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{stack.url}/api/v1/jobs/{waiting}", headers=auth).json()["position"] >= 1
    assert httpx.post(f"{stack.url}/api/v1/jobs/{waiting}/cancel", headers=auth).json()["status"] == "cancelled"
    assert httpx.post(f"{stack.url}/api/v1/jobs/{blocker}/cancel", headers=auth).status_code == 200
    asyncio.run(watch(stack, session_cookie(user), blocker, timeout=60))
    time.sleep(1.0)  # the worker now takes the cancelled job's message and must skip it
    job = Job.objects.get(pk=waiting)
    assert job.status == "cancelled" and job.started_at is None and not job.events.filter(kind="step").exists()
