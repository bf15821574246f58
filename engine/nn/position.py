"""How a decoder knows where each token is.

Every ``POSITIONS`` entry takes ``(config, *, causal=True)`` and offers three hooks, of which each
scheme uses one:

- ``forward(x, start_pos)``: added to the token embeddings (B, T, C) -> (B, T, C) before the
  first block (learned, sinusoidal; the identity for the others);
- ``rotary(start_pos, t, device)``: RoPE's (cos, sin), each (T, head_dim), computed once per
  forward and passed to every layer (as transformers' ``LlamaRotaryEmbedding``), else None;
- ``score_bias()``: a function ``(q_pos (Tq,), k_pos (Tk,)) -> (n_head, Tq, Tk)`` added to the
  attention scores (ALiBi's distance penalty, T5's learned relative buckets), else None.

``causal=False`` builds the scheme for a bidirectional stack (an encoder): ALiBi then penalises
``|i - j|`` and T5's buckets tell keys before and after the query apart.

``start_pos`` is the position of the first token (non-zero when decoding with a KV cache).
Only learned positions stop at ``block_size``; the others extend to any length.

``ROPE_SCALINGS`` entries ``(config, dim) -> (inv_freq (dim/2,), attention_factor)`` stretch RoPE
to longer contexts; they follow transformers' ``modeling_rope_utils`` so weights and
``rope_scaling`` settings carry over from Llama checkpoints.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

if TYPE_CHECKING:
    from ..config.schema import ModelConfig


class Position(nn.Module):
    """The defaults: add nothing, rotate nothing, bias nothing."""

    extrapolates = True  # defined beyond block_size

    def __init__(self, config: ModelConfig, *, causal: bool = True):
        super().__init__()
        self.causal = causal

    def forward(self, x: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        return x

    def rotary(self, start_pos: int, t: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
        return None

    def score_bias(self):
        return None

    @staticmethod
    def num_params(config: ModelConfig) -> int:
        return 0


class LearnedPosition(Position):
    """One trained vector per position (GPT-2): ``block_size * n_embd`` parameters, and no
    position beyond ``block_size``."""

    extrapolates = False

    def __init__(self, config: ModelConfig, *, causal: bool = True):
        super().__init__(config, causal=causal)
        self.weight = nn.Parameter(torch.zeros(config.block_size, config.n_embd))
        nn.init.normal_(self.weight, mean=0.0, std=0.02)

    def forward(self, x: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        t, n = x.size(1), self.weight.size(0)
        if start_pos + t > n:
            raise ValueError(
                f"positions {start_pos}..{start_pos + t - 1} go beyond block_size ({n}): learned positions "
                "have no vector there; use position 'rope', 'alibi', 'sinusoidal' or 'none' to run longer"
            )
        return x + self.weight[start_pos : start_pos + t]  # (B, T, C) + (T, C)

    @staticmethod
    def num_params(config: ModelConfig) -> int:
        return config.block_size * config.n_embd


def sinusoids(start_pos: int, t: int, c: int) -> torch.Tensor:
    """(T, C) sines and cosines of geometrically spaced frequencies (Vaswani et al. 2017, §3.5)."""
    pos = torch.arange(start_pos, start_pos + t, dtype=torch.float32)[:, None]  # (T, 1)
    freq = torch.exp(torch.arange(0, c, 2, dtype=torch.float32) * (-math.log(10000.0) / c))
    pe = torch.zeros(t, c + c % 2)  # one spare column when n_embd is odd
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)
    return pe[:, :c]


class SinusoidalPosition(Position):
    """Fixed sinusoids added to the embeddings; a table for ``block_size``, computed beyond it."""

    def __init__(self, config: ModelConfig, *, causal: bool = True):
        super().__init__(config, causal=causal)
        # not persistent: it is a function of the config, so checkpoints need not carry it
        self.register_buffer("pe", sinusoids(0, config.block_size, config.n_embd), persistent=False)  # (T, C)

    def forward(self, x: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        t = x.size(1)
        if start_pos + t <= self.pe.size(0):
            pe = self.pe[start_pos : start_pos + t]
        else:
            pe = sinusoids(start_pos, t, x.size(-1)).to(x.device)
        return x + pe.to(x.dtype)


class NoPosition(Position):
    """No position signal ("NoPE"): causal masking alone lets a decoder infer positions
    (Haviv et al. 2022; Kazemnejad et al. 2023)."""


class RotaryPosition(Position):
    """RoPE (Su et al. 2021): rotate each (q, k) pair of dimensions by an angle proportional to
    the position, so q·k depends on the distance only. transformers' convention: the pairs are
    (i, i + head_dim/2) ("rotate_half"), not adjacent dimensions as in the paper."""

    def __init__(self, config: ModelConfig, *, causal: bool = True):
        super().__init__(config, causal=causal)
        dim = config.head_size
        inv_freq, self.attention_factor = ROPE_SCALINGS[config.rope_scaling](config, dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # (dim/2,)
        self._table = None  # (cos, sin, the inv_freq they came from), filled by ``rotary``

    def rotary(self, start_pos: int, t: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        end = start_pos + t
        table = self._table
        if table is None or table[0].size(0) < end or table[0].device != device or table[2] is not self.inv_freq:
            # a table for every position so far, grown by doubling: a decoding step slices it
            # rather than computing cos and sin for its one position (same values either way)
            n = max(end, 2 * table[0].size(0) if table is not None else 0)
            with torch.inference_mode(False), torch.no_grad():  # usable by training after a decode
                pos = torch.arange(n, device=device, dtype=torch.float32)
                freqs = pos[:, None] * self.inv_freq.float()[None, :]  # (T, dim/2)
                emb = torch.cat((freqs, freqs), dim=-1)  # (T, dim)
                # YaRN scales cos and sin (so each of q and k) by its attention factor, as transformers does
                table = self._table = (emb.cos() * self.attention_factor, emb.sin() * self.attention_factor,
                                       self.inv_freq)
        return table[0][start_pos:end], table[1][start_pos:end]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """(B, nh, T, hs) rotated by (T, hs) cos/sin; in float32, then back to x's dtype."""
    xf = x.float()
    return (xf * cos + rotate_half(xf) * sin).type_as(x)


def alibi_slopes(n_head: int) -> torch.Tensor:
    """ALiBi's head slopes (Press et al. 2022, §3 and their code): for n a power of 2 the geometric
    sequence 2^(-8/n), 2^(-16/n), ..., 2^(-8); otherwise the n' = 2^floor(log2 n) slopes, then
    every other slope of the 2n' sequence for the remaining heads."""
    def geometric(n: int) -> list[float]:
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]

    closest = 2 ** math.floor(math.log2(n_head))
    slopes = geometric(closest) + geometric(2 * closest)[0::2][: n_head - closest]
    return torch.tensor(slopes, dtype=torch.float32)


class ALiBiPosition(Position):
    """ALiBi (Press et al. 2022): no embedding; each head subtracts ``slope * distance`` from
    its attention scores, a recency bias that extrapolates past the training length. In an
    encoder the distance is ``|i - j|``, the symmetric form (as MosaicBERT uses)."""

    def __init__(self, config: ModelConfig, *, causal: bool = True):
        super().__init__(config, causal=causal)
        self.register_buffer("slopes", alibi_slopes(config.n_head), persistent=False)  # (nh,)

    def score_bias(self):
        return lambda q_pos, k_pos: alibi_bias(self.slopes, q_pos, k_pos, symmetric=not self.causal)


def alibi_bias(slopes: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor, symmetric: bool = False) -> torch.Tensor:
    """(nh, Tq, Tk) score bias ``-slope * (q_pos - k_pos)`` (``|q_pos - k_pos|`` when symmetric),
    from (Tq,) and (Tk,) positions."""
    distance = (q_pos[:, None] - k_pos[None, :]).float()  # (Tq, Tk)
    if symmetric:
        distance = distance.abs()
    return -slopes[:, None, None] * distance


def relative_position_bucket(relative: torch.Tensor, *, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> torch.Tensor:
    """T5's bucket of each key-minus-query offset (Raffel et al. 2020, §2.1; transformers'
    ``T5Attention._relative_position_bucket``): half the buckets for exact small distances,
    the rest logarithmically spaced up to ``max_distance``, beyond which all share the last.
    Bidirectional: keys after the query use the upper half of the buckets; causal: later keys
    (which the mask hides anyway) fall in bucket 0."""
    buckets = torch.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative > 0).long() * num_buckets
        distance = relative.abs()
    else:
        distance = -torch.clamp(relative, max=0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    large = max_exact + (
        torch.log(distance.float() / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    ).long()
    large = torch.clamp(large, max=num_buckets - 1)
    return buckets + torch.where(is_small, distance, large)


class T5RelativePosition(Position):
    """T5's relative position bias (Raffel et al. 2020): a learned scalar per head and bucket of
    key-minus-query distance, added to the scores. One table per stack, shared by all its layers
    (T5 keeps it in the first layer and passes the bias on); no embedding is added, and any
    length works. ``relative_attention_num_buckets`` × ``n_head`` parameters per stack."""

    def __init__(self, config: ModelConfig, *, causal: bool = True):
        super().__init__(config, causal=causal)
        self.num_buckets = config.relative_attention_num_buckets
        self.max_distance = config.relative_attention_max_distance
        self.relative_attention_bias = nn.Embedding(self.num_buckets, config.n_head)

    def score_bias(self):
        return self.bias

    def bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        relative = k_pos[None, :] - q_pos[:, None]  # (Tq, Tk) memory position minus query position
        buckets = relative_position_bucket(relative, bidirectional=not self.causal, num_buckets=self.num_buckets,
                                           max_distance=self.max_distance)
        return self.relative_attention_bias(buckets).permute(2, 0, 1)  # (Tq, Tk, nh) -> (nh, Tq, Tk)

    @staticmethod
    def num_params(config: ModelConfig) -> int:
        return config.relative_attention_num_buckets * config.n_head


# ---------------------------------------------------------------------------- RoPE scalings


def _base_inv_freq(theta: float, dim: int) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))  # (dim/2,)


def rope_default(config: ModelConfig, dim: int) -> tuple[torch.Tensor, float]:
    return _base_inv_freq(config.rope_theta, dim), 1.0


def rope_linear(config: ModelConfig, dim: int) -> tuple[torch.Tensor, float]:
    """Position interpolation (kaiokendev; Chen et al. 2023): positions divided by ``rope_factor``,
    i.e. every frequency divided by it (transformers' "linear")."""
    return _base_inv_freq(config.rope_theta, dim) / config.rope_factor, 1.0


def rope_ntk(config: ModelConfig, dim: int) -> tuple[torch.Tensor, float]:
    """NTK-aware scaling (bloc97, 2023), static: the base becomes ``theta * factor^(dim/(dim-2))``,
    which leaves the highest frequency alone and divides the lowest by ``factor``. (transformers'
    "dynamic" variant recomputes this base from the current length; at a fixed length it is this
    formula with factor replaced by ``factor * seq_len / original - (factor - 1)``.)"""
    base = config.rope_theta * config.rope_factor ** (dim / (dim - 2)) if dim > 2 else config.rope_theta
    return _base_inv_freq(base, dim), 1.0


def rope_yarn(config: ModelConfig, dim: int) -> tuple[torch.Tensor, float]:
    """YaRN (Peng et al. 2023), transformers' ``_compute_yarn_parameters`` with its defaults
    (beta_fast 32, beta_slow 1, truncate): dimensions that turn fewer than beta_slow times over
    the original context are interpolated by ``factor``, those that turn more than beta_fast
    times are kept, a linear ramp in between; cos and sin are scaled by 0.1 ln(factor) + 1."""
    base, factor = config.rope_theta, config.rope_factor
    original = config.rope_original_block_size or config.block_size
    attention_factor = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low = max(math.floor(correction_dim(32)), 0)
    high = min(math.ceil(correction_dim(1)), dim - 1)
    if low == high:
        high += 0.001  # transformers: prevent a division by zero
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)  # (dim/2,)
    pos_freqs = base ** (torch.arange(0, dim, 2).float() / dim)
    extrapolation = 1 - ramp  # 1: keep the frequency, 0: interpolate it
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation) + (1.0 / pos_freqs) * extrapolation
    return inv_freq, attention_factor


ROPE_SCALINGS = {"none": rope_default, "linear": rope_linear, "ntk": rope_ntk, "yarn": rope_yarn}
POSITIONS = {
    "learned": LearnedPosition,
    "sinusoidal": SinusoidalPosition,
    "none": NoPosition,
    "rope": RotaryPosition,
    "alibi": ALiBiPosition,
    "t5_relative": T5RelativePosition,
}
