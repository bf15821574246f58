"""The encoder-only transformer (BERT, Devlin et al. 2019): bidirectional self-attention and a
masked-language-model head.

The same ``Block`` as the decoder, built with ``causal=False``: every position sees every other
(attention patterns become symmetric, linear attention takes its non-causal form, position
schemes their bidirectional form). Where the norms sit follows BERT: a post-norm stack
normalises the embeddings and ends without a final norm; pre- and sandwich-norm stacks end
with one, as the decoder does.

The MLM head is BERT's: dense -> exact GELU -> norm -> vocabulary (tied to the token embedding
when ``tie_embeddings``), with a bias per token when ``bias``. ``n_token_type`` > 0 adds BERT's
segment embeddings; the engine only ever uses type 0 (a constant vector added to every token),
they are there so that BERT checkpoints such as all-MiniLM-L6-v2 load.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn.norm import NORMS
from ..nn.position import POSITIONS
from .decoder import Block, embed, init_weights, logits_and_loss, make_norm, moe_stats, require_vocab

if TYPE_CHECKING:
    from ..config.schema import ModelConfig


class MLMHead(nn.Module):
    """BERT's ``BertLMPredictionHead``: (B, T, C) -> (B, T, vocab)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.norm = make_norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(F.gelu(self.dense(x))))

    @staticmethod
    def num_params(config: ModelConfig, vocab_size: int) -> int:
        d = config.n_embd
        dense = d * d + (d if config.bias else 0)
        norm = NORMS[config.norm].num_params(d, bias=config.bias)
        head = (0 if config.tie_embeddings else vocab_size * d) + (vocab_size if config.bias else 0)
        return dense + norm + head


def embedding_norm(config: ModelConfig) -> bool:
    """Post-norm stacks normalise the embeddings (BERT) and need no final norm; the others end with one."""
    return config.norm_placement == "post"


class Encoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        require_vocab(config)
        self.config = config
        norm = lambda: make_norm(config)  # noqa: E731
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wtt = nn.Embedding(config.n_token_type, config.n_embd) if config.n_token_type else None
        self.wpe = POSITIONS[config.position](config, causal=False)
        self.ln_emb = norm() if embedding_norm(config) else None
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([Block(config, i, causal=False) for i in range(config.n_layer)])
        self.ln_f = None if embedding_norm(config) else norm()
        self.head = MLMHead(config)
        if config.tie_embeddings:
            self.head.lm_head.weight = self.wte.weight
        self.aux_loss = 0.0
        init_weights(self, config)

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= sum(p.numel() for p in self.wpe.parameters())
            n -= self.wtt.weight.numel() if self.wtt is not None else 0
            if not self.config.tie_embeddings:
                n -= self.wte.weight.numel()
        return n

    def hidden_states(self, idx: torch.Tensor) -> torch.Tensor:
        """The last block's output (B, T, C) for tokens ``idx`` (B, T): BertModel's ``last_hidden_state``."""
        b, t = idx.size()
        if not self.wpe.extrapolates and t > self.config.block_size:
            raise ValueError(f"sequence of length {t} is longer than block_size ({self.config.block_size}); "
                             f"position '{self.config.position}' has no vector beyond it")
        x = self.wpe(embed(self, idx))  # (B, T, C)
        if self.wtt is not None:
            x = x + self.wtt.weight[0]  # every token is of type 0 (sentence A)
        if self.ln_emb is not None:
            x = self.ln_emb(x)
        x = self.drop(x)
        attn_kw = {"rope": self.wpe.rotary(0, t, idx.device), "bias": self.wpe.score_bias()}
        for block in self.h:
            x = block(x, **attn_kw)
        return x if self.ln_f is None else self.ln_f(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """Logits (B, T, vocab) for every position, and the loss when ``targets`` are given: the
        masked-language-model loss over the positions whose target is not -1 (the masked ones)."""
        return logits_and_loss(self, self.head(self.hidden_states(idx)), targets, self.h)  # logits (B, T, vocab)

    def moe_stats(self) -> list[dict]:
        return moe_stats(self.h)
