"""explorer.scheduling.workers: the fit gate's routes and refusals, the device probe, draining rights and
who sees which current job."""
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from explorer.accounts.models import Membership
from explorer.jobs.models import Job
from explorer.scheduling import workers
from explorer.scheduling.models import Worker
from explorer.training import jobs as training_jobs
from tests.conftest import make_user

pytestmark = pytest.mark.django_db
GiB = 2**30


def add_worker(name, usable_gib, queue="cpu", stale=False, **fields):
    usable = int(usable_gib * GiB)
    beat = timezone.now() - timedelta(seconds=300 if stale else 1)
    return Worker.objects.create(name=name, queues=[queue], tiers=workers.tier_queues([queue], usable),
                                 device_kind="cuda" if queue == "gpu" else "cpu", device_name="test device",
                                 cpu_count=4, memory_bytes=int(usable / 0.8), usable_bytes=usable,
                                 heartbeat_at=beat, started_at=beat - timedelta(hours=1), **fields)


# ---------------------------------------------------------------------------- tiers and the gate
def test_a_worker_consumes_every_tier_it_can_hold():
    assert workers.tier_queues(["cpu"], 5 * GiB) == ["cpu.1g", "cpu.2g", "cpu.4g"]
    assert workers.tier_queues(["gpu"], int(0.9 * GiB)) == []
    w = add_worker("small@box", 2.5)
    assert workers.consumed(w) == ["cpu", "cpu.1g", "cpu.2g", "cpu.worker.small@box"]


def test_without_registered_workers_the_configured_budget_decides(settings):
    settings.WORKER_MEMORY_BUDGET_MB = {"cpu": 1, "gpu": 1}
    assert workers.fit_gate("cpu", 2**19) == "cpu"
    with pytest.raises(workers.FitError, match=r"2.0 MiB exceeds the cpu workers' budget of 1.0 MiB"):
        workers.fit_gate("cpu", 2**21)


def test_a_job_every_worker_can_hold_goes_to_the_plain_queue():
    add_worker("small@box", 4)
    add_worker("big@box", 16)
    assert workers.fit_gate("cpu", 3 * GiB) == "cpu"


@pytest.mark.parametrize("need_gib, route", [(4.5, "cpu.8g"), (8, "cpu.8g"), (9, "cpu.16g"), (16, "cpu.16g")])
def test_a_job_only_some_can_hold_goes_to_the_smallest_tier_that_covers_it(need_gib, route):
    add_worker("small@box", 4)
    add_worker("big@box", 16)
    got = workers.fit_gate("cpu", int(need_gib * GiB))
    assert got == route
    # only workers that can hold the job consume that queue
    takers = [w.name for w in Worker.objects.all() if got in workers.consumed(w)]
    assert takers == ["big@box"]


def test_between_tiers_the_job_goes_to_the_one_worker_that_can_hold_it():
    add_worker("small@box", 4)
    add_worker("mid@box", 7.5)  # holds 5 GiB, but consumes tiers up to cpu.4g only
    assert workers.fit_gate("cpu", 5 * GiB) == "cpu.worker.mid@box"
    assert workers.online_count("cpu.worker.mid@box") == 1


def test_a_job_no_worker_can_hold_is_refused_with_the_numbers():
    add_worker("small@box", 4)
    add_worker("big@box", 7.8)
    add_worker("huge@box", 64, queue="gpu")  # another queue's workers do not count
    with pytest.raises(workers.FitError) as exc:
        workers.fit_gate("cpu", int(12.3 * GiB))
    assert str(exc.value) == ("estimated training memory 12.3 GiB fits no cpu worker: the largest online cpu worker "
                              "has 7.8 GiB usable (big@box)")


def test_offline_workers_count_only_when_none_is_online():
    add_worker("small@box", 4)
    add_worker("gone@box", 64, stale=True)
    with pytest.raises(workers.FitError, match="largest online cpu worker has 4.0 GiB usable"):
        workers.fit_gate("cpu", 10 * GiB)
    Worker.objects.filter(name="small@box").update(status=Worker.Status.OFFLINE)
    # all stopped: a job waits for the workers it knows, in the tier that fits it
    assert workers.fit_gate("cpu", 10 * GiB) == "cpu.16g"
    with pytest.raises(workers.FitError, match="largest registered cpu worker has 64.0 GiB"):
        workers.fit_gate("cpu", 100 * GiB)


def test_capacity_is_the_largest_live_worker_or_the_budget(settings):
    settings.WORKER_MEMORY_BUDGET_MB = {"cpu": 1024, "gpu": 1}
    assert workers.capacity("cpu") == GiB
    add_worker("small@box", 4)
    add_worker("big@box", 16)
    assert workers.capacity("cpu") == 16 * GiB


def test_a_stopped_smaller_worker_keeps_big_jobs_off_the_plain_queue():
    add_worker("big@box", 16)
    add_worker("small@box", 2, stale=True)  # may come back, and take from "cpu"
    assert workers.fit_gate("cpu", GiB) == "cpu"
    assert workers.fit_gate("cpu", 3 * GiB) == "cpu.4g"


def test_route_for_never_refuses():
    add_worker("small@box", 1.5)
    assert workers.route_for("cpu", 10 * GiB) == "cpu"


def test_the_composer_refuses_a_job_no_worker_can_hold(alice_client, tiny_spec):
    add_worker("tiny@box", 2**-14)  # 64 KiB usable; the tiny spec needs about 256 KiB
    resp = alice_client.post("/api/v1/jobs", tiny_spec, content_type="application/json")
    assert resp.status_code == 400
    message = resp.json()["errors"]["train.batch_size"]
    assert "fits no cpu worker: the largest online cpu worker has 64.0 KiB usable (tiny@box)" in message
    assert message.endswith("lower batch_size, block_size, n_embd or n_layer")
    assert Job.objects.count() == 0


def test_enqueue_sends_the_job_to_its_route(alice, tiny_spec, monkeypatch, django_capture_on_commit_callbacks):
    from explorer.jobs import tasks

    sent = []

    class Result:
        id = "task-1"

    monkeypatch.setattr(tasks.run_job, "apply_async", lambda args, queue: sent.append((args, queue)) or Result())
    add_worker("tiny@box", 2**-14)
    add_worker("big@box", 8)
    with django_capture_on_commit_callbacks(execute=True):
        job = training_jobs.create_job(alice[0], alice[1], tiny_spec)
    job.refresh_from_db()
    assert sent == [([job.pk], "cpu.1g")] and job.route == "cpu.1g" and job.queue == "cpu"

    Worker.objects.filter(name="tiny@box").delete()  # now every worker holds it: the plain queue
    with django_capture_on_commit_callbacks(execute=True):
        job = training_jobs.create_job(alice[0], alice[1], tiny_spec)
    job.refresh_from_db()
    assert sent[-1] == ([job.pk], "cpu") and job.route == ""


# ---------------------------------------------------------------------------- the device
def test_the_probe_measures_this_machine(settings):
    import os

    settings.WORKER_MEMORY_FRACTION = 0.5
    device = workers.probe_device(["cpu"], concurrency=2)
    assert device["device_kind"] == "cpu" and device["cpu_count"] == len(os.sched_getaffinity(0))
    assert device["memory_bytes"] > 256 * 2**20
    assert device["usable_bytes"] == int(device["memory_bytes"] * 0.5 / 2)
    fields, times = workers.utilisation("cpu")
    assert 0 <= fields["cpu_percent"] <= 100 and 0 < fields["memory_used_bytes"] <= device["memory_bytes"]
    again, _ = workers.utilisation("cpu", times)
    assert 0 <= again["cpu_percent"] <= 100


def test_a_gpu_worker_reads_its_gpu_from_nvidia_smi(monkeypatch, settings):
    import subprocess

    settings.WORKER_MEMORY_FRACTION = 0.9
    seen = []

    def run(cmd, **kw):
        seen.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout="NVIDIA H200, 143771, 1024, 37\n")

    monkeypatch.setattr(workers.subprocess, "run", run)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,4")
    device = workers.probe_device(["gpu"])
    assert device["device_kind"] == "cuda" and device["device_name"] == "NVIDIA H200"
    assert device["memory_bytes"] == 143771 * 2**20 and device["usable_bytes"] == int(143771 * 2**20 * 0.9)
    assert seen[0][-2:] == ["-i", "3"]  # the worker's first visible GPU
    fields, _ = workers.utilisation("cuda")
    assert fields["gpu_percent"] == 37.0 and fields["gpu_memory_used_bytes"] == 2**30

    monkeypatch.setattr(workers.subprocess, "run", lambda *a, **k: (_ for _ in ()).throw(FileNotFoundError()))
    assert workers.probe_device(["gpu"])["usable_bytes"] == 0  # unknown: the fit gate leaves it out


# ---------------------------------------------------------------------------- draining
def shared_team_member(role, name="carol"):
    """A user in bob's team with ``role`` (besides admin of their own personal team)."""
    user, _ = make_user(name)
    bob, team = make_user("bob")
    Membership.objects.create(user=user, team=team, role=role)
    c = Client()
    c.force_login(user)
    return user, c


@pytest.fixture
def controls(monkeypatch):
    calls = []
    monkeypatch.setattr(workers, "control", lambda action, worker: calls.append((action, worker.name)))
    return calls


def test_members_cannot_drain(controls):
    add_worker("cpu@box", 4)
    _, c = shared_team_member(Membership.Role.MEMBER)
    resp = c.post("/api/v1/workers/cpu@box/drain")
    assert resp.status_code == 403 and "maintainers" in resp.json()["detail"]
    assert Worker.objects.get().status == "online" and controls == []
    assert c.get("/api/v1/workers").json()["can_manage"] is False


def test_the_admin_of_a_personal_team_only_cannot_drain(alice_client, controls):
    add_worker("cpu@box", 4)
    assert alice_client.post("/api/v1/workers/cpu@box/drain").status_code == 403


def test_a_maintainer_drains_and_undrains(controls):
    add_worker("cpu@box", 4)
    _, c = shared_team_member(Membership.Role.MAINTAINER)
    resp = c.post("/api/v1/workers/cpu@box/drain")
    assert resp.status_code == 200 and resp.json()["status"] == "draining"
    assert Worker.objects.get().status == "draining" and controls == [("cancel_consumer", "cpu@box")]
    assert workers.online_count("cpu") == 0  # takes no new job
    resp = c.post("/api/v1/workers/cpu@box/undrain")
    assert resp.json()["status"] == "online" and controls[-1] == ("add_consumer", "cpu@box")
    assert c.post("/api/v1/workers/nobody@box/drain").status_code == 404


def test_staff_can_drain(client, controls):
    add_worker("cpu@box", 4)
    client.force_login(get_user_model().objects.create_user("ops", password="pw-ops-123", is_staff=True))
    assert client.post("/api/v1/workers/cpu@box/drain").status_code == 200


def test_control_cancels_every_queue_of_the_worker(monkeypatch):
    from config.celery_app import app

    calls = []
    monkeypatch.setattr(app.control, "cancel_consumer", lambda queue, destination: calls.append((queue, destination)))
    workers.control("cancel_consumer", add_worker("cpu@box", 2.5))
    assert calls == [(q, ["cpu@box"]) for q in ("cpu", "cpu.1g", "cpu.2g", "cpu.worker.cpu@box")]


# ---------------------------------------------------------------------------- what users see
def test_another_teams_current_job_shows_only_as_busy(alice, bob, alice_client, tiny_spec):
    job = training_jobs.create_job(bob[0], bob[1], tiny_spec, name="bob's secret")
    add_worker("cpu@box", 4, current_job=job, cpu_percent=42.0, memory_used_bytes=GiB)
    seen = alice_client.get("/api/v1/workers").json()["workers"][0]
    assert seen["current_job"] == {"busy": True} and "secret" not in str(seen)
    assert seen["status"] == "online" and seen["utilisation"]["cpu_percent"] == 42.0

    c = Client()
    c.force_login(bob[0])
    mine = c.get("/api/v1/workers").json()["workers"][0]["current_job"]
    assert mine["id"] == job.pk and mine["url"] == f"/jobs/{job.pk}/" and mine["name"] == "bob's secret"


def test_a_silent_worker_shows_offline_without_job_or_utilisation(alice, alice_client, tiny_spec):
    job = training_jobs.create_job(alice[0], alice[1], tiny_spec)
    add_worker("gone@box", 4, stale=True, current_job=job, cpu_percent=10.0)
    seen = alice_client.get("/api/v1/workers").json()["workers"][0]
    assert seen["status"] == "offline" and seen["current_job"] is None and seen["utilisation"] is None


def test_the_workers_page_needs_a_login(alice_client):
    add_worker("cpu@box", 4)
    anonymous = Client()
    assert anonymous.get("/workers/").status_code == 302
    assert anonymous.get("/api/v1/workers").status_code == 401
    page = alice_client.get("/workers/")
    assert page.status_code == 200 and b"cpu@box" in page.content and b'href="/workers/"' in page.content
