"""The model families, keyed by ``ModelConfig.family``: each entry takes ``(config)`` and is an
``nn.Module`` whose ``forward(*inputs, targets=None)`` returns ``(logits, loss)``, with
``num_params()``, ``moe_stats()`` and ``aux_loss``. The config rules that concern the
families' own fields are ``config.schema.family_checks``. What each learns, and from which inputs, is
``objectives.OBJECTIVES`` under the same key.

- "decoder" (``model.Decoder``): causal, next-token prediction, ``generate``;
- "encoder" (``encoder.Encoder``): bidirectional, masked-token prediction, ``hidden_states``;
- "encoder_decoder" (``encoder_decoder.EncoderDecoder``): ``forward(idx, dec_idx, targets)``,
  ``encode``, ``decode``, ``generate``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from .decoder import Decoder
from .encoder import Encoder
from .encoder_decoder import EncoderDecoder

if TYPE_CHECKING:
    from ..config.schema import ModelConfig


FAMILIES = {"decoder": Decoder, "encoder": Encoder, "encoder_decoder": EncoderDecoder}


def build_model(config: ModelConfig) -> nn.Module:
    """Build the model named by ``config.family``; ``config.vocab_size`` must be set."""
    return FAMILIES[config.family](config)
