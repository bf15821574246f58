"""The decoder-only transformer, built from the registries of its parts (the encoder families,
``engine.encoder`` and ``engine.encoder_decoder``, reuse its ``Block``).

Read it top-down like nanoGPT: ``Block`` (attention + FFN, each a residual branch with its
norms placed by ``NORM_PLACEMENTS``) -> ``Decoder`` (embeddings, blocks, final norm, LM head).
Which norm, position scheme, attention pattern and FFN a model uses are config strings looked
up in ``NORMS``, ``POSITIONS``, ``ATTENTIONS`` and ``FFNS``; with ``n_expert > 0`` every
``moe_every``-th FFN is a mixture of experts (``engine.moe``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn.attention import ATTENTIONS, CausalSelfAttention
from ..nn.cache import KVCache, LayerWindowCache, Linear, SlidingWindowCache, keep_weights
from ..nn.ffn import FFNS
from ..nn.norm import NORM_PLACEMENTS, NORMS
from ..nn.position import POSITIONS, apply_rotary

if TYPE_CHECKING:
    from ..config.schema import ModelConfig
    from ..data.tokenizers import Tokenizer


def is_moe_layer(config: ModelConfig, layer_idx: int) -> bool:
    return config.n_expert > 0 and (layer_idx + 1) % config.moe_every == 0


def _moe(config: ModelConfig) -> nn.Module:
    try:
        from ..nn.moe import MoE
    except ModuleNotFoundError as e:
        if e.name != "engine.nn.moe":
            raise
        raise RuntimeError(f"n_expert ({config.n_expert}) > 0 needs engine/nn/moe.py, which is missing") from None
    return MoE(config)


class Block(nn.Module):
    """Attention then FFN, each a residual branch; ``causal=False`` for an encoder's blocks."""

    def __init__(self, config: ModelConfig, layer_idx: int = 0, *, causal: bool = True):
        super().__init__()
        norm = lambda: make_norm(config)  # noqa: E731
        self.placement = NORM_PLACEMENTS[config.norm_placement]
        self.ln_1 = norm()
        self.attn = CausalSelfAttention(config, layer_idx, causal=causal)
        self.ln_2 = norm()
        self.mlp = _moe(config) if is_moe_layer(config, layer_idx) else FFNS[config.ffn](config)
        sandwich = self.placement.n_norms == 2
        self.post_attn_norm = norm() if sandwich else None
        self.post_ffn_norm = norm() if sandwich else None

    def forward(self, x: torch.Tensor, **attn_kw) -> torch.Tensor:
        x = self.placement.apply(x, lambda h: self.attn(h, **attn_kw), self.ln_1, self.post_attn_norm)
        return self.placement.apply(x, self.mlp, self.ln_2, self.post_ffn_norm)


def make_norm(config: ModelConfig) -> nn.Module:
    """A fresh norm layer of the configured kind, width and epsilon."""
    return NORMS[config.norm](config.n_embd, bias=config.bias, eps=config.norm_eps)


def new_cache(config: ModelConfig, n_layers: int, capacity: int | None = None) -> KVCache:
    """A KV cache for ``n_layers`` layers of ``config``'s attention kind: every position
    (``KVCache``), the last ``kv_bound`` (``SlidingWindowCache``), or a bound per layer
    (``LayerWindowCache``) when the kind's differs by layer."""
    kind = ATTENTIONS[config.attention]
    bounds = [kind.layer_kv_bound(config, i) for i in range(n_layers)]
    if len(set(bounds)) > 1:
        return LayerWindowCache(bounds, capacity)
    return KVCache(capacity) if bounds[0] is None else SlidingWindowCache(bounds[0])


def embed(model: nn.Module, idx: torch.Tensor, looked_up: torch.Tensor | None = None) -> torch.Tensor:
    """The token embeddings (B, T, C) of ``idx`` (``looked_up``: already read from ``model.wte``),
    times √n_embd with ``embed_scale`` (Gemma; in the embedding's dtype, as transformers does)."""
    x = model.wte(idx) if looked_up is None else looked_up
    return x * model.config.n_embd ** 0.5 if model.config.embed_scale else x


def require_vocab(config: ModelConfig) -> None:
    if config.vocab_size is None:
        raise ValueError("vocab_size is None; set it (parse_spec does, from the data) before build_model")


class Decoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        require_vocab(config)
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = POSITIONS[config.position](config)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([Block(config, i) for i in range(config.n_layer)])
        self.ln_f = make_norm(config)
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            # one matrix both reads and writes tokens (Press & Wolf 2017); saves vocab*n_embd params
            self.lm_head.weight = self.wte.weight
        self.aux_loss = 0.0  # the MoE terms added to the last forward's loss
        init_weights(self, config)

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

    def make_cache(self, capacity: int | None = None) -> KVCache:
        """The cache ``generate`` uses: bounded when the attention kind's queries reach only the last
        ``kv_bound`` positions (sliding attention's window), per layer when that differs by layer
        (local_global). ``capacity``, the positions a full cache will hold, lets it allocate once
        rather than grow."""
        return new_cache(self.config, self.config.n_layer, capacity)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *,
                cache: KVCache | None = None, start_pos: int = 0):
        """Logits (B, T, vocab) for tokens ``idx`` (B, T) at positions ``start_pos ..``, and the
        loss when ``targets`` are given (positions with target -1 carry none). With a ``cache``
        the keys and values of earlier positions come from it and this call's are added."""
        b, t = idx.size()
        if cache is not None and cache.get_seq_length() != start_pos:
            raise ValueError(f"start_pos ({start_pos}) must equal the positions already cached "
                             f"({cache.get_seq_length()})")
        if not self.wpe.extrapolates and start_pos + t > self.config.block_size:
            raise ValueError(
                f"sequence of length {start_pos + t} is longer than block_size ({self.config.block_size}); "
                f"position '{self.config.position}' has no vector beyond it"
            )
        x = self.wpe(embed(self, idx), start_pos)  # (B, T, C)
        x = self.drop(x) if self.training else x
        # position signals for attention, once per forward for every layer
        attn_kw = {"rope": self.wpe.rotary(start_pos, t, idx.device), "bias": self.wpe.score_bias(),
                   "cache": cache, "start_pos": start_pos}
        for block in self.h:
            x = block(x, **attn_kw)
        return logits_and_loss(self, self.lm_head(self.ln_f(x)), targets, self.h)  # logits (B, T, vocab)

    def moe_stats(self) -> list[dict]:
        """Routing of the last forward, one dict per MoE layer (plain numbers, JSON-ready)."""
        return moe_stats(self.h)

    def _lean_decoding(self) -> bool:
        """Whether ``_decode_step`` computes exactly what ``forward`` does for one new token: the
        common case (pre-norm, plain causal softmax attention through SDPA, no experts, no
        score bias or soft-caps, no QK-norm, nothing captured, no dropout)."""
        c = self.config
        return (not self.training and c.norm_placement == "pre" and ATTENTIONS[c.attention].plain_causal
                and c.attn_impl == "sdpa" and not c.n_expert and not c.attn_softcap and not c.final_softcap
                and not c.qk_norm and self.wpe.score_bias() is None and all(b.attn.capture is None for b in self.h))

    def _decode_step(self, idx: torch.Tensor, cache: KVCache, pos: int) -> torch.Tensor:
        """Logits (B, 1, vocab) of one new token at position ``pos`` with a filled ``cache``: the
        arithmetic of ``forward`` for the ``_lean_decoding`` case, calling the parts' ``forward``
        directly. At batch 1 a step's time is mostly Python and dispatch, not arithmetic, and
        this path does a third less of it (``bench/decode.py``); tests check it equals ``forward``."""
        b = idx.size(0)
        x = self.wpe.forward(embed(self, idx, F.embedding(idx, self.wte.weight)), pos)  # (B, 1, C)
        rope = self.wpe.rotary(pos, 1, idx.device)
        for block in self.h:
            a = block.attn
            nh, n_kv, hs = a.n_head, a.n_kv_head, a.head_dim
            qkv = a.project_qkv(block.ln_1.forward(x)).view(b, 1, nh + 2 * n_kv, hs).transpose(1, 2)
            qk, v = qkv.split((nh + n_kv, n_kv), dim=1)
            if rope is not None:
                qk = apply_rotary(qk, *rope)
            q, k = qk.split((nh, n_kv), dim=1)
            k, v = cache.update(k, v, a.layer_idx)  # (B, n_kv, T, hs)
            # the one query sees every key, so no mask; the query heads that share a key/value head
            # become that head's rows of queries (B, n_kv, n_rep, hs): GQA as plain attention, and
            # the output is already in (B, C) order
            y = F.scaled_dot_product_attention(q.reshape(b, n_kv, nh // n_kv, hs), k, v,
                                               scale=a.pattern.scale)  # (B, n_kv, n_rep, hs)
            x = x + a.o_proj.forward(y.reshape(b, 1, nh * hs))
            x = x + block.mlp.forward(block.ln_2.forward(x))
        return self.lm_head.forward(self.ln_f.forward(x))

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
        stop_token: int | None = None,
    ) -> torch.Tensor:
        """Extend ``idx`` (B, T) by ``max_new_tokens`` sampled tokens. ``temperature=0`` picks the
        argmax (greedy); ``top_k`` keeps the k likeliest tokens, ``top_p`` the smallest set whose
        probability reaches p (nucleus sampling, Holtzman et al. 2020).

        With ``use_cache`` each step runs only the new token against cached keys and values
        (same result as without). Learned positions end at ``block_size``: beyond it the context
        is cropped to the last ``block_size`` tokens (re-read each step); the other position
        schemes keep the whole context. With ``stop_token`` it stops early once every sequence
        has produced that id (a chat model's end of turn); the result then is shorter."""
        bs, crop = self.config.block_size, not self.wpe.extrapolates
        stopped = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        # the most positions the cache will hold: cropping restarts it at block_size
        capacity = min(idx.size(1) + max_new_tokens, bs) if crop else idx.size(1) + max_new_tokens
        new_cache = lambda: self.make_cache(capacity)  # noqa: E731
        cache, pos = (new_cache() if use_cache else None), 0
        lean = self._lean_decoding()
        # no autograd bookkeeping (less overhead per op than no_grad); weights concatenated once
        with torch.inference_mode(), keep_weights():
            for _ in range(max_new_tokens):
                if cache is None:
                    logits, _ = self(idx[:, -bs:] if crop else idx)
                else:
                    if crop and idx.size(1) > bs:  # the cached positions no longer fit: start again
                        cache, pos = new_cache(), 0
                        ctx = idx[:, -bs:]
                    else:
                        ctx = idx[:, pos:]
                    if ctx.size(1) == 1 and lean:
                        logits = self._decode_step(ctx, cache, pos)
                    else:
                        logits, _ = self(ctx, cache=cache, start_pos=pos)
                    pos += ctx.size(1)
                idx_next = sample(logits[:, -1, :].float(), temperature, top_k, top_p, generator)  # (B, 1)
                idx = torch.cat((idx, idx_next), dim=1)
                if stop_token is not None:
                    stopped |= idx_next[:, 0] == stop_token
                    if bool(stopped.all()):
                        break
        return idx.clone()  # an ordinary tensor again: inference-mode ones may not enter autograd


def init_weights(model: nn.Module, config: ModelConfig) -> None:
    """GPT-2's initialisation, shared by every family: N(0, 0.02) weights and embeddings, zero
    biases; with ``scale_residual_init`` the projections into the residual stream get
    1/sqrt(2*n_layer) of that, since each block adds two of them to the stream and its
    variance should not grow with depth."""
    def init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    model.apply(init)
    if config.scale_residual_init:
        for name, p in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))


def logits_and_loss(model: nn.Module, logits: torch.Tensor, targets: torch.Tensor | None, blocks):
    """What every family's ``forward`` returns: ``logits`` (soft-capped when configured) and, with
    ``targets`` (-1 = no loss there), the cross-entropy plus ``blocks``' MoE terms."""
    if model.config.final_softcap:
        c = model.config.final_softcap
        logits = c * torch.tanh(logits / c)  # Gemma 2: bounded logits
    loss = None
    if targets is not None:
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        loss = add_moe_loss(model, loss, blocks)
    return logits, loss


def add_moe_loss(model: nn.Module, loss: torch.Tensor, blocks) -> torch.Tensor:
    """``loss`` plus the weighted MoE terms of ``blocks``' last forward (kept in ``model.aux_loss``)."""
    if not model.config.n_expert:
        return loss
    stats = [block.mlp.stats for block in blocks if hasattr(block.mlp, "stats")]
    aux = model.config.aux_loss_coef * sum(s["aux_loss"] for s in stats)
    aux = aux + model.config.z_loss_coef * sum(s["z_loss"] for s in stats)
    model.aux_loss = float(aux.detach())
    return loss + aux


def moe_stats(blocks) -> list[dict]:
    out = []
    for i, block in enumerate(blocks):
        stats = getattr(block.mlp, "stats", None)
        if stats:
            out.append({
                "layer": i,
                "tokens_per_expert": [int(n) for n in stats["tokens_per_expert"]],
                "dropped": int(stats["dropped"]),
                "aux_loss": float(torch.as_tensor(stats["aux_loss"]).detach()),
                "z_loss": float(torch.as_tensor(stats["z_loss"]).detach()),
            })
    return out


def sample(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
           generator: torch.Generator | None) -> torch.Tensor:
    """One token id per row (B, 1) from last-position logits (B, vocab)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits[logits < v[:, [-1]]] = -float("inf")
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = F.softmax(sorted_logits, dim=-1)
        # drop a token when the likelier ones already reach top_p (the first always stays)
        drop = probs.cumsum(dim=-1) - probs >= top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, -float("inf")))
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


def generate(
    model: nn.Module,
    tokenizer: Tokenizer,
    prompt: str,
    max_new_tokens: int,
    temperature: float = 0.8,
    top_k: int | None = None,
    seed: int | None = None,
    top_p: float | None = None,
) -> str:
    """Continue ``prompt`` by ``max_new_tokens`` tokens and return only the continuation.
    A ``seed`` makes the sample reproducible without touching the global RNG. An encoder-decoder
    reads the prompt as its input and writes the output from its start token (the id after the
    tokenizer's vocabulary, as ``objectives.Seq2Seq`` trains it); an encoder does not generate."""
    family = model.config.family
    if family == "encoder":
        raise ValueError("an encoder fills in masked tokens, it does not generate text; "
                         "use a 'decoder' or 'encoder_decoder' model")
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
    kw = {"start_token": tokenizer.vocab_size} if family == "encoder_decoder" else {}
    out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator,
                         **kw)
    model.train(was_training)
    new = out[0, 1:] if family == "encoder_decoder" else out[0, len(ids) :]
    # sentinels and other special tokens lie beyond the tokenizer's vocabulary
    return tokenizer.decode([i for i in new.tolist() if i < tokenizer.vocab_size])

