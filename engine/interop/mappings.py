"""Weights in and out of Hugging Face ``transformers``.

    hf = to_transformers(model)            # our Decoder -> e.g. transformers.LlamaForCausalLM
    model = from_transformers(hf)          # and back; ``model.config`` is our ModelConfig

Both directions copy the weights (no sharing) and give the same logits to float32 rounding.
Each architecture is one entry of ``MAPPINGS`` (keyed by HF's ``model_type``), a small class
with the same four methods: ``problems(cfg)`` lists what keeps one of our configs from being
that architecture, ``hf_config``/``engine_config`` convert configs, and ``tensors(cfg)`` names
which of our tensors make each HF tensor.

Only the architecture travels. Training-only settings HF configs do not hold (init scheme,
z-loss coefficient, ...) take our defaults on import. Dropout maps to Llama's
``attention_dropout``, which HF applies to attention weights only (ours also drops on the
residual branches); inference is the same either way. ``transformers`` is imported lazily, so
``import engine`` does not pay for it.
"""

from __future__ import annotations

import torch.nn as nn

from ..config.errors import ConfigError
from ..config.schema import ModelConfig
from ..models.families import build_model
from ..nn.attention import ATTENTION_FUNCTIONS
from ..nn.ffn import FFNS
from .common import Tensor, _ffn_width, _need
from .encoders import T5, Bert


def _common_problems(cfg, *, gemma: bool = False) -> list[str]:
    """Features none of the mapped decoders has; with ``gemma``, those Gemma 2 lacks (it has the
    sandwich norms, soft-caps, scaled embeddings and its own score scale)."""
    p = []
    _need(cfg, "family", "decoder", p)
    _need(cfg, "qk_norm", False, p)
    if gemma:
        _need(cfg, "norm_placement", "sandwich", p, "Gemma 2 normalises each sublayer's input and output")
        _need(cfg, "embed_scale", True, p, "Gemma 2 scales its embeddings by √width")
    else:
        _need(cfg, "norm_placement", "pre", p)
        _need(cfg, "attn_softcap", 0.0, p)
        _need(cfg, "final_softcap", 0.0, p)
        _need(cfg, "embed_scale", False, p)
        _need(cfg, "query_pre_attn_scalar", (None, cfg.head_size), p)
    return p


def _attn_impl(hf_config) -> dict:
    # the HF kernel choice carries over when we have the same one; same maths either way
    impl = getattr(hf_config, "_attn_implementation", None)
    return {"attn_impl": impl} if impl in ATTENTION_FUNCTIONS else {}


# ---------------------------------------------------------------------------- GPT-2


class GPT2:
    """GPT-2 (Radford et al. 2019): learned positions, LayerNorm, tanh-GELU MLP, biases
    everywhere. HF keeps OpenAI's Conv1D layers, weights stored (in, out), and fuses q, k, v
    into one ``c_attn``."""

    model_type = "gpt2"
    hf_class = "GPT2LMHeadModel"

    @staticmethod
    def problems(cfg) -> list[str]:
        p = _common_problems(cfg)
        _need(cfg, "position", "learned", p)
        _need(cfg, "norm", "layernorm", p)
        _need(cfg, "ffn", "gelu", p)
        _need(cfg, "bias", True, p, "Conv1D always has a bias")
        _need(cfg, "qkv_bias", False, p)
        _need(cfg, "attention", "full", p)
        _need(cfg, "n_kv_head", (None, cfg.n_head), p)
        _need(cfg, "head_dim", (None, cfg.n_embd // cfg.n_head), p, "GPT-2's heads split the width")
        _need(cfg, "n_expert", 0, p)
        return p

    @staticmethod
    def hf_config(cfg) -> dict:
        return dict(
            vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
            n_head=cfg.n_head, n_inner=FFNS[cfg.ffn].hidden_dim(cfg), activation_function="gelu_new",
            resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
            layer_norm_epsilon=cfg.norm_eps, tie_word_embeddings=cfg.tie_embeddings,
            bos_token_id=None, eos_token_id=None,  # GPT-2's 50256 lies outside a small vocabulary
        )

    @staticmethod
    def engine_config(hf) -> dict:
        # gelu_new and gelu_pytorch_tanh are the same tanh approximation; exact "gelu" is not ours
        if hf.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"GPT-2 activation {hf.activation_function!r} is not supported; "
                             f"choose from ['gelu_new', 'gelu_pytorch_tanh']")
        if hf.scale_attn_by_inverse_layer_idx or not hf.scale_attn_weights:
            raise ValueError("GPT-2 attention must be scaled by 1/sqrt(head size), as ours is")
        if not (hf.resid_pdrop == hf.embd_pdrop == hf.attn_pdrop):
            raise ValueError("GPT-2 dropouts resid_pdrop, embd_pdrop and attn_pdrop must be equal (we have one)")
        cfg = dict(family="decoder", n_layer=hf.n_layer, n_head=hf.n_head, n_embd=hf.n_embd,
                   block_size=hf.n_positions, vocab_size=hf.vocab_size, dropout=float(hf.resid_pdrop),
                   bias=True, norm="layernorm", position="learned", ffn="gelu",
                   tie_embeddings=bool(hf.tie_word_embeddings))
        cfg["norm_eps"] = float(hf.layer_norm_epsilon)
        cfg.update(_ffn_width(cfg, hf.n_inner or 4 * hf.n_embd))
        return cfg

    @staticmethod
    def tensors(cfg) -> list[Tensor]:
        t = [Tensor("transformer.wte.weight", ("wte.weight",)),
             Tensor("transformer.wpe.weight", ("wpe.weight",)),
             Tensor("transformer.ln_f.weight", ("ln_f.weight",)),
             Tensor("transformer.ln_f.bias", ("ln_f.bias",)),
             Tensor("lm_head.weight", ("lm_head.weight",))]
        for i in range(cfg.n_layer):
            hf, us = f"transformer.h.{i}.", f"h.{i}."
            qkv = "q_proj", "k_proj", "v_proj"
            t += [Tensor(hf + "attn.c_attn.weight", tuple(f"{us}attn.{n}.weight" for n in qkv), transpose=True),
                  Tensor(hf + "attn.c_attn.bias", tuple(f"{us}attn.{n}.bias" for n in qkv))]
            for theirs, ours, transpose in [("attn.c_proj", "attn.o_proj", True), ("mlp.c_fc", "mlp.up_proj", True),
                                            ("mlp.c_proj", "mlp.down_proj", True), ("ln_1", "ln_1", False),
                                            ("ln_2", "ln_2", False)]:
                t += [Tensor(f"{hf}{theirs}.weight", (f"{us}{ours}.weight",), transpose=transpose),
                      Tensor(f"{hf}{theirs}.bias", (f"{us}{ours}.bias",))]
        return t


# ---------------------------------------------------------------------------- Llama family

# our rope_scaling names -> HF rope_type. HF's "dynamic" NTK changes the base with the current
# sequence length, so it is not our static "ntk" and has no entry.
ROPE_TYPES = {"none": "default", "linear": "linear", "yarn": "yarn"}


class Llama:
    """LLaMA (Touvron et al. 2023): RoPE, RMSNorm, SwiGLU, no biases, untied head, grouped-query
    attention (``num_key_value_heads``). Names already match ours apart from the prefixes."""

    model_type = "llama"
    hf_class = "LlamaForCausalLM"
    attentions = ("full",)
    biases = True  # LlamaConfig has attention_bias and mlp_bias
    qkv_bias = False  # biases on q, k and v alone (Qwen2's), which Llama's attention_bias cannot say
    experts = False
    norm, ffn, activation = "rmsnorm", "swiglu", "silu"  # our norm and FFN; HF's hidden_act

    @classmethod
    def problems(cls, cfg) -> list[str]:
        p = _common_problems(cfg, gemma=cls.model_type == "gemma2")
        _need(cfg, "position", "rope", p)
        _need(cfg, "norm", cls.norm, p)
        _need(cfg, "ffn", cls.ffn, p)
        _need(cfg, "attention", cls.attentions, p)
        _need(cfg, "rope_scaling", tuple(ROPE_TYPES), p)
        if not cls.biases:
            _need(cfg, "bias", False, p)
        if cls.qkv_bias:
            _need(cfg, "qkv_bias", True, p, f"{cls.model_type}'s q, k and v projections always have biases")
        else:
            _need(cfg, "qkv_bias", False, p, "attention_bias also puts one on o_proj" if cls.biases else "")
        if not cls.experts:
            _need(cfg, "n_expert", 0, p)
        elif cfg.n_expert < 1:
            p.append(f"n_expert={cfg.n_expert!r} (needs ≥ 1)")
        else:
            _need(cfg, "moe_every", 1, p, "every Mixtral layer is MoE")
            _need(cfg, "shared_expert", False, p)
            _need(cfg, "moe_renormalize", True, p)
            _need(cfg, "capacity_factor", 0.0, p, "Mixtral is dropless")
        return p

    @classmethod
    def hf_config(cls, cfg) -> dict:
        rope = {"rope_type": ROPE_TYPES[cfg.rope_scaling], "rope_theta": cfg.rope_theta}
        if cfg.rope_scaling != "none":
            rope["factor"] = cfg.rope_factor
        if cfg.rope_scaling == "yarn":
            rope["original_max_position_embeddings"] = cfg.rope_original_block_size or cfg.block_size
        d = dict(
            vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, intermediate_size=FFNS[cfg.ffn].hidden_dim(cfg),
            num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head,
            num_key_value_heads=cfg.n_kv_head or cfg.n_head, head_dim=cfg.head_size,
            max_position_embeddings=cfg.block_size,
            rms_norm_eps=cfg.norm_eps, tie_word_embeddings=cfg.tie_embeddings, rope_parameters=rope,
            attention_dropout=cfg.dropout, hidden_act="silu", bos_token_id=None, eos_token_id=None,
        )
        if cls.biases:
            d.update(attention_bias=cfg.bias, mlp_bias=cfg.bias)
        return d

    @classmethod
    def engine_config(cls, hf) -> dict:
        act = cls.hf_activation(hf)
        if act != cls.activation:
            raise ValueError(f"{cls.model_type} hidden_act {act!r} is not supported; choose from [{cls.activation!r}]")
        rope = dict(hf.rope_parameters or {})
        names = {v: k for k, v in ROPE_TYPES.items()}
        if rope.get("rope_type", "default") not in names:
            raise ValueError(f"rope_type {rope.get('rope_type')!r} is not supported; choose from {list(names)}")
        if rope.get("partial_rotary_factor", 1.0) != 1.0:
            raise ValueError("partial_rotary_factor must be 1.0 (ours rotates the whole head)")
        scaling = names[rope.get("rope_type", "default")]
        if scaling == "yarn":
            extra = {k: rope.get(k) for k in ("attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim")
                     if rope.get(k) not in (None, {"beta_fast": 32, "beta_slow": 1}.get(k))}
            if extra or rope.get("truncate", True) is not True:
                raise ValueError(f"yarn parameters {extra or {'truncate': rope.get('truncate')}} are not supported; "
                                 f"ours uses the paper's defaults")
        bias = cls.hf_bias(hf)
        cfg = dict(family="decoder", n_layer=hf.num_hidden_layers, n_head=hf.num_attention_heads,
                   n_embd=hf.hidden_size, block_size=hf.max_position_embeddings, vocab_size=hf.vocab_size,
                   dropout=float(hf.attention_dropout or 0.0), bias=bias, norm=cls.norm, position="rope",
                   ffn=cls.ffn, tie_embeddings=bool(hf.tie_word_embeddings),
                   rope_theta=float(rope.get("rope_theta", 10000.0)), rope_scaling=scaling,
                   norm_eps=float(hf.rms_norm_eps))
        kv = hf.num_key_value_heads
        cfg["n_kv_head"] = None if kv in (None, hf.num_attention_heads) else kv
        # an explicit head size (Mistral-NeMo: 32 heads of 128 in a 5120 stream) only when it is not the default
        head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
        cfg["head_dim"] = None if head_dim * hf.num_attention_heads == hf.hidden_size else head_dim
        if scaling != "none":
            cfg["rope_factor"] = float(rope["factor"])
        if scaling == "yarn":
            orig = rope.get("original_max_position_embeddings") or hf.max_position_embeddings
            cfg["rope_original_block_size"] = None if orig == hf.max_position_embeddings else orig
        cfg.update(cls.extra_engine_config(hf))
        cfg.update(_ffn_width(cfg, hf.intermediate_size))
        return cfg

    @staticmethod
    def hf_activation(hf) -> str:
        return hf.hidden_act

    @staticmethod
    def hf_bias(hf) -> bool:
        """Our ``bias`` for the HF config's bias switches."""
        bias = bool(getattr(hf, "attention_bias", False))
        if bias != bool(getattr(hf, "mlp_bias", False)):
            raise ValueError("attention_bias and mlp_bias must be equal (ours has one bias switch)")
        return bias

    @staticmethod
    def extra_engine_config(hf) -> dict:
        return {}

    # our norm of each HF norm in a layer (Gemma 2 adds the sandwich's two)
    layer_norms = {"input_layernorm": "ln_1", "post_attention_layernorm": "ln_2"}

    @classmethod
    def tensors(cls, cfg) -> list[Tensor]:
        t = [Tensor("model.embed_tokens.weight", ("wte.weight",)),
             Tensor("model.norm.weight", ("ln_f.weight",)),
             Tensor("lm_head.weight", ("lm_head.weight",))]
        for i in range(cfg.n_layer):
            hf, us = f"model.layers.{i}.", f"h.{i}."
            linears = [f"self_attn.{n}" for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
            t += [Tensor(f"{hf}{n}.weight", (f"{us}attn.{n[10:]}.weight",)) for n in linears]
            biased = linears[:3] if cfg.qkv_biased else []
            biased += linears[3:] if cfg.bias else []
            t += [Tensor(f"{hf}{n}.bias", (f"{us}attn.{n[10:]}.bias",)) for n in biased]
            t += [Tensor(f"{hf}{theirs}.weight", (f"{us}{ours}.weight",)) for theirs, ours in cls.layer_norms.items()]
            t += cls.ffn_tensors(cfg, hf, us)
        return t

    @staticmethod
    def ffn_tensors(cfg, hf: str, us: str) -> list[Tensor]:
        names = ("gate_proj", "up_proj", "down_proj")
        t = [Tensor(f"{hf}mlp.{n}.weight", (f"{us}mlp.{n}.weight",)) for n in names]
        if cfg.bias:
            t += [Tensor(f"{hf}mlp.{n}.bias", (f"{us}mlp.{n}.bias",)) for n in names]
        return t


class Mistral(Llama):
    """Mistral 7B (Jiang et al. 2023): LLaMA plus sliding-window attention, where each query
    sees the last ``sliding_window`` keys including itself (our "sliding" with ``window``);
    no bias switches."""

    model_type = "mistral"
    hf_class = "MistralForCausalLM"
    attentions = ("full", "sliding")
    biases = False

    @classmethod
    def hf_config(cls, cfg) -> dict:
        return {**super().hf_config(cfg), "sliding_window": cfg.window if cfg.attention == "sliding" else None}

    @staticmethod
    def extra_engine_config(hf) -> dict:
        window = getattr(hf, "sliding_window", None)
        return {"attention": "full"} if window is None else {"attention": "sliding", "window": window}


class Mixtral(Mistral):
    """Mixtral 8x7B (Jiang et al. 2024): Mistral with every FFN a top-2 mixture of SwiGLU
    experts, gate weights renormalised over the chosen two, no capacity limit (dropless).
    transformers 5 stores the experts fused: ``gate_up_proj`` (n_expert, 2*hidden, C) with the
    gate rows first, ``down_proj`` (n_expert, C, hidden); the router is ``mlp.gate``."""

    model_type = "mixtral"
    hf_class = "MixtralForCausalLM"
    experts = True

    @classmethod
    def hf_config(cls, cfg) -> dict:
        return {**super().hf_config(cfg), "num_local_experts": cfg.n_expert, "num_experts_per_tok": cfg.top_k,
                "router_aux_loss_coef": cfg.aux_loss_coef}

    @staticmethod
    def extra_engine_config(hf) -> dict:
        if getattr(hf, "router_jitter_noise", 0.0):
            raise ValueError("router_jitter_noise must be 0 (ours has no router noise)")
        return {**Mistral.extra_engine_config(hf), "n_expert": hf.num_local_experts,
                "top_k": hf.num_experts_per_tok, "capacity_factor": 0.0, "moe_every": 1,
                "moe_renormalize": True, "aux_loss_coef": float(hf.router_aux_loss_coef)}

    @staticmethod
    def ffn_tensors(cfg, hf: str, us: str) -> list[Tensor]:
        experts = range(cfg.n_expert)
        e = f"{us}mlp.experts."
        return [Tensor(f"{hf}mlp.gate.weight", (f"{us}mlp.router.weight",)),
                Tensor(f"{hf}mlp.experts.gate_up_proj",
                       tuple((f"{e}{i}.gate_proj.weight", f"{e}{i}.up_proj.weight") for i in experts), stacked=True),
                Tensor(f"{hf}mlp.experts.down_proj", tuple((f"{e}{i}.down_proj.weight",) for i in experts),
                       stacked=True)]


def _layer_types(hf) -> list[str]:
    """Each layer's "full_attention" or "sliding_attention" (transformers 5's ``layer_types``)."""
    types = list(getattr(hf, "layer_types", None) or ["full_attention"] * hf.num_hidden_layers)
    unknown = sorted(set(types) - {"full_attention", "sliding_attention"})
    if unknown:
        raise ValueError(f"layer_types {unknown} are not supported; choose from ['full_attention', "
                         f"'sliding_attention']")
    return types


def _attention_of(hf, types: list[str], *, interleaved: bool) -> dict:
    """Our ``attention`` (and ``window``, ``global_every``) for HF's per-layer types: all full, all
    sliding, or (``interleaved``) every n-th layer full and the rest sliding (Gemma 2's "local_global")."""
    sliding = [t == "sliding_attention" for t in types]
    if not any(sliding):
        return {"attention": "full"}
    window = {"window": hf.sliding_window}
    if all(sliding):
        return {"attention": "sliding", **window}
    for every in range(1, len(types) + 1):
        if interleaved and sliding == [(i + 1) % every != 0 for i in range(len(types))]:
            return {"attention": "local_global", "global_every": every, **window}
    kinds = "all full, all sliding, or every n-th layer full" if interleaved else "all full or all sliding"
    raise ValueError(f"{hf.model_type} layer_types {types} are not supported; ours are {kinds}")


def _layer_types_of(cfg) -> list[str]:
    """HF's ``layer_types`` for our ``attention``."""
    def is_global(i):
        if cfg.attention == "local_global":
            return (i + 1) % cfg.global_every == 0
        return cfg.attention == "full"
    return ["full_attention" if is_global(i) else "sliding_attention" for i in range(cfg.n_layer)]


class Qwen2(Llama):
    """Qwen2 and Qwen2.5 (Yang et al. 2024): LLaMA with biases on the q, k and v projections and
    none elsewhere (our ``qkv_bias``), RMSNorm eps 1e-6 and a large RoPE base. Its sliding window,
    when ``use_sliding_window``, covers the layers from ``max_window_layers`` on: we express it
    for all layers or none."""

    model_type = "qwen2"
    hf_class = "Qwen2ForCausalLM"
    attentions = ("full", "sliding")
    biases = False
    qkv_bias = True

    @classmethod
    def hf_config(cls, cfg) -> dict:
        sliding = cfg.attention == "sliding"
        return {**super().hf_config(cfg), "use_sliding_window": sliding,
                "sliding_window": cfg.window if sliding else None, "max_window_layers": 0,
                "layer_types": _layer_types_of(cfg)}

    @staticmethod
    def hf_bias(hf) -> bool:
        return False  # Qwen2's modelling hard-codes its biases: q, k and v (our qkv_bias), nothing else

    @staticmethod
    def extra_engine_config(hf) -> dict:
        return {"qkv_bias": True, **_attention_of(hf, _layer_types(hf), interleaved=False)}


class Gemma2(Llama):
    """Gemma 2 (Gemma Team 2024): a sandwich of RMSNorms around each sublayer, gains stored as
    (1 + w) (our ``rmsnorm_offset``), GeGLU with tanh-GELU, embeddings times √width
    (``embed_scale``), scores scaled by ``query_pre_attn_scalar ** -0.5``, soft-capped attention
    scores and logits, heads of ``head_dim`` (256), and local (sliding-window) and global layers
    alternating (our ``local_global``; transformers' ``layer_types``). transformers computes the
    soft-capped scores in its eager kernel only, as ours does."""

    model_type = "gemma2"
    hf_class = "Gemma2ForCausalLM"
    kernels = ("eager",)  # transformers' Gemma 2 has no SDPA path (it cannot soft-cap there)
    attentions = ("full", "sliding", "local_global")
    biases = False
    norm, ffn, activation = "rmsnorm_offset", "geglu", "gelu_pytorch_tanh"
    layer_norms = {"input_layernorm": "ln_1", "post_attention_layernorm": "post_attn_norm",
                   "pre_feedforward_layernorm": "ln_2", "post_feedforward_layernorm": "post_ffn_norm"}

    @classmethod
    def hf_config(cls, cfg) -> dict:
        d = {k: v for k, v in super().hf_config(cfg).items() if k not in ("hidden_act", "attention_bias", "mlp_bias")}
        return {**d, "hidden_activation": cls.activation, "attention_bias": False,
                "query_pre_attn_scalar": cfg.query_pre_attn_scalar or cfg.head_size,
                "attn_logit_softcapping": cfg.attn_softcap or None, "final_logit_softcapping": cfg.final_softcap or None,
                "sliding_window": cfg.window, "layer_types": _layer_types_of(cfg), "pad_token_id": None}

    @staticmethod
    def hf_activation(hf) -> str:
        return hf.hidden_activation

    @staticmethod
    def hf_bias(hf) -> bool:
        if getattr(hf, "attention_bias", False):
            raise ValueError("gemma2 attention_bias=True is not supported (ours would also bias the FFN); "
                             "choose from [False]")
        return False

    @staticmethod
    def extra_engine_config(hf) -> dict:
        if getattr(hf, "use_bidirectional_attention", False):
            raise ValueError("gemma2 use_bidirectional_attention=True is not supported (a decoder is causal); "
                             "choose from [False, None]")
        head = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
        scalar = hf.query_pre_attn_scalar
        return {"norm_placement": "sandwich", "embed_scale": True,
                "query_pre_attn_scalar": None if scalar == head else scalar,
                "attn_softcap": float(hf.attn_logit_softcapping or 0.0),
                "final_softcap": float(hf.final_logit_softcapping or 0.0),
                **_attention_of(hf, _layer_types(hf), interleaved=True)}


# ---------------------------------------------------------------------------- the two directions


def _hf_classes(mapping):
    import transformers

    model_cls = getattr(transformers, mapping.hf_class)
    return model_cls.config_class, model_cls


def to_transformers(model: nn.Module, model_type: str | None = None):
    """A ``transformers`` causal LM with a copy of ``model``'s weights, in eval mode. The
    architecture is ``model_type`` or, when None, the first of ``MAPPINGS`` that can express
    the config; ValueError says why none (or the chosen one) fits."""
    cfg = model.config
    if model_type is not None and model_type not in MAPPINGS:
        raise ValueError(f"unknown model_type {model_type!r}; choose from {list(MAPPINGS)}")
    candidates = [model_type] if model_type else list(MAPPINGS)
    reasons = {}
    for name in candidates:
        mapping = MAPPINGS[name]
        if problems := mapping.problems(cfg):
            reasons[name] = "; ".join(problems)
            continue
        config_cls, model_cls = _hf_classes(mapping)
        hf_config = config_cls(**mapping.hf_config(cfg))
        kernels = getattr(mapping, "kernels", ("sdpa", "eager"))
        hf_config._attn_implementation = cfg.attn_impl if cfg.attn_impl in kernels else kernels[0]
        hf_model = model_cls(hf_config)
        sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        hf_sd = {t.hf: t.to_hf(sd) for t in mapping.tensors(cfg)}
        hf_model.load_state_dict(hf_sd, strict=True)
        device = next(model.parameters()).device
        return hf_model.to(device).eval()
    detail = "; ".join(f"{k}: {v}" for k, v in reasons.items())
    raise ValueError(f"this model has no transformers equivalent ({detail})")


def from_transformers(hf_model) -> nn.Module:
    """Our model (``forward(idx, targets) -> (logits, loss)``, ``.config`` a ModelConfig) with a
    copy of a ``transformers`` causal LM's weights, in eval mode. ValueError for architectures
    or settings we cannot express, naming what is supported."""
    model_type = getattr(hf_model.config, "model_type", None)
    if model_type not in MAPPINGS:
        raise ValueError(f"unsupported transformers model_type {model_type!r}; choose from {list(MAPPINGS)}")
    mapping = MAPPINGS[model_type]
    # the kernel choice carries over where transformers offers both of ours (Gemma 2: eager only)
    impl = _attn_impl(hf_model.config) if len(getattr(mapping, "kernels", ("sdpa", "eager"))) > 1 else {}
    cfg = ModelConfig(**{**mapping.engine_config(hf_model.config), **impl})
    try:
        cfg.validate()  # e.g. a context or width beyond the explorer's bounds
    except ConfigError as e:
        raise ValueError(f"this {model_type} model is outside our config's bounds: {e}") from None
    model = build_model(cfg)
    template = model.state_dict()
    shapes = {k: tuple(v.shape) for k, v in template.items()}
    hf_sd = hf_model.state_dict()
    sd = dict(template)  # buffers we compute ourselves (if persistent) keep their values
    for t in mapping.tensors(cfg):
        sd.update({k: v.detach().cpu().clone() for k, v in t.from_hf(hf_sd[t.hf], shapes).items()})
    unset = {n for n, _ in model.named_parameters()} - {n for t in mapping.tensors(cfg) for n in _names(t)}
    if unset:
        raise RuntimeError(f"mapping {model_type} leaves parameters unset: {sorted(unset)}")
    model.load_state_dict(sd, strict=True)
    device = next(hf_model.parameters()).device
    return model.to(device).eval()


def _names(t: Tensor) -> list[str]:
    return [n for group in t.ours for n in group] if t.stacked else list(t.ours)


MAPPINGS = {"gpt2": GPT2, "llama": Llama, "mistral": Mistral, "mixtral": Mixtral, "qwen2": Qwen2, "gemma2": Gemma2,
            "bert": Bert, "t5": T5}
