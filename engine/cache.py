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
    """Keeps every position: memory grows with the sequence."""

    def __init__(self):
        self.keys: list[torch.Tensor] = []  # per layer (B, n_kv, T_kept, hs)
        self.values: list[torch.Tensor] = []
        self.seen: list[int] = []  # positions seen per layer

    def update(self, k: torch.Tensor, v: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        if layer_idx == len(self.keys):
            self.keys.append(k)
            self.values.append(v)
            self.seen.append(k.size(2))
            return k, v
        k_all = torch.cat((self.keys[layer_idx], k), dim=2)  # (B, n_kv, T_past + T, hs)
        v_all = torch.cat((self.values[layer_idx], v), dim=2)
        self.seen[layer_idx] += k.size(2)
        self.keys[layer_idx], self.values[layer_idx] = self._keep(k_all), self._keep(v_all)
        return k_all, v_all

    def _keep(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen[layer_idx] if layer_idx < len(self.seen) else 0

    def __len__(self) -> int:
        return len(self.keys)


class SlidingWindowCache(KVCache):
    """Keeps only the last ``window`` positions per layer: bounded memory, enough for sliding
    attention over ``window`` keys (Mistral's rolling buffer cache). The current forward still
    sees all its own new keys, so a long prompt can be prefilled in one call."""

    def __init__(self, window: int):
        super().__init__()
        self.window = window

    def update(self, k, v, layer_idx):
        k_all, v_all = super().update(k, v, layer_idx)
        if self.keys[layer_idx] is k:  # first call: nothing was trimmed yet
            self.keys[layer_idx], self.values[layer_idx] = self._keep(k), self._keep(v)
        return k_all, v_all

    def _keep(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, -self.window :]


_KEPT: contextvars.ContextVar[dict | None] = contextvars.ContextVar("kept_weights", default=None)


@contextlib.contextmanager
def keep_weights():
    """Within it (``generate`` uses it), ``joint_linear`` makes its concatenated, transposed
    weights once and reuses them, rather than once per decoding step. Only for a span in which
    the weights cannot change: an optimizer step need not tell a tensor's version that it
    changed it (fused AdamW does not), so nothing outside can be trusted to invalidate them."""
    token = _KEPT.set({})
    try:
        yield
    finally:
        _KEPT.reset(token)


def joint_linear(x: torch.Tensor, owner: nn.Module, name: str, linears: tuple[nn.Linear, ...]) -> torch.Tensor:
    """``torch.cat([m(x) for m in linears], -1)`` as one matmul, for inference (no autograd),
    where a decoding step's time goes mostly on launching small kernels. Inside ``keep_weights``
    the weights are concatenated once and kept transposed, (in, out): a layout in which a CPU
    matmul of one row runs about twice as fast as ``F.linear`` on nn.Linear's (out, in)."""
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
