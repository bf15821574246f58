"""What a model costs, from its config alone: parameters, FLOPs and training memory.

Pure arithmetic, no tensors, so the web form can call it on every keystroke. Parameter
counts come from each component's ``num_params`` and equal ``sum(p.numel())`` of the built
model exactly (a test checks every registry combination).

FLOPs per token follow Kaplan et al. 2020 (§2.1) and PaLM (Chowdhery et al. 2022, app. B):
a forward pass costs 2 FLOPs per weight of every matmul (the blocks' projections and the
LM head; embedding lookups are free) plus attention's QKᵀ and AV, 4·n_layer·T·n_embd at
context T, which we halve because a causal token attends on average to T/2 positions:

    per_token_forward = 2 · N_matmul + 2 · n_layer · T · n_embd
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

from .attention import CausalSelfAttention
from .ffn import FFNS
from .norm import NORMS
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

    # ---- parameters
    attention = CausalSelfAttention.num_params(cfg)
    mlp = ffn.num_params(cfg)
    layer_norms = 2 * norm.num_params(d, bias=cfg.bias)
    per_layer = attention + mlp + layer_norms
    embedding = vocab * d
    positions = position.num_params(cfg)
    head = 0 if cfg.tie_embeddings else vocab * d  # a tied head is the embedding, counted once
    final_norm = norm.num_params(d, bias=cfg.bias)
    total = embedding + positions + n_layer * per_layer + final_norm + head

    # ---- FLOPs
    hidden = ffn.hidden_dim(cfg)
    matmul = n_layer * (4 * d * d + ffn.n_proj * d * hidden) + d * vocab  # the head multiplies even when tied
    per_token_forward = 2 * matmul + 2 * n_layer * t * d
    per_token_train = 3 * per_token_forward

    # ---- memory
    sbh = t * b * d
    attn_matrix = a * t * t * b  # elements of one layer's softmax output
    dropout = cfg.dropout > 0
    # per layer: two norms; q/k/v input, q, k, v, o_proj input (5); MLP input and its hidden tensors
    layer_elems = sbh * (2 * norm.n_saved + 5 + 1 + ffn.n_hidden_saved * hidden / d)
    layer_elems += attn_matrix * (2 if dropout else 1)  # softmax output, and its dropped-out copy
    # dropout masks: 1 byte each on GPU, but PyTorch's CPU path keeps them in the activation
    # dtype, so count them at that width (two residual dropouts and the attention one per layer)
    layer_masks = (2 * sbh + attn_matrix) if dropout else 0
    activations = n_layer * (layer_elems + layer_masks) * bpe
    # the final norm's tensors, the head's input and the embedding dropout's mask
    activations += (sbh * norm.n_saved + sbh + (sbh if dropout else 0)) * bpe
    activations += t * b * vocab * (bpe + 8)  # logits, fp32 log-softmax and its gradient
    weights = total * 4 + (total * 2 if bpe < 4 else 0)
    gradients = total * 4
    optimizer_bytes = n_states * total * 4

    return {
        "params": {
            "total": total,
            "active": total,  # every parameter is used for every token in a dense model
            "embedding": embedding,
            "position": positions,
            "attention": n_layer * attention,
            "ffn": n_layer * mlp,
            "norms": n_layer * layer_norms + final_norm,
            "head": head,
            "per_layer": per_layer,
        },
        "flops": {
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
        "kv_cache_per_token": 2 * n_layer * d * bpe,  # a key and a value vector per layer
    }


DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
OPTIMIZER_STATES = {"adamw": 2, "sgd": 0}  # fp32 tensors kept per parameter: AdamW's two moments
