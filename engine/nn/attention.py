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
query i sees key j when the causal pattern lets i see j or j see i). The softmax patterns
differ only in ``allowed(q_pos, k_pos)``, their mask,
built once per shape and cached; ``mean_keys(config, t)`` counts what a query attends to, for
``analysis``.

``ATTENTION_FUNCTIONS`` (config ``attn_impl``): the softmax kernel, sharing
``(q, k, v, *, mask, bias, softcap, dropout_p) -> y`` as ``ALL_ATTENTION_FUNCTIONS`` does in
transformers: "sdpa" is PyTorch's fused kernel, "eager" the same maths written out, kept as a
readable reference. ``mask`` None means plain causal with Tq == Tk; k and v may have fewer heads
than q (GQA).
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cache import Linear, joint_linear
from .norm import RMSNorm
from .position import apply_rotary

if TYPE_CHECKING:
    from .cache import KVCache
    from ..config.schema import ModelConfig

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


@functools.lru_cache(maxsize=8)  # a T×T mask per shape in use: training, eval, a prefill
def _cached_mask(kind: MaskedAttention, q_start: int, tq: int, k_start: int, tk: int, device) -> torch.Tensor:
    q_pos = torch.arange(q_start, q_start + tq, device=device)
    k_pos = torch.arange(k_start, k_start + tk, device=device)
    allowed = kind.allowed(q_pos[:, None], k_pos[None, :])
    if not kind.causal:  # symmetric: i sees j when either may see the other causally
        allowed = allowed | kind.allowed(k_pos[:, None], q_pos[None, :]).transpose(-2, -1)
    return allowed if allowed.dim() == 3 else allowed[None]  # (1 or nh, Tq, Tk)


class MaskedAttention:
    """Softmax attention restricted by a boolean mask: the shared machinery of the softmax patterns.

    Subclasses define ``allowed(q_pos (Tq, 1), k_pos (1, Tk)) -> bool (Tq, Tk) or (nh, Tq, Tk)``
    and, as ``params``, the config values it depends on (the key of the mask cache)."""

    plain_causal = False  # True when the mask is exactly causal, so kernels may use is_causal

    def __init__(self, config: ModelConfig, *, causal: bool = True):
        self.impl = config.attn_impl
        self.softcap = config.attn_softcap
        self.causal = causal
        self.params: tuple = ()

    def __hash__(self):
        return hash((type(self), self.causal, self.params))

    def __eq__(self, other):
        return type(self) is type(other) and self.causal == other.causal and self.params == other.params

    def allowed(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def mask(self, q_start: int, tq: int, k_start: int, tk: int, device: torch.device) -> torch.Tensor:
        return _cached_mask(self, q_start, tq, k_start, tk, device)

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

    @staticmethod
    def mean_keys(config: ModelConfig, t: int) -> float:
        raise NotImplementedError

    @classmethod
    def flops_per_token(cls, config: ModelConfig, t: int) -> float:
        """Forward FLOPs of one layer's q kᵀ and weights·v for one token at context ``t``:
        2 FLOPs per multiply-add, hs per key and head for each."""
        return 4 * config.n_embd * cls.mean_keys(config, t)


class FullAttention(MaskedAttention):
    """Every query sees itself and every earlier key (the standard causal mask)."""

    plain_causal = True

    def allowed(self, q_pos, k_pos):
        return k_pos <= q_pos

    @staticmethod
    def mean_keys(config, t):
        return (t + 1) / 2


class SlidingAttention(MaskedAttention):
    """Each query sees the last ``window`` positions including itself (Longformer's local
    attention, Mistral 7B's sliding window): cost and KV cache bounded by the window."""

    def __init__(self, config, *, causal=True):
        super().__init__(config, causal=causal)
        self.window = config.window
        self.params = (config.window,)

    def allowed(self, q_pos, k_pos):
        return (k_pos <= q_pos) & (q_pos - k_pos < self.window)

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

    def __init__(self, config, *, causal=True):
        super().__init__(config, causal=causal)
        self.block, self.stride = config.sparse_block, config.sparse_stride
        self.params = (config.sparse_block, config.sparse_stride)

    def allowed(self, q_pos, k_pos):
        period = self.block * self.stride
        local = q_pos // self.block == k_pos // self.block
        summary = k_pos % period == period - 1
        return (k_pos <= q_pos) & (local | summary)

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


class LinearAttention:
    """Linear attention (Katharopoulos et al. 2020, "Transformers are RNNs"): softmax(q·k)
    replaced by φ(q)·φ(k), so y_i = φ(q_i)·S_i / (φ(q_i)·z_i) with running sums
    S_i = Σ_{j≤i} φ(k_j) v_jᵀ and z_i = Σ_{j≤i} φ(k_j): cost linear in T, no T×T matrix.
    φ is ``FEATURE_MAPS[feature_map]``. No scores, so no ALiBi, soft-cap or attention dropout.

    The sums are taken chunk-wise (as in Yang et al. 2024, "Gated Linear Attention"): inside
    a chunk of ``chunk`` positions a small causal (C, C) product, across chunks a cumulative sum
    of per-chunk states, which keeps memory at T·(hs²/C + C) per head rather than T·hs² for a
    per-position cumulative sum."""

    eps = 1e-6  # keeps relu features' all-zero rows finite (they give 0)
    chunk = 64

    def __init__(self, config: ModelConfig, *, causal: bool = True):
        self.phi = FEATURE_MAPS[config.feature_map]
        self.causal = causal

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

    @staticmethod
    def flops_per_token(config: ModelConfig, t: int) -> float:
        """Per token and head: φ(k) vᵀ into the chunk state and φ(q)·S, hs² multiply-adds each,
        and the in-chunk products φ(q)·φ(k) and weights·v, about C/2 keys of hs each."""
        hs = config.n_embd // config.n_head
        c = min(LinearAttention.chunk, t)
        return 4 * config.n_embd * hs + 4 * config.n_embd * (c + 1) / 2


# ---------------------------------------------------------------------------- the module


class CausalSelfAttention(nn.Module):
    """Self-attention; causal unless ``causal=False`` (an encoder's, where the pattern is made
    symmetric). ``CrossAttention`` reuses it with keys and values from another sequence."""

    def __init__(self, config: ModelConfig, layer_idx: int = 0, *, causal: bool = True):
        super().__init__()
        self.n_head = config.n_head
        self.n_kv_head = config.n_kv_head or config.n_head
        self.head_dim = config.n_embd // config.n_head
        kv_dim = self.n_kv_head * self.head_dim
        # separate projections rather than nanoGPT's fused c_attn, so names match HF checkpoints
        self.q_proj = Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.k_proj = Linear(config.n_embd, kv_dim, bias=config.bias)
        self.v_proj = Linear(config.n_embd, kv_dim, bias=config.bias)
        self.o_proj = Linear(config.n_embd, config.n_embd, bias=config.bias)
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
        b, t, c = x.size()
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
        y = y.transpose(1, 2).contiguous().view(b, t, c)  # re-assemble heads side by side
        y = self.o_proj(y)
        return self.resid_dropout(y) if self.training else y  # a module call saved per decoding step

    def project_qkv(self, x: torch.Tensor) -> torch.Tensor:
        """q, k and v side by side (..., (nh + 2 n_kv) hs) from one matmul, for inference; the
        three stay separate parameters, under HF's names."""
        return joint_linear(x, self, "qkv", (self.q_proj, self.k_proj, self.v_proj))

    @staticmethod
    def num_params(config: ModelConfig) -> int:
        d = config.n_embd
        kv = (config.n_kv_head or config.n_head) * (d // config.n_head)
        weights = 2 * d * d + 2 * d * kv
        biases = 2 * d + 2 * kv if config.bias else 0
        qk_norm = 2 * (d // config.n_head) if config.qk_norm else 0
        return weights + biases + qk_norm


class CrossAttention(CausalSelfAttention):
    """Encoder-decoder attention (Vaswani et al. 2017, §3.2.3): queries from the decoder, keys and
    values from the encoder's output (``memory``); every query sees every encoder position, with
    no position signal (as in T5). Same projections, and parameter count, as self-attention;
    linear attention stays linear, every softmax pattern becomes full."""

    def __init__(self, config: ModelConfig, layer_idx: int = 0):
        super().__init__(config, layer_idx, causal=False)
        if config.attention != "linear":
            self.pattern = FullAttention(config, causal=False)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        (b, t, c), s = x.size(), memory.size(1)
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
        y = y.transpose(1, 2).contiguous().view(b, t, c)  # (B, T, C)
        return self.resid_dropout(self.o_proj(y))


ATTENTION_FUNCTIONS = {"sdpa": sdpa_attention, "eager": eager_attention}
ATTENTIONS = {
    "full": FullAttention,
    "sliding": SlidingAttention,
    "dilated": DilatedAttention,
    "block_sparse": BlockSparseAttention,
    "linear": LinearAttention,
}
