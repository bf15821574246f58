"""``analyze``'s memory: activations against what autograd saves on a CPU training step (with a
fused attention kernel, with checkpointing), the sharding arithmetic, the KV cache against the
engine's real ``KVCache`` after a prefill, and the inference weight formats."""

import dataclasses
import functools
import math

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from engine import analyze, build_model
from engine.analysis.costs import OPTIMIZER_STATES, QUANTIZATIONS, SHARDINGS

from .test_analysis import saved_activation_bytes


@pytest.mark.parametrize("overrides", [{}, {"ffn": "swiglu", "norm": "rmsnorm", "n_kv_head": 2, "position": "rope"},
                                       {"head_dim": 12, "n_kv_head": 2}])
def test_flash_estimate_matches_a_fused_kernel(overrides, tiny_config):
    """Plain causal attention through SDPA takes PyTorch's fused CPU kernel, which saves q, k, v,
    the output and a logsumexp per row: no T×T matrix, as ``flash_attention=True`` counts."""
    cfg = dataclasses.replace(tiny_config, attn_impl="sdpa", block_size=64, **overrides)
    idx = torch.randint(cfg.vocab_size, (4, cfg.block_size))
    measured = saved_activation_bytes(build_model(cfg), idx)
    flash = analyze(cfg, batch_size=4, flash_attention=True)["memory"]["activations"]
    plain = analyze(cfg, batch_size=4)["memory"]["activations"]
    assert measured <= flash <= 1.3 * measured < plain


def test_checkpointed_estimate_bounds_a_checkpointed_step(tiny_config):
    """The engine's model does not checkpoint, so the test wraps each block in
    ``torch.utils.checkpoint`` (reentrant: it saves the block's input for the backward pass, and
    nothing inside the block). The estimate adds one block's activations, live while that block
    is recomputed, which saved tensors do not show: it must lie between the two."""
    cfg = dataclasses.replace(tiny_config, n_layer=4)
    idx = torch.randint(cfg.vocab_size, (8, cfg.block_size))
    model = build_model(cfg)
    full = saved_activation_bytes(model, idx)
    for block in model.h:
        block.forward = functools.partial(
            lambda x, _forward, **kw: checkpoint(functools.partial(_forward, **kw), x, use_reentrant=True),
            _forward=block.forward)
    stored = saved_activation_bytes(model, idx)
    report = analyze(cfg, batch_size=8, activation_checkpointing=True)["memory"]["activations"]
    one_block = (full - stored) / (cfg.n_layer - 1)  # what checkpointing saves per block
    assert stored < report <= 1.6 * (stored + one_block)
    assert report < analyze(cfg, batch_size=8)["memory"]["activations"]


@pytest.mark.parametrize("sharding", SHARDINGS)
@pytest.mark.parametrize("n_gpus", [1, 3, 8])
def test_sharding_divides_the_right_terms(sharding, n_gpus, tiny_config):
    batch = 10
    report = analyze(tiny_config, batch_size=batch, dtype="bf16", n_gpus=n_gpus, sharding=sharding)
    mem, per_gpu = report["memory"], report["memory"]["train_per_gpu"]
    stage = SHARDINGS[sharding]
    split = lambda x, k: math.ceil(x / n_gpus) if stage >= k and n_gpus > 1 else x  # noqa: E731
    assert per_gpu["optimizer"] == split(mem["optimizer"], 1)
    assert per_gpu["gradients"] == split(mem["gradients"], 2)
    # ZeRO-3 also gathers one layer's 16-bit weights at a time to compute with them
    gathered = report["params"]["per_layer"] * 2 if stage == 3 and n_gpus > 1 else 0
    assert per_gpu["weights"] == split(mem["weights"], 3) + gathered
    # the global batch is split data-parallel: ceil(10 / n) sequences per GPU
    per_gpu_batch = math.ceil(batch / n_gpus)
    assert report["settings"]["per_gpu_batch"] == per_gpu_batch
    one = analyze(tiny_config, batch_size=per_gpu_batch, dtype="bf16")["memory"]["activations"]
    assert per_gpu["activations"] == pytest.approx(one, abs=1)
    assert per_gpu["total"] == sum(per_gpu[k] for k in ("weights", "gradients", "optimizer", "activations"))
    if n_gpus == 1:
        assert per_gpu["total"] == mem["train_total"]


@pytest.mark.parametrize("optimizer", OPTIMIZER_STATES)
def test_optimizer_state_bytes(optimizer, tiny_config):
    report = analyze(tiny_config, optimizer=optimizer)
    total, state = report["params"]["total"], report["memory"]["optimizer"]
    if optimizer == "adafactor":  # factored: far less than a full fp32 second moment
        d, v = tiny_config.n_embd, tiny_config.vocab_size
        assert 0 < state < 4 * total
        assert state >= 4 * (v + d)  # the embedding's row and column statistics at least
    else:
        assert state == OPTIMIZER_STATES[optimizer] * total
    assert report["memory"]["train_total"] == sum(report["memory"][k] for k in ("weights", "gradients", "optimizer",
                                                                              "activations"))


def real_kv_bytes(cfg, b: int, t: int, dtype=torch.float32) -> int:
    model = build_model(cfg).to(dtype).eval()
    cache = model.make_cache()
    with torch.no_grad():
        model(torch.randint(cfg.vocab_size, (b, t)), cache=cache)
    return sum(x.numel() * x.element_size() for x in cache.keys + cache.values)


@pytest.mark.parametrize("overrides", [{}, {"n_kv_head": 2}, {"n_kv_head": 1}, {"attention": "sliding", "window": 5},
                                       {"attention": "sliding", "window": 5, "n_kv_head": 2, "position": "rope"},
                                       {"head_dim": 12, "n_kv_head": 2, "position": "rope"},
                                       # a window per layer: 3 of 5 layers keep 5 positions, 2 keep all
                                       {"attention": "local_global", "window": 5, "global_every": 2, "n_layer": 5},
                                       {"attention": "local_global", "window": 5, "global_every": 3, "n_layer": 4,
                                        "n_kv_head": 2, "position": "rope"}],
                         ids=["mha", "gqa", "mqa", "sliding", "sliding-gqa", "head_dim", "local_global",
                              "local_global-gqa"])
def test_kv_cache_equals_the_engine_cache(overrides, tiny_config):
    cfg = dataclasses.replace(tiny_config, **overrides)
    b, t = 3, cfg.block_size
    report = analyze(cfg, batch_size=b, seq_len=t)
    assert report["memory"]["inference"]["kv_cache"] == real_kv_bytes(cfg, b, t)
    assert report["kv_cache"] * b == real_kv_bytes(cfg, b, t)  # one sequence's
    half = analyze(cfg, batch_size=b, seq_len=t, dtype="bf16")["memory"]["inference"]["kv_cache"]
    assert half == real_kv_bytes(cfg, b, t, torch.bfloat16)


def test_inference_weight_formats(tiny_config):
    cfg = dataclasses.replace(tiny_config, n_embd=256, n_head=4, vocab_size=100)
    total = analyze(cfg)["params"]["total"]
    widths = {q: analyze(cfg, quantization=q)["memory"]["inference"]["weights"] for q in QUANTIZATIONS}
    assert analyze(cfg)["memory"]["inference"]["weights"] == 4 * total  # None: dtype's width
    assert analyze(cfg, dtype="bf16")["memory"]["inference"]["weights"] == 2 * total
    assert widths["bf16"] == widths["fp16"] == 2 * total
    assert widths["int4"] < widths["int8"] < widths["bf16"]
    assert widths["fp8"] < widths["int8"]  # one scale per tensor rather than per row
    # int4: the blocks' matmul weights at half a byte plus an fp16 scale per 128 of a row; the rest 16-bit
    d, n, hidden = 256, cfg.n_layer, 4 * 256
    block = n * (4 * d * d + 2 * d * hidden)
    scales = 2 * n * (4 * d * (d // 128) + hidden * (d // 128) + d * (hidden // 128))
    assert widths["int4"] == block // 2 + scales + (total - block) * 2


def test_inference_memory_terms(tiny_config):
    mem = analyze(tiny_config, batch_size=4, dtype="bf16")["memory"]["inference"]
    assert mem["total"] == mem["weights"] + mem["kv_cache"] + mem["activations"]
    flash = analyze(tiny_config, batch_size=4, dtype="bf16", flash_attention=True)["memory"]["inference"]
    assert flash["activations"] <= mem["activations"]
    # the logits of the batch at least
    assert mem["activations"] >= 4 * tiny_config.block_size * tiny_config.vocab_size * 2
