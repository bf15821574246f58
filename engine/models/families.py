"""The model families, keyed by ``ModelConfig.family``: each entry takes ``(config)`` and is an
``nn.Module`` whose ``forward(*inputs, targets=None)`` returns ``(logits, loss)``, with
``num_params()``, ``moe_stats()`` and ``aux_loss``. ``family_checks`` holds the config rules
that concern the families' own fields. What each learns, and from which inputs, is
``objectives.OBJECTIVES`` under the same key.

- "decoder" (``model.Decoder``): causal, next-token prediction, ``generate``;
- "encoder" (``encoder.Encoder``): bidirectional, masked-token prediction, ``hidden_states``;
- "encoder_decoder" (``encoder_decoder.EncoderDecoder``): ``forward(idx, dec_idx, targets)``,
  ``encode``, ``decode``, ``generate``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .encoder import Encoder
from .encoder_decoder import EncoderDecoder
from .decoder import Decoder

if TYPE_CHECKING:
    from ..config.schema import ModelConfig


def family_checks(cfg: ModelConfig, ok) -> dict[str, str]:
    """Config checks that depend on the family (``ok(*fields)``: none of them already in error)."""
    errors = {}
    if ok("family", "n_decoder_layer") and cfg.n_decoder_layer is not None and cfg.family != "encoder_decoder":
        errors["n_decoder_layer"] = (f"n_decoder_layer ({cfg.n_decoder_layer}) only applies to family "
                                     f"'encoder_decoder' (got {cfg.family!r}); leave it empty")
    if ok("family", "n_token_type") and cfg.n_token_type and cfg.family != "encoder":
        errors["n_token_type"] = (f"n_token_type ({cfg.n_token_type}) only applies to family 'encoder' "
                                  f"(got {cfg.family!r})")
    if ok("family", "block_size") and cfg.family == "encoder_decoder" and cfg.block_size < 2:
        errors["block_size"] = ("block_size (1) must be ≥ 2 for 'encoder_decoder': span corruption keeps "
                                "one token and hides another")
    if ok("relative_attention_num_buckets", "relative_attention_max_distance") and cfg.position == "t5_relative":
        # a causal stack gives the first half of its buckets to exact distances; the log-spaced rest
        # must reach further, or T5's formula divides by log(1) = 0
        exact = cfg.relative_attention_num_buckets // 2
        if cfg.relative_attention_max_distance <= exact:
            errors["relative_attention_max_distance"] = (
                f"relative_attention_max_distance ({cfg.relative_attention_max_distance}) must exceed "
                f"relative_attention_num_buckets / 2 ({exact}), the distances a causal stack gives a bucket each")
    return errors


FAMILIES = {"decoder": Decoder, "encoder": Encoder, "encoder_decoder": EncoderDecoder}
