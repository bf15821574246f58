"""What a model costs, from its config alone: parameters, FLOPs and training memory.

Pure arithmetic, no tensors, so the web form can call it on every keystroke. Parameter
counts come from each component's ``num_params`` and equal ``sum(p.numel())`` of the built
model exactly (a test checks every registry combination).

FLOPs per token follow Kaplan et al. 2020 (§2.1) and PaLM (Chowdhery et al. 2022, app. B):
a forward pass costs 2 FLOPs per weight of every matmul a token goes through (the blocks'
projections, for MoE only the router, its top_k experts and the shared one, and the LM head;
embedding lookups are free) plus attention's QKᵀ and AV, 4·n_embd per key a query sees, i.e.
4·n_embd·K̄ per layer where K̄ is the mean number of keys a query at context T attends to,
counted exactly from the pattern's mask (full causal: (T+1)/2; sliding: ≤ window; ...). Linear
attention has no scores: 4·n_embd·head_dim + 4·n_embd per layer, independent of T
(``ATTENTIONS[kind].flops_per_token``):

    per_token_forward = 2 · N_matmul_active + n_layer · attention_flops(T)

For the encoder families the same terms are summed over both stacks (approximately: an
encoder-decoder's input and output are taken as equally long): a bidirectional layer's
softmax pattern sees 2·K̄ − 1 keys (the causal ones on each side, itself once), a decoder
layer of an encoder-decoder adds cross-attention's four projections and 4·n_embd·T.
    per_token_train   = 3 · per_token_forward           (backward ≈ 2 × forward)
    per_step_train    = per_token_train · batch_size · T

Activation memory follows Korthikanti et al. 2022 ("Reducing Activation Recomputation in
Large Transformer Models", §4.1), which counts per layer s·b·h·(34 + 5·a·s/h) bytes at 16 bits
for a 4h GELU MLP with dropout. We count the same tensors in elements of ``dtype``, with the
MLP term generalised to any FFN width and SwiGLU, each norm's saved tensors (``n_saved``),
dropout masks only when dropout > 0 (at the activation width, as PyTorch's CPU kernels keep
them, not 1 byte), and the s²·a attention matrix always: the eager path and PyTorch's math
SDPA kernel materialise it, so for a memory limit it is the safe side. On top: the final norm
and head inputs, and the logits with their fp32 log-softmax and gradient, which dominate for
large vocabularies. A test checks the estimate against the tensors autograd actually saves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .attention import ATTENTIONS, CausalSelfAttention, LinearAttention
from .encoder import MLMHead
from .ffn import FFNS
from .norm import NORM_PLACEMENTS, NORMS
from .position import POSITIONS

if TYPE_CHECKING:
    from .config import ModelConfig


def _lookup(registry: dict, key: str, what: str):
    if key not in registry:
        raise ValueError(f"unknown {what} {key!r}; choose from {list(registry)}")
    return registry[key]


def analyze(
    model_cfg: ModelConfig,
    *,
    vocab_size: int | None = None,
    batch_size: int = 32,
    seq_len: int | None = None,
    dtype: str = "fp32",
    optimizer: str = "adamw",
) -> dict:
    """Parameters, FLOPs and memory (bytes) of training ``model_cfg``; see the module docstring.

    ``vocab_size`` overrides the config's; ``seq_len`` defaults to ``block_size``. ``dtype`` is
    the activation precision: "fp32", or "bf16"/"fp16" autocast, which keeps fp32 master weights,
    gradients and optimizer state and adds a 16-bit copy of the weights."""
    cfg = model_cfg
    vocab = vocab_size if vocab_size is not None else cfg.vocab_size
    if vocab is None:
        raise ValueError("vocab_size is unknown: pass vocab_size= or set model_cfg.vocab_size")
    bpe = _lookup(DTYPE_BYTES, dtype, "dtype")
    n_states = _lookup(OPTIMIZER_STATES, optimizer, "optimizer")
    norm = _lookup(NORMS, cfg.norm, "norm")
    ffn = _lookup(FFNS, cfg.ffn, "ffn")
    position = _lookup(POSITIONS, cfg.position, "position")
    d, n_layer, a = cfg.n_embd, cfg.n_layer, cfg.n_head
    t = seq_len if seq_len is not None else cfg.block_size
    b = batch_size

    kind = _lookup(ATTENTIONS, cfg.attention, "attention")
    placement = _lookup(NORM_PLACEMENTS, cfg.norm_placement, "norm_placement")
    n_kv = cfg.n_kv_head or a
    kv_dim = n_kv * (d // a)

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
    router = d * cfg.n_expert
    moe = router + (cfg.n_expert + int(cfg.shared_expert)) * mlp  # engine.moe.MoE.num_params
    moe_active = router + (min(cfg.top_k, cfg.n_expert) + int(cfg.shared_expert)) * mlp
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

    # ---- FLOPs
    hidden = ffn.hidden_dim(cfg)
    ffn_matmul = ffn.n_proj * d * hidden
    moe_matmul = router + (min(cfg.top_k, cfg.n_expert) + int(cfg.shared_expert)) * ffn_matmul
    matmul = (n_blocks + n_cross) * (2 * d * d + 2 * d * kv_dim) + (n_blocks - n_moe) * ffn_matmul
    matmul += n_moe * moe_matmul + d * vocab  # the head multiplies even when tied
    if cfg.family == "encoder":
        matmul += d * d  # the MLM head's dense layer
    attention_flops = kind.flops_per_token(cfg, t)
    if cfg.family == "decoder":
        attention_total = n_layer * attention_flops
    else:
        # a symmetric pattern sees the causal keys on both sides, the query once: 2·K̄ − 1 keys
        both = attention_flops if cfg.attention == "linear" else 2 * attention_flops - 4 * d
        # the encoder's layers; a decoder's causal ones and its cross-attention to all t inputs
        attention_total = n_layer * both + n_cross * (attention_flops + 4 * d * t)
    per_token_forward = 2 * matmul + attention_total
    per_token_train = 3 * per_token_forward

    # ---- memory
    sbh = t * b * d
    kv_sbh = sbh * kv_dim / d  # one layer's k (or v) tensor
    if cfg.attention == "linear":  # no T×T matrix: per-chunk states (hs² per C positions), (C, C) products
        c = min(LinearAttention.chunk, t)
        attn_matrix, dropout_attn = b * a * -(-t // c) * c * (3 * (d // a) ** 2 // c + 2 * c), False
        extra = 6 * sbh
    else:  # every softmax pattern here still materialises the masked T×T scores
        attn_matrix, dropout_attn = a * t * t * b, cfg.dropout > 0
        # a soft-cap keeps the scores and their tanh; ALiBi its biased scores
        extra = attn_matrix * (2 * bool(cfg.attn_softcap) + (cfg.position == "alibi"))
    if cfg.position == "rope":  # the rotated halves of q and k
        extra += sbh + kv_sbh
    if cfg.qk_norm:
        extra += 2 * (sbh + kv_sbh)
    dropout = cfg.dropout > 0
    # per layer: its norms; q/k/v input, q, k, v, o_proj input (5); the FFN's input
    layer_elems = sbh * (2 * placement.n_norms * norm.n_saved + 5 + 1) + extra
    layer_elems += attn_matrix * (2 if dropout_attn else 1)  # softmax output, and its dropped-out copy
    # dropout masks: 1 byte each on GPU, but PyTorch's CPU path keeps them in the activation
    # dtype, so count them at that width (two residual dropouts and the attention one per layer)
    layer_masks = (2 * sbh + (attn_matrix if dropout_attn else 0)) if dropout else 0
    # the FFN's hidden tensors; an MoE layer holds them for each of a token's experts
    ffn_elems = sbh * ffn.n_hidden_saved * hidden / d
    ffn_copies = (n_blocks - n_moe) + n_moe * (min(cfg.top_k, cfg.n_expert) + int(cfg.shared_expert))
    # an MoE layer also gathers each expert's tokens and keeps its gated outputs
    moe_elems = n_moe * 3 * min(cfg.top_k, cfg.n_expert) * sbh
    activations = (n_blocks * (layer_elems + layer_masks) + ffn_copies * ffn_elems + moe_elems) * bpe
    # the final norm's tensors, the head's input and the embedding dropout's mask
    activations += (sbh * norm.n_saved + sbh + (sbh if dropout else 0)) * bpe
    activations += t * b * vocab * (bpe + 8)  # logits, fp32 log-softmax and its gradient
    if cfg.final_softcap:
        activations += 2 * t * b * vocab * bpe  # the logits before and after the tanh
    n_kv_layers = {"decoder": n_layer, "encoder": 0}.get(cfg.family, n_cross)
    weights = total * 4 + (total * 2 if bpe < 4 else 0)
    gradients = total * 4
    optimizer_bytes = n_states * total * 4

    return {
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
            "per_token_forward": per_token_forward,
            "per_token_train": per_token_train,
            "per_step_train": per_token_train * b * t,
        },
        "memory": {
            "weights": weights,
            "gradients": gradients,
            "optimizer": optimizer_bytes,
            "activations": int(activations),
            "train_total": int(weights + gradients + optimizer_bytes + activations),
        },
        # a key and a value vector per generating layer and key/value head (an encoder generates nothing)
        "kv_cache_per_token": 2 * n_kv_layers * kv_dim * bpe,
        # one sequence of T tokens; a sliding window cache keeps only the last `window`
        "kv_cache": 2 * n_kv_layers * kv_dim * bpe * (min(t, cfg.window) if cfg.attention == "sliding" else t),
    }


FAMILY_STACKS = {"decoder": 1, "encoder": 1, "encoder_decoder": 2}  # stacks of blocks per family
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
OPTIMIZER_STATES = {"adamw": 2, "sgd": 0}  # fp32 tensors kept per parameter: AdamW's two moments
