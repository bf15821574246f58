"""A worker killed with SIGKILL mid-job does not leave the job "running" forever: its heartbeat
stops and the reaper requeues it once, as attempt 2, which a worker resumes from the last
checkpoint (the events up to the kill are kept); killed again, it fails with the reason."""
import asyncio
import os
import signal
import time

import pytest

from explorer.jobs import lifecycle
from explorer.jobs.models import Job
from tests.integration.test_job_stream import past_step, submit, user_with_token, watch, with_steps

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_killed_worker_job_is_requeued_once_and_resumes_from_its_checkpoint(stack, session_cookie):
    user, token = user_with_token("mallory")
    spec = with_steps(50000)
    spec["train"]["checkpoint_every"] = 25
    job_id = submit(stack, token, spec)
    seen = asyncio.run(watch(stack, session_cookie(user), job_id, until=past_step(60)))
    kill_worker(stack)
    try:
        steps_at_kill = Job.objects.get(pk=job_id).step
        assert Job.objects.get(pk=job_id).status == "running"
        time.sleep(2.5)
        assert lifecycle.reap_stale_jobs(timeout_s=2) == [job_id]
        job = Job.objects.get(pk=job_id)
        assert (job.status, job.attempt) == ("queued", 2)
        requeue = job.events.order_by("-seq").first()
        checkpoint = requeue.payload["resume_from_step"]
        assert 50 <= checkpoint <= steps_at_kill and checkpoint % 25 == 0
        assert stack.worker_name in requeue.payload["reason"] and "heartbeat" in requeue.payload["reason"]
        # kept: every saved step (the last ~0.25 s a worker sends before saving may be lost: logged as
        # such, so the requeue is numbered after everything the browser saw and reaches it)
        assert job.events.filter(kind="step", seq__lt=requeue.seq).count() >= steps_at_kill >= 50
        assert requeue.seq > max(e["seq"] for e, _ in seen)
        lost = job.events.filter(kind="lost").count()
        assert requeue.seq - 1 == job.events.filter(seq__lt=requeue.seq).count() and lost <= requeue.seq
    finally:
        stack.start_worker()

    # the new worker takes the requeued job and goes on from the checkpoint
    got = asyncio.run(watch(stack, session_cookie(user), job_id, after=requeue.seq, until=past_step(checkpoint + 10)))
    steps = [e["data"]["step"] for e, _ in got if e["kind"] == "step"]
    assert steps[0] == checkpoint + 1
    start = next(e["data"] for e, _ in got if e["kind"] == "start")
    assert start["resumed_from_step"] == checkpoint

    # killed again: no second requeue, the job fails with the reason
    kill_worker(stack)
    try:
        time.sleep(2.5)
        assert lifecycle.reap_stale_jobs(timeout_s=2) == [job_id]
        job = Job.objects.get(pk=job_id)
        assert job.status == "failed" and "heartbeat" in job.error and "already requeued once" in job.error
        assert job.events.order_by("-seq").first().payload["status"] == "failed"
    finally:
        stack.start_worker()  # later tests get a live worker again


def kill_worker(stack):
    worker = stack.procs["worker"]
    os.killpg(worker.pid, signal.SIGKILL)  # the main process and its pool child, no clean-up
    worker.wait(10)
