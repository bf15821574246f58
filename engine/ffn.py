"""Position-wise feed-forward networks. Every entry takes ``(config)`` and maps
(B, T, C) -> (B, T, C); its ``hidden_dim(config)`` and ``n_proj`` (how many C x hidden
matrices it holds) let ``analysis`` count parameters and FLOPs without building it."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

if TYPE_CHECKING:
    from .config import ModelConfig


class MLP(nn.Module):
    """GPT-2's MLP: up_proj -> GELU -> down_proj, hidden width ``int(ffn_mult * n_embd)``."""

    n_proj = 2
    n_hidden_saved = 2  # hidden-width tensors autograd keeps: GELU input and output

    def __init__(self, config: ModelConfig):
        super().__init__()
        hidden = self.hidden_dim(config)
        self.up_proj = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.down_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # tanh approximation: GPT-2's "gelu_new", so weights load from GPT-2 checkpoints unchanged
        h = F.gelu(self.up_proj(x), approximate="tanh")  # (B, T, hidden)
        return self.dropout(self.down_proj(h))

    @staticmethod
    def hidden_dim(config: ModelConfig) -> int:
        return max(1, int(config.ffn_mult * config.n_embd))

    @staticmethod
    def num_params(config: ModelConfig) -> int:
        c, h = config.n_embd, MLP.hidden_dim(config)
        return 2 * c * h + (h + c if config.bias else 0)


class SwiGLU(nn.Module):
    """Gated FFN: down_proj(silu(gate_proj(x)) * up_proj(x)) (Shazeer 2020, used by LLaMA).

    It holds three matrices instead of two, so the hidden width is 2/3 of the plain MLP's,
    ``int(2/3 * ffn_mult * n_embd)`` rounded up to a multiple of 8, to keep the parameter
    count close to the GELU MLP with the same ``ffn_mult`` (LLaMA's rule)."""

    n_proj = 3
    n_hidden_saved = 4  # gate output, up output, silu(gate), and their product

    def __init__(self, config: ModelConfig):
        super().__init__()
        hidden = self.hidden_dim(config)
        self.gate_proj = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.up_proj = nn.Linear(config.n_embd, hidden, bias=config.bias)
        self.down_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.gate_proj(x)) * self.up_proj(x)  # (B, T, hidden)
        return self.dropout(self.down_proj(h))

    @staticmethod
    def hidden_dim(config: ModelConfig) -> int:
        return 8 * math.ceil(int(2 / 3 * config.ffn_mult * config.n_embd) / 8) or 8

    @staticmethod
    def num_params(config: ModelConfig) -> int:
        c, h = config.n_embd, SwiGLU.hidden_dim(config)
        return 3 * c * h + (2 * h + c if config.bias else 0)


FFNS = {"gelu": MLP, "swiglu": SwiGLU}
