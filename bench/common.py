"""What every benchmark shares: the environment record and writing bench/results/<name>.json."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere, without installing the package
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random weights only: never reach for the Hub
RESULTS = ROOT / "bench" / "results"


def environment() -> dict:
    import torch

    env = {
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),  # other work on the machine skews the numbers
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    try:
        import transformers

        env["transformers"] = transformers.__version__
    except ImportError:
        env["transformers"] = None
    return env


def write(name: str, report: dict) -> Path:
    """Write ``report`` plus the environment to bench/results/<name>.json; warn when the
    machine was busy, since then the figures say more about the neighbours than the code."""
    report = {**report, "environment": environment()}
    out = RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    load, cpus = report["environment"]["load_avg_1m"], os.cpu_count() or 1
    if load > 0.5 * cpus:
        print(f"note: the machine was busy (load {load} on {cpus} CPUs); compare with care")
    print(f"wrote {out.relative_to(ROOT)}")
    return out


# The model shapes both comparisons with transformers measure (architecture, name, config).
GPT2 = dict(position="learned", norm="layernorm", ffn="gelu", bias=True, tie_embeddings=True)
LLAMA = dict(position="rope", norm="rmsnorm", ffn="swiglu", bias=False, tie_embeddings=False)
SHAPES = [
    ("gpt2", "GPT-2 4L/4H/128", dict(GPT2, n_layer=4, n_head=4, n_embd=128)),
    ("gpt2", "GPT-2 6L/6H/192", dict(GPT2, n_layer=6, n_head=6, n_embd=192)),
    ("llama", "Llama 4L/4H(2kv)/128", dict(LLAMA, n_layer=4, n_head=4, n_kv_head=2, n_embd=128)),
    ("llama", "Llama 6L/6H(2kv)/192", dict(LLAMA, n_layer=6, n_head=6, n_kv_head=2, n_embd=192)),
]
VOCAB = 256  # byte-sized: the embedding and head stay a small share, as in the explorer's models
