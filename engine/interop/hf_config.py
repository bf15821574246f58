"""A ``transformers`` config dict (a checkpoint's ``config.json``) as our ``ModelConfig``.

    cfg = config_from_hf(json.load(open("config.json")))
    analyze(cfg)["params"]["total"]

No weights and no download: the dict goes through its ``transformers`` config class (which
fills the defaults and the legacy keys, such as ``rope_scaling``, the way a checkpoint load
does) and then through the interop mapping's ``engine_config``, so what imports here is what
``from_transformers`` would build. Settings we cannot express raise ``ValueError`` naming the
field and what is supported. The context and width bounds of the composer are not checked:
a 70B model's config is fine to analyse.
"""

from __future__ import annotations

from ..config.schema import ModelConfig
from .mappings import MAPPINGS


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
    hf = getattr(transformers, mapping.hf_class).config_class(**fields)
    for field, (types, why) in UNEXPRESSED.items():
        if model_type in types and getattr(hf, field, False):
            raise ValueError(f"{model_type} {field}={getattr(hf, field)!r} is not supported ({why}); "
                             "choose from [False]")
    return ModelConfig(**mapping.engine_config(hf))


# Flags the mappings' ``engine_config`` does not read but that change the architecture, with
# the model types where they do: field -> (model types, what it would add).
UNEXPRESSED = {
    "add_cross_attention": (("gpt2", "bert"), "a cross-attention in every block"),
    "is_decoder": (("bert",), "a causal mask on an encoder"),
}
