"""Key/value caches for decoding one token at a time.

Attention calls ``cache.update(k, v, layer_idx)`` with the new (B, n_kv_head, T, hs) keys and
values and attends to what it returns: the cached ones followed by the new ones (transformers'
``Cache`` interface). ``get_seq_length()`` is the number of positions seen so far, the
``start_pos`` of the next forward.

Decoding also keeps weights: ``keep_weights`` scopes a store in which ``joint_linear`` (and
``Linear``, nn.Linear's stand-in) concatenate and transpose projection weights once per
``generate`` rather than at every step.
"""

from __future__ import annotations

import contextlib
import contextvars

import torch
import torch.nn as nn
import torch.nn.functional as F


class KVCache:
    """Keeps every position: memory grows with the sequence.

    Each layer's keys and values live in a buffer (B, n_kv, room, hs) that ``update`` writes the
    new positions into, in place, and whose filled part it returns as a view: a decoding step
    copies its one new position, where ``torch.cat`` would copy the whole cache again, memory
    traffic as large as attention's own reading of it (it shows at batch 8, ``bench/decode.py``;
    transformers' ``DynamicCache`` still concatenates). The buffer is sized once when
    the length is known (``capacity``, as ``generate`` gives it), else doubled when full, so the
    copies stay amortised O(1) per position (transformers' ``StaticCache`` is the sized-once
    case). The buffers are written in place: a cache is for inference, not for autograd."""

    window: int | None = None  # positions kept; None: all of them

    def __init__(self, capacity: int | None = None):
        self.capacity = capacity  # positions to make room for at the first update
        self._k: list[torch.Tensor] = []  # per layer (B, n_kv, room, hs); positions [start, end) in use
        self._v: list[torch.Tensor] = []
        self._start: list[int] = []
        self._end: list[int] = []
        self.seen: list[int] = []  # positions seen per layer

    @property
    def keys(self) -> list[torch.Tensor]:
        """Per layer the keys kept, (B, n_kv, T_kept, hs) views of the buffers."""
        return [k[:, :, s:e] for k, s, e in zip(self._k, self._start, self._end)]

    @property
    def values(self) -> list[torch.Tensor]:
        return [v[:, :, s:e] for v, s, e in zip(self._v, self._start, self._end)]

    def window_of(self, layer_idx: int) -> int | None:
        """The positions layer ``layer_idx`` keeps (None: all)."""
        return self.window

    def update(self, k: torch.Tensor, v: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        t = k.size(2)
        window = self.window_of(layer_idx)
        if layer_idx == len(self.seen):  # the layer's first call: a buffer with room for the capacity
            room = max(t, self.capacity or 0) if window is None else t  # a window's buffer grows to ~2 windows
            self._k.append(k.new_empty(*k.shape[:2], room, k.size(3)))
            self._v.append(v.new_empty(*v.shape[:2], room, v.size(3)))
            self._start.append(0)
            self._end.append(0)
            self.seen.append(0)
        start, end = self._start[layer_idx], self._end[layer_idx]
        if end + t > self._k[layer_idx].size(2):  # full: the kept positions move to a buffer twice their size
            n = end - start
            for bufs in (self._k, self._v):
                old = bufs[layer_idx]
                bufs[layer_idx] = old.new_empty(*old.shape[:2], 2 * (n + t), old.size(3))
                bufs[layer_idx][:, :, :n] = old[:, :, start:end]  # a new buffer: earlier views stay valid
            start, end = 0, n
        self._k[layer_idx].narrow(2, end, t).copy_(k)
        self._v[layer_idx].narrow(2, end, t).copy_(v)
        end += t
        self.seen[layer_idx] += t
        self._end[layer_idx] = end
        # this call attends to every position kept so far and all its new ones; a window then drops the oldest
        self._start[layer_idx] = start if window is None else max(start, end - window)
        return self._k[layer_idx].narrow(2, start, end - start), self._v[layer_idx].narrow(2, start, end - start)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen[layer_idx] if layer_idx < len(self.seen) else 0

    def __len__(self) -> int:
        return len(self.seen)


class SlidingWindowCache(KVCache):
    """Keeps only the last ``window`` positions per layer: bounded memory, enough for sliding
    attention over ``window`` keys (Mistral's rolling buffer cache). The current forward still
    sees all its own new keys, so a long prompt can be prefilled in one call. Its buffer holds
    at most twice the window plus one call's new positions: when full, the kept ones move to
    the front of a fresh one."""

    def __init__(self, window: int):
        super().__init__()
        self.window = window


class LayerWindowCache(KVCache):
    """A window per layer: layer i keeps its last ``windows[i]`` positions, or all of them where it
    is None (local and global layers interleaved, Gemma 2: transformers' hybrid cache). Each
    windowed layer's buffer stays bounded as ``SlidingWindowCache``'s; the others grow (or take
    ``capacity``) as ``KVCache``'s."""

    def __init__(self, windows: list[int | None], capacity: int | None = None):
        super().__init__(capacity)
        self.windows = list(windows)

    def window_of(self, layer_idx: int) -> int | None:
        return self.windows[layer_idx]


_KEPT: contextvars.ContextVar[dict | None] = contextvars.ContextVar("kept_weights", default=None)


@contextlib.contextmanager
def keep_weights(store: dict | None = None):
    """Within it (``generate`` uses it), ``joint_linear`` makes its concatenated, transposed
    weights once and reuses them, rather than once per decoding step. Only for a span in which
    the weights cannot change: an optimizer step need not tell a tensor's version that it
    changed it (fused AdamW does not), so nothing outside can be trusted to invalidate them.
    ``store`` (a dict the caller keeps) carries the kept weights from one span to the next: the
    serving engine enters a span per step and should not concatenate them again each time."""
    token = _KEPT.set({} if store is None else store)
    try:
        yield
    finally:
        _KEPT.reset(token)


def joint_linear(x: torch.Tensor, owner: nn.Module, name: str, linears: tuple[nn.Linear, ...]) -> torch.Tensor:
    """``torch.cat([m(x) for m in linears], -1)`` as one matmul, for inference (no autograd),
    where a decoding step's time goes mostly on launching small kernels. Inside ``keep_weights``
    the weights are concatenated once and kept transposed, (in, out): a layout in which a CPU
    matmul of one row runs about twice as fast as ``F.linear`` on nn.Linear's (out, in)."""
    if not all(isinstance(m, nn.Linear) for m in linears):
        # a wrapped projection (a LoRA adapter: peft's layer keeps the nn.Linear as its base_layer)
        # adds its own terms, which its weight alone leaves out: call each one
        return torch.cat([m(x) for m in linears], dim=-1)
    kept = _KEPT.get()
    if kept is None:
        if len(linears) == 1:
            return F.linear(x, linears[0].weight, linears[0].bias)
        bias = None if linears[0].bias is None else torch.cat([m.bias for m in linears])
        return F.linear(x, torch.cat([m.weight for m in linears]), bias)
    key = (id(owner), name)
    if key not in kept:
        weight = torch.cat([m.weight for m in linears]).t().contiguous()  # (in, out)
        kept[key] = (weight, None if linears[0].bias is None else torch.cat([m.bias for m in linears]))
    weight, bias = kept[key]
    y = torch.matmul(x, weight)  # (..., in) @ (in, out); measured faster than addmm here
    return y if bias is None else y.add_(bias)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and names) that, without autograd, goes through
    ``joint_linear`` (a kept transposed weight inside ``keep_weights``); with autograd it is
    nn.Linear itself."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return F.linear(x, self.weight, self.bias)
        return joint_linear(x, self, "weight", (self,))
