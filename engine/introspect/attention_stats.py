"""Every layer's and head's attention on one long input (a pretrained model on a pasted text): per-head
statistics over the full-resolution maps, a pooled overview of every head, and the queries and keys
that rebuild any head's full map later.

    result = analyze_attention(model, ids, cells=32, on_layer=None, on_scores=None, on_forward=None)
    result.stats["entropy"]       # (n_layer, n_head) float32, see below
    result.overview               # (n_layer, n_head, N, N) pooled maps (attention_zoom.pool_blocks)
    result.q, result.k            # (n_layer, n_head, T, hs), (n_layer, n_kv_head, T, hs), float16
    head_map(result.source(layer), head, 0, T, 0, T, max_cells=2048)   # one head, full resolution

Statistics, per head, each the mean over every query i (0..T-1) of a row w_i· of its map (the
softmax weights, float32, computed in row chunks from the queries and keys the layer was given, as
``attention_zoom.LayerScores`` does; the forward itself runs its fused kernels):

    entropy        H_i = -Σ_j w_ij ln w_ij, in nats (0: one key takes everything)
    entropy_norm   H_i / ln(i + 1): 1 when the weight is uniform over every position up to the
                   query's (a causal model's keys); query 0, which sees one key, counts as 0
    distance       Σ_j w_ij (p_i - p_j): how far back, in tokens, the weight sits on average
    first_token    w_i0: the share of the weight on the first position (an "attention sink": large
                   language models park much of their attention there)
    self_token     w_ii: the share on the query's own position

``tests/engine/introspect/test_attention_stats.py`` checks each against a direct computation on the
weights ``capture_attention`` returns.

Colour encoding for maps sent to a page (``encode_log``): a weight w becomes one byte, 0 when
w < LOG_FLOOR (1e-5), else 1 + round(254 · (log10 w - log10 LOG_FLOOR) / -log10 LOG_FLOOR): five
decades in 254 steps (4.6 % apart), so that the many small weights of a 2,048-key row keep their
pattern, which a linear byte (steps of 1/255) would round to 0. ``decode_log`` inverts it.

Cost on SmolLM2-135M (30 layers × 9 heads) at T = 2,048 on 2 CPU cores: the forward ~14 s, the
statistics ~1 s a layer; the kept queries and keys are 2·T·(n_head + n_kv_head)·head_dim bytes a
layer (float16): 94 MB in all (and the float32 ones while the statistics are taken).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .attention_zoom import LayerScores, blocks, pool_blocks, record_scores

LOG_FLOOR = 1e-5
STATS = ("entropy", "entropy_norm", "distance", "first_token", "self_token")


def encode_log(weights: torch.Tensor, floor: float = LOG_FLOOR) -> torch.Tensor:
    """Non-negative weights -> uint8 on a log scale (see the module docstring)."""
    w = weights.float()
    decades = -math.log10(floor)
    b = 1 + ((torch.log10(w.clamp_min(floor)) + decades) / decades * 254).round()
    return torch.where(w < floor, torch.zeros_like(b), b.clamp(1, 255)).to(torch.uint8)


def decode_log(codes: torch.Tensor, floor: float = LOG_FLOOR) -> torch.Tensor:
    """uint8 codes -> float32 weights (0 for code 0); within 2.3 % of what ``encode_log`` was given."""
    c = codes.float()
    decades = -math.log10(floor)
    w = torch.pow(10.0, (c - 1) / 254 * decades - decades)
    return torch.where(c == 0, torch.zeros_like(w), w)


def row_stats(w: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-row statistics of weights ``w`` (H, R, Tk) whose rows are queries at ``q_pos`` (R,) over
    keys at ``k_pos`` (Tk,) (consecutive positions): sums over the rows, (H,) each, keyed as ``STATS``."""
    w = w.float()
    h = -torch.special.xlogy(w, w).sum(-1)  # (H, R)
    q = q_pos.float()
    seen = (q - k_pos[0] + 1).clamp(1, len(k_pos))  # the keys up to and including the query's position
    norm = torch.where(seen > 1, h / torch.log(seen).clamp_min(1e-12), torch.zeros_like(h))
    # Σ_j w_ij (p_i − p_j) = p_i Σ_j w_ij − Σ_j w_ij p_j: a matrix-vector product, no (R, Tk) distances
    dist = q * w.sum(-1) - w @ k_pos.float()  # (H, R)
    own = q_pos - k_pos[0]
    inside = (own >= 0) & (own < len(k_pos))
    self_w = torch.zeros(w.shape[:2])
    if inside.any():
        rows = torch.nonzero(inside)[:, 0]
        self_w[:, rows] = w[:, rows, own[rows]]
    return {
        "entropy": h.sum(-1),
        "entropy_norm": norm.sum(-1),
        "distance": dist.sum(-1),
        "first_token": w[..., 0].sum(-1) if k_pos[0] == 0 else torch.zeros(w.size(0)),
        "self_token": self_w.sum(-1),
    }


@dataclass
class AttentionAnalysis:
    """What ``analyze_attention`` found: see the module docstring."""

    n_tokens: int
    stats: dict[str, torch.Tensor]  # name -> (n_layer, n_head)
    overview: torch.Tensor  # (n_layer, n_head, N, N) pooled weights (mean mass per block)
    block: int  # positions per overview cell
    q: torch.Tensor  # (n_layer, n_head, T, hs) float16
    k: torch.Tensor  # (n_layer, n_kv_head, T, hs) float16
    patterns: list = field(default_factory=list)  # each layer's ATTENTIONS entry

    def source(self, layer: int) -> LayerScores:
        """Layer ``layer``'s queries and keys, as ``attention_zoom`` rebuilds maps from them."""
        return LayerScores(self.patterns[layer], self.q[layer][None], self.k[layer][None], 0, None)


def layer_summary(scores: LayerScores, block: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One layer's per-head statistics (means over its queries, (H,) each) and its overview pooled
    in ``block``-position cells (H, N, N), from its full maps in row chunks."""
    nh, tq, tk = scores.shape
    k_start = scores.q_start + tq - tk
    k_pos = torch.arange(k_start, k_start + tk)
    sums = {name: torch.zeros(nh) for name in STATS}
    parts = []
    for a, b in scores.chunks(0, tq, nh, align=block):
        w = scores.rows(a, b).cpu()  # (H, R, Tk)
        for name, value in row_stats(w, torch.arange(scores.q_start + a, scores.q_start + b), k_pos).items():
            sums[name] += value
        parts.append(pool_blocks(w, block, block))
    return {name: s / tq for name, s in sums.items()}, torch.cat(parts, dim=-2)


@torch.no_grad()
def analyze_attention(model: nn.Module, ids: torch.Tensor, *, cells: int = 32,
                      on_layer: Callable[[str, int, int], None] | None = None,
                      on_scores: Callable[[int, int, torch.Tensor, torch.Tensor], None] | None = None,
                      on_forward: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
                      autocast=contextlib.nullcontext) -> AttentionAnalysis:
    """Run ``model`` (a decoder) once on ``ids`` ((1, T) or (T,)), keeping each layer's queries and
    keys, then summarise every layer's full maps. ``on_scores(layer, n_layer, q, k)`` gets each
    layer's float16 queries (n_head, T, hs) and keys (n_kv_head, T, hs) as the forward reaches it, and
    ``on_forward(q, k)`` all of them once the forward is done (both before the statistics: a caller
    can draw maps from them at once); ``on_layer(phase, layer, n_layer)`` follows the work ("forward", then "statistics"); either
    may raise to stop. Restores the model's mode."""
    ids = ids.reshape(1, -1).to(next(model.parameters()).device)
    t = ids.size(1)
    block, _ = blocks(t, cells)
    found: dict[int, LayerScores] = {}
    n_layer = len(model.h)

    half: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def keep(layer, scores):
        found[layer] = scores
        half[layer] = (scores.q[0].to(torch.float16).cpu(), scores.k[0].to(torch.float16).cpu())
        if on_scores is not None:
            on_scores(layer, n_layer, *half[layer])
        if on_layer is not None:
            on_layer("forward", layer, n_layer)

    was_training = model.training
    model.eval()
    try:
        with record_scores(model, keep), autocast():
            model(ids)
    finally:
        model.train(was_training)
    layers = [found[i] for i in sorted(found)]
    q = torch.stack([half[i][0] for i in sorted(found)])
    k = torch.stack([half[i][1] for i in sorted(found)])
    if on_forward is not None:
        on_forward(q, k)
    summaries = []
    for i, scores in enumerate(layers):
        summaries.append(layer_summary(scores, block))
        if on_layer is not None:
            on_layer("statistics", i, n_layer)
    return AttentionAnalysis(
        n_tokens=t, stats={name: torch.stack([f[0][name] for f in summaries]) for name in STATS},
        overview=torch.stack([f[1] for f in summaries]), block=block, q=q, k=k,
        patterns=[s.pattern for s in layers],
    )


def head_map(scores: LayerScores, head: int, q0: int, q1: int, k0: int, k1: int,
             max_cells: int = 2048) -> dict:
    """One head's weights on queries q0..q1 × keys k0..k1, full resolution where a side has at most
    ``max_cells`` positions, else pooled (``LayerScores.region``): {"q", "k", "block", "weights"}."""
    nh, tq, tk = scores.shape
    if not 0 <= head < nh:
        raise ValueError(f"head {head} does not exist; layers have {nh} heads")
    if not (0 <= q0 < q1 <= tq and 0 <= k0 < k1 <= tk):
        raise ValueError(f"region queries {q0}..{q1} × keys {k0}..{k1} is not inside {tq} × {tk}")
    return scores.region(head, q0, q1, k0, k1, max_cells)
