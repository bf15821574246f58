"""Job lifecycle through the service layer with the real engine (tiny shapes) and real Redis."""
import threading
import time

import pytest
from django.utils import timezone

from explorer.jobs import lifecycle, services
from explorer.jobs.models import Job
from explorer.training import jobs as training_jobs

pytestmark = pytest.mark.django_db(transaction=True)


def kinds(job):
    return list(job.events.order_by("seq").values_list("kind", flat=True))


def test_run_job_trains_and_logs_every_event(alice, tiny_spec):
    job = training_jobs.create_job(alice[0], alice[1], tiny_spec, name="copy")
    assert training_jobs.run_job(job.pk, "test-worker") == Job.Status.SUCCEEDED
    job.refresh_from_db()
    assert job.status == "succeeded" and job.worker == "test-worker" and job.finished_at
    assert job.step == 30 and job.device == "cpu"
    seqs = list(job.events.order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, len(seqs) + 1)) and job.last_seq == seqs[-1]  # no gaps
    k = kinds(job)
    assert k[:3] == ["status", "status", "start"] and k[-2:] == ["end", "status"]
    assert k.count("step") == 30 and k.count("eval") == 3
    assert job.events.last().payload == {"status": "succeeded"}
    assert job.summary["loss"] > 0 and "val_loss" in job.summary and "tokens_per_s" in job.summary


def test_run_job_skips_a_job_that_is_not_queued(alice, tiny_spec):
    job = training_jobs.create_job(alice[0], alice[1], tiny_spec)
    services.cancel_job(job)
    assert training_jobs.run_job(job.pk, "w") is None
    job.refresh_from_db()
    assert job.status == "cancelled" and "step" not in kinds(job)


def test_cancel_running_job_stops_it_and_keeps_events(alice, tiny_spec):
    tiny_spec["train"]["steps"] = 5000
    job = training_jobs.create_job(alice[0], alice[1], tiny_spec)
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("status", training_jobs.run_job(job.pk, "w")))
    thread.start()
    deadline = time.monotonic() + 30
    while Job.objects.get(pk=job.pk).step < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert services.cancel_job(Job.objects.get(pk=job.pk))
    thread.join(30)
    job.refresh_from_db()
    assert result["status"] == job.status == "cancelled"
    assert 5 <= job.step < 5000
    assert kinds(job).count("step") == job.step and kinds(job)[-2:] == ["end", "status"]


def test_failure_is_recorded_with_the_reason(alice, tiny_spec):
    job = training_jobs.create_job(alice[0], alice[1], tiny_spec)
    Job.objects.filter(pk=job.pk).update(spec={**job.spec, "model": {**job.spec["model"], "n_head": 3}})
    assert training_jobs.run_job(job.pk, "w") == "failed"
    job.refresh_from_db()
    assert job.status == "failed" and "n_head" in job.error
    assert job.events.last().payload["status"] == "failed"


def test_cuda_job_without_gpu_fails_cleanly(alice, tiny_spec):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    tiny_spec["train"]["device"] = "cuda"
    job = training_jobs.create_job(alice[0], alice[1], tiny_spec)
    assert job.queue == "gpu"
    assert training_jobs.run_job(job.pk, "w") == "failed"
    job.refresh_from_db()
    assert "CUDA" in job.error or "cuda" in job.error


def test_reaper_requeues_once_then_fails_jobs_whose_worker_vanished(alice, tiny_spec):
    job = training_jobs.create_job(alice[0], alice[1], tiny_spec)
    stale = timezone.now() - timezone.timedelta(seconds=600)
    Job.objects.filter(pk=job.pk).update(status="running", worker="gone@host", heartbeat_at=stale, started_at=stale)
    fresh = training_jobs.create_job(alice[0], alice[1], tiny_spec)
    Job.objects.filter(pk=fresh.pk).update(status="running", heartbeat_at=timezone.now())
    assert lifecycle.reap_stale_jobs(timeout_s=60) == [job.pk]
    job.refresh_from_db()
    assert (job.status, job.attempt, job.auto_retries, job.error) == ("queued", 2, 1, "")
    status = job.events.order_by("-seq").first().payload
    assert status["status"] == "queued" and status["attempt"] == 2 and status["resume_from_step"] == 0
    assert "gone@host" in status["reason"] and "start over" in status["reason"]
    assert Job.objects.get(pk=fresh.pk).status == "running"

    # the second loss: failed, with the reason and the earlier requeue
    Job.objects.filter(pk=job.pk).update(status="running", worker="gone@host", heartbeat_at=stale)
    assert lifecycle.reap_stale_jobs(timeout_s=60) == [job.pk]
    job.refresh_from_db()
    assert job.status == "failed" and "gone@host" in job.error and "heartbeat" in job.error
    assert "already requeued once" in job.error


def test_worker_restart_requeues_its_orphans_once(alice, tiny_spec):
    job = training_jobs.create_job(alice[0], alice[1], tiny_spec)
    Job.objects.filter(pk=job.pk).update(status="running", worker="cpu@box", heartbeat_at=timezone.now())
    assert lifecycle.fail_orphaned_jobs("cpu@box") == [job.pk]
    assert Job.objects.get(pk=job.pk).status == "queued"
    Job.objects.filter(pk=job.pk).update(status="running", worker="cpu@box")
    assert lifecycle.fail_orphaned_jobs("cpu@box") == [job.pk]
    assert Job.objects.get(pk=job.pk).status == "failed"


def test_queue_positions_follow_submission_order(alice, bob, tiny_spec):
    a1 = training_jobs.create_job(alice[0], alice[1], tiny_spec)
    b1 = training_jobs.create_job(bob[0], bob[1], tiny_spec)
    a2 = training_jobs.create_job(alice[0], alice[1], tiny_spec)
    positions = services.queue_positions([a1, b1, a2])
    # no job running: submission order across teams (explorer.jobs.queue), starts one after another
    assert {pk: p["position"] for pk, p in positions.items()} == {a1.pk: 1, b1.pk: 2, a2.pk: 3}
    starts = [positions[j.pk]["starts_in_s"] for j in (a1, b1, a2)]
    assert starts[0] == 0 and starts == sorted(starts) and starts[1] > 0


def test_relevant_config_drops_fields_that_do_not_apply(tiny_spec):
    import engine

    spec = engine.parse_spec(tiny_spec).to_dict()
    shown = training_jobs.relevant_config(spec)
    assert "window" not in shown["model"] and "top_k" not in shown["model"] and "rope_theta" not in shown["model"]
    assert shown["model"]["n_layer"] == 1 and "path" not in shown["data"]
    spec["model"].update(attention="sliding", n_expert=4, position="rope")
    shown = training_jobs.relevant_config(spec)
    assert {"window", "top_k", "capacity_factor", "rope_theta"} <= set(shown["model"])
    assert "dilation" not in shown["model"]


@pytest.mark.parametrize("family", __import__("engine").choices()["family"])
def test_every_family_trains_as_a_job(alice, tiny_spec, family):
    tiny_spec["model"]["family"] = family
    tiny_spec["train"].update(steps=10, eval_interval=5)
    job = training_jobs.create_job(alice[0], alice[1], tiny_spec)
    assert training_jobs.run_job(job.pk, "w") == Job.Status.SUCCEEDED, Job.objects.get(pk=job.pk).error
    job.refresh_from_db()
    evals = [e.payload for e in job.events.filter(kind="eval")]
    assert len(evals) == 2 and evals[-1]["accuracy"] is not None and evals[-1]["sample"]["completion"] is not None


def test_a_run_stopped_by_its_nan_policy_fails_with_the_reason(alice, tiny_spec, monkeypatch):
    import math

    import engine.training.loop as engine_train  # the module; ``engine.train`` is the function
    build_plain = engine_train.build_model

    def build(cfg):  # the model's training loss turns NaN at its third step
        model, calls = build_plain(cfg), []
        plain = model.forward

        def forward(*args, **kw):
            logits, loss = plain(*args, **kw)
            if model.training:
                calls.append(1)
                loss = loss * math.nan if len(calls) == 3 else loss
            return logits, loss

        model.forward = forward
        return model

    monkeypatch.setattr(engine_train, "build_model", build)
    tiny_spec["train"]["on_nonfinite"] = "stop"
    job = training_jobs.create_job(alice[0], alice[1], tiny_spec, name="diverges")
    assert training_jobs.run_job(job.pk, "w") == Job.Status.FAILED
    job.refresh_from_db()
    assert job.status == "failed" and ("non-finite" in job.error or "nan" in job.error.lower()), job.error
    assert "nonfinite" in kinds(job) and job.events.filter(kind="end").get().payload["reason"] == "nonfinite"



def test_a_job_out_of_memory_fails_with_the_reason_and_the_estimate(alice, tiny_spec):
    """A worker process whose address space is capped (as a container's memory limit would) runs
    a job that fits the queue's budget but not the cap: torch's allocator fails for real."""
    import os
    import subprocess
    import sys

    from django.db import connection

    from tests.stack import ROOT, database_url

    tiny_spec["model"] |= {"n_embd": 512, "n_head": 8, "n_layer": 4, "block_size": 256}
    tiny_spec["data"] = {"source": "stdlib", "tokenizer": "byte"}
    tiny_spec["train"] |= {"batch_size": 64, "steps": 5}
    job = training_jobs.create_job(alice[0], alice[1], tiny_spec)
    script = (
        "import os, resource, django\n"
        "django.setup()\n"
        "import torch, engine\n"
        "from explorer.training import jobs as training_jobs\n"
        "size = next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmSize'))\n"
        "resource.setrlimit(resource.RLIMIT_AS, (size + 600 * 2**20, resource.RLIM_INFINITY))\n"
        f"print(training_jobs.run_job({job.pk}, 'capped-worker'))\n"
    )
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="config.settings.test", DATABASE_URL=database_url(connection.settings_dict))
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.stdout.strip().endswith("failed"), done.stdout + done.stderr
    job.refresh_from_db()
    assert job.status == "failed"
    assert job.error.startswith("Out of memory on cpu:"), job.error
    assert "The analysis estimated" in job.error and "activations" in job.error and "Lower batch_size" in job.error
