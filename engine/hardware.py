"""Will it fit, and how fast: a catalogue of accelerators and estimates from ``analyze``.

Pure arithmetic on ``analyze``'s figures (one source for the formulas), returning plain dicts
ready for JSON. The catalogue gives each device's memory, memory bandwidth and peak *dense*
FLOP/s per dtype from the vendor's datasheet (the sparsity figures are twice these); the
"cpu-local" entry measures this machine instead.

The estimates are roofline bounds, not predictions:

- training memory: ``analyze``'s ``train_total`` (weights, gradients, optimizer state,
  activations) against ``n_gpus`` × the device memory, i.e. perfectly sharded (ZeRO-3/FSDP);
- inference memory: the weights in ``dtype`` plus the KV cache of ``batch_size`` sequences of
  ``seq_len`` tokens;
- decode tokens/s ≤ bandwidth / bytes read per step × batch: every step reads the weights a token
  passes through (``active`` parameters) and each sequence's KV cache (Pope et al. 2022,
  "Efficiently Scaling Transformer Inference", §2);
- prefill tokens/s ≤ peak FLOP/s / forward FLOPs per token;
- training time = tokens × training FLOPs per token / (peak × ``mfu`` × n_gpus), with Chinchilla's
  20 tokens per parameter by default (Hoffmann et al. 2022, table 3).
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from .analysis import DTYPE_BYTES, analyze

if TYPE_CHECKING:
    from .config import ModelConfig

GiB = 2**30
A100_DATASHEET = ("nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/"
                  "nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf")
TB = 1e12  # vendors quote bandwidth in decimal GB/s and TB/s, FLOP/s in decimal TFLOPS
MAX_BATCH = 2**20  # the largest-batch search stops here: beyond it the answer is "any batch you like"
# the sliding, dilated and block-sparse patterns count their mean keys by a loop over positions
# (``ATTENTIONS[kind].mean_keys``), so longer contexts are refused rather than analysed slowly
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

    def to_dict(self) -> dict:
        flops = self.measure()["flops"] if self.measure else self.flops
        return {"name": self.name, "memory": self.memory, "bandwidth": self.memory_bandwidth(),
                "flops": dict(flops), "source": self.source}


@functools.cache
def measure_cpu() -> dict:
    """This machine's float32 matmul FLOP/s and copy bandwidth, timed once with torch."""
    import torch

    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up: thread pool, allocator
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    x = torch.empty(32 * 2**20 // 4)  # 32 MiB, beyond most last-level caches
    y = torch.empty_like(x)
    y.copy_(x)
    copy = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        y.copy_(x)
        copy = min(copy, time.perf_counter() - start)
    return {"flops": {"fp32": 2 * n**3 / best}, "bandwidth": 2 * x.numel() * 4 / copy}  # read + write


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


def _analysable(model_cfg: ModelConfig, seq_len: int) -> bool:
    return model_cfg.attention in ("full", "linear") or seq_len <= MAX_LOOPED_CONTEXT


def train_memory(model_cfg: ModelConfig, *, batch_size: int, seq_len: int, dtype: str = "bf16",
                 optimizer: str = "adamw", vocab_size: int | None = None) -> int:
    """``analyze``'s training total (bytes) for one batch."""
    report = analyze(model_cfg, vocab_size=vocab_size, batch_size=batch_size, seq_len=seq_len, dtype=dtype,
                     optimizer=optimizer)
    return report["memory"]["train_total"]


def largest_batch(model_cfg: ModelConfig, memory: float, *, seq_len: int, dtype: str = "bf16",
                  optimizer: str = "adamw", vocab_size: int | None = None) -> int:
    """The largest training batch whose memory is ≤ ``memory`` bytes (0 if none, at most
    ``MAX_BATCH``): a binary search, since memory grows with the batch."""
    if not _analysable(model_cfg, seq_len):
        return 0

    def fits(b: int) -> bool:
        return train_memory(model_cfg, batch_size=b, seq_len=seq_len, dtype=dtype, optimizer=optimizer,
                            vocab_size=vocab_size) <= memory

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
        vocab_size: int | None = None) -> dict:
    """Memory verdicts, throughput bounds, training time and cost of ``model_cfg`` on
    ``n_gpus`` × ``device_key``; see the module docstring. ``seq_len`` defaults to
    ``block_size``; ``dtype`` is one of ``analyze``'s ("fp32", "bf16", "fp16")."""
    device = get_device(device_key)
    if n_gpus < 1 or batch_size < 1 or not 0 < mfu <= 1:
        raise ValueError("n_gpus and batch_size must be at least 1 and mfu in (0, 1]")
    t = seq_len if seq_len is not None else model_cfg.block_size
    memory = device.memory * n_gpus
    bandwidth = device.memory_bandwidth() * n_gpus  # tensor parallel: each chip reads its shard
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {list(DTYPE_BYTES)}")
    bpe = DTYPE_BYTES[dtype]
    peak = device.peak_flops(dtype) * n_gpus

    # parameters and the KV cache per token do not depend on the context: analyse one token
    base = analyze(model_cfg, vocab_size=vocab_size, batch_size=1, seq_len=1, dtype=dtype, optimizer=optimizer)
    params, active = base["params"]["total"], base["params"]["active"]
    kv_tokens = min(t, model_cfg.window) if model_cfg.attention == "sliding" else t
    kv_cache = base["kv_cache_per_token"] * kv_tokens * batch_size
    weights = params * bpe
    infer_needed = weights + kv_cache

    if _analysable(model_cfg, t):
        report = analyze(model_cfg, vocab_size=vocab_size, batch_size=batch_size, seq_len=t, dtype=dtype,
                         optimizer=optimizer)
        train_needed = report["memory"]["train_total"]
        forward, train_flops = report["flops"]["per_token_forward"], report["flops"]["per_token_train"]
        train_verdict = _verdict(train_needed, memory)
    else:
        train_needed = forward = train_flops = None
        train_verdict = f"does not fit: a context of {t:,} tokens is beyond what is analysed"
    tokens = train_tokens if train_tokens is not None else 20 * params  # Chinchilla
    seconds = tokens * train_flops / (peak * mfu) if train_flops is not None else None

    # decode: one step reads the weights a token passes through and every sequence's cache
    bytes_per_step = active * bpe + kv_cache
    return {
        "device": device.name,
        "n_gpus": n_gpus,
        "memory_available": memory,
        "params": params,
        "train": {
            "memory_needed": train_needed,
            "fits": train_needed is not None and train_needed <= memory,
            "verdict": train_verdict,
            "largest_batch": largest_batch(model_cfg, memory, seq_len=t, dtype=dtype, optimizer=optimizer,
                                           vocab_size=vocab_size),
        },
        "inference": {
            "memory_needed": infer_needed,
            "weights": weights,
            "kv_cache": kv_cache,
            "fits": infer_needed <= memory,
            "verdict": _verdict(infer_needed, memory),
            "decode_tokens_per_s": batch_size * bandwidth / bytes_per_step,
            "prefill_tokens_per_s": peak / forward if forward is not None else None,
        },
        "time": {
            "train_tokens": tokens,
            "seconds": seconds,
            "hours": seconds / 3600 if seconds is not None else None,
            "cost": seconds / 3600 * price_per_hour * n_gpus
            if seconds is not None and price_per_hour is not None else None,
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
    # this machine: its RAM (os.sysconf), a float32 matmul's FLOP/s and a copy's bandwidth, timed once
    "cpu-local": Device("this machine's CPU", _ram(), 0.0, source="measured with torch (measure_cpu)",
                        measure=measure_cpu),
}
