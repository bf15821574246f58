import dataclasses
import itertools
import math

import pytest
import torch

from engine import POSITIONS, build_model, generate
from engine.data.tokenizers import CharTokenizer
from engine.nn.attention import ATTENTIONS
from engine.nn.cache import SlidingWindowCache

from ..conftest import model_variants, variant_id

VARIANTS = model_variants()


def test_shapes(tiny_config):
    model = build_model(tiny_config)
    idx = torch.randint(tiny_config.vocab_size, (3, 10))
    logits, loss = model(idx)
    assert logits.shape == (3, 10, tiny_config.vocab_size)
    assert loss is None
    _, loss = model(idx, idx)
    assert loss.shape == () and loss.item() > 0
    assert model.config is tiny_config


def test_ignore_index_minus_one(tiny_config):
    model = build_model(tiny_config)
    idx = torch.randint(tiny_config.vocab_size, (2, 8))
    targets = idx.clone()
    targets[:, :4] = -1
    logits, loss = model(idx, targets)
    expected = torch.nn.functional.cross_entropy(logits[:, 4:].reshape(-1, logits.size(-1)), idx[:, 4:].reshape(-1))
    torch.testing.assert_close(loss, expected)


def test_context_longer_than_block_size_is_refused(tiny_config):
    model = build_model(tiny_config)
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, tiny_config.block_size + 1, dtype=torch.long))


def test_vocab_size_must_be_set(tiny_config):
    with pytest.raises(ValueError, match="vocab_size"):
        build_model(dataclasses.replace(tiny_config, vocab_size=None))


@pytest.mark.parametrize("overrides", VARIANTS, ids=variant_id)
def test_causal(overrides, tiny_config):
    """Changing a token leaves the logits of every earlier position unchanged."""
    cfg = dataclasses.replace(tiny_config, **overrides)
    model = build_model(cfg).eval()
    idx = torch.randint(cfg.vocab_size, (2, cfg.block_size))
    changed = idx.clone()
    changed[:, 9] = (idx[:, 9] + 1) % cfg.vocab_size
    before, _ = model(idx)
    after, _ = model(changed)
    torch.testing.assert_close(before[:, :9], after[:, :9])
    assert not torch.allclose(before[:, 9:], after[:, 9:])


def test_sdpa_equals_eager(tiny_config):
    torch.manual_seed(1)
    sdpa = build_model(dataclasses.replace(tiny_config, attn_impl="sdpa")).eval()
    eager = build_model(dataclasses.replace(tiny_config, attn_impl="eager")).eval()
    eager.load_state_dict(sdpa.state_dict())
    idx = torch.randint(tiny_config.vocab_size, (2, tiny_config.block_size))
    torch.testing.assert_close(sdpa(idx)[0], eager(idx)[0])


@pytest.mark.parametrize("overrides", VARIANTS, ids=variant_id)
def test_overfits_one_batch(overrides, tiny_config):
    cfg = dataclasses.replace(tiny_config, **overrides)
    model = build_model(cfg)
    idx = torch.randint(cfg.vocab_size, (4, cfg.block_size))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = None
    for _ in range(40):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_tied_and_untied_heads(tiny_config):
    tied = build_model(tiny_config)
    assert tied.lm_head.weight is tied.wte.weight
    untied = build_model(dataclasses.replace(tiny_config, tie_embeddings=False))
    assert untied.lm_head.weight is not untied.wte.weight
    extra = tiny_config.vocab_size * tiny_config.n_embd
    assert untied.num_params() - tied.num_params() == extra
    # an untied embedding leaves the non-embedding count, a tied one stays in as the head's matmul
    assert untied.num_params(non_embedding=True) == tied.num_params(non_embedding=True)


@pytest.mark.parametrize("scale", [True, False])
def test_residual_projections_get_scaled_init(scale, tiny_config):
    cfg = dataclasses.replace(tiny_config, n_layer=8, n_embd=64, scale_residual_init=scale)
    model = build_model(cfg)
    attn = model.h[0].attn
    std = 0.02 / math.sqrt(2 * cfg.n_layer) if scale else 0.02
    assert attn.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert attn.o_proj.weight.std().item() == pytest.approx(std, rel=0.1)
    assert model.h[0].mlp.down_proj.weight.std().item() == pytest.approx(std, rel=0.1)


def test_generate_shapes_and_crop(tiny_config):
    model = build_model(tiny_config).eval()
    idx = torch.randint(tiny_config.vocab_size, (2, 5))
    out = model.generate(idx, max_new_tokens=tiny_config.block_size + 4, top_k=3)  # runs past block_size
    assert out.shape == (2, 5 + tiny_config.block_size + 4)
    assert torch.equal(out[:, :5], idx)
    greedy = model.generate(idx, 6, temperature=0)
    assert torch.equal(greedy, model.generate(idx, 6, temperature=0))
    # a tiny nucleus keeps only the likeliest token: greedy
    assert torch.equal(greedy, model.generate(idx, 6, top_p=1e-6))
    assert model.generate(idx, 6, top_p=0.9, top_k=5).shape == (2, 11)


def test_generate_stops_at_stop_token(tiny_config):
    torch.manual_seed(0)
    model = build_model(tiny_config).eval()
    idx = torch.randint(tiny_config.vocab_size, (1, 5))
    greedy = model.generate(idx, 8, temperature=0)
    stop = greedy[0, 5 + 2].item()  # the third new token
    first = (greedy[0, 5:] == stop).nonzero()[0].item()  # where that id first appears
    out = model.generate(idx, 8, temperature=0, stop_token=stop)
    assert torch.equal(out, greedy[:, : 5 + first + 1])  # the same tokens, up to and with the stop token
    # a batch runs until every sequence has produced it; one that never does runs to the end
    both = model.generate(torch.cat([idx, idx]), 8, temperature=0, stop_token=stop)
    assert torch.equal(both, torch.cat([out, out]))
    never = model.generate(idx, 8, temperature=0, stop_token=tiny_config.vocab_size)
    assert torch.equal(never, greedy)


# ---- KV cache


@pytest.mark.parametrize("attention,position", list(itertools.product(ATTENTIONS, POSITIONS)))
@pytest.mark.parametrize("head_dim", [None, 12])  # 12: 4 heads of 12 in the 32 stream
def test_cached_decoding_equals_uncached(attention, position, head_dim, tiny_config):
    if (attention, position) == ("linear", "alibi"):
        pytest.skip("alibi biases scores, which linear attention has none of (a config error)")
    cfg = dataclasses.replace(tiny_config, attention=attention, position=position, head_dim=head_dim)
    model = build_model(cfg).eval()
    idx = torch.randint(cfg.vocab_size, (2, 12))
    full, _ = model(idx)
    cache = model.make_cache()
    steps = [model(idx[:, :5], cache=cache)[0]]  # prefill, then one token at a time
    steps += [model(idx[:, i : i + 1], cache=cache, start_pos=i)[0] for i in range(5, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-4, atol=1e-5)
    # past block_size too: learned positions crop the context, the others keep all of it
    prompt = idx[:, :5]
    cached = model.generate(prompt, cfg.block_size + 3, temperature=0)
    uncached = model.generate(prompt, cfg.block_size + 3, temperature=0, use_cache=False)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("position,ffn,n_kv_head,bias,tie,head_dim", [
    ("rope", "swiglu", 2, False, False, None), ("learned", "gelu", None, True, True, None),
    ("sinusoidal", "geglu", 1, True, False, None), ("none", "gelu", 2, False, True, None),
    ("rope", "gelu", None, True, True, None), ("rope", "swiglu", 2, False, False, 12), ("learned", "gelu", 1, True, True, 6),
])
def test_the_lean_decoding_step_equals_forward(position, ffn, n_kv_head, bias, tie, head_dim, tiny_config):
    """``generate``'s one-token step skips the modules' call machinery; it must compute what
    ``forward`` computes, token for token (with the width's head size or an explicit one)."""
    cfg = dataclasses.replace(tiny_config, position=position, ffn=ffn, n_kv_head=n_kv_head, bias=bias,
                              tie_embeddings=tie, head_dim=head_dim)
    model = build_model(cfg)
    assert not model.train()._lean_decoding()  # dropout applies in training mode: never lean
    assert model.eval()._lean_decoding()
    idx = torch.randint(cfg.vocab_size, (2, 10))
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.make_cache()
        model(idx[:, :4], cache=cache)
        steps = [model._decode_step(idx[:, i : i + 1], cache, i) for i in range(4, 10)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full[:, 4:], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("change", [dict(attention="sliding"), dict(position="alibi"), dict(norm_placement="post"),
                                    dict(qk_norm=True), dict(attn_softcap=30.0), dict(n_expert=4, top_k=2),
                                    dict(attn_impl="eager")])
def test_other_architectures_decode_through_forward(change, tiny_config):
    assert not build_model(dataclasses.replace(tiny_config, **change)).eval()._lean_decoding()


def test_sliding_cache_memory_stays_within_the_window(tiny_config):
    cfg = dataclasses.replace(tiny_config, attention="sliding", position="rope", window=4)
    model = build_model(cfg).eval()
    cache = model.make_cache()
    assert isinstance(cache, SlidingWindowCache)
    idx = torch.randint(cfg.vocab_size, (1, 40))
    model(idx[:, :6], cache=cache)
    for i in range(6, 40):
        model(idx[:, i : i + 1], cache=cache, start_pos=i)
        assert all(k.size(2) <= cfg.window for k in cache.keys + cache.values)
    assert cache.get_seq_length() == 40


@pytest.mark.parametrize("position", [p for p in POSITIONS if p != "learned"])
@pytest.mark.parametrize("times", [2, 4])
def test_relative_positions_run_beyond_block_size(position, times, tiny_config):
    model = build_model(dataclasses.replace(tiny_config, position=position)).eval()
    logits, _ = model(torch.randint(tiny_config.vocab_size, (1, times * tiny_config.block_size)))
    assert logits.shape[1] == times * tiny_config.block_size and torch.isfinite(logits).all()


def test_learned_positions_refuse_beyond_block_size(tiny_config):
    model = build_model(tiny_config)
    with pytest.raises(ValueError, match=r"longer than block_size \(16\); position 'learned'"):
        model(torch.zeros(1, 2 * tiny_config.block_size, dtype=torch.long))
    cache = model.make_cache()
    model(torch.zeros(1, 15, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 2, dtype=torch.long), cache=cache, start_pos=15)


def test_start_pos_must_match_the_cache(tiny_config):
    model = build_model(tiny_config)
    cache = model.make_cache()
    model(torch.zeros(1, 4, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match=r"start_pos \(0\) must equal the positions already cached \(4\)"):
        model(torch.zeros(1, 1, dtype=torch.long), cache=cache)


# ---- the other architecture fields


def test_sandwich_and_post_norm_blocks(tiny_config):
    sandwich = build_model(dataclasses.replace(tiny_config, norm_placement="sandwich", norm="rmsnorm"))
    names = {n.split(".")[2] for n, _ in sandwich.named_parameters() if n.startswith("h.0.")}
    assert names == {"ln_1", "attn", "ln_2", "mlp", "post_attn_norm", "post_ffn_norm"}
    post = build_model(dataclasses.replace(tiny_config, norm_placement="post")).eval()
    x = post.wte(torch.randint(23, (1, 5)))
    block = post.h[0]
    expected = block.ln_2(block.ln_1(x + block.attn(x)) + block.mlp(block.ln_1(x + block.attn(x))))
    torch.testing.assert_close(block(x), expected)


def test_final_softcap_bounds_the_logits(tiny_config):
    model = build_model(dataclasses.replace(tiny_config, final_softcap=0.5))
    with torch.no_grad():
        model.lm_head.weight.mul_(1000)
    logits, _ = model(torch.randint(23, (2, 8)))
    assert logits.abs().max() <= 0.5


def test_moe_model_adds_its_losses_and_reports_routing(tiny_config):
    cfg = dataclasses.replace(tiny_config, n_expert=4, top_k=2, moe_every=2, aux_loss_coef=0.1, z_loss_coef=0.01)
    model = build_model(cfg)
    assert [type(b.mlp).__name__ for b in model.h] == ["MLP", "MoE"]
    idx = torch.randint(cfg.vocab_size, (2, 8))
    logits, loss = model(idx, idx)
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, cfg.vocab_size), idx.reshape(-1))
    stats = model.h[1].mlp.stats
    torch.testing.assert_close(loss, ce + 0.1 * stats["aux_loss"] + 0.01 * stats["z_loss"])
    assert model.aux_loss == pytest.approx((loss - ce).item())
    (report,) = model.moe_stats()
    assert report["layer"] == 1 and len(report["tokens_per_expert"]) == 4
    assert sum(report["tokens_per_expert"]) + report["dropped"] == 2 * 8 * 2
    assert isinstance(report["aux_loss"], float) and isinstance(report["z_loss"], float)
    assert build_model(tiny_config).moe_stats() == []


def test_missing_moe_module_is_a_clear_error(tiny_config, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "engine.nn.moe", None)  # as if the file were absent
    with pytest.raises(RuntimeError, match="engine/nn/moe.py"):
        build_model(dataclasses.replace(tiny_config, n_expert=2))


def test_module_generate_is_seeded(tiny_config):
    tok = CharTokenizer("abcdefghij klmnopqrstuvw")
    model = build_model(dataclasses.replace(tiny_config, vocab_size=tok.vocab_size))
    a = generate(model, tok, "abc", 12, seed=3)
    assert isinstance(a, str) and len(a) == 12
    assert a == generate(model, tok, "abc", 12, seed=3)
    with pytest.raises(ValueError, match="empty"):
        generate(model, tok, "", 3)


def test_logits_equal_gpt2_with_the_same_weights(tiny_config):
    """layernorm + learned positions + GELU MLP with biases is GPT-2: load our weights into
    transformers' GPT2LMHeadModel and compare logits."""
    transformers = pytest.importorskip("transformers")
    cfg = dataclasses.replace(tiny_config, vocab_size=50)
    ours = build_model(cfg).eval()
    hf_cfg = transformers.GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
        n_head=cfg.n_head, activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        layer_norm_epsilon=1e-5,
    )
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    sd = {"transformer.wte.weight": ours.wte.weight, "transformer.wpe.weight": ours.wpe.weight,
          "transformer.ln_f.weight": ours.ln_f.weight, "transformer.ln_f.bias": ours.ln_f.bias}
    for i, block in enumerate(ours.h):
        a, m, p = block.attn, block.mlp, f"transformer.h.{i}."
        # GPT-2's Conv1D stores weights as (in, out): the transpose of nn.Linear's
        sd |= {
            p + "ln_1.weight": block.ln_1.weight, p + "ln_1.bias": block.ln_1.bias,
            p + "ln_2.weight": block.ln_2.weight, p + "ln_2.bias": block.ln_2.bias,
            p + "attn.c_attn.weight": torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).T,
            p + "attn.c_attn.bias": torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]),
            p + "attn.c_proj.weight": a.o_proj.weight.T, p + "attn.c_proj.bias": a.o_proj.bias,
            p + "mlp.c_fc.weight": m.up_proj.weight.T, p + "mlp.c_fc.bias": m.up_proj.bias,
            p + "mlp.c_proj.weight": m.down_proj.weight.T, p + "mlp.c_proj.bias": m.down_proj.bias,
        }
    missing, unexpected = hf.load_state_dict({k: v.detach().contiguous() for k, v in sd.items()}, strict=False)
    assert not unexpected and all(k == "lm_head.weight" or "attn.bias" in k for k in missing)
    hf.tie_weights()
    idx = torch.randint(cfg.vocab_size, (2, cfg.block_size))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx)[0], hf(idx).logits, rtol=1e-4, atol=1e-4)
