"""POST /api/v1/analyze: the analysis report of a preset or a custom config, field messages, sizes
far beyond the composer's (real models, absurd ones), auth; and the compare page."""
import json

import pytest

from explorer.accounts.models import ApiToken

pytestmark = pytest.mark.django_db


def analyze(client, payload, **extra):
    return client.post("/api/v1/analyze", data=json.dumps(payload), content_type="application/json", **extra)


def test_preset_report_has_breakdown_curves_and_fit_table(alice_client):
    resp = analyze(alice_client, {"model": {"preset": "llama-2-7b"},
                                  "settings": {"batch_size": 4, "seq_len": 2048, "dtype": "bf16", "hardware": "h100-sxm"}})
    assert resp.status_code == 200, resp.content
    r = resp.json()
    assert r["params"]["total"] == 6_738_415_616
    assert r["memory"]["train_total"] > r["memory"]["weights"] > 0
    assert r["kv_cache_per_token"] == 2 * 32 * 4096 * 2  # K and V, 32 layers, 4096 wide, bf16
    assert r["settings"]["seq_len"] == 2048 and r["config"]["n_layer"] == 32
    curves = r["curves"]
    assert len(curves["contexts"]) >= 10 and curves["contexts"][-1] == 32768
    kinds = [s["attention"] for s in curves["series"]]
    assert kinds[0] == "full" and set(kinds) == {"full", "sliding", "local_global", "dilated", "block_sparse",
                                                 "linear"}
    full = curves["series"][0]
    assert full["chosen"] and full["kv_cache"][-1] == r["kv_cache_per_token"] * 32768
    assert full["attention_flops"][-1] > full["attention_flops"][0]  # quadratic attention grows with context
    linear = next(s for s in curves["series"] if s["attention"] == "linear")
    assert linear["attention_flops"][-1] < full["attention_flops"][-1]
    table = {row["key"]: row for row in r["fit_table"]}
    assert {"a100-80gb", "h100-sxm", "h200", "l4"} <= set(table)
    assert table["h200"]["inference"]["fits"] is True and table["l4"]["train"]["fits"] is False
    assert table["h100-sxm"]["inference"]["decode_tokens_per_s"] > 0
    assert r["fit"]["device"] == table["h100-sxm"]["device"]
    assert "dtype" in r["options"] and r["options"]["devices"]


def test_custom_config_and_preset_overrides(alice_client):
    custom = {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 64, "vocab_size": 100}
    r = analyze(alice_client, {"model": custom}).json()
    assert 0 < r["params"]["total"] < 100_000
    deeper = analyze(alice_client, {"model": {**custom, "n_layer": 3}}).json()
    assert deeper["params"]["total"] - r["params"]["total"] == r["params"]["per_layer"]
    # a preset with overrides: Llama 2 7B with grouped-query attention has a smaller KV cache
    gqa = analyze(alice_client, {"model": {"preset": "llama-2-7b", "n_kv_head": 8}}).json()
    mha = analyze(alice_client, {"model": {"preset": "llama-2-7b"}}).json()
    assert gqa["kv_cache_per_token"] * 4 == mha["kv_cache_per_token"]
    # Mixtral: active parameters below the total; Mistral's sliding window bounds its cache
    moe = analyze(alice_client, {"model": {"preset": "mixtral-8x7b"}}).json()
    assert moe["params"]["active"] < moe["params"]["total"]
    mistral = analyze(alice_client, {"model": {"preset": "mistral-7b"}}).json()
    sliding = mistral["curves"]["series"][0]
    assert sliding["attention"] == "sliding" and sliding["kv_cache"][-1] == mistral["kv_cache_per_token"] * 4096


def test_explicit_head_size(alice_client):
    """Issue 14, defect 7: head_dim need not be n_embd / n_head; the report counts the wider or
    narrower q/o projections and KV cache, and a preset takes it as an override."""
    custom = {"n_layer": 2, "n_head": 6, "n_kv_head": 2, "n_embd": 32, "block_size": 64, "vocab_size": 100}
    resp = analyze(alice_client, {"model": {**custom, "head_dim": 16}})  # 6 does not divide 32: fine with head_dim
    assert resp.status_code == 200, resp.content
    r = resp.json()
    # per layer: q_proj 32 → 96 and o_proj back, k_proj and v_proj 32 → 32, with biases
    assert r["params"]["attention"] == 2 * (2 * 32 * 96 + 2 * 32 * 32 + 96 + 32 + 2 * 32)
    bpe = r["settings"]["bytes_per_activation"]
    assert r["kv_cache_per_token"] == 2 * 2 * 2 * 16 * bpe  # k and v × layers × kv heads × head_dim × bytes
    nemo = analyze(alice_client, {"model": {"preset": "mistral-nemo-12b"}}).json()
    assert nemo["params"]["total"] == 12_247_782_400
    wider = analyze(alice_client, {"model": {"preset": "mistral-nemo-12b", "head_dim": 160}}).json()
    assert wider["kv_cache_per_token"] * 128 == nemo["kv_cache_per_token"] * 160


@pytest.mark.parametrize(
    "payload, field, words",
    [
        ({"model": {"n_head": 3, "n_embd": 16, "vocab_size": 10}}, "model.n_head", ["3", "16", "divide"]),
        ({"model": {"n_embd": -8, "vocab_size": 10}}, "model.n_embd", ["-8"]),
        ({"model": {"n_layer": 0, "vocab_size": 10}}, "model.n_layer", ["0"]),
        ({"model": {"wings": 2, "vocab_size": 10}}, "model.wings", ["wings"]),
        ({"model": {"norm": "rms", "vocab_size": 10}}, "model.norm", ["rms", "rmsnorm"]),
        ({"model": {"preset": "gpt-5"}}, "model.preset", ["gpt-5", "llama-2-7b"]),
        ({"model": {"n_layer": 2}}, "model.vocab_size", ["vocab_size"]),
        ({"model": {"preset": "gpt2"}, "settings": {"dtype": "fp64"}}, "settings.dtype", ["fp64", "bf16"]),
        ({"model": {"preset": "gpt2"}, "settings": {"batch_size": 0}}, "settings.batch_size", ["≥ 1"]),
        ({"model": {"preset": "gpt2"}, "settings": {"mfu": 2}}, "settings.mfu", ["mfu"]),
        ({"model": {"preset": "gpt2"}, "settings": {"hardware": "tpu-v9"}}, "settings.hardware", ["tpu-v9", "h100-sxm"]),
        ({"model": {"preset": "gpt2"}, "settings": {"warp": 9}}, "settings.warp", ["warp"]),
        ({"model": {"preset": "gpt2"}, "settings": {"n_gpus": "many"}}, "settings.n_gpus", ["many"]),
        ({"model": {"head_dim": -4, "vocab_size": 10}}, "model.head_dim", ["≥ 1", "-4"]),
        ({"model": {"head_dim": 9, "position": "rope", "vocab_size": 10}}, "model.head_dim", ["9", "even"]),
    ],
)
def test_bad_input_is_a_400_naming_the_field(alice_client, payload, field, words):
    resp = analyze(alice_client, payload)
    assert resp.status_code == 400, resp.content
    errors = resp.json()["errors"]
    assert field in errors, errors
    for word in words:
        assert word in errors[field], errors[field]


def test_model_must_be_an_object(alice_client):
    resp = analyze(alice_client, {"model": "llama"})
    assert resp.status_code == 400 and "model" in resp.json()["errors"]


def test_absurd_sizes_get_a_report_that_does_not_fit(alice_client):
    huge = {"n_layer": 10_000, "n_head": 100, "n_embd": 100_000, "block_size": 10**9, "vocab_size": 50_000}
    # closed forms: no loop over 10^9
    for attention in ("full", "sliding", "local_global", "dilated", "block_sparse", "linear"):
        resp = analyze(alice_client, {"model": {**huge, "attention": attention}, "settings": {"batch_size": 1}})
        assert resp.status_code == 200, resp.content
        r = resp.json()
        assert r["params"]["total"] > 10**15
        assert all(not row["train"]["fits"] and not row["inference"]["fits"] for row in r["fit_table"])
        assert all(row["train"]["verdict"].startswith("does not fit") for row in r["fit_table"])
        assert r["curves"]["contexts"][-1] == 10**9
        assert all(f is not None for series in r["curves"]["series"] for f in series["attention_flops"])


def test_unauthenticated_is_refused_and_a_token_works(client, alice):
    payload = {"model": {"preset": "gpt2"}}
    assert analyze(client, payload).status_code == 401
    _, token = ApiToken.issue(alice[0], "script")
    resp = analyze(client, payload, HTTP_AUTHORIZATION=f"Bearer {token}")
    assert resp.status_code == 200 and resp.json()["params"]["total"] == 124_439_808


def test_compare_page(alice_client):
    from django.test import Client

    html = alice_client.get("/compare/?a=preset:llama-2-7b&b=preset:mistral-7b").content.decode()
    assert 'id="compare-root"' in html and "llama-2-7b" in html
    assert Client().get("/compare/").status_code == 302  # login required
    assert 'href="/compare/"' in alice_client.get("/compose/").content.decode()  # in the nav


def test_options_and_which_fields_apply(alice_client):
    options = alice_client.get("/api/v1/analyze/options").json()
    assert "bf16" in options["dtype"] and None in options["quantization"]
    assert {d["key"] for d in options["devices"]} >= {"h100-sxm", "l4"}
    r = analyze(alice_client, {"model": {"preset": "llama-2-7b"}}).json()
    assert r["config_applies"]["window"] is False and r["config_applies"]["n_layer"] is True
    assert analyze(alice_client, {"model": {"preset": "mistral-7b"}}).json()["config_applies"]["window"] is True
