"""The Workers page in headless Chromium, against the real test worker.

The real worker shows with its device, tiers and a job of the user's team as its current job
(linked), its utilisation bars and a heartbeat a few seconds old; beside it, rows written by the
test: a GPU worker busy with another team's job (shown only as "busy (another team)"), a draining
worker and one offline. A maintainer drains the real worker with a click (its consumers are
cancelled: it takes no new job) and undrains it. Screenshot: docs/screenshots/workers.png.
"""
import copy
import os
import platform
from datetime import timedelta

import celery
import pytest
from django.utils import timezone

from config.celery_app import app
from explorer.accounts.models import Membership, Team
from explorer.jobs import services
from explorer.jobs.models import Job
from explorer.scheduling import workers
from explorer.scheduling.models import Worker
from explorer.training import jobs as training_jobs
from tests.conftest import TINY_SPEC, make_user
from tests.e2e.helpers import log_in

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
GiB = 2**30


def pretend_worker(name, queue, memory, **fields):
    now = timezone.now()
    usable = int(memory * 0.8)
    return Worker.objects.create(name=name, queues=[queue], tiers=workers.tier_queues([queue], usable),
                                 memory_bytes=memory, usable_bytes=usable, heartbeat_at=now,
                                 version=f"celery {celery.__version__} · python {platform.python_version()}", **fields)


def other_teams_job():
    vera, team = make_user("vera")
    spec = copy.deepcopy(TINY_SPEC)
    return Job.objects.create(team=team, owner=vera, name="vera's secret run", spec=spec, queue="gpu",
                              status=Job.Status.RUNNING, started_at=timezone.now(), total_steps=100_000, step=41_200)


def row(page, name):
    return page.locator(f'#workers-body tr[data-worker="{name}"]')


def active_queues(name):
    replies = app.control.inspect([name], timeout=3).active_queues() or {}
    return [q["name"] for q in replies.get(name, [])]


def test_workers_page_live_with_a_drain_click(stack, page, shots):
    user, own_team = make_user("walt")
    crew = Team.objects.create(name="Pretraining crew", slug="pretraining-crew")
    Membership.objects.create(user=user, team=crew, role=Membership.Role.MAINTAINER)
    Membership.objects.create(user=make_user("una")[0], team=crew)
    now = timezone.now()
    pretend_worker("gpu@h200-node", "gpu", 141 * GiB, device_kind="cuda", device_name="NVIDIA H200", cpu_count=16,
                   current_job=other_teams_job(), started_at=now - timedelta(hours=26, minutes=14), cpu_percent=23.0,
                   memory_used_bytes=38 * GiB, gpu_percent=87.0, gpu_memory_used_bytes=96 * GiB)
    pretend_worker("cpu@box-2", "cpu", 32 * GiB, device_kind="cpu", device_name="AMD EPYC 7763", cpu_count=8,
                   status=Worker.Status.DRAINING, started_at=now - timedelta(hours=3, minutes=5), cpu_percent=4.0,
                   memory_used_bytes=5 * GiB)
    gone = pretend_worker("cpu@old-box", "cpu", 16 * GiB, device_kind="cpu", device_name="Intel Xeon", cpu_count=4,
                          started_at=now - timedelta(days=2))
    Worker.objects.filter(pk=gone.pk).update(heartbeat_at=now - timedelta(hours=5))

    spec = copy.deepcopy(TINY_SPEC)
    spec["train"]["steps"] = 50_000
    job = training_jobs.create_job(user, crew, spec, name="copy-task sweep")

    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_viewport_size({"width": 1400, "height": 900})
    log_in(page, stack, "walt")
    page.click("nav >> text=Workers")
    page.wait_for_url("**/workers/")
    real = row(page, stack.worker_name)
    # the real worker: its device, tiers, then the job (a poll every 2.5 s) with a link
    page.wait_for_selector(f'#workers-body tr[data-worker="{stack.worker_name}"] a.job-link', timeout=60_000)
    assert real.locator("a.job-link").get_attribute("href") == f"/jobs/{job.pk}/"
    assert real.locator("[data-role=status]").text_content() == "online"
    assert f"{len(os.sched_getaffinity(0))} CPU cores" in real.locator("[data-role=device]").text_content()
    assert "tiers 1–" in real.locator("[data-role=queues]").text_content()
    assert real.locator(".util").count() == 2  # CPU and RAM bars
    assert "s ago" in real.locator("[data-role=heartbeat]").text_content()

    gpu = row(page, "gpu@h200-node")
    assert gpu.locator("[data-role=job]").text_content().strip() == "busy (another team)"
    assert "secret" not in page.content()
    assert "NVIDIA H200 · 141 GiB" in gpu.locator("[data-role=device]").text_content()
    assert gpu.locator(".util").count() == 4  # CPU, RAM, GPU, VRAM
    assert row(page, "cpu@old-box").locator("[data-role=status]").text_content() == "offline"
    assert row(page, "cpu@box-2").locator("button").text_content() == "Undrain"
    assert page.locator("[data-count=online]").text_content() == "2"

    wait_for_step = "() => /step [1-9]/.test(document.querySelector('a.job-link').nextElementSibling.textContent)"
    page.wait_for_function(wait_for_step, timeout=60_000)  # the job's progress, live
    Worker.objects.exclude(name__in=[stack.worker_name, "cpu@old-box"]).update(heartbeat_at=timezone.now())
    page.evaluate("() => window.workersPage.refresh()")
    page.wait_for_timeout(500)
    page.mouse.move(0, 0)
    page.screenshot(path=str(shots / "workers.png"), full_page=True)

    # drain the real worker: it finishes the job it runs and consumes nothing more
    real.locator("button[data-action=drain]").click()
    page.wait_for_function(f"() => document.querySelector('#workers-body tr[data-worker=\"{stack.worker_name}\"]')"
                           ".dataset.status === 'draining'")
    assert Worker.objects.get(name=stack.worker_name).status == "draining"
    deadline = timezone.now() + timedelta(seconds=10)
    while active_queues(stack.worker_name) and timezone.now() < deadline:
        pass
    assert active_queues(stack.worker_name) == []
    assert real.locator("a.job-link").count() == 1  # still running its job

    real.locator("button[data-action=undrain]").click()
    page.wait_for_function(f"() => document.querySelector('#workers-body tr[data-worker=\"{stack.worker_name}\"]')"
                           ".dataset.status === 'online'")
    assert "cpu" in active_queues(stack.worker_name)
    services.cancel_job(job)
    assert not errors, errors
