"""What a model costs, from its config alone: parameters, FLOPs, training and inference memory.

Pure arithmetic on Python ints and floats, no tensors, so the web form can call it on every
keystroke, at any size. Parameter counts come from each component's ``num_params`` and equal
``sum(p.numel())`` of the built model exactly (a test checks every registry combination).

FLOPs per token follow Kaplan et al. 2020 (§2.1) and PaLM (Chowdhery et al. 2022, app. B):
a forward pass costs 2 FLOPs per weight of every matmul a token goes through (the blocks'
projections, for MoE only the router, its top_k experts and the shared one, and the LM head;
embedding lookups are free) plus attention's QKᵀ and AV, 4·n_embd per key a query sees
(4·n_head·head_dim with an explicit ``head_dim``; the same below), i.e.
4·n_embd·K̄ per layer where K̄ is the mean number of keys a query at context T attends to,
counted exactly from the pattern's mask (full causal: (T+1)/2; sliding: ≤ window; ...). Linear
attention has no scores: 4·n_embd·head_dim + 4·n_embd per layer, independent of T. Every
figure that differs by attention kind is asked of its class (``ATTENTIONS[kind]``:
``flops_per_token``, ``decode_flops_per_token``, ``executed_flops_per_token``,
``saved_activations``, ``kv_positions``, ``has_scores``):

    per_token_forward = 2 · N_matmul_active + n_layer · attention_flops(T)   (= per_token_prefill)
    per_token_decode  = 2 · N_matmul_active + n_layer · 4 · n_embd · K_last(T)
    per_token_train   = 3 · per_token_forward           (backward ≈ 2 × forward)
    per_step_train    = (3, or 4 with activation checkpointing) · per_token_forward · batch · T

where K_last is what the newest of T tokens sees (T, min(T, window), ...). That is the *useful*
work. A kernel does more: SDPA and the eager path compute every score of the T×T matrix and
mask the future afterwards, 4·n_embd·T per token (``executed_attention_per_token_layer``,
what ``torch.utils.flop_counter`` counts; a test checks it exactly for every pattern).

For the encoder families the same terms are summed over both stacks (approximately: an
encoder-decoder's input and output are taken as equally long): a bidirectional layer's
softmax pattern sees 2·K̄ − 1 keys (the causal ones on each side, itself once), a decoder
layer of an encoder-decoder adds cross-attention's four projections and 4·n_embd·T.

Activation memory follows Korthikanti et al. 2022 ("Reducing Activation Recomputation in
Large Transformer Models", §4.1), which counts per layer s·b·h·(34 + 5·a·s/h) bytes at 16 bits
for a 4h GELU MLP with dropout. We count the same tensors in elements of ``dtype``, with the
MLP term generalised to any FFN width and SwiGLU, each norm's saved tensors (``n_saved``),
dropout masks only when dropout > 0 (at the activation width, as PyTorch's CPU kernels keep
them, not 1 byte), and the s²·a attention matrix unless ``flash_attention`` (a fused kernel
keeps only a per-row fp32 logsumexp, Dao et al. 2022). Under bf16/fp16 autocast the norms'
tensors and the softmax output stay fp32 (4 bytes). On top: the final norm and head inputs, and
the logits with their fp32 log-softmax and, at the start of the backward pass, two fp32
gradients of that size, which dominate for large vocabularies. A test checks the estimate
against the tensors autograd saves on CPU; on an H200 the training-step peak came within 3 %
(docs/engine.md, bench/results/analyze_memory_gpu.json).
``activation_checkpointing`` keeps only each block's input and recomputes one block at a time
in the backward pass (Chen et al. 2016): an estimate (the engine's model does not checkpoint).

Training state: fp32 weights and gradients (autocast adds a 16-bit weight copy) and the
optimizer's ``OPTIMIZER_STATES`` bytes per parameter; ZeRO (Rajbhandari et al. 2020) stage 1
shards the optimizer state over ``n_gpus``, stage 2 also the gradients, stage 3 (= FSDP) also
the weights, plus one gathered layer; the global batch is split over the GPUs.

Inference: weights at ``QUANTIZATIONS``' width (the blocks' matmul weights; group-wise formats
count one fp16 scale per group), the KV cache of ``batch_size`` sequences, and a forward's
transient peak: the largest layer's working set plus the logits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..models.encoder import MLMHead
from ..nn.attention import ATTENTIONS, CausalSelfAttention
from ..nn.ffn import FFNS
from ..nn.norm import NORM_PLACEMENTS, NORMS
from ..nn.position import POSITIONS

if TYPE_CHECKING:
    from ..config.schema import ModelConfig


def _lookup(registry: dict, key: str, what: str):
    if key not in registry:
        raise ValueError(f"unknown {what} {key!r}; choose from {list(registry)}")
    return registry[key]


def _at_least_one(**values) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer of at least 1, got {value!r}")


def _analyze(cfg: ModelConfig, *, vocab_size, batch_size, seq_len, dtype, optimizer, n_gpus=1, sharding="none",
             activation_checkpointing=False, flash_attention=False, quantization=None, formulas=False) -> dict:
    """``analyze`` without ``fit``; ``formulas=False`` skips the strings (``fit``'s batch search)."""
    vocab = vocab_size if vocab_size is not None else cfg.vocab_size
    if vocab is None:
        raise ValueError("vocab_size is unknown: pass vocab_size= or set model_cfg.vocab_size")
    bpe = _lookup(DTYPE_BYTES, dtype, "dtype")
    state_bytes = _lookup(OPTIMIZER_STATES, optimizer, "optimizer")
    shard_level = _lookup(SHARDINGS, sharding, "sharding")
    quant = _lookup(QUANTIZATIONS, quantization, "quantization") if quantization is not None else None
    norm = _lookup(NORMS, cfg.norm, "norm")
    ffn = _lookup(FFNS, cfg.ffn, "ffn")
    position = _lookup(POSITIONS, cfg.position, "position")
    d, n_layer, a = cfg.n_embd, cfg.n_layer, cfg.n_head
    t = seq_len if seq_len is not None else cfg.block_size
    b = batch_size
    _at_least_one(batch_size=b, seq_len=t, n_gpus=n_gpus)
    b_gpu = -(-b // n_gpus)  # data parallel: each GPU takes its share of the global batch
    checkpointing, flash = bool(activation_checkpointing), bool(flash_attention)

    kind = _lookup(ATTENTIONS, cfg.attention, "attention")
    placement = _lookup(NORM_PLACEMENTS, cfg.norm_placement, "norm_placement")
    n_kv = cfg.n_kv_head or a
    hs, ad = cfg.head_size, cfg.attention_width  # the heads side by side: ad = n_head · hs (= d by default)
    kv_dim = n_kv * hs
    scores = kind.has_scores  # a softmax over a score matrix (linear attention has none)

    # ---- parameters
    # the stacks of blocks: the decoder's or encoder's, or an encoder-decoder's two (encoder first)
    family = _lookup(FAMILY_STACKS, cfg.family, "family")
    stacks = [n_layer] if family == 1 else [n_layer, cfg.n_decoder_layer or n_layer]
    n_blocks, n_cross = sum(stacks), (stacks[1] if family == 2 else 0)
    attention = CausalSelfAttention.num_params(cfg)
    mlp = ffn.num_params(cfg)
    norm_params = norm.num_params(d, bias=cfg.bias)
    layer_norms = 2 * placement.n_norms * norm_params
    cross = attention + placement.n_norms * norm_params  # a decoder block's cross-attention and its norms
    per_layer = attention + mlp + layer_norms + (cross if n_cross else 0)  # a dense (decoder) layer
    # layers i with (i + 1) % moe_every == 0, in each stack
    n_moe = sum(n // cfg.moe_every for n in stacks) if cfg.n_expert else 0
    n_moe_first = stacks[0] // cfg.moe_every if cfg.n_expert else 0  # in the first (encoder) stack
    top_k = min(cfg.top_k, cfg.n_expert)
    router = d * cfg.n_expert
    moe = router + (cfg.n_expert + int(cfg.shared_expert)) * mlp  # engine.moe.MoE.num_params
    moe_active = router + (top_k + int(cfg.shared_expert)) * mlp
    ffn_total = (n_blocks - n_moe) * mlp + n_moe * moe
    embedding = vocab * d + (cfg.n_token_type * d if cfg.family == "encoder" else 0)
    positions = len(stacks) * position.num_params(cfg)  # one position module per stack
    if cfg.family == "encoder":  # BERT's MLM head: dense, norm, vocabulary (+ bias)
        head = MLMHead.num_params(cfg, vocab)
    else:
        head = 0 if cfg.tie_embeddings else vocab * d  # a tied head is the embedding, counted once
    final_norm = len(stacks) * norm_params  # per stack: a final norm, or (post-norm) the embedding norm
    total = (embedding + positions + n_blocks * (attention + layer_norms) + n_cross * cross + ffn_total
             + final_norm + head)
    active = total - n_moe * (moe - moe_active)  # what one token passes through

    # the weight matrices, as (how many, rows, cols): Adafactor factors them, quantization packs
    # the blocks' ones (attention and FFN projections; embeddings, head and router stay 16-bit)
    hidden = ffn.hidden_dim(cfg)
    ffn_mats = [(ffn.n_proj - 1, hidden, d), (1, d, hidden)]
    n_ffn = (n_blocks - n_moe) + n_moe * (cfg.n_expert + int(cfg.shared_expert))
    n_attn = n_blocks + n_cross  # q_proj (ad × d), o_proj (d × ad), k_proj and v_proj (kv_dim × d) each
    block_mats = [(n_attn, ad, d), (n_attn, d, ad), (2 * n_attn, kv_dim, d)]
    block_mats += [(n * n_ffn, r, c) for n, r, c in ffn_mats]
    other_mats = [(1, vocab, d), (int(head > 0 and cfg.family != "encoder"), vocab, d), (n_moe, cfg.n_expert, d)]
    block_elems = sum(n * r * c for n, r, c in block_mats)

    # ---- FLOPs
    ffn_matmul = ffn.n_proj * d * hidden
    moe_matmul = router + (top_k + int(cfg.shared_expert)) * ffn_matmul
    self_attn_matmul = 2 * d * ad + 2 * d * kv_dim
    matmul = (n_blocks + n_cross) * self_attn_matmul + (n_blocks - n_moe) * ffn_matmul
    matmul += n_moe * moe_matmul + d * vocab  # the head multiplies even when tied
    if cfg.family == "encoder":
        matmul += d * d  # the MLM head's dense layer
    attention_flops = kind.flops_per_token(cfg, t)
    # what one query at position t - 1 sees (None: linear attention's recurrent state), and its cost
    last_keys = kind.decode_keys(cfg, t)
    decode_attention = kind.decode_flops_per_token(cfg, t)
    # what the kernels run: every score of the T×T matrix (the mask applied after), or linear
    # attention's chunked products
    executed_causal = kind.executed_flops_per_token(cfg, t)
    executed_symmetric = kind.executed_flops_per_token(cfg, t, causal=False)
    if cfg.family == "decoder":
        attention_total = n_layer * attention_flops
        executed_total = n_layer * executed_causal
        decode_matmul, decode_attn_total = matmul, n_layer * decode_attention
    else:
        # a symmetric pattern sees the causal keys on both sides, the query once: 2·K̄ − 1 keys
        both = kind.flops_per_token(cfg, t, causal=False)
        # the encoder's layers; a decoder's causal ones and its cross-attention to all t inputs
        attention_total = n_layer * both + n_cross * (attention_flops + 4 * ad * t)
        executed_total = n_layer * executed_symmetric + n_cross * (executed_causal + 4 * ad * t)
        # decoding runs the decoder stack only, over the encoder's t outputs
        encoder_matmul = n_layer * self_attn_matmul + (n_layer - n_moe_first) * ffn_matmul + n_moe_first * moe_matmul
        decode_matmul = matmul - encoder_matmul
        decode_attn_total = n_cross * (decode_attention + 4 * ad * t)
    per_token_forward = 2 * matmul + attention_total
    per_token_train = 3 * per_token_forward
    passes = 4 if checkpointing else 3  # checkpointing runs every block's forward a second time
    per_token_decode = 2 * decode_matmul + decode_attn_total if cfg.family != "encoder" else None

    # ---- training memory
    # activations are linear in the batch: count them per sequence (in elements of ``dtype``)
    st, kv_st = t * d, t * kv_dim  # one sequence's (T, C) tensor, and its k (or v)
    at = t * ad  # its q, or the heads' output o_proj reads (= st unless head_dim is set)
    # every softmax pattern here still materialises the masked T×T scores; linear attention keeps
    # per-chunk states (hs² per C positions) and (C, C) products instead
    attn_matrix, extra = kind.saved_activations(cfg, t)
    square = attn_matrix if scores else 0
    dropout_attn = scores and cfg.dropout > 0
    # a soft-cap keeps the scores and their tanh; ALiBi its biased scores
    square_extra = square * (2 * bool(cfg.attn_softcap) + (cfg.position == "alibi"))
    if cfg.position == "rope":  # the rotated halves of q and k
        extra += at + kv_st
    if cfg.qk_norm:
        extra += 2 * (at + kv_st)
    dropout = cfg.dropout > 0
    # autocast runs norms in fp32 (layer_norm is on its fp32 list; the residual stream they read
    # stays fp32, and an RMSNorm written as separate ops computes in its input's dtype)
    norm_bpe = 4
    # per layer: its norms' saved tensors (as bytes); the q/k/v input and the FFN's (st each); q, k, v
    # and the o_proj input (at each, at the query heads' width)
    norm_bytes = st * 2 * placement.n_norms * norm.n_saved * norm_bpe
    layer_elems = st * 2 + at * 4 + extra
    # the softmax output's dropped-out copy and the soft-cap's/ALiBi's scores
    attn_elems = (attn_matrix if dropout_attn else 0) + square_extra
    # the softmax output (linear attention: its states) is fp32 under autocast too: the eager
    # path takes softmax(scores.float()) and AV reads a 16-bit copy; PyTorch's math SDPA kernel
    # upcasts half inputs and keeps the fp32 weights (an H200 measurement agrees, docs/engine.md)
    softmax_bytes = 4 + (bpe if bpe < 4 and cfg.attn_impl == "eager" and scores else 0)
    # dropout masks: 1 byte each on GPU, but PyTorch's CPU path keeps them in the activation
    # dtype, so count them at that width (two residual dropouts and the attention one per layer)
    layer_masks = 2 * st if dropout else 0
    attn_masks = attn_matrix if dropout_attn else 0
    if flash and scores:  # a fused kernel keeps a fp32 logsumexp per row and head, not the T×T
        attn_bytes = a * t * 4
    else:
        attn_bytes = attn_matrix * softmax_bytes + (attn_elems + attn_masks) * bpe
    # the FFN's hidden tensors; an MoE layer holds them for each of a token's experts
    ffn_elems = st * ffn.n_hidden_saved * hidden / d
    ffn_copies = (n_blocks - n_moe) + n_moe * (top_k + int(cfg.shared_expert))
    # an MoE layer also gathers each expert's tokens and keeps its gated outputs
    moe_elems = n_moe * 3 * top_k * st
    blocks_bytes = (n_blocks * (layer_elems + layer_masks) + ffn_copies * ffn_elems + moe_elems) * bpe
    blocks_bytes += n_blocks * (attn_bytes + norm_bytes)
    # the final norm's tensors, the head's input and the embedding dropout's mask
    head_bytes = st * norm.n_saved * norm_bpe + (st + (st if dropout else 0)) * bpe
    # logits, the fp32 log-softmax, and at the start of the backward pass its incoming and
    # outgoing fp32 gradients at once
    head_bytes += t * vocab * (bpe + 12)
    if cfg.final_softcap:
        head_bytes += 2 * t * vocab * bpe  # the logits before and after the tanh
    if checkpointing:
        # each block's input, plus one block's activations rebuilt during its backward
        moe_ffn = (top_k + int(cfg.shared_expert)) * ffn_elems + 3 * top_k * st
        one_block = (layer_elems + layer_masks + max(ffn_elems, moe_ffn if n_moe else 0)) * bpe + attn_bytes
        one_block += norm_bytes
        per_sequence = n_blocks * st * norm_bpe + one_block + head_bytes  # the residual stream's dtype
    else:
        per_sequence = blocks_bytes + head_bytes
    activations = per_sequence * b

    n_kv_layers = {"decoder": n_layer, "encoder": 0}.get(cfg.family, n_cross)
    weights = total * 4 + (total * 2 if bpe < 4 else 0)
    gradients = total * 4
    if optimizer == "adafactor":  # factored second moment: a row and a column vector per matrix
        mats = block_mats + other_mats
        factored = sum(n * (r + c) for n, r, c in mats)
        optimizer_bytes = 4 * (factored + total - sum(n * r * c for n, r, c in mats))  # vectors: full
    else:
        optimizer_bytes = int(state_bytes * total)

    # per GPU: ZeRO stage k shards the first k of (optimizer, gradients, weights) over n_gpus;
    # stage 3 gathers one layer's 16-bit (or fp32) weights at a time to compute with it
    def shard(x: int, stage: int) -> int:
        return -(-x // n_gpus) if shard_level >= stage and n_gpus > 1 else x

    gathered = max(per_layer, per_layer - mlp + moe if n_moe else 0) * bpe
    per_gpu = {
        "weights": shard(weights, 3) + (gathered if shard_level >= 3 and n_gpus > 1 else 0),
        "gradients": shard(gradients, 2),
        "optimizer": shard(optimizer_bytes, 1),
        "activations": int(per_sequence * b_gpu),
    }
    per_gpu["total"] = sum(per_gpu.values())

    # ---- inference memory
    # min(t, window) for sliding attention; the mean over the layers for local_global (a whole number
    # of bytes once multiplied by the layers)
    kv_tokens = kind.kv_positions(cfg, t)
    kv_per_token = 2 * n_kv_layers * kv_dim * bpe  # a key and a value per generating layer and kv head
    kv_cache_batch = round(kv_per_token * kv_tokens * b)
    if quant is None:
        infer_weights = total * bpe
    elif quant["bits"] == 16:
        infer_weights = total * 2
    else:
        group = quant["group"]
        if group == "tensor":  # one fp32 scale per matrix
            scales = 4 * sum(n for n, r, c in block_mats if n * r * c)
        elif group == "row":  # one fp16 scale per output channel
            scales = 2 * sum(n * r for n, r, c in block_mats)
        else:  # one fp16 scale per ``group`` weights of a row
            scales = 2 * sum(n * r * -(-c // group) for n, r, c in block_mats)
        infer_weights = block_elems * quant["bits"] // 8 + scales + (total - block_elems) * 2
    # a forward's transient peak: the residual, norm output, q, k, v, attention output and the
    # scores with their softmax (or a fused kernel's logsumexp); or the FFN's hidden tensors
    score_bytes = a * t * 4 if flash and scores else (2 * square * bpe if scores else attn_matrix * 4)
    attn_ws = (2 * st + 2 * at + 2 * kv_st) * bpe + score_bytes
    ffn_ws = (3 * st + ffn.n_proj * hidden * t) * bpe
    logits = t * vocab * bpe
    infer_activations = int(b * (max(attn_ws, ffn_ws) + logits))
    inference = {"weights": int(infer_weights), "kv_cache": kv_cache_batch, "activations": infer_activations}
    inference["total"] = sum(inference.values())

    report = {
        "settings": {
            "vocab_size": vocab, "batch_size": b, "seq_len": t, "dtype": dtype, "optimizer": optimizer,
            "n_gpus": n_gpus, "sharding": sharding, "per_gpu_batch": b_gpu,
            "activation_checkpointing": checkpointing, "flash_attention": flash, "quantization": quantization,
            "bytes_per_activation": bpe, "kv_cache_tokens": kv_tokens,
        },
        "params": {
            "total": total,
            "active": active,  # MoE: only top_k experts (and the shared one) per token
            "embedding": embedding,
            "position": positions,
            "attention": n_blocks * attention,
            "ffn": ffn_total,  # dense FFNs and MoE layers (router, experts, shared expert)
            "norms": n_blocks * layer_norms + final_norm,
            "head": head,
            "per_layer": per_layer,
            "per_moe_layer": per_layer - mlp + moe if n_moe else None,
            "cross_attention": n_cross * cross,  # encoder-decoder: the decoder's cross-attention and norms
        },
        "flops": {
            "attention_per_token_layer": attention_flops,
            "executed_attention_per_token_layer": executed_causal,
            "per_token_forward": per_token_forward,
            "per_token_prefill": per_token_forward,
            "per_token_decode": per_token_decode,
            "executed_per_token_forward": 2 * matmul + executed_total,
            "per_token_train": per_token_train,
            "per_step_train": passes * per_token_forward * b * t,
        },
        "memory": {
            "weights": weights,
            "gradients": gradients,
            "optimizer": optimizer_bytes,
            "activations": int(activations),
            "train_total": int(weights + gradients + optimizer_bytes + activations),
            "train_per_gpu": per_gpu,
            "inference": inference,
        },
        "kv_cache_per_token": kv_per_token,
        # one sequence of T tokens; a sliding window cache keeps only the last `window`
        "kv_cache": round(kv_per_token * kv_tokens),
    }
    if formulas:
        report["formulas"] = _formulas(report, cfg, d=d, ad=ad, hs=hs, n_kv=n_kv, t=t, b=b, bpe=bpe, vocab=vocab,
                                       matmul=matmul, n_kv_layers=n_kv_layers, state_bytes=state_bytes,
                                       passes=passes, quant=quant, block_elems=block_elems, last_keys=last_keys,
                                       kind=kind)
    return report


def _n(x) -> str:
    """A number for a formula: ints with thousands separators, floats to 6 significant digits."""
    if isinstance(x, float) and not x.is_integer():
        return f"{x:,.6g}"
    return f"{int(x):,}"


def _formulas(r: dict, cfg, *, d, ad, hs, n_kv, t, b, bpe, vocab, matmul, n_kv_layers, state_bytes, passes,
              quant, block_elems, last_keys, kind) -> dict:
    """term -> "symbols = numbers = result" for the UI's footnotes."""
    p, fl, m, s = r["params"], r["flops"], r["memory"], r["settings"]
    w = "d" if ad == d else "n_head·head_dim"  # the width a query and a key meet at
    inf, gpu = m["inference"], m["train_per_gpu"]
    n, kv_t, stage = s["n_gpus"], s["kv_cache_tokens"], SHARDINGS[s["sharding"]] if s["n_gpus"] > 1 else 0
    fwd, attn = fl["per_token_forward"], fl["per_token_forward"] - 2 * matmul
    parts = ("embedding", "position", "attention", "ffn", "norms", "head", "cross_attention")
    state_terms = ("weights", "gradients", "optimizer", "activations")
    if cfg.family == "encoder":
        head = f"MLM head (dense, norm, vocabulary bias) = {_n(p['head'])}"
    else:
        head = f"vocab × d = {_n(vocab)} × {d} = {_n(p['head'])}" if p["head"] else "0 (tied to the embedding)"
    if s["optimizer"] == "adafactor":
        optimizer = f"adafactor: 4 B × (rows + cols) per matrix, 4 B per vector parameter = {_n(m['optimizer'])} B"
    else:
        optimizer = (f"params × {_n(state_bytes)} B ({s['optimizer']}) = {_n(p['total'])} × {_n(state_bytes)} B "
                     f"= {_n(m['optimizer'])} B")
    if quant is None:
        weights = f"params × {bpe} B ({s['dtype']}) = {_n(p['total'])} × {bpe} B = {_n(inf['weights'])} B"
    elif quant["bits"] == 16:
        weights = f"params × 2 B = {_n(p['total'])} × 2 B = {_n(inf['weights'])} B"
    else:
        weights = (f"block matmul weights × {quant['bits'] / 8:g} B + scales (per {quant['group']}) + the rest × 2 B "
                   f"= {_n(block_elems)} × {quant['bits'] / 8:g} B + scales + {_n(p['total'] - block_elems)} × 2 B "
                   f"= {_n(inf['weights'])} B")
    activation_notes = "".join([", flash attention: no T×T" if s["flash_attention"] else "",
                                ", checkpointed: block inputs + one block" if s["activation_checkpointing"] else ""])
    f = {
        "params.total": " + ".join(parts) + " = " + " + ".join(_n(p[k]) for k in parts) + f" = {_n(p['total'])}",
        "params.attention": f"n_blocks × (2·d² + 2·d·n_kv_head·head_dim [+ biases, qk-norm]), d = {d}, "
                            f"n_kv_head = {n_kv}, head_dim = {hs}: {_n(p['attention'])}" if ad == d else
                            f"n_blocks × (2·d·n_head·head_dim + 2·d·n_kv_head·head_dim [+ biases, qk-norm]), "
                            f"d = {d}, n_head = {cfg.n_head}, n_kv_head = {n_kv}, head_dim = {hs}: "
                            f"{_n(p['attention'])}",
        "params.embedding": f"vocab × d = {_n(vocab)} × {d} = {_n(vocab * d)}",
        "params.ffn": f"dense layers × FFN + MoE layers × (router + experts × FFN) = {_n(p['ffn'])}",
        "params.head": head,
        "params.active": f"total − the experts a token is not routed to = {_n(p['active'])}",
        "flops.attention_per_token_layer": f"4 × {w} × K̄ = 4 × {ad} × "
                                           f"{_n(fl['attention_per_token_layer'] / (4 * ad))} "
                                           f"= {_n(fl['attention_per_token_layer'])} "
                                           f"(K̄: the mean keys a query sees at T = {_n(t)})",
        "flops.executed_attention_per_token_layer":
            f"4 × {w} × T = 4 × {ad} × {_n(t)} = {_n(fl['executed_attention_per_token_layer'])} (every score of T×T)"
            if kind.executed_formula is None else
            f"{kind.executed_formula}: {_n(fl['executed_attention_per_token_layer'])}",
        "flops.per_token_forward": f"2 × N_matmul + attention = 2 × {_n(matmul)} + {_n(attn)} = {_n(fwd)}",
        "flops.executed_per_token_forward": f"2 × N_matmul + attention as run = 2 × {_n(matmul)} + "
                                            f"{_n(fl['executed_per_token_forward'] - 2 * matmul)} = "
                                            f"{_n(fl['executed_per_token_forward'])}",
        "flops.per_token_prefill": f"per_token_forward at T = {_n(t)}: {_n(fl['per_token_prefill'])}",
        "flops.per_token_train": f"3 × forward = 3 × {_n(fwd)} = {_n(fl['per_token_train'])}",
        "flops.per_step_train": f"{passes} × forward × batch × T = {passes} × {_n(fwd)} × {b} × {_n(t)} = "
                                f"{_n(fl['per_step_train'])}"
                                + (" (checkpointing runs the forward twice)" if passes == 4 else ""),
        "memory.weights": f"params × (4 B fp32{' + 2 B 16-bit copy' if bpe < 4 else ''}) = {_n(p['total'])} × "
                          f"{6 if bpe < 4 else 4} B = {_n(m['weights'])} B",
        "memory.gradients": f"params × 4 B = {_n(p['total'])} × 4 B = {_n(m['gradients'])} B",
        "memory.optimizer": optimizer,
        "memory.activations": f"batch × per-sequence activations = {b} × {_n(m['activations'] / b)} B = "
                              f"{_n(m['activations'])} B (Korthikanti et al. 2022, {bpe} B per element, "
                              f"norms and softmax in fp32{activation_notes})",
        "memory.train_total": " + ".join(state_terms) + " = " + " + ".join(_n(m[k]) for k in state_terms)
                              + f" = {_n(m['train_total'])} B",
        "memory.train_per_gpu.total": f"{s['sharding']} over {n} GPU(s): "
                                      + " + ".join(_n(gpu[k]) for k in state_terms) + f" = {_n(gpu['total'])} B",
        "memory.train_per_gpu.weights": f"weights{' / n_gpus + one gathered layer' if stage >= 3 else ''} = "
                                        f"{_n(gpu['weights'])} B",
        "memory.train_per_gpu.gradients": f"gradients{' / n_gpus' if stage >= 2 else ''} = {_n(gpu['gradients'])} B",
        "memory.train_per_gpu.optimizer": f"optimizer{' / n_gpus' if stage >= 1 else ''} = {_n(gpu['optimizer'])} B",
        "memory.train_per_gpu.activations": f"activations of ceil(batch / n_gpus) = ceil({b} / {n}) = "
                                            f"{s['per_gpu_batch']} sequences = {_n(gpu['activations'])} B",
        "memory.kv_cache_per_token": f"2 × n_layer × n_kv_head × head_dim × bytes = 2 × {n_kv_layers} × {n_kv} × "
                                     f"{hs} × {bpe} B = {_n(r['kv_cache_per_token'])} B",
        "memory.kv_cache": f"kv_cache_per_token × tokens cached = {_n(r['kv_cache_per_token'])} × {_n(kv_t)} B = "
                           f"{_n(r['kv_cache'])} B",
        "memory.inference.kv_cache": f"2 × n_layer × n_kv_head × head_dim × bytes × batch × tokens = 2 × "
                                     f"{n_kv_layers} × {n_kv} × {hs} × {bpe} × {b} × {_n(kv_t)} B = "
                                     f"{_n(inf['kv_cache'])} B",
        "memory.inference.weights": weights,
        "memory.inference.activations": f"batch × (largest layer's working set + logits T × vocab × {bpe} B) = "
                                        f"{_n(inf['activations'])} B",
        "memory.inference.total": f"weights + kv_cache + activations = {_n(inf['weights'])} + "
                                  f"{_n(inf['kv_cache'])} + {_n(inf['activations'])} = {_n(inf['total'])} B",
    }
    if fl["per_token_decode"] is not None:
        keys = kind.decode_formula if last_keys is None else f"4 × {w} × {_n(last_keys)} keys"
        f["flops.per_token_decode"] = (f"2 × N_matmul (the generating stack) + n_layer × {keys} = "
                                       f"{_n(fl['per_token_decode'])}")
    return f


FAMILY_STACKS = {"decoder": 1, "encoder": 1, "encoder_decoder": 2}  # stacks of blocks per family
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
# bytes per weight of each storage format (int4: two weights per byte)
WEIGHT_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1, "int4": 0.5}
# optimizer state, bytes per parameter: AdamW's two fp32 moments; 8-bit AdamW's two uint8 ones
# (Dettmers et al. 2022; its per-block absmax, 4 B per 2048, is left out); SGD with momentum one
# fp32 buffer. Adafactor (Shazeer & Stern 2018, no first moment, as in T5) keeps 4 B per
# parameter only for vectors: a matrix's second moment is factored into a row and a column
# vector, (rows + cols) · 4 B, which ``analyze`` counts from the weight shapes
OPTIMIZER_STATES = {"adamw": 8, "adamw8bit": 2, "lion": 4, "sgd": 0, "sgd_momentum": 4, "adafactor": 4}  # Lion: one momentum
SHARDINGS = {"none": 0, "zero1": 1, "zero2": 2, "zero3": 3, "fsdp": 3}  # ZeRO stage: what is sharded
# inference weight formats of the blocks' matmul weights: bits per weight and the scales' grouping
# (per tensor, per output row, or one fp16 scale per 128 weights of a row, as GPTQ/AWQ)
QUANTIZATIONS = {
    "bf16": {"bits": 16, "group": None},
    "fp16": {"bits": 16, "group": None},
    "fp8": {"bits": 8, "group": "tensor"},
    "int8": {"bits": 8, "group": "row"},
    "int4": {"bits": 4, "group": 128},
}
