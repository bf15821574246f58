"""``analyze``'s FLOPs against ``torch.utils.flop_counter.FlopCounterMode`` on the engine's model.

FlopCounterMode counts the matmuls (mm, addmm, bmm, einsum's bmm) and SDPA, and it counts
attention as the kernel runs it: every score of the T×T matrix, the future masked afterwards
(no causal halving). So its total is compared with ``executed_per_token_forward``: the same
matmuls plus dense attention (4·n_embd·T per token and layer), or linear attention's chunked
products, the last chunk padded. ``per_token_forward`` is the *useful*, causal-aware count (a
query at position i does work for its i + 1 keys, K̄ = (T + 1)/2 for full attention), checked
against the masks in test_analysis.py.
"""

import dataclasses

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from engine import analyze, build_model
from engine.nn.attention import ATTENTION_FUNCTIONS, ATTENTIONS

aten = torch.ops.aten
# PyTorch's flop counter has formulas for the CUDA SDPA kernels but not the CPU flash one, which
# the plain causal path (no mask) takes here: count it with the same (dense) formula
def cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


CPU_SDPA = {aten._scaled_dot_product_flash_attention_for_cpu: cpu_sdpa_flop}


def counted_flops(cfg, b: int, t: int) -> int:
    model = build_model(cfg)
    idx = torch.randint(cfg.vocab_size, (b, t))
    with FlopCounterMode(display=False, custom_mapping=CPU_SDPA) as counter:
        model(idx)
    return counter.get_total_flops()


VARIANTS = {
    "mha": {},
    "gqa": {"n_kv_head": 2},
    "mqa": {"n_kv_head": 1, "ffn": "swiglu", "position": "rope"},
    # dropless, so every token reaches its top_k experts exactly
    "moe": {"n_expert": 4, "top_k": 2, "capacity_factor": 0.0, "shared_expert": True},
    "untied": {"tie_embeddings": False, "ffn": "geglu", "ffn_hidden": 40},
    "head_dim": {"head_dim": 12, "n_kv_head": 2, "position": "rope"},  # 4 heads of 12 in a 32 stream
}


@pytest.mark.parametrize("attn_impl", ATTENTION_FUNCTIONS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind", ATTENTIONS)
@pytest.mark.parametrize("t", [16, 13])  # 13: linear attention's last chunk is padded (chunk 64 > 13 here: one)
def test_executed_flops_equal_the_flop_counter(kind, variant, attn_impl, t, tiny_config):
    cfg = dataclasses.replace(tiny_config, attention=kind, attn_impl=attn_impl, **VARIANTS[variant])
    b = 2
    flops = analyze(cfg, batch_size=b, seq_len=t)["flops"]
    assert counted_flops(cfg, b, t) == flops["executed_per_token_forward"] * b * t
    # the useful count never exceeds what runs; full attention's is the causal half (+ diagonal)
    assert flops["per_token_forward"] <= flops["executed_per_token_forward"]


def test_linear_attention_executes_its_chunks(tiny_config, monkeypatch):
    """Several chunks and a padded last one: the chunk form's own executed count."""
    from engine.nn.attention import LinearAttention

    monkeypatch.setattr(LinearAttention, "chunk", 4)
    cfg = dataclasses.replace(tiny_config, attention="linear")
    for t in (16, 14):
        flops = analyze(cfg, batch_size=2, seq_len=t)["flops"]
        assert counted_flops(cfg, 2, t) == flops["executed_per_token_forward"] * 2 * t


def test_useful_full_attention_is_the_causal_half(tiny_config):
    t, d = 16, tiny_config.n_embd
    flops = analyze(tiny_config, seq_len=t)["flops"]
    assert flops["executed_attention_per_token_layer"] == 4 * d * t
    assert flops["attention_per_token_layer"] == 4 * d * (t + 1) / 2
    dense_extra = tiny_config.n_layer * 4 * d * (t - (t + 1) / 2)
    assert flops["executed_per_token_forward"] - flops["per_token_forward"] == pytest.approx(dense_extra)


@pytest.mark.parametrize("kind", ATTENTIONS)
def test_decode_flops_count_the_last_query(kind, tiny_config):
    """One new token at position T - 1: its matmuls, and the keys of the mask's last row."""
    cfg = dataclasses.replace(tiny_config, attention=kind)
    t, d, n = 16, cfg.n_embd, cfg.n_layer
    report = analyze(cfg, seq_len=t)
    fl = report["flops"]
    matmul = (fl["per_token_forward"] - n * fl["attention_per_token_layer"]) / 2
    pattern = ATTENTIONS[kind](cfg)
    if hasattr(pattern, "mask"):
        # each layer's pattern (local_global differs by layer), mean over heads (dilated differs by head)
        masks = [ATTENTIONS[kind].for_layer(cfg, i).mask(0, t, 0, t, torch.device("cpu")).expand(cfg.n_head, t, t)
                 for i in range(n)]
        keys = sum(mask[:, -1].sum().item() / cfg.n_head for mask in masks)  # the last rows, all layers
        assert fl["per_token_decode"] == pytest.approx(2 * matmul + 4 * d * keys)
    else:  # recurrent: the state's update and read, hs² each, and the normaliser
        hs = d // cfg.n_head
        assert fl["per_token_decode"] == pytest.approx(2 * matmul + n * (4 * d * hs + 4 * d))
    if kind == "sliding":  # bounded by the window however long the context
        longer = analyze(cfg, seq_len=10 * t)["flops"]["per_token_decode"]
        assert longer == pytest.approx(fl["per_token_decode"])


def test_training_step_flops_with_checkpointing(tiny_config):
    plain = analyze(tiny_config, batch_size=4)["flops"]
    ckpt = analyze(tiny_config, batch_size=4, activation_checkpointing=True)["flops"]
    t = tiny_config.block_size
    assert plain["per_step_train"] == 3 * plain["per_token_forward"] * 4 * t
    assert ckpt["per_step_train"] == 4 * plain["per_token_forward"] * 4 * t
    assert ckpt["per_token_train"] == plain["per_token_train"]  # the model's FLOPs: 3 × forward either way
    assert plain["per_token_prefill"] == plain["per_token_forward"]
