import dataclasses
import math
import types

import pytest
import torch
import torch.nn.functional as F

from engine import ModelConfig
from engine.nn.ffn import FFNS
from engine.nn.moe import MoE

from ..conftest import TINY

MOE_DEFAULTS = dict(n_expert=4, top_k=2, capacity_factor=0.0, moe_every=1, shared_expert=False,
                    moe_renormalize=True, aux_loss_coef=0.01, z_loss_coef=0.001, ffn_hidden=None)


def make_config(**kw):
    """The tiny config with MoE fields; a stand-in namespace until ModelConfig has them all."""
    base = ModelConfig(**TINY, vocab_size=23)
    values = {**dataclasses.asdict(base), **MOE_DEFAULTS, **kw}
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    if set(values) <= fields:
        return ModelConfig(**values)
    return types.SimpleNamespace(**values)


def reference(moe, x, capacity=None):
    """Token by token: softmax, top-k, renormalise, weighted sum of the experts, with experts
    that are full (first come, first served in token order) skipped."""
    xs = x.reshape(-1, x.size(-1))
    taken = [0] * moe.n_expert
    rows = []
    for tok in xs:
        probs = F.softmax(tok @ moe.router.weight.T, dim=-1)
        w, idx = torch.topk(probs, moe.top_k)
        if moe.renormalize:
            w = w / w.sum()
        y = torch.zeros_like(tok)
        for wi, ei in zip(w, idx.tolist()):
            if capacity is not None and taken[ei] >= capacity:
                continue
            taken[ei] += 1
            y = y + wi * moe.experts[ei](tok[None])[0]
        if moe.shared is not None:
            y = y + moe.shared(tok[None])[0]
        rows.append(y)
    return torch.stack(rows).reshape(x.shape), taken


def seen_tokens(moe, x):
    """Which tokens each expert computed on, recorded by forward hooks: {expert: [token, ...]}."""
    xs = x.reshape(-1, x.size(-1))
    seen = {}

    def hook(i):
        def record(module, args, output):
            seen[i] = [int((xs == row).all(-1).nonzero()[0]) for row in args[0]]
        return record

    handles = [ex.register_forward_hook(hook(i)) for i, ex in enumerate(moe.experts)]
    moe(x)
    for h in handles:
        h.remove()
    return seen


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("top_k", [1, 2])
def test_dropless_equals_dense_reference(shared, top_k):
    moe = MoE(make_config(capacity_factor=0.0, top_k=top_k, shared_expert=shared))
    x = torch.randn(2, 6, 32)
    y = moe(x)
    assert y.shape == x.shape
    ref, taken = reference(moe, x)
    torch.testing.assert_close(y, ref, atol=1e-6, rtol=1e-5)
    assert moe.stats["dropped"] == 0
    assert moe.stats["tokens_per_expert"].tolist() == taken
    assert moe.stats["tokens_per_expert"].sum() == 12 * top_k


@pytest.mark.parametrize("renormalize", [True, False])
def test_capacity_drops_in_token_order(renormalize):
    cfg = make_config(capacity_factor=0.5, moe_renormalize=renormalize)
    moe = MoE(cfg)
    with torch.no_grad():  # send most tokens to expert 0 so that it overflows
        moe.router.weight[0] += 0.5
    x = torch.randn(2, 8, 32)
    cap = moe.capacity(16)
    assert cap == math.ceil(0.5 * 16 * 2 / 4)
    y = moe(x)
    ref, taken = reference(moe, x, capacity=cap)
    torch.testing.assert_close(y, ref, atol=1e-6, rtol=1e-5)
    kept = moe.stats["tokens_per_expert"]
    assert kept.tolist() == taken
    assert (kept <= cap).all()
    assert moe.stats["dropped"] == 16 * 2 - kept.sum().item() > 0


@pytest.mark.parametrize("capacity_factor", [0.0, 0.5])
def test_experts_see_only_their_routed_tokens(capacity_factor):
    moe = MoE(make_config(capacity_factor=capacity_factor))
    x = torch.randn(1, 10, 32)
    seen = seen_tokens(moe, x)
    per_token = [sum(t in tokens for tokens in seen.values()) for t in range(10)]
    assert max(per_token) <= moe.top_k  # top-k respected, and a token visits an expert at most once
    assert all(len(set(tokens)) == len(tokens) for tokens in seen.values())
    assert {i: len(t) for i, t in seen.items()} == {
        i: n for i, n in enumerate(moe.stats["tokens_per_expert"].tolist()) if n
    }
    if capacity_factor == 0:
        assert per_token == [moe.top_k] * 10


def test_equals_hf_mixtral_sparse_moe_block():
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    cfg = make_config(ffn="swiglu", bias=False, top_k=2, moe_renormalize=True, capacity_factor=0.0)
    moe = MoE(cfg).eval()
    hidden = FFNS["swiglu"].hidden_dim(cfg)
    hf_cfg = MixtralConfig(hidden_size=cfg.n_embd, intermediate_size=hidden, num_local_experts=cfg.n_expert,
                           num_experts_per_tok=2, router_jitter_noise=0.0, hidden_act="silu")
    hf = MixtralSparseMoeBlock(hf_cfg).eval()
    with torch.no_grad():
        hf.gate.weight.copy_(moe.router.weight)
        for i, ex in enumerate(moe.experts):  # HF fuses w1 (gate) and w3 (up) into one 3D tensor
            hf.experts.gate_up_proj[i].copy_(torch.cat([ex.gate_proj.weight, ex.up_proj.weight], dim=0))
            hf.experts.down_proj[i].copy_(ex.down_proj.weight)
        x = torch.randn(2, 7, cfg.n_embd)
        torch.testing.assert_close(moe(x), hf(x), atol=1e-5, rtol=1e-5)


def test_aux_loss_is_one_when_balanced_and_larger_when_collapsed():
    cfg = make_config(n_expert=4, top_k=1)
    moe = MoE(cfg)
    x = torch.zeros(1, 8, 32)
    x[0, torch.arange(8), torch.arange(8) % 4] = 1.0  # token i is the unit vector e_(i mod 4)
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[:, :4] = 30 * torch.eye(4)  # token i -> expert i mod 4, with probability ~1
    moe(x)
    assert moe.stats["tokens_per_expert"].tolist() == [2, 2, 2, 2]
    assert moe.stats["aux_loss"].item() == pytest.approx(1.0, abs=1e-4)

    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0, :4] = 30.0  # every token -> expert 0
    moe(x)
    assert moe.stats["tokens_per_expert"].tolist() == [8, 0, 0, 0]
    assert moe.stats["aux_loss"].item() == pytest.approx(4.0, abs=1e-4)  # = n_expert, its maximum


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_uniform_router_gives_aux_one_and_z_log_e_squared(top_k):
    # uniform probabilities: P_e = 1/E whatever the tie-break, and f sums to 1, so aux = 1 for any top_k
    moe = MoE(make_config(n_expert=4, top_k=top_k))
    with torch.no_grad():
        moe.router.weight.zero_()
    moe(torch.randn(2, 5, 32))
    assert moe.stats["aux_loss"].item() == pytest.approx(1.0, abs=1e-6)
    assert moe.stats["z_loss"].item() == pytest.approx(math.log(4) ** 2, abs=1e-5)


@pytest.mark.parametrize("loss", ["output", "aux_loss", "z_loss"])
def test_router_gets_gradients(loss):
    # the output reaches the router only through the gate weights, as top-k indices carry no gradient
    moe = MoE(make_config())
    y = moe(torch.randn(2, 6, 32))
    (y.square().sum() if loss == "output" else moe.stats[loss]).backward()
    assert moe.router.weight.grad is not None and moe.router.weight.grad.abs().sum() > 0
    if loss == "output":
        used = [ex for ex, n in zip(moe.experts, moe.stats["tokens_per_expert"].tolist()) if n]
        assert used and all(p.grad is not None for ex in used for p in ex.parameters())


@pytest.mark.parametrize("ffn", FFNS)
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_num_params_matches_module(ffn, shared, bias):
    cfg = make_config(ffn=ffn, shared_expert=shared, bias=bias, n_expert=3, top_k=2)
    moe = MoE(cfg)
    assert MoE.num_params(cfg) == sum(p.numel() for p in moe.parameters())
    ffn_params = FFNS[ffn].num_params(cfg)
    assert MoE.active_params(cfg) == MoE.num_params(cfg) - (3 - 2) * ffn_params


def test_deterministic():
    cfg = make_config(capacity_factor=1.0)
    torch.manual_seed(1)
    a = MoE(cfg)
    torch.manual_seed(1)
    b = MoE(cfg)
    x = torch.randn(2, 6, 32)
    ya, yb = a(x), b(x)
    assert torch.equal(ya, yb) and torch.equal(ya, a(x))
    assert a.stats["tokens_per_expert"].tolist() == b.stats["tokens_per_expert"].tolist()
    assert a.stats["aux_loss"].item() == b.stats["aux_loss"].item()


def test_rejects_top_k_above_n_expert():
    with pytest.raises(ValueError, match="top_k"):
        MoE(make_config(n_expert=2, top_k=3))
