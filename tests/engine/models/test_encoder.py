"""The encoder family (BERT-style): bidirectional attention under every pattern and position
scheme, symmetric masks, the MLM head, and an encoder that learns."""

import dataclasses

import pytest
import torch

from engine import build_model
from engine.nn.attention import ATTENTIONS, FEATURE_MAPS, LinearAttention, MaskedAttention
from engine.nn.position import POSITIONS

from ..conftest import variant_id

SOFTMAX_KINDS = [k for k, cls in ATTENTIONS.items() if issubclass(cls, MaskedAttention)]
VARIANTS = [{"attention": k} for k in ATTENTIONS] + [{"position": p} for p in POSITIONS if p != "alibi"] + [
    {"position": "alibi", "attention": "full"}, {"norm_placement": "post"}, {"norm_placement": "sandwich"},
    {"n_token_type": 2, "tie_embeddings": False, "bias": False}, {"n_expert": 2, "top_k": 1, "capacity_factor": 0.0},
    {"head_dim": 12, "n_kv_head": 2},
]


@pytest.fixture
def encoder_config(tiny_config):
    return dataclasses.replace(tiny_config, family="encoder")


@pytest.mark.parametrize("overrides", VARIANTS, ids=variant_id)
def test_every_position_sees_later_tokens(overrides, encoder_config):
    cfg = dataclasses.replace(encoder_config, **overrides)
    model = build_model(cfg).eval()
    idx = torch.randint(cfg.vocab_size, (2, 12))
    changed = idx.clone()
    changed[:, 1] = (changed[:, 1] + 1) % cfg.vocab_size
    with torch.no_grad():
        a, _ = model(idx)
        b, _ = model(changed)
    assert a.shape == (2, 12, cfg.vocab_size)
    # a later token changes an earlier position's output (every pattern connects neighbours)
    assert not torch.allclose(a[:, 0], b[:, 0])


@pytest.mark.parametrize("kind", SOFTMAX_KINDS)
def test_bidirectional_masks_are_the_symmetric_closure(kind, tiny_config):
    causal = ATTENTIONS[kind](tiny_config)
    both = ATTENTIONS[kind](tiny_config, causal=False)
    c = causal.mask(0, 12, 0, 12, torch.device("cpu"))
    m = both.mask(0, 12, 0, 12, torch.device("cpu"))
    assert torch.equal(m, c | c.transpose(-2, -1))
    assert torch.equal(m, m.transpose(-2, -1))
    assert causal != both  # the mask cache keeps them apart


@pytest.mark.parametrize("feature_map", FEATURE_MAPS)
def test_non_causal_linear_attention_equals_its_quadratic_weights(feature_map, tiny_config):
    pattern = LinearAttention(dataclasses.replace(tiny_config, feature_map=feature_map), causal=False)
    q, k, v = (torch.randn(2, 4, 9, 8) for _ in range(3))
    fast, _ = pattern.attend(q, k, v, q_start=0, bias=None, dropout_p=0.0, need_weights=False)
    slow, w = pattern.attend(q, k, v, q_start=0, bias=None, dropout_p=0.0, need_weights=True)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-4)
    assert (w[..., 0, 1:] > 0).any()  # the first query sees later keys


def test_bidirectional_alibi_and_t5_buckets_are_symmetric_in_distance(tiny_config):
    pos = torch.arange(6)
    alibi = POSITIONS["alibi"](tiny_config, causal=False).score_bias()(pos, pos)  # (nh, T, T)
    torch.testing.assert_close(alibi, alibi.transpose(-2, -1))
    t5 = POSITIONS["t5_relative"](tiny_config, causal=False).score_bias()(pos, pos)
    assert not torch.allclose(t5, t5.transpose(-2, -1))  # before and after have their own buckets
    causal = POSITIONS["t5_relative"](tiny_config).score_bias()(pos, pos)
    assert causal.shape == (tiny_config.n_head, 6, 6)


def test_post_norm_encoder_normalises_embeddings_and_has_no_final_norm(encoder_config):
    post = build_model(dataclasses.replace(encoder_config, norm_placement="post"))
    pre = build_model(encoder_config)
    assert post.ln_emb is not None and post.ln_f is None
    assert pre.ln_emb is None and pre.ln_f is not None


def test_hidden_states_and_masked_loss(encoder_config):
    model = build_model(encoder_config)
    idx = torch.randint(encoder_config.vocab_size, (2, 7))
    assert model.hidden_states(idx).shape == (2, 7, encoder_config.n_embd)
    targets = torch.full_like(idx, -1)
    targets[:, 3] = idx[:, 3]
    _, loss = model(idx, targets)
    logits, _ = model(idx)
    expected = torch.nn.functional.cross_entropy(logits[:, 3], idx[:, 3])
    torch.testing.assert_close(loss, expected)


def test_tied_head_shares_the_embedding(encoder_config):
    tied = build_model(encoder_config)
    assert tied.head.lm_head.weight is tied.wte.weight
    untied = build_model(dataclasses.replace(encoder_config, tie_embeddings=False))
    assert untied.head.lm_head.weight is not untied.wte.weight


def test_learned_positions_refuse_beyond_block_size(encoder_config):
    model = build_model(encoder_config)
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, encoder_config.block_size + 1, dtype=torch.long))


def test_capture_sees_both_directions(encoder_config):
    import engine

    model = build_model(encoder_config).eval()
    with engine.capture_attention(model, layers=[0]) as cap:
        model(torch.randint(encoder_config.vocab_size, (1, 6)))
    w = cap.weights[0]
    assert (w[0, :, 0, 1:] > 0).all()  # position 0 attends to later positions
    torch.testing.assert_close(w.sum(-1), torch.ones_like(w.sum(-1)))
