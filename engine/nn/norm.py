"""Normalisation layers and where a block puts them.

``NORMS`` entries take ``(ndim, *, bias, eps)`` and map (..., C) -> (..., C); ``num_params`` and
``n_saved`` let ``analysis`` count their parameters and activations.

``NORM_PLACEMENTS`` entries say where a block's norms sit around a sublayer (attention or FFN):
``apply(x, sublayer, norm, post_norm) -> x`` with ``n_norms`` norms per sublayer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (PyTorch's has no ``bias=False`` before 2.1; nanoGPT)."""

    n_saved = 1  # (B, T, C) tensors autograd keeps: the input (the fused kernel recomputes the rest)

    def __init__(self, ndim: int, *, bias: bool, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)

    @staticmethod
    def num_params(ndim: int, *, bias: bool) -> int:
        return ndim * (2 if bias else 1)


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019, used by LLaMA): no mean subtraction and,
    by definition, no bias, so ``bias`` is accepted for a uniform signature and ignored."""

    n_saved = 2  # written as separate ops, autograd keeps the input and the normalised output

    def __init__(self, ndim: int, *, bias: bool, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and not torch.is_grad_enabled():
            # PyTorch's kernel at inference: the same sums in fewer calls (training keeps the ops
            # below, whose saved activations ``analysis`` counts)
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        # in float32: under bf16 autocast the mean of squares loses too much precision (LLaMA does the same)
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight

    @staticmethod
    def num_params(ndim: int, *, bias: bool) -> int:
        return ndim


class OffsetRMSNorm(nn.Module):
    """RMSNorm whose gain is stored as an offset from 1: ``x̂ · (1 + w)``, ``w`` starting at 0 (Gemma,
    transformers' ``GemmaRMSNorm``), so weight decay pulls the gain towards 1, not 0, and Gemma
    checkpoints load unchanged. The product is taken in float32 before casting back (Gemma's
    order; LLaMA's RMSNorm casts first). Same parameters and cost as ``RMSNorm``; no bias."""

    n_saved = 2  # the input and the normalised output (the product's other factor is a vector)

    def __init__(self, ndim: int, *, bias: bool, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(ndim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * (1.0 + self.weight.float())).type_as(x)

    @staticmethod
    def num_params(ndim: int, *, bias: bool) -> int:
        return ndim


Sublayer = Callable[[torch.Tensor], torch.Tensor]


class PreNorm:
    """``x + f(norm(x))`` (GPT-2, LLaMA): the residual stream stays an identity path, which is
    what lets deep stacks train without warm-up tricks (Xiong et al. 2020)."""

    n_norms = 1

    @staticmethod
    def apply(x: torch.Tensor, f: Sublayer, norm: nn.Module, post_norm: nn.Module | None) -> torch.Tensor:
        return x + f(norm(x))


class PostNorm:
    """``norm(x + f(x))``, the original Transformer's (Vaswani et al. 2017): every residual sum is
    normalised, so gradients to early layers shrink with depth and it needs learning-rate warm-up."""

    n_norms = 1

    @staticmethod
    def apply(x: torch.Tensor, f: Sublayer, norm: nn.Module, post_norm: nn.Module | None) -> torch.Tensor:
        return norm(x + f(x))


class SandwichNorm:
    """``x + post_norm(f(norm(x)))`` (CogView's sandwich-LN, Gemma 2/3): pre-norm plus a norm on
    each branch's output, which bounds what one sublayer adds to the stream; two extra norms
    per sublayer."""

    n_norms = 2

    @staticmethod
    def apply(x: torch.Tensor, f: Sublayer, norm: nn.Module, post_norm: nn.Module | None) -> torch.Tensor:
        return x + post_norm(f(norm(x)))


NORMS = {"layernorm": LayerNorm, "rmsnorm": RMSNorm, "rmsnorm_offset": OffsetRMSNorm}
NORM_PLACEMENTS = {"pre": PreNorm, "post": PostNorm, "sandwich": SandwichNorm}
