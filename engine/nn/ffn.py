"""Position-wise feed-forward networks. Every entry takes ``(config)`` and maps
(B, T, C) -> (B, T, C); its ``hidden_dim(config)`` and ``n_proj`` (how many C x hidden
matrices it holds) let ``analysis`` count parameters and FLOPs without building it.

``config.ffn_hidden``, when set, is the hidden width of every entry (so a real checkpoint's
width, such as LLaMA-7B's 11008, maps exactly); otherwise it derives from ``ffn_mult``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cache import Linear, joint_linear

if TYPE_CHECKING:
    from ..config.schema import ModelConfig


class MLP(nn.Module):
    """GPT-2's MLP: up_proj -> GELU -> down_proj, hidden width ``int(ffn_mult * n_embd)``."""

    n_proj = 2
    n_hidden_saved = 2  # hidden-width tensors autograd keeps: GELU input and output

    def __init__(self, config: ModelConfig):
        super().__init__()
        hidden = self.hidden_dim(config)
        self.up_proj = Linear(config.n_embd, hidden, bias=config.bias)
        self.down_proj = Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def activation(self, h: torch.Tensor) -> torch.Tensor:
        # tanh approximation: GPT-2's "gelu_new", so weights load from GPT-2 checkpoints unchanged
        return F.gelu(h, approximate="tanh")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.down_proj(self.activation(self.up_proj(x)))  # (B, T, hidden) -> (B, T, C)
        return self.dropout(h) if self.training else h

    @staticmethod
    def hidden_dim(config: ModelConfig) -> int:
        if config.ffn_hidden:
            return config.ffn_hidden
        return max(1, int(config.ffn_mult * config.n_embd))

    @classmethod
    def num_params(cls, config: ModelConfig) -> int:
        c, h = config.n_embd, cls.hidden_dim(config)
        return cls.n_proj * c * h + ((cls.n_proj - 1) * h + c if config.bias else 0)


class ExactGeluMLP(MLP):
    """The MLP with the exact, erf-based GELU (Hendrycks & Gimpel 2016) that BERT uses, so BERT
    checkpoints load unchanged; same cost as the tanh form."""

    def activation(self, h: torch.Tensor) -> torch.Tensor:
        return F.gelu(h)


class ReluMLP(MLP):
    """The original Transformer's and T5 v1.0's MLP: ReLU, whose output is exactly sparse."""

    n_hidden_saved = 1  # ReLU's backward needs only its output

    def activation(self, h: torch.Tensor) -> torch.Tensor:
        return F.relu(h)


class SwiGLU(MLP):
    """Gated FFN: down_proj(silu(gate_proj(x)) * up_proj(x)) (Shazeer 2020, used by LLaMA).

    It holds three matrices instead of two, so the hidden width is 2/3 of the plain MLP's,
    ``int(2/3 * ffn_mult * n_embd)`` rounded up to a multiple of 8, to keep the parameter
    count close to the GELU MLP with the same ``ffn_mult`` (LLaMA's rule)."""

    n_proj = 3
    n_hidden_saved = 4  # gate output, up output, activated gate, and their product

    def __init__(self, config: ModelConfig):
        nn.Module.__init__(self)
        hidden = self.hidden_dim(config)
        self.gate_proj = Linear(config.n_embd, hidden, bias=config.bias)
        self.up_proj = Linear(config.n_embd, hidden, bias=config.bias)
        self.down_proj = Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def activation(self, gate: torch.Tensor) -> torch.Tensor:
        return F.silu(gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():  # two matmuls: autograd would keep a concatenated weight copy
            gate, up = self.gate_proj(x), self.up_proj(x)  # (B, T, hidden) each
        else:  # one matmul at inference, where a small step's time is mostly kernel launches
            gate, up = joint_linear(x, self, "gate_up", (self.gate_proj, self.up_proj)).chunk(2, dim=-1)
        h = self.down_proj(self.activation(gate) * up)
        return self.dropout(h) if self.training else h

    @staticmethod
    def hidden_dim(config: ModelConfig) -> int:
        if config.ffn_hidden:
            return config.ffn_hidden
        return 8 * math.ceil(int(2 / 3 * config.ffn_mult * config.n_embd) / 8) or 8


class GeGLU(SwiGLU):
    """SwiGLU with a GELU gate (Shazeer 2020; Gemma). The tanh approximation, as Gemma's
    ``gelu_pytorch_tanh``; same width rule and parameter count as SwiGLU."""

    def activation(self, gate: torch.Tensor) -> torch.Tensor:
        return F.gelu(gate, approximate="tanh")


FFNS = {"gelu": MLP, "gelu_exact": ExactGeluMLP, "relu": ReluMLP, "swiglu": SwiGLU, "geglu": GeGLU}
