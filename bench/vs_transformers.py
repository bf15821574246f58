"""Training throughput of our engine against transformers' model of the same architecture.

    python bench/vs_transformers.py [--steps 24] [--batch 16] [--seq 128] [--threads N] [--profile] [--only NAME]

For each shape, our model is built, copied into transformers with ``engine.interop`` (so both
start from the same weights), and both train side by side in one process: same random token
batches, same AdamW settings, same threads, same loss (cross-entropy on the logits). After
``--warmup`` untimed steps each, they alternate step by step (who goes first alternates too) on
the same batch, and tokens/s comes from the median step time, so a burst of load from other
processes hits both alike and outliers do not count. HF runs with
``use_cache=False`` (no KV cache is wanted when training) and its "sdpa" attention, as ours.
``--profile`` adds the top operators by self CPU time for both, for finding where time goes.
Writes bench/results/vs_transformers.json.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from common import SHAPES, VOCAB, write

from engine import ModelConfig, build_model  # noqa: E402
from engine.interop.mappings import to_transformers  # noqa: E402


def train_steps(forward, params, opt, batches) -> list[float]:
    """Seconds of each optimizer step, one per batch (forward, backward, clip, AdamW)."""
    times = []
    for x, y in batches:
        t0 = time.perf_counter()
        logits = forward(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        times.append(time.perf_counter() - t0)
    return times


def optimizer(model):
    return torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)


def profile(forward, params, opt, batches, top: int = 12) -> list[dict]:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        train_steps(forward, params, opt, batches)
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    n = len(batches)
    return [{"op": e.key, "self_ms_per_step": round(e.self_cpu_time_total / 1000 / n, 2),
             "calls_per_step": round(e.count / n, 1)} for e in rows]


def bench_shape(family, label, kw, args) -> dict:
    cfg = ModelConfig(**kw, block_size=args.seq, vocab_size=VOCAB)
    torch.manual_seed(0)
    ours = build_model(cfg).train()
    hf = to_transformers(ours, model_type=family).train()
    ours_fwd = lambda x: ours(x)[0]  # noqa: E731
    hf_fwd = lambda x: hf(input_ids=x, use_cache=False).logits  # noqa: E731
    runners = {
        "ours": (ours_fwd, list(ours.parameters()), optimizer(ours)),
        "transformers": (hf_fwd, list(hf.parameters()), optimizer(hf)),
    }
    compile_s = None
    if args.compile:  # a separate copy of our model, so the eager one is measured untouched
        twin = build_model(cfg).train()
        twin.load_state_dict(ours.state_dict())
        compiled = torch.compile(twin)
        runners["ours_compiled"] = (lambda x: compiled(x)[0], list(twin.parameters()), optimizer(twin))
        t0 = time.perf_counter()
        train_steps(*runners["ours_compiled"], [(torch.randint(0, VOCAB, (args.batch, args.seq)),
                                                 torch.randint(0, VOCAB, (args.batch, args.seq)))])
        compile_s = time.perf_counter() - t0
    g = torch.Generator().manual_seed(0)

    def batches(n):
        out = []
        for _ in range(n):
            xy = torch.randint(0, VOCAB, (args.batch, args.seq + 1), generator=g)
            out.append((xy[:, :-1], xy[:, 1:]))
        return out

    for fwd, params, opt in runners.values():  # warm-up: allocator, kernels, AdamW state
        train_steps(fwd, params, opt, batches(args.warmup))
    times = {name: [] for name in runners}
    for r in range(args.steps):
        order = list(runners) if r % 2 == 0 else list(reversed(runners))  # who goes first alternates
        work = batches(1)
        for name in order:
            times[name] += train_steps(*runners[name], work)
    step_s = {name: statistics.median(t) for name, t in times.items()}
    tps = {name: args.batch * args.seq / s for name, s in step_s.items()}
    row = {
        "name": label,
        "family": family,
        "config": cfg.to_dict(),
        "params": ours.num_params(),
        "tokens_per_s": {k: round(v, 1) for k, v in tps.items()},
        "ms_per_step_median": {k: round(1000 * s, 2) for k, s in step_s.items()},
        "ms_per_step_mean": {k: round(1000 * statistics.mean(t), 2) for k, t in times.items()},
        "ratio_ours_over_hf": round(tps["ours"] / tps["transformers"], 3),
    }
    if args.compile:
        row["ratio_ours_compiled_over_hf"] = round(tps["ours_compiled"] / tps["transformers"], 3)
        row["compile_seconds"] = round(compile_s, 1)
    if args.profile:
        row["profile"] = {name: profile(*runners[name], batches(5)) for name in runners}
    print(f"{label:24s} {row['params']:>10,}  ours {tps['ours']:>9,.0f} tok/s  "
          f"transformers {tps['transformers']:>9,.0f} tok/s  ratio {row['ratio_ours_over_hf']:.2f}"
          + (f"  compiled {tps['ours_compiled']:>9,.0f} tok/s  ratio {row['ratio_ours_compiled_over_hf']:.2f}"
             f" (compiled in {compile_s:.0f} s)" if args.compile else ""))
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=24, help="timed steps per model")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--compile", action="store_true",
                        help="also time our model under torch.compile (compile time reported separately)")
    parser.add_argument("--only", default="", help="run only shapes whose name contains this, e.g. 'Llama'")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"training throughput, batch {args.batch} x seq {args.seq}, {torch.get_num_threads()} threads, "
          f"{args.steps} alternating steps each after {args.warmup} warm-up steps, median step time")
    rows = [bench_shape(family, label, kw, args) for family, label, kw in SHAPES if args.only in label]
    write("vs_transformers", {
        "what": "training tokens/s (median step), ours vs transformers, same weights/batches/AdamW/threads, "
                "alternating step by step",
        "batch_size": args.batch, "seq_len": args.seq, "warmup_steps": args.warmup, "steps": args.steps,
        "shapes": rows,
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
