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
token, help, the fields it reads), so no code elsewhere branches on a kind's name; the softmax
patterns (``MaskedAttention``) differ only in ``allowed(q_pos, k_pos)``, their mask, built once
per shape and cached, and ``mean_keys(config, t)``, what a query attends to. A kind added at run
time goes through ``register_attention(name, cls)``.

``ATTENTION_FUNCTIONS`` (config ``attn_impl``): the softmax kernel, sharing
``(q, k, v, *, mask, bias, softcap, dropout_p) -> y`` as ``ALL_ATTENTION_FUNCTIONS`` does in
transformers: "sdpa" is PyTorch's fused kernel, "eager" the same maths written out, kept as a
readable reference. ``mask`` None means plain causal with Tq == Tk; k and v may have fewer heads
than q (GQA).
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cache import Linear, joint_linear
from .norm import RMSNorm
from .position import apply_rotary

if TYPE_CHECKING:
    from ..config.schema import ModelConfig
    from .cache import KVCache

# ---------------------------------------------------------------------------- kernels


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, n_kv, T, hs) -> (B, n_kv * n_rep, T, hs): query head h uses key/value head h // n_rep
    (transformers' ``repeat_kv``)."""
    if n_rep == 1:
        return x
    b, n_kv, t, hs = x.shape
    return x[:, :, None].expand(b, n_kv, n_rep, t, hs).reshape(b, n_kv * n_rep, t, hs)


def attention_weights(
    q: torch.Tensor, k: torch.Tensor, *, mask: torch.Tensor | None, bias: torch.Tensor | None, softcap: float
) -> torch.Tensor:
    """Normalised attention weights (B, nh, Tq, Tk): softmax(q kᵀ/√hs, capped, biased, masked)."""
    att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))  # (B, nh, Tq, Tk)
    if softcap:
        att = softcap * torch.tanh(att / softcap)  # Gemma 2: scores bounded in (-c, c)
    if bias is not None:
        att = att + bias
    if mask is None:
        mask = torch.ones(q.size(-2), k.size(-2), dtype=torch.bool, device=q.device).tril()
    att = att.masked_fill(~mask, float("-inf"))
    return F.softmax(att.float(), dim=-1).type_as(q)


def eager_attention(q, k, v, *, mask=None, bias=None, softcap=0.0, dropout_p=0.0) -> torch.Tensor:
    n_rep = q.size(-3) // k.size(-3)
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    att = attention_weights(q, k, mask=mask, bias=bias, softcap=softcap)
    att = F.dropout(att, p=dropout_p, training=dropout_p > 0)
    return att @ v  # (B, nh, Tq, Tk) x (B, nh, Tk, hs) -> (B, nh, Tq, hs)


def sdpa_attention(q, k, v, *, mask=None, bias=None, softcap=0.0, dropout_p=0.0) -> torch.Tensor:
    if softcap:  # the fused kernels have no hook between the scores and the softmax
        return eager_attention(q, k, v, mask=mask, bias=bias, softcap=softcap, dropout_p=dropout_p)
    gqa = k.size(-3) != q.size(-3)  # grouped keys: the kernel maps query head h to h // n_rep, no copies
    if mask is None and bias is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, enable_gqa=gqa)
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
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, enable_gqa=gqa)


# ---------------------------------------------------------------------------- patterns


class AttentionKind:
    """What every ``ATTENTIONS`` entry is: everything that differs between attention kinds lives
    on its class, so the rest of the engine, the web app and its charts ask the class instead of
    branching on a kind's name (as transformers' ``ALL_ATTENTION_FUNCTIONS`` holds its kernels).

    An instance, ``cls(config, *, causal=True)``, attends (``attend``), gives the weights of any
    block of queries (``weights_at``) and draws its pattern (``structure_mask``). The class answers
    from a config alone, without tensors, for ``analyze``, the composer and the charts: how many
    keys a query sees and what that costs (``mean_keys``, ``flops_per_token``,
    ``decode_flops_per_token``, ``executed_flops_per_token``, ``saved_activations``), how many
    positions its KV cache must keep (``kv_bound``), whether it has softmax scores, its ``label``
    and colour token, its phrase in the form's help and the config ``fields`` only it reads.
    ``MaskedAttention`` gives a softmax pattern all but ``allowed`` and ``mean_keys``."""

    help: ClassVar[str] = ""  # its phrase in the composer's help on ``attention``: "a sliding window"
    color: ClassVar[str] = "slate"  # a colour token; the charts' theme module maps it to a colour
    fields: ClassVar[tuple[str, ...]] = ()  # ModelConfig fields only this kind reads (the form shows them for it)
    has_scores: ClassVar[bool] = True  # softmax over q·kᵀ: a score bias, soft-cap, kernel choice, flash apply
    plain_causal: ClassVar[bool] = False  # exactly the causal mask, so kernels may use is_causal
    # ``analyze``'s formula wording for a kind whose costs are not a softmax's (None: the softmax's)
    decode_formula: ClassVar[str | None] = None
    executed_formula: ClassVar[str | None] = None

    def __init__(self, config: ModelConfig, *, causal: bool = True):
        self.causal = causal

    def attend(self, q, k, v, *, q_start: int, bias, dropout_p: float, need_weights: bool):
        """(y (B, nh, Tq, hs), weights (B, nh, Tq, Tk) or None); see the module docstring."""
        raise NotImplementedError

    def weights_at(self, q: torch.Tensor, k: torch.Tensor, *, q_start: int, k_start: int, bias=None,
                   heads=None) -> torch.Tensor:
        """Normalised weights (H, Tq, Tk) float32 of queries (H, Tq, hs) at positions ``q_start ..``
        over keys (H, Tk, hs) at ``k_start ..`` (one per query head), equal to what ``attend``
        captures; ``bias`` the position scheme's score bias for these (H, Tq, Tk), ``heads`` which of
        the pattern's heads q holds (None: all). Any mask is built afresh, not cached: blocks of
        rows must not evict the training shapes' masks (``attention_zoom``)."""
        raise NotImplementedError

    def structure_mask(self, t: int) -> tuple[list[torch.Tensor], str]:
        """The distinct (T, T) bool pictures of which keys each query reaches (one per group of
        heads that differs), and a note, for the structure view (``engine.structure``)."""
        raise NotImplementedError

    @classmethod
    def label(cls, config: ModelConfig) -> str:
        """The kind as charts name it, with the config's values it reads: "sliding (window 4,096)"
        (``config.attention`` names the kind)."""
        detail = cls.describe(config)
        return f"{config.attention} ({detail})" if detail else config.attention

    @classmethod
    def describe(cls, config: ModelConfig) -> str:
        """The config's values this kind reads, for its ``label``: "window 4,096"; "" for none."""
        return ""

    @classmethod
    def kv_bound(cls, config: ModelConfig) -> int | None:
        """The most past positions a query can reach, so the KV cache needs (a ``SlidingWindowCache``
        of that many); None when every past position may be needed."""
        return None

    @classmethod
    def kv_positions(cls, config: ModelConfig, t: int) -> int:
        """Positions the KV cache holds at context ``t``: t, or min(t, ``kv_bound``)."""
        bound = cls.kv_bound(config)
        return t if bound is None else min(t, bound)

    @staticmethod
    def mean_keys(config: ModelConfig, t: int) -> float:
        """K̄(t): the mean number of keys a query of a causal sequence of ``t`` sees."""
        raise NotImplementedError

    @classmethod
    def flops_per_token(cls, config: ModelConfig, t: int, *, causal: bool = True) -> float:
        """Useful forward FLOPs of one layer's attention for one token at context ``t``."""
        raise NotImplementedError

    @classmethod
    def decode_keys(cls, config: ModelConfig, t: int) -> float | None:
        """Keys the newest of ``t`` tokens sees when decoding; None for a recurrent state."""
        return None

    @classmethod
    def decode_flops_per_token(cls, config: ModelConfig, t: int) -> float:
        """Forward FLOPs of one layer's attention for the newest token over ``t`` cached ones."""
        raise NotImplementedError

    @classmethod
    def executed_flops_per_token(cls, config: ModelConfig, t: int, *, causal: bool = True) -> float:
        """FLOPs per token and layer that the kernels actually run (``torch.utils.flop_counter``'s)."""
        raise NotImplementedError

    @classmethod
    def saved_activations(cls, config: ModelConfig, t: int) -> tuple[int, int]:
        """Elements one layer keeps for the backward pass per sequence of ``t``: (its attention
        matrix or states, any other tensors of its own)."""
        raise NotImplementedError


def _build_mask(kind: MaskedAttention, q_start: int, tq: int, k_start: int, tk: int, device) -> torch.Tensor:
    q_pos = torch.arange(q_start, q_start + tq, device=device)
    k_pos = torch.arange(k_start, k_start + tk, device=device)
    allowed = kind.allowed(q_pos[:, None], k_pos[None, :])
    if not kind.causal:  # symmetric: i sees j when either may see the other causally
        allowed = allowed | kind.allowed(k_pos[:, None], q_pos[None, :]).transpose(-2, -1)
    return allowed if allowed.dim() == 3 else allowed[None]  # (1 or nh, Tq, Tk)


_cached_mask = functools.lru_cache(maxsize=8)(_build_mask)  # a T×T mask per shape in use: training, eval, a prefill


class MaskedAttention(AttentionKind):
    """Softmax attention restricted by a boolean mask: the shared machinery of the softmax patterns.

    Subclasses define ``allowed(q_pos (Tq, 1), k_pos (1, Tk)) -> bool (Tq, Tk) or (nh, Tq, Tk)``,
    ``mean_keys`` and, as ``params``, the config values it depends on (the key of the mask cache)."""

    def __init__(self, config: ModelConfig, *, causal: bool = True):
        super().__init__(config, causal=causal)
        self.impl = config.attn_impl
        self.softcap = config.attn_softcap
        self.params: tuple = ()

    def __hash__(self):
        return hash((type(self), self.causal, self.params))

    def __eq__(self, other):
        return type(self) is type(other) and self.causal == other.causal and self.params == other.params

    def allowed(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def mask(self, q_start: int, tq: int, k_start: int, tk: int, device: torch.device, *,
             cached: bool = True) -> torch.Tensor:
        """(1 or nh, Tq, Tk) bool: which keys at ``k_start ..`` each query at ``q_start ..`` sees."""
        return (_cached_mask if cached else _build_mask)(self, q_start, tq, k_start, tk, device)

    def attend(self, q, k, v, *, q_start: int, bias, dropout_p: float, need_weights: bool):
        tq, tk = q.size(-2), k.size(-2)
        k_start = q_start + tq - tk
        if (tq == 1 and self.plain_causal and self.causal and bias is None and not need_weights
                and not self.softcap and self.impl == "sdpa"):
            # one new token (cached decoding) sees every key: no mask to build for each position
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p,
                                                  enable_gqa=k.size(-3) != q.size(-3)), None
        plain = self.plain_causal and self.causal and tq == tk
        mask = None if plain else self.mask(q_start, tq, k_start, tk, q.device)
        if bias is not None:  # the position scheme's score bias function
            pos = torch.arange(k_start, q_start + tq, device=q.device)  # (Tk,)
            bias = bias(pos[-tq:], pos)  # (nh, Tq, Tk)
        if need_weights:
            n_rep = q.size(-3) // k.size(-3)
            k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
            w = attention_weights(q, k, mask=mask, bias=bias, softcap=self.softcap)  # (B, nh, Tq, Tk)
            return F.dropout(w, p=dropout_p, training=dropout_p > 0) @ v, w
        y = ATTENTION_FUNCTIONS[self.impl](q, k, v, mask=mask, bias=bias, softcap=self.softcap, dropout_p=dropout_p)
        return y, None

    def weights_at(self, q, k, *, q_start, k_start, bias=None, heads=None):
        mask = self.mask(q_start, q.size(-2), k_start, k.size(-2), q.device, cached=False)  # (1 or nh, Tq, Tk)
        if mask.size(0) > 1 and heads is not None:
            mask = mask[list(heads)]  # a per-head pattern (dilated)
        return attention_weights(q, k, mask=mask, bias=bias, softcap=self.softcap).float()

    def structure_mask(self, t):
        m = self.mask(0, t, 0, t, torch.device("cpu"))  # (1 or nh, T, T)
        return [m[i] for i in sorted({0, m.size(0) // 2, m.size(0) - 1})], ""  # distinct per-head patterns

    @classmethod
    def flops_per_token(cls, config, t, *, causal=True):
        """2 FLOPs per multiply-add, hs per key and head for q kᵀ and again for weights·v: 4·n_head·hs·K̄
        (4·n_embd·K̄ unless ``head_dim`` is set); a bidirectional pattern sees the causal keys on both
        sides and itself once, 2·K̄ − 1."""
        keys = cls.mean_keys(config, t)
        return 4 * config.attention_width * (keys if causal else 2 * keys - 1)

    @classmethod
    def decode_keys(cls, config, t):
        # the mask's last row, from the running mean
        return 1.0 if t == 1 else t * cls.mean_keys(config, t) - (t - 1) * cls.mean_keys(config, t - 1)

    @classmethod
    def decode_flops_per_token(cls, config, t):
        return 4 * config.attention_width * cls.decode_keys(config, t)

    @classmethod
    def executed_flops_per_token(cls, config, t, *, causal=True):
        # SDPA and the eager path score every key of the T×T matrix and mask afterwards
        return 4 * config.attention_width * t

    @classmethod
    def saved_activations(cls, config, t):
        return config.n_head * t * t, 0  # the masked T×T weights per head


class FullAttention(MaskedAttention):
    """Every query sees itself and every earlier key (the standard causal mask)."""

    help = "all (cost grows with context²)"
    color = "indigo"
    plain_causal = True

    def allowed(self, q_pos, k_pos):
        return k_pos <= q_pos

    @staticmethod
    def mean_keys(config, t):
        return (t + 1) / 2


class SlidingAttention(MaskedAttention):
    """Each query sees the last ``window`` positions including itself (Longformer's local
    attention, Mistral 7B's sliding window): cost and KV cache bounded by the window."""

    help = "a sliding window"
    color = "teal"
    fields = ("window",)

    def __init__(self, config, *, causal=True):
        super().__init__(config, causal=causal)
        self.window = config.window
        self.params = (config.window,)

    def allowed(self, q_pos, k_pos):
        return (k_pos <= q_pos) & (q_pos - k_pos < self.window)

    @classmethod
    def describe(cls, config):
        return f"window {config.window:,}"

    @classmethod
    def kv_bound(cls, config):
        return config.window

    @staticmethod
    def mean_keys(config, t):
        w = config.window  # Σ_{i<t} min(i + 1, w), in closed form so any context is instant
        m = min(t, w)
        return (m * (m + 1) // 2 + (t - m) * w) / t


class DilatedAttention(MaskedAttention):
    """Heads split into ``min(4, n_head)`` equal-as-possible groups (head h in group
    g = h * groups // n_head); group g sees the earlier keys at distances that are multiples of
    ``dilation**g``, so group 0 is full attention and later groups reach as far with fewer keys
    (after LongNet's dilated attention, Ding et al. 2023, without its segmenting)."""

    help = "dilated distances per head group"
    color = "amber"
    fields = ("dilation",)

    def __init__(self, config, *, causal=True):
        super().__init__(config, causal=causal)
        self.n_head, self.dilation = config.n_head, config.dilation
        self.params = (config.n_head, config.dilation)

    @staticmethod
    def head_steps(n_head: int, dilation: int) -> list[int]:
        groups = min(4, n_head)
        return [dilation ** (h * groups // n_head) for h in range(n_head)]

    def allowed(self, q_pos, k_pos):
        steps = torch.tensor(self.head_steps(self.n_head, self.dilation), device=q_pos.device)[:, None, None]
        distance = (q_pos - k_pos)[None]  # (1, Tq, Tk)
        return (distance >= 0) & (distance % steps == 0)  # (nh, Tq, Tk)

    @classmethod
    def describe(cls, config):
        return f"×{config.dilation}"

    @staticmethod
    def mean_keys(config, t):
        # head h of group g = h * groups // n_head has step dilation**g and sees Σ_{i<t} (i // step + 1)
        # keys in all; closed form per group (heads in a group: ceil((g+1)·n/G) − ceil(g·n/G))
        n, groups = config.n_head, min(4, config.n_head)
        total = 0
        for g in range(groups):
            heads = -(-(g + 1) * n // groups) - -(-g * n // groups)
            total += heads * (t + _sum_floor_div(t, config.dilation**g))
        return total / (t * n)


class BlockSparseAttention(MaskedAttention):
    """Child et al. 2019's "fixed" sparse pattern, with one summary position (c = 1). Positions
    fall in blocks of ``sparse_block``; query i sees the earlier keys j ≤ i that are

    - in its own block (``j // sparse_block == i // sparse_block``), or
    - summary positions: the last position of every ``sparse_stride``-th block, i.e.
      ``j % (sparse_block * sparse_stride) == sparse_block * sparse_stride - 1``,

    so information crosses blocks only through the summaries."""

    help = "Sparse Transformer blocks"
    color = "pink"
    fields = ("sparse_block", "sparse_stride")

    def __init__(self, config, *, causal=True):
        super().__init__(config, causal=causal)
        self.block, self.stride = config.sparse_block, config.sparse_stride
        self.params = (config.sparse_block, config.sparse_stride)

    def allowed(self, q_pos, k_pos):
        period = self.block * self.stride
        local = q_pos // self.block == k_pos // self.block
        summary = k_pos % period == period - 1
        return (k_pos <= q_pos) & (local | summary)

    @classmethod
    def describe(cls, config):
        return f"{config.sparse_block}/{config.sparse_stride}"

    @staticmethod
    def mean_keys(config, t):
        b, stride = config.sparse_block, config.sparse_stride
        # Σ_{i<t} own block up to i (i % b + 1), plus the summaries before the block starts
        # ((i // b * b) // period = (i // b) // stride), in closed form
        q, r = divmod(t, b)
        own = q * b * (b + 1) // 2 + r * (r + 1) // 2
        summaries = b * _sum_floor_div(q, stride) + r * (q // stride)
        return (own + summaries) / t


def _sum_floor_div(t: int, s: int) -> int:
    """Σ_{i<t} i // s, for ``mean_keys``' closed forms."""
    q, r = divmod(t, s)
    return s * q * (q - 1) // 2 + r * q


def elu_feature(x: torch.Tensor) -> torch.Tensor:
    return F.elu(x) + 1  # Katharopoulos et al. 2020, eq. 7: positive, smooth


FEATURE_MAPS = {"elu": elu_feature, "relu": F.relu}


class LinearAttention(AttentionKind):
    """Linear attention (Katharopoulos et al. 2020, "Transformers are RNNs"): softmax(q·k)
    replaced by φ(q)·φ(k), so y_i = φ(q_i)·S_i / (φ(q_i)·z_i) with running sums
    S_i = Σ_{j≤i} φ(k_j) v_jᵀ and z_i = Σ_{j≤i} φ(k_j): cost linear in T, no T×T matrix.
    φ is ``FEATURE_MAPS[feature_map]``. No scores, so no ALiBi, soft-cap or attention dropout.

    The sums are taken chunk-wise (as in Yang et al. 2024, "Gated Linear Attention"): inside
    a chunk of ``chunk`` positions a small causal (C, C) product, across chunks a cumulative sum
    of per-chunk states, which keeps memory at T·(hs²/C + C) per head rather than T·hs² for a
    per-position cumulative sum."""

    help = "linear attention (cost linear in context, no softmax)"
    color = "slate"
    fields = ("feature_map",)
    has_scores = False
    decode_formula = "(4 × d × hs + 4 × d) (a recurrent state)"
    executed_formula = "chunked linear attention, as run"
    eps = 1e-6  # keeps relu features' all-zero rows finite (they give 0)
    chunk = 64

    def __init__(self, config: ModelConfig, *, causal: bool = True):
        super().__init__(config, causal=causal)
        self.phi = FEATURE_MAPS[config.feature_map]

    def attend(self, q, k, v, *, q_start: int, bias, dropout_p: float, need_weights: bool):
        n_rep = q.size(-3) // k.size(-3)
        k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
        fq, fk, vf = self.phi(q.float()), self.phi(k.float()), v.float()
        if need_weights:
            w = self.weights(fq, fk)
            return (w @ vf).type_as(v), w.type_as(q)
        if not self.causal:  # every query sees every key: one global state, y_i = φ(q_i)·S / φ(q_i)·z
            s = torch.einsum("bhtd,bhte->bhde", fk, vf)  # (B, nh, hs, hs)
            z = fk.sum(dim=2)  # (B, nh, hs)
            y = (fq @ s) / ((fq @ z[..., None]) + self.eps)  # (B, nh, Tq, hs)
            return y.type_as(v), None
        return self.running(fq, fk, vf).type_as(v), None

    def running(self, fq: torch.Tensor, fk: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """y for (B, nh, Tq, hs) features of the last Tq of Tk positions, chunk-wise."""
        b, h, tq, d = fq.shape
        e, past = v.size(-1), fk.size(-2) - tq
        # keys before the first query (a KV cache's) enter every query as one initial state
        s0 = torch.einsum("bhtd,bhte->bhde", fk[:, :, :past], v[:, :, :past])  # (B, nh, hs, hs)
        z0 = fk[:, :, :past].sum(dim=2)  # (B, nh, hs)
        fk, v = fk[:, :, past:], v[:, :, past:]
        c = min(self.chunk, tq)
        n, pad = -(-tq // c), -tq % c  # chunks, and zero features to fill the last one
        fq, fk, v = (F.pad(x, (0, 0, 0, pad)).view(b, h, n, c, x.size(-1)) for x in (fq, fk, v))  # (B, nh, N, C, ·)
        chunk_s = torch.einsum("bhncd,bhnce->bhnde", fk, v)  # (B, nh, N, hs, hs) each chunk's Σ φ(k) vᵀ
        chunk_z = fk.sum(dim=3)  # (B, nh, N, hs)
        # state before each chunk: the initial one plus the exclusive cumulative sum of earlier chunks
        s = s0[:, :, None] + torch.cumsum(chunk_s, dim=2) - chunk_s  # (B, nh, N, hs, hs)
        z = z0[:, :, None] + torch.cumsum(chunk_z, dim=2) - chunk_z  # (B, nh, N, hs)
        local = (fq @ fk.transpose(-2, -1)).tril()  # (B, nh, N, C, C) causal inside the chunk
        num = torch.einsum("bhncd,bhnde->bhnce", fq, s) + local @ v  # (B, nh, N, C, hs)
        den = torch.einsum("bhncd,bhnd->bhnc", fq, z) + local.sum(-1)  # (B, nh, N, C)
        y = num / (den[..., None] + self.eps)
        return y.reshape(b, h, n * c, e)[:, :, :tq]

    def weights(self, fq: torch.Tensor, fk: torch.Tensor) -> torch.Tensor:
        """The implied attention matrix, quadratic: (causal) φ(q)·φ(k) over its row sum (B, nh, Tq, Tk)."""
        tq, tk = fq.size(-2), fk.size(-2)
        a = fq @ fk.transpose(-2, -1)  # (B, nh, Tq, Tk)
        if self.causal:
            causal = torch.ones(tq, tk, dtype=torch.bool, device=fq.device).tril(diagonal=tk - tq)
            a = a.masked_fill(~causal, 0.0)
        return a / (a.sum(-1, keepdim=True) + self.eps)

    def weights_at(self, q, k, *, q_start, k_start, bias=None, heads=None):
        a = self.phi(q.float()) @ self.phi(k.float()).transpose(-2, -1)  # (H, Tq, Tk)
        if self.causal:  # key position ≤ query position, as ``weights``
            q_pos = torch.arange(q_start, q_start + q.size(-2), device=q.device)
            k_pos = torch.arange(k_start, k_start + k.size(-2), device=q.device)
            a = a.masked_fill(~(k_pos[None, :] <= q_pos[:, None]), 0.0)
        return a / (a.sum(-1, keepdim=True) + self.eps)

    def structure_mask(self, t):
        allowed = torch.ones(t, t, dtype=torch.bool)  # every key before (or, in an encoder, around) a query counts
        return [allowed.tril() if self.causal else allowed], \
            "linear attention has no score matrix: each query sums over these keys through its running state"

    @classmethod
    def flops_per_token(cls, config, t, *, causal=True):
        """Per token and head: φ(k) vᵀ into the chunk state and φ(q)·S, hs² multiply-adds each,
        and the in-chunk products φ(q)·φ(k) and weights·v, about C/2 keys of hs each (counted the
        same way for the bidirectional, one-state form)."""
        w, hs = config.attention_width, config.head_size
        c = min(cls.chunk, t)
        return 4 * w * hs + 4 * w * (c + 1) / 2

    @classmethod
    def decode_flops_per_token(cls, config, t):
        # decodes recurrently: the state update φ(k)vᵀ and φ(q)·S, hs² each, and z
        w = config.attention_width
        return 4 * w * config.head_size + 4 * w

    @classmethod
    def executed_flops_per_token(cls, config, t, *, causal=True):
        d, hs = config.attention_width, config.head_size
        if not causal:
            return 4 * d * hs + 2 * d  # one global state; φ(q)·z adds 2·n_head·hs
        c = min(cls.chunk, t)
        return (4 * d * hs + 4 * d * c + 2 * d) * (-(-t // c) * c) / t  # the chunked products, last chunk padded

    @classmethod
    def saved_activations(cls, config, t):
        # no T×T matrix: per-chunk states (hs² per C positions) and (C, C) products; feature maps
        hs, c = config.head_size, min(cls.chunk, t)
        return config.n_head * -(-t // c) * c * (3 * hs**2 // c + 2 * c), 6 * t * config.attention_width


# ---------------------------------------------------------------------------- the module


class CausalSelfAttention(nn.Module):
    """Self-attention; causal unless ``causal=False`` (an encoder's, where the pattern is made
    symmetric). ``CrossAttention`` reuses it with keys and values from another sequence."""

    def __init__(self, config: ModelConfig, layer_idx: int = 0, *, causal: bool = True):
        super().__init__()
        self.n_head = config.n_head
        self.n_kv_head = config.n_kv_head or config.n_head
        self.head_dim = config.head_size
        width, kv_dim = config.attention_width, self.n_kv_head * self.head_dim
        # separate projections rather than nanoGPT's fused c_attn, so names match HF checkpoints;
        # the heads are n_head × head_dim wide, the residual stream's width unless head_dim is set
        self.q_proj = Linear(config.n_embd, width, bias=config.bias)
        self.k_proj = Linear(config.n_embd, kv_dim, bias=config.bias)
        self.v_proj = Linear(config.n_embd, kv_dim, bias=config.bias)
        self.o_proj = Linear(width, config.n_embd, bias=config.bias)
        if config.qk_norm:  # per head, before RoPE (OLMo 2, Gemma 3, Qwen 3): bounds the logits
            self.q_norm = RMSNorm(self.head_dim, bias=False, eps=config.norm_eps)
            self.k_norm = RMSNorm(self.head_dim, bias=False, eps=config.norm_eps)
        else:
            self.q_norm = self.k_norm = None
        self.resid_dropout = nn.Dropout(config.dropout)
        self.dropout = config.dropout
        self.layer_idx = layer_idx
        self.pattern = ATTENTIONS[config.attention](config, causal=causal)
        self.capture = None  # set by ``capture_attention``: called with the weights when not None

    def forward(
        self,
        x: torch.Tensor,
        *,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        bias=None,
        cache: KVCache | None = None,
        start_pos: int = 0,
    ) -> torch.Tensor:
        b, t, _ = x.size()
        hs, nh, n_kv = self.head_dim, self.n_head, self.n_kv_head
        if torch.is_grad_enabled():
            # three matmuls when training: as fast as one at these sizes, and one would make autograd
            # keep a concatenated copy of the weights
            q = self.q_proj(x).view(b, t, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
            k = self.k_proj(x).view(b, t, n_kv, hs).transpose(1, 2)  # (B, n_kv, T, hs)
            v = self.v_proj(x).view(b, t, n_kv, hs).transpose(1, 2)  # (B, n_kv, T, hs)
            qk = None
        else:
            # one matmul at inference, where a decoding step's time goes mostly on launching kernels
            qkv = self.project_qkv(x).view(b, t, nh + 2 * n_kv, hs).transpose(1, 2)  # (B, nh + 2 n_kv, T, hs)
            qk, v = qkv.split((nh + n_kv, n_kv), dim=1)
            q, k = qk.split((nh, n_kv), dim=1)
        if self.q_norm is not None:
            q, k, qk = self.q_norm(q), self.k_norm(k), None
        if rope is not None:
            if qk is not None:  # q and k side by side: rotated in one pass
                q, k = apply_rotary(qk, *rope).split((nh, n_kv), dim=1)
            else:
                q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # (B, n_kv, Tk, hs): cached keys come first
        # keys and values stay grouped (n_kv heads): the pattern maps query head h to h // n_rep
        y, weights = self.pattern.attend(
            q, k, v, q_start=start_pos, bias=bias,
            dropout_p=self.dropout if self.training else 0.0, need_weights=self.capture is not None,
        )  # (B, nh, T, hs)
        if weights is not None:
            self.capture(self.layer_idx, weights)
        y = y.transpose(1, 2).contiguous().view(b, t, nh * hs)  # re-assemble heads side by side
        y = self.o_proj(y)
        return self.resid_dropout(y) if self.training else y  # a module call saved per decoding step

    def project_qkv(self, x: torch.Tensor) -> torch.Tensor:
        """q, k and v side by side (..., (nh + 2 n_kv) hs) from one matmul, for inference; the
        three stay separate parameters, under HF's names."""
        return joint_linear(x, self, "qkv", (self.q_proj, self.k_proj, self.v_proj))

    @staticmethod
    def num_params(config: ModelConfig) -> int:
        d, width = config.n_embd, config.attention_width
        kv = (config.n_kv_head or config.n_head) * config.head_size
        weights = 2 * d * width + 2 * d * kv
        biases = width + d + 2 * kv if config.bias else 0  # q_proj's and o_proj's, k_proj's and v_proj's
        qk_norm = 2 * config.head_size if config.qk_norm else 0
        return weights + biases + qk_norm


class CrossAttention(CausalSelfAttention):
    """Encoder-decoder attention (Vaswani et al. 2017, §3.2.3): queries from the decoder, keys and
    values from the encoder's output (``memory``); every query sees every encoder position, with
    no position signal (as in T5). Same projections, and parameter count, as self-attention;
    linear attention stays linear, every softmax pattern becomes full."""

    def __init__(self, config: ModelConfig, layer_idx: int = 0):
        super().__init__(config, layer_idx, causal=False)
        if self.pattern.has_scores:
            self.pattern = FullAttention(config, causal=False)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        (b, t, _), s = x.size(), memory.size(1)
        hs = self.head_dim
        q = self.q_proj(x).view(b, t, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = self.k_proj(memory).view(b, s, self.n_kv_head, hs).transpose(1, 2)  # (B, n_kv, S, hs)
        v = self.v_proj(memory).view(b, s, self.n_kv_head, hs).transpose(1, 2)  # (B, n_kv, S, hs)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        y, weights = self.pattern.attend(q, k, v, q_start=s - t, bias=None,
                                         dropout_p=self.dropout if self.training else 0.0,
                                         need_weights=self.capture is not None)
        if self.capture is not None:
            self.capture(self.layer_idx, weights)  # (B, nh, T, S): decoder queries over encoder keys
        y = y.transpose(1, 2).contiguous().view(b, t, self.n_head * hs)  # (B, T, nh·hs)
        return self.resid_dropout(self.o_proj(y))


ATTENTION_FUNCTIONS = {"sdpa": sdpa_attention, "eager": eager_attention}
ATTENTIONS = {
    "full": FullAttention,
    "sliding": SlidingAttention,
    "dilated": DilatedAttention,
    "block_sparse": BlockSparseAttention,
    "linear": LinearAttention,
}
_BUILT_IN = frozenset(ATTENTIONS)


def register_attention(name: str, cls: type[AttentionKind]) -> None:
    """Add an attention kind at run time (a plugin, a test), as transformers'
    ``AttentionInterface.register`` adds a kernel: validation, ``choices()``, ``field_specs()``
    (its ``help`` and ``fields``), ``analyze``, ``structure``, the web app's options and charts
    and training find it at once. A kind shipped with the engine goes in ``ATTENTIONS`` above."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"an attention kind's name must be an identifier, got {name!r}")
    if name in ATTENTIONS:
        raise ValueError(f"attention {name!r} is already registered; choose a name not in {list(ATTENTIONS)}")
    if not (isinstance(cls, type) and issubclass(cls, AttentionKind)):
        raise TypeError(f"attention {name!r} must be a subclass of AttentionKind (MaskedAttention for a "
                        f"softmax over a mask), got {cls!r}")
    ATTENTIONS[name] = cls


def unregister_attention(name: str) -> None:
    """Remove a kind ``register_attention`` added; the engine's own cannot be removed."""
    if name in _BUILT_IN:
        raise ValueError(f"attention {name!r} is built in; only registered kinds can be removed")
    if name not in ATTENTIONS:
        raise ValueError(f"unknown attention {name!r}; registered: {[k for k in ATTENTIONS if k not in _BUILT_IN]}")
    del ATTENTIONS[name]
    _cached_mask.cache_clear()  # no mask of the removed class outlives it


def attention_kinds(*, has_scores: bool | None = None, reads: str | None = None) -> list[str]:
    """The registered kinds in order, or those with (without) softmax scores, or those that read
    the config field ``reads``: the composer's ``show_if`` lists, asked when the form is built."""
    return [name for name, cls in ATTENTIONS.items()
            if (has_scores is None or cls.has_scores == has_scores) and (reads is None or reads in cls.fields)]


def describe_attentions() -> list[dict]:
    """Each registered kind for the web app's options and charts: ``name``, colour token, help
    phrase, whether it has softmax scores and the config fields it reads."""
    return [{"name": name, "color": cls.color, "help": cls.help or name, "has_scores": cls.has_scores,
             "fields": list(cls.fields)} for name, cls in ATTENTIONS.items()]


def attention_help() -> str:
    """The composer's help on ``attention``, one phrase per registered kind."""
    phrases = [cls.help or name for name, cls in ATTENTIONS.items()]
    listed = ", ".join(phrases[:-1]) + ", or " + phrases[-1] if len(phrases) > 1 else phrases[0]
    return f"Which earlier tokens each query sees (in an encoder, the same pattern on both sides): {listed}."
