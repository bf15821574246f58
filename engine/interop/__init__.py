"""The top layer: our models and configs to and from ``transformers`` (imported only when a
function here is called). ``to_transformers(model)``, ``from_transformers(hf_model)`` and the
per-architecture ``MAPPINGS`` (``mappings``, with BERT and T5 in ``encoders``);
``config_from_hf(config_json_dict)`` (``hf_config``); real checkpoints, offline (``pretrained``:
the ``PRETRAINED`` registry, all-MiniLM-L6-v2 in our encoder, SmolLM2-135M-Instruct in our decoder)."""

from .hf_config import config_from_hf
from .mappings import MAPPINGS, from_transformers, to_transformers

__all__ = ["MAPPINGS", "to_transformers", "from_transformers", "config_from_hf"]
