"""What a training run measures besides its loss: per-block parameter groups and norms, the useful
FLOPs of a step, the device's peak and the MFU against it, the loss-spike detector's window
(``_Telemetry``) and the command line's progress bar. ``engine.training.loop`` reports them in
its events."""

from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..analysis import analyze
from ..analysis.hardware import HARDWARE, raise_cpu_peak
from ..config.schema import ModelConfig

# A step's loss is a spike when it exceeds the mean of the previous SPIKE_WINDOW finite step
# losses by more than SPIKE_K standard deviations (judged once SPIKE_MIN_HISTORY are known). The
# falling trend of a healthy run keeps its losses below the window's mean, so 4σ flags real jumps.
SPIKE_WINDOW = 50
SPIKE_K = 4.0
SPIKE_MIN_HISTORY = 10


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
    (``hardware.measure_cpu``, timed once per machine)."""
    return peak_and_source(device)[0]


def peak_and_source(device: torch.device) -> tuple[float | None, str | None]:
    """``peak_flops`` and where the figure came from (a datasheet, a measurement, the cache)."""
    if device.type == "cuda":
        key = _catalogue_key(torch.cuda.get_device_name(device))
        return (HARDWARE[key].peak_flops("bf16"), f"datasheet: {HARDWARE[key].source}") if key else (None, None)
    if device.type == "cpu":
        return HARDWARE["cpu-local"].peak_flops("fp32"), HARDWARE["cpu-local"].peak_source()
    return None, None


def _mfu(achieved: float, peak: float, device: torch.device, step: int) -> tuple[float, float, str | None]:
    """(MFU, peak, why the peak was raised or None). MFU is at most 1: a step faster than the peak
    shows the peak was low (a CPU timed while the machine was busy), so the peak is raised to the
    step's rate (for the CPU also in the per-machine cache) and the events say so."""
    if achieved <= peak:
        return achieved / peak, peak, None
    why = f"step {step} ran at {achieved / 1e9:,.1f} GFLOP/s, above the peak of {peak / 1e9:,.1f} GFLOP/s"
    if device.type == "cpu":
        raise_cpu_peak(achieved, why)
    return 1.0, achieved, f"raised: {why}"


class _ProgressBar:
    """``train(progress=True)``'s tqdm bar: a step at a time, with the last losses."""

    def __init__(self, total: int):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, unit="step", dynamic_ncols=True)

    def update(self, loss: float, val_loss: float | None) -> None:
        shown = {"loss": f"{loss:.3f}"}
        if val_loss is not None:
            shown["val_loss"] = f"{val_loss:.3f}"
        self.bar.set_postfix(shown, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


@dataclass
class _Telemetry:
    """What a step event reports, gathered between two of them: the recent steps' times (so
    evaluations do not distort tokens/s), the evaluations' times (for the ETA), the losses and
    MoE terms since the last step event, and the loss-spike detector's window."""

    step_times: deque = field(default_factory=lambda: deque(maxlen=20))
    eval_times: list[float] = field(default_factory=list)
    pending_losses: list[float] = field(default_factory=list)
    pending_aux: list[float] = field(default_factory=list)
    recent_losses: deque = field(default_factory=lambda: deque(maxlen=SPIKE_WINDOW))  # finite step losses
    spiked: bool = False  # a spike since the last step event

    def add(self, seconds: float, loss: float, aux: float, finite: bool) -> None:
        self.step_times.append(seconds)
        self.pending_losses.append(loss)
        self.pending_aux.append(aux)
        if finite:
            if len(self.recent_losses) >= SPIKE_MIN_HISTORY:
                mean = sum(self.recent_losses) / len(self.recent_losses)
                std = math.sqrt(sum((x - mean) ** 2 for x in self.recent_losses) / len(self.recent_losses))
                self.spiked = self.spiked or loss > mean + SPIKE_K * std
            self.recent_losses.append(loss)

    def step_time(self) -> float:
        return sum(self.step_times) / len(self.step_times)

    def take(self) -> tuple[float, float, bool]:
        """The mean loss and MoE terms since the last step event, and whether a spike came;
        starts the next interval."""
        out = (sum(self.pending_losses) / len(self.pending_losses), sum(self.pending_aux) / len(self.pending_aux),
               self.spiked)
        self.pending_losses.clear()
        self.pending_aux.clear()
        self.spiked = False
        return out
