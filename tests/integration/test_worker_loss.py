"""A worker killed with SIGKILL mid-job does not leave the job "running" forever: its heartbeat
stops, the reaper fails it with the reason, and the events up to the kill are kept."""
import asyncio
import os
import signal
import time

import pytest

from explorer import services
from explorer.models import Job
from tests.integration.test_job_stream import past_step, submit, user_with_token, watch, with_steps

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_killed_worker_leaves_no_job_running(stack, session_cookie):
    user, token = user_with_token("mallory")
    job_id = submit(stack, token, with_steps(50000))
    asyncio.run(watch(stack, session_cookie(user), job_id, until=past_step(5)))
    worker = stack.procs["worker"]
    os.killpg(worker.pid, signal.SIGKILL)  # the main process and its pool child, no clean-up
    worker.wait(10)
    try:
        steps_at_kill = Job.objects.get(pk=job_id).step
        assert Job.objects.get(pk=job_id).status == "running"
        time.sleep(2.5)
        assert services.reap_stale_jobs(timeout_s=2) == [job_id]
        job = Job.objects.get(pk=job_id)
        assert job.status == "failed" and stack.worker_name in job.error and "heartbeat" in job.error
        assert job.events.filter(kind="step").count() == steps_at_kill >= 5
        assert job.events.order_by("-seq").first().payload["status"] == "failed"
    finally:
        stack.start_worker()  # later tests get a live worker again
