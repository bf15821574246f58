"""Causal self-attention: the module, its attention patterns and its two kernels.

``CausalSelfAttention`` projects q, k, v (``n_kv_head`` key/value heads shared by groups of query
heads: GQA, Ainslie et al. 2023; 1 is multi-query, Shazeer 2019), optionally RMS-normalises q and
k per head, rotates them (RoPE), appends k, v to a KV cache, then hands them to the pattern.

``ATTENTIONS`` (config ``attention``): which keys each query sees. Every entry takes ``(config)``
(and ``causal=True``) and gives ``attend(q, k, v, *, q_start, bias, dropout_p, need_weights) -> (y, weights | None)``
on (B, nh, Tq, hs) queries and (B, n_kv, Tk, hs) keys/values (n_kv divides nh: query head h reads
key/value head h // (nh / n_kv), GQA), the keys being the positions
``q_start + Tq - Tk .. q_start + Tq - 1`` (a cache may hold fewer than all earlier ones); every
entry is causal unless built with ``causal=False`` (an encoder's, where a pattern becomes symmetric:
query i sees key j when the causal pattern lets i see j or j see i). Every entry subclasses
``AttentionKind``, which carries all that differs between kinds (costs, KV bound, label, colour
token, help, the fields it reads, and ``for_layer``: the instance each layer uses, for a kind
that mixes patterns over the depth), so no code elsewhere branches on a kind's name; the softmax
patterns (``MaskedAttention``) differ only in ``allowed(q_pos, k_pos)``, their mask, built once
per shape and cached, and ``mean_keys(config, t)``, what a query attends to. A kind added at run
time goes through ``register_attention(name, cls)``.

``ATTENTION_FUNCTIONS`` (config ``attn_impl``): the softmax kernel, sharing
``(q, k, v, *, mask, bias, softcap, dropout_p, scale) -> y`` as ``ALL_ATTENTION_FUNCTIONS`` does in
transformers: "sdpa" is PyTorch's fused kernel, "eager" the same maths written out, kept as a
readable reference. ``mask`` None means plain causal with Tq == Tk; k and v may have fewer heads
than q (GQA).

The package: ``kernels`` (the softmax kernels), ``base`` (``AttentionKind``), ``masked`` and
``linear`` (the patterns), ``registry`` (``ATTENTIONS``, registering), ``module`` (the modules).
Every name is exported here.
"""

from .base import AttentionKind
from .kernels import ATTENTION_FUNCTIONS, attention_weights, eager_attention, repeat_kv, sdpa_attention
from .linear import FEATURE_MAPS, LinearAttention, elu_feature
from .masked import (
    BlockSparseAttention,
    DilatedAttention,
    FullAttention,
    LocalGlobalAttention,
    MaskedAttention,
    SlidingAttention,
)
from .module import CausalSelfAttention, CrossAttention
from .registry import (
    ATTENTIONS,
    attention_help,
    attention_kinds,
    describe_attentions,
    register_attention,
    unregister_attention,
)

__all__ = [
    "ATTENTIONS", "ATTENTION_FUNCTIONS", "FEATURE_MAPS", "AttentionKind", "BlockSparseAttention", "CausalSelfAttention",
    "CrossAttention", "DilatedAttention", "FullAttention", "LinearAttention", "LocalGlobalAttention", "MaskedAttention",
    "SlidingAttention",
    "attention_help", "attention_kinds", "attention_weights", "describe_attentions", "eager_attention", "elu_feature",
    "register_attention", "repeat_kv", "sdpa_attention", "unregister_attention",
]
