"""Attention events ("attention", from engine.introspect.attention_maps): stored, filtered by the events
API, left out of summaries, and small enough for one channel-layer message."""
import json

import pytest
import torch
from asgiref.sync import sync_to_async

import engine
from explorer.jobs import services
from explorer.jobs.models import Job
from explorer.training import jobs as training_jobs
from tests.explorer.jobs.test_consumers import connect, run, session_headers


def attention_payload(step, **model):
    cfg = engine.ModelConfig(**{"n_layer": 2, "n_head": 4, "n_embd": 32, "block_size": 16, "vocab_size": 30, **model})
    torch.manual_seed(step)
    idx = torch.randint(30, (1, cfg.block_size))
    event = engine.attention_snapshot(engine.build_model(cfg), idx, engine.TOKENIZERS["byte"](), step=step)
    event.pop("kind")
    return event


def add_job_with_attention(alice, tiny_spec):
    job = training_jobs.create_job(alice[0], alice[1], tiny_spec)
    services.append_events(job.pk, [
        ("step", {"step": 10, "loss": 2.5}),
        ("eval", {"step": 10, "train_loss": 2.4, "val_loss": 2.6, "accuracy": 0.1, "sample": None}),
        ("attention", attention_payload(10)),
        ("step", {"step": 20, "loss": 2.0}),
        ("eval", {"step": 20, "train_loss": 1.9, "val_loss": 2.1, "accuracy": 0.5, "sample": None}),
        ("attention", attention_payload(20)),
    ])
    return job


@pytest.mark.django_db
def test_events_api_filters_by_kind(alice_client, alice, tiny_spec):
    job = add_job_with_attention(alice, tiny_spec)
    url = f"/api/v1/jobs/{job.pk}/events"
    only = alice_client.get(url, {"kind": "attention"}).json()["events"]
    assert [e["data"]["step"] for e in only] == [10, 20] and {e["kind"] for e in only} == {"attention"}
    assert "stacks" in only[0]["data"]
    rest = alice_client.get(url, {"exclude": "attention"}).json()["events"]
    assert [e["kind"] for e in rest] == ["status", "step", "eval", "step", "eval"]
    both = alice_client.get(url, {"kind": "step,eval"}).json()["events"]
    assert [e["kind"] for e in both] == ["step", "eval", "step", "eval"]


@pytest.mark.django_db
def test_events_api_gives_the_latest_and_an_index(alice_client, alice, tiny_spec):
    job = add_job_with_attention(alice, tiny_spec)
    url = f"/api/v1/jobs/{job.pk}/events"
    latest = alice_client.get(url, {"kind": "attention", "last": "true", "limit": 1}).json()["events"]
    assert len(latest) == 1 and latest[0]["data"]["step"] == 20 and latest[0]["seq"] == 7
    index = alice_client.get(url, {"kind": "attention", "brief": "true"}).json()["events"]
    assert [(e["seq"], e["data"]) for e in index] == [(4, {"step": 10}), (7, {"step": 20})]
    one = alice_client.get(url, {"after": 3, "limit": 1}).json()["events"]
    assert one[0]["kind"] == "attention" and one[0]["data"]["step"] == 10
    last_two = alice_client.get(url, {"last": "true", "limit": 2, "exclude": "attention"}).json()["events"]
    assert [e["seq"] for e in last_two] == [5, 6]


@pytest.mark.django_db
def test_recorder_keeps_attention_out_of_the_summary(alice, tiny_spec):
    job = training_jobs.create_job(alice[0], alice[1], tiny_spec)
    recorder = services.EventRecorder(job)
    recorder({"kind": "eval", "step": 10, "train_loss": 2.4, "val_loss": 2.6, "accuracy": 0.25, "sample": None})
    recorder({"kind": "attention", **attention_payload(10)})
    recorder.flush()
    job = Job.objects.get(pk=job.pk)
    assert job.summary == {"train_loss": 2.4, "val_loss": 2.6, "accuracy": 0.25}
    assert job.step == 10
    assert list(job.events.values_list("kind", flat=True)) == ["status", "eval", "attention"]
    assert services.job_to_dict(job)["summary"] == job.summary


def test_a_large_event_stays_under_200_kb():
    # 8 layers × 8 heads over 128 tokens would be 1 MiB; the byte budget narrows the window
    payload = attention_payload(1, n_layer=8, n_head=8, n_embd=64, block_size=128)
    size = len(json.dumps(payload))
    assert size < 200_000, size
    start, end = payload["window"]
    assert end == 128 and end - start < 64


@pytest.mark.django_db(transaction=True)
def test_attention_events_go_live_over_the_socket_and_replay_can_omit_them(alice, tiny_spec):
    job = training_jobs.create_job(alice[0], alice[1], tiny_spec)
    big = attention_payload(5, n_layer=8, n_head=8, n_embd=64, block_size=128)
    services.append_events(job.pk, [("attention", attention_payload(1)), ("step", {"step": 1, "loss": 3.0})])
    headers = session_headers(alice[0])

    async def scenario():
        comm, ok = await connect(f"/ws/jobs/{job.pk}/?after=0&omit=attention", headers)
        assert ok
        assert (await comm.receive_json_from(timeout=5))["type"] == "job"
        replay = await comm.receive_json_from(timeout=5)
        assert [e["kind"] for e in replay["events"]] == ["status", "step"]  # seq 2 left out
        messages = await sync_to_async(services.append_events)(job.pk, [("attention", dict(big))])
        await sync_to_async(services.publish)(job.pk, messages)  # the real Redis channel layer
        live = await comm.receive_json_from(timeout=10)
        assert [e["kind"] for e in live["events"]] == ["attention"]
        assert live["events"][0]["data"]["stacks"]["self"]["maps"] == big["stacks"]["self"]["maps"]
        await comm.disconnect()

    run(scenario())
