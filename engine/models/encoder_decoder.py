"""The encoder-decoder transformer (Vaswani et al. 2017; T5, Raffel et al. 2020).

An encoder stack (bidirectional ``Block``s, ``n_layer`` of them) reads the input; a decoder
stack (``n_decoder_layer`` causal ``CrossBlock``s: self-attention, then cross-attention to the
encoder's output, then the FFN) writes the output one token at a time. One token embedding
serves both stacks and, with ``tie_embeddings``, the output layer, whose input is then scaled
by ``n_embd**-0.5`` as T5 does (the embedding was not trained at the head's scale). Each stack
has its own position module: T5's relative bias ("t5_relative") is bidirectional in the
encoder and causal in the decoder, one table per stack shared by its layers.

``forward(idx, dec_idx, targets=None) -> (logits, loss)``: ``idx`` (B, S) the input,
``dec_idx`` (B, T) the decoder's input (the targets shifted right behind a start token).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn.attention import CrossAttention
from ..nn.cache import KVCache, keep_weights
from ..nn.position import POSITIONS
from .decoder import (
    Block,
    add_moe_loss,
    embed,
    init_weights,
    make_norm,
    moe_stats,
    new_cache,
    require_vocab,
    sample,
)
from .encoder import embedding_norm

if TYPE_CHECKING:
    from ..config.schema import ModelConfig


class CrossBlock(Block):
    """A decoder block of an encoder-decoder: causal self-attention, cross-attention, FFN."""

    def __init__(self, config: ModelConfig, layer_idx: int = 0):
        super().__init__(config, layer_idx, causal=True)
        norm = lambda: make_norm(config)  # noqa: E731
        self.ln_cross = norm()
        self.cross_attn = CrossAttention(config, layer_idx)
        self.post_cross_norm = norm() if self.placement.n_norms == 2 else None

    def forward(self, x: torch.Tensor, memory: torch.Tensor, **attn_kw) -> torch.Tensor:
        x = self.placement.apply(x, lambda h: self.attn(h, **attn_kw), self.ln_1, self.post_attn_norm)
        x = self.placement.apply(x, lambda h: self.cross_attn(h, memory), self.ln_cross, self.post_cross_norm)
        return self.placement.apply(x, self.mlp, self.ln_2, self.post_ffn_norm)


def n_decoder_layer(config: ModelConfig) -> int:
    return config.n_decoder_layer or config.n_layer


class EncoderDecoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        require_vocab(config)
        self.config = config
        norm = lambda: make_norm(config)  # noqa: E731
        post = embedding_norm(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        # the encoder
        self.enc_wpe = POSITIONS[config.position](config, causal=False)
        self.enc_ln_emb = norm() if post else None
        self.enc_h = nn.ModuleList([Block(config, i, causal=False) for i in range(config.n_layer)])
        self.enc_ln_f = None if post else norm()
        # the decoder (named like the Decoder's, so that capture_attention sees its self-attention)
        self.wpe = POSITIONS[config.position](config, causal=True)
        self.ln_emb = norm() if post else None
        self.h = nn.ModuleList([CrossBlock(config, i) for i in range(n_decoder_layer(config))])
        self.ln_f = None if post else norm()
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self.aux_loss = 0.0
        init_weights(self, config)

    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= sum(p.numel() for p in self.enc_wpe.parameters()) + sum(p.numel() for p in self.wpe.parameters())
            if not self.config.tie_embeddings:
                n -= self.wte.weight.numel()
        return n

    def make_cache(self) -> KVCache:
        """The decoder self-attention's cache (the encoder output is computed once per generate),
        bounded as the attention kind's ``kv_bound`` allows."""
        return new_cache(self.config, n_decoder_layer(self.config))

    def _check_length(self, t: int, what: str) -> None:
        if not self.wpe.extrapolates and t > self.config.block_size:
            raise ValueError(f"{what} of length {t} is longer than block_size ({self.config.block_size}); "
                             f"position '{self.config.position}' has no vector beyond it")

    def encode(self, idx: torch.Tensor) -> torch.Tensor:
        """The encoder's output (B, S, C) for input tokens ``idx`` (B, S)."""
        s = idx.size(1)
        self._check_length(s, "input")
        x = self.enc_wpe(embed(self, idx))  # (B, S, C)
        if self.enc_ln_emb is not None:
            x = self.enc_ln_emb(x)
        x = self.drop(x)
        attn_kw = {"rope": self.enc_wpe.rotary(0, s, idx.device), "bias": self.enc_wpe.score_bias()}
        for block in self.enc_h:
            x = block(x, **attn_kw)
        return x if self.enc_ln_f is None else self.enc_ln_f(x)

    def decode(self, dec_idx: torch.Tensor, memory: torch.Tensor, *, cache: KVCache | None = None,
               start_pos: int = 0) -> torch.Tensor:
        """Logits (B, T, vocab) for decoder tokens ``dec_idx`` (B, T) at ``start_pos ..``, given
        the encoder output ``memory`` (B, S, C)."""
        t = dec_idx.size(1)
        if cache is not None and cache.get_seq_length() != start_pos:
            raise ValueError(f"start_pos ({start_pos}) must equal the positions already cached "
                             f"({cache.get_seq_length()})")
        self._check_length(start_pos + t, "output")
        x = self.wpe(embed(self, dec_idx), start_pos)  # (B, T, C)
        if self.ln_emb is not None:
            x = self.ln_emb(x)
        x = self.drop(x)
        attn_kw = {"rope": self.wpe.rotary(start_pos, t, dec_idx.device), "bias": self.wpe.score_bias(),
                   "cache": cache, "start_pos": start_pos}
        for block in self.h:
            x = block(x, memory, **attn_kw)
        if self.ln_f is not None:
            x = self.ln_f(x)
        if self.config.tie_embeddings:
            x = x * self.config.n_embd**-0.5  # T5: the tied embedding reads the output at its own scale
        logits = self.lm_head(x)  # (B, T, vocab)
        if self.config.final_softcap:
            c = self.config.final_softcap
            logits = c * torch.tanh(logits / c)
        return logits

    def forward(self, idx: torch.Tensor, dec_idx: torch.Tensor, targets: torch.Tensor | None = None):
        logits = self.decode(dec_idx, self.encode(idx))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
            loss = add_moe_loss(self, loss, [*self.enc_h, *self.h])
        return logits, loss

    def moe_stats(self) -> list[dict]:
        """Encoder layers first (0 .. n_layer - 1), then the decoder's."""
        return moe_stats([*self.enc_h, *self.h])

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
        *,
        start_token: int = 0,
    ) -> torch.Tensor:
        """Decoder tokens (B, 1 + max_new_tokens) for input ``idx`` (B, S): ``start_token`` (T5's
        decoder start, its pad id 0) then the sampled ones; ``temperature=0`` is greedy. The
        encoder runs once; with ``use_cache`` each step runs only the new decoder token."""
        with torch.inference_mode(), keep_weights():  # as the decoder's generate
            memory = self.encode(idx)
            out = torch.full((idx.size(0), 1), start_token, dtype=torch.long, device=idx.device)
            cache, pos = (self.make_cache() if use_cache else None), 0
            for _ in range(max_new_tokens):
                if cache is None:
                    logits = self.decode(out, memory)
                else:
                    logits = self.decode(out[:, pos:], memory, cache=cache, start_pos=pos)
                    pos = out.size(1)
                nxt = sample(logits[:, -1, :].float(), temperature, top_k, top_p, generator)  # (B, 1)
                out = torch.cat((out, nxt), dim=1)
        return out.clone()  # an ordinary tensor again: inference-mode ones may not enter autograd
