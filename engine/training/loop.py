"""The training loop: a ``JobSpec`` in, plain-dict events out.

The engine knows nothing of where events go; the caller's ``on_event`` stores or forwards
them. The events ("start", "step", "health", "moe", "eval", "attention", "routing",
"nonfinite", "checkpoint", "end"), their keys and what each means are defined once, in
``engine.config.events`` (a table in docs/events.md); all values are JSON-serialisable, a non-finite
number is sent as None.

Run from a shell: ``python -m engine.training spec.json`` (a tqdm bar, then the final numbers).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..config.errors import ConfigError
from ..config.events import (
    CheckpointEvent,
    EndEvent,
    EvalEvent,
    Event,
    HealthEvent,
    HealthLayer,
    MoeEvent,
    MoeLayer,
    NonfiniteEvent,
    StartEvent,
    StepEvent,
)
from ..config.schema import JobSpec, TrainConfig
from ..data.datasets import load_data
from ..data.tokenizers import Tokenizer
from ..introspect.attention_maps import attention_event
from ..models.families import build_model
from ..nn.device import DEVICES
from .checkpoint import (
    SNAPSHOT_BYTES,
    architecture_mismatch,
    load_optimizer,
    load_weights,
    read_checkpoint,
    restore_rng,
    rng_state,
    save_checkpoint,
    save_snapshot,
)
from .objectives import build_objective, exact_rows
from .optim import configure_optimizer, lr_at  # noqa: F401 - lr_at and configure_optimizer are public here
from .spec import parse_spec
from .telemetry import (
    _blocks,
    _flops_per_step,
    _mfu,
    _norm,
    _ProgressBar,
    _Telemetry,
    peak_and_source,
    peak_flops,  # noqa: F401 - public here, as before
)

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
    run = _Run(spec, emit=on_event or (lambda event: None), checkpoint_dir=checkpoint_dir,
               checkpoint_every=spec.train.checkpoint_every if checkpoint_every is None else checkpoint_every,
               resume_from=resume_from, init_from=init_from)
    run.emit_start()
    bar = _ProgressBar(spec.train.steps) if progress else None
    run.model.train()
    for step in range(run.first_step, spec.train.steps + 1):
        if should_stop is not None and should_stop():
            run.cancel()
            break
        if not run.step(step):  # the non-finite policy stopped the run
            break
        if bar is not None:
            bar.update(run.result.train_losses[-1], run.final_val_loss)
    if bar is not None:
        bar.close()
    run.model.eval()
    run.emit_end()
    return run.result


class _Run:
    """One ``train`` call's state: what it built from the spec, the telemetry, the non-finite
    policy's state and the last checkpoint; ``step(n)`` runs optimizer step ``n`` and its events."""

    def __init__(self, spec: JobSpec, *, emit, checkpoint_dir, checkpoint_every, resume_from, init_from):
        self.spec, self.emit = spec, emit
        self.checkpoint_dir, self.checkpoint_every, self.resume_from = checkpoint_dir, checkpoint_every, resume_from
        m_cfg, d_cfg, t_cfg = spec.model, spec.data, spec.train
        self.cfg = t_cfg
        self.device = device = DEVICES[t_cfg.device]()
        if device.type == "cuda":
            # bf16 keeps fp32's exponent range, so unlike fp16 no loss scaling is needed
            self.autocast = lambda: torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        else:
            self.autocast = contextlib.nullcontext

        # the data first: building it the first time (it is cached) may draw from the global RNG
        self.data = data = load_data(d_cfg, t_cfg.objective)
        torch.manual_seed(t_cfg.seed)  # initialisation and dropout
        self.objective = objective = build_objective(data, m_cfg, t_cfg)
        self.model = model = build_model(m_cfg).to(device)
        # the training forward only: evaluation and sampling run other shapes, which would recompile
        forward = torch.compile(model) if t_cfg.compile else model
        self.optimizer = configure_optimizer(model, t_cfg, device)
        self.batches = torch.Generator().manual_seed(t_cfg.seed)  # batch order, apart from the global RNG
        init_from = None if resume_from else (init_from or t_cfg.init_from)  # a resumed run has its own weights
        self.resumed = _restore(resume_from or init_from, spec, data.tokenizer, model,
                                self.optimizer if resume_from else None, self.batches,
                                "train.resume_from" if resume_from else "train.init_from")
        # the step's loss: the model's own, or DPO's against a frozen copy of the weights the job starts from
        self.forward = objective.wrap(forward, model, spec=spec, init_from=init_from, resuming=bool(resume_from))
        self.train_evals = objective.eval_batches("train", t_cfg.batch_size, t_cfg.eval_iters)
        self.val_evals = objective.eval_batches("val", t_cfg.batch_size, t_cfg.eval_iters)
        accum = t_cfg.grad_accum_steps
        self.effective_batch = t_cfg.batch_size * accum
        # the tokens the model reads per optimizer step (an encoder-decoder's input and output)
        # (DPO's batches hold 2 rows per pair, chosen and rejected; its reference model's forward is
        # not counted in the FLOPs)
        self.tokens_per_step = accum * sum(t.numel() for t in self.train_evals[0][:-1])
        self.flops_per_step = _flops_per_step(m_cfg, accum * self.train_evals[0][0].size(0),
                                              self.train_evals[0][0].size(1))
        self.peak, self.peak_source = peak_and_source(device)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.blocks = _blocks(model)
        self.moe = m_cfg.n_expert > 0

        self.result = TrainResult(model=model, tokenizer=data.tokenizer, steps_done=0, cancelled=False)
        self.telemetry = _Telemetry()
        self.lr_scale, self.nonfinite_in_a_row = 1.0, 0  # "lower_lr" halves lr_scale
        self.first_step, self.saved_step = 1, 0
        self.final_val_loss = None
        if resume_from:
            state = self.resumed.trainer
            self.lr_scale, self.nonfinite_in_a_row = state["lr_scale"], state["nonfinite_in_a_row"]
            self.telemetry.recent_losses.extend(state["recent_losses"])
            self.first_step, self.saved_step = self.resumed.step + 1, self.resumed.step
            self.result.steps_done = self.resumed.step

    # ------------------------------------------------------------------ start and end
    def emit_start(self) -> None:
        described = self.data.describe()
        self.start = time.perf_counter()
        self.emit(StartEvent(
            kind="start",
            **({"resumed_from_step": self.resumed.step} if self.resume_from else {}),
            total_steps=self.cfg.steps,
            params=self.model.num_params(),
            vocab_size=self.spec.model.vocab_size,
            device=str(self.device),
            tokens_per_step=self.tokens_per_step,
            train_tokens=described["train_tokens"],
            val_tokens=described["val_tokens"],
            peak_flops=self.peak,
            peak_source=self.peak_source,
        ))

    def cancel(self) -> None:
        self.result.cancelled, self.result.reason = True, "cancelled"
        if self.checkpoint_dir and self.result.steps_done > self.saved_step:  # resume where the cancel came
            self.save(self.result.steps_done)

    def emit_end(self) -> None:
        self.emit(EndEvent(
            kind="end",
            step=self.result.steps_done,
            reason=self.result.reason,
            elapsed=time.perf_counter() - self.start,
            final_val_loss=self.final_val_loss,
        ))

    # ------------------------------------------------------------------ one optimizer step
    def step(self, step: int) -> bool:
        """Optimizer step ``step`` and what follows it (its step event at log steps, an
        evaluation at eval steps, a checkpoint when one is due); False when the non-finite
        policy stopped the run (the step is then not counted)."""
        t_cfg = self.cfg
        t0 = time.perf_counter()
        lr = lr_at(step, t_cfg) * self.lr_scale
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        is_log = step % t_cfg.log_interval == 0 or step == t_cfg.steps
        is_eval = step % t_cfg.eval_interval == 0 or step == t_cfg.steps
        micro_batches = ([t.to(self.device) for t in self.objective.get_batch("train", t_cfg.batch_size, self.batches)]
                         for _ in range(t_cfg.grad_accum_steps))
        self.optimizer.zero_grad(set_to_none=True)
        loss, aux_value = accumulate_gradients(self.forward, self.model, micro_batches, t_cfg.grad_accum_steps,
                                               self.autocast)
        block_grads = None
        if is_eval:  # before clipping scales them
            block_grads = {name: _norm([p.grad for p in ps if p.grad is not None]) for name, ps in self.blocks.items()}
        # clip_grad_norm_ returns the norm before clipping; an infinite max only measures it
        grad_norm = float(nn.utils.clip_grad_norm_(self.params, t_cfg.grad_clip or math.inf))
        # also waits for the GPU, so the timing below is honest; reported without MoE's terms,
        # so that it compares with the validation loss
        loss_value = loss.item() - aux_value
        finite = math.isfinite(loss_value) and math.isfinite(grad_norm)
        update_ratio, block_updates = 0.0, {}
        if finite:
            self.nonfinite_in_a_row = 0
            update_ratio, block_updates = self._update(measure=is_log or is_eval, per_block=is_eval)
        else:
            self.optimizer.zero_grad(set_to_none=True)
            if not self._on_nonfinite(step, loss_value, grad_norm):
                return False
        self.telemetry.add(time.perf_counter() - t0, loss_value, aux_value, finite)
        self.result.train_losses.append(loss_value)
        self.result.steps_done = step

        if is_log:
            self._emit_step(step, lr, grad_norm, update_ratio)
        if t_cfg.compile and step == 1:  # that step compiled the model: keep it out of tokens/s and ETA
            self.telemetry.step_times.clear()
        if is_eval:
            self._emit_health(step, block_grads, block_updates)
        if self.moe and (is_eval or step % 10 == 0):  # the routing of this step's training batch
            self.emit(MoeEvent(kind="moe", step=step, layers=[
                MoeLayer(**{**layer, "aux_loss": _finite(layer["aux_loss"]), "z_loss": _finite(layer["z_loss"])})
                for layer in self.model.moe_stats()
            ]))
        if is_eval:
            self._evaluate(step)
        if self._checkpoint_due(step):
            self.save(step)  # last in the step: the RNG state is the one the next step starts from
        return True

    def _update(self, measure: bool, per_block: bool) -> tuple[float, dict[str, float]]:
        """The optimizer's step; with ``measure``, ‖Δw‖ / ‖w‖ over all weights from a copy of them
        (at log and eval steps only), and with ``per_block`` the same for each block."""
        params = self.params
        before = [p.detach().clone() for p in params] if measure else None
        self.optimizer.step()
        if before is None:
            return 0.0, {}
        deltas = torch._foreach_sub([p.detach() for p in params], before)
        update_ratio = float(_norm(deltas) / _norm(before).clamp_min(1e-30))
        block_updates = {}
        if per_block:
            index = {id(p): i for i, p in enumerate(params)}
            for name, ps in self.blocks.items():
                ids = [index[id(p)] for p in ps]
                block_updates[name] = float(_norm([deltas[i] for i in ids])
                                            / _norm([before[i] for i in ids]).clamp_min(1e-30))
        return update_ratio, block_updates

    def _on_nonfinite(self, step: int, loss_value: float, grad_norm: float) -> bool:
        """A step with a NaN or infinite loss or gradient norm (its update skipped): apply
        ``on_nonfinite``, emit what was done; False when the run stops."""
        self.nonfinite_in_a_row += 1
        action = self.cfg.on_nonfinite
        what = f"step {step}: loss {loss_value:g}, gradient norm {grad_norm:g}"
        if action == "stop":
            message = f"{what}; stopping the run"
        elif self.nonfinite_in_a_row >= MAX_NONFINITE_IN_A_ROW:
            action, message = "stop", f"{what}; {self.nonfinite_in_a_row} non-finite steps in a row, stopping the run"
        elif action == "lower_lr":
            self.lr_scale *= 0.5
            message = f"{what}; step skipped, learning rate multiplier now {self.lr_scale:g}"
        else:
            message = f"{what}; step skipped"
        self.emit(NonfiniteEvent(kind="nonfinite", step=step, action=action, message=message))
        if action == "stop":
            self.result.reason, self.result.message = "nonfinite", message
            return False
        return True

    # ------------------------------------------------------------------ events
    def _emit_step(self, step: int, lr: float, grad_norm: float, update_ratio: float) -> None:
        t_cfg, telemetry = self.cfg, self.telemetry
        step_time = telemetry.step_time()
        loss, aux, spiked = telemetry.take()
        mfu, raised = None, None
        if self.flops_per_step and self.peak:
            mfu, self.peak, raised = _mfu(self.flops_per_step / step_time, self.peak, self.device, step)
        self.emit(StepEvent(
            kind="step",
            step=step,
            loss=_finite(loss),  # mean since the last step event
            lr=lr,
            grad_norm=_finite(grad_norm),
            tokens_per_s=self.tokens_per_step / step_time,
            elapsed=time.perf_counter() - self.start,
            eta=_eta(step, t_cfg, step_time, telemetry.eval_times),
            effective_batch=self.effective_batch,
            clipped=bool(t_cfg.grad_clip) and grad_norm > t_cfg.grad_clip,
            update_ratio=_finite(update_ratio),
            spike=spiked,
            # model FLOPs utilisation: analyze's useful FLOPs per step / step time / peak FLOP/s
            mfu=_finite(mfu) if mfu is not None else None,
            **({"peak_flops": self.peak, "peak_source": raised} if raised else {}),
            **({"aux_loss": _finite(aux)} if self.moe else {}),
            **self.objective.step_metrics(),  # DPO: log-probabilities and rewards since the last step event
        ))

    def _emit_health(self, step: int, block_grads: dict, block_updates: dict[str, float]) -> None:
        self.emit(HealthEvent(kind="health", step=step, layers=[
            HealthLayer(layer=i, name=name, grad_norm=_finite(block_grads[name]),
                        weight_norm=_finite(_norm([p.detach() for p in ps])),
                        update_ratio=_finite(block_updates.get(name, 0.0)))
            for i, (name, ps) in enumerate(self.blocks.items())
        ]))

    def _evaluate(self, step: int) -> None:
        """The eval event, then the attention maps (keeping the weights for a long input's zoom
        when the snapshot policy allows) and, with experts, the routing of the same example."""
        model, objective = self.model, self.objective
        t_eval = time.perf_counter()
        event = _evaluate(model, objective, self.train_evals, self.val_evals, self.spec, self.device, self.autocast, step)
        # every layer's and head's weights on one held-out example: watch the patterns form
        maps = (attention_event(model, objective, self.device, self.autocast, step)
                if self.cfg.attention_maps else None)
        self.telemetry.eval_times.append(time.perf_counter() - t_eval)
        self.final_val_loss = event["val_loss"]
        self.result.val_losses.append((step, self.final_val_loss if self.final_val_loss is not None else math.nan))
        self.result.final_accuracy = event["accuracy"]
        self.emit(event)
        if maps is not None:
            self.emit(maps)
            if self._snapshot_due(step, maps):
                # a long input's overview: keep this step's weights so the page can zoom into it
                save_snapshot(self.checkpoint_dir, step=step, model=model, spec=self.spec.to_dict(),
                              tokenizer=self.data.tokenizer)
        if self.moe:  # which expert each token of the same held-out example went to
            from ..introspect.moe_maps import (
                routing_event,  # moe.py loads only for models with experts (as in model.py)
            )

            routing = routing_event(model, objective, self.device, self.autocast, step)
            if routing is not None:
                self.emit(routing)

    # ------------------------------------------------------------------ checkpoints and snapshots
    def _checkpoint_due(self, step: int) -> bool:
        return bool(self.checkpoint_dir) and bool(
            (self.checkpoint_every and step % self.checkpoint_every == 0) or step == self.cfg.steps)

    def _snapshot_due(self, step: int, maps: dict) -> bool:
        """Whether to keep this evaluation's weights beside the checkpoints: for a long input's
        maps ("input": the page can zoom into them), at a step no checkpoint keeps, and for models
        small enough that a few snapshots fit the budget (else the nearest checkpoint serves,
        marked approximate)."""
        weight_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
        return (bool(self.checkpoint_dir) and "input" in maps and not self._checkpoint_due(step)
                and weight_bytes <= SNAPSHOT_BYTES // 4)

    def save(self, step: int) -> None:
        trainer = {"rng": rng_state(self.batches), "lr_scale": self.lr_scale,
                   "nonfinite_in_a_row": self.nonfinite_in_a_row,
                   "recent_losses": list(self.telemetry.recent_losses)}
        path = save_checkpoint(self.checkpoint_dir, step=step, model=self.model, optimizer=self.optimizer,
                               spec=self.spec.to_dict(), tokenizer=self.data.tokenizer, trainer=trainer)
        self.saved_step = step
        self.emit(CheckpointEvent(kind="checkpoint", step=step, name=os.path.basename(path),
                                  bytes=sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))))


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
    """``python -m engine.training spec.json``: train with a progress bar, print the final numbers."""
    import argparse
    import json

    from ..config.errors import ConfigError

    parser = argparse.ArgumentParser(prog="python -m engine.training", description=main.__doc__)
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
