"""Look at attention weights without paying for them otherwise.

    with engine.capture_attention(model, layers=[0, 1], heads=None) as cap:
        model(idx)
    cap.weights[0]  # (B, H_selected, T, T) normalised weights of layer 0, float32, detached

While the context is open the chosen layers compute their weights explicitly (the readable
path: softmax(q kᵀ) or, for linear attention, φ(q)·φ(k) over its row sum) and hand them over;
outside it no layer computes or keeps any weights, so the fused kernels run as usual. Each
forward overwrites the previous one's weights.

An encoder-decoder has three kinds of attention; ``stack`` picks one: "self" (the decoder's
causal self-attention; for decoder-only and encoder-only models, their only stack), "encoder"
(the encoder's bidirectional self-attention) or "cross" (decoder queries over encoder outputs,
weights (B, H, T_decoder, T_encoder)).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn as nn


class AttentionCapture:
    def __init__(self, heads: Sequence[int] | None):
        self.heads = list(heads) if heads is not None else None
        self.weights: dict[int, torch.Tensor] = {}  # layer -> (B, H_selected, Tq, Tk)

    def __call__(self, layer: int, weights: torch.Tensor) -> None:
        w = weights.detach()
        if self.heads is not None:
            w = w[:, self.heads]
        self.weights[layer] = w.float()


@contextlib.contextmanager
def capture_attention(
    model: nn.Module, layers: Sequence[int] | None = None, heads: Sequence[int] | None = None, *,
    stack: str = "self",
) -> Iterator[AttentionCapture]:
    """Capture the attention weights of ``layers`` (default all) and ``heads`` (default all) of
    one ``stack`` ("self", "encoder" or "cross"; see the module docstring)."""
    stacks = {"self": (getattr(model, "h", None), "attn")}
    if hasattr(model, "enc_h"):
        stacks.update(encoder=(model.enc_h, "attn"), cross=(model.h, "cross_attn"))
    if stack not in stacks:
        raise ValueError(f"unknown attention stack {stack!r} for this model; choose from {sorted(stacks)}")
    blocks, attr = stacks[stack]
    chosen = range(len(blocks)) if layers is None else layers
    for i in chosen:
        if not -len(blocks) <= i < len(blocks):
            raise ValueError(f"layer {i} does not exist; the model has {len(blocks)} layers")
    n_head = getattr(blocks[0], attr).n_head
    for h in heads or []:
        if not 0 <= h < n_head:
            raise ValueError(f"head {h} does not exist; layers have {n_head} heads")
    cap = AttentionCapture(heads)
    modules = [getattr(blocks[i], attr) for i in chosen]
    for m in modules:
        m.capture = cap
    try:
        yield cap
    finally:
        for m in modules:
            m.capture = None
