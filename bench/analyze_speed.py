"""How fast the composer's analysis answers: ``engine.analyze`` and ``engine.fit`` on the largest
preset (Llama 3 405B), the figure issue 4 targets at ≤ 20 ms per report.

    python bench/analyze_speed.py [--repeats 200]

Writes bench/results/analyze_speed.json (median and p95 in milliseconds).
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import write

import engine  # noqa: E402


def timed(fn, repeats: int) -> dict:
    fn()  # first call: imports, the cpu-local measurement, caches
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {"median_ms": round(statistics.median(times), 3), "p95_ms": round(times[int(0.95 * (len(times) - 1))], 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    cfg = engine.preset("llama-3-405b")
    report = {
        "preset": "llama-3-405b",
        "params": engine.analyze(cfg)["params"]["total"],
        "analyze": timed(lambda: engine.analyze(cfg, batch_size=1, seq_len=8192), args.repeats),
        "fit_h100": timed(lambda: engine.fit(cfg, "h100-sxm", n_gpus=8, batch_size=1, seq_len=8192), args.repeats),
        "target_ms": 20,
    }
    print(f"analyze(llama-3-405b): median {report['analyze']['median_ms']} ms, p95 {report['analyze']['p95_ms']} ms; "
          f"fit on 8×H100: median {report['fit_h100']['median_ms']} ms (target ≤ 20 ms)")
    write("analyze_speed", report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
