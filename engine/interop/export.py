"""A training checkpoint as a ``transformers`` model directory."""

from __future__ import annotations

import json
import os

from ..training.checkpoint import load_model
from .mappings import to_transformers


def export_transformers(path: str, out_dir: str, model_type: str | None = None) -> dict:
    """Write the checkpoint as a ``transformers`` model directory (config.json and
    model.safetensors via ``save_pretrained``), plus the engine's tokenizer as
    ``explorer_tokenizer.json``; ValueError when no ``transformers`` architecture expresses it.
    Returns {"model_type", "files"}."""
    model, tokenizer, _ = load_model(path)
    hf_model = to_transformers(model, model_type)
    os.makedirs(out_dir, exist_ok=True)
    hf_model.save_pretrained(out_dir, safe_serialization=True)
    with open(os.path.join(out_dir, "explorer_tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer.to_dict(), f)
    return {"model_type": hf_model.config.model_type, "files": sorted(os.listdir(out_dir))}
