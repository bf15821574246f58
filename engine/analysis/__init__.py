"""What a model costs and where it fits, from its config alone (no tensors).

``costs``: parameters, FLOPs, memory and their formulas (``_analyze``); ``hardware``: the device
catalogue and ``fit`` (memory verdicts, the largest batch, throughput bounds, time and cost),
built on ``costs``; ``structure``: the attention mask and position signal as matrices to draw.
``analyze`` (here) is ``costs`` plus, with a device, ``fit``: the one function that needs both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .costs import DTYPE_BYTES, OPTIMIZER_STATES, QUANTIZATIONS, SHARDINGS, _analyze
from .hardware import HARDWARE, fit

if TYPE_CHECKING:
    from ..config.schema import ModelConfig


def analysis_options() -> dict:
    """The choices of ``analyze``'s settings, for the API's option lists."""
    return {"dtype": list(DTYPE_BYTES), "optimizer": list(OPTIMIZER_STATES), "sharding": list(SHARDINGS),
            "quantization": [None, *QUANTIZATIONS], "hardware": list(HARDWARE)}


def analyze(
    model_cfg: ModelConfig,
    *,
    vocab_size: int | None = None,
    batch_size: int = 32,
    seq_len: int | None = None,
    dtype: str = "fp32",
    optimizer: str = "adamw",
    n_gpus: int = 1,
    sharding: str = "none",
    activation_checkpointing: bool = False,
    flash_attention: bool = False,
    quantization: str | None = None,
    hardware: str | None = None,
    mfu: float = 0.4,
    price_per_gpu_hour: float | None = None,
    train_tokens: float | None = None,
) -> dict:
    """Parameters, FLOPs and memory (bytes) of training and serving ``model_cfg``, the resolved
    ``settings``, the ``formulas`` behind each figure and, with ``hardware`` (a key of
    ``HARDWARE``), ``fit`` on ``n_gpus`` of that device; see ``costs``' module docstring.

    ``vocab_size`` overrides the config's; ``seq_len`` defaults to ``block_size``; ``batch_size``
    is the global batch. ``dtype`` is the activation precision: "fp32", or "bf16"/"fp16"
    autocast, which keeps fp32 master weights, gradients and optimizer state and adds a 16-bit
    copy of the weights. ``quantization`` is the inference weight format (None: ``dtype``'s)."""
    report = _analyze(model_cfg, vocab_size=vocab_size, batch_size=batch_size, seq_len=seq_len, dtype=dtype,
                      optimizer=optimizer, n_gpus=n_gpus, sharding=sharding,
                      activation_checkpointing=activation_checkpointing, flash_attention=flash_attention,
                      quantization=quantization, formulas=True)
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu must be in (0, 1], got {mfu!r}")
    if price_per_gpu_hour is not None and price_per_gpu_hour < 0:
        raise ValueError(f"price_per_gpu_hour must be at least 0, got {price_per_gpu_hour!r}")
    if train_tokens is not None and train_tokens <= 0:
        raise ValueError(f"train_tokens must be positive, got {train_tokens!r}")
    report["settings"].update(hardware=hardware, mfu=mfu, price_per_gpu_hour=price_per_gpu_hour,
                              train_tokens=train_tokens)
    report["fit"] = None
    if hardware is not None:
        s = report["settings"]
        report["fit"] = fit(model_cfg, hardware, n_gpus=n_gpus, batch_size=batch_size, seq_len=s["seq_len"],
                            dtype=dtype, optimizer=optimizer, mfu=mfu, train_tokens=train_tokens,
                            price_per_hour=price_per_gpu_hour, vocab_size=s["vocab_size"], sharding=sharding,
                            activation_checkpointing=activation_checkpointing, flash_attention=flash_attention,
                            quantization=quantization, report=report)
    return report
