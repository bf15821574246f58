import dataclasses
import itertools

import pytest
import torch

from engine import FFNS, NORMS, POSITIONS, analyze, build_model
from engine.attention import ATTENTION_FUNCTIONS

COMBINATIONS = list(itertools.product(NORMS, POSITIONS, FFNS, [True, False], [True, False]))


@pytest.mark.parametrize("norm,position,ffn,bias,tie", COMBINATIONS)
def test_param_count_equals_the_built_model(norm, position, ffn, bias, tie, tiny_config):
    cfg = dataclasses.replace(tiny_config, norm=norm, position=position, ffn=ffn, bias=bias, tie_embeddings=tie)
    model = build_model(cfg)
    params = analyze(cfg)["params"]
    assert params["total"] == sum(p.numel() for p in model.parameters())
    assert params["per_layer"] == sum(p.numel() for p in model.h[0].parameters())
    parts = ("embedding", "position", "attention", "ffn", "norms", "head")
    assert sum(params[k] for k in parts) == params["total"] == params["active"]


def test_vocab_size_argument_overrides_the_config(tiny_config):
    assert analyze(tiny_config, vocab_size=100)["params"]["embedding"] == 100 * tiny_config.n_embd
    with pytest.raises(ValueError, match="vocab_size"):
        analyze(dataclasses.replace(tiny_config, vocab_size=None))


def test_flops_follow_the_documented_formula(tiny_config):
    cfg = dataclasses.replace(tiny_config, ffn_mult=4.0)
    d, n_layer, v, t = cfg.n_embd, cfg.n_layer, cfg.vocab_size, cfg.block_size
    matmul = n_layer * (4 * d * d + 2 * d * 4 * d) + d * v
    flops = analyze(cfg, batch_size=8)["flops"]
    assert flops["per_token_forward"] == 2 * matmul + 2 * n_layer * t * d
    assert flops["per_token_train"] == 3 * flops["per_token_forward"]
    assert flops["per_step_train"] == flops["per_token_train"] * 8 * t
    longer = analyze(cfg, batch_size=8, seq_len=2 * t)["flops"]
    assert longer["per_token_forward"] > flops["per_token_forward"]  # attention grows with context


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
    # ours counts dropout masks at 2 bytes (CPU kernels keep them in the activation dtype), the paper at 1
    masks = 2 * s * b * h + a * s * s * b
    assert per_layer - masks == s * b * h * (34 + 5 * a * s / h)


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
    # used to refuse jobs that would not fit, so it must not under-estimate, nor wildly over-estimate
    cfg = dataclasses.replace(tiny_config, attn_impl=attn_impl, **overrides)
    idx = torch.randint(cfg.vocab_size, (8, cfg.block_size))
    measured = saved_activation_bytes(build_model(cfg), idx)
    estimated = analyze(cfg, batch_size=8)["memory"]["activations"]
    assert measured <= estimated <= 1.6 * measured


def test_unknown_dtype_lists_the_choices(tiny_config):
    with pytest.raises(ValueError, match=r"unknown dtype 'int4'; choose from \['fp32', 'bf16', 'fp16'\]"):
        analyze(tiny_config, dtype="int4")
