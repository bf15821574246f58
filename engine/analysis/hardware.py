"""Will it fit, and how fast: a catalogue of accelerators and estimates from ``analyze``.

Pure arithmetic on ``analyze``'s figures (one source for the formulas), returning plain dicts
ready for JSON. The catalogue gives each device's memory, memory bandwidth and peak *dense*
FLOP/s per dtype from the vendor's datasheet (the sparsity figures are twice these); the
"cpu-local" entry measures this machine instead.

The estimates are roofline bounds, not predictions, on ``analyze``'s figures for the same
settings (``n_gpus``, ``sharding``, ``activation_checkpointing``, ``flash_attention``,
``quantization``):

- training memory: ``analyze``'s ``train_per_gpu`` total (weights, gradients and optimizer state
  after ZeRO sharding, the activations of the GPU's share of the batch) against one device's
  memory; ``fit`` alone defaults to ``sharding="zero3"``, i.e. perfectly sharded (FSDP);
- inference memory: ``analyze``'s ``memory.inference`` total (weights at the quantized width, the
  KV cache of ``batch_size`` sequences of ``seq_len`` tokens, a forward's activations) against
  ``n_gpus`` × the device memory (tensor parallel);
- decode tokens/s ≤ bandwidth / bytes read per step × batch: every step reads the weights a token
  passes through (``active`` parameters, at the inference width) and each sequence's KV cache
  (Pope et al. 2022, "Efficiently Scaling Transformer Inference", §2);
- prefill tokens/s ≤ peak FLOP/s (of ``dtype``: weight-only quantization computes in it) /
  forward FLOPs per token;
- training time = tokens × FLOPs executed per token / (peak × ``mfu`` × n_gpus), with Chinchilla's
  20 tokens per parameter by default (Hoffmann et al. 2022, table 3). With activation
  checkpointing a token costs 4 forwards rather than 3, so ``mfu`` is then what PaLM calls the
  hardware FLOPs utilisation.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .costs import _analyze

if TYPE_CHECKING:
    from ..config.schema import ModelConfig

GiB = 2**30
A100_DATASHEET = ("nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/"
                  "nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf")
TB = 1e12  # vendors quote bandwidth in decimal GB/s and TB/s, FLOP/s in decimal TFLOPS
MAX_BATCH = 2**20  # the largest-batch search stops here: beyond it the answer is "any batch you like"
# kept for callers that still cap the looping patterns' contexts: ``mean_keys`` used to loop over
# positions, but is now a closed form, so ``analyze`` and ``fit`` answer at once for any context
MAX_LOOPED_CONTEXT = 2**20


@dataclass(frozen=True)
class Device:
    """One accelerator: memory (bytes), bandwidth (bytes/s), dense peak FLOP/s per dtype."""

    name: str
    memory: int
    bandwidth: float
    flops: dict[str, float] = field(default_factory=dict)
    source: str = ""
    measure: Callable[[], dict] | None = None  # measured on first use instead of flops/bandwidth

    def peak_flops(self, dtype: str) -> float:
        """Peak dense FLOP/s in ``dtype``; a dtype without its own rate runs at the fp32 one."""
        flops = self.measure()["flops"] if self.measure else self.flops
        return flops.get(dtype, flops["fp32"])

    def memory_bandwidth(self) -> float:
        return self.measure()["bandwidth"] if self.measure else self.bandwidth

    def peak_source(self) -> str:
        """Where the peak figures come from: the datasheet, or how this machine's were measured."""
        return self.measure().get("source", self.source) if self.measure else self.source

    def to_dict(self) -> dict:
        flops = self.measure()["flops"] if self.measure else self.flops
        return {"name": self.name, "memory": self.memory, "bandwidth": self.memory_bandwidth(),
                "flops": dict(flops), "source": self.peak_source()}


CPU_MATMUL = 1024  # the peak's matmul: n × n fp32
CPU_REPEATS = 10  # timed matmuls, the fastest kept: a busy moment slows some, never speeds one up


def cpu_model() -> str:
    """This CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def peak_cache_path() -> Path:
    """The per-machine file of measured CPU peaks: ``$ENGINE_CACHE_DIR/cpu_peak.json``, by default
    under ``$XDG_CACHE_HOME`` (``~/.cache``)/llm-explorer."""
    if os.environ.get("ENGINE_CACHE_DIR"):
        return Path(os.environ["ENGINE_CACHE_DIR"]) / "cpu_peak.json"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llm-explorer" / "cpu_peak.json"


def _peak_key(threads: int) -> str:
    import torch

    return f"{cpu_model()} | {threads} threads | torch {torch.__version__.split('+')[0]}"


def _read_peaks(path: Path) -> dict:
    try:
        peaks = json.loads(path.read_text())
        return peaks if isinstance(peaks, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_peak(path: Path, key: str, entry: dict) -> None:
    """Keep the highest figure under ``key`` (a peak only goes up), written atomically; a cache that
    cannot be written (read-only home) leaves the figure in this process only."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        peaks = _read_peaks(path)
        if peaks.get(key, {}).get("fp32", 0) >= entry["fp32"]:
            return
        peaks[key] = entry
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(peaks, indent=1, sort_keys=True))
        tmp.replace(path)
    except OSError:
        pass


def _time_cpu(threads: int) -> tuple[float, float]:
    """(matmul FLOP/s, copy bytes/s): the fastest of ``CPU_REPEATS`` fp32 matmuls and copies on
    ``threads`` threads (the training loop's, ``torch.get_num_threads()``)."""
    import torch

    n = CPU_MATMUL
    g = torch.Generator().manual_seed(0)  # not the global RNG: training runs draw from it
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a @ b  # warm-up: thread pool, allocator
        best = float("inf")
        for _ in range(CPU_REPEATS):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
        x = torch.empty(32 * 2**20 // 4)  # 32 MiB, beyond most last-level caches
        y = torch.empty_like(x)
        y.copy_(x)
        copy = float("inf")
        for _ in range(CPU_REPEATS):
            start = time.perf_counter()
            y.copy_(x)
            copy = min(copy, time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)
    return 2 * n**3 / best, 2 * x.numel() * 4 / copy  # read + write


_MEASURED: dict[int, dict] = {}  # threads -> this process's figure (raise_cpu_peak updates it in place)


def measure_cpu(threads: int | None = None) -> dict:
    """This machine's float32 matmul FLOP/s and copy bandwidth on ``threads`` threads (default:
    torch's, which training uses): ``{"flops": {"fp32": ...}, "bandwidth": ..., "source": ...}``.

    Once per process, and once per machine: the figure is kept in ``peak_cache_path()`` keyed by
    CPU model, thread count and torch version, so a worker starting while others train reads the
    figure taken on a quieter moment instead of timing a busy machine. A new measurement that
    beats the cached one replaces it; ``raise_cpu_peak`` raises it when a training step ran
    faster than the "peak". ``source`` says which it was."""
    import torch

    threads = threads or torch.get_num_threads()
    if threads in _MEASURED:
        return _MEASURED[threads]
    path, key = peak_cache_path(), _peak_key(threads)
    cached = _read_peaks(path).get(key)
    if cached and cached.get("fp32", 0) > 0 and cached.get("bandwidth", 0) > 0:
        result = {"flops": {"fp32": cached["fp32"]}, "bandwidth": cached["bandwidth"],
                  "source": f"cached from {path} ({cached.get('how', 'measured')}, {cached.get('when', '?')})"}
    else:
        flops, bandwidth = _time_cpu(threads)
        how = f"fastest of {CPU_REPEATS} fp32 {CPU_MATMUL}² matmuls on {threads} threads"
        _write_peak(path, key, {"fp32": flops, "bandwidth": bandwidth, "how": how,
                                "when": time.strftime("%Y-%m-%d %H:%M")})
        result = {"flops": {"fp32": flops}, "bandwidth": bandwidth, "source": f"measured now ({how})"}
    _MEASURED[threads] = result
    return result


def raise_cpu_peak(flops: float, why: str, threads: int | None = None) -> dict:
    """Raise this machine's fp32 peak to ``flops`` (FLOP/s some work reached, so the timed peak was
    low: taken on a busy machine), here and in the per-machine cache; returns ``measure_cpu``'s
    figure, whose ``source`` now says ``why``."""
    import torch

    threads = threads or torch.get_num_threads()
    measured = measure_cpu(threads)
    if flops > measured["flops"]["fp32"]:
        measured["flops"]["fp32"] = flops
        measured["source"] = f"raised: {why}"
        _write_peak(peak_cache_path(), _peak_key(threads), {"fp32": flops, "bandwidth": measured["bandwidth"],
                                                             "how": f"raised: {why}",
                                                             "when": time.strftime("%Y-%m-%d %H:%M")})
    return measured


def _ram() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def get_device(key: str) -> Device:
    if key not in HARDWARE:
        raise ValueError(f"unknown device {key!r}; choose from {list(HARDWARE)}")
    return HARDWARE[key]


def _verdict(needed: float, available: float) -> str:
    if needed <= available:
        return f"fits: needs {needed / GiB:,.1f} GiB of {available / GiB:,.1f} GiB"
    return f"does not fit: needs {needed / GiB:,.3g} GiB, has {available / GiB:,.1f} GiB"


def train_memory(model_cfg: ModelConfig, *, batch_size: int, seq_len: int, dtype: str = "bf16",
                 optimizer: str = "adamw", vocab_size: int | None = None, **settings) -> int:
    """``analyze``'s training memory (bytes) for one global batch, per GPU (``settings``: n_gpus,
    sharding, activation_checkpointing, flash_attention); with one GPU, ``train_total``."""
    report = _analyze(model_cfg, vocab_size=vocab_size, batch_size=batch_size, seq_len=seq_len, dtype=dtype,
                      optimizer=optimizer, **settings)
    return report["memory"]["train_per_gpu"]["total"]


def largest_batch(model_cfg: ModelConfig, memory: float, *, seq_len: int, dtype: str = "bf16",
                  optimizer: str = "adamw", vocab_size: int | None = None, **settings) -> int:
    """The largest global training batch whose memory per GPU is ≤ ``memory`` bytes (0 if none,
    at most ``MAX_BATCH``): a binary search, since memory grows with the batch."""

    def fits(b: int) -> bool:
        return train_memory(model_cfg, batch_size=b, seq_len=seq_len, dtype=dtype, optimizer=optimizer,
                            vocab_size=vocab_size, **settings) <= memory

    lo, hi = 0, MAX_BATCH  # invariant: lo fits (0 trivially), anything above hi is not searched
    if fits(hi):
        return hi
    while hi - lo > 1:  # hi does not fit
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def fit(model_cfg: ModelConfig, device_key: str, *, n_gpus: int = 1, batch_size: int = 1,
        seq_len: int | None = None, dtype: str = "bf16", optimizer: str = "adamw", mfu: float = 0.4,
        train_tokens: float | None = None, price_per_hour: float | None = None,
        vocab_size: int | None = None, sharding: str = "zero3", activation_checkpointing: bool = False,
        flash_attention: bool = False, quantization: str | None = None, report: dict | None = None) -> dict:
    """Memory verdicts, throughput bounds, training time and cost of ``model_cfg`` on
    ``n_gpus`` × ``device_key``; see the module docstring. ``seq_len`` defaults to
    ``block_size``; ``dtype`` is one of ``analyze``'s ("fp32", "bf16", "fp16"); the other
    settings are ``analyze``'s (``report``: its report for these settings, to reuse)."""
    device = get_device(device_key)
    if n_gpus < 1 or batch_size < 1 or not 0 < mfu <= 1:
        raise ValueError("n_gpus and batch_size must be at least 1 and mfu in (0, 1]")
    settings = {"n_gpus": n_gpus, "sharding": sharding, "activation_checkpointing": activation_checkpointing,
                "flash_attention": flash_attention}
    if report is None:
        report = _analyze(model_cfg, vocab_size=vocab_size, batch_size=batch_size, seq_len=seq_len, dtype=dtype,
                          optimizer=optimizer, quantization=quantization, **settings)
    t = report["settings"]["seq_len"]
    memory = device.memory * n_gpus
    bandwidth = device.memory_bandwidth() * n_gpus  # tensor parallel: each chip reads its shard
    peak = device.peak_flops(dtype) * n_gpus
    params, active = report["params"]["total"], report["params"]["active"]
    flops, mem = report["flops"], report["memory"]

    per_gpu = mem["train_per_gpu"]["total"]
    train_verdict = _verdict(per_gpu, device.memory)
    if n_gpus > 1:
        train_verdict += f" per GPU ({report['settings']['sharding']}, {n_gpus} GPUs)"
    tokens = train_tokens if train_tokens is not None else 20 * params  # Chinchilla
    # the FLOPs executed per token: with checkpointing, 4 forwards' worth (mfu is then HFU, in PaLM's terms)
    train_flops = flops["per_step_train"] / (batch_size * t)
    seconds = tokens * train_flops / (peak * mfu)

    inference = mem["inference"]
    infer_needed = inference["total"]
    # decode: one step reads the weights a token passes through and every sequence's cache
    bytes_per_step = inference["weights"] * active / params + inference["kv_cache"]
    return {
        "device": device.name,
        "n_gpus": n_gpus,
        "memory_available": memory,
        "memory_per_gpu": device.memory,
        "params": params,
        "train": {
            "memory_needed": per_gpu * n_gpus,
            "memory_per_gpu": per_gpu,
            "fits": per_gpu <= device.memory,
            "verdict": train_verdict,
            "largest_batch": largest_batch(model_cfg, device.memory, seq_len=t, dtype=dtype, optimizer=optimizer,
                                           vocab_size=report["settings"]["vocab_size"], **settings),
        },
        "inference": {
            "memory_needed": infer_needed,
            "weights": inference["weights"],
            "kv_cache": inference["kv_cache"],
            "activations": inference["activations"],
            "fits": infer_needed <= memory,
            "verdict": _verdict(infer_needed, memory),
            "decode_tokens_per_s": batch_size * bandwidth / bytes_per_step,
            "prefill_tokens_per_s": peak / flops["per_token_prefill"],
        },
        "time": {
            "train_tokens": tokens,
            "seconds": seconds,
            "hours": seconds / 3600,
            "cost": seconds / 3600 * price_per_hour * n_gpus if price_per_hour is not None else None,
        },
    }


HARDWARE = {
    # NVIDIA A100 Tensor Core GPU datasheet (2021), SXM column: FP32 19.5 TF, TF32 156 TF,
    # BF16/FP16 312 TF, INT8 624 TOPS (dense); 1,555 GB/s (40GB) and 2,039 GB/s (80GB)
    "a100-40gb": Device("NVIDIA A100 40GB SXM", 40 * GiB, 1555e9,
                        {"fp32": 19.5 * TB, "tf32": 156 * TB, "bf16": 312 * TB, "fp16": 312 * TB, "int8": 624 * TB},
                        A100_DATASHEET),
    "a100-80gb": Device("NVIDIA A100 80GB SXM", 80 * GiB, 2039e9,
                        {"fp32": 19.5 * TB, "tf32": 156 * TB, "bf16": 312 * TB, "fp16": 312 * TB, "int8": 624 * TB},
                        A100_DATASHEET),
    # NVIDIA H100 Tensor Core GPU datasheet, SXM column, halving the "with sparsity" figures:
    # FP32 67 TF, TF32 494.5, BF16/FP16 989.5, FP8 and INT8 1,979; 80 GB, 3.35 TB/s
    "h100-sxm": Device("NVIDIA H100 SXM", 80 * GiB, 3.35 * TB,
                       {"fp32": 67 * TB, "tf32": 494.5 * TB, "bf16": 989.5 * TB, "fp16": 989.5 * TB,
                        "fp8": 1979 * TB, "int8": 1979 * TB},
                       "resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet"),
    # NVIDIA H200 Tensor Core GPU datasheet, SXM column: the H100's compute (dense = half the
    # sparsity figures), 141 GB HBM3e at 4.8 TB/s
    "h200": Device("NVIDIA H200 SXM", 141 * GiB, 4.8 * TB,
                   {"fp32": 67 * TB, "tf32": 494.5 * TB, "bf16": 989.5 * TB, "fp16": 989.5 * TB,
                    "fp8": 1979 * TB, "int8": 1979 * TB},
                   "nvidia.com/en-us/data-center/h200/"),
    # NVIDIA L4 Tensor Core GPU datasheet, halving the sparsity figures: FP32 30.3 TF, TF32 60,
    # BF16/FP16 121, FP8 and INT8 242.5; 24 GB GDDR6 at 300 GB/s
    "l4": Device("NVIDIA L4", 24 * GiB, 300e9,
                 {"fp32": 30.3 * TB, "tf32": 60 * TB, "bf16": 121 * TB, "fp16": 121 * TB, "fp8": 242.5 * TB,
                  "int8": 242.5 * TB},
                 "nvidia.com/en-us/data-center/l4/"),
    # NVIDIA Ada Lovelace architecture whitepaper (v2.01), table 2, GeForce RTX 4090 (dense):
    # FP32 82.6 TF, TF32 82.6, FP16/BF16 with FP32 accumulate 165.2 (GeForce runs it at half the
    # FP16-accumulate rate; training accumulates in FP32), FP8 (FP32 accumulate) 330.3, INT8 660.6;
    # 24 GB GDDR6X at 1,008 GB/s
    "rtx-4090": Device("NVIDIA GeForce RTX 4090", 24 * GiB, 1008e9,
                       {"fp32": 82.6 * TB, "tf32": 82.6 * TB, "bf16": 165.2 * TB, "fp16": 165.2 * TB,
                        "fp8": 330.3 * TB, "int8": 660.6 * TB},
                       "images.nvidia.com/aem-dam/Solutions/geforce/ada/nvidia-ada-gpu-architecture.pdf"),
    # Apple M2 Max (38-core GPU, Apple newsroom 2023-01-17): "up to 13.6 teraflops", 400 GB/s,
    # up to 96 GB unified memory shared by CPU and GPU. Apple's GPU runs fp16 at the fp32 rate and
    # has no bf16 units, so bf16 (emulated) is taken at that rate too: an upper bound
    "apple-m2-max": Device("Apple M2 Max (38-core GPU, 96 GB unified)", 96 * GiB, 400e9,
                           {"fp32": 13.6 * TB, "bf16": 13.6 * TB, "fp16": 13.6 * TB},
                           "apple.com/newsroom/2023/01/apple-unveils-m2-pro-and-m2-max"),
    # this machine: its RAM (os.sysconf), a float32 matmul's FLOP/s and a copy's bandwidth, timed
    # once per machine (measure_cpu)
    "cpu-local": Device("this machine's CPU", _ram(), 0.0, source="measured with torch (measure_cpu)",
                        measure=measure_cpu),
}
