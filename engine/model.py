"""The decoder-only transformer, built from the registries of its parts.

Read it top-down like nanoGPT: ``Block`` (pre-norm attention + FFN with residuals) ->
``Decoder`` (embeddings, blocks, final norm, LM head). Which norm, position scheme and FFN
a model uses are config strings looked up in ``NORMS``, ``POSITIONS`` and ``FFNS``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import CausalSelfAttention
from .ffn import FFNS
from .norm import NORMS
from .position import POSITIONS

if TYPE_CHECKING:
    from .config import ModelConfig
    from .tokenizers import Tokenizer


class Block(nn.Module):
    """Pre-norm residual block (GPT-2): normalising inside the branch keeps the residual
    stream an identity path, which is what lets deep stacks train without warm-up tricks."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ln_1 = NORMS[config.norm](config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = NORMS[config.norm](config.n_embd, bias=config.bias)
        self.mlp = FFNS[config.ffn](config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class Decoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.vocab_size is None:
            raise ValueError("vocab_size is None; set it (parse_spec does, from the data) before build_model")
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = POSITIONS[config.position](config)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = NORMS[config.norm](config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            # one matrix both reads and writes tokens (Press & Wolf 2017); saves vocab*n_embd params
            self.lm_head.weight = self.wte.weight

        self.apply(self._init_weights)
        # GPT-2: each block adds two projections into the residual stream, so scale their init
        # by 1/sqrt(2*n_layer) to keep the stream's variance independent of depth
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count; a tied head is counted once (``parameters()`` yields it once).

        ``non_embedding`` leaves out the embedding lookups (Kaplan et al. 2020 fit scaling laws
        on that count). A tied token embedding stays in, as in nanoGPT: it is also the head's
        matmul."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= sum(p.numel() for p in self.wpe.parameters())
            if not self.config.tie_embeddings:
                n -= self.wte.weight.numel()
        return n

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        b, t = idx.size()
        if t > self.config.block_size:
            raise ValueError(f"sequence of length {t} is longer than block_size ({self.config.block_size})")
        x = self.drop(self.wpe(self.wte(idx)))  # (B, T, C)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))  # (B, T, vocab)
        loss = None
        if targets is not None:
            # positions whose target is -1 (prompt, padding) carry no loss
            loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Extend ``idx`` (B, T) by ``max_new_tokens`` sampled tokens. No KV cache: every step
        re-runs the (cropped) context. ``temperature=0`` picks the argmax (greedy)."""
        for _ in range(max_new_tokens):
            idx_cond = idx[:, -self.config.block_size :]
            logits, _ = self(idx_cond)
            logits = logits[:, -1, :].float()  # (B, vocab)
            if temperature == 0:
                idx_next = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                    logits[logits < v[:, [-1]]] = -float("inf")
                probs = F.softmax(logits, dim=-1)
                idx_next = torch.multinomial(probs, num_samples=1, generator=generator)  # (B, 1)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx


def build_model(config: ModelConfig) -> nn.Module:
    """Build the model named by ``config.family``; ``config.vocab_size`` must be set."""
    return FAMILIES[config.family](config)


def generate(
    model: nn.Module,
    tokenizer: Tokenizer,
    prompt: str,
    max_new_tokens: int,
    temperature: float = 0.8,
    top_k: int | None = None,
    seed: int | None = None,
) -> str:
    """Continue ``prompt`` by ``max_new_tokens`` tokens and return only the continuation.
    A ``seed`` makes the sample reproducible without touching the global RNG."""
    ids = tokenizer.encode(prompt)
    if not ids:
        raise ValueError("prompt is empty; give at least one character to continue from")
    device = next(model.parameters()).device
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, generator=generator)
    model.train(was_training)
    return tokenizer.decode(out[0, len(ids) :].tolist())


FAMILIES = {"decoder": Decoder}
