"""How fast the composer's analysis answers, and (on a GPU) how close its memory figures are.

    python bench/analyze_speed.py [--repeats 200]
    python bench/analyze_speed.py --gpu-memory      # needs CUDA; a minute on an H200

The speed run times ``engine.analyze`` and ``engine.fit`` on the largest preset (Llama 3 405B)
with every setting on (8 GPUs, ZeRO-3, checkpointing, flash attention, int4, a device: the
report's ``fit`` included), the figure issue 4 targets at ≤ 20 ms per report, and writes
bench/results/analyze_speed.json (median and p95 in milliseconds).

``--gpu-memory`` trains a few steps of GPT-2 small and a Llama-shaped model under bf16
autocast with fused AdamW, with PyTorch's flash and math SDPA kernels and with every block
checkpointed, and compares ``torch.cuda.max_memory_allocated`` of a step with ``analyze``'s
``train_total``; it writes bench/results/analyze_memory_gpu.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import statistics
import time

from common import write

import engine  # noqa: E402

ALL_ON = {"dtype": "bf16", "n_gpus": 8, "sharding": "zero3", "activation_checkpointing": True,
          "flash_attention": True, "quantization": "int4", "hardware": "h100-sxm", "price_per_gpu_hour": 2.0}


def timed(fn, repeats: int) -> dict:
    fn()  # first call: imports, the cpu-local measurement, caches
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {"median_ms": round(statistics.median(times), 3), "p95_ms": round(times[int(0.95 * (len(times) - 1))], 3)}


def speed(repeats: int) -> int:
    cfg = engine.preset("llama-3-405b")
    report = {
        "preset": "llama-3-405b",
        "params": engine.analyze(cfg)["params"]["total"],
        "settings": {"batch_size": 8, "seq_len": 8192, **ALL_ON},
        "analyze": timed(lambda: engine.analyze(cfg, batch_size=1, seq_len=8192), repeats),
        "analyze_all_settings": timed(lambda: engine.analyze(cfg, batch_size=8, seq_len=8192, **ALL_ON), repeats),
        "fit_h100": timed(lambda: engine.fit(cfg, "h100-sxm", n_gpus=8, batch_size=1, seq_len=8192), repeats),
        "target_ms": 20,
    }
    full = report["analyze_all_settings"]
    print(f"analyze(llama-3-405b): median {report['analyze']['median_ms']} ms; with every setting and fit: "
          f"median {full['median_ms']} ms, p95 {full['p95_ms']} ms; "
          f"fit on 8×H100: median {report['fit_h100']['median_ms']} ms (target ≤ 20 ms)")
    write("analyze_speed", report)
    return 0


def measure_step(cfg, batch: int, *, kernel: str, checkpointing: bool) -> int:
    """Peak bytes allocated during one bf16-autocast training step (after a warm-up step)."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.checkpoint import checkpoint

    model = engine.build_model(cfg).cuda()
    if checkpointing:  # keep each block's input, recompute the block in the backward pass
        for block in model.h:
            block.forward = functools.partial(
                lambda x, _forward, **kw: checkpoint(functools.partial(_forward, **kw), x, use_reentrant=False),
                _forward=block.forward)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    idx = torch.randint(cfg.vocab_size, (batch, cfg.block_size), device="cuda")
    # fused kernels (flash, or memory-efficient where flash lacks a feature): no T×T matrix kept
    backend = {"flash": [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION], "math": [SDPBackend.MATH]}[kernel]

    def step():
        with sdpa_kernel(backend):  # the backward pass too: checkpointing recomputes the forward there
            with torch.autocast("cuda", dtype=torch.bfloat16):
                _, loss = model(idx, idx)
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    del model, opt, idx
    torch.cuda.empty_cache()
    return peak


def gpu_memory() -> int:
    gpt2 = dataclasses.replace(engine.preset("gpt2"), dropout=0.0)
    llama = engine.ModelConfig(n_layer=16, n_embd=1024, n_head=16, n_kv_head=4, ffn="swiglu", position="rope",
                               norm="rmsnorm", vocab_size=32000, tie_embeddings=False, block_size=1024, bias=False)
    cases = [("gpt2", gpt2, 8, "flash", False), ("gpt2", gpt2, 8, "math", False), ("gpt2", gpt2, 16, "flash", False),
             ("gpt2", gpt2, 8, "flash", True), ("gpt2", gpt2, 16, "flash", True),
             ("llama-shaped", llama, 16, "flash", False), ("llama-shaped", llama, 16, "flash", True)]
    rows = []
    for name, cfg, batch, kernel, ckpt in cases:
        try:
            measured = measure_step(cfg, batch, kernel=kernel, checkpointing=ckpt)
        except Exception as exc:  # noqa: BLE001 - a kernel this build lacks: record it, carry on
            measured, error = None, f"{type(exc).__name__}: {exc}"
        else:
            error = None
        estimate = engine.analyze(cfg, batch_size=batch, dtype="bf16", flash_attention=kernel == "flash",
                                  activation_checkpointing=ckpt)["memory"]["train_total"]
        row = {"model": name, "batch": batch, "seq_len": cfg.block_size, "kernel": kernel, "checkpointing": ckpt,
               "measured_gb": measured and round(measured / 1e9, 2), "analyze_gb": round(estimate / 1e9, 2),
               "ratio": measured and round(estimate / measured, 3), "error": error}
        print(row, flush=True)
        rows.append(row)
    write("analyze_memory_gpu", {"rows": rows})
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--gpu-memory", action="store_true", help="measure training memory on CUDA instead")
    args = parser.parse_args()
    return gpu_memory() if args.gpu_memory else speed(args.repeats)


if __name__ == "__main__":
    raise SystemExit(main())
