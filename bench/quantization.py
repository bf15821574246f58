"""What quantisation costs and saves on a small trained decoder, and what a KV cache buys.

    python bench/quantization.py [--path /work/shared/data/tinyshakespeare.txt] [--steps 600]

Trains the nanoGPT shakespeare_char shape (4 layers, 4 heads, width 128, context 64; see
``nanogpt_shakespeare.py``) for ``--steps`` steps, char-level, then for every method of
``engine.inference.quantize.QUANTIZATIONS`` measures, with ``engine.inference.quantize.quantization_table``: weight
bytes (embeddings and the tied head stay fp32), held-out perplexity on ``--eval-tokens`` tokens
of the validation split and its change, greedy KV-cached decode tokens/s at batch 1 (fastest of
``--repeats``) and the largest logit difference from fp32. Then ``engine.inference.run.run_inference``
samples a few prompts with and without the KV cache, fp32 and int8-weight, and reports time to
first token, tokens/s and peak memory side by side (same seed, so the same tokens).
Writes bench/results/quantization.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch  # noqa: E402
from common import ROOT, write

from engine import parse_spec, train  # noqa: E402
from engine.data.datasets import load_data  # noqa: E402
from engine.inference.quantize import format_table, quantization_table, quantize  # noqa: E402
from engine.inference.run import run_inference  # noqa: E402

DEFAULT_PATH = str(ROOT.parent / "shared" / "data" / "tinyshakespeare.txt")
PROMPTS = ["ROMEO:\n", "LUCIO:\n", "GREMIO:\n"]  # the first two share a length: one batch of 2, one of 1
NEW_TOKENS = 48  # prompt + new tokens stay inside the 64-token context: no re-reading of a cropped one


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", default=DEFAULT_PATH, help="tinyshakespeare text (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--eval-tokens", type=int, default=16384)
    parser.add_argument("--group-size", type=int, default=32, help="int4 group size (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.path == DEFAULT_PATH and not Path(args.path).is_file():
        print(f"skipped: no {args.path}; get tinyshakespeare (nanoGPT's data/shakespeare_char) and pass --path")
        return 0

    spec = parse_spec({
        "model": {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64, "dropout": 0.0, "bias": False},
        "data": {"source": "text", "path": args.path, "tokenizer": "char", "val_fraction": 0.1},
        "train": {"steps": args.steps, "batch_size": 12, "lr": 1e-3, "min_lr_ratio": 0.1,
                  "warmup_steps": min(100, args.steps), "weight_decay": 0.1, "grad_clip": 1.0,
                  "eval_interval": args.steps, "eval_iters": 10, "seed": 1337, "device": "cpu",
                  "sample_tokens": 0, "beta1": 0.9, "beta2": 0.99},
    })
    t0 = time.perf_counter()
    result = train(spec)
    train_s = time.perf_counter() - t0
    model, tokenizer = result.model.eval(), result.tokenizer
    val = load_data(spec.data).val
    print(f"trained {model.num_params():,} params for {result.steps_done} steps in {train_s:.0f} s; "
          f"val loss {result.val_losses[-1][1]:.3f}")

    rows = quantization_table(model, val, n_tokens=args.eval_tokens, group_size=args.group_size,
                              decode_tokens=48, prompt_tokens=16, repeats=args.repeats,
                              on_progress=lambda m: print(f"  measuring {m}", flush=True))
    print(format_table(rows))

    cache_rows = []
    for method in ("none", "int8_weight"):
        m = model if method == "none" else quantize(model, method)
        out = run_inference(m, tokenizer, PROMPTS, max_new_tokens=NEW_TOKENS, temperature=0.8, top_k=40, seed=0,
                            compare_cache=True)
        for path, meas in out["measurements"].items():
            cache_rows.append({"method": method, "path": path, **meas})
            print(f"{method:12s} {path:14s} ttft {1000 * meas['ttft_s']:6.2f} ms  {meas['tokens_per_s']:8.0f} tok/s  "
                  f"{meas['decode_ms_per_token']:6.2f} ms/step  peak {meas['peak_memory_bytes'] / 2**20:6.2f} MiB")
        print(f"  same tokens with and without the cache: {out['same_tokens']}; "
              f"sample: {out['results'][0]['prompt'] + out['results'][0]['completion']!r}")
        cache_rows[-1]["same_tokens"] = cache_rows[-2]["same_tokens"] = out["same_tokens"]
        batches = out["batches"]

    write("quantization", {
        "what": "post-training quantisation of a char-level Shakespeare decoder (4L/4H/128, ctx 64): weight bytes, "
                "held-out perplexity change, greedy decode tokens/s (batch 1, KV cache, fastest of the repeats); "
                "then run_inference with and without the KV cache",
        "spec": spec.to_dict(),
        "params": model.num_params(),
        "train_s": round(train_s, 1),
        "val_loss": result.val_losses[-1][1],
        "eval_tokens": args.eval_tokens,
        "table": rows,
        "kv_cache": {"prompts": PROMPTS, "batches": batches, "max_new_tokens": NEW_TOKENS, "rows": cache_rows},
        "notes": ["weight-only int8/int4 dequantise in eager PyTorch at every forward: on a CPU they save memory, "
                  "not time; fused kernels (GPU) are what make them fast",
                  "CPU peak memory = weights + kept decoding weights + KV cache + largest logits (a lower bound)"],
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
