"""Real models as ``ModelConfig`` presets, for analysis: ``analyze(preset("llama-2-7b"))``.

Each entry copies the published shape (the model card's ``config.json``): layers, heads,
width, FFN width, vocabulary, context, norm epsilon, RoPE base, sliding window, experts.
``tests/engine/config/test_presets.py`` builds the matching ``transformers`` model on the meta device
and checks that ``analyze`` counts exactly its parameters.

Most of these are larger than the composer's bounds (``ModelConfig.validate`` refuses a
70B model's 80 layers and 8192 width): they are for ``analyze``, not for training here.
Training-only fields keep our defaults; a preset sets dropout to the published value.

Qwen2.5 needs ``qkv_bias`` (biases on q, k and v, none on o_proj); Gemma 2 needs the (1 + w)
RMSNorm (``rmsnorm_offset``), the sandwich norms, embeddings scaled by √width (``embed_scale``),
soft-caps, heads of 256 in a 2304 width (``head_dim``) and local and global layers alternating
(``local_global``). Left out, since the engine cannot express it exactly:
- Llama 3.1's "llama3" RoPE frequency scaling (its 128K context): the 405B preset is the model
  at its 8K pre-training context, the same parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

from .schema import ModelConfig


@dataclass(frozen=True)
class Preset:
    """One real model: its config, a line saying what it is, and where the numbers come from."""

    config: ModelConfig
    description: str
    source: str


def preset(name: str) -> ModelConfig:
    """A fresh copy of preset ``name``'s config (so callers may change it)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {list(PRESETS)}")
    return ModelConfig.from_dict(PRESETS[name].config.to_dict())


# ---------------------------------------------------------------------------- shared shapes


def _gpt2(n_layer: int, n_head: int, n_embd: int) -> ModelConfig:
    # Radford et al. 2019: learned positions, LayerNorm, tanh-GELU 4x MLP, tied head
    return ModelConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=1024, vocab_size=50257,
                       dropout=0.1, norm_eps=1e-5)


def _bert(n_layer: int, n_head: int, n_embd: int) -> ModelConfig:
    # Devlin et al. 2019: post-norm, exact GELU, 2 segment types, LayerNorm eps 1e-12
    return ModelConfig(family="encoder", n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=512,
                       vocab_size=30522, dropout=0.1, norm_placement="post", norm_eps=1e-12, ffn="gelu_exact",
                       n_token_type=2)


def _t5(n_layer: int, n_head: int, n_embd: int) -> ModelConfig:
    # Raffel et al. 2020 (v1.0): ReLU 4x FFN, relative bias of 32 buckets up to distance 128,
    # trained on 512-token inputs
    return ModelConfig(family="encoder_decoder", n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=512,
                       vocab_size=32128, dropout=0.1, bias=False, norm="rmsnorm", norm_eps=1e-6,
                       position="t5_relative", ffn="relu")


def _llama(n_layer: int, n_head: int, n_embd: int, ffn_hidden: int, *, n_kv_head: int | None = None,
           block_size: int = 4096, vocab_size: int = 32000, rope_theta: float = 10000.0,
           tie_embeddings: bool = False, norm_eps: float = 1e-5, **kw) -> ModelConfig:
    # Touvron et al. 2023: RoPE, RMSNorm, SwiGLU, no biases, untied head
    return ModelConfig(n_layer=n_layer, n_head=n_head, n_kv_head=n_kv_head, n_embd=n_embd, block_size=block_size,
                       vocab_size=vocab_size, dropout=0.0, bias=False, norm="rmsnorm", norm_eps=norm_eps,
                       position="rope", rope_theta=rope_theta, ffn="swiglu", ffn_hidden=ffn_hidden,
                       tie_embeddings=tie_embeddings, **kw)


def _smollm2(n_layer: int, n_head: int, n_kv_head: int, n_embd: int, ffn_hidden: int,
             rope_theta: float = 100000.0) -> ModelConfig:
    # Allal et al. 2025: Llamas with tied embeddings, a 49,152-token BPE and an 8192-token context
    return _llama(n_layer, n_head, n_embd, ffn_hidden, n_kv_head=None if n_kv_head == n_head else n_kv_head,
                  block_size=8192, vocab_size=49152,
                  rope_theta=rope_theta, tie_embeddings=True)


def _qwen2(n_layer: int, n_head: int, n_kv_head: int, n_embd: int, ffn_hidden: int, *, tie_embeddings: bool,
           block_size: int = 32768) -> ModelConfig:
    # Yang et al. 2024 (Qwen2, Qwen2.5): Llamas with biases on q, k and v only, RMSNorm eps 1e-6,
    # RoPE θ 1,000,000 and a 151,936-token byte-level BPE
    return _llama(n_layer, n_head, n_embd, ffn_hidden, n_kv_head=n_kv_head, block_size=block_size,
                  vocab_size=151936, rope_theta=1e6, tie_embeddings=tie_embeddings, norm_eps=1e-6, qkv_bias=True)


def _gemma2(n_layer: int, n_head: int, n_kv_head: int, n_embd: int, ffn_hidden: int, *,
            query_pre_attn_scalar: int | None = None) -> ModelConfig:
    # Gemma Team 2024 (Gemma 2): heads of 256, GeGLU, sandwich (1 + w) RMSNorms, embeddings × √width,
    # sliding-window (4096) and global layers alternating, scores capped at 50 and logits at 30,
    # a tied 256,000-token vocabulary and an 8192-token context
    return ModelConfig(n_layer=n_layer, n_head=n_head, n_kv_head=n_kv_head, n_embd=n_embd, head_dim=256,
                       block_size=8192, vocab_size=256000, dropout=0.0, bias=False, norm="rmsnorm_offset",
                       norm_placement="sandwich", norm_eps=1e-6, position="rope", rope_theta=10000.0, ffn="geglu",
                       ffn_hidden=ffn_hidden, tie_embeddings=True, embed_scale=True, attention="local_global",
                       window=4096, global_every=2, attn_softcap=50.0, final_softcap=30.0,
                       query_pre_attn_scalar=query_pre_attn_scalar)


def _mixtral(n_layer: int, n_head: int, n_embd: int, ffn_hidden: int, **kw) -> ModelConfig:
    # Jiang et al. 2024: every FFN 8 SwiGLU experts, top-2, renormalised, dropless
    return _llama(n_layer, n_head, n_embd, ffn_hidden, n_kv_head=8, rope_theta=1e6, n_expert=8, top_k=2,
                  capacity_factor=0.0, **kw)


PRESETS = {
    "gpt2": Preset(_gpt2(12, 12, 768), "GPT-2 small, 124M", "Radford et al. 2019; huggingface.co/gpt2"),
    "gpt2-medium": Preset(_gpt2(24, 16, 1024), "GPT-2 medium, 355M", "Radford et al. 2019; huggingface.co/gpt2-medium"),
    "gpt2-large": Preset(_gpt2(36, 20, 1280), "GPT-2 large, 774M", "Radford et al. 2019; huggingface.co/gpt2-large"),
    "gpt2-xl": Preset(_gpt2(48, 25, 1600), "GPT-2 XL, 1.5B", "Radford et al. 2019; huggingface.co/gpt2-xl"),
    "bert-base": Preset(_bert(12, 12, 768), "BERT base (uncased), 110M, with its MLM head",
                        "Devlin et al. 2019; huggingface.co/bert-base-uncased"),
    "bert-large": Preset(_bert(24, 16, 1024), "BERT large (uncased), 340M, with its MLM head",
                         "Devlin et al. 2019; huggingface.co/bert-large-uncased"),
    "t5-base": Preset(_t5(12, 12, 768), "T5 base (v1.0), 220M encoder-decoder",
                      "Raffel et al. 2020; huggingface.co/google-t5/t5-base"),
    "t5-large": Preset(_t5(24, 16, 1024), "T5 large (v1.0), 740M encoder-decoder",
                       "Raffel et al. 2020; huggingface.co/google-t5/t5-large"),
    "llama-2-7b": Preset(_llama(32, 32, 4096, 11008), "Llama 2 7B",
                         "Touvron et al. 2023, Llama 2; huggingface.co/meta-llama/Llama-2-7b-hf"),
    "llama-2-13b": Preset(_llama(40, 40, 5120, 13824), "Llama 2 13B",
                          "Touvron et al. 2023, Llama 2; huggingface.co/meta-llama/Llama-2-13b-hf"),
    "llama-2-70b": Preset(_llama(80, 64, 8192, 28672, n_kv_head=8), "Llama 2 70B, grouped-query attention",
                          "Touvron et al. 2023, Llama 2; huggingface.co/meta-llama/Llama-2-70b-hf"),
    "llama-3-8b": Preset(_llama(32, 32, 4096, 14336, n_kv_head=8, block_size=8192, vocab_size=128256,
                                rope_theta=500000.0), "Llama 3 8B, 128K-token vocabulary",
                         "Llama Team 2024, The Llama 3 Herd of Models; huggingface.co/meta-llama/Meta-Llama-3-8B"),
    "llama-3-70b": Preset(_llama(80, 64, 8192, 28672, n_kv_head=8, block_size=8192, vocab_size=128256,
                                 rope_theta=500000.0), "Llama 3 70B",
                          "Llama Team 2024, The Llama 3 Herd of Models; huggingface.co/meta-llama/Meta-Llama-3-70B"),
    "llama-3-405b": Preset(_llama(126, 128, 16384, 53248, n_kv_head=8, block_size=8192, vocab_size=128256,
                                  rope_theta=500000.0), "Llama 3.1 405B at its 8K pre-training context",
                           "Llama Team 2024, The Llama 3 Herd of Models, Table 3; "
                           "huggingface.co/meta-llama/Llama-3.1-405B"),
    "mistral-7b": Preset(_llama(32, 32, 4096, 14336, n_kv_head=8, block_size=32768, attention="sliding",
                                window=4096), "Mistral 7B v0.1, 4096-token sliding window",
                         "Jiang et al. 2023, Mistral 7B; huggingface.co/mistralai/Mistral-7B-v0.1"),
    "mixtral-8x7b": Preset(_mixtral(32, 32, 4096, 14336, block_size=32768, aux_loss_coef=0.02),
                           "Mixtral 8x7B: 47B parameters, 13B active per token",
                           "Jiang et al. 2024, Mixtral of Experts; huggingface.co/mistralai/Mixtral-8x7B-v0.1"),
    "mixtral-8x22b": Preset(_mixtral(56, 48, 6144, 16384, block_size=65536, vocab_size=32768,
                                     aux_loss_coef=0.001), "Mixtral 8x22B: 141B parameters, 39B active per token",
                            "Mistral AI 2024; huggingface.co/mistralai/Mixtral-8x22B-v0.1"),
    # heads of 128 in a 5120 stream: q_proj and o_proj are 4096 × 5120, not square
    "mistral-nemo-12b": Preset(_llama(40, 32, 5120, 14336, n_kv_head=8, head_dim=128, block_size=128000,
                                      vocab_size=131072, rope_theta=1e6), "Mistral-NeMo 12B, heads of 128 in a "
                               "5120 width, 128K context",
                               "Mistral AI and NVIDIA 2024; huggingface.co/mistralai/Mistral-Nemo-Base-2407"),
    "smollm2-135m": Preset(_smollm2(30, 9, 3, 576, 1536), "SmolLM2-135M: 30 layers, 9 heads sharing 3 KV heads, "
                           "tied embeddings",
                           "Allal et al. 2025, SmolLM2; huggingface.co/HuggingFaceTB/SmolLM2-135M"),
    "smollm2-360m": Preset(_smollm2(32, 15, 5, 960, 2560), "SmolLM2-360M: 32 layers, 15 heads sharing 5 KV heads, "
                           "tied embeddings",
                           "Allal et al. 2025, SmolLM2; huggingface.co/HuggingFaceTB/SmolLM2-360M"),
    "smollm2-1.7b": Preset(_smollm2(24, 32, 32, 2048, 8192, rope_theta=130000.0),
                           "SmolLM2-1.7B: 24 layers, 32 heads (no grouping), tied embeddings",
                           "Allal et al. 2025, SmolLM2; huggingface.co/HuggingFaceTB/SmolLM2-1.7B"),
    "qwen2.5-0.5b": Preset(_qwen2(24, 14, 2, 896, 4864, tie_embeddings=True),
                           "Qwen2.5-0.5B: 24 layers, 14 heads sharing 2 KV heads, q/k/v biases, tied embeddings",
                           "Qwen Team 2024, Qwen2.5 Technical Report; huggingface.co/Qwen/Qwen2.5-0.5B"),
    "gemma-2-2b": Preset(_gemma2(26, 8, 4, 2304, 9216),
                         "Gemma 2 2B: 26 layers alternating a 4096-token window and global attention, 8 heads of "
                         "256, soft-capped",
                         "Gemma Team 2024, Gemma 2: Improving Open Language Models at a Practical Size; "
                         "huggingface.co/google/gemma-2-2b"),
    # Phi-3's fused qkv_proj and gate_up_proj are only storage: the maths is Mistral's
    "phi-3-mini": Preset(_llama(32, 32, 3072, 8192, vocab_size=32064, attention="sliding", window=2047),
                         "Phi-3-mini-4k, 3.8B, 2047-token sliding window",
                         "Abdin et al. 2024, Phi-3 Technical Report; "
                         "huggingface.co/microsoft/Phi-3-mini-4k-instruct"),
}
