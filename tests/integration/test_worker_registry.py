"""The real test worker (``celery -A config.celery_app worker -Q cpu``) registers itself: its real CPU
count and memory, its memory-tier queues (consumed without any command-line change), heartbeats
that advance; a job runs on it and shows as its current job; a job routed to a tier it consumes
runs; drained, it takes no job until undrained."""
import os
import time
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from config.celery_app import app
from explorer.jobs import services
from explorer.jobs.models import Job
from explorer.scheduling import workers
from explorer.scheduling.models import Worker
from explorer.training import jobs as training_jobs
from tests.conftest import TINY_SPEC, make_user

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def wait_for(check, timeout=30, every=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {check.__doc__ or check}")


def the_worker(stack):
    """The stack's worker row (the heartbeat registers it again after a test's database flush)."""
    return wait_for(lambda: Worker.objects.filter(name=stack.worker_name).first(), timeout=15)


def active_queues(stack):
    replies = app.control.inspect([stack.worker_name], timeout=3).active_queues() or {}
    return sorted(q["name"] for q in replies.get(stack.worker_name, []))


def spec(steps):
    s = {section: dict(values) for section, values in TINY_SPEC.items()}
    s["train"]["steps"] = steps
    return s


def test_the_worker_registers_its_device_and_heartbeats(stack):
    worker = the_worker(stack)
    total, _ = workers.host_memory()
    assert worker.queues == ["cpu"] and worker.device_kind == "cpu" and worker.status == "online"
    assert worker.cpu_count == len(os.sched_getaffinity(0)) and worker.memory_bytes == total
    assert worker.usable_bytes == int(total * 0.8) and worker.pid == stack.procs["worker"].pid
    assert worker.tiers == workers.tier_queues(["cpu"], worker.usable_bytes) and "cpu.1g" in worker.tiers
    # the worker consumes its tiers and its own queue, though started with "-Q cpu" only
    assert active_queues(stack) == sorted(workers.consumed(worker))

    first = worker.heartbeat_at
    later = wait_for(lambda: Worker.objects.filter(name=stack.worker_name, heartbeat_at__gt=first).first(), timeout=15)
    assert later.cpu_percent is not None and 0 < later.memory_used_bytes <= total
    assert workers.online_count("cpu") == 1 and workers.online_count("cpu.1g") == 1


def test_a_running_job_is_the_workers_current_job(stack):
    user, team = make_user("wanda")
    the_worker(stack)
    job = training_jobs.create_job(user, team, spec(50000), name="long run")
    assert Job.objects.get(pk=job.pk).route == ""  # the only worker can hold it: the plain queue
    wait_for(lambda: Worker.objects.filter(name=stack.worker_name, current_job=job.pk).exists(), timeout=60)
    assert Job.objects.get(pk=job.pk).worker == stack.worker_name

    browser = Client()
    browser.force_login(user)
    seen = [w for w in browser.get("/api/v1/workers").json()["workers"] if w["name"] == stack.worker_name][0]
    assert seen["current_job"]["id"] == job.pk and seen["status"] == "online"

    services.cancel_job(job)
    wait_for(lambda: Job.objects.get(pk=job.pk).status == "cancelled", timeout=60)
    wait_for(lambda: Worker.objects.filter(name=stack.worker_name, current_job=None).exists(), timeout=10)


def test_a_job_routed_to_a_memory_tier_runs_on_a_worker_that_consumes_it(stack):
    user, team = make_user("xena")
    the_worker(stack)
    now = timezone.now()
    # a (pretend) second worker too small for the job: the job must go to a tier only the real one consumes
    Worker.objects.create(name="small@nowhere", queues=["cpu"], tiers=[], memory_bytes=2**17, usable_bytes=2**16,
                          cpu_count=1, heartbeat_at=now, started_at=now - timedelta(minutes=5))
    job = training_jobs.create_job(user, team, spec(20), name="tiered")
    assert Job.objects.get(pk=job.pk).route == "cpu.1g"
    done = wait_for(lambda: Job.objects.filter(pk=job.pk, status__in=Job.TERMINAL).first(), timeout=90)
    assert done.status == "succeeded" and done.worker == stack.worker_name


def test_a_drained_worker_takes_no_job_until_undrained(stack):
    user, team = make_user("yuri")
    user.is_staff = True
    user.save()
    worker = the_worker(stack)
    workers.set_draining(user, worker, True)
    wait_for(lambda: active_queues(stack) == [], timeout=10)
    try:
        job = training_jobs.create_job(user, team, spec(20), name="waits")
        time.sleep(4)
        assert Job.objects.get(pk=job.pk).status == "queued"
        assert Worker.objects.get(name=stack.worker_name).status == "draining"  # heartbeats keep it so
    finally:
        workers.set_draining(user, Worker.objects.get(name=stack.worker_name), False)
    wait_for(lambda: active_queues(stack) == sorted(workers.consumed(worker)), timeout=10)
    done = wait_for(lambda: Job.objects.filter(pk=job.pk, status__in=Job.TERMINAL).first(), timeout=90)
    assert done.status == "succeeded"
