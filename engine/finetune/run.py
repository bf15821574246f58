"""``finetune(spec)``: SFT or DPO of a pretrained decoder, with LoRA adapters or all weights.

The run emits the training events (``engine.config.events``: "start", "step", "eval", "end")
so a job page draws its loss curve as for any training job, plus "answers" (the model's greedy
answers to ``spec.prompts`` through its chat template, before training and after) and "adapter"
(what was saved). The objectives are the engine's: ``objectives.ChatSFT`` (next-token loss on the
responses only) and ``preference.DPO`` (the DPO loss against a reference). With LoRA the DPO
reference is the same model with its adapters switched off (peft's ``disable_adapter``): the
pretrained weights, without a second copy of them.

Saved into ``out_dir``: with LoRA the adapter (``lora.save_adapter``: adapter_model.safetensors,
adapter.json); a full fine-tune's weights as ``model.safetensors`` with the same adapter.json
(method "full"). Cancelling (``should_stop``) ends the run after its step with what it has
trained so far saved, and no answers after.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch
import torch.nn as nn

from ..interop.pretrained import chat, load_smollm2
from ..nn.device import DEVICES
from ..training.optim import lr_at
from ..training.preference import DPO, frozen
from .config import FinetuneSpec
from .data import load_examples
from .lora import ADAPTER_META, FORMAT, apply_lora, save_adapter, trainable_parameters

FULL_WEIGHTS = "model.safetensors"
EVAL_SAMPLE_TOKENS = 32  # the eval event's sample: the first held-out prompt, answered greedily


@dataclass
class FinetuneResult:
    model: nn.Module  # the PeftModel (LoRA) or the Decoder (full), in eval mode
    tokenizer: object
    steps_done: int
    cancelled: bool
    trainable: int
    total: int
    train_losses: list[float] = field(default_factory=list)
    val_losses: list[tuple[int, float]] = field(default_factory=list)
    answers_before: list[dict] = field(default_factory=list)
    answers_after: list[dict] = field(default_factory=list)
    reason: str = "completed"
    seconds: float = 0.0  # the training steps' wall time (no answers, no evaluations)


def _finite(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


class AdaptersOff(nn.Module):
    """DPO's reference for a LoRA run: the policy with its adapters switched off."""

    def __init__(self, peft_model):
        super().__init__()
        self.peft_model = [peft_model]  # not a submodule: its parameters are the policy's

    def forward(self, x):
        model = self.peft_model[0]
        training = model.training
        model.eval()  # no adapter dropout; the base has none
        try:
            with model.disable_adapter():
                return model(x)
        finally:
            model.train(training)


def answer_prompts(model, tokenizer, prompts, max_new_tokens: int) -> list[dict]:
    """Greedy answers through the chat template: [{prompt, answer, seconds}]."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    training = base.training
    base.eval()
    out = []
    for prompt in prompts:
        t0 = time.perf_counter()
        answer = chat(base, tokenizer, prompt, max_new_tokens=max_new_tokens)
        out.append({"prompt": prompt, "answer": answer, "seconds": time.perf_counter() - t0})
    base.train(training)
    return out


def finetune(spec: FinetuneSpec, *, on_event: Callable[[dict], None] | None = None,
             should_stop: Callable[[], bool] | None = None, out_dir: str | None = None,
             model: nn.Module | None = None, tokenizer=None, answers: bool = True) -> FinetuneResult:
    """Fine-tune ``spec.base`` (or ``model`` with ``tokenizer``: modified in place) as ``spec`` says;
    see the module docstring. ``answers=False`` skips the before/after answers."""
    emit = on_event or (lambda event: None)
    t_cfg = spec.train
    if model is None:
        model, tokenizer = load_smollm2(reuse=False)  # a fresh copy: LoRA replaces its projections
    device = DEVICES[t_cfg.device]()
    model = model.to(device)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else contextlib.nullcontext
    data = load_examples(spec, tokenizer)
    torch.manual_seed(t_cfg.seed)  # the adapters' initialisation and dropout
    batches = torch.Generator().manual_seed(t_cfg.seed)

    start = time.perf_counter()
    described = data.describe()
    base_params = sum(p.numel() for p in model.parameters())
    if spec.method == "lora":
        model.requires_grad_(False)
        policy = apply_lora(model, spec.lora)
    else:
        model.requires_grad_(True)
        policy = model
    trainable, total = trainable_parameters(policy)
    n_rows, length = data.get_batch("train", t_cfg.batch_size, spec.data.max_tokens,
                                    torch.Generator().manual_seed(0))[0].shape
    emit({"kind": "start", "total_steps": t_cfg.steps, "device": str(device), "params": base_params,
          "vocab_size": tokenizer.vocab_size, "tokens_per_step": n_rows * length,
          "train_tokens": described["train_tokens"], "val_tokens": described["val_tokens"],
          "peak_flops": None, "peak_source": None})
    result = FinetuneResult(model=policy, tokenizer=tokenizer, steps_done=0, cancelled=False,
                            trainable=trainable, total=total)
    base = policy.get_base_model() if spec.method == "lora" else policy
    if answers and spec.prompts:
        result.answers_before = answer_prompts(base, tokenizer, spec.prompts, spec.max_new_tokens)
        emit({"kind": "answers", "phase": "before", "step": 0, "answers": result.answers_before,
              "max_new_tokens": spec.max_new_tokens})

    shape = SimpleNamespace(block_size=spec.data.max_tokens)
    if spec.objective == "dpo":
        objective = DPO(data, shape, SimpleNamespace(dpo_beta=t_cfg.dpo_beta))
        objective.reference = AdaptersOff(policy) if spec.method == "lora" else frozen(policy)

        def forward(x, y):
            logits, _ = policy(x)
            loss, stats = objective.loss(logits, y, x)
            objective._pending.append(stats)
            return loss
    else:
        objective = None

        def forward(x, y):
            return policy(x, y)[1]

    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=t_cfg.lr, betas=(t_cfg.beta1, t_cfg.beta2),
                                  weight_decay=t_cfg.weight_decay)
    val_batches = data.eval_batches("val", t_cfg.batch_size, spec.data.max_tokens, 1)
    train_evals = data.eval_batches("train", t_cfg.batch_size, spec.data.max_tokens, 2)
    policy.train()
    step_times: list[float] = []
    final_val = None
    for step in range(1, t_cfg.steps + 1):
        if should_stop is not None and should_stop():
            result.cancelled, result.reason = True, "cancelled"
            break
        t0 = time.perf_counter()
        lr = lr_at(step, t_cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = (t.to(device) for t in data.get_batch("train", t_cfg.batch_size, spec.data.max_tokens, batches))
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = forward(x, y)
        loss.backward()
        grad_norm = float(nn.utils.clip_grad_norm_(params, t_cfg.grad_clip or math.inf))
        loss_value = loss.item()
        if math.isfinite(loss_value) and math.isfinite(grad_norm):
            optimizer.step()
        step_times.append(time.perf_counter() - t0)
        result.train_losses.append(loss_value)
        result.steps_done = step
        recent = step_times[-10:]
        step_time = sum(recent) / len(recent)
        is_eval = step % t_cfg.eval_interval == 0 or step == t_cfg.steps
        emit({"kind": "step", "step": step, "loss": _finite(loss_value), "lr": lr, "grad_norm": _finite(grad_norm),
              "tokens_per_s": x.numel() / step_time, "elapsed": time.perf_counter() - start,
              "eta": (t_cfg.steps - step) * step_time, "effective_batch": t_cfg.batch_size,
              "clipped": bool(t_cfg.grad_clip) and grad_norm > t_cfg.grad_clip, "update_ratio": None,
              "spike": False, "mfu": None, **(objective.step_metrics() if objective else {})})
        if is_eval:
            final_val = _evaluate(policy, objective, data, train_evals, val_batches, tokenizer, device, autocast,
                                  step, emit)
            result.val_losses.append((step, final_val if final_val is not None else math.nan))
    result.seconds = sum(step_times)
    policy.eval()
    if out_dir:
        _save(policy, spec, out_dir, result, emit)
    if answers and spec.prompts and not result.cancelled:
        result.answers_after = answer_prompts(policy, tokenizer, spec.prompts, spec.max_new_tokens)
        emit({"kind": "answers", "phase": "after", "step": result.steps_done, "answers": result.answers_after,
              "max_new_tokens": spec.max_new_tokens})
    emit({"kind": "end", "step": result.steps_done, "reason": result.reason, "elapsed": time.perf_counter() - start,
          "final_val_loss": final_val})
    return result


@torch.no_grad()
def _evaluate(policy, objective, data, train_evals, val_batches, tokenizer, device, autocast, step, emit):
    """The eval event: losses on fixed training batches and the held-out set, and the first
    held-out prompt answered greedily (its expected response beside it)."""
    on = lambda batches: [tuple(t.to(device) for t in b) for b in batches]  # noqa: E731
    extra, accuracy = {}, None
    if objective is not None:  # DPO: its loss and reward accuracy
        train_loss, _, _ = objective.evaluate(policy, on(train_evals), autocast)
        val_loss, accuracy, extra = objective.evaluate(policy, on(val_batches), autocast)
    else:
        policy.eval()
        losses = []
        for split in (train_evals, val_batches):
            total = 0.0
            for x, y in on(split):
                with autocast():
                    total += policy(x, y)[1].item()
            losses.append(total / len(split))
        train_loss, val_loss = losses
    prompt_ids, expected = data.val_examples[0][0], data.val_examples[0][1]
    base = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
    base.eval()
    out = base.generate(torch.tensor([prompt_ids], device=device), EVAL_SAMPLE_TOKENS, temperature=0.0,
                        stop_token=tokenizer.eos_token_id)
    policy.train()
    prompt_text = tokenizer.decode(prompt_ids, skip_special_tokens=False)
    emit({"kind": "eval", "step": step, "train_loss": _finite(train_loss), "val_loss": _finite(val_loss),
          "accuracy": accuracy,
          "sample": {"prompt": prompt_text.rsplit("<|im_start|>user\n", 1)[-1].removesuffix("<|im_end|>\n<|im_start|>assistant\n"),
                     "completion": tokenizer.decode(out[0, len(prompt_ids):].tolist()),
                     "expected": tokenizer.decode(expected)},
          **extra})
    return _finite(val_loss)


def _save(policy, spec: FinetuneSpec, out_dir: str, result: FinetuneResult, emit) -> None:
    base = policy.get_base_model() if spec.method == "lora" else policy
    extra = {"spec": spec.to_dict(), "step": result.steps_done, "method": spec.method,
             "base_config": base.config.to_dict()}
    if spec.method == "lora":
        save_adapter(policy, out_dir, settings=spec.lora, base=spec.base, extra=extra)
        files = ["adapter_model.safetensors", ADAPTER_META]
    else:
        from safetensors.torch import save_model

        os.makedirs(out_dir, exist_ok=True)
        save_model(policy, os.path.join(out_dir, FULL_WEIGHTS))
        with open(os.path.join(out_dir, ADAPTER_META), "w", encoding="utf-8") as f:
            json.dump({"format": FORMAT, "base": spec.base, "lora": None, "trainable": result.trainable,
                       "total": result.total, **extra}, f, indent=1)
        files = [FULL_WEIGHTS, ADAPTER_META]
    emit({"kind": "adapter", "step": result.steps_done, "method": spec.method, "files": files,
          "bytes": sum(os.path.getsize(os.path.join(out_dir, f)) for f in files),
          "trainable": result.trainable, "total": result.total})
