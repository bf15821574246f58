"""What every mapping between transformers' checkpoints and our models shares: a tensor's
correspondence (``Tensor``), the check that a config field has a value a mapping can express
(``_need``), and the FFN fields that give a checkpoint's hidden width (``_ffn_width``). The
decoder mappings (``mappings.py``) and the encoder ones (``encoders.py``) both build on it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config.schema import ModelConfig
from ..nn.ffn import FFNS


@dataclass(frozen=True)
class Tensor:
    """One HF tensor built from our tensors: concatenated along dim 0 (fused projections such as
    GPT-2's c_attn), then transposed (GPT-2's Conv1D stores weights as (in, out)). ``stacked``
    means ``ours`` holds one group per expert, stacked into a new dim 0 (Mixtral's fused
    experts, (n_expert, out, in))."""

    hf: str
    ours: tuple
    transpose: bool = False
    stacked: bool = False

    def to_hf(self, sd: dict) -> torch.Tensor:
        groups = self.ours if self.stacked else (self.ours,)
        parts = [torch.cat([sd[name] for name in group], dim=0) for group in groups]
        t = torch.stack(parts) if self.stacked else parts[0]
        return (t.T if self.transpose else t).contiguous()

    def from_hf(self, t: torch.Tensor, shapes: dict) -> dict:
        t = t.T if self.transpose else t
        groups = self.ours if self.stacked else (self.ours,)
        slabs = t.unbind(0) if self.stacked else (t,)
        out = {}
        for group, slab in zip(groups, slabs, strict=True):
            sizes = [shapes[name][0] for name in group]
            for name, piece in zip(group, slab.split(sizes, dim=0), strict=True):
                out[name] = piece.contiguous()
        return out


def _need(cfg, field: str, want, problems: list, why: str = "") -> None:
    value = getattr(cfg, field)
    ok = value in want if isinstance(want, (list, tuple, set)) else value == want
    if not ok:
        problems.append(f"{field}={value!r} (needs {want!r}{'; ' + why if why else ''})")


def _ffn_width(cfg, hidden: int) -> dict:
    """The FFN fields that give hidden width ``hidden``: ``ffn_mult`` when it reproduces the
    width exactly (so a round trip keeps the config as it was), else an explicit ``ffn_hidden``."""
    default = ModelConfig.__dataclass_fields__["ffn_mult"].default
    for mult in (default, hidden / cfg["n_embd"]):
        if FFNS[cfg["ffn"]].hidden_dim(ModelConfig(**{**cfg, "ffn_mult": mult})) == hidden:
            return {"ffn_mult": mult}
    return {"ffn_hidden": hidden}
