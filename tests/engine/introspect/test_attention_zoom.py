"""engine.introspect.attention_zoom: overviews of long inputs and regions at full resolution, for every
attention kind, equal to the weights ``capture_attention`` gives."""

import json
import time

import pytest
import torch

import engine
from engine import ATTENTIONS, ModelConfig, build_model
from engine.introspect.attention_maps import attention_snapshot, decode_ids, decode_maps, encode_ids, event_inputs
from engine.introspect.attention_zoom import attention_region, blocks, layer_scores, pool_blocks
from tests.engine.conftest import TINY, TINY_PATTERNS

BYTE = engine.TOKENIZERS["byte"]()


def model_of(**over):
    torch.manual_seed(0)
    cfg = ModelConfig(**{**TINY, **TINY_PATTERNS, "vocab_size": 23, **over})
    return build_model(cfg).eval(), cfg


def full_maps(model, idx, stack="self"):
    with engine.capture_attention(model, stack=stack) as cap:
        model(*idx) if isinstance(idx, tuple) else model(idx)
    return torch.stack([cap.weights[i][0] for i in sorted(cap.weights)])  # (L, H, Tq, Tk)


def block_means(w, b):
    """Direct reference: mean over each query block of the mass each key block gets."""
    *lead, t, _ = w.shape
    n = t // b
    return w.reshape(*lead, n, b, n, b).sum(-1).mean(-2)


def test_pool_blocks_handles_a_short_last_block():
    w = torch.rand(2, 10, 7)
    p = pool_blocks(w, 4, 3)
    assert p.shape == (2, 3, 3)
    assert torch.allclose(p[:, 2, 2], w[:, 8:10, 6:7].sum(-1).mean(-1))
    assert torch.allclose(p[:, 0, 1], w[:, 0:4, 3:6].sum(-1).mean(-1))
    assert blocks(2048, 128) == (16, 128) and blocks(100, 128) == (1, 100) and blocks(130, 128) == (2, 65)


@pytest.mark.parametrize("attention", sorted(ATTENTIONS))
@pytest.mark.parametrize("position", ["rope", "alibi"])
@pytest.mark.parametrize("head_dim", [None, 12])  # 12: an explicit head size, 4 × 12 ≠ the width 32
def test_rows_and_regions_equal_the_captured_map(attention, position, head_dim):
    if attention == "linear" and position == "alibi":
        pytest.skip("linear attention has no scores to bias")
    model, cfg = model_of(attention=attention, position=position, block_size=64, head_dim=head_dim,
                          n_kv_head=2 if head_dim else None)
    idx = torch.randint(23, (1, 48))
    full = full_maps(model, idx)
    for layer in range(cfg.n_layer):
        src = layer_scores(model, idx, layer)
        assert torch.allclose(src.rows(0, 48), full[layer], atol=1e-5)
        r = src.region(2, 10, 30, 5, 25, max_cells=64)  # fits: full resolution
        assert r["block"] == [1, 1] and torch.allclose(r["weights"], full[layer, 2, 10:30, 5:25], atol=1e-5)
    r = attention_region(model, idx, 1, 3, 0, 48, 0, 48, max_cells=12)  # pooled 4 × 4
    assert r["block"] == [4, 4] and r["weights"].shape == (12, 12)
    assert torch.allclose(r["weights"], block_means(full[1, 3], 4), atol=1e-5)
    assert torch.allclose(r["weights"].sum(-1), torch.ones(12), atol=1e-4)  # whole rows: distributions


def test_the_forward_stops_at_the_chosen_layer():
    model, _ = model_of()
    seen = []
    hook = model.h[1].register_forward_hook(lambda *a: seen.append(1))
    layer_scores(model, torch.randint(23, (1, 16)), 0)
    hook.remove()
    assert seen == [] and all(type(b.attn.pattern).__name__ != "_Recorder" for b in model.h)


def test_long_event_adds_an_overview_equal_to_the_block_means():
    model, cfg = model_of(block_size=256)
    idx = torch.randint(23, (1, 256))
    event = attention_snapshot(model, idx, BYTE, step=3, max_tokens=32)
    full = full_maps(model, idx)
    stack = event["stacks"]["self"]
    ov = stack["overview"]
    assert ov["length"] == [256, 256] and ov["block"] == [2, 2] and ov["shape"] == [2, 4, 128, 128]
    assert (decode_maps(ov["maps"], ov["shape"]) - block_means(full, 2)).abs().max() <= 0.5 / 255 + 1e-5
    # the window is today's: the last positions, renormalised, equal to the full map's corner
    s, e = event["window"]
    assert e == 256 and e - s == 32 and stack["shape"] == [2, 4, 32, 32]  # 8 · 32² ≤ 150 KB / 8
    corner = full[..., s:e, s:e]
    corner = corner / corner.sum(-1, keepdim=True)
    assert (decode_maps(stack["maps"], stack["shape"]) - corner).abs().max() <= 0.5 / 255 + 1e-5
    # the input comes back from the event, for detail on zoom
    (ids,), specials = event_inputs(json.loads(json.dumps(event)))
    assert torch.equal(ids, idx) and specials == {}
    assert all(b.attn.capture is None and type(b.attn.pattern).__name__ != "_Recorder" for b in model.h)


def test_short_events_are_unchanged():
    model, _ = model_of()
    event = attention_snapshot(model, torch.randint(23, (1, 16)), BYTE)
    assert "overview" not in event["stacks"]["self"] and "input" not in event
    with pytest.raises(ValueError, match="keeps no input"):
        event_inputs(event)


def test_the_overview_shrinks_to_the_byte_budget():
    model, _ = model_of(block_size=512, n_layer=2, n_head=4)
    event = attention_snapshot(model, torch.randint(23, (1, 512)), BYTE, max_bytes=40_000)
    ov = event["stacks"]["self"]["overview"]
    assert ov["shape"][2] < 128 and len(json.dumps(event)) < 40_000 * 4 / 3 + 8_000


def test_encoder_decoder_long_event_has_three_overviews():
    model, _ = model_of(family="encoder_decoder", block_size=64)
    src, dec = torch.randint(20, (1, 40)), torch.randint(20, (1, 24))
    event = attention_snapshot(model, (src, dec), BYTE, max_tokens=8)
    for name, (tq, tk) in {"encoder": (40, 40), "cross": (24, 40), "self": (24, 24)}.items():
        ov = event["stacks"][name]["overview"]
        assert ov["length"] == [tq, tk]
        full = full_maps(model, (src, dec), stack=name)
        assert (decode_maps(ov["maps"], ov["shape"]) - full).abs().max() <= 0.5 / 255 + 1e-5  # ≤128: 1×1 blocks
    (s2, d2), _ = event_inputs(event)
    assert torch.equal(s2, src) and torch.equal(d2, dec)
    r = attention_region(model, (src, dec), 0, 1, 3, 9, 0, 40, stack="cross")
    assert torch.allclose(r["weights"], full_maps(model, (src, dec), stack="cross")[0, 1, 3:9], atol=1e-5)


def test_bad_regions_say_why():
    model, _ = model_of()
    idx = torch.randint(23, (1, 16))
    with pytest.raises(ValueError, match="not inside 16 × 16"):
        attention_region(model, idx, 0, 0, 5, 5, 0, 4)
    with pytest.raises(ValueError, match="head 9 does not exist"):
        attention_region(model, idx, 0, 9, 0, 4, 0, 4)
    with pytest.raises(ValueError, match="layer 5 does not exist"):
        attention_region(model, idx, 5, 0, 0, 4, 0, 4)


def test_2048_tokens_stay_cheap():
    """A tiny model at T = 2,048: the event and a full-map region in well under seconds, without
    the 2 layers × 4 heads × 2048² floats (128 MB) of capturing every weight."""
    model, _ = model_of(block_size=2048)
    idx = torch.randint(23, (1, 2048))
    t0 = time.perf_counter()
    event = attention_snapshot(model, idx, BYTE)
    t_event = time.perf_counter() - t0
    ov = event["stacks"]["self"]["overview"]
    assert ov["shape"] == [2, 4, 128, 128] and ov["block"] == [16, 16]
    assert len(json.dumps(event)) < 210_000
    t0 = time.perf_counter()
    r = attention_region(model, idx, 1, 0, 0, 2048, 0, 2048)
    t_region = time.perf_counter() - t0
    assert r["block"] == [16, 16] and r["weights"].shape == (128, 128)
    detail = attention_region(model, idx, 1, 0, 1000, 1100, 972, 1100)
    assert detail["block"] == [1, 1] and detail["weights"].shape == (100, 128)
    assert t_event < 20 and t_region < 10, (t_event, t_region)


def test_rows_are_scored_in_bounded_chunks(monkeypatch):
    """Memory: no more than ROW_CHUNK_FLOATS weights exist at once, and chunking changes nothing."""
    import engine.introspect.attention_zoom as zoom

    model, _ = model_of(block_size=256)
    idx = torch.randint(23, (1, 256))
    whole = attention_region(model, idx, 0, 1, 0, 256, 0, 256, max_cells=32)["weights"]
    sizes, rows = [], zoom.LayerScores.rows

    def counted(self, r0, r1, heads=None):
        out = rows(self, r0, r1, heads)
        sizes.append(out.numel())
        return out

    monkeypatch.setattr(zoom, "ROW_CHUNK_FLOATS", 8 * 256)
    monkeypatch.setattr(zoom.LayerScores, "rows", counted)
    chunked = attention_region(model, idx, 0, 1, 0, 256, 0, 256, max_cells=32)["weights"]
    assert len(sizes) == 32 and max(sizes) <= 8 * 256
    assert torch.allclose(whole, chunked, atol=1e-6)


def test_ids_survive_their_encoding():
    small, big = [0, 1, 32767, 32768, 40000, 65535], [0, 65536, 200_000]
    assert decode_ids("uint16-base64", encode_ids(small)) == small
    assert decode_ids("int32-base64", encode_ids(big, wide=True)) == big
    assert len(encode_ids(list(range(2048)))) == -(-2048 * 2 // 3) * 4  # 2 bytes a token, in base64
