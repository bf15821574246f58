"""Attention maps of long inputs (thousands of tokens): a pooled overview of every position, and
any region of one head at full resolution on demand.

    overview = pool_blocks(weights, cells=128)                    # (..., ≤128, ≤128) of a full map
    region = attention_region(model, idx, layer, head, q0, q1, k0, k1, max_cells=128)
    src = layer_scores(model, idx, layer)                          # one layer's q and k, kept
    src.region(head, q0, q1, k0, k1, max_cells=128)                # as above, no new forward

A full map is T² weights per head: at T = 8,192 that is 256 MB of float32 for one head, and a
browser drawing even one stalls (BertViz at ~512 tokens). So nothing here holds a whole map:
``record_scores`` lets the model run its fused kernels and keeps, per chosen layer, only the
queries and keys the pattern was given (post-RoPE, ~T·(n_head + n_kv_head)·head_dim floats);
the weights are recomputed from them in chunks of query rows (``ROW_CHUNK_FLOATS`` floats at a
time, 64 MB), through the pattern's own mask, position bias and soft-cap
(the pattern's ``weights_at``), so they equal what ``capture_attention`` returns.

Pooling. Positions fall in blocks of ``b = ceil(T / cells)`` (the last one shorter); a cell of
query block I and key block J holds ``Σ_{i∈I, j∈J} w_ij / |I|``: the mean, over the block's
queries, of the attention mass they give the key block. A row of cells is then a distribution
over key blocks (it sums to 1 when the pooled keys are all of them), so an overview encodes like
the windowed maps (``attention_maps.encode_maps``), and a block of one token is its weight.

Cost of ``region`` for rows q0..q1 of one head: (q1 − q0)·Tk·head_dim multiply-adds (every key
is scored, for the softmax's denominator), peak memory one chunk of rows × Tk; at T = 8,192 the
whole map of a head is four 64 MB chunks, about 0.3 s on one CPU core for head_dim 32.
``layer_scores`` runs the model only up to the chosen layer (later layers are not needed).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..nn.attention import repeat_kv

OVERVIEW_CELLS = 128  # cells per side of an overview: 128² bytes a head
ROW_CHUNK_FLOATS = 1 << 24  # weights computed at once: 64 MB of float32


def blocks(t: int, cells: int) -> tuple[int, int]:
    """(block size, number of blocks) that cover ``t`` positions in at most ``cells`` blocks."""
    b = max(1, math.ceil(t / max(1, cells)))
    return b, math.ceil(t / b)


def pool_blocks(weights: torch.Tensor, bq: int, bk: int) -> torch.Tensor:
    """(..., Tq, Tk) -> (..., ceil(Tq/bq), ceil(Tk/bk)): per query block, the mean over its
    queries of the mass each key block receives (see the module docstring)."""
    *lead, tq, tk = weights.shape
    nq, nk = math.ceil(tq / bq), math.ceil(tk / bk)
    w = torch.nn.functional.pad(weights.float(), (0, nk * bk - tk, 0, nq * bq - tq))
    sums = w.reshape(*lead, nq, bq, nk, bk).sum((-3, -1))  # (..., nq, nk)
    rows = torch.full((nq,), float(bq), device=w.device)
    rows[-1] = tq - (nq - 1) * bq  # the last block may be shorter
    return sums / rows[:, None]


@dataclass
class LayerScores:
    """What one attention layer was given in one forward: enough to recompute any of its rows."""

    pattern: object  # the layer's ``ATTENTIONS`` entry
    q: torch.Tensor  # (B, nh, Tq, hs)
    k: torch.Tensor  # (B, n_kv, Tk, hs)
    q_start: int
    bias: Callable | None  # the position scheme's score bias function, or None

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.q.size(1), self.q.size(2), self.k.size(2)  # (nh, Tq, Tk)

    def rows(self, r0: int, r1: int, heads: Sequence[int] | None = None) -> torch.Tensor:
        """Normalised weights of queries r0..r1 over every key: (nh_selected, r1 − r0, Tk) float32
        of batch row 0."""
        nh, tq, tk = self.shape
        q = self.q[0, :, r0:r1].float()  # (nh, R, hs)
        k = repeat_kv(self.k[:1], nh // self.k.size(1))[0].float()  # (nh, Tk, hs)
        if heads is not None:
            q, k = q[list(heads)], k[list(heads)]
        k_start = self.q_start + tq - tk
        bias = None
        if self.bias is not None:
            pos = torch.arange(k_start, self.q_start + tq, device=q.device)  # (Tk,)
            bias = self.bias(pos[-tq:][r0:r1], pos)  # (nh, R, Tk)
            if heads is not None:
                bias = bias[list(heads)]
        # the pattern's own weights (mask, soft-cap, or linear attention's φ(q)·φ(k)), its mask
        # built afresh: row chunks must not evict the training shapes' masks
        return self.pattern.weights_at(q, k, q_start=self.q_start + r0, k_start=k_start, bias=bias, heads=heads)

    def chunks(self, r0: int, r1: int, n_heads: int, align: int = 1) -> Iterator[tuple[int, int]]:
        """[a, b) spans of rows r0..r1 whose weights fit in ``ROW_CHUNK_FLOATS``, ``align``-sized."""
        per = max(align, ROW_CHUNK_FLOATS // max(1, n_heads * self.shape[2]) // align * align)
        for a in range(r0, r1, per):
            yield a, min(r1, a + per)

    def pooled(self, q0: int, q1: int, k0: int, k1: int, bq: int, bk: int,
               heads: Sequence[int] | None = None) -> torch.Tensor:
        """Queries q0..q1 × keys k0..k1 pooled in bq × bk blocks: (H, ceil((q1−q0)/bq), ceil((k1−k0)/bk))."""
        n = len(heads) if heads is not None else self.shape[0]
        parts = [pool_blocks(self.rows(a, b, heads)[..., k0:k1], bq, bk)
                 for a, b in self.chunks(q0, q1, n, align=bq)]
        return torch.cat(parts, dim=-2)

    def region(self, head: int, q0: int, q1: int, k0: int, k1: int, max_cells: int = OVERVIEW_CELLS) -> dict:
        """One head's weights on queries q0..q1 × keys k0..k1, pooled to at most ``max_cells``
        per side (full resolution when the region fits): {"q", "k", "block", "weights" (nq, nk)}."""
        bq, _ = blocks(q1 - q0, max_cells)
        bk, _ = blocks(k1 - k0, max_cells)
        w = self.pooled(q0, q1, k0, k1, bq, bk, heads=[head])[0]
        return {"q": [q0, q1], "k": [k0, k1], "block": [bq, bk], "weights": w}


class _Recorder:
    """Stands in for a layer's pattern: keeps what ``attend`` is given, hands it to ``on_scores``
    and lets the pattern run its fast path (no weights)."""

    def __init__(self, pattern, layer: int, on_scores: Callable[[int, LayerScores], None]):
        self.pattern, self.layer, self.on_scores = pattern, layer, on_scores

    def attend(self, q, k, v, *, q_start, bias, dropout_p, need_weights):
        self.on_scores(self.layer, LayerScores(self.pattern, q.detach(), k.detach(), q_start, bias))
        return self.pattern.attend(q, k, v, q_start=q_start, bias=bias, dropout_p=dropout_p, need_weights=False)


def attention_modules(model: nn.Module, stack: str = "self") -> list[nn.Module]:
    """The attention modules of one stack, by layer (as ``capture_attention`` chooses them)."""
    stacks = {"self": (getattr(model, "h", None), "attn")}
    if hasattr(model, "enc_h"):
        stacks.update(encoder=(model.enc_h, "attn"), cross=(model.h, "cross_attn"))
    if stack not in stacks or stacks[stack][0] is None:
        raise ValueError(f"unknown attention stack {stack!r} for this model; choose from {sorted(stacks)}")
    blocks_, attr = stacks[stack]
    return [getattr(b, attr) for b in blocks_]


@contextlib.contextmanager
def record_scores(model: nn.Module, on_scores: Callable[[int, LayerScores], None], *,
                  layers: Sequence[int] | None = None, stack: str = "self"):
    """While open, each chosen layer of ``stack`` calls ``on_scores(layer, LayerScores)`` in the
    forward, then attends with its usual kernel."""
    modules = attention_modules(model, stack)
    chosen = range(len(modules)) if layers is None else layers
    for i in chosen:
        if not 0 <= i < len(modules):
            raise ValueError(f"layer {i} does not exist; the model has {len(modules)} layers")
    saved = {i: modules[i].pattern for i in chosen}
    for i in chosen:
        modules[i].pattern = _Recorder(saved[i], i, on_scores)
    try:
        yield
    finally:
        for i, pattern in saved.items():
            modules[i].pattern = pattern


class _Enough(Exception):
    """Raised by ``layer_scores``' recorder: the layers after the chosen one are not needed."""


@torch.no_grad()
def layer_scores(model: nn.Module, inputs: torch.Tensor | tuple[torch.Tensor, ...], layer: int, *,
                 stack: str = "self", autocast=contextlib.nullcontext) -> LayerScores:
    """The queries and keys of ``layer`` of ``stack`` on ``inputs`` ((1, T) ids, or ``(src, dec)``
    for an encoder-decoder); the forward stops at that layer. Restores the model's mode."""
    inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    device = next(model.parameters()).device
    inputs = tuple(t[:1].to(device) for t in inputs)
    found = {}

    def keep(i, scores):
        found[i] = scores
        raise _Enough

    was_training = model.training
    model.eval()
    try:
        with record_scores(model, keep, layers=[layer], stack=stack), autocast():
            model(*inputs)
    except _Enough:
        pass
    finally:
        model.train(was_training)
    return found[layer]


def attention_region(model: nn.Module, idx, layer: int, head: int, q0: int, q1: int, k0: int, k1: int,
                     max_cells: int = OVERVIEW_CELLS, *, stack: str = "self") -> dict:
    """One head's weights on queries q0..q1 × keys k0..k1 of input ``idx``, pooled to at most
    ``max_cells`` per side: see ``LayerScores.region``. One forward up to ``layer``."""
    src = layer_scores(model, idx, layer, stack=stack)
    nh, tq, tk = src.shape
    if not 0 <= head < nh:
        raise ValueError(f"head {head} does not exist; layers have {nh} heads")
    if not (0 <= q0 < q1 <= tq and 0 <= k0 < k1 <= tk):
        raise ValueError(f"region queries {q0}..{q1} × keys {k0}..{k1} is not inside {tq} × {tk}")
    return src.region(head, q0, q1, k0, k1, max_cells)
