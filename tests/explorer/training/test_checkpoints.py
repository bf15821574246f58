"""Checkpoints through the app: listed, downloaded and exported per team; a cancelled job retried
as a new attempt resumes the same loss curve; a job chained onto another's weights."""
import io
import os
import threading
import time
import zipfile

import pytest
import torch
from django.test import Client

import engine
from explorer.jobs import services
from explorer.jobs.models import Job
from explorer.training import checkpoints
from explorer.training import jobs as training_jobs

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def trained(alice, tiny_spec):
    tiny_spec["train"]["checkpoint_every"] = 10
    job = training_jobs.create_job(alice[0], alice[1], tiny_spec, name="pretrain")
    assert training_jobs.run_job(job.pk, "test-worker") == "succeeded"
    job.refresh_from_db()
    return job


def test_checkpoints_are_listed_and_announced_without_server_paths(alice_client, trained):
    body = alice_client.get(f"/api/v1/jobs/{trained.pk}/checkpoints").json()
    assert [c["step"] for c in body] == [10, 20, 30]
    assert all(c["bytes"] > 0 and c["download_url"].endswith(f"/checkpoints/{c['step']}/download") for c in body)
    events = [e.payload for e in trained.events.filter(kind="checkpoint").order_by("seq")]
    assert [e["step"] for e in events] == [10, 20, 30] and events[-1]["name"] == "step-000030"
    assert not any("/" in str(v) for e in events for v in e.values())  # no path reaches users
    page = alice_client.get(f"/jobs/{trained.pk}/").content.decode()
    assert f"/api/v1/jobs/{trained.pk}/checkpoints/30/transformers" in page and "Fine-tune from this" in page


def test_download_is_the_safetensors_checkpoint(alice_client, trained, tmp_path):
    resp = alice_client.get(f"/api/v1/jobs/{trained.pk}/checkpoints/30/download")
    assert resp.status_code == 200 and resp["Content-Type"] == "application/zip"
    zipfile.ZipFile(io.BytesIO(resp.content)).extractall(tmp_path)
    folder = tmp_path / f"job-{trained.pk}-step-30"
    assert sorted(os.listdir(folder)) == ["model.safetensors", "optimizer.safetensors", "trainer.json"]
    model, tokenizer, config = engine.checkpoint.load_model(str(folder))
    assert config.n_embd == 16 and model.num_params() == trained.params
    assert alice_client.get(f"/api/v1/jobs/{trained.pk}/checkpoints/7/download").status_code == 404


def test_transformers_export_loads_with_from_pretrained(alice_client, trained, tmp_path):
    from transformers import AutoModelForCausalLM

    resp = alice_client.get(f"/api/v1/jobs/{trained.pk}/checkpoints/30/transformers")
    assert resp.status_code == 200, resp.content
    zipfile.ZipFile(io.BytesIO(resp.content)).extractall(tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / f"job-{trained.pk}-step-30-transformers").eval()
    ours, tokenizer, _ = engine.checkpoint.load_model(checkpoints.checkpoint_path(trained, 30))
    idx = torch.tensor([tokenizer.encode("abcd")])
    with torch.no_grad():
        assert (hf(idx).logits - ours(idx)[0]).abs().max().item() <= 1e-4


def test_another_team_sees_no_checkpoint(bob, trained):
    client = Client()
    client.force_login(bob[0])
    base = f"/api/v1/jobs/{trained.pk}"
    for url in (f"{base}/checkpoints", f"{base}/checkpoints/30/download", f"{base}/checkpoints/30/transformers"):
        assert client.get(url).status_code == 404
    assert client.post(f"{base}/retry").status_code == 404
    payload = {"model": {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16},
               "data": {"source": "synthetic", "task": "copy", "task_length": 4},
               "train": {"init_from_job": trained.pk}}
    resp = client.post("/api/v1/jobs", payload, content_type="application/json")
    assert resp.status_code == 400 and "no training job" in resp.json()["errors"]["train.init_from_job"]


def test_a_chained_job_starts_from_the_parent_and_refuses_another_architecture(alice, alice_client, trained, tiny_spec):
    tiny_spec["train"] |= {"init_from_job": trained.pk, "steps": 5}
    resp = alice_client.post("/api/v1/jobs", tiny_spec, content_type="application/json")
    assert resp.status_code == 201, resp.content
    child = Job.objects.get(pk=resp.json()["id"])
    assert (child.parent_id, child.parent_step) == (trained.pk, 30)
    assert resp.json()["parent"] == {"id": trained.pk, "step": 30, "url": f"/jobs/{trained.pk}/"}
    assert "init_from" not in resp.json()["spec"]["train"]  # the path stays on the server
    assert training_jobs.run_job(child.pk, "test-worker") == "succeeded"
    assert f"/jobs/{child.pk}/" in alice_client.get(f"/jobs/{trained.pk}/").content.decode()  # "Fine-tuned into"

    tiny_spec["model"]["n_embd"] = 32
    resp = alice_client.post("/api/v1/jobs", tiny_spec, content_type="application/json")
    assert resp.status_code == 400
    assert "n_embd: checkpoint 16, this job 32" in resp.json()["errors"]["train.init_from_job"]
    tiny_spec["train"]["init_from_step"] = 7
    tiny_spec["model"]["n_embd"] = 16
    resp = alice_client.post("/api/v1/jobs", tiny_spec, content_type="application/json")
    assert resp.status_code == 400 and "no checkpoint at step 7" in resp.json()["errors"]["train.init_from_job"]


def test_a_cancelled_job_retried_resumes_the_same_loss_curve(alice, alice_client, tiny_spec):
    tiny_spec["train"] |= {"steps": 1500, "checkpoint_every": 50, "eval_interval": 500, "attention_maps": False}
    job = training_jobs.create_job(alice[0], alice[1], tiny_spec, name="interrupted")
    runner = threading.Thread(target=training_jobs.run_job, args=(job.pk, "test-worker"))
    runner.start()
    deadline = time.monotonic() + 60
    while Job.objects.get(pk=job.pk).step < 60 and time.monotonic() < deadline:
        time.sleep(0.05)
    services.cancel_job(job)
    runner.join(60)
    job.refresh_from_db()
    assert job.status == "cancelled", "the job finished before the cancel: make it longer"
    stopped_at = job.step
    assert checkpoints.checkpoints(job)[-1]["step"] == stopped_at  # saved where the cancel came

    resp = alice_client.post(f"/api/v1/jobs/{job.pk}/retry")
    assert resp.status_code == 200 and resp.json()["status"] == "queued" and resp.json()["attempt"] == 2
    status = job.events.filter(kind="status").order_by("-seq").first().payload
    assert status["attempt"] == 2 and status["resume_from_step"] == stopped_at
    assert training_jobs.run_job(job.pk, "test-worker") == "succeeded"
    assert alice_client.post(f"/api/v1/jobs/{job.pk}/retry").status_code == 409  # succeeded: nothing to retry

    retry_seq = job.events.filter(kind="status", payload__attempt=2).get().seq
    later = [e.payload for e in job.events.filter(kind="step", seq__gt=retry_seq).order_by("seq")]
    assert later[0]["step"] == stopped_at + 1 and later[-1]["step"] == 1500
    curve = {e.payload["step"]: e.payload["loss"] for e in job.events.filter(kind="step", seq__lt=retry_seq)
             if e.payload["step"] <= stopped_at}
    curve.update({e["step"]: e["loss"] for e in later})
    whole = engine.train(engine.parse_spec(job.spec))  # the same spec, never interrupted
    assert [curve[s] for s in range(1, 1501)] == pytest.approx(whole.train_losses, abs=1e-5)


def test_retry_is_refused_while_a_job_is_queued(alice, alice_client, tiny_spec):
    job = training_jobs.create_job(alice[0], alice[1], tiny_spec)
    resp = alice_client.post(f"/api/v1/jobs/{job.pk}/retry")
    assert resp.status_code == 409 and "queued" in resp.json()["detail"]
