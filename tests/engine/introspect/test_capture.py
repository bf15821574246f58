import dataclasses

import pytest
import torch

import engine
import engine.nn.attention
from engine import build_model, capture_attention
from engine.nn.attention import ATTENTIONS


@pytest.mark.parametrize("kind", ATTENTIONS)
def test_captured_weights_are_causal_distributions(kind, tiny_config):
    model = build_model(dataclasses.replace(tiny_config, attention=kind, position="rope")).eval()
    idx = torch.randint(tiny_config.vocab_size, (2, 10))
    plain, _ = model(idx)
    with capture_attention(model, layers=[0, 1]) as cap:
        captured, _ = model(idx)
    torch.testing.assert_close(captured, plain, rtol=1e-4, atol=1e-5)  # same model output either way
    assert set(cap.weights) == {0, 1}
    for w in cap.weights.values():
        assert w.shape == (2, 4, 10, 10) and w.dtype == torch.float32 and not w.requires_grad
        torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 10))
        assert (w.triu(diagonal=1) == 0).all()
    if kind != "full" and kind != "linear":  # the sparse patterns leave some earlier keys out
        assert (w.tril() == 0).any()


@pytest.mark.parametrize("kind", ["full", "sliding"])
def test_captured_weights_match_the_mask(kind, tiny_config):
    cfg = dataclasses.replace(tiny_config, attention=kind)
    model = build_model(cfg).eval()
    with capture_attention(model, layers=[1], heads=[2, 0]) as cap:
        model(torch.randint(cfg.vocab_size, (1, 12)))
    w = cap.weights[1]
    assert w.shape == (1, 2, 12, 12)
    mask = ATTENTIONS[kind](cfg).mask(0, 12, 0, 12, torch.device("cpu"))[0]
    assert ((w[0] > 0) == mask).all()


def test_no_weights_are_computed_outside_the_context(tiny_config, monkeypatch):
    model = build_model(tiny_config).eval()
    idx = torch.randint(tiny_config.vocab_size, (1, 8))
    with capture_attention(model, layers=[0]):
        pass
    assert all(b.attn.capture is None for b in model.h)

    def refuse(*args, **kwargs):
        raise AssertionError("attention weights computed without a capture")

    monkeypatch.setattr(engine.nn.attention, "attention_weights", refuse)
    model(idx)  # the fused kernel only


def test_bad_layers_and_heads_are_refused(tiny_config):
    model = build_model(tiny_config)
    with pytest.raises(ValueError, match="layer 5"):
        with capture_attention(model, layers=[5]):
            pass
    with pytest.raises(ValueError, match="head 4"):
        with capture_attention(model, heads=[4]):
            pass


def test_encoder_decoder_stacks_can_each_be_captured(tiny_config):
    import dataclasses

    import torch

    from engine import build_model, capture_attention

    cfg = dataclasses.replace(tiny_config, family="encoder_decoder", vocab_size=40, position="t5_relative")
    model = build_model(cfg).eval()
    src, tgt = torch.randint(0, 40, (2, 7)), torch.randint(0, 40, (2, 5))
    shapes = {}
    for stack in ("self", "encoder", "cross"):
        with capture_attention(model, layers=[0], stack=stack) as cap:
            model(src, tgt)
        w = cap.weights[0]
        assert torch.allclose(w.sum(-1), torch.ones_like(w.sum(-1)), atol=1e-5)
        shapes[stack] = tuple(w.shape)
    assert shapes == {"self": (2, 4, 5, 5), "encoder": (2, 4, 7, 7), "cross": (2, 4, 5, 7)}
    with capture_attention(model, layers=[0], stack="encoder") as cap:
        model(src, tgt)
    assert cap.weights[0][..., 0, 1:].abs().sum() > 0  # bidirectional: the first query sees later keys
    with pytest.raises(ValueError, match="choose from"):
        with capture_attention(build_model(dataclasses.replace(tiny_config, vocab_size=40)), stack="cross"):
            pass
