"""``AttentionKind``: what every ``ATTENTIONS`` entry is, and all that differs between kinds."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch

if TYPE_CHECKING:
    from ...config.schema import ModelConfig


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

    @classmethod
    def for_layer(cls, config: ModelConfig, layer_idx: int, *, causal: bool = True) -> AttentionKind:
        """The instance layer ``layer_idx`` attends with: ``cls(config, causal=causal)`` for every layer,
        unless the kind mixes patterns over the depth (``LocalGlobalAttention``). The class's cost
        methods (``mean_keys`` ...) then give the mean over the layers."""
        return cls(config, causal=causal)

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
    def layer_kv_bound(cls, config: ModelConfig, layer_idx: int) -> int | None:
        """``kv_bound`` of layer ``layer_idx`` alone (a kind that differs by layer: local_global's
        windowed layers), so its cache keeps a window per layer (``LayerWindowCache``)."""
        return cls.kv_bound(config)

    @classmethod
    def kv_positions(cls, config: ModelConfig, t: int) -> int | float:
        """Positions the KV cache holds at context ``t``, per layer: t, or min(t, ``kv_bound``); the
        mean over the layers for a kind whose bound differs by layer."""
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
