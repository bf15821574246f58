"""A fine-tune as files others load: a merged ``transformers`` model directory, or a PEFT adapter
directory for ``peft`` + ``transformers``.

``export_merged(saved_dir, out_dir)``: the base model with the adapter added into its weights
(or a full fine-tune's weights) through ``engine.interop.to_transformers`` and ``save_pretrained``
(config.json, model.safetensors), plus the base's tokenizer files (tokenizer.json,
tokenizer_config.json, chat_template.jinja ...): ``AutoModelForCausalLM.from_pretrained(out_dir)``
and ``AutoTokenizer.from_pretrained(out_dir)`` load it, logits equal to ours.

``export_peft(saved_dir, out_dir)``: adapter_config.json (peft's ``LoraConfig``, task
"CAUSAL_LM") and adapter_model.safetensors with each tensor renamed from our module path to
transformers' (``h.3.attn.q_proj`` -> ``model.layers.3.self_attn.q_proj``, from the interop
mapping's tensor names): ``PeftModel.from_pretrained(LlamaForCausalLM(base config), out_dir)``
loads it onto the base model (``base_config.json`` is the base's config.json).
"""

from __future__ import annotations

import json
import os
import shutil

import torch.nn as nn

from ..interop.mappings import MAPPINGS, _hf_classes, to_transformers
from ..interop.pretrained import load_smollm2
from .lora import ADAPTER_FILE, load_adapter, merged, read_meta
from .run import FULL_WEIGHTS

# the Hugging Face name of each base (adapter_config.json's base_model_name_or_path)
HF_NAMES = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")


def _base(meta: dict, base_model: nn.Module | None, tokenizer):
    if base_model is not None:
        return base_model, tokenizer
    if meta["base"] != "smollm2-135m-instruct":
        raise ValueError(f"unknown base model {meta['base']!r}")
    return load_smollm2(reuse=False)


def merged_model(saved_dir: str, *, base_model: nn.Module | None = None, tokenizer=None):
    """(the fine-tuned Decoder with the adapter merged in, its tokenizer, the saved metadata)."""
    meta = read_meta(saved_dir)
    model, tokenizer = _base(meta, base_model, tokenizer)
    if meta.get("lora"):  # a LoRA adapter (a full fine-tune saved its weights)
        model = merged(load_adapter(model, saved_dir))
    else:
        from safetensors.torch import load_model

        load_model(model, os.path.join(saved_dir, FULL_WEIGHTS))
    return model.eval(), tokenizer, meta


def _copy_tokenizer(tokenizer, out_dir: str) -> None:
    directory = getattr(tokenizer, "directory", None)
    for name in TOKENIZER_FILES:
        if directory is not None and os.path.exists(os.path.join(directory, name)):
            shutil.copyfile(os.path.join(directory, name), os.path.join(out_dir, name))


def export_merged(saved_dir: str, out_dir: str, *, base_model: nn.Module | None = None, tokenizer=None) -> dict:
    """Write the merged ``transformers`` directory (see the module docstring); {"model_type", "files"}."""
    model, tokenizer, _ = merged_model(saved_dir, base_model=base_model, tokenizer=tokenizer)
    hf_model = to_transformers(model)
    os.makedirs(out_dir, exist_ok=True)
    hf_model.save_pretrained(out_dir, safe_serialization=True)
    _copy_tokenizer(tokenizer, out_dir)
    return {"model_type": hf_model.config.model_type, "files": sorted(os.listdir(out_dir))}


def module_names(cfg) -> tuple[str, dict[str, str]]:
    """(model_type, {our module path: transformers' module path}) for the projections LoRA can
    wrap, from the first mapping that expresses ``cfg`` (a one-to-one, untransposed weight)."""
    for name, mapping in MAPPINGS.items():
        if not hasattr(mapping, "tensors") or mapping.problems(cfg):
            continue
        names = {}
        for t in mapping.tensors(cfg):
            if (not t.stacked and not t.transpose and len(t.ours) == 1 and t.hf.endswith(".weight")
                    and t.ours[0].endswith(".weight")):
                names[t.ours[0].removesuffix(".weight")] = t.hf.removesuffix(".weight")
        return name, names
    raise ValueError("this model has no transformers equivalent")


def peft_state(adapter: dict, names: dict[str, str]) -> dict:
    """Our adapter's peft keys (``base_model.model.h.0.attn.q_proj.lora_A.weight``) under the
    transformers model's module paths (``base_model.model.model.layers.0.self_attn.q_proj...``)."""
    out = {}
    prefix = "base_model.model."
    for key, value in adapter.items():
        module, _, rest = key.removeprefix(prefix).partition(".lora_")
        if module not in names:
            raise ValueError(f"no transformers name for {module!r}")
        out[f"{prefix}{names[module]}.lora_{rest}"] = value
    return out


def export_peft(saved_dir: str, out_dir: str, *, config=None) -> dict:
    """Write the PEFT adapter directory (see the module docstring); {"model_type", "files"}.
    ``config`` is the base's ``ModelConfig`` (when None: the one the run saved, else the registry's)."""
    from safetensors.torch import load_file, save_file

    from .lora import peft_config

    meta = read_meta(saved_dir)
    if not meta.get("lora"):
        raise ValueError("a full fine-tune has no adapter: export the merged model instead")
    if config is None and meta.get("base_config"):
        from ..config.schema import ModelConfig

        config = ModelConfig.from_dict(meta["base_config"])
    if config is None:
        from ..interop.pretrained import pretrained_config

        config = pretrained_config(meta["base"])
    from .config import LoraSettings

    settings = LoraSettings(**meta["lora"])
    model_type, names = module_names(config)
    os.makedirs(out_dir, exist_ok=True)
    save_file(peft_state(load_file(os.path.join(saved_dir, ADAPTER_FILE)), names),
              os.path.join(out_dir, ADAPTER_FILE), metadata={"format": "pt"})
    peft_config(settings, task_type="CAUSAL_LM",
                base_model_name_or_path=HF_NAMES.get(meta["base"], meta["base"])).save_pretrained(out_dir)
    mapping = MAPPINGS[model_type]
    config_cls, _ = _hf_classes(mapping)
    hf_config = config_cls(**mapping.hf_config(config))
    with open(os.path.join(out_dir, "base_config.json"), "w", encoding="utf-8") as f:
        json.dump(hf_config.to_dict(), f, indent=1)
    return {"model_type": model_type, "files": sorted(os.listdir(out_dir))}
