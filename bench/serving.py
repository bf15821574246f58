"""Serving SmolLM2-135M-Instruct behind the OpenAI-compatible endpoint under Poisson load;
written to bench/results/serving.json.

    python bench/serving.py [--quick] [--rates 0.3 1.0] [--seconds 30] [--max-queued 4] [--threads 1]

A real web server (uvicorn) and serving process (``manage.py serve``), as tests/stack.py starts
them, on a temporary SQLite database and Redis database ``--redis-db``; the clients are
``explorer.serving.loadtest`` (streaming ``/v1/completions``, greedy, output lengths uniform in
8..256 tokens, Poisson arrivals for ``--seconds`` at each rate). All of it shares the machine's
cores, so every ratio below is between runs of this one invocation. Measured:

- continuous against static batching (``manage.py serve --policy static``: a new batch only once
  the last has finished) at each of ``--rates``, the last chosen at or past saturation: output
  tokens/s and p50/p99 TTFT, TPOT and end-to-end latency. Goal: continuous >= 2x static's output
  tokens/s at the saturating rate, with an equal or lower p99 TTFT and e2e latency. The goals'
  tokens/s are those delivered while requests still arrive (``output_tokens_per_s_arriving``):
  afterwards the backlog drains at a thinning batch, its length set by the last long request;
  the whole run's figure (``output_tokens_per_s``) is beside it.
- one request at a time through ``transformers``' ``generate`` (SmolLM2's weights in a
  ``LlamaForCausalLM`` through ``engine.interop.to_transformers``, greedy, the same lengths):
  goal continuous >= 4x its output tokens/s.
- the paged KV cache's memory, from the serving process's heartbeat sampled through the
  continuous runs: bytes reserved (whole blocks) over bytes holding cached positions (goal
  <= 1.1x), and what a contiguous cache preallocated at the full context for the same number of
  concurrent sequences would reserve.
- at 2x the saturating rate: p99 TTFT with a bounded queue (``--max-queued``) against an
  effectively unbounded one, and the share of 429s. Goal: the bounded p99 TTFT within 3x the
  saturating rate's, while the unbounded one grows. The default queue (``EXPLORER_SERVING_MAX_QUEUED``
  64 behind a batch of 16) is not the bounded case here: on a 2-core CPU it holds minutes of work,
  more than a run of this length ever fills; the unbounded run's peak in-flight count is reported
  beside it to show that.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import write
from event_latency import make_user, setup_django

MODEL = "smollm2-135m-instruct"
UNBOUNDED = 1_000_000
DEFAULT_MAX_QUEUED = 64  # config/settings/base.py's EXPLORER_SERVING_MAX_QUEUED default


class KvSampler(threading.Thread):
    """Reads the serving process's heartbeat (``bus.alive``) every ``interval`` s while a run goes
    on, keeping the samples with sequences in the batch."""

    def __init__(self, model, interval=0.25):
        super().__init__(daemon=True)
        from explorer.serving import bus

        self.key, self.redis, self.bus = bus.alive(model), bus.sync_client(), bus
        self.interval, self.samples, self.stop = interval, [], threading.Event()

    def run(self):
        while not self.stop.wait(self.interval):
            raw = self.redis.get(self.key)
            if raw:
                f = self.bus.unpack(raw)
                if f.get("running"):
                    self.samples.append({k: f[k] for k in ("at", "running", "waiting", "blocks_used",
                                                           "kv_bytes_reserved", "kv_bytes_used", "block_bytes",
                                                           "block_size", "context", "live_requests")})

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.join()


def serve(stack, policy: str, threads: int, max_queued: int | None = None) -> None:
    env = {"EXPLORER_LOG_LEVEL": "INFO",  # Stack waits for its "serving ..." line (setup_django quiets the rest)
           "OMP_NUM_THREADS": threads}  # torch's threads in the serving process
    if max_queued is not None:
        env["EXPLORER_SERVING_MAX_QUEUED"] = max_queued
    if "serving" in stack.procs and stack.procs["serving"].poll() is None:
        stack.stop_one("serving")
    t0 = time.perf_counter()
    stack.start_serving(MODEL, "--policy", policy, **env)
    print(f"• serving process up ({policy}, max queued {max_queued or DEFAULT_MAX_QUEUED}) in "
          f"{time.perf_counter() - t0:.1f} s")


def load(stack, token: str, rate: float, args, *, sample_kv: bool = False) -> dict:
    from explorer.serving import loadtest

    workload = loadtest.Workload(rate=rate, duration_s=args.seconds, min_tokens=args.min_tokens,
                                 max_tokens=args.max_tokens, seed=args.seed)
    load_before = os.getloadavg()[0]  # other work on the machine slows every process of the stack
    with KvSampler(MODEL) as sampler:
        summary, outcomes = loadtest.run(stack.url + "/v1", token, MODEL, workload)
    summary["load_avg_1m"] = {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)}
    summary["peak_in_flight"] = max((s["running"] + s["waiting"] for s in sampler.samples), default=0)
    summary["peak_running"] = max((s["running"] for s in sampler.samples), default=0)
    bad = [o.ttft for o in outcomes if o.status == "ok" and not (o.ttft is not None and o.ttft <= o.e2e)]
    if bad:
        raise RuntimeError(f"TTFT above e2e for {len(bad)} requests: the runner measures wrongly")
    if sample_kv:
        summary["kv_samples"] = sampler.samples
    line = (f"  {rate:>5g} req/s: {summary['completed']}/{summary['requests']} ok, {summary['refused']} refused, "
            f"{summary['output_tokens_per_s_arriving']:6.1f} tok/s while arriving "
            f"({summary['output_tokens_per_s']:.1f} to the end), TTFT p50/p99 {summary['ttft_s']['p50']}/"
            f"{summary['ttft_s']['p99']} s, TPOT p50/p99 {summary['tpot_s']['p50']}/{summary['tpot_s']['p99']} s, "
            f"e2e p99 {summary['e2e_s']['p99']} s, peak in flight {summary['peak_in_flight']}")
    print(line)
    return summary


def warm_up(stack, token: str) -> None:
    """Two short requests, so the first measured one does not pay for the process's first steps."""
    from explorer.serving import loadtest

    loadtest.run(stack.url + "/v1", token, MODEL, loadtest.Workload(rate=100, requests=2, min_tokens=4,
                                                                      max_tokens=8), progress=False)


def transformers_baseline(items, threads: int) -> dict:
    """Each request's greedy continuation, one after another, through ``transformers``' generate
    on SmolLM2's weights (exactly ``max_tokens`` new tokens each), on as many threads as the
    serving process gets."""
    import torch

    from engine.interop import pretrained, to_transformers

    torch.set_num_threads(threads)

    model, tokenizer = pretrained.load_pretrained(MODEL)
    hf = to_transformers(model).eval()
    del model

    @torch.no_grad()
    def generate(prompt, n):
        ids = torch.tensor([tokenizer.encode(prompt)])
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                          do_sample=False, use_cache=True, pad_token_id=tokenizer.eos_token_id)
        return out.size(1) - ids.size(1)

    generate(items[0].prompt, 4)  # warm-up
    t0 = time.perf_counter()
    tokens = sum(generate(item.prompt, item.max_tokens) for item in items)
    seconds = time.perf_counter() - t0
    del hf
    return {"requests": len(items), "output_tokens": tokens, "seconds": round(seconds, 2),
            "output_tokens_per_s": round(tokens / seconds, 2)}


def wait_quiet(limit_s: float) -> float:
    """Wait (up to ``limit_s``) for the machine's 1-minute load average to fall below 1: other work
    on 2 cores halves every figure here. Returns the seconds waited."""
    t0 = time.perf_counter()
    while os.getloadavg()[0] >= 1 and time.perf_counter() - t0 < limit_s:
        time.sleep(5)
    waited = round(time.perf_counter() - t0, 1)
    if os.getloadavg()[0] >= 1:
        print(f"note: the machine is still busy (load {os.getloadavg()[0]:.2f}) after {waited:.0f} s; going on")
    return waited


def kv_memory(samples) -> dict:
    """Paged reserved over used across the continuous runs' samples, and a contiguous cache's
    reservation for the same concurrent sequences (full context each)."""
    if not samples:
        return {}
    reserved = sum(s["kv_bytes_reserved"] for s in samples)
    used = sum(s["kv_bytes_used"] for s in samples)
    peak = max(samples, key=lambda s: s["kv_bytes_reserved"])
    per_token = peak["block_bytes"] // peak["block_size"]
    contiguous = peak["context"] * per_token * peak["running"]
    return {
        "samples": len(samples), "bytes_per_token": per_token, "block_size": peak["block_size"],
        "context": peak["context"],
        "reserved_over_used_mean": round(reserved / used, 4),
        "reserved_over_used_worst": round(max(s["kv_bytes_reserved"] / s["kv_bytes_used"] for s in samples), 4),
        "at_peak": {"running": peak["running"], "paged_reserved_bytes": peak["kv_bytes_reserved"],
                    "paged_used_bytes": peak["kv_bytes_used"], "contiguous_full_context_bytes": contiguous,
                    "contiguous_over_paged": round(contiguous / peak["kv_bytes_reserved"], 1)},
    }


def goal(value, target, passed, what) -> dict:
    return {"what": what, "value": value, "target": target, "met": bool(passed)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a ~3 minute smoke: one rate, short runs, short outputs")
    p.add_argument("--rates", type=float, nargs="+", help="requests/s; the last is taken as the saturating rate")
    p.add_argument("--seconds", type=float, help="how long requests arrive at each rate")
    p.add_argument("--min-tokens", type=int, default=8)
    p.add_argument("--max-tokens", type=int, help="output lengths uniform in [min, max] (256; quick: 48)")
    p.add_argument("--max-queued", type=int, default=4, help="the bounded queue's EXPLORER_SERVING_MAX_QUEUED")
    p.add_argument("--baseline-requests", type=int, help="requests through transformers generate (6; quick: 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of the serving process and of the transformers baseline: with 1 on 2 cores, "
                        "the web and the clients have the other core, where 2 would make all three contend")
    p.add_argument("--wait-quiet", type=float, default=120.0,
                   help="wait up to this many seconds for the machine's 1-minute load to fall below 1 first")
    p.add_argument("--redis-db", type=int, default=12)
    p.add_argument("--no-write", action="store_true", help="print the figures, leave bench/results alone")
    args = p.parse_args()
    quick = args.quick
    args.rates = args.rates or ([1.0] if quick else [0.3, 1.0])
    args.seconds = args.seconds or (12.0 if quick else 30.0)
    args.max_tokens = args.max_tokens or (48 if quick else 256)
    args.baseline_requests = args.baseline_requests or (2 if quick else 6)

    tmp = Path(tempfile.mkdtemp(prefix="lae-serving-"))
    setup_django(tmp, args.redis_db)
    import redis
    from django.conf import settings
    from django.db import connections

    from explorer.accounts.models import ApiToken
    from explorer.serving import loadtest
    from tests.stack import Stack

    report_wait = wait_quiet(args.wait_quiet)
    r = redis.Redis.from_url(settings.REDIS_URL)
    redis_was_empty = r.dbsize() == 0
    user, _ = make_user("serving-bench")
    _, token = ApiToken.issue(user, "bench")
    started = time.perf_counter()
    saturating = args.rates[-1]
    report = {
        "what": "SmolLM2-135M-Instruct served through the OpenAI-compatible endpoint (uvicorn + manage.py serve, "
                "Redis between) under Poisson load: continuous vs static batching, vs transformers generate one "
                "request at a time, the paged KV cache's reserved vs used bytes, and a bounded vs unbounded queue "
                f"at 2x the saturating rate ({saturating:g} req/s)",
        "args": vars(args),
        "workload": {"endpoint": "/v1/completions, stream, temperature 0", "arrivals": "Poisson",
                     "output_tokens": f"uniform {args.min_tokens}..{args.max_tokens}",
                     "seconds_of_arrivals_per_rate": args.seconds, "prompts": len(loadtest.PROMPTS)},
        "serving": {"max_batch": settings.SERVING_MAX_BATCH, "kv_mib": settings.SERVING_KV_BYTES // 2**20,
                    "block_size": settings.SERVING_BLOCK_SIZE, "prefill_chunk": settings.SERVING_PREFILL_CHUNK},
        "waited_for_quiet_s": report_wait,
        "budget": "about 12 minutes on 2 CPU cores (--quick about 3): each run's arrivals last --seconds, then "
                  "it drains; the client, the web and the serving process share the cores",
    }
    stack = Stack(tmp)
    stack.env["EXPLORER_SERVING_TEAM_TPM"] = "0"  # the 429s measured are the queue's only
    runs = {"continuous": {}, "static": {}}
    kv_samples = []
    try:
        # first, with nothing else of ours running: the baseline every run is compared with
        print("transformers generate, one request at a time")
        items = loadtest.plan(loadtest.Workload(rate=saturating, requests=args.baseline_requests,
                                                min_tokens=args.min_tokens, max_tokens=args.max_tokens, seed=args.seed))
        report["transformers_sequential"] = transformers_baseline(items, args.threads)
        print(f"  {report['transformers_sequential']['output_tokens_per_s']} tok/s")
        stack.start_web()
        for policy in ("continuous", "static"):
            serve(stack, policy, args.threads)
            warm_up(stack, token)
            print(f"{policy} batching")
            for rate in args.rates:
                s = load(stack, token, rate, args, sample_kv=policy == "continuous")
                kv_samples += s.pop("kv_samples", [])
                runs[policy][str(rate)] = s
        report["batching"] = runs
        report["kv_memory"] = kv_memory(kv_samples)

        overload = {}
        print(f"at 2x the saturating rate ({2 * saturating:g} req/s)")
        for label, queued in (("bounded", args.max_queued), ("unbounded", UNBOUNDED)):
            serve(stack, "continuous", args.threads, queued)
            warm_up(stack, token)
            overload[label] = {"max_queued": queued, **load(stack, token, 2 * saturating, args)}
        report["overload"] = overload
    finally:
        stack.stop()
        logs = {name: stack.log(name) for name in ("web", "serving")}
        if redis_was_empty:
            r.flushdb()
        connections.close_all()
        shutil.rmtree(tmp, ignore_errors=True)
    for name, text in logs.items():
        if "Traceback" in text:
            print(f"the {name} process logged errors:\n{text[-2000:]}", file=sys.stderr)
    report["wall_s"] = round(time.perf_counter() - started, 1)
    report["goals"] = goals(report, str(saturating))
    show(report)
    if not args.no_write:
        write("serving", report)
    return 0


def goals(report, saturating: str) -> dict:
    cont, static = report["batching"]["continuous"][saturating], report["batching"]["static"][saturating]
    hf = report["transformers_sequential"]["output_tokens_per_s"]
    over = report["overload"]
    # the most the continuous server delivered: at or past saturation, whichever run it was
    best_label, best = max([(f"{r} req/s", s["output_tokens_per_s_arriving"])
                            for r, s in report["batching"]["continuous"].items()]
                           + [(f"{2 * float(saturating):g} req/s, {k} queue", o["output_tokens_per_s_arriving"])
                              for k, o in over.items()], key=lambda x: x[1])
    kv = report["kv_memory"]
    vs_static = cont["output_tokens_per_s_arriving"] / static["output_tokens_per_s_arriving"]
    bounded_ttft = over["bounded"]["ttft_s"]["p99"] / cont["ttft_s"]["p99"]
    unbounded_ttft = over["unbounded"]["ttft_s"]["p99"] / cont["ttft_s"]["p99"]
    return {
        "continuous_vs_static": goal(round(vs_static, 3), ">= 2 at equal or lower p99 TTFT and e2e",
                                     vs_static >= 2 and cont["e2e_s"]["p99"] <= static["e2e_s"]["p99"]
                                     and cont["ttft_s"]["p99"] <= static["ttft_s"]["p99"],
                                     f"output tokens/s while requests arrive at the saturating rate, continuous over static (p99 TTFT "
                                     f"{cont['ttft_s']['p99']} s vs {static['ttft_s']['p99']} s, p99 e2e "
                                     f"{cont['e2e_s']['p99']} s vs {static['e2e_s']['p99']} s)"),
        "continuous_vs_transformers": goal(round(best / hf, 3), ">= 4", best >= 4 * hf,
                                           f"output tokens/s while requests arrive, continuous at its best ({best} at {best_label}) over "
                                           f"transformers generate one request at a time ({hf})"),
        "paged_kv_reserved_over_used": goal(kv.get("reserved_over_used_mean"), "<= 1.1",
                                            kv and kv["reserved_over_used_mean"] <= 1.1,
                                            "KV bytes reserved (whole blocks) over bytes holding cached positions, "
                                            "summed over the continuous runs' heartbeat samples"),
        "bounded_queue_ttft": goal(round(bounded_ttft, 3), "<= 3, with the unbounded one above it",
                                   bounded_ttft <= 3 and unbounded_ttft > bounded_ttft,
                                   f"p99 TTFT at 2x the saturating rate over p99 TTFT at the saturating rate: bounded "
                                   f"(max queued {over['bounded']['max_queued']}, "
                                   f"{over['bounded']['refused_share']:.0%} refused) {round(bounded_ttft, 2)}x, "
                                   f"unbounded {round(unbounded_ttft, 2)}x"),
    }


def show(report) -> None:
    print(f"\nserving SmolLM2 ({report['wall_s']:.0f} s in all)")
    kv = report["kv_memory"]
    if kv:
        peak = kv["at_peak"]
        print(f"  KV: reserved/used {kv['reserved_over_used_mean']} (worst sample {kv['reserved_over_used_worst']}); "
              f"at the peak {peak['running']} sequences: paged {peak['paged_reserved_bytes'] / 2**20:.1f} MiB, "
              f"contiguous at full context {peak['contiguous_full_context_bytes'] / 2**20:.0f} MiB")
    for name, g in report["goals"].items():
        print(f"  {'met ' if g['met'] else 'NOT met'} {name}: {g['value']} (target {g['target']}) - {g['what']}")


if __name__ == "__main__":
    raise SystemExit(main())
