"""Serving SmolLM2-135M-Instruct to a stream of requests: continuous (iteration-level) batching
against static batching, both through ``engine.serving.ServingEngine``, and the paged KV cache's
memory against a contiguous cache's.

    python bench/serving_engine.py [--requests 32] [--rate 1.0] [--max-batch 16] [--threads 2]

The workload: ``--requests`` chat prompts (the built-in instruction set's questions in the chat
template) arriving as a Poisson process of ``--rate`` per second, each asking for a number of
output tokens drawn uniformly from 8 to 256, greedy, with no stop token, so each request produces
exactly that many and both policies do the same work (the report says whether their tokens
agree). Both policies serve the same workload in the same process, one after the other.

The clock is the engine's: each ``step()`` advances it by the step's measured wall time, and when
the engine is idle it jumps to the next arrival (no sleeping). A token is seen at the end of the
step that made it. Per policy: output tokens/s (all output tokens over the time from the first
arrival to the last token), time to first token (first token − arrival) and time per output token
((last token − first token) / (tokens − 1)), p50 and p99, steps, preemptions; the ratios
continuous/static come from the same run. Static admits only into an empty batch, so each batch
waits for its longest request.

KV memory, sampled after every step of the continuous run: the bytes the paged cache holds (its
blocks) and uses (positions cached), against a contiguous cache that preallocates per running
request either its bound (prompt + max_tokens) or the model's whole context (8,192 positions,
when the bound is unknown, as a static cache sized for the model does); means over the steps,
peaks, and each one's ratio to the bytes used.

Writes bench/results/serving_engine.json.
"""

from __future__ import annotations

import argparse
import collections
import random
import statistics
import time

import torch
from common import write
from tqdm import tqdm

from engine.finetune.instructions import PAIRS  # noqa: E402
from engine.interop.pretrained import load_smollm2  # noqa: E402
from engine.serving import SamplingParams, ServingEngine  # noqa: E402

Request = collections.namedtuple("Request", "id arrival prompt max_tokens")


def workload(tokenizer, args) -> list[Request]:
    rng = random.Random(args.seed)
    clock, out = 0.0, []
    for i in range(args.requests):
        clock += rng.expovariate(args.rate)  # Poisson arrivals: exponential gaps
        question = PAIRS[i % len(PAIRS)][0]
        prompt = tokenizer.encode_chat([{"role": "user", "content": question}])
        out.append(Request(f"r{i}", clock, prompt, rng.randint(args.min_tokens, args.max_tokens)))
    return out


def percentile(values: list[float], p: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def serve(model, requests: list[Request], policy: str, args, on_step=None) -> dict:
    """Run ``requests`` through a fresh engine with ``policy`` on the engine's clock; the figures
    and every request's tokens."""
    engine = ServingEngine(model, block_size=args.block_size, kv_bytes=int(args.kv_gib * 2**30),
                           max_batch=args.max_batch, prefill_chunk=args.prefill_chunk, policy=policy)
    # outside the timing: the engine's one-off copies (concatenated weights) and the allocator's
    # first meeting with a full batch's shapes, prompt chunks and decode rows
    for i, r in enumerate(requests[: args.max_batch]):
        engine.add(f"warm-up {i}", r.prompt, SamplingParams(max_tokens=4, temperature=0))
    while engine.has_work():
        engine.step()
    warm = engine.stats()
    pending = collections.deque(sorted(requests, key=lambda r: r.arrival))
    arrival = {r.id: r.arrival for r in requests}
    tokens = {r.id: [] for r in requests}
    first, last = {}, {}
    clock = 0.0
    with tqdm(total=sum(r.max_tokens for r in requests), desc=f"{policy:10s}", unit="tok") as bar:
        while pending or engine.has_work():
            if not engine.has_work() and pending[0].arrival > clock:
                clock = pending[0].arrival
            while pending and pending[0].arrival <= clock:
                r = pending.popleft()
                engine.add(r.id, r.prompt, SamplingParams(max_tokens=r.max_tokens, temperature=0))
            t0 = time.perf_counter()
            outputs = engine.step()
            clock += time.perf_counter() - t0
            for o in outputs:
                tokens[o.request_id].append(o.token)
                first.setdefault(o.request_id, clock)
                last[o.request_id] = clock
            bar.update(len(outputs))
            if on_step is not None:
                on_step(engine)
    ttft = [first[i] - arrival[i] for i in tokens]
    tpot = [(last[i] - first[i]) / (len(t) - 1) for i, t in tokens.items() if len(t) > 1]
    n_out = sum(len(t) for t in tokens.values())
    elapsed = max(last.values()) - min(arrival.values())
    stats = engine.stats()
    return {
        "output_tokens": n_out,
        "seconds": round(elapsed, 2),
        "output_tokens_per_s": round(n_out / elapsed, 1),
        "ttft_s": {"p50": round(percentile(ttft, 50), 3), "p99": round(percentile(ttft, 99), 3)},
        "tpot_ms": {"p50": round(1000 * percentile(tpot, 50), 1), "p99": round(1000 * percentile(tpot, 99), 1)},
        "steps": stats["steps"] - warm["steps"],
        "preemptions": stats["preemptions"],
        "tokens": tokens,
    }


class KVSampler:
    """After every step: the paged cache's bytes held and used, and what a contiguous cache
    would hold for the same running requests."""

    def __init__(self, context: int):
        self.context = context
        self.rows = []

    def __call__(self, engine: ServingEngine) -> None:
        s, per_token = engine.stats(), engine.cache.bytes_per_token
        if not s["kv_bytes_used"]:
            return
        bound = sum(len(r.prompt) + r.params.max_tokens for r in engine.running)
        self.rows.append({"used": s["kv_bytes_used"], "paged": s["kv_bytes_reserved"],
                          "contiguous_bound": bound * per_token,
                          "contiguous_context": len(engine.running) * self.context * per_token})

    def report(self) -> dict:
        mib = lambda b: round(b / 2**20, 1)  # noqa: E731
        mean = {k: statistics.fmean(r[k] for r in self.rows) for k in self.rows[0]}
        peak = {k: max(r[k] for r in self.rows) for k in self.rows[0]}
        return {
            "mean_mib": {k: mib(v) for k, v in mean.items()},
            "peak_mib": {k: mib(v) for k, v in peak.items()},
            "held_over_used": {k: round(mean[k] / mean["used"], 3) for k in ("paged", "contiguous_bound",
                                                                             "contiguous_context")},
            "contiguous_bound_over_paged": round(mean["contiguous_bound"] / mean["paged"], 2),
            "contiguous_context_over_paged": round(mean["contiguous_context"] / mean["paged"], 1),
            "steps_sampled": len(self.rows),
        }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--rate", type=float, default=1.0, help="mean arrivals per second (Poisson)")
    p.add_argument("--min-tokens", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--prefill-chunk", type=int, default=256)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--kv-gib", type=float, default=1.0, help="the KV pool: enough that neither policy preempts")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_smollm2()
    requests = workload(tokenizer, args)
    sampler = KVSampler(model.config.block_size)
    results = {"continuous": serve(model, requests, "continuous", args, on_step=sampler),
               "static": serve(model, requests, "static", args)}
    tokens = {policy: r.pop("tokens") for policy, r in results.items()}
    same = sum(tokens["continuous"][r.id] == tokens["static"][r.id] for r in requests)
    c, s = results["continuous"], results["static"]
    ratios = {
        "throughput_continuous_over_static": round(c["output_tokens_per_s"] / s["output_tokens_per_s"], 2),
        "ttft_p50_static_over_continuous": round(s["ttft_s"]["p50"] / c["ttft_s"]["p50"], 2),
        "ttft_p99_static_over_continuous": round(s["ttft_s"]["p99"] / c["ttft_s"]["p99"], 2),
        "tpot_p50_continuous_over_static": round(c["tpot_ms"]["p50"] / s["tpot_ms"]["p50"], 2),
        "tpot_p99_continuous_over_static": round(c["tpot_ms"]["p99"] / s["tpot_ms"]["p99"], 2),
    }
    kv = sampler.report()
    report = {
        "model": "smollm2-135m-instruct (float32)",
        "workload": {"requests": args.requests, "rate_per_s": args.rate, "output_tokens": [args.min_tokens,
                     args.max_tokens], "prompt_tokens_mean": round(statistics.fmean(len(r.prompt) for r in requests), 1),
                     "max_tokens_mean": round(statistics.fmean(r.max_tokens for r in requests), 1),
                     "max_batch": args.max_batch, "prefill_chunk": args.prefill_chunk,
                     "block_size": args.block_size, "kv_gib": args.kv_gib, "threads": args.threads,
                     "seed": args.seed, "clock": "engine steps' measured wall time; idle time skipped"},
        "policies": results,
        "ratios": ratios,
        "same_tokens": f"{same}/{len(requests)} requests",
        "kv_memory": kv,
    }
    for name, r in results.items():
        print(f"{name:10s} {r['output_tokens_per_s']:7.1f} tok/s  TTFT p50 {r['ttft_s']['p50']:.2f}s "
              f"p99 {r['ttft_s']['p99']:.2f}s  TPOT p50 {r['tpot_ms']['p50']:.0f}ms p99 {r['tpot_ms']['p99']:.0f}ms  "
              f"{r['steps']} steps")
    print("ratios:", ratios)
    print(f"KV held / used (mean over steps): paged {kv['held_over_used']['paged']}, contiguous (prompt + "
          f"max_tokens) {kv['held_over_used']['contiguous_bound']}, contiguous (whole context) "
          f"{kv['held_over_used']['contiguous_context']}; same tokens: {report['same_tokens']}")
    write("serving_engine", report)


if __name__ == "__main__":
    main()
