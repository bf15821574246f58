"""engine.introspect.attention_stats: per-head statistics over full-resolution maps, checked against a
direct computation on the weights ``capture_attention`` gives; the log colour code; one head's map
rebuilt from the kept queries and keys."""

import math

import pytest
import torch

import engine
from engine import ModelConfig, build_model
from engine.introspect import attention_zoom
from engine.introspect.attention_stats import LOG_FLOOR, analyze_attention, decode_log, encode_log, head_map
from tests.engine.conftest import TINY


def model_of(**over):
    torch.manual_seed(0)
    cfg = ModelConfig(**{**TINY, "vocab_size": 23, **over})
    return build_model(cfg).eval()


def captured(model, idx):
    with engine.capture_attention(model) as cap:
        model(idx)
    return torch.stack([cap.weights[i][0] for i in sorted(cap.weights)]).double()  # (L, H, T, T)


def direct_stats(w):
    """The statistics written out plainly, query by query, in float64."""
    n_layer, n_head, t, _ = w.shape
    out = {k: torch.zeros(n_layer, n_head, dtype=torch.float64)
           for k in ("entropy", "entropy_norm", "distance", "first_token", "self_token")}
    for i in range(t):
        row = w[..., i, :]  # (L, H, T)
        h = -sum(torch.nan_to_num(row[..., j] * torch.log(row[..., j])) for j in range(i + 1))  # 0·log 0 = 0
        out["entropy"] += h / t
        out["entropy_norm"] += (h / math.log(i + 1) if i > 0 else 0 * h) / t
        out["distance"] += sum(row[..., j] * (i - j) for j in range(i + 1)) / t
        out["first_token"] += row[..., 0] / t
        out["self_token"] += row[..., i] / t
    return out


@pytest.mark.parametrize("over", [
    {},  # learned positions, full attention
    {"position": "rope", "n_kv_head": 2, "norm": "rmsnorm", "ffn": "swiglu"},  # Llama-shaped (SmolLM2's kind)
    {"attention": "sliding", "window": 4, "position": "alibi"},  # a mask and a score bias
])
def test_statistics_equal_a_direct_computation(over, monkeypatch):
    model = model_of(**over)
    idx = torch.randint(0, 23, (1, 16), generator=torch.Generator().manual_seed(1))
    # small row chunks, so that the statistics are summed over several chunks of rows
    monkeypatch.setattr(attention_zoom, "ROW_CHUNK_FLOATS", 4 * 16 * 5)
    result = analyze_attention(model, idx, cells=4)
    expected = direct_stats(captured(model, idx))
    assert result.n_tokens == 16 and result.block == 4
    for name, value in expected.items():
        assert result.stats[name].shape == (2, 4)
        torch.testing.assert_close(result.stats[name].double(), value, atol=1e-5, rtol=1e-4, msg=name)


def test_first_token_share_and_distance_of_known_patterns():
    """A head that always looks at the first token, and one that always looks at itself."""
    t = 8
    sink = torch.zeros(1, 1, t, t)
    sink[..., 0] = 1.0
    own = torch.eye(t)[None, None]
    from engine.introspect.attention_stats import row_stats

    pos = torch.arange(t)
    s = row_stats(torch.cat([sink, own], 1)[0], pos, pos)
    assert s["first_token"].tolist() == [t, 1]  # sums over the rows
    assert s["self_token"].tolist() == [1, t]
    assert s["distance"].tolist() == [sum(range(t)), 0]
    assert s["entropy"].tolist() == [0, 0]


def test_overview_is_the_pooled_full_map():
    model = model_of()
    idx = torch.randint(0, 23, (1, 16), generator=torch.Generator().manual_seed(2))
    result = analyze_attention(model, idx, cells=4)
    w = captured(model, idx).float()
    expected = w.reshape(2, 4, 4, 4, 4, 4).sum(-1).mean(-2)  # (L, H, Nq, Nk): mean mass per block
    torch.testing.assert_close(result.overview, expected, atol=1e-5, rtol=1e-4)


def test_head_map_from_the_kept_queries_and_keys():
    model = model_of(position="rope", n_kv_head=2)
    idx = torch.randint(0, 23, (1, 16), generator=torch.Generator().manual_seed(3))
    result = analyze_attention(model, idx)
    w = captured(model, idx).float()
    assert result.q.dtype == torch.float16 and result.k.shape[1] == 2  # the KV heads, not repeated
    for layer, head in [(0, 0), (1, 3)]:
        m = head_map(result.source(layer), head, 0, 16, 0, 16)
        assert m["block"] == [1, 1]
        torch.testing.assert_close(m["weights"], w[layer, head], atol=3e-3, rtol=0)  # float16 q and k
    part = head_map(result.source(1), 2, 4, 12, 0, 8)
    torch.testing.assert_close(part["weights"], w[1, 2, 4:12, 0:8], atol=3e-3, rtol=0)
    pooled = head_map(result.source(1), 2, 0, 16, 0, 16, max_cells=8)
    assert pooled["block"] == [2, 2] and pooled["weights"].shape == (8, 8)
    with pytest.raises(ValueError, match="head 4 does not exist"):
        head_map(result.source(0), 4, 0, 16, 0, 16)
    with pytest.raises(ValueError, match="not inside 16 × 16"):
        head_map(result.source(0), 0, 0, 17, 0, 16)


def test_the_forward_then_the_statistics_are_reported():
    model = model_of(n_layer=3)
    seen = []
    layers = []
    result = analyze_attention(model, torch.zeros(1, 5, dtype=torch.long), on_layer=lambda *a: seen.append(a),
                               on_scores=lambda i, n, q, k: layers.append((i, n, q, k)),
                               on_forward=lambda q, k: seen.append((q, k)))
    assert seen[:3] == [("forward", 0, 3), ("forward", 1, 3), ("forward", 2, 3)]
    assert seen[3][0] is result.q and seen[3][1] is result.k  # the queries and keys, before any statistics
    assert seen[4:] == [("statistics", 0, 3), ("statistics", 1, 3), ("statistics", 2, 3)]
    assert [(i, n) for i, n, _, _ in layers] == [(0, 3), (1, 3), (2, 3)]  # each layer as the forward reaches it
    for i, _, q, k in layers:
        assert torch.equal(q, result.q[i]) and torch.equal(k, result.k[i]) and q.dtype == torch.float16


def test_log_code_round_trip():
    w = torch.tensor([0.0, LOG_FLOOR / 2, LOG_FLOOR, 1e-4, 3e-3, 0.5, 1.0])
    codes = encode_log(w)
    assert codes.dtype == torch.uint8
    assert codes.tolist()[:3] == [0, 0, 1] and codes[-1] == 255
    back = decode_log(codes)
    assert back[0] == 0 and back[1] == 0
    torch.testing.assert_close(back[2:], w[2:], rtol=0.024, atol=0)
    assert torch.all(codes[1:].diff() >= 0)  # monotone
