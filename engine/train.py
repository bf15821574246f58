"""The training loop: a ``JobSpec`` in, plain-dict events out.

The engine knows nothing of where events go; the caller's ``on_event`` stores or forwards
them. Event kinds (all values JSON-serialisable):

    start  total_steps, params, vocab_size, device, tokens_per_step, train_tokens, val_tokens
    step   step (1-based), loss, lr, grad_norm (before clipping), tokens_per_s, elapsed, eta;
           with experts also aux_loss (the weighted load-balancing + z-loss terms)
    moe    step, layers [{layer, tokens_per_expert, dropped, aux_loss, z_loss}] (experts only,
           every 10th step and every eval step, before the eval event)
    eval   step, train_loss, val_loss, accuracy, sample {prompt, completion, expected}; accuracy is
           the family's: decoder and encoder-decoder the exact-match rate of synthetic answers
           (None for text), encoder the share of masked tokens recovered (text included)
    end    step, reason ("completed" | "cancelled"), elapsed, final_val_loss (None before any eval)

Run from a shell: ``python -m engine.train spec.json`` (a tqdm bar, then the final numbers).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .config import JobSpec, TrainConfig, parse_spec
from .data import load_data
from .device import DEVICES
from .model import build_model
from .objectives import OBJECTIVES, exact_rows
from .tokenizers import Tokenizer


@dataclass
class TrainResult:
    model: nn.Module
    tokenizer: Tokenizer
    steps_done: int
    cancelled: bool
    train_losses: list[float] = field(default_factory=list)  # one per step
    val_losses: list[tuple[int, float]] = field(default_factory=list)  # (step, val_loss) per evaluation
    final_accuracy: float | None = None  # last evaluation's held-out accuracy; None where not scored


def _finite(x: float) -> float | None:
    # a diverged run's NaN or inf would make the event invalid JSON (and PostgreSQL refuses it)
    x = float(x)
    return x if math.isfinite(x) else None


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``lr``, then cosine decay to ``lr * min_lr_ratio`` at the last step
    (nanoGPT's schedule, after Loshchilov & Hutter 2017). ``step`` is 1-based."""
    if step <= cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    coeff = 0.5 * (1.0 + math.cos(math.pi * progress))  # 1 -> 0
    min_lr = cfg.lr * cfg.min_lr_ratio
    return min_lr + coeff * (cfg.lr - min_lr)


def configure_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    # decay matrices only: shrinking biases and norm gains towards 0 only hurts (nanoGPT, GPT-3)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    # beta2 0.95 rather than 0.999: steadier with small batches and short runs (GPT-3, nanoGPT)
    # fused: one kernel per step for all parameters, on CPU as on CUDA (about 4x faster than
    # the per-tensor loop, measured on the benchmark models)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), fused=device.type in ("cpu", "cuda"))


@torch.no_grad()
def evaluate(model: nn.Module, batches, autocast, score=None) -> tuple[float, float]:
    """Mean loss over ``batches`` (tuples ``(*inputs, targets)``) and the accuracy
    Σ hits / Σ count of ``score(logits, targets)``; by default the fraction of rows whose every
    target token is the argmax (``objectives.exact_rows``)."""
    score = score or exact_rows
    model.eval()
    losses, hits, count = [], 0, 0
    for batch in batches:
        with autocast():
            logits, loss = model(*batch)
        losses.append(loss.item() - model.aux_loss)  # the language-model loss, without MoE's terms
        h, n = score(logits, batch[-1])
        hits, count = hits + h, count + n
    model.train()
    return sum(losses) / len(losses), hits / max(1, count)


def train(
    spec: JobSpec,
    *,
    on_event: Callable[[dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: bool = False,
) -> TrainResult:
    """Train the model ``spec`` describes; see the module docstring for the events.

    Seeded: the same spec gives the same losses on CPU. ``should_stop()`` is polled before
    every step; when it returns True the run ends with reason "cancelled"."""
    spec = parse_spec(spec.to_dict())  # validate (again) and resolve vocab_size; cheap, data is cached
    m_cfg, d_cfg, t_cfg = spec.model, spec.data, spec.train
    emit = on_event or (lambda event: None)
    device = DEVICES[t_cfg.device]()
    if device.type == "cuda":
        # bf16 keeps fp32's exponent range, so unlike fp16 no loss scaling is needed
        autocast = lambda: torch.autocast(device_type="cuda", dtype=torch.bfloat16)  # noqa: E731
    else:
        autocast = contextlib.nullcontext

    torch.manual_seed(t_cfg.seed)  # initialisation and dropout
    data = load_data(d_cfg)
    objective = OBJECTIVES[m_cfg.family](data, m_cfg)
    model = build_model(m_cfg).to(device)
    # the training forward only: evaluation and sampling run other shapes, which would recompile
    forward = torch.compile(model) if t_cfg.compile else model
    optimizer = configure_optimizer(model, t_cfg, device)
    batches = torch.Generator().manual_seed(t_cfg.seed)  # batch order, apart from the global RNG
    train_evals = objective.eval_batches("train", t_cfg.batch_size, t_cfg.eval_iters)
    val_evals = objective.eval_batches("val", t_cfg.batch_size, t_cfg.eval_iters)
    # the tokens the model reads per step (an encoder-decoder's input and output)
    tokens_per_step = t_cfg.batch_size * sum(t.size(1) for t in train_evals[0][:-1])
    described = data.describe()

    start = time.perf_counter()
    emit({
        "kind": "start",
        "total_steps": t_cfg.steps,
        "params": model.num_params(),
        "vocab_size": m_cfg.vocab_size,
        "device": str(device),
        "tokens_per_step": tokens_per_step,
        "train_tokens": described["train_tokens"],
        "val_tokens": described["val_tokens"],
    })
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=t_cfg.steps, unit="step", dynamic_ncols=True)

    result = TrainResult(model=model, tokenizer=data.tokenizer, steps_done=0, cancelled=False)
    step_times = deque(maxlen=20)  # recent optimizer steps only, so evals do not distort tokens/s
    eval_times: list[float] = []
    pending_losses: list[float] = []
    pending_aux: list[float] = []
    moe = m_cfg.n_expert > 0
    final_val_loss = None
    model.train()
    for step in range(1, t_cfg.steps + 1):
        if should_stop is not None and should_stop():
            result.cancelled = True
            break
        t0 = time.perf_counter()
        lr = lr_at(step, t_cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = [t.to(device) for t in objective.get_batch("train", t_cfg.batch_size, batches)]
        with autocast():
            _, loss = forward(*batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # clip_grad_norm_ returns the norm before clipping; an infinite max only measures it
        grad_norm = nn.utils.clip_grad_norm_(model.parameters(), t_cfg.grad_clip or math.inf)
        optimizer.step()
        # also waits for the GPU, so the timing below is honest; reported without MoE's terms,
        # so that it compares with the validation loss
        loss_value = loss.item() - model.aux_loss
        step_times.append(time.perf_counter() - t0)
        result.train_losses.append(loss_value)
        result.steps_done = step
        pending_losses.append(loss_value)
        pending_aux.append(model.aux_loss)

        if step % t_cfg.log_interval == 0 or step == t_cfg.steps:
            elapsed = time.perf_counter() - start
            step_time = sum(step_times) / len(step_times)
            emit({
                "kind": "step",
                "step": step,
                "loss": _finite(sum(pending_losses) / len(pending_losses)),  # mean since the last step event
                "lr": lr,
                "grad_norm": _finite(grad_norm),
                "tokens_per_s": tokens_per_step / step_time,
                "elapsed": elapsed,
                "eta": _eta(step, t_cfg, step_time, eval_times),
                **({"aux_loss": _finite(sum(pending_aux) / len(pending_aux))} if moe else {}),
            })
            pending_losses.clear()
            pending_aux.clear()
        if t_cfg.compile and step == 1:  # that step compiled the model: keep it out of tokens/s and ETA
            step_times.clear()

        is_eval = step % t_cfg.eval_interval == 0 or step == t_cfg.steps
        if moe and (is_eval or step % 10 == 0):  # the routing of this step's training batch
            emit({"kind": "moe", "step": step, "layers": [
                {**layer, "aux_loss": _finite(layer["aux_loss"]), "z_loss": _finite(layer["z_loss"])}
                for layer in model.moe_stats()
            ]})
        if is_eval:
            t_eval = time.perf_counter()
            event = _evaluate(model, objective, train_evals, val_evals, spec, device, autocast, step)
            eval_times.append(time.perf_counter() - t_eval)
            final_val_loss = event["val_loss"]
            result.val_losses.append((step, final_val_loss if final_val_loss is not None else math.nan))
            result.final_accuracy = event["accuracy"]
            emit(event)
        if bar is not None:
            shown = {"loss": f"{loss_value:.3f}"}
            if final_val_loss is not None:
                shown["val_loss"] = f"{final_val_loss:.3f}"
            bar.set_postfix(shown, refresh=False)
            bar.update(1)

    if bar is not None:
        bar.close()
    model.eval()
    emit({
        "kind": "end",
        "step": result.steps_done,
        "reason": "cancelled" if result.cancelled else "completed",
        "elapsed": time.perf_counter() - start,
        "final_val_loss": final_val_loss,
    })
    return result


def _eta(step: int, cfg: TrainConfig, step_time: float, eval_times: list[float]) -> float:
    """Seconds left: remaining steps at the recent pace plus the evaluations still to come, each
    costing the mean of those so far (or, before the first, about eval_iters forward passes of
    each split, a forward being roughly a third of a training step)."""
    # evaluations at steps step..steps (this step's comes after its step event), and the final one
    remaining_evals = cfg.steps // cfg.eval_interval - (step - 1) // cfg.eval_interval
    if cfg.steps % cfg.eval_interval:
        remaining_evals += 1
    eval_time = sum(eval_times) / len(eval_times) if eval_times else 2 * cfg.eval_iters * step_time / 3
    return (cfg.steps - step) * step_time + remaining_evals * eval_time


def _evaluate(model, objective, train_evals, val_evals, spec: JobSpec, device, autocast, step: int) -> dict:
    on_device = lambda batches: [tuple(t.to(device) for t in b) for b in batches]  # noqa: E731
    train_loss, _ = evaluate(model, on_device(train_evals), autocast, objective.score)
    val_loss, accuracy = evaluate(model, on_device(val_evals), autocast, objective.score)
    model.eval()
    sample = objective.sample(model, device, autocast, spec.train.seed, spec.train.sample_tokens)
    model.train()
    return {
        "kind": "eval",
        "step": step,
        "train_loss": _finite(train_loss),
        "val_loss": _finite(val_loss),
        "accuracy": accuracy if objective.scored else None,
        "sample": sample,
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m engine.train spec.json``: train with a progress bar, print the final numbers."""
    import argparse
    import json

    from .errors import ConfigError

    parser = argparse.ArgumentParser(prog="python -m engine.train", description=main.__doc__)
    parser.add_argument("spec", help='JSON file: {"model": {...}, "data": {...}, "train": {...}}')
    args = parser.parse_args(argv)
    with open(args.spec, encoding="utf-8") as f:
        raw = json.load(f)
    try:
        spec = parse_spec(raw)
    except ConfigError as e:
        for name, message in e.errors.items():
            print(f"{name}: {message}")
        return 2
    result = train(spec, progress=True)
    print(f"steps: {result.steps_done}  params: {result.model.num_params():,}")
    print(f"final train loss: {result.train_losses[-1]:.4f}")
    if result.val_losses:
        print(f"final val loss: {result.val_losses[-1][1]:.4f}")
    if result.final_accuracy is not None:
        print(f"held-out accuracy: {result.final_accuracy:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
