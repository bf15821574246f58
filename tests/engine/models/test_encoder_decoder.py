"""The encoder-decoder family (T5-style): a bidirectional encoder, a causal decoder with
cross-attention, cached generation, and a model that learns to copy."""

import dataclasses

import pytest
import torch

import engine
from engine import build_model
from engine.nn.attention import ATTENTIONS
from engine.nn.position import POSITIONS

from ..conftest import TINY, variant_id

VARIANTS = [{"attention": k} for k in ATTENTIONS] + [{"position": p} for p in POSITIONS if p != "alibi"] + [
    {"position": "alibi", "attention": "full"}, {"norm_placement": "post"}, {"norm_placement": "sandwich"},
    {"n_decoder_layer": 3, "tie_embeddings": False, "bias": False}, {"ffn": "relu", "norm": "rmsnorm"},
    {"n_expert": 2, "top_k": 1, "capacity_factor": 0.0}, {"head_dim": 12, "n_kv_head": 2},
]


@pytest.fixture
def s2s_config(tiny_config):
    return dataclasses.replace(tiny_config, family="encoder_decoder")


def _changed(idx, i, vocab):
    out = idx.clone()
    out[:, i] = (out[:, i] + 1) % vocab
    return out


@pytest.mark.parametrize("overrides", VARIANTS, ids=variant_id)
def test_encoder_is_bidirectional_and_decoder_causal(overrides, s2s_config):
    cfg = dataclasses.replace(s2s_config, **overrides)
    model = build_model(cfg).eval()
    src, tgt = torch.randint(cfg.vocab_size, (2, 9)), torch.randint(cfg.vocab_size, (2, 8))
    with torch.no_grad():
        logits, _ = model(src, tgt)
        assert logits.shape == (2, 8, cfg.vocab_size)
        # the encoder: a later input token changes the first position's state
        assert not torch.allclose(model.encode(src)[:, 0], model.encode(_changed(src, 1, cfg.vocab_size))[:, 0])
        # the decoder: a later output token leaves earlier logits alone, and changes its own
        after, _ = model(src, _changed(tgt, 5, cfg.vocab_size))
    torch.testing.assert_close(logits[:, :5], after[:, :5])
    assert not torch.allclose(logits[:, 5:], after[:, 5:])


@pytest.mark.parametrize("attention,position", [("full", p) for p in POSITIONS] + [
    ("sliding", "rope"), ("linear", "learned"), ("block_sparse", "t5_relative")])
@pytest.mark.parametrize("head_dim", [None, 12])
def test_cached_generation_equals_uncached(attention, position, head_dim, s2s_config):
    model = build_model(dataclasses.replace(s2s_config, attention=attention, position=position,
                                            head_dim=head_dim)).eval()
    src = torch.randint(s2s_config.vocab_size, (2, 7))
    cached = model.generate(src, 6, temperature=0.0, start_token=3)
    plain = model.generate(src, 6, temperature=0.0, start_token=3, use_cache=False)
    assert torch.equal(cached, plain)
    assert cached.shape == (2, 7) and (cached[:, 0] == 3).all()


def test_tied_head_is_scaled_as_in_t5(s2s_config):
    model = build_model(s2s_config).eval()
    src, tgt = torch.randint(s2s_config.vocab_size, (1, 5)), torch.randint(s2s_config.vocab_size, (1, 4))
    logits, _ = model(src, tgt)
    memory = model.encode(src)
    h = model.wpe(model.wte(tgt))
    kw = {"rope": None, "bias": model.wpe.score_bias()}
    for block in model.h:
        h = block(h, memory, **kw)
    expected = model.ln_f(h) * s2s_config.n_embd**-0.5 @ model.wte.weight.T
    torch.testing.assert_close(logits, expected)


def test_t5_relative_bias_is_one_table_per_stack(s2s_config):
    model = build_model(dataclasses.replace(s2s_config, position="t5_relative"))
    names = [n for n, _ in model.named_parameters() if "relative_attention_bias" in n]
    assert names == ["enc_wpe.relative_attention_bias.weight", "wpe.relative_attention_bias.weight"]
    assert not model.enc_wpe.causal and model.wpe.causal


def test_copy_is_learnt():
    spec = engine.parse_spec({
        "model": {**TINY, "family": "encoder_decoder", "n_layer": 1},
        "data": {"source": "synthetic", "task": "copy", "task_length": 3},
        "train": {"steps": 180, "batch_size": 32, "lr": 1e-2, "warmup_steps": 10, "eval_interval": 180,
                  "eval_iters": 1},
    })
    events = []
    result = engine.train(spec, on_event=events.append)
    assert result.final_accuracy >= 0.9
    sample = [e for e in events if e["kind"] == "eval"][-1]["sample"]
    assert sample["prompt"].endswith(">") and sample["expected"].endswith(".")
    assert len(sample["completion"]) == len(sample["expected"])


def test_text_generation_helper_handles_the_families(s2s_config):
    from engine.data.tokenizers import CharTokenizer

    tokenizer = CharTokenizer("abcdefghij")
    cfg = dataclasses.replace(s2s_config, vocab_size=tokenizer.vocab_size + 1)
    out = engine.generate(build_model(cfg), tokenizer, "abc", 5, temperature=0.0)
    assert set(out) <= set("abcdefghij") and len(out) <= 5
    with pytest.raises(ValueError, match="does not generate"):
        engine.generate(build_model(dataclasses.replace(cfg, family="encoder")), tokenizer, "abc", 5)
