"""A ``transformers`` config dict (a checkpoint's ``config.json``) as our ``ModelConfig``.

    cfg = config_from_hf(json.load(open("config.json")))
    analyze(cfg)["params"]["total"]

No weights and no download: the dict goes through its ``transformers`` config class (which
fills the defaults and the legacy keys, such as ``rope_scaling``, the way a checkpoint load
does) and then through the interop mapping's ``engine_config``, so what imports here is what
``from_transformers`` would build. Settings we cannot express raise ``ValueError`` naming the
field and what is supported; a value transformers' config class refuses (its strict dataclasses
raise their own error types, or a size of 0 divides by zero) raises ``ConfigError`` keyed by the
config.json field. The context and width bounds of the composer are not checked:
a 70B model's config is fine to analyse.
"""

from __future__ import annotations

import re

from ..config.errors import ConfigError
from ..config.schema import ModelConfig
from .mappings import MAPPINGS

# The config.json sizes of the mapped model types: a present, non-null one must be a positive
# integer (transformers checks some of them, in its own error types, and divides by others)
SIZE_FIELDS = frozenset({
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "max_position_embeddings", "num_local_experts", "num_experts_per_tok",
    "n_embd", "n_head", "n_layer", "n_positions", "n_inner", "n_ctx", "d_model", "d_ff", "d_kv", "num_heads",
    "num_layers", "num_decoder_layers", "type_vocab_size", "sliding_window",
    "relative_attention_num_buckets", "relative_attention_max_distance", "query_pre_attn_scalar",
})


def config_from_hf(d: dict) -> ModelConfig:
    """Our config for the HF config dict ``d``, whose ``model_type`` must be one of
    ``interop.MAPPINGS``; ValueError for anything else or for settings we lack."""
    import transformers

    if not isinstance(d, dict):
        raise ValueError(f"a transformers config must be a dict (got {type(d).__name__})")
    model_type = d.get("model_type")
    if model_type not in MAPPINGS:
        raise ValueError(f"unsupported model_type {model_type!r}; choose from {list(MAPPINGS)}")
    mapping = MAPPINGS[model_type]
    fields = {k: v for k, v in d.items() if k != "model_type"}
    bad = {k: f"must be a positive integer (got {v!r})" for k, v in fields.items()
           if k in SIZE_FIELDS and v is not None and (type(v) is not int or v < 1)}
    if bad:
        raise ConfigError(bad)
    try:
        hf = getattr(transformers, mapping.hf_class).config_class(**fields)
    except Exception as exc:  # noqa: BLE001 - huggingface_hub's StrictDataclass*Error are not ValueErrors
        raise _refused(model_type, exc) from None
    for field, (types, why) in UNEXPRESSED.items():
        if model_type in types and getattr(hf, field, False):
            raise ValueError(f"{model_type} {field}={getattr(hf, field)!r} is not supported ({why}); "
                             "choose from [False]")
    return ModelConfig(**mapping.engine_config(hf))


def _refused(model_type: str, exc: Exception) -> ConfigError:
    """transformers' refusal of a config.json, keyed by the field it names ("config" if none)."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    named = re.search(r"field '(\w+)'", message)
    cause = message.split(": ", 1)[1] if named and ": " in message else message
    return ConfigError({named.group(1) if named else "config": f"{model_type}: {cause}"})


# Flags the mappings' ``engine_config`` does not read but that change the architecture, with
# the model types where they do: field -> (model types, what it would add).
UNEXPRESSED = {
    "add_cross_attention": (("gpt2", "bert"), "a cross-attention in every block"),
    "is_decoder": (("bert",), "a causal mask on an encoder"),
}
