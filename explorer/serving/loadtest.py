"""A Poisson load test of an OpenAI-compatible endpoint: requests arrive at random (exponential
gaps, as independent users do), each asks for a drawn number of output tokens, and every token's
arrival time is recorded, so the server is judged by what its clients see.

    python -m explorer.serving.loadtest --url http://127.0.0.1:8000/v1 --token lae_... \\
        --model smollm2-135m-instruct --rate 0.5 --requests 40

Per request: TTFT (sent → first text chunk), TPOT ((last − first chunk) / (tokens − 1)), the
inter-token latencies (gaps between text chunks), end-to-end latency, output tokens (the stream's
``usage``, ``stream_options.include_usage``) and the outcome: ok, refused (429, the bounded queue
or the team's tokens per minute) or error. ``summarize`` turns them into the figures serving
papers report (vLLM's and Sarathi's benchmarks): offered rate, output tokens/s, the refused
share, p50/p99 of each latency.

Requests go to ``/completions`` with ``temperature`` 0 and ``max_tokens`` the drawn length: a
chat answer ends at its end-of-turn token long before 256 tokens, while SmolLM2 continues these
story and essay openings past 256 tokens greedily, so output lengths follow the draw (requests
that still end early are counted in ``ended_early``). Knows nothing of Django: a bench or a job
imports it and hands it a URL and a token.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import time
from dataclasses import dataclass, field

PROMPTS = [  # openings SmolLM2-135M continues greedily for 256 tokens and more, of varied lengths
    "Once upon a time, in a small village by the sea,",
    "The history of the Roman Empire begins",
    "Here is a long list of fruits: apple, banana,",
    "Chapter 1\n\nThe rain had not stopped for three days",
    "A recipe for bread: first, take",
    "The following is a detailed explanation of how photosynthesis works.",
    "1, 2, 3, 4, 5,",
    "In the early years of the twentieth century, the city of Vienna was home to a remarkable group of "
    "painters, writers and musicians whose work",
]


@dataclass(frozen=True)
class Workload:
    """What to send: ``rate`` requests/s (Poisson arrivals) until ``requests`` have been sent or
    ``duration_s`` has passed (whichever is given; ``requests`` wins when both are), each asking
    for a length drawn uniformly from [``min_tokens``, ``max_tokens``] (the issue's 8 to 256)."""

    rate: float
    requests: int | None = None
    duration_s: float | None = None
    min_tokens: int = 8
    max_tokens: int = 256
    seed: int = 0

    def __post_init__(self):
        if not self.rate > 0:
            raise ValueError(f"rate must be positive (requests/s), got {self.rate}")
        if self.requests is None and self.duration_s is None:
            raise ValueError("give the number of requests or a duration_s")
        if not 1 <= self.min_tokens <= self.max_tokens:
            raise ValueError(f"need 1 <= min_tokens ({self.min_tokens}) <= max_tokens ({self.max_tokens})")


@dataclass(frozen=True)
class Planned:
    at: float  # seconds after the start
    max_tokens: int
    prompt: str


def arrivals(rate: float, *, seed: int, requests: int | None = None, duration_s: float | None = None) -> list[float]:
    """Send times in seconds from the start: exponential gaps of mean 1/``rate`` (a Poisson
    process), ``requests`` of them, or as many as fall before ``duration_s``. The first request
    goes at once (a gap before it only delays the whole run)."""
    rng = random.Random(f"arrivals:{seed}")
    times, t = [], 0.0
    while (len(times) < requests) if requests is not None else (t < duration_s):
        times.append(t)
        t += rng.expovariate(rate)
    return times


def lengths(n: int, low: int, high: int, *, seed: int) -> list[int]:
    """``n`` output lengths uniform in [low, high] (a generator of their own: the same seed draws
    the same lengths whatever the rate)."""
    rng = random.Random(f"lengths:{seed}")
    return [rng.randint(low, high) for _ in range(n)]


def plan(workload: Workload) -> list[Planned]:
    times = arrivals(workload.rate, seed=workload.seed, requests=workload.requests, duration_s=workload.duration_s)
    sizes = lengths(len(times), workload.min_tokens, workload.max_tokens, seed=workload.seed)
    return [Planned(at, size, PROMPTS[i % len(PROMPTS)]) for i, (at, size) in enumerate(zip(times, sizes))]


@dataclass
class Outcome:
    """One request as its client saw it; times in seconds (``time.perf_counter``)."""

    max_tokens: int
    sent_at: float
    status: str = "error"  # "ok", "refused" (429) or "error"
    http_status: int | None = None
    error: str | None = None
    chunk_times: list[float] = field(default_factory=list)  # each text chunk's arrival
    done_at: float | None = None
    output_tokens: int = 0
    finish_reason: str | None = None

    @property
    def ttft(self) -> float | None:
        return self.chunk_times[0] - self.sent_at if self.chunk_times else None

    @property
    def tpot(self) -> float | None:
        """Time per output token after the first; None with fewer than two tokens."""
        if len(self.chunk_times) < 2 or self.output_tokens < 2:
            return None
        return (self.chunk_times[-1] - self.chunk_times[0]) / (self.output_tokens - 1)

    @property
    def itls(self) -> list[float]:
        return [b - a for a, b in zip(self.chunk_times, self.chunk_times[1:])]

    @property
    def e2e(self) -> float | None:
        return self.done_at - self.sent_at if self.done_at is not None else None


def percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank percentile (the smallest value with at least q% of them at or below it)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def summarize(outcomes: list[Outcome], *, offered_rate: float, started: float, ended: float) -> dict:
    """The run's figures: counts by outcome, output tokens/s over the whole run (first send to
    last answer) and while requests were still arriving (first to last send: once a saturated
    server's backlog drains, its batch thins out, which says more about the workload's end than
    about the server), and p50/p99 of TTFT, TPOT, ITL and e2e over the completed requests (s)."""
    ok = [o for o in outcomes if o.status == "ok"]
    refused = sum(o.status == "refused" for o in outcomes)
    tokens = sum(o.output_tokens for o in ok)
    span = ended - started
    last_sent = max((o.sent_at for o in outcomes), default=started)
    # a chunk is a token, bar the rare step whose text waits for the rest of a character's bytes
    arriving = sum(sum(started <= t <= last_sent for t in o.chunk_times) * o.output_tokens / len(o.chunk_times)
                   for o in ok if o.chunk_times)

    def stats(values):
        return {"p50": _round(percentile(values, 50)), "p99": _round(percentile(values, 99)),
                "mean": _round(sum(values) / len(values) if values else None)}

    return {
        "offered_rate": offered_rate, "requests": len(outcomes), "completed": len(ok), "refused": refused,
        "errors": len(outcomes) - len(ok) - refused,
        "refused_share": round(refused / len(outcomes), 4) if outcomes else 0.0,
        "ended_early": sum(o.output_tokens < o.max_tokens for o in ok),
        "output_tokens": tokens, "duration_s": round(span, 3),
        "output_tokens_per_s": round(tokens / span, 2) if span > 0 else 0.0,
        "output_tokens_per_s_arriving": round(arriving / (last_sent - started), 2) if last_sent > started else None,
        "ttft_s": stats([o.ttft for o in ok if o.ttft is not None]),
        "tpot_s": stats([o.tpot for o in ok if o.tpot is not None]),
        "itl_s": stats([gap for o in ok for gap in o.itls]),
        "e2e_s": stats([o.e2e for o in ok if o.e2e is not None]),
        "error_samples": sorted({o.error for o in outcomes if o.status == "error" and o.error})[:5],
    }


def _round(x):
    return None if x is None else round(x, 4)


async def _send(client, url: str, model: str, item: Planned, outcome: Outcome) -> None:
    body = {"model": model, "prompt": item.prompt, "max_tokens": item.max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    try:
        async with client.stream("POST", url, json=body) as response:
            outcome.http_status = response.status_code
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                outcome.status = "refused" if response.status_code == 429 else "error"
                outcome.error = f"HTTP {response.status_code}: {text[:200]}"
                return
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    outcome.done_at = time.perf_counter()
                    break
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    outcome.error = chunk["error"].get("message", str(chunk["error"]))
                    return
                for choice in chunk.get("choices") or []:
                    if choice.get("text"):
                        outcome.chunk_times.append(time.perf_counter())
                    if choice.get("finish_reason"):
                        outcome.finish_reason = choice["finish_reason"]
                if chunk.get("usage"):
                    outcome.output_tokens = chunk["usage"]["completion_tokens"]
        if outcome.done_at is None:
            outcome.error = "the stream ended without [DONE]"
        else:
            outcome.status = "ok"
    except Exception as exc:  # noqa: BLE001 - a failed request is a figure of the run, not its end
        outcome.error = f"{type(exc).__name__}: {exc}"


async def run_async(base_url: str, token: str, model: str, workload: Workload, *, progress: bool = True,
                    timeout_s: float = 600.0) -> tuple[dict, list[Outcome]]:
    """Send ``workload`` to ``base_url`` (``.../v1``) and wait for every answer; returns the
    summary and each request's ``Outcome`` (in the order they were planned)."""
    import httpx
    from tqdm import tqdm

    items = plan(workload)
    url = base_url.rstrip("/") + "/completions"
    # no pool limit: a request must never wait for a connection here, or its wait would be
    # counted as the server's
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    outcomes: list[Outcome] = []
    bar = tqdm(total=len(items), desc=f"{workload.rate:g} req/s", unit="req", disable=not progress, leave=False)
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, limits=limits,
                                 timeout=httpx.Timeout(timeout_s, connect=30)) as client:
        async def one(item, outcome):
            await _send(client, url, model, item, outcome)
            bar.update()
            bar.set_postfix(ok=sum(o.status == "ok" for o in outcomes),
                            refused=sum(o.status == "refused" for o in outcomes), refresh=False)

        start = time.perf_counter()
        tasks = []
        for item in items:
            delay = start + item.at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            outcome = Outcome(max_tokens=item.max_tokens, sent_at=time.perf_counter())
            outcomes.append(outcome)
            tasks.append(asyncio.create_task(one(item, outcome)))
        await asyncio.gather(*tasks)
    bar.close()
    ends = [o.done_at for o in outcomes if o.done_at is not None]
    summary = summarize(outcomes, offered_rate=workload.rate, started=start, ended=max(ends, default=start))
    summary["lateness_s_max"] = round(max(o.sent_at - start - i.at for o, i in zip(outcomes, items)), 4)
    return summary, outcomes


def run(base_url: str, token: str, model: str, workload: Workload, **kw) -> tuple[dict, list[Outcome]]:
    """``run_async`` from synchronous code."""
    return asyncio.run(run_async(base_url, token, model, workload, **kw))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Poisson load test of an OpenAI-compatible /v1/completions endpoint")
    p.add_argument("--url", required=True, help="the API's base URL, ending in /v1")
    p.add_argument("--token", required=True, help="an API token (Authorization: Bearer)")
    p.add_argument("--model", required=True)
    p.add_argument("--rate", type=float, required=True, help="requests per second (Poisson arrivals)")
    p.add_argument("--requests", type=int, help="how many requests to send")
    p.add_argument("--duration", type=float, help="or: send for this many seconds")
    p.add_argument("--min-tokens", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    workload = Workload(rate=args.rate, requests=args.requests, duration_s=args.duration,
                        min_tokens=args.min_tokens, max_tokens=args.max_tokens, seed=args.seed)
    summary, _ = run(args.url, args.token, args.model, workload)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
