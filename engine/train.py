"""The training loop: a ``JobSpec`` in, plain-dict events out.

The engine knows nothing of where events go; the caller's ``on_event`` stores or forwards
them. The events ("start", "step", "health", "moe", "eval", "attention", "routing",
"nonfinite", "checkpoint", "end"), their keys and what each means are defined once, in
``engine.events`` (a table in docs/events.md); all values are JSON-serialisable, a non-finite
number is sent as None.

Run from a shell: ``python -m engine.train spec.json`` (a tqdm bar, then the final numbers).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .analysis import analyze
from .attention_maps import attention_event
from .checkpoint import (architecture_mismatch, load_optimizer, load_weights, read_checkpoint, restore_rng, rng_state,
                         SNAPSHOT_BYTES, save_checkpoint, save_snapshot)
from .config import JobSpec, ModelConfig, TrainConfig, parse_spec
from .data import load_data
from .device import DEVICES
from .errors import ConfigError
from .events import (CheckpointEvent, EndEvent, EvalEvent, Event, HealthEvent, HealthLayer, MoeEvent, MoeLayer,
                     NonfiniteEvent, StartEvent, StepEvent)
from .hardware import HARDWARE
from .model import build_model
from .objectives import build_objective, exact_rows
from .optim import configure_optimizer, lr_at  # noqa: F401 - lr_at and configure_optimizer are public here
from .tokenizers import Tokenizer

# A step's loss is a spike when it exceeds the mean of the previous SPIKE_WINDOW finite step
# losses by more than SPIKE_K standard deviations (judged once SPIKE_MIN_HISTORY are known). The
# falling trend of a healthy run keeps its losses below the window's mean, so 4σ flags real jumps.
SPIKE_WINDOW = 50
SPIKE_K = 4.0
SPIKE_MIN_HISTORY = 10
# "skip" and "lower_lr" end the run (reason "nonfinite") after this many non-finite steps in a
# row: the weights or the data are broken, and skipping forever would only fill the event log
MAX_NONFINITE_IN_A_ROW = 10


@dataclass
class TrainResult:
    model: nn.Module
    tokenizer: Tokenizer
    steps_done: int
    cancelled: bool
    train_losses: list[float] = field(default_factory=list)  # one per step
    val_losses: list[tuple[int, float]] = field(default_factory=list)  # (step, val_loss) per evaluation
    final_accuracy: float | None = None  # last evaluation's held-out accuracy; None where not scored
    reason: str = "completed"  # the end event's: "completed", "cancelled" or "nonfinite"
    message: str = ""  # why a "nonfinite" run stopped


def _finite(x: float) -> float | None:
    # a diverged run's NaN or inf would make the event invalid JSON (and PostgreSQL refuses it)
    x = float(x)
    return x if math.isfinite(x) else None


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


def accumulate_gradients(forward, model: nn.Module, micro_batches, n: int, autocast) -> tuple[torch.Tensor, float]:
    """Forward and backward ``n`` micro-batches (tuples ``(*inputs, targets)``), each loss divided
    by ``n``, so that the summed gradients are those of the mean loss: for equal micro-batches,
    the gradient of one batch ``n`` times as large. Returns that mean loss (a detached tensor, MoE
    terms included; no sync) and the mean of ``model.aux_loss``."""
    total, aux = None, 0.0
    for batch in micro_batches:
        with autocast():
            _, loss = forward(*batch)
        (loss if n == 1 else loss / n).backward()
        total = loss.detach() if total is None else total + loss.detach()
        aux += model.aux_loss
    return (total if n == 1 else total / n), aux / n


def _blocks(model: nn.Module) -> dict[str, list[torch.Tensor]]:
    """The parameters of each transformer block, by module name ("h.0", "enc_h.1"), in model order."""
    blocks: dict[str, list[torch.Tensor]] = {}
    for name, p in model.named_parameters():
        match = re.match(r"(\w*h)\.(\d+)\.", name)  # the blocks' ModuleLists are h and enc_h
        if match and p.requires_grad:
            blocks.setdefault(f"{match[1]}.{match[2]}", []).append(p)
    return blocks


def _norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The global 2-norm of ``tensors`` (a 0-d tensor; no sync)."""
    if not tensors:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors)))


def _flops_per_step(m_cfg: ModelConfig, batch: int, seq_len: int) -> float | None:
    """``analyze``'s useful training FLOPs of one optimizer step, 3 × forward × batch × T (Kaplan
    et al. 2020; PaLM app. B); an encoder-decoder's output is taken as long as its input."""
    try:
        return float(analyze(m_cfg, batch_size=batch, seq_len=seq_len)["flops"]["per_step_train"])
    except (ValueError, KeyError):
        return None


def _catalogue_key(device_name: str) -> str | None:
    """The ``HARDWARE`` entry a CUDA device name ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB")
    denotes: every part of the key but "sxm" among the name's words; None when none does."""
    words = set(re.split(r"[^a-z0-9]+", device_name.lower()))
    for key in HARDWARE:
        parts = key.split("-")
        if key == "cpu-local" or ("sxm" in parts and "pcie" in words):  # PCIe cards run slower
            continue
        if all(part in words for part in parts if part not in ("sxm", "rtx")):
            return key
    return None


def peak_flops(device: torch.device) -> float | None:
    """Dense peak FLOP/s of ``device`` in the precision training runs at: a CUDA GPU's bf16 figure
    from the catalogue (None if its name is not there), the CPU's measured fp32 matmul rate
    (``hardware.measure_cpu``, timed once per process)."""
    if device.type == "cuda":
        key = _catalogue_key(torch.cuda.get_device_name(device))
        return HARDWARE[key].peak_flops("bf16") if key else None
    if device.type == "cpu":
        return HARDWARE["cpu-local"].peak_flops("fp32")
    return None


def train(
    spec: JobSpec,
    *,
    on_event: Callable[[Event], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: bool = False,
    checkpoint_dir: str | None = None,
    checkpoint_every: int | None = None,
    resume_from: str | None = None,
    init_from: str | None = None,
) -> TrainResult:
    """Train the model ``spec`` describes; see the module docstring for the events.

    Seeded: the same spec gives the same losses on CPU. ``should_stop()`` is polled before
    every step; when it returns True the run ends with reason "cancelled".

    Checkpoints (``engine.checkpoint``): with ``checkpoint_dir``, one every ``checkpoint_every``
    steps (default ``spec.train.checkpoint_every``; 0: none on the way), at the last step and when cancelled, each announced by a
    "checkpoint" event. ``resume_from`` (a checkpoint path) continues that run where it stopped:
    weights, optimiser state, data order and RNG restored, so the loss curve goes on as if never
    interrupted. ``init_from`` (default ``spec.train.init_from``) starts this run from a
    checkpoint's weights only (fine-tuning).
    Either raises ``ConfigError`` when the checkpoint's architecture or tokenizer differs."""
    spec = parse_spec(spec.to_dict())  # validate (again) and resolve vocab_size; cheap, data is cached
    m_cfg, d_cfg, t_cfg = spec.model, spec.data, spec.train
    emit = on_event or (lambda event: None)
    device = DEVICES[t_cfg.device]()
    if device.type == "cuda":
        # bf16 keeps fp32's exponent range, so unlike fp16 no loss scaling is needed
        autocast = lambda: torch.autocast(device_type="cuda", dtype=torch.bfloat16)  # noqa: E731
    else:
        autocast = contextlib.nullcontext

    # the data first: building it the first time (it is cached) may draw from the global RNG
    data = load_data(d_cfg, t_cfg.objective)
    torch.manual_seed(t_cfg.seed)  # initialisation and dropout
    objective = build_objective(data, m_cfg, t_cfg)
    model = build_model(m_cfg).to(device)
    # the training forward only: evaluation and sampling run other shapes, which would recompile
    forward = torch.compile(model) if t_cfg.compile else model
    optimizer = configure_optimizer(model, t_cfg, device)
    batches = torch.Generator().manual_seed(t_cfg.seed)  # batch order, apart from the global RNG
    init_from = None if resume_from else (init_from or t_cfg.init_from)  # a resumed run has its own weights
    resumed = _restore(resume_from or init_from, spec, data.tokenizer, model, optimizer if resume_from else None,
                       batches, "train.resume_from" if resume_from else "train.init_from")
    # the step's loss: the model's own, or DPO's against a frozen copy of the weights the job starts from
    forward = objective.wrap(forward, model, spec=spec, init_from=init_from, resuming=bool(resume_from))
    train_evals = objective.eval_batches("train", t_cfg.batch_size, t_cfg.eval_iters)
    val_evals = objective.eval_batches("val", t_cfg.batch_size, t_cfg.eval_iters)
    accum = t_cfg.grad_accum_steps
    effective_batch = t_cfg.batch_size * accum
    # the tokens the model reads per optimizer step (an encoder-decoder's input and output)
    # (DPO's batches hold 2 rows per pair, chosen and rejected; its reference model's forward is
    # not counted in the FLOPs)
    tokens_per_step = accum * sum(t.numel() for t in train_evals[0][:-1])
    flops_per_step = _flops_per_step(m_cfg, accum * train_evals[0][0].size(0), train_evals[0][0].size(1))
    peak = peak_flops(device)
    params = [p for p in model.parameters() if p.requires_grad]
    blocks = _blocks(model)
    described = data.describe()

    start = time.perf_counter()
    emit(StartEvent(
        kind="start",
        **({"resumed_from_step": resumed.step} if resume_from else {}),
        total_steps=t_cfg.steps,
        params=model.num_params(),
        vocab_size=m_cfg.vocab_size,
        device=str(device),
        tokens_per_step=tokens_per_step,
        train_tokens=described["train_tokens"],
        val_tokens=described["val_tokens"],
    ))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=t_cfg.steps, unit="step", dynamic_ncols=True)

    result = TrainResult(model=model, tokenizer=data.tokenizer, steps_done=0, cancelled=False)
    step_times = deque(maxlen=20)  # recent optimizer steps only, so evals do not distort tokens/s
    eval_times: list[float] = []
    pending_losses: list[float] = []
    pending_aux: list[float] = []
    recent_losses = deque(maxlen=SPIKE_WINDOW)  # finite step losses, for spike detection
    spiked = False  # a spike since the last step event
    lr_scale, nonfinite_in_a_row = 1.0, 0  # "lower_lr" halves lr_scale
    first_step, saved_step = 1, 0
    if checkpoint_every is None:
        checkpoint_every = t_cfg.checkpoint_every
    if resume_from:
        state = resumed.trainer
        lr_scale, nonfinite_in_a_row = state["lr_scale"], state["nonfinite_in_a_row"]
        recent_losses.extend(state["recent_losses"])
        first_step, saved_step, result.steps_done = resumed.step + 1, resumed.step, resumed.step

    def save(step):
        nonlocal saved_step
        trainer = {"rng": rng_state(batches), "lr_scale": lr_scale, "nonfinite_in_a_row": nonfinite_in_a_row,
                   "recent_losses": list(recent_losses)}
        path = save_checkpoint(checkpoint_dir, step=step, model=model, optimizer=optimizer, spec=spec.to_dict(),
                               tokenizer=data.tokenizer, trainer=trainer)
        saved_step = step
        emit(CheckpointEvent(kind="checkpoint", step=step, name=os.path.basename(path),
                             bytes=sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))))

    moe = m_cfg.n_expert > 0
    final_val_loss = None
    model.train()
    for step in range(first_step, t_cfg.steps + 1):
        if should_stop is not None and should_stop():
            result.cancelled, result.reason = True, "cancelled"
            if checkpoint_dir and result.steps_done > saved_step:  # resume where the cancel came
                save(result.steps_done)
            break
        t0 = time.perf_counter()
        lr = lr_at(step, t_cfg) * lr_scale
        for group in optimizer.param_groups:
            group["lr"] = lr
        is_log = step % t_cfg.log_interval == 0 or step == t_cfg.steps
        is_eval = step % t_cfg.eval_interval == 0 or step == t_cfg.steps
        micro_batches = ([t.to(device) for t in objective.get_batch("train", t_cfg.batch_size, batches)]
                         for _ in range(accum))
        optimizer.zero_grad(set_to_none=True)
        loss, aux_value = accumulate_gradients(forward, model, micro_batches, accum, autocast)
        if is_eval:  # before clipping scales them
            block_grads = {name: _norm([p.grad for p in ps if p.grad is not None]) for name, ps in blocks.items()}
        # clip_grad_norm_ returns the norm before clipping; an infinite max only measures it
        grad_norm = float(nn.utils.clip_grad_norm_(params, t_cfg.grad_clip or math.inf))
        # also waits for the GPU, so the timing below is honest; reported without MoE's terms,
        # so that it compares with the validation loss
        loss_value = loss.item() - aux_value
        finite = math.isfinite(loss_value) and math.isfinite(grad_norm)
        update_ratio, block_updates = 0.0, {}
        if finite:
            nonfinite_in_a_row = 0
            before = [p.detach().clone() for p in params] if is_log or is_eval else None
            optimizer.step()
            if before is not None:  # ‖Δw‖ / ‖w‖ from a copy of the weights, at log and eval steps only
                deltas = torch._foreach_sub([p.detach() for p in params], before)
                update_ratio = float(_norm(deltas) / _norm(before).clamp_min(1e-30))
                if is_eval:
                    index = {id(p): i for i, p in enumerate(params)}
                    for name, ps in blocks.items():
                        ids = [index[id(p)] for p in ps]
                        block_updates[name] = float(_norm([deltas[i] for i in ids])
                                                    / _norm([before[i] for i in ids]).clamp_min(1e-30))
                del before, deltas
        else:
            optimizer.zero_grad(set_to_none=True)
            nonfinite_in_a_row += 1
            action = t_cfg.on_nonfinite
            what = f"step {step}: loss {loss_value:g}, gradient norm {grad_norm:g}"
            if action == "stop":
                message = f"{what}; stopping the run"
            elif nonfinite_in_a_row >= MAX_NONFINITE_IN_A_ROW:
                action, message = "stop", f"{what}; {nonfinite_in_a_row} non-finite steps in a row, stopping the run"
            elif action == "lower_lr":
                lr_scale *= 0.5
                message = f"{what}; step skipped, learning rate multiplier now {lr_scale:g}"
            else:
                message = f"{what}; step skipped"
            emit(NonfiniteEvent(kind="nonfinite", step=step, action=action, message=message))
            if action == "stop":
                result.reason, result.message = "nonfinite", message
                break
        step_times.append(time.perf_counter() - t0)
        result.train_losses.append(loss_value)
        result.steps_done = step
        pending_losses.append(loss_value)
        pending_aux.append(aux_value)
        if finite:
            if len(recent_losses) >= SPIKE_MIN_HISTORY:
                mean = sum(recent_losses) / len(recent_losses)
                std = math.sqrt(sum((x - mean) ** 2 for x in recent_losses) / len(recent_losses))
                spiked = spiked or loss_value > mean + SPIKE_K * std
            recent_losses.append(loss_value)

        if is_log:
            elapsed = time.perf_counter() - start
            step_time = sum(step_times) / len(step_times)
            emit(StepEvent(
                kind="step",
                step=step,
                loss=_finite(sum(pending_losses) / len(pending_losses)),  # mean since the last step event
                lr=lr,
                grad_norm=_finite(grad_norm),
                tokens_per_s=tokens_per_step / step_time,
                elapsed=elapsed,
                eta=_eta(step, t_cfg, step_time, eval_times),
                effective_batch=effective_batch,
                clipped=bool(t_cfg.grad_clip) and grad_norm > t_cfg.grad_clip,
                update_ratio=_finite(update_ratio),
                spike=spiked,
                # model FLOPs utilisation: analyze's useful FLOPs per step / step time / peak FLOP/s
                mfu=_finite(flops_per_step / step_time / peak) if flops_per_step and peak else None,
                **({"aux_loss": _finite(sum(pending_aux) / len(pending_aux))} if moe else {}),
                **objective.step_metrics(),  # DPO: log-probabilities and rewards since the last step event
            ))
            pending_losses.clear()
            pending_aux.clear()
            spiked = False
        if t_cfg.compile and step == 1:  # that step compiled the model: keep it out of tokens/s and ETA
            step_times.clear()

        if is_eval:
            emit(HealthEvent(kind="health", step=step, layers=[
                HealthLayer(layer=i, name=name, grad_norm=_finite(block_grads[name]),
                            weight_norm=_finite(_norm([p.detach() for p in ps])),
                            update_ratio=_finite(block_updates.get(name, 0.0)))
                for i, (name, ps) in enumerate(blocks.items())
            ]))
        if moe and (is_eval or step % 10 == 0):  # the routing of this step's training batch
            emit(MoeEvent(kind="moe", step=step, layers=[
                MoeLayer(**{**layer, "aux_loss": _finite(layer["aux_loss"]), "z_loss": _finite(layer["z_loss"])})
                for layer in model.moe_stats()
            ]))
        if is_eval:
            t_eval = time.perf_counter()
            event = _evaluate(model, objective, train_evals, val_evals, spec, device, autocast, step)
            # every layer's and head's weights on one held-out example: watch the patterns form
            maps = attention_event(model, objective, device, autocast, step) if t_cfg.attention_maps else None
            eval_times.append(time.perf_counter() - t_eval)
            final_val_loss = event["val_loss"]
            result.val_losses.append((step, final_val_loss if final_val_loss is not None else math.nan))
            result.final_accuracy = event["accuracy"]
            emit(event)
            if maps is not None:
                emit(maps)
                checkpoint_due = (checkpoint_every and step % checkpoint_every == 0) or step == t_cfg.steps
                weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
                if checkpoint_dir and "input" in maps and not checkpoint_due and weight_bytes <= SNAPSHOT_BYTES // 4:
                    # a long input's overview: keep this step's weights so the page can zoom into it
                    # (for models small enough that a few snapshots fit the budget; else the nearest
                    # checkpoint serves, marked approximate)
                    save_snapshot(checkpoint_dir, step=step, model=model, spec=spec.to_dict(), tokenizer=data.tokenizer)
            if moe:  # which expert each token of the same held-out example went to
                from .moe_maps import routing_event  # moe.py loads only for models with experts (as in model.py)

                routing = routing_event(model, objective, device, autocast, step)
                if routing is not None:
                    emit(routing)
        if checkpoint_dir and ((checkpoint_every and step % checkpoint_every == 0) or step == t_cfg.steps):
            save(step)  # last in the step: the RNG state is the one the next step starts from
        if bar is not None:
            shown = {"loss": f"{loss_value:.3f}"}
            if final_val_loss is not None:
                shown["val_loss"] = f"{final_val_loss:.3f}"
            bar.set_postfix(shown, refresh=False)
            bar.update(1)

    if bar is not None:
        bar.close()
    model.eval()
    emit(EndEvent(
        kind="end",
        step=result.steps_done,
        reason=result.reason,
        elapsed=time.perf_counter() - start,
        final_val_loss=final_val_loss,
    ))
    return result


def _restore(path, spec: JobSpec, tokenizer, model, optimizer, batches, field_name: str):
    """Read the checkpoint at ``path`` into ``model`` (and, resuming, ``optimizer`` and the RNG
    streams); ConfigError on ``field_name`` when its architecture or tokenizer differs."""
    if not path:
        return None
    try:
        checkpoint = read_checkpoint(path)
    except ValueError as e:
        raise ConfigError({field_name: str(e)}) from None
    problems = architecture_mismatch(checkpoint.model_config, spec.model)
    if checkpoint.tokenizer != tokenizer.to_dict():
        saved = checkpoint.tokenizer
        problems.append(f"tokenizer: the checkpoint's ({saved['kind']}, vocabulary {checkpoint.model_config.vocab_size})"
                        f" is not this job's ({tokenizer.to_dict()['kind']}, vocabulary {tokenizer.vocab_size});"
                        " chain jobs with the byte tokenizer or the same lab tokenizer")
    if problems:
        raise ConfigError({field_name: "checkpoint of another architecture: " + "; ".join(problems)})
    load_weights(model, path)
    if optimizer is not None:
        load_optimizer(optimizer, checkpoint)
        restore_rng(checkpoint.trainer["rng"], batches)
    return checkpoint


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


def _evaluate(model, objective, train_evals, val_evals, spec: JobSpec, device, autocast, step: int) -> EvalEvent:
    on_device = lambda batches: [tuple(t.to(device) for t in b) for b in batches]  # noqa: E731
    extra = {}
    if objective.evaluate is not None:  # DPO: its own loss, reward accuracy and margin
        train_loss, _, _ = objective.evaluate(model, on_device(train_evals), autocast)
        val_loss, accuracy, extra = objective.evaluate(model, on_device(val_evals), autocast)
    else:
        train_loss, _ = evaluate(model, on_device(train_evals), autocast, objective.score)
        val_loss, accuracy = evaluate(model, on_device(val_evals), autocast, objective.score)
    model.eval()
    sample = objective.sample(model, device, autocast, spec.train.seed, spec.train.sample_tokens)
    model.train()
    return EvalEvent(
        kind="eval",
        step=step,
        train_loss=_finite(train_loss),
        val_loss=_finite(val_loss),
        accuracy=accuracy if objective.scored else None,
        sample=sample,
        **extra,
    )


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
