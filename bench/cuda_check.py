"""The CUDA path on a GPU: bf16 training, which SDPA kernel each attention kind gets, MFU,
measured memory against ``analyze``, decode speed, and a real ``engine.train`` job.

    python bench/cuda_check.py [--out DIR] [--smoke] [--no-compile]

Made to run once, start to finish, on a lent GPU machine (a few minutes of device time): every
section is independent, a failing one records its error and the rest still run, and the JSON is
rewritten after each section so a run cut short keeps what it measured. ``--smoke`` runs the
same code with tiny shapes (CPU or GPU) to check the script itself. Sections:

- ``matmul``: an 8192³ bf16 matrix product, the measured ceiling MFU is also quoted against.
- ``sdpa``: for each attention kind (and GQA, ALiBi), the CUDA kernels a bf16 forward+backward
  of a one-layer model launches, classified as flash / memory-efficient / cuDNN / math, and the
  SDPA output against the readable eager path.
- ``train``: GPT-2 small (124M) and a Llama-shaped 0.25B model trained side by side with
  ``transformers``' model of the same weights (``engine.interop``), bf16 autocast, fused AdamW:
  tokens/s, MFU (``analyze``'s training FLOPs per token × tokens/s ÷ peak), and the peak memory
  ``torch.cuda.max_memory_allocated`` saw against ``analyze``'s estimate; then ours under
  ``torch.compile`` (compile time and tokens/s).
- ``attention_memory``: GPT-2 small's measured training peak with the flash kernel and with
  the math kernel (which materialises the T×T scores, as ``analyze`` counts them).
- ``decode``: greedy batch-1 decoding in bf16, our KV cache against ``transformers.generate``.
- ``job``: ``engine.train`` with ``device="cuda"`` on a synthetic task: the product's own path.

Writes bench/results/cuda_check.json, or DIR/cuda_check.json with ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
import traceback
from pathlib import Path

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from common import ROOT, environment

from engine import HARDWARE, ModelConfig, analyze, build_model, parse_spec, train  # noqa: E402
from engine.interop.mappings import to_transformers  # noqa: E402

GPT2 = dict(position="learned", norm="layernorm", ffn="gelu", bias=True, tie_embeddings=True, dropout=0.0)
LLAMA = dict(position="rope", norm="rmsnorm", ffn="swiglu", bias=False, tie_embeddings=False, dropout=0.0)


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Report:
    """The JSON under construction, written after every section."""

    def __init__(self, path: Path):
        self.path, self.data = path, {"environment": environment(), "sections": {}}

    def section(self, name: str, fn, *args):
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        try:
            result = fn(*args)
        except Exception as exc:  # one broken section must not cost the others their device time
            traceback.print_exc()
            result = {"error": f"{type(exc).__name__}: {exc}"}
        result["section_seconds"] = round(time.perf_counter() - t0, 2)
        self.data["sections"][name] = result
        self.write()
        print(json.dumps(result, indent=1)[:3000], flush=True)
        return result

    def write(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=2) + "\n")


def gpu_info() -> dict:
    info = {"cuda_available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(name=p.name, capability=f"{p.major}.{p.minor}", multiprocessors=p.multi_processor_count,
                    memory_gib=round(p.total_memory / 2**30, 1),
                    flash_sdp_enabled=torch.backends.cuda.flash_sdp_enabled(),
                    cudnn_sdp_enabled=torch.backends.cuda.cudnn_sdp_enabled())
    return info


def matmul_peak(args) -> dict:
    n = 8192 if not args.smoke else 256
    a = torch.randn(n, n, device=args.device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=args.device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync()
    t0 = time.perf_counter()
    reps = 10
    for _ in range(reps):
        a @ b
    sync()
    s = (time.perf_counter() - t0) / reps
    return {"n": n, "ms": round(1000 * s, 3), "tflops": round(2 * n**3 / s / 1e12, 1)}


# ---------------------------------------------------------------------------- SDPA kernels

def classify(names: list[str]) -> str:
    """Which attention implementation the CUDA kernel names show."""
    low = [n.lower() for n in names]
    if any("cudnn" in n and ("sdpa" in n or "attention" in n or "fmha" in n) for n in low):
        return "cudnn"
    if any("flash" in n for n in low):
        return "flash"
    if any("fmha" in n or "efficient_attention" in n or "mem_eff" in n for n in low):
        return "mem_efficient"
    if any("softmax" in n for n in low):
        return "math"
    return "none"


def kernels_of(fn) -> list[str]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        sync()
    return sorted({e.key for e in prof.key_averages() if e.device_type.name == "CUDA"})


SDPA_CASES = {
    "full (MHA, causal)": dict(),
    "full GQA 8q/2kv": dict(n_kv_head=2),
    "MQA 8q/1kv": dict(n_kv_head=1),
    "sliding window 256": dict(attention="sliding", window=256),
    "sliding window 256 + GQA 8q/2kv": dict(attention="sliding", window=256, n_kv_head=2),
    "alibi + GQA 8q/2kv": dict(position="alibi", n_kv_head=2),
    "dilated": dict(attention="dilated"),
    "block_sparse": dict(attention="block_sparse"),
    "linear": dict(attention="linear"),
    "alibi": dict(position="alibi"),
    "qk_norm + rope": dict(position="rope", qk_norm=True),
}


def sdpa(args) -> dict:
    t = 1024 if not args.smoke else 64
    d, h = (1024, 8) if not args.smoke else (64, 4)
    out = {}
    for name, kw in SDPA_CASES.items():
        try:
            kw = dict(kw)
            if args.smoke and "n_kv_head" in kw:
                kw["n_kv_head"] = min(kw["n_kv_head"], 2)
            if args.smoke and "window" in kw:
                kw["window"] = 16
            cfg = ModelConfig(n_layer=1, n_head=h, n_embd=d, block_size=t, vocab_size=512, dropout=0.0, **kw)
            torch.manual_seed(0)
            model = build_model(cfg).to(args.device)
            x = torch.randint(0, 512, (4, t), device=args.device)

            def step():
                with torch.autocast(device_type=args.device, dtype=torch.bfloat16):
                    logits, _ = model(x)
                logits.float().sum().backward()

            step()  # warm-up: masks cached, kernels chosen
            names = kernels_of(step) if args.device == "cuda" else []
            attn = [n for n in names if any(s in n.lower() for s in ("flash", "fmha", "attention", "softmax", "sdpa"))]
            # the fast path against the readable reference (eager) path, same weights, bf16
            with torch.no_grad(), torch.autocast(device_type=args.device, dtype=torch.bfloat16):
                fast, _ = model(x)
                for m in model.modules():
                    if hasattr(getattr(m, "pattern", None), "impl"):
                        m.pattern.impl = "eager"
                ref, _ = model(x)
            out[name] = {"kernel": classify(names) if names else "n/a (cpu)", "attention_kernels": attn[:6],
                         "max_abs_diff_vs_eager_bf16": float((fast.float() - ref.float()).abs().max())}
        except Exception as exc:
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
    return {"seq_len": t, "n_embd": d, "n_head": h, "cases": out}


# ---------------------------------------------------------------------------- training

def fused_adamw(model, device):
    return torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1,
                             fused=device == "cuda")


def make_step(forward, model, opt, device):
    params = list(model.parameters())

    def step(x, y):
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            logits = forward(x)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss

    return step


def timed(step, batches) -> list[float]:
    out = []
    for x, y in batches:
        sync()
        t0 = time.perf_counter()
        step(x, y)
        sync()
        out.append(time.perf_counter() - t0)
    return out


def peak_memory(fn) -> int | None:
    if not torch.cuda.is_available():
        return None
    sync()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    fn()
    sync()
    return torch.cuda.max_memory_allocated()


def train_shapes(args):
    if args.smoke:
        return [("gpt2", "GPT-2 tiny", dict(GPT2, n_layer=2, n_head=2, n_embd=64, vocab_size=256), 64, 4),
                ("llama", "Llama tiny", dict(LLAMA, n_layer=2, n_head=4, n_kv_head=2, n_embd=64, vocab_size=256),
                 64, 4)]
    return [
        ("gpt2", "GPT-2 small 124M", dict(GPT2, n_layer=12, n_head=12, n_embd=768, vocab_size=50257), 1024, 16),
        ("llama", "Llama-shaped 16L/1024 GQA 16q/4kv", dict(LLAMA, n_layer=16, n_head=16, n_kv_head=4, n_embd=1024,
                                                             vocab_size=32000), 1024, 16),
    ]


def train_compare(args) -> dict:
    peak_catalogue = HARDWARE["h200"].peak_flops("bf16")
    rows = []
    for family, label, kw, seq, batch in train_shapes(args):
        cfg = ModelConfig(**kw, block_size=seq)
        report = analyze(cfg, batch_size=batch, seq_len=seq, dtype="bf16", optimizer="adamw")
        torch.manual_seed(0)
        ours = build_model(cfg).to(args.device).train()
        hf = to_transformers(ours, model_type=family).to(args.device).train()
        g = torch.Generator(device=args.device).manual_seed(0)

        def batches(n):
            xy = [torch.randint(0, cfg.vocab_size, (batch, seq + 1), device=args.device, generator=g) for _ in range(n)]
            return [(b[:, :-1], b[:, 1:]) for b in xy]

        steps = {
            "ours": make_step(lambda x: ours(x)[0], ours, fused_adamw(ours, args.device), args.device),
            "transformers": make_step(lambda x: hf(input_ids=x, use_cache=False).logits, hf,
                                      fused_adamw(hf, args.device), args.device),
        }
        memory = {}
        for name, step in steps.items():  # warm-up; the peak of a steady-state step
            timed(step, batches(args.warmup))
            memory[name] = peak_memory(lambda: timed(step, batches(1)))  # noqa: B023
        times = {name: [] for name in steps}
        for r in range(args.steps):
            work = batches(1)
            for name in (list(steps) if r % 2 == 0 else list(reversed(steps))):
                times[name] += timed(steps[name], work)
        tps = {n: batch * seq / statistics.median(t) for n, t in times.items()}
        flops = report["flops"]["per_token_train"]
        row = {
            "name": label, "family": family, "batch_size": batch, "seq_len": seq,
            "params": ours.num_params(), "params_analyze": report["params"]["total"],
            "tokens_per_s": {k: round(v) for k, v in tps.items()},
            "ms_per_step_median": {k: round(1000 * statistics.median(t), 2) for k, t in times.items()},
            "ratio_ours_over_hf": round(tps["ours"] / tps["transformers"], 3),
            "train_flops_per_token": flops,
            "mfu_vs_catalogue_bf16": {k: round(v * flops / peak_catalogue, 4) for k, v in tps.items()},
            "peak_memory_bytes": memory,
            "analyze_memory": report["memory"],
        }
        if args.matmul_tflops:
            row["mfu_vs_measured_matmul"] = {k: round(v * flops / (args.matmul_tflops * 1e12), 4)
                                             for k, v in tps.items()}
        if args.compile and family == "gpt2":
            row["compiled"] = compiled_run(cfg, ours, batches, args, flops, peak_catalogue)
        rows.append(row)
        print(f"{label}: ours {tps['ours']:,.0f} tok/s, transformers {tps['transformers']:,.0f} tok/s, "
              f"ratio {row['ratio_ours_over_hf']}, MFU {row['mfu_vs_catalogue_bf16']}", flush=True)
        del ours, hf, steps
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return {"peak_bf16_catalogue": peak_catalogue, "shapes": rows}


def compiled_run(cfg, model, batches, args, flops, peak) -> dict:
    try:
        compiled = torch.compile(model)
        step = make_step(lambda x: compiled(x)[0], model, fused_adamw(model, args.device), args.device)
        t0 = time.perf_counter()
        timed(step, batches(2))
        compile_s = time.perf_counter() - t0
        timed(step, batches(2))
        t = timed(step, batches(args.steps))
        tps = batch_tokens(batches) / statistics.median(t)
        return {"compile_seconds": round(compile_s, 1), "tokens_per_s": round(tps),
                "mfu_vs_catalogue_bf16": round(tps * flops / peak, 4)}
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def batch_tokens(batches) -> int:
    x, _ = batches(1)[0]
    return x.numel()


def attention_memory(args) -> dict:
    """Training peak with the flash kernel against the math kernel, GPT-2 small, one step."""
    if args.device != "cuda":
        return {"skipped": "needs CUDA"}
    from torch.nn.attention import SDPBackend, sdpa_kernel

    seq, batch = (1024, 8) if not args.smoke else (64, 2)
    kw = dict(GPT2, n_layer=12, n_head=12, n_embd=768, vocab_size=50257) if not args.smoke else \
        dict(GPT2, n_layer=2, n_head=2, n_embd=64, vocab_size=256)
    cfg = ModelConfig(**kw, block_size=seq)
    torch.manual_seed(0)
    model = build_model(cfg).to(args.device).train()
    step = make_step(lambda x: model(x)[0], model, fused_adamw(model, args.device), args.device)
    xy = torch.randint(0, cfg.vocab_size, (batch, seq + 1), device=args.device)
    x, y = xy[:, :-1], xy[:, 1:]
    out = {"batch_size": batch, "seq_len": seq,
           "analyze_memory_bf16": analyze(cfg, batch_size=batch, seq_len=seq, dtype="bf16")["memory"]}
    for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("math", SDPBackend.MATH)):
        with sdpa_kernel([backend]):
            step(x, y)  # optimizer state exists from here on
            out[f"peak_bytes_{name}"] = peak_memory(lambda: step(x, y))  # noqa: B023
    # what the step itself adds on top of weights, gradients and optimizer state at rest
    return out


MEMORY_CASES = [  # label, model fields, batch, seq, autocast bf16
    ("GPT-2 small b4 T1024", dict(GPT2, n_layer=12, n_head=12, n_embd=768, vocab_size=50257), 4, 1024, True),
    ("GPT-2 small b16 T1024", dict(GPT2, n_layer=12, n_head=12, n_embd=768, vocab_size=50257), 16, 1024, True),
    ("GPT-2 small b8 T1024 fp32", dict(GPT2, n_layer=12, n_head=12, n_embd=768, vocab_size=50257), 8, 1024, False),
    ("Llama 16L/1024 GQA b8 T2048", dict(LLAMA, n_layer=16, n_head=16, n_kv_head=4, n_embd=1024, vocab_size=32000),
     8, 2048, True),
    ("Llama 8L/2048 MHA b4 T4096", dict(LLAMA, n_layer=8, n_head=16, n_embd=2048, vocab_size=32000), 4, 4096, True),
    ("Mistral-like sliding 512, 8L/1024 b8 T2048", dict(LLAMA, n_layer=8, n_head=16, n_kv_head=4, n_embd=1024,
                                                         vocab_size=32000, attention="sliding", window=512), 8, 2048, True),
    ("MoE 8x top-2, 6L/768 b8 T1024", dict(LLAMA, n_layer=6, n_head=12, n_embd=768, vocab_size=32000, n_expert=8,
                                            top_k=2), 8, 1024, True),
]


def memory_vs_analyze(args) -> dict:
    """Measured training-step peak (weights, gradients, AdamW state, activations) against
    ``analyze``'s total, with the fused (flash/memory-efficient) kernels and with the math kernel."""
    if args.device != "cuda":
        return {"skipped": "needs CUDA"}
    from torch.nn.attention import SDPBackend, sdpa_kernel

    rows = []
    for label, kw, batch, seq, bf16 in MEMORY_CASES:
        cfg = ModelConfig(**kw, block_size=seq)
        torch.manual_seed(0)
        model = build_model(cfg).to(args.device).train()
        opt = fused_adamw(model, args.device)
        params = list(model.parameters())
        xy = torch.randint(0, cfg.vocab_size, (batch, seq + 1), device=args.device)

        def step():
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=bf16):
                _, loss = model(xy[:, :-1], xy[:, 1:])  # noqa: B023 - the engine's own loss
            opt.zero_grad(set_to_none=True)  # noqa: B023
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)  # noqa: B023
            opt.step()  # noqa: B023

        row = {"name": label, "batch_size": batch, "seq_len": seq, "dtype": "bf16" if bf16 else "fp32",
               "params": model.num_params()}
        for kernel, backends, flash in (("fused", [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION,
                                                   SDPBackend.EFFICIENT_ATTENTION], True),
                                        ("math", [SDPBackend.MATH], False)):
            try:
                with sdpa_kernel(backends):
                    step()  # optimizer state exists from here on
                    peak = peak_memory(step)
                predicted = analyze(cfg, batch_size=batch, seq_len=seq, dtype="bf16" if bf16 else "fp32",
                                    flash_attention=flash)["memory"]
                row[kernel] = {"measured": peak, "analyze": predicted["train_total"],
                               "analyze_activations": predicted["activations"],
                               "ratio_analyze_over_measured": round(predicted["train_total"] / peak, 3)}
            except Exception as exc:
                row[kernel] = {"error": f"{type(exc).__name__}: {exc}"}
        rows.append(row)
        print(row, flush=True)
        del model, opt, params
        torch.cuda.empty_cache()
    return {"cases": rows}


# ---------------------------------------------------------------------------- decode

@torch.inference_mode()
def decode(args) -> dict:
    prompt, new, reps = (32, 256, 3) if not args.smoke else (8, 16, 2)
    kw = dict(GPT2, n_layer=12, n_head=12, n_embd=768, vocab_size=50257) if not args.smoke else \
        dict(GPT2, n_layer=2, n_head=2, n_embd=64, vocab_size=256)
    rows = []
    for label, extra, family in (("GPT-2 small 124M", {}, "gpt2"),):
        cfg = ModelConfig(**kw, **extra, block_size=prompt + new)
        torch.manual_seed(0)
        ours = build_model(cfg).eval()
        hf = to_transformers(ours, model_type=family).eval()
        dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
        ours, hf = ours.to(args.device, dtype), hf.to(args.device, dtype)
        idx = torch.randint(0, cfg.vocab_size, (1, prompt), device=args.device)

        def run_ours(n):
            sync()
            t0 = time.perf_counter()
            out = ours.generate(idx, n, temperature=0, use_cache=True)
            sync()
            return time.perf_counter() - t0, out

        def run_hf(n):
            sync()
            t0 = time.perf_counter()
            out = hf.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=n, min_new_tokens=n,
                              do_sample=False, use_cache=True, eos_token_id=None, pad_token_id=0)
            sync()
            return time.perf_counter() - t0, out

        run_ours(8), run_hf(8)
        times, outs = {"ours": [], "transformers": []}, {}
        for r in range(reps):
            for name, fn in ((("ours", run_ours), ("transformers", run_hf)) if r % 2 == 0
                             else (("transformers", run_hf), ("ours", run_ours))):
                s, outs[name] = fn(new)
                times[name].append(s)
        tps = {k: new / statistics.median(v) for k, v in times.items()}
        agree = (outs["ours"][0, prompt:] == outs["transformers"][0, prompt:]).float().mean().item()
        rows.append({"name": label, "dtype": str(dtype), "prompt": prompt, "new_tokens": new,
                     "tokens_per_s": {k: round(v, 1) for k, v in tps.items()},
                     "ratio_ours_over_hf": round(tps["ours"] / tps["transformers"], 3),
                     "greedy_token_agreement": round(agree, 3)})
    return {"shapes": rows}


# ---------------------------------------------------------------------------- the job path

def job(args) -> dict:
    steps = 300 if not args.smoke else 20
    spec = parse_spec({
        "model": {"n_layer": 4, "n_head": 4, "n_embd": 256, "block_size": 128, "position": "rope",
                  "norm": "rmsnorm", "ffn": "swiglu", "n_kv_head": 2},
        "data": {"source": "synthetic", "task": "reverse"},
        "train": {"steps": steps, "batch_size": 64, "device": args.device, "eval_interval": steps,
                  "warmup_steps": 20 if not args.smoke else 2},
    })
    events = []
    t0 = time.perf_counter()
    result = train(spec, on_event=events.append, should_stop=lambda: False)
    wall = time.perf_counter() - t0
    kinds = {}
    for e in events:
        kinds[e["kind"]] = kinds.get(e["kind"], 0) + 1
    step_events = [e for e in events if e["kind"] == "step"]
    evals = [e for e in events if e["kind"] == "eval"]
    return {"steps": steps, "wall_seconds": round(wall, 2), "event_counts": kinds,
            "first_loss": step_events[0].get("loss") if step_events else None,
            "last_loss": step_events[-1].get("loss") if step_events else None,
            "last_eval": {k: v for k, v in (evals[-1] if evals else {}).items() if k != "sample"},
            "tokens_per_s_last": step_events[-1].get("tokens_per_s") if step_events else None,
            "result": {k: v for k, v in vars(result).items() if isinstance(v, (int, float, str, type(None)))}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="folder for cuda_check.json (default bench/results)")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes: check the script, CPU or GPU")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--only", default="", help="comma-separated section names")
    args = parser.parse_args()
    args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.matmul_tflops = None
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    out = Path(args.out) if args.out else ROOT / "bench" / "results"
    report = Report(out / "cuda_check.json")
    report.data["gpu"] = gpu_info()
    print(json.dumps(report.data["gpu"]), flush=True)
    only = set(filter(None, args.only.split(",")))
    sections = [("matmul", matmul_peak), ("sdpa", sdpa), ("job", job), ("train", train_compare),
                ("attention_memory", attention_memory), ("decode", decode), ("memory", memory_vs_analyze)]
    for name, fn in sections:
        if only and name not in only:
            continue
        result = report.section(name, fn, args)
        if name == "matmul" and "tflops" in result:
            args.matmul_tflops = result["tflops"]
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())
