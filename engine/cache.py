"""Key/value caches for decoding one token at a time.

Attention calls ``cache.update(k, v, layer_idx)`` with the new (B, n_kv_head, T, hs) keys and
values and attends to what it returns: the cached ones followed by the new ones (transformers'
``Cache`` interface). ``get_seq_length()`` is the number of positions seen so far, the
``start_pos`` of the next forward.
"""

from __future__ import annotations

import torch


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
