"""The load-test runner: its draws are reproducible and shaped as asked, its figures follow from
hand-made timings, and one short run against a real web server and serving process of SmolLM2
adds up."""
import statistics

import pytest

from explorer.serving import loadtest
from explorer.serving.loadtest import Outcome, Workload


def test_arrivals_are_a_reproducible_poisson_process():
    a = loadtest.arrivals(4.0, seed=1, requests=4000)
    assert a == loadtest.arrivals(4.0, seed=1, requests=4000)
    assert a != loadtest.arrivals(4.0, seed=2, requests=4000)
    gaps = [y - x for x, y in zip(a, a[1:])]
    assert a[0] == 0 and all(g >= 0 for g in gaps)
    assert statistics.fmean(gaps) == pytest.approx(0.25, rel=0.06)  # mean gap 1/rate
    assert statistics.stdev(gaps) == pytest.approx(0.25, rel=0.1)  # exponential: sd equals the mean
    timed = loadtest.arrivals(4.0, seed=1, duration_s=10)
    assert timed == [t for t in a if t < 10]


def test_lengths_are_uniform_in_range_and_the_same_whatever_the_rate():
    sizes = loadtest.lengths(5000, 8, 256, seed=3)
    assert sizes == loadtest.lengths(5000, 8, 256, seed=3)
    assert min(sizes) == 8 and max(sizes) == 256
    assert statistics.fmean(sizes) == pytest.approx(132, rel=0.03)
    slow, fast = (loadtest.plan(Workload(rate=r, requests=50, seed=3)) for r in (0.5, 8.0))
    assert [p.max_tokens for p in slow] == [p.max_tokens for p in fast]
    assert slow[-1].at > fast[-1].at


def test_workload_names_what_is_wrong():
    with pytest.raises(ValueError, match="rate"):
        Workload(rate=0, requests=3)
    with pytest.raises(ValueError, match="duration_s"):
        Workload(rate=1)
    with pytest.raises(ValueError, match="min_tokens"):
        Workload(rate=1, requests=3, min_tokens=10, max_tokens=5)


def test_percentile_is_the_nearest_rank():
    values = list(range(1, 101))
    assert loadtest.percentile(values, 50) == 50
    assert loadtest.percentile(values, 99) == 99
    assert loadtest.percentile(values, 100) == 100
    assert loadtest.percentile([7.0], 99) == 7.0
    assert loadtest.percentile([], 50) is None


def test_summary_of_hand_made_timings():
    fast = Outcome(max_tokens=4, sent_at=0.0, status="ok", chunk_times=[0.5, 0.6, 0.7, 0.8], done_at=0.9,
                   output_tokens=4)
    slow = Outcome(max_tokens=3, sent_at=1.0, status="ok", chunk_times=[3.0, 3.5, 4.0], done_at=4.0, output_tokens=3)
    short = Outcome(max_tokens=5, sent_at=1.5, status="ok", chunk_times=[2.0], done_at=2.0, output_tokens=1)
    refused = Outcome(max_tokens=9, sent_at=2.0, status="refused", http_status=429)
    failed = Outcome(max_tokens=9, sent_at=2.5, status="error", error="boom")
    assert fast.ttft == 0.5 and fast.tpot == pytest.approx(0.1) and fast.e2e == 0.9
    assert fast.itls == pytest.approx([0.1, 0.1, 0.1])
    assert short.tpot is None and refused.ttft is None and refused.e2e is None

    s = loadtest.summarize([fast, slow, short, refused, failed], offered_rate=2.0, started=0.0, ended=4.0)
    assert (s["requests"], s["completed"], s["refused"], s["errors"]) == (5, 3, 1, 1)
    assert s["refused_share"] == 0.2 and s["ended_early"] == 1  # short: 1 of 5 tokens
    assert s["output_tokens"] == 8 and s["output_tokens_per_s"] == 2.0
    # sends from 0 to 2.5 s: fast's 4 chunks and short's 1 arrived by then, slow's came later
    assert s["output_tokens_per_s_arriving"] == 2.0
    assert s["ttft_s"]["p50"] == 0.5 and s["ttft_s"]["p99"] == 2.0  # 0.5, 0.5, 2.0
    assert s["tpot_s"]["p50"] == 0.1 and s["tpot_s"]["p99"] == 0.5  # 0.1 and 1.0/2
    assert s["itl_s"]["p50"] == 0.1 and s["itl_s"]["p99"] == 0.5  # 0.1 x3, 0.5 x2
    assert s["e2e_s"]["p50"] == 0.9 and s["e2e_s"]["p99"] == 3.0  # 0.9, 0.5, 3.0
    assert s["error_samples"] == ["boom"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(300)
def test_a_short_run_against_a_real_serving_process(django_db_blocker, smollm2_models_dir, tmp_path):
    from engine.interop import pretrained
    from engine.tokenlab import SMOLLM2_NAME
    from tests.integration.test_job_stream import user_with_token
    from tests.stack import Stack

    why = pretrained.available(SMOLLM2_NAME)
    if why:
        pytest.skip(f"SmolLM2 is not installed here: {why}")
    _, token = user_with_token("loadtest")
    stack = Stack(tmp_path)
    try:
        stack.start_web()
        stack.start_serving(SMOLLM2_NAME, EXPLORER_SERVING_KV_MB=64, EXPLORER_SERVING_MAX_BATCH=4)
        workload = Workload(rate=50.0, requests=4, min_tokens=3, max_tokens=12, seed=5)
        summary, outcomes = loadtest.run(stack.url + "/v1", token, SMOLLM2_NAME, workload, progress=False)
    finally:
        stack.stop()
    assert (summary["requests"], summary["completed"], summary["refused"], summary["errors"]) == (4, 4, 0, 0)
    assert [o.max_tokens for o in outcomes] == [p.max_tokens for p in loadtest.plan(workload)]
    assert summary["output_tokens"] == sum(o.output_tokens for o in outcomes) > 0
    assert all(o.output_tokens <= o.max_tokens for o in outcomes)
    assert all(0 < o.ttft <= o.e2e for o in outcomes)
    assert summary["output_tokens_per_s"] > 0 and summary["ttft_s"]["p99"] <= summary["e2e_s"]["p99"]
