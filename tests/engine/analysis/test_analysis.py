import dataclasses
import itertools

import pytest
import torch

from engine import FFNS, NORMS, ModelConfig, analyze, build_model
from engine.models.decoder import is_moe_layer
from engine.nn.attention import ATTENTION_FUNCTIONS, ATTENTIONS, MaskedAttention

from ..conftest import model_variants, variant_id

COMBINATIONS = [
    {"norm": norm, "ffn": ffn, "bias": bias, "tie_embeddings": tie}
    for norm, ffn, bias, tie in itertools.product(NORMS, FFNS, [True, False], [True, False])
]
SHAPED = [  # everything that changes a parameter's shape, together
    {"n_kv_head": 2, "qk_norm": True, "ffn": "geglu", "ffn_hidden": 24, "norm_placement": "sandwich", "bias": False},
    {"n_expert": 4, "top_k": 2, "shared_expert": True, "tie_embeddings": False},
    {"n_expert": 3, "top_k": 1, "moe_every": 2, "ffn": "swiglu", "n_kv_head": 1, "position": "rope"},
    {"n_layer": 4, "n_expert": 2, "moe_every": 3, "ffn_hidden": 40, "norm": "rmsnorm"},
]


@pytest.mark.parametrize("overrides", model_variants() + COMBINATIONS + SHAPED, ids=variant_id)
def test_param_count_equals_the_built_model(overrides, tiny_config):
    cfg = dataclasses.replace(tiny_config, **overrides)
    model = build_model(cfg)
    params = analyze(cfg)["params"]
    assert params["total"] == sum(p.numel() for p in model.parameters())
    parts = ("embedding", "position", "attention", "ffn", "norms", "head")
    assert sum(params[k] for k in parts) == params["total"]
    for i, block in enumerate(model.h):
        key = "per_moe_layer" if is_moe_layer(cfg, i) else "per_layer"
        assert params[key] == sum(p.numel() for p in block.parameters())
    # active: every parameter but the experts a token is not routed to
    unused = sum(
        sum(p.numel() for p in e.parameters())
        for i, block in enumerate(model.h) if is_moe_layer(cfg, i)
        for e in list(block.mlp.experts)[cfg.top_k:]
    )
    assert params["active"] == params["total"] - unused


def test_vocab_size_argument_overrides_the_config(tiny_config):
    assert analyze(tiny_config, vocab_size=100)["params"]["embedding"] == 100 * tiny_config.n_embd
    with pytest.raises(ValueError, match="vocab_size"):
        analyze(dataclasses.replace(tiny_config, vocab_size=None))


def test_flops_follow_the_documented_formula(tiny_config):
    cfg = dataclasses.replace(tiny_config, ffn_mult=4.0)
    d, n_layer, v, t = cfg.n_embd, cfg.n_layer, cfg.vocab_size, cfg.block_size
    matmul = n_layer * (4 * d * d + 2 * d * 4 * d) + d * v
    flops = analyze(cfg, batch_size=8)["flops"]
    # a causal query sees (T + 1) / 2 keys on average; q·k and weights·v cost 2 FLOPs per multiply-add
    assert flops["per_token_forward"] == 2 * matmul + n_layer * 4 * d * (t + 1) / 2
    assert flops["per_token_train"] == 3 * flops["per_token_forward"]
    assert flops["per_step_train"] == flops["per_token_train"] * 8 * t
    longer = analyze(cfg, batch_size=8, seq_len=2 * t)["flops"]
    assert longer["per_token_forward"] > flops["per_token_forward"]  # attention grows with context


@pytest.mark.parametrize("kind", ATTENTIONS)
def test_attention_flops_count_the_keys_the_mask_allows(kind, tiny_config):
    cfg = dataclasses.replace(tiny_config, attention=kind)
    t = 48
    flops = analyze(cfg, seq_len=t)["flops"]["attention_per_token_layer"]
    pattern = ATTENTIONS[kind](cfg)
    if isinstance(pattern, MaskedAttention):
        # the mean over the layers (a kind may differ by layer: local_global)
        allowed = sum(ATTENTIONS[kind].for_layer(cfg, i).mask(0, t, 0, t, torch.device("cpu"))
                      .expand(cfg.n_head, t, t).sum().item() for i in range(cfg.n_layer))
        assert flops == pytest.approx(4 * cfg.n_embd * allowed / (cfg.n_layer * cfg.n_head * t))
        full = analyze(dataclasses.replace(cfg, attention="full"), seq_len=t)["flops"]
        assert flops <= full["attention_per_token_layer"]
    else:  # linear attention: independent of the context, once it spans a chunk
        long, longer = (analyze(cfg, seq_len=n)["flops"]["attention_per_token_layer"] for n in (128, 1024))
        assert long == longer < analyze(dataclasses.replace(cfg, attention="full"), seq_len=1024)["flops"][
            "attention_per_token_layer"]


@pytest.mark.parametrize("kind", [k for k in ATTENTIONS if isinstance(ATTENTIONS[k](ModelConfig()), MaskedAttention)])
@pytest.mark.parametrize("t", [1, 5, 17, 64])
def test_closed_form_mean_keys_equal_the_mask(kind, t, tiny_config):
    """``mean_keys`` is a closed form (any context answers at once); uneven sizes on purpose."""
    cfg = dataclasses.replace(tiny_config, attention=kind, n_head=6, n_embd=48, window=7, dilation=3,
                              sparse_block=5, sparse_stride=3, n_layer=5, global_every=2)
    # the mean over the layers (a kind may differ by layer: local_global)
    allowed = sum(ATTENTIONS[kind].for_layer(cfg, i).mask(0, t, 0, t, torch.device("cpu"))
                  .expand(cfg.n_head, t, t).sum().item() for i in range(cfg.n_layer))
    assert ATTENTIONS[kind].mean_keys(cfg, t) == pytest.approx(allowed / (cfg.n_layer * cfg.n_head * t))


def test_moe_flops_count_only_the_routed_experts(tiny_config):
    dense = analyze(tiny_config)
    moe = analyze(dataclasses.replace(tiny_config, n_expert=8, top_k=1))
    assert moe["params"]["total"] > 5 * dense["params"]["total"] / 2
    extra = 2 * tiny_config.n_layer * tiny_config.n_embd * 8  # the routers
    assert moe["flops"]["per_token_forward"] == dense["flops"]["per_token_forward"] + extra


def test_kv_cache_counts_kv_heads_and_the_window(tiny_config):
    d, n_layer = tiny_config.n_embd, tiny_config.n_layer
    mqa = analyze(dataclasses.replace(tiny_config, n_kv_head=1))
    assert mqa["kv_cache_per_token"] == 2 * n_layer * (d // 4) * 4
    assert mqa["kv_cache"] == mqa["kv_cache_per_token"] * tiny_config.block_size
    sliding = analyze(dataclasses.replace(tiny_config, attention="sliding", window=4), seq_len=64)
    assert sliding["kv_cache"] == sliding["kv_cache_per_token"] * 4


def test_memory_terms(tiny_config):
    report = analyze(tiny_config)
    total, mem = report["params"]["total"], report["memory"]
    assert mem["weights"] == mem["gradients"] == 4 * total
    assert mem["optimizer"] == 8 * total  # AdamW's two fp32 moments
    assert mem["train_total"] == mem["weights"] + mem["gradients"] + mem["optimizer"] + mem["activations"]
    assert analyze(tiny_config, optimizer="sgd")["memory"]["optimizer"] == 0
    assert report["kv_cache_per_token"] == 2 * tiny_config.n_layer * tiny_config.n_embd * 4
    half = analyze(tiny_config, dtype="bf16")["memory"]
    assert half["activations"] < mem["activations"] and half["weights"] == 6 * total
    big = analyze(tiny_config, batch_size=64)["memory"]["activations"]
    assert big == pytest.approx(2 * analyze(tiny_config, batch_size=32)["memory"]["activations"])


def test_matches_korthikanti_for_a_16_bit_gpt_layer(tiny_config):
    """Per layer s·b·h·(34 + 5·a·s/h) bytes for a 4h GELU MLP with dropout (Korthikanti et al. 2022)."""
    cfg = dataclasses.replace(tiny_config, dropout=0.1, ffn_mult=4.0)
    b, s, h, a = 4, cfg.block_size, cfg.n_embd, cfg.n_head
    one, two = (analyze(dataclasses.replace(cfg, n_layer=n), batch_size=b, dtype="fp16") for n in (1, 2))
    per_layer = two["memory"]["activations"] - one["memory"]["activations"]
    # ours counts dropout masks at 2 bytes (CPU kernels keep them in the activation dtype), the paper at 1;
    # and the two LayerNorms' inputs and the softmax output at 4 bytes (autocast runs them in fp32),
    # the paper at 2
    masks = 2 * s * b * h + a * s * s * b
    fp32 = 2 * s * b * h * (4 - 2) + a * s * s * b * (4 - 2)
    assert per_layer - masks - fp32 == s * b * h * (34 + 5 * a * s / h)


def saved_activation_bytes(model, idx) -> int:
    """Bytes of the distinct non-parameter tensors autograd keeps for the backward pass."""
    params = {p.data_ptr() for p in model.parameters()}
    storages = {}

    def pack(t):
        if t.data_ptr() not in params:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(idx, idx)
    return sum(storages.values())


@pytest.mark.parametrize("attn_impl", ATTENTION_FUNCTIONS)
@pytest.mark.parametrize("overrides", [{}, {"ffn": "swiglu", "norm": "rmsnorm"}, {"dropout": 0.1}])
def test_activation_estimate_is_realistic(attn_impl, overrides, tiny_config):
    check_activation_estimate(dataclasses.replace(tiny_config, attn_impl=attn_impl, **overrides))


@pytest.mark.parametrize("overrides", model_variants() + [{"dropout": 0.1, "attention": k} for k in ATTENTIONS],
                         ids=variant_id)
def test_activation_estimate_is_realistic_for_every_variant(overrides, tiny_config):
    check_activation_estimate(dataclasses.replace(tiny_config, **overrides))


def check_activation_estimate(cfg):
    # used to refuse jobs that would not fit, so it must not under-estimate, nor wildly over-estimate
    idx = torch.randint(cfg.vocab_size, (8, cfg.block_size))
    measured = saved_activation_bytes(build_model(cfg), idx)
    estimated = analyze(cfg, batch_size=8)["memory"]["activations"]
    assert measured <= estimated <= 1.6 * measured


def test_unknown_dtype_lists_the_choices(tiny_config):
    with pytest.raises(ValueError, match=r"unknown dtype 'int4'; choose from \['fp32', 'bf16', 'fp16'\]"):
        analyze(tiny_config, dtype="int4")


FAMILY_VARIANTS = [
    {}, {"norm_placement": "post"}, {"norm_placement": "sandwich", "qk_norm": True}, {"position": "t5_relative"},
    {"tie_embeddings": False, "bias": False}, {"n_kv_head": 2, "ffn": "geglu", "ffn_hidden": 20},
    {"n_expert": 3, "top_k": 1, "moe_every": 2, "capacity_factor": 0.0, "shared_expert": True},
    {"head_dim": 12, "n_kv_head": 2}, {"head_dim": 6, "attention": "linear"},
]


@pytest.mark.parametrize("family", ["encoder", "encoder_decoder"])
@pytest.mark.parametrize("overrides", FAMILY_VARIANTS, ids=variant_id)
def test_param_count_equals_the_built_model_for_every_family(family, overrides, tiny_config):
    extra = {"n_token_type": 2} if family == "encoder" else {"n_decoder_layer": 3}
    cfg = dataclasses.replace(tiny_config, family=family, **extra, **overrides)
    model = build_model(cfg)
    params = analyze(cfg)["params"]
    assert params["total"] == sum(p.numel() for p in model.parameters())
    parts = ("embedding", "position", "attention", "ffn", "norms", "head", "cross_attention")
    assert sum(params[k] for k in parts) == params["total"]
    if not cfg.n_expert:
        assert params["per_layer"] == sum(p.numel() for p in model.h[0].parameters())


def test_encoder_families_cost_more_attention_and_cache_less(tiny_config):
    causal = analyze(tiny_config)
    encoder = analyze(dataclasses.replace(tiny_config, family="encoder"))
    both = analyze(dataclasses.replace(tiny_config, family="encoder_decoder"))
    t, d, n = tiny_config.block_size, tiny_config.n_embd, tiny_config.n_layer
    # a bidirectional query sees all t keys instead of (t + 1) / 2; the MLM head adds a d × d matmul
    extra = 2 * d * d + n * 4 * d * (t - (t + 1) / 2)
    assert encoder["flops"]["per_token_forward"] == pytest.approx(causal["flops"]["per_token_forward"] + extra)
    assert encoder["kv_cache"] == 0 and both["kv_cache"] == causal["kv_cache"]
    assert both["flops"]["per_token_forward"] > encoder["flops"]["per_token_forward"]


# ---- settings, options and the report's shape

import json  # noqa: E402

from engine import PRESETS, preset  # noqa: E402
from engine.analysis import analysis_options  # noqa: E402
from engine.analysis.costs import DTYPE_BYTES, OPTIMIZER_STATES, QUANTIZATIONS, SHARDINGS, WEIGHT_BYTES  # noqa: E402
from engine.analysis.hardware import HARDWARE  # noqa: E402

ALL_ON = {"dtype": "bf16", "optimizer": "adamw8bit", "n_gpus": 8, "sharding": "zero3", "activation_checkpointing": True,
          "flash_attention": True, "quantization": "int4", "hardware": "h100-sxm", "price_per_gpu_hour": 2.5,
          "train_tokens": 1e9}


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_report_is_json(name):
    report = analyze(preset(name), batch_size=2, seq_len=256, hardware="h100-sxm")
    json.dumps(report, allow_nan=False)
    for key in ("settings", "params", "flops", "memory", "formulas", "fit"):
        assert key in report
    assert report["fit"]["device"] == HARDWARE["h100-sxm"].name
    assert all(isinstance(v, str) for v in report["formulas"].values())
    json.dumps(analyze(preset(name), batch_size=2, seq_len=256, **ALL_ON), allow_nan=False)


def test_settings_are_resolved(tiny_config):
    s = analyze(tiny_config, batch_size=9, **ALL_ON)["settings"]
    assert s["seq_len"] == tiny_config.block_size and s["vocab_size"] == tiny_config.vocab_size
    assert s["per_gpu_batch"] == 2  # ceil(9 / 8)
    assert {k: s[k] for k in ALL_ON} == ALL_ON


def test_formulas_substitute_the_numbers(tiny_config):
    report = analyze(dataclasses.replace(tiny_config, n_kv_head=2), dtype="bf16", batch_size=3)
    f = report["formulas"]
    for term in ("params.total", "flops.per_token_train", "flops.per_token_decode", "memory.weights",
                 "memory.optimizer", "memory.activations", "memory.kv_cache", "memory.inference.weights",
                 "memory.inference.kv_cache", "memory.train_per_gpu.total"):
        assert term in f
    assert f["memory.inference.kv_cache"].startswith("2 × n_layer × n_kv_head × head_dim × bytes × batch × tokens "
                                                     "= 2 × 2 × 2 × 8 × 2 × 3 × 16 B")
    assert f["memory.inference.kv_cache"].endswith(f"= {report['memory']['inference']['kv_cache']:,} B")


def test_options_list_the_tables():
    options = analysis_options()
    assert options == {"dtype": list(DTYPE_BYTES), "optimizer": list(OPTIMIZER_STATES), "sharding": list(SHARDINGS),
                       "quantization": [None, *QUANTIZATIONS], "hardware": list(HARDWARE)}
    json.dumps(options)
    assert set(QUANTIZATIONS) <= set(WEIGHT_BYTES) and WEIGHT_BYTES["int4"] == 0.5
    assert OPTIMIZER_STATES["adamw8bit"] == 2 and OPTIMIZER_STATES["sgd"] == 0


@pytest.mark.parametrize("setting, value, message", [
    ("optimizer", "lamb", r"unknown optimizer 'lamb'; choose from \['adamw', 'adamw8bit', 'lion', 'sgd', "
                          r"'sgd_momentum', 'adafactor'\]"),
    ("sharding", "zero4", r"unknown sharding 'zero4'; choose from \['none', 'zero1', 'zero2', 'zero3', 'fsdp'\]"),
    ("quantization", "int2", r"unknown quantization 'int2'; choose from \['bf16', 'fp16', 'fp8', 'int8', 'int4'\]"),
    ("hardware", "tpu-v9", r"unknown device 'tpu-v9'; choose from \['a100-40gb'"),
    ("dtype", "fp8", r"unknown dtype 'fp8'; choose from"),
    ("n_gpus", 0, "n_gpus must be an integer of at least 1"),
    ("batch_size", 0, "batch_size must be an integer of at least 1"),
    ("seq_len", 0, "seq_len must be an integer of at least 1"),
    ("mfu", 1.5, r"mfu must be in \(0, 1\]"),
])
def test_bad_settings_name_the_choices(setting, value, message, tiny_config):
    with pytest.raises(ValueError, match=message):
        analyze(tiny_config, **{setting: value})


def test_absurd_sizes_return_and_do_not_fit():
    """Plain Python arithmetic and closed forms (no loop over positions): any size answers at once."""
    for attention in ATTENTIONS:
        huge = ModelConfig(n_layer=10**6, n_head=10**3, n_embd=10**6, block_size=1024, vocab_size=32000,
                           attention=attention, window=4096)
        report = analyze(huge, seq_len=10**9, batch_size=10**6, **ALL_ON)
        json.dumps(report, allow_nan=False)
        assert report["params"]["total"] > 10**18
        assert report["fit"]["train"]["verdict"].startswith("does not fit")
        assert report["fit"]["inference"]["verdict"].startswith("does not fit")
        assert report["fit"]["train"]["largest_batch"] == 0
