"""LoRA adapters on the engine's ``Decoder`` through ``peft``.

The Decoder's projections carry transformers' names (``h.<i>.attn.q_proj``, ``h.<i>.mlp.gate_proj``
...), so ``peft.get_peft_model`` wraps it directly with ``target_modules`` such as
``["q_proj", "v_proj"]``: each chosen ``nn.Linear`` W becomes peft's ``lora.Linear`` computing
W·x + (alpha / r)·B·A·dropout(x), with A (r, in) initialised as Kaiming-uniform and B (out, r) zero,
so training starts from the pretrained model exactly. The base weights are frozen. In inference
(no autograd) the engine's fused q/k/v and gate/up matmuls (``nn.cache.joint_linear``) see that a
projection is wrapped and call it instead of reading its weight, so generation includes the
adapters.

An adapter is saved as ``adapter_model.safetensors`` (peft's state dict of the adapter: keys
``base_model.model.h.0.attn.q_proj.lora_A.weight`` ...) beside ``adapter.json`` (its settings and
the base model's name); ``load_adapter`` applies one to a fresh base model.
"""

from __future__ import annotations

import json
import os

import torch
import torch.nn as nn

from .config import LoraSettings

ADAPTER_FILE, ADAPTER_META = "adapter_model.safetensors", "adapter.json"
FORMAT = "llm-explorer-lora/1"


def peft_config(settings: LoraSettings, **extra):
    import peft

    return peft.LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                           target_modules=list(settings.target_modules), bias="none", **extra)


def apply_lora(model: nn.Module, settings: LoraSettings):
    """``model`` (modified in place: its projections are replaced) wrapped in a ``peft.PeftModel``
    whose only trainable parameters are the adapters'."""
    import peft

    return peft.get_peft_model(model, peft_config(settings))


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, all) parameters."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def adapter_state(peft_model) -> dict[str, torch.Tensor]:
    """The adapter's tensors (peft's names, without the adapter's name "default")."""
    import peft

    return {k: v.detach().cpu().contiguous() for k, v in peft.get_peft_model_state_dict(peft_model).items()}


def save_adapter(peft_model, directory: str, *, settings: LoraSettings, base: str, extra: dict | None = None) -> str:
    """Write ``adapter_model.safetensors`` and ``adapter.json`` into ``directory``; returns the
    weights file's path."""
    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, ADAPTER_FILE)
    save_file(adapter_state(peft_model), path, metadata={"format": FORMAT, "base": base})
    trainable, total = trainable_parameters(peft_model)
    meta = {"format": FORMAT, "base": base, "lora": settings.to_dict(), "trainable": trainable, "total": total,
            **(extra or {})}
    with open(os.path.join(directory, ADAPTER_META), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
    return path


def read_meta(directory: str) -> dict:
    with open(os.path.join(directory, ADAPTER_META), encoding="utf-8") as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{directory} holds no LoRA adapter of this app (format {meta.get('format')!r})")
    return meta


def load_adapter(model: nn.Module, directory: str):
    """``model`` (a fresh base model; modified in place) with the adapter saved in ``directory``:
    a ``PeftModel`` in eval mode."""
    import peft
    from safetensors.torch import load_file

    meta = read_meta(directory)
    peft_model = apply_lora(model, LoraSettings(**meta["lora"]))
    result = peft.set_peft_model_state_dict(peft_model, load_file(os.path.join(directory, ADAPTER_FILE)))
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing or result.unexpected_keys:
        raise ValueError(f"the adapter in {directory} does not fit the model: missing {missing[:3]}, "
                         f"unexpected {list(result.unexpected_keys)[:3]}")
    return peft_model.eval()


def merged(peft_model) -> nn.Module:
    """The base ``Decoder`` with each adapter added into its weight (W + (alpha / r)·B·A) and
    the wrappers removed: a plain model again (peft's ``merge_and_unload``)."""
    return peft_model.merge_and_unload()
