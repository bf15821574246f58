"""Absolute position information, added to the token embeddings before the first block.

Every entry takes ``(config)`` and maps token embeddings (B, T, C) -> (B, T, C).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

if TYPE_CHECKING:
    from .config import ModelConfig


class LearnedPosition(nn.Module):
    """One trained vector per position (GPT-2): ``block_size * n_embd`` parameters."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(config.block_size, config.n_embd))
        nn.init.normal_(self.weight, mean=0.0, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.size(1)
        return x + self.weight[:t]  # (B, T, C) + (T, C)

    @staticmethod
    def num_params(config: ModelConfig) -> int:
        return config.block_size * config.n_embd


class SinusoidalPosition(nn.Module):
    """Fixed sines and cosines of geometrically spaced frequencies (Vaswani et al. 2017, §3.5)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        c = config.n_embd
        pos = torch.arange(config.block_size, dtype=torch.float32)[:, None]  # (T, 1)
        freq = torch.exp(torch.arange(0, c, 2, dtype=torch.float32) * (-math.log(10000.0) / c))
        pe = torch.zeros(config.block_size, c + c % 2)  # one spare column when n_embd is odd
        pe[:, 0::2] = torch.sin(pos * freq)
        pe[:, 1::2] = torch.cos(pos * freq)
        # not persistent: it is a function of the config, so checkpoints need not carry it
        self.register_buffer("pe", pe[:, :c], persistent=False)  # (T, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pe[: x.size(1)].to(x.dtype)

    @staticmethod
    def num_params(config: ModelConfig) -> int:
        return 0


class NoPosition(nn.Module):
    """No position signal ("NoPE"): causal masking alone lets a decoder infer positions
    (Haviv et al. 2022; Kazemnejad et al. 2023)."""

    def __init__(self, config: ModelConfig):
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @staticmethod
    def num_params(config: ModelConfig) -> int:
        return 0


POSITIONS = {"learned": LearnedPosition, "sinusoidal": SinusoidalPosition, "none": NoPosition}
