"""GET /api/v1/jobs/{id}/attention/region: detail of a long input's attention maps, recomputed
from the job's checkpoint on the event's own input, scoped to the job's team."""
import base64
import shutil

import pytest
import torch
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

import engine
from engine.introspect.attention_maps import decode_maps, display_token, event_inputs
from engine.introspect.attention_zoom import attention_region
from explorer.datasets.uploads import save_upload
from explorer.jobs import services
from explorer.training import attention_detail, checkpoints
from explorer.training import jobs as training_jobs

pytestmark = pytest.mark.django_db(transaction=True)

TEXT = ("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
        "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles\n") * 260


@pytest.fixture
def long_job(alice, settings, tmp_path):
    """A real job with a 2,048-token context: 1 layer, 2 heads, width 32, trained 4 steps, its
    "attention" events made by engine.train, a checkpoint at the end."""
    settings.CHECKPOINT_ROOT = tmp_path / "checkpoints"
    user, team = alice
    dataset = save_upload(team, user, SimpleUploadedFile("hamlet.txt", TEXT.encode()))
    raw = {"model": {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 2048},
           "data": {"source": "text", "dataset": dataset.pk, "tokenizer": "char"},
           "train": {"steps": 4, "batch_size": 2, "eval_interval": 4, "eval_iters": 1, "warmup_steps": 1,
                     "sample_tokens": 4, "checkpoint_every": 4}}
    job = training_jobs.create_job(user, team, raw, name="long context")
    assert training_jobs.run_job(job.pk, "test-worker") == "succeeded"
    job.refresh_from_db()
    return job


def decode(body):
    raw = torch.frombuffer(bytearray(base64.b64decode(body["maps"])), dtype=torch.uint8)
    return raw.float().div(255).mul(body["scale"]).reshape(body["shape"])


def test_region_equals_the_engine_on_the_events_input(alice_client, long_job):
    event = long_job.events.filter(kind="attention").order_by("-seq").first().payload
    ov = event["stacks"]["self"]["overview"]
    assert ov["length"] == [2048, 2048] and ov["shape"] == [1, 2, 128, 128] and ov["block"] == [16, 16]
    url = f"/api/v1/jobs/{long_job.pk}/attention/region"
    body = alice_client.get(url, {"step": event["step"], "layer": 0, "head": 1,
                                  "q0": 1000, "q1": 1100, "k0": 950, "k1": 1070}).json()
    assert body["checkpoint_step"] == 4 and body["block"] == [1, 1] and body["shape"] == [100, 120]
    model, tokenizer, _ = engine.checkpoint.load_model(checkpoints.checkpoint_path(long_job))
    (idx,), _ = event_inputs(event)
    expected = attention_region(model, idx, 0, 1, 1000, 1100, 950, 1070)["weights"]
    assert (decode(body) - expected).abs().max() <= body["scale"] / 255
    assert body["queries"] == [display_token(tokenizer.decode([i])) for i in idx[0, 1000:1100].tolist()]
    assert len(body["keys"]) == 120
    # the whole map, pooled: no labels, rows of cells are distributions over key blocks
    whole = alice_client.get(url, {"head": 0}).json()
    assert whole["block"] == [16, 16] and whole["shape"] == [128, 128] and whole["queries"] is None
    assert torch.allclose(decode(whole).sum(-1), torch.ones(128), atol=128 * whole["scale"] / 255)


def test_bad_ranges_are_400_with_field_messages(alice_client, long_job):
    url = f"/api/v1/jobs/{long_job.pk}/attention/region"
    resp = alice_client.get(url, {"q0": 50, "q1": 40, "k1": 4000, "head": 2, "layer": -1, "cells": 9999})
    assert resp.status_code == 400
    errors = resp.json()["errors"]
    assert set(errors) == {"q1", "k1", "head", "layer", "cells"}
    assert "between 51 and 2048" in errors["q1"] and "between 0 and 1" in errors["head"]
    resp = alice_client.get(url, {"stack": "cross"})
    assert resp.status_code == 400 and "choose from ['self']" in resp.json()["errors"]["stack"]
    assert alice_client.get(url, {"q0": "x"}).status_code == 400


def test_other_teams_get_404_and_missing_things_say_what(alice_client, bob, long_job, tiny_spec):
    url = f"/api/v1/jobs/{long_job.pk}/attention/region"
    client = Client()
    client.force_login(bob[0])
    theirs = client.get(url)
    assert theirs.status_code == 404 and theirs.json() == client.get("/api/v1/jobs/987654321/attention/region").json()
    assert alice_client.get(url, {"step": 3}).status_code == 404  # no maps at step 3
    # maps whose checkpoint is gone: no checkpoint to recompute from
    checkpoints.delete_checkpoints(long_job)
    attention_detail._scores.clear()
    resp = alice_client.get(url)
    assert resp.status_code == 404 and "no checkpoint to recompute from" in resp.json()["detail"]
    # a short input's maps are whole in the event
    short = training_jobs.create_job(long_job.owner, long_job.team, tiny_spec)
    services.append_events(short.pk, [("attention", {k: v for k, v in engine.attention_snapshot(
        engine.build_model(engine.ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=20)),
        torch.randint(20, (1, 8)), engine.TOKENIZERS["byte"](), step=1).items() if k != "kind"})])
    resp = alice_client.get(f"/api/v1/jobs/{short.pk}/attention/region")
    assert resp.status_code == 400 and "whole in the event" in resp.json()["errors"]["step"]


@pytest.fixture
def pruned_job(alice, settings, tmp_path):
    """A 256-token context evaluated at every step 1..8, checkpointed every 2 steps, of which the
    newest 3 stay: step 2's checkpoint is pruned to a weights snapshot, and the evaluations between
    checkpoints (odd steps) each left a snapshot of their own."""
    settings.CHECKPOINT_ROOT = tmp_path / "checkpoints"
    user, team = alice
    dataset = save_upload(team, user, SimpleUploadedFile("hamlet.txt", TEXT.encode()))
    raw = {"model": {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 256},
           "data": {"source": "text", "dataset": dataset.pk, "tokenizer": "char"},
           "train": {"steps": 8, "batch_size": 2, "lr": 1e-2, "eval_interval": 1, "eval_iters": 1, "warmup_steps": 1,
                     "sample_tokens": 0, "checkpoint_every": 2}}
    job = training_jobs.create_job(user, team, raw, name="pruned")
    assert training_jobs.run_job(job.pk, "test-worker") == "succeeded"
    return job


def test_an_evaluation_whose_checkpoint_was_pruned_zooms_from_its_kept_weights(alice_client, pruned_job):
    directory = checkpoints.job_dir(pruned_job.pk)
    assert [c["step"] for c in checkpoints.checkpoints(pruned_job)] == [4, 6, 8]
    assert [s["step"] for s in engine.checkpoint.list_snapshots(directory)] == [1, 2, 3, 5, 7]
    url = f"/api/v1/jobs/{pruned_job.pk}/attention/region"
    event = pruned_job.events.get(kind="attention", payload__step=2).payload
    ov = event["stacks"]["self"]["overview"]
    assert ov["length"] == [256, 256] and ov["block"] == [2, 2]
    body = alice_client.get(url, {"step": 2, "head": 1}).json()
    assert body["checkpoint_step"] == 2 and body["exact"] and body["note"] is None
    # the whole map pooled as the overview is: it equals what training sent at step 2
    sent = decode_maps(ov["maps"], ov["shape"])[0, 1]
    got = decode(body)
    assert body["block"] == [2, 2] and (got / got.sum(-1, keepdim=True) - sent).abs().max() <= 3 / 255
    # and a full-resolution region equals a direct recomputation from step 2's weights
    body = alice_client.get(url, {"step": 2, "head": 0, "q0": 100, "q1": 180, "k0": 60, "k1": 170}).json()
    model, _, _ = engine.checkpoint.load_model(engine.checkpoint.list_snapshots(directory)[1]["path"])
    (idx,), _ = event_inputs(event)
    expected = attention_region(model, idx, 0, 0, 100, 180, 60, 170)["weights"]
    assert body["block"] == [1, 1] and (decode(body) - expected).abs().max() <= body["scale"] / 255


def test_an_evaluation_between_checkpoints_says_whose_weights_or_404s(alice_client, pruned_job):
    url = f"/api/v1/jobs/{pruned_job.pk}/attention/region"
    directory = checkpoints.job_dir(pruned_job.pk)
    body = alice_client.get(url, {"step": 7, "q0": 0, "q1": 50, "k0": 0, "k1": 50}).json()
    assert body["checkpoint_step"] == 7 and body["exact"]  # its own snapshot
    # snapshots capped away (only the newest few are kept): the nearest weights, said so
    for snapshot in engine.checkpoint.list_snapshots(directory):
        if snapshot["step"] % 2:
            shutil.rmtree(snapshot["path"])
    attention_detail._scores.clear()
    body = alice_client.get(url, {"step": 1, "q0": 0, "q1": 50, "k0": 0, "k1": 50}).json()
    assert body["step"] == 1 and body["checkpoint_step"] == 2 and body["exact"] is False
    assert body["note"] == "approximate: weights of step 2 (step 1's were not saved)"
    body = alice_client.get(url, {"step": 7, "q0": 0, "q1": 50, "k0": 0, "k1": 50}).json()
    assert body["checkpoint_step"] == 6 and body["exact"] is False  # ties go to the earlier step
    # without step 2's snapshot, step 1's nearest weights (step 4) are further than a checkpoint interval
    engine.checkpoint.prune_snapshots(checkpoints.job_dir(pruned_job.pk), kept=0)
    resp = alice_client.get(url, {"step": 1})
    assert resp.status_code == 404
    assert resp.json()["detail"].startswith("the weights of step 1 are no longer kept: pruned keeps its newest")
    assert "(steps 4, 6, 8)" in resp.json()["detail"]
    assert alice_client.get(url, {"step": 2}).json()["checkpoint_step"] == 4  # 2 steps away: approximate
