"""How a decoder knows where each token is.

Every ``POSITIONS`` entry takes ``(config)`` and offers three hooks, of which each scheme uses one:

- ``forward(x, start_pos)``: added to the token embeddings (B, T, C) -> (B, T, C) before the
  first block (learned, sinusoidal; the identity for the others);
- ``rotary(start_pos, t, device)``: RoPE's (cos, sin), each (T, head_dim), computed once per
  forward and passed to every layer (as transformers' ``LlamaRotaryEmbedding``), else None;
- ``alibi()``: the (n_head,) slopes of ALiBi's linear distance penalty, else None.

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
    from .config import ModelConfig


class Position(nn.Module):
    """The defaults: add nothing, rotate nothing, bias nothing."""

    extrapolates = True  # defined beyond block_size

    def __init__(self, config: ModelConfig):
        super().__init__()

    def forward(self, x: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        return x

    def rotary(self, start_pos: int, t: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
        return None

    def alibi(self) -> torch.Tensor | None:
        return None

    @staticmethod
    def num_params(config: ModelConfig) -> int:
        return 0


class LearnedPosition(Position):
    """One trained vector per position (GPT-2): ``block_size * n_embd`` parameters, and no
    position beyond ``block_size``."""

    extrapolates = False

    def __init__(self, config: ModelConfig):
        super().__init__(config)
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

    def __init__(self, config: ModelConfig):
        super().__init__(config)
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

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        dim = config.n_embd // config.n_head
        inv_freq, self.attention_factor = ROPE_SCALINGS[config.rope_scaling](config, dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # (dim/2,)

    def rotary(self, start_pos: int, t: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.arange(start_pos, start_pos + t, device=device, dtype=torch.float32)
        freqs = pos[:, None] * self.inv_freq.float()[None, :]  # (T, dim/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (T, dim)
        # YaRN scales cos and sin (so each of q and k) by its attention factor, as transformers does
        return emb.cos() * self.attention_factor, emb.sin() * self.attention_factor


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
    its attention scores, a recency bias that extrapolates past the training length."""

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.register_buffer("slopes", alibi_slopes(config.n_head), persistent=False)  # (nh,)

    def alibi(self) -> torch.Tensor:
        return self.slopes


def alibi_bias(slopes: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """(nh, Tq, Tk) score bias ``-slope * (q_pos - k_pos)``, from (Tq,) and (Tk,) positions."""
    distance = (q_pos[:, None] - k_pos[None, :]).float()  # (Tq, Tk)
    return -slopes[:, None, None] * distance


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
}
