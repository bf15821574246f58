"""The softmax patterns: ``MaskedAttention`` (a softmax over a boolean mask, built once per shape
and cached) and its kinds, which differ only in ``allowed(q_pos, k_pos)`` and ``mean_keys``:
full, sliding window, dilated and block-sparse."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .base import AttentionKind
from .kernels import ATTENTION_FUNCTIONS, attention_weights, repeat_kv

if TYPE_CHECKING:
    from ...config.schema import ModelConfig


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
        self.scale = config.attn_scale  # None: 1/√head size
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
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=self.scale,
                                                  enable_gqa=k.size(-3) != q.size(-3)), None
        plain = self.plain_causal and self.causal and tq == tk
        mask = None if plain else self.mask(q_start, tq, k_start, tk, q.device)
        if bias is not None:  # the position scheme's score bias function
            pos = torch.arange(k_start, q_start + tq, device=q.device)  # (Tk,)
            bias = bias(pos[-tq:], pos)  # (nh, Tq, Tk)
        if need_weights:
            n_rep = q.size(-3) // k.size(-3)
            k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
            w = attention_weights(q, k, mask=mask, bias=bias, softcap=self.softcap, scale=self.scale)  # (B, nh, Tq, Tk)
            return F.dropout(w, p=dropout_p, training=dropout_p > 0) @ v, w
        y = ATTENTION_FUNCTIONS[self.impl](q, k, v, mask=mask, bias=bias, softcap=self.softcap, dropout_p=dropout_p,
                                           scale=self.scale)
        return y, None

    def weights_at(self, q, k, *, q_start, k_start, bias=None, heads=None):
        mask = self.mask(q_start, q.size(-2), k_start, k.size(-2), q.device, cached=False)  # (1 or nh, Tq, Tk)
        if mask.size(0) > 1 and heads is not None:
            mask = mask[list(heads)]  # a per-head pattern (dilated)
        return attention_weights(q, k, mask=mask, bias=bias, softcap=self.softcap, scale=self.scale).float()

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


class LocalGlobalAttention(MaskedAttention):
    """Local and global layers interleaved (Gemma 2: every other layer; Gemma 3: one in six; Beltagy
    et al. 2020's local windows with global layers): layer i attends to all earlier keys, as
    "full", when ``(i + 1) % global_every == 0``, and otherwise to the last ``window`` positions
    including itself, as "sliding". The pattern differs by layer, not by head: ``for_layer`` gives
    each layer its own, and the costs below are the mean over the ``n_layer`` layers (what
    ``analyze`` multiplies by the layer count). The KV cache keeps every position for a global
    layer and the last ``window`` for a local one (``layer_kv_bound``; ``kv_positions`` is the
    mean over the layers)."""

    help = "a sliding window with every n-th layer global"
    color = "grey"
    fields = ("window", "global_every")

    def __init__(self, config, *, causal=True, is_global: bool = False):
        super().__init__(config, causal=causal)
        self.config = config
        self.window = None if is_global else config.window  # None: a global layer
        self.params = (self.window,)
        self.plain_causal = is_global  # a global layer is the causal mask: the kernels' is_causal path

    @classmethod
    def for_layer(cls, config, layer_idx, *, causal=True):
        return cls(config, causal=causal, is_global=cls.is_global(config, layer_idx))

    @staticmethod
    def is_global(config, layer_idx: int) -> bool:
        return (layer_idx + 1) % config.global_every == 0

    def allowed(self, q_pos, k_pos):
        seen = k_pos <= q_pos
        return seen if self.window is None else seen & (q_pos - k_pos < self.window)

    def structure_mask(self, t):
        # the local layers' picture (the view's several pictures are head groups); the note says the rest
        local = type(self)(self.config, causal=self.causal).mask(0, t, 0, t, torch.device("cpu"))[0]
        return [local], f"the local layers' window; {_every(self.config.global_every)} sees all earlier keys"

    @classmethod
    def describe(cls, config):
        return f"window {config.window:,}, {_every(config.global_every)} global"

    @staticmethod
    def layer_counts(config) -> tuple[int, int]:
        """(local layers, global layers) of the ``n_layer``."""
        n_global = config.n_layer // config.global_every
        return config.n_layer - n_global, n_global

    @classmethod
    def layer_kv_bound(cls, config, layer_idx):
        return None if cls.is_global(config, layer_idx) else config.window

    @classmethod
    def kv_positions(cls, config, t):
        # the generating stack's layers: an encoder-decoder's decoder may have its own count
        n = (config.n_decoder_layer or config.n_layer) if config.family == "encoder_decoder" else config.n_layer
        n_global = n // config.global_every
        return ((n - n_global) * min(t, config.window) + n_global * t) / n

    @classmethod
    def mean_keys(cls, config, t):
        n_local, n_global = cls.layer_counts(config)
        local = SlidingAttention.mean_keys(config, t)
        return (n_local * local + n_global * FullAttention.mean_keys(config, t)) / config.n_layer


def _every(n: int) -> str:
    """"every layer", "every 2nd layer", "every 6th layer"."""
    if n == 1:
        return "every layer"
    suffix = "th" if n % 100 in (11, 12, 13) else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"every {n}{suffix} layer"


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
