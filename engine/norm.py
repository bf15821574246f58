"""Normalisation layers. Every entry takes ``(ndim, *, bias)`` and maps (B, T, C) -> (B, T, C);
``num_params`` and ``n_saved`` let ``analysis`` count its parameters and activations."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's has no ``bias=False`` before 2.1; nanoGPT)."""

    n_saved = 1  # (B, T, C) tensors autograd keeps: the input (the fused kernel recomputes the rest)

    def __init__(self, ndim: int, *, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)

    @staticmethod
    def num_params(ndim: int, *, bias: bool) -> int:
        return ndim * (2 if bias else 1)


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019, used by LLaMA): no mean subtraction and,
    by definition, no bias, so ``bias`` is accepted for a uniform signature and ignored."""

    n_saved = 2  # written as separate ops, autograd keeps the input and the normalised output

    def __init__(self, ndim: int, *, bias: bool, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in float32: under bf16 autocast the mean of squares loses too much precision (LLaMA does the same)
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight

    @staticmethod
    def num_params(ndim: int, *, bias: bool) -> int:
        return ndim


NORMS = {"layernorm": LayerNorm, "rmsnorm": RMSNorm}
