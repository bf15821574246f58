"""The softmax kernels, ``ATTENTION_FUNCTIONS`` (config ``attn_impl``): ``(q, k, v, *, mask, bias,
softcap, dropout_p, scale) -> y`` as ``ALL_ATTENTION_FUNCTIONS`` in transformers. "sdpa" is PyTorch's
fused kernel, "eager" the same maths written out, kept as a readable reference. ``mask`` None
means plain causal with Tq == Tk; k and v may have fewer heads than q (GQA); ``scale`` None means
the scores are divided by √head size, else multiplied by ``scale`` (Gemma 2's
``query_pre_attn_scalar ** -0.5``)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, n_kv, T, hs) -> (B, n_kv * n_rep, T, hs): query head h uses key/value head h // n_rep
    (transformers' ``repeat_kv``)."""
    if n_rep == 1:
        return x
    b, n_kv, t, hs = x.shape
    return x[:, :, None].expand(b, n_kv, n_rep, t, hs).reshape(b, n_kv * n_rep, t, hs)


def attention_weights(
    q: torch.Tensor, k: torch.Tensor, *, mask: torch.Tensor | None, bias: torch.Tensor | None, softcap: float,
    scale: float | None = None,
) -> torch.Tensor:
    """Normalised attention weights (B, nh, Tq, Tk): softmax(q kᵀ/√hs (or · scale), capped, biased, masked)."""
    if scale is None:
        att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))  # (B, nh, Tq, Tk)
    else:
        att = (q @ k.transpose(-2, -1)) * scale
    if softcap:
        att = softcap * torch.tanh(att / softcap)  # Gemma 2: scores bounded in (-c, c)
    if bias is not None:
        att = att + bias
    if mask is None:
        mask = torch.ones(q.size(-2), k.size(-2), dtype=torch.bool, device=q.device).tril()
    att = att.masked_fill(~mask, float("-inf"))
    return F.softmax(att.float(), dim=-1).type_as(q)


def eager_attention(q, k, v, *, mask=None, bias=None, softcap=0.0, dropout_p=0.0, scale=None) -> torch.Tensor:
    n_rep = q.size(-3) // k.size(-3)
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    att = attention_weights(q, k, mask=mask, bias=bias, softcap=softcap, scale=scale)
    att = F.dropout(att, p=dropout_p, training=dropout_p > 0)
    return att @ v  # (B, nh, Tq, Tk) x (B, nh, Tk, hs) -> (B, nh, Tq, hs)


def sdpa_attention(q, k, v, *, mask=None, bias=None, softcap=0.0, dropout_p=0.0, scale=None) -> torch.Tensor:
    if softcap:  # the fused kernels have no hook between the scores and the softmax
        return eager_attention(q, k, v, mask=mask, bias=bias, softcap=softcap, dropout_p=dropout_p, scale=scale)
    gqa = k.size(-3) != q.size(-3)  # grouped keys: the kernel maps query head h to h // n_rep, no copies
    if mask is None and bias is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, enable_gqa=gqa,
                                              scale=scale)
    if bias is not None:
        if mask is None:
            mask = torch.ones(q.size(-2), k.size(-2), dtype=torch.bool, device=q.device).tril()
        mask = bias.to(q.dtype).masked_fill(~mask, float("-inf"))  # a float mask is added to the scores
    if gqa and q.is_cuda:
        # on CUDA the memory-efficient kernel takes a mask but not grouped keys (flash and cuDNN
        # the reverse): without this copy a masked pattern with GQA falls back to the math kernel,
        # which materialises the T×T scores (measured on an H200, bench/README.md)
        n_rep = q.size(-3) // k.size(-3)
        k, v, gqa = repeat_kv(k, n_rep), repeat_kv(v, n_rep), False
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, enable_gqa=gqa, scale=scale)


ATTENTION_FUNCTIONS = {"sdpa": sdpa_attention, "eager": eager_attention}
