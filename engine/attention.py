"""Causal multi-head self-attention.

The attention maths is chosen by ``config.attn_impl`` from ``ATTENTION_FUNCTIONS``, whose
entries share one signature ``(q, k, v, *, dropout_p) -> y`` on (B, nh, T, hs) tensors, as
``ALL_ATTENTION_FUNCTIONS`` does in transformers: "sdpa" is PyTorch's fused kernel, "eager"
the same maths written out, kept as a readable reference and for looking at the weights.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

if TYPE_CHECKING:
    from .config import ModelConfig


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, dropout_p: float) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)


def eager_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, dropout_p: float) -> torch.Tensor:
    t = q.size(-2)
    att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))  # (B, nh, T, T)
    causal = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
    att = att.masked_fill(~causal, float("-inf"))
    att = F.softmax(att, dim=-1)
    att = F.dropout(att, p=dropout_p, training=dropout_p > 0)
    return att @ v  # (B, nh, T, T) x (B, nh, T, hs) -> (B, nh, T, hs)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        # separate projections rather than nanoGPT's fused c_attn, so names match HF checkpoints
        self.q_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.k_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.v_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.o_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.attn_impl = config.attn_impl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.size()
        hs = c // self.n_head
        q = self.q_proj(x).view(b, t, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = self.k_proj(x).view(b, t, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = self.v_proj(x).view(b, t, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        attend = ATTENTION_FUNCTIONS[self.attn_impl]
        y = attend(q, k, v, dropout_p=self.dropout if self.training else 0.0)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(b, t, c)  # re-assemble heads side by side
        return self.resid_dropout(self.o_proj(y))

    @staticmethod
    def num_params(config: ModelConfig) -> int:
        return 4 * config.n_embd * config.n_embd + (4 * config.n_embd if config.bias else 0)


ATTENTION_FUNCTIONS = {"sdpa": sdpa_attention, "eager": eager_attention}
