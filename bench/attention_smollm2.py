"""SmolLM2-135M-Instruct's attention on a text of 512, 1,024 and 2,048 tokens, from the worker to the
attention page's canvas, written to bench/results/attention_smollm2.json.

    python bench/attention_smollm2.py [--sizes 512,1024,2048] [--heads 6] [--chromium /usr/bin/chromium]

For each size, a stretch of the standard library's source that SmolLM2's tokenizer reads as that many
tokens:

    worker   the job's page open while the attention job runs in this process as a worker runs it
             (``explorer.inference.attention.run_job``; the model loaded once beforehand, as a worker
             keeps it): from the run's start to the first head's whole map on screen
             (``start_to_map_on_screen_s``: the forward's first layer, its queries and keys saved, the
             "attention_tokens" event, the page's fetch and draw of layer 0's head 0), the first layer
             alone (``first_layer_s``), the whole forward and its statistics (``analysis_s``), the whole job
             (``job_s``: then every head's statistics), the events' sizes, the kept file's size;
    server   ``GET /api/v1/jobs/{id}/attention/head`` for one head's whole map through uvicorn:
             time and bytes;
    page     the job's page in headless Chromium (Playwright), logged in: navigation → the first head's
             whole map on screen (``first_map_ms``: the frame after its draw); then ``--heads`` other
             heads asked one after another (``attentionJob.choose``): ask → on screen (``map_ms``: the
             fetch, the canvas image and the frame after), with the fetch alone (``fetch_ms``); then the
             head view (``HeadView.show``: one pass over the region's bytes, the strongest ≤ 20,000
             lines, drawn on a canvas) timed on the whole map and on regions of 512, 128 and 48 tokens a
             side, with the lines it drew; page errors (``pageerror``) are counted and must be 0.

Figures are times on this machine (2 shared CPU cores; the load average is recorded), not asserts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import write
from event_latency import make_user, session_cookie, setup_django, start_web

HEADVIEW_JS = """
async ([sizes]) => {
  const a = window.attentionJob, d = a.map.data, out = [];
  const t = d.meta.shape[0];
  for (const n of sizes) {
    const side = Math.min(n, t);
    const view = { q0: t - side, q1: t, k0: t - side, k1: t };
    const s = performance.now();
    let error = null;
    try { a.headView.show(d.bytes, d.meta, d.tokens, view); } catch (e) { error = String(e); }
    const ms = performance.now() - s;
    await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
    out.push({ region: side, ms: Math.round(ms * 10) / 10, lines: Number(document.getElementById("head-view").dataset.lines), error });
  }
  return out;
}
"""


def text_of(tokenizer, n_tokens):
    from engine import tokenlab

    text = tokenlab.corpus_text("stdlib", max_bytes=16 * n_tokens)
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(tokenizer.encode(text[:mid])) <= n_tokens:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo]


def create_job(user, team, tokenizer, n_tokens):
    from explorer.inference import attention
    from explorer.jobs.models import Job

    text = text_of(tokenizer, n_tokens)
    spec, _ = attention.validate(team, {"source": {"pretrained": "smollm2-135m-instruct"}, "text": text})
    return Job.objects.create(team=team, owner=user, kind="attention", name=f"bench {n_tokens}",
                              spec={"attention": spec}, queue="cpu", status=Job.Status.QUEUED, total_steps=100)


def live_side(browser, stack, cookie, job):
    """The job's page open while the job runs (in a thread of this process, as a worker runs it, the
    model already loaded): from the run's start to the first head's whole map on screen, and the job."""
    import json
    import threading

    from explorer.inference import attention
    from explorer.jobs.models import Job, JobEvent

    name, value = cookie.split("=", 1)
    context = browser.new_context(viewport={"width": 1500, "height": 1000})
    context.add_cookies([{"name": name, "value": value, "url": stack.url}])
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{stack.url}/jobs/{job.pk}/")
    page.wait_for_function("document.getElementById('live')?.dataset.state === 'open'", timeout=30_000)
    out = {}

    def work():
        from django.db import connection

        t0 = time.perf_counter()
        out["status"] = attention.run_job(job.pk, "bench-worker")
        out["job_s"] = time.perf_counter() - t0
        connection.close()

    thread = threading.Thread(target=work)
    started = time.perf_counter()
    thread.start()
    page.wait_for_function("() => document.getElementById('head-card').dataset.state === 'shown'", timeout=600_000)
    to_map = time.perf_counter() - started
    thread.join()
    assert out["status"] == "succeeded", Job.objects.get(pk=job.pk).error
    page.wait_for_function("() => document.getElementById('grid-card').dataset.ready === 'yes'", timeout=60_000)
    context.close()
    tokens = JobEvent.objects.get(job=job, kind="attention_tokens").payload
    heads = JobEvent.objects.get(job=job, kind="attention_heads").payload
    return {
        "tokens": job.spec["attention"]["n_tokens"], "start_to_map_on_screen_s": round(to_map, 2),
        "first_layer_s": tokens["seconds"], "job_s": round(out["job_s"], 2), "analysis_s": heads["seconds"],
        "event_json_bytes": {"attention_tokens": len(json.dumps(tokens)), "attention_heads": len(json.dumps(heads))},
        "kept_qk_bytes": attention.kept_bytes(job.pk), "page_errors": errors,
    }


def page_side(browser, stack, cookie, job, n_heads):
    import httpx

    name, value = cookie.split("=", 1)
    t0 = time.perf_counter()
    resp = httpx.get(f"{stack.url}/api/v1/jobs/{job.pk}/attention/head?layer=7&head=2", headers={"Cookie": cookie},
                     timeout=60)
    server = {"status": resp.status_code, "ms": round(1000 * (time.perf_counter() - t0), 1), "bytes": len(resp.content),
              "compute_ms": __import__("json").loads(resp.headers["X-Attention"])["ms"]}
    context = browser.new_context(viewport={"width": 1500, "height": 1000})
    context.add_cookies([{"name": name, "value": value, "url": stack.url}])
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{stack.url}/jobs/{job.pk}/")
    page.wait_for_function("() => document.getElementById('head-card').dataset.state === 'shown'", timeout=60_000)
    first = page.evaluate("() => performance.now()")  # a bound: the frame after the draw set the state
    first_map = page.evaluate("() => ({...document.getElementById('head-card').dataset})")
    heads = [(0, 0), (3, 5), (29, 8), (12, 4), (21, 1), (7, 7), (15, 3), (25, 6)][:n_heads]
    rows = []
    for layer, head in heads:
        page.evaluate(f"() => window.attentionJob.choose({layer}, {head})")
        page.wait_for_function(f"() => document.getElementById('head-card').dataset.head === '{layer},{head}' && "
                               "document.getElementById('head-card').dataset.state === 'shown'", timeout=60_000)
        d = page.evaluate("() => ({...document.getElementById('head-card').dataset})")
        rows.append({"layer": layer, "head": head, "map_ms": float(d["mapMs"]), "fetch_ms": float(d["fetchMs"]),
                     "server_ms": float(d["serverMs"]), "bytes": int(d["bytes"])})
    headview = page.evaluate(HEADVIEW_JS, [[job.spec["attention"]["n_tokens"], 512, 128, 48]])
    context.close()
    maps = [r["map_ms"] for r in rows]
    return {
        "head_endpoint": server,
        "first_map_after_navigation_ms": round(first, 1), "first_map_ask_ms": float(first_map["mapMs"]),
        "heads": rows, "map_ms_median": round(statistics.median(maps), 1), "map_ms_max": round(max(maps), 1),
        "headview": headview, "page_errors": errors,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="512,1024,2048")
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--redis-db", type=int, default=12)
    args = parser.parse_args()

    import torch
    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="lae-bench-attn-"))
    setup_django(tmp, args.redis_db)
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"  # the ORM between Playwright's sync calls
    from engine.interop import pretrained

    t0 = time.perf_counter()
    _, tokenizer = pretrained.load_pretrained("smollm2-135m-instruct")  # as a worker keeps it
    load_s = time.perf_counter() - t0
    user, team = make_user("bench")
    cookie = session_cookie(user)
    sizes = [int(s) for s in args.sizes.split(",")]
    stack = start_web(tmp)
    cases = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium)
            for n in sizes:
                job = create_job(user, team, tokenizer, n)
                worker = live_side(browser, stack, cookie, job)
                print(f"{n} tokens: run start → first whole map on screen {worker['start_to_map_on_screen_s']:.1f} s "
                      f"(first layer {worker['first_layer_s']:.1f} s); the job {worker['job_s']:.1f} s (statistics included); "
                      f"events {worker['event_json_bytes']}, kept q/k {worker['kept_qk_bytes'] / 1e6:,.1f} MB")
                job.refresh_from_db()
                page = page_side(browser, stack, cookie, job, args.heads)
                cases.append({"tokens": worker["tokens"], "worker": worker, **page})
                hv = ", ".join(f"{h['region']}²: {h['ms']:.0f} ms ({h['lines']:,} lines)" for h in page["headview"])
                print(f"  page: first map {page['first_map_after_navigation_ms']:.0f} ms after navigation; "
                      f"a head asked → on screen median {page['map_ms_median']:.0f} ms, max {page['map_ms_max']:.0f} ms "
                      f"(endpoint {page['head_endpoint']['ms']:.0f} ms, {page['head_endpoint']['bytes'] / 1e6:.1f} MB); "
                      f"head view {hv}; page errors {len(page['page_errors']) + len(worker['page_errors'])}")
            browser.close()
    finally:
        stack.stop()
    if "Traceback" in stack.log("web"):
        print("the ASGI server logged errors:\n" + stack.log("web")[-2000:], file=sys.stderr)
    write("attention_smollm2", {
        "name": "SmolLM2-135M-Instruct's attention on 512-2,048 tokens: the worker's analysis, one head's whole map "
                "from asking to on screen, the head view, on the attention page (headless Chromium)",
        "model_load_s": round(load_s, 2), "torch_threads": torch.get_num_threads(), "chromium": args.chromium,
        "cases": cases,
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
