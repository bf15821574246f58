"""The model families, keyed by ``ModelConfig.family``: each entry takes ``(config)`` and is an
``nn.Module`` whose ``forward(*inputs, targets=None)`` returns ``(logits, loss)``, with
``num_params()``, ``moe_stats()`` and ``aux_loss``. What each learns, and from which inputs, is
``objectives.OBJECTIVES`` under the same key.

- "decoder" (``model.Decoder``): causal, next-token prediction, ``generate``;
- "encoder" (``encoder.Encoder``): bidirectional, masked-token prediction, ``hidden_states``;
- "encoder_decoder" (``encoder_decoder.EncoderDecoder``): ``forward(idx, dec_idx, targets)``,
  ``encode``, ``decode``, ``generate``.
"""

from .encoder import Encoder
from .encoder_decoder import EncoderDecoder
from .model import Decoder

FAMILIES = {"decoder": Decoder, "encoder": Encoder, "encoder_decoder": EncoderDecoder}
