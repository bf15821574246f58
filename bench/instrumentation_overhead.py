"""What reporting costs a training step, written to bench/results/instrumentation_overhead.json
(``--spec tiny``: instrumentation_overhead_tiny.json).

    python bench/instrumentation_overhead.py [--rounds 3] [--steps 80] [--spec small|tiny] [--threads 1]

``engine.train`` on one spec (``small``: train_throughput.py's 4L/4H/128, block 64, batch 32, char
tokenizer on the stdlib corpus; ``tiny``: the integration tests' 2L/2H/32 copy task, where a step
is a few ms and the relative cost is largest), four ways:

    none            on_event=None, attention_maps off: nothing leaves the engine
    recorder        the worker's on_event, services.EventRecorder(job): every event buffered,
                    sent every 0.025 s to the Redis channel layer and saved every 0.25 s (SQLite), on
                    the engine's thread (the worker's default)
    none+maps       on_event=None, attention_maps on: the extra forward and encoding at each evaluation
    recorder+maps   the worker's whole path: recorder, attention maps (and the health event, always on)

Same spec, seed and evaluations (every ``--eval-interval`` steps) for all four. A step's time is
the gap between two calls of ``should_stop``, which the engine polls before every step, so it
holds the step, its events, and at evaluation steps the evaluation and maps; the first 10 steps
and the last are not timed. The variants alternate (who goes first rotates) for ``--rounds``
rounds and each keeps its fastest run (least disturbed by the other work on the machine), by the
mean step time over the timed steps (evaluations included); the median step (an ordinary step) is
reported too. Overhead = that time ÷ the "none" variant's − 1; and, steadier when the load
drifts, the median over rounds of each run ÷ the same round's "none" run − 1 (``paired``).
On this 2-core machine those differences drift by ±10% from run to run, so the cost is also
read directly: the time spent inside the recorder and inside ``attention_event`` (the maps'
forward and encoding), per timed step, ÷ the bare step time (``direct_pct``).
Redis database ``--redis-db`` (13), a temporary SQLite database; no websocket is open, so
publishing ends at Redis.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from common import write
from event_latency import make_job, make_user, setup_django

WARMUP = 10
TARGET_PCT = 2.0
SPECS = {
    "small": {
        "model": {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64},
        "data": {"source": "stdlib", "tokenizer": "char"},
        "train": {"batch_size": 32, "warmup_steps": 10, "eval_iters": 2, "sample_tokens": 16},
    },
    "tiny": {
        "model": {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 24},
        "data": {"source": "synthetic", "task": "copy", "task_length": 6},
        "train": {"batch_size": 16, "warmup_steps": 5, "eval_iters": 2, "sample_tokens": 12},
    },
}
VARIANTS = {  # name: (through the EventRecorder, attention maps)
    "none": (False, False),
    "recorder": (True, False),
    "none+maps": (False, True),
    "recorder+maps": (True, True),
}


def run_once(spec_dict: dict, *, recorder: bool, maps: bool, user, team) -> dict:
    from engine import parse_spec, train
    from explorer.jobs import services

    spec_dict = {**spec_dict, "train": {**spec_dict["train"], "attention_maps": maps}}
    spec = parse_spec(spec_dict)
    on_event, counted, inside = None, {}, []
    if recorder:
        job = make_job(user, team, spec.to_dict(), "overhead")
        rec = services.EventRecorder(job)

        def on_event(event):  # the recorder, plus a tally of what it was given and the time it took
            counted[event["kind"]] = counted.get(event["kind"], 0) + 1
            t0 = time.perf_counter()
            rec(event)
            inside.append((t0, time.perf_counter() - t0))

    import importlib

    engine_train = importlib.import_module("engine.training.loop")  # the module (``engine.train`` is also the function)

    in_maps = []
    attention_event = engine_train.attention_event

    def timed_maps(*args, **kwargs):  # the maps' share of an evaluation step, read directly
        t0 = time.perf_counter()
        try:
            return attention_event(*args, **kwargs)
        finally:
            in_maps.append((t0, time.perf_counter() - t0))

    polls = []
    engine_train.attention_event = timed_maps
    try:
        train(spec, on_event=on_event, should_stop=lambda: polls.append(time.perf_counter()) and False)
    finally:
        engine_train.attention_event = attention_event
    if recorder:
        rec.drain()  # as run_job does after train: everything saved, its threads stopped
    steps = [b - a for a, b in zip(polls, polls[1:])][WARMUP:]  # step k's time = poll k+1 − poll k
    timed = [d for t, d in inside if polls[WARMUP] <= t < polls[-1]]
    maps_timed = [d for t, d in in_maps if polls[WARMUP] <= t < polls[-1]]
    evals = [s for i, s in enumerate(steps, start=WARMUP + 1) if i % spec.train.eval_interval == 0]
    return {
        "mean_ms": 1000 * statistics.fmean(steps),
        "median_ms": 1000 * statistics.median(steps),
        "eval_step_ms": 1000 * statistics.fmean(evals) if evals else None,
        "timed_steps": len(steps),
        "in_recorder_ms": 1000 * sum(timed) / len(steps),  # per timed step, spent inside on_event
        "in_maps_ms": 1000 * sum(maps_timed) / len(steps),  # per timed step, spent making attention maps
        "flushes_per_step": sum(d > 5e-4 for d in timed) / len(steps),  # calls that wrote and sent (≥ 0.5 ms)
        "events": counted,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="small", choices=sorted(SPECS))
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--eval-interval", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--redis-db", type=int, default=13)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    setup_django(Path(tempfile.mkdtemp(prefix="lae-bench-")), args.redis_db)
    user, team = make_user("bench")
    base = SPECS[args.spec]
    spec = {**base, "train": {**base["train"], "steps": args.steps, "eval_interval": args.eval_interval}}
    names = list(VARIANTS)
    runs = {name: [] for name in names}
    warm = {**spec, "train": {**spec["train"], "steps": WARMUP + 2}}
    run_once(warm, recorder=True, maps=True, user=user, team=team)  # untimed: data cache, imports, connections
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            recorder, maps = VARIANTS[name]
            runs[name].append(run_once(spec, recorder=recorder, maps=maps, user=user, team=team))

    best = {name: min(rs, key=lambda x: x["mean_ms"]) for name, rs in runs.items()}
    base_mean = best["none"]["mean_ms"]
    base_median = min(x["median_ms"] for x in runs["none"])
    variants = {}
    print(f"spec {args.spec}, {args.steps} steps, evaluation every {args.eval_interval}, {args.threads} thread(s), "
          f"fastest of {args.rounds} alternating runs")
    for name in names:
        b = best[name]
        median = min(x["median_ms"] for x in runs[name])
        over = 100 * (b["mean_ms"] / base_mean - 1)
        # the same round's runs are close in time: their ratio survives a slow change of the load
        paired = statistics.median(100 * (x["mean_ms"] / y["mean_ms"] - 1) for x, y in zip(runs[name], runs["none"]))
        variants[name] = {
            "recorder": VARIANTS[name][0], "attention_maps": VARIANTS[name][1],
            "mean_step_ms": round(b["mean_ms"], 3), "median_step_ms": round(median, 3),
            "eval_step_ms": round(b["eval_step_ms"], 1) if b["eval_step_ms"] else None,
            "overhead_pct": round(over, 2),
            "paired_overhead_pct": round(paired, 2),  # median over rounds of this run ÷ that round's "none"
            # the same cost read directly: time inside the recorder per step ÷ the bare step time
            "in_recorder_ms_per_step": round(b["in_recorder_ms"], 3),
            "in_recorder_pct": round(100 * b["in_recorder_ms"] / base_mean, 2),
            "in_maps_ms_per_step": round(b["in_maps_ms"], 3),
            "in_maps_pct": round(100 * b["in_maps_ms"] / base_mean, 2),
            # the added work itself, free of the load's drift between runs
            "direct_pct": round(100 * (b["in_recorder_ms"] + b["in_maps_ms"]) / base_mean, 2),
            "meets_target_direct": 100 * (b["in_recorder_ms"] + b["in_maps_ms"]) / base_mean <= TARGET_PCT,
            "flushes_per_step": round(b["flushes_per_step"], 3),
            "median_step_overhead_pct": round(100 * (median / base_median - 1), 2),
            "meets_target": over <= TARGET_PCT,
            "events": b["events"],
            "all_mean_step_ms": [round(x["mean_ms"], 3) for x in runs[name]],
        }
        print(f"  {name:14s} mean step {b['mean_ms']:7.2f} ms ({over:+5.1f}%; paired {paired:+5.1f}%), "
              f"median step {median:7.2f} ms "
              f"({variants[name]['median_step_overhead_pct']:+5.1f}%), eval step "
              f"{variants[name]['eval_step_ms'] or 0:7.1f} ms; in the recorder {b['in_recorder_ms']:.2f} ms/step "
              f"({variants[name]['in_recorder_pct']:.1f}%), in the maps {b['in_maps_ms']:.2f} ms/step "
              f"({variants[name]['in_maps_pct']:.1f}%)  runs {variants[name]['all_mean_step_ms']}")
    print(f"target: overhead ≤ {TARGET_PCT:g}%: " + ", ".join(
        f"{n} {'met' if v['meets_target'] else 'NOT met'} (direct {v['direct_pct']:.2f}%: "
        f"{'met' if v['meets_target_direct'] else 'NOT met'})" for n, v in variants.items() if n != "none"))
    write("instrumentation_overhead" + ("" if args.spec == "small" else f"_{args.spec}"), {
        "name": f"engine.train step time with and without the worker's event path ({args.spec} spec)",
        "spec": spec, "steps": args.steps, "eval_interval": args.eval_interval, "rounds": args.rounds,
        "threads": args.threads, "target_pct": TARGET_PCT, "variants": variants,
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
