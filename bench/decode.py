"""Greedy decoding speed at batch 1 and 8: our KV-cached ``generate`` against transformers' ``generate``.

    python bench/decode.py [--prompt 32] [--new 128] [--repeats 7] [--batches 1,8]

Each shape's model is built by us and copied into transformers with ``engine.interop``, so
both decode with the same weights; the report says whether their greedy tokens agree. Both
use a KV cache (``use_cache=True``); transformers gets ``min_new_tokens`` and no EOS so that
both produce exactly ``--new`` tokens. Runs alternate; tokens/s and the ratio come from each
side's fastest of ``--repeats`` runs (as ``timeit`` advises: the fastest run is the one other
processes disturbed least, and a run cannot be faster than the code allows), and the median
is reported beside it.
Writes bench/results/decode.json.
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import time

import torch  # noqa: E402
from common import SHAPES, VOCAB, write

from engine import ModelConfig, build_model  # noqa: E402
from engine.interop.mappings import to_transformers  # noqa: E402


def has_cache(model) -> bool:
    return "use_cache" in inspect.signature(model.generate).parameters


@torch.no_grad()
def time_ours(model, idx, new: int) -> tuple[float, torch.Tensor]:
    kw = {"use_cache": True} if has_cache(model) else {}
    t0 = time.perf_counter()
    out = model.generate(idx, new, temperature=0, **kw)
    return time.perf_counter() - t0, out


@torch.no_grad()
def time_hf(hf, idx, new: int) -> tuple[float, torch.Tensor]:
    t0 = time.perf_counter()
    out = hf.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=new, min_new_tokens=new,
                      do_sample=False, use_cache=True, eos_token_id=None, pad_token_id=0)
    return time.perf_counter() - t0, out


def bench_shape(family, label, kw, args, batch: int = 1) -> dict:
    cfg = ModelConfig(**kw, block_size=args.prompt + args.new, vocab_size=VOCAB)
    torch.manual_seed(0)
    ours = build_model(cfg).eval()
    hf = to_transformers(ours, model_type=family).eval()
    idx = torch.randint(0, VOCAB, (batch, args.prompt), generator=torch.Generator().manual_seed(0))
    time_ours(ours, idx, 8)  # warm-up
    time_hf(hf, idx, 8)
    times = {"ours": [], "transformers": []}
    outs = {}
    for r in range(args.repeats):
        runs = [("ours", time_ours, ours), ("transformers", time_hf, hf)]
        for name, fn, model in runs if r % 2 == 0 else reversed(runs):
            seconds, outs[name] = fn(model, idx, args.new)
            times[name].append(seconds)
    tps = {name: batch * args.new / min(t) for name, t in times.items()}
    tps_median = {name: batch * args.new / statistics.median(t) for name, t in times.items()}
    same = outs["ours"].shape == outs["transformers"].shape and torch.equal(outs["ours"], outs["transformers"])
    row = {
        "name": label,
        "family": family,
        "batch_size": batch,
        "params": ours.num_params(),
        "ours_kv_cache": has_cache(ours),
        "tokens_per_s": {k: round(v, 1) for k, v in tps.items()},
        "ratio_ours_over_hf": round(tps["ours"] / tps["transformers"], 3),
        "tokens_per_s_median": {k: round(v, 1) for k, v in tps_median.items()},
        "ratio_of_medians": round(tps_median["ours"] / tps_median["transformers"], 3),
        "same_tokens": same,
    }
    cache = "KV cache" if row["ours_kv_cache"] else "NO cache"
    print(f"{label:24s} batch {batch}  ours ({cache}) {tps['ours']:>7,.0f} tok/s  transformers {tps['transformers']:>7,.0f} tok/s"
          f"  ratio {row['ratio_ours_over_hf']:.2f}  same tokens: {same}")
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    parser.add_argument("--new", type=int, default=128, help="tokens to generate")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes (default: %(default)s)")
    # one thread: a batch-1 step of these sizes is too small to share out, and on a busy machine
    # OpenMP threads that wait for each other cost more than they bring (both sides alike)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    print(f"greedy decoding, batch {args.batches}, {args.prompt}-token prompt + {args.new} new tokens, "
          f"{torch.get_num_threads()} threads, fastest of {args.repeats} runs")
    rows = [bench_shape(family, label, kw, args, batch) for batch in batches for family, label, kw in SHAPES]
    write("decode", {
        "what": "greedy decode tokens/s (all sequences of the batch; fastest of the repeats, medians beside), "
                "ours with KV cache vs transformers generate",
        "prompt_tokens": args.prompt, "new_tokens": args.new, "repeats": args.repeats, "shapes": rows,
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
