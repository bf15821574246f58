"""Optimizers and learning-rate schedules, each a registry keyed by the config string.

``OPTIMIZERS[name](groups, cfg, device)`` builds a ``torch.optim.Optimizer`` over parameter
groups that already carry their ``weight_decay`` (matrices only: ``configure_optimizer``);
``SCHEDULES[name](step, cfg)`` gives the learning rate of a step after warm-up, and
``lr_at(step, cfg)`` the learning rate of any step. ``NONFINITE_ACTIONS`` lists what the
training loop may do with a step whose loss or gradient is NaN or infinite.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

if TYPE_CHECKING:
    from ..config.schema import TrainConfig


# ---------------------------------------------------------------------------- optimizers


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", algorithm 2):
    the update is the sign of an interpolation of the momentum and the gradient, so every
    weight moves by exactly ``lr`` (plus decoupled weight decay); the momentum is then updated
    with a second, slower rate:

        c = β1·m + (1 − β1)·g;   w ← w − lr·(sign(c) + λ·w);   m ← β2·m + (1 − β2)·g

    One state tensor per weight (AdamW keeps two). The paper uses β = (0.9, 0.99) and an lr
    3–10× smaller than AdamW's with a weight decay 3–10× larger."""

    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99), weight_decay: float = 0.0):
        if not 0.0 <= betas[0] < 1.0 or not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Lion betas must be in [0, 1), got {betas!r}")
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2), wd = group["lr"], group["betas"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                m = state["exp_avg"]
                if wd:
                    p.mul_(1.0 - lr * wd)
                update = m.lerp(p.grad, 1.0 - beta1).sign_()  # β1·m + (1 − β1)·g, then its sign
                p.add_(update, alpha=-lr)
                m.lerp_(p.grad, 1.0 - beta2)
        return loss


def _fused(device: torch.device) -> bool:
    # one kernel per step for all parameters, on CPU as on CUDA (about 4x faster than the
    # per-tensor loop for AdamW, measured on the benchmark models)
    return device.type in ("cpu", "cuda")


def adamw(groups, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    # beta2 0.95 (the default) rather than 0.999: steadier with small batches and short runs (GPT-3, nanoGPT)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=_fused(device))


def sgd(groups, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    # torch's SGD adds weight_decay·w to the gradient (L2), which with momentum is not decoupled
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


def lion(groups, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    return Lion(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


def adafactor(groups, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """Adafactor (Shazeer & Stern 2018) as torch implements it: a matrix's second moment kept
    factored as a row and a column vector, no first moment, the step relative to the weight's
    RMS (lr × max(1e-3, RMS(w)), lr capped by 1/√t) and decoupled weight decay lr·λ·w. torch's
    β2 schedule 1 − t^−0.8 replaces ``beta2``."""
    if not hasattr(torch.optim, "Adafactor"):  # torch < 2.5
        raise RuntimeError("optimizer 'adafactor' needs torch.optim.Adafactor (torch ≥ 2.5)")
    return torch.optim.Adafactor(groups, lr=cfg.lr)


OPTIMIZERS = {"adamw": adamw, "sgd": sgd, "lion": lion, "adafactor": adafactor}


def configure_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """``cfg.optimizer`` over two groups: the matrices, with ``cfg.weight_decay``, and the rest
    (biases, norm gains) without: shrinking those towards 0 only hurts (nanoGPT, GPT-3)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return OPTIMIZERS[cfg.optimizer](groups, cfg, device)


# ---------------------------------------------------------------------------- schedules
# Each gives the learning rate of a 1-based step after warm-up (step > warmup_steps).


def cosine(step: int, cfg: TrainConfig) -> float:
    """Cosine decay from ``lr`` to ``lr * min_lr_ratio`` at the last step (nanoGPT's, after
    Loshchilov & Hutter 2017)."""
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    coeff = 0.5 * (1.0 + math.cos(math.pi * progress))  # 1 -> 0
    min_lr = cfg.lr * cfg.min_lr_ratio
    return min_lr + coeff * (cfg.lr - min_lr)


def linear(step: int, cfg: TrainConfig) -> float:
    """Straight line from ``lr`` to ``lr * min_lr_ratio`` at the last step."""
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    min_lr = cfg.lr * cfg.min_lr_ratio
    return cfg.lr - progress * (cfg.lr - min_lr)


def constant(step: int, cfg: TrainConfig) -> float:
    """``lr`` from the end of warm-up to the last step."""
    return cfg.lr


# the cool-down shapes of "wsd", progress 0 -> 1 to a factor 1 -> 0
WSD_DECAYS = {
    "linear": lambda progress: 1.0 - progress,
    # Hägele et al. 2024 ("Scaling Laws and Compute-Optimal Training Beyond Fixed Training
    # Durations", §3): 1 − √x ends lower sooner and matched cosine in their runs
    "1-sqrt": lambda progress: 1.0 - math.sqrt(progress),
}


def wsd(step: int, cfg: TrainConfig) -> float:
    """Warmup-stable-decay (Hu et al. 2024, MiniCPM): ``lr`` until the last ``decay_fraction``
    of all steps, then down to ``lr * min_lr_ratio`` at the last step along ``decay_shape``.
    The decay never starts before the end of warm-up."""
    decay_steps = max(1, round(cfg.decay_fraction * cfg.steps))
    decay_start = max(cfg.warmup_steps, cfg.steps - decay_steps)  # the last step at the full lr
    if step <= decay_start:
        return cfg.lr
    progress = (step - decay_start) / max(1, cfg.steps - decay_start)
    min_lr = cfg.lr * cfg.min_lr_ratio
    return min_lr + WSD_DECAYS[cfg.decay_shape](progress) * (cfg.lr - min_lr)


SCHEDULES = {"cosine": cosine, "linear": linear, "constant": constant, "wsd": wsd}


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then ``SCHEDULES[cfg.schedule]``.
    ``step`` is 1-based."""
    if step <= cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    return SCHEDULES[cfg.schedule](step, cfg)


# ---------------------------------------------------------------------------- non-finite steps

# what the training loop does with a step whose loss or gradient norm is NaN or infinite; each
# time it emits {"kind": "nonfinite", "step", "action", "message"}
NONFINITE_ACTIONS = {
    "skip": "skip the optimizer step (the gradients are dropped) and go on",
    "lower_lr": "skip the optimizer step and halve the learning rate for the rest of the run",
    "stop": "end the run with reason 'nonfinite'",
}
