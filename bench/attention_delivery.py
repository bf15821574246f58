"""Attention maps of a 2,048-token input, from the model to the job page's first paint, written to
bench/results/attention_delivery.json.

    python bench/attention_delivery.py [--n-head 8] [--block-size 2048] [--cases engine,full]

One decoder layer (``--n-head`` heads, width ``--n-embd``, context ``--block-size``) on the first
``--block-size`` characters of the stdlib corpus' validation split (what ``engine.train``'s
evaluation feeds it), two ways:

    engine   ``attention_maps.attention_event`` as the worker sends it: the window is the last
             MAX_TOKENS (64) positions, all heads (the byte budget MAX_BYTES would narrow it further)
    full     the same call with the window opened to every position and no byte budget:
             all 2,048 × 2,048 weights of every head of the layer

For each: (a) server time to compute and encode the event (the extra forward under
``capture_attention``, cropping, uint8 quantisation, base64; fastest of ``--repeats``) and, apart,
``encode_maps`` alone; (b) its size as JSON; then through a real stack (an isolated SQLite
database, Redis database ``--redis-db``, uvicorn as ``tests.stack`` starts it) on a real job page
in headless Chromium (Playwright, ``--chromium``), logged in:

    live     the page is open and following the job; the worker's ``EventRecorder`` takes the event
             (database write, channel-layer send); the consumer pushes it down the websocket; the
             page's AttentionPanel decodes it and draws the layer × head thumbnails (canvas), the
             chosen head's Plotly heatmap and head view (static/js/charts/attention.js). Time from
             the event's ``ts`` to the frame after the draw (the first paint), split into server +
             network (to the websocket message), JSON parse, decode, draw.
    reload   a fresh page load of the same job: the page fetches the attention index, then the event
             over the events API, then draws. Time from navigation start to the first paint, with the
             event fetch's own timing (Resource Timing) and the API's size.

Paint is taken as the first animation frame after the draw finished (``requestAnimationFrame``
polled from an init script). One machine, one clock for ``ts`` and the page's
``performance.timeOrigin``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import write
from event_latency import make_job, make_user, session_cookie, setup_django, start_web

# Runs in the page before its scripts: times the AttentionPanel's draw and decode (patched as
# job.js publishes window.jobPage), the websocket message that carries the maps, and the first
# animation frame after a draw (the paint).
WATCH = """
(() => {
  const rec = window.__attn = { draws: [] };
  const WS = window.WebSocket;
  window.WebSocket = class extends WS {
    constructor(...args) {
      super(...args);
      this.addEventListener("message", (e) => {
        if (typeof e.data === "string" && e.data.includes('"kind": "attention"')) {
          rec.ws_message = performance.now(); rec.ws_chars = e.data.length;
        }
      });
    }
  };
  let page;
  Object.defineProperty(window, "jobPage", {
    configurable: true,
    get() { return page; },
    set(v) {
      page = v;
      const a = v.attention;
      const draw = a.draw.bind(a), stack = a.stack.bind(a), addEvent = a.addEvent.bind(a);
      a.addEvent = (seq, data) => { rec.added = performance.now(); return addEvent(seq, data); };
      a.stack = () => {
        const fresh = !a.decoded[a.stackName];
        const t = performance.now();
        const s = stack();
        if (fresh) rec.decode_ms = performance.now() - t;
        return s;
      };
      a.draw = () => {
        const t = performance.now();
        try { draw(); } catch (e) { rec.error = String(e); }
        finally { rec.draws.push({ start: t, ms: performance.now() - t }); }
      };
    },
  });
  const tick = () => {
    if (rec.draws.length) {
      rec.ready = performance.now();
      requestAnimationFrame(() => {
        rec.painted = performance.now();
        rec.painted_epoch = performance.timeOrigin + rec.painted;
      });
      return;
    }
    requestAnimationFrame(tick);
  };
  requestAnimationFrame(tick);
})();
"""

RESULTS_JS = """
() => {
  const rec = window.__attn;
  const nav = performance.getEntriesByType("navigation")[0];
  const fetches = performance.getEntriesByType("resource").filter((e) => /[?&]limit=1(&|$)/.test(e.name));
  const f = fetches[fetches.length - 1];
  return {
    ...rec, time_origin: performance.timeOrigin, dom_content_loaded: nav ? nav.domContentLoadedEventEnd : null,
    fetch: f ? { start: f.startTime, response_start: f.responseStart, response_end: f.responseEnd,
                 transfer_bytes: f.transferSize, body_bytes: f.decodedBodySize } : null,
    error: rec.error || null,
    thumbs: document.querySelectorAll("#attention-thumbs canvas").length,
    heatmap: !!document.querySelector("#attention-heatmap .main-svg"),
    headview_lines: document.querySelectorAll("#attention-headview line").length,
    note: document.getElementById("attention-note").textContent,
  };
}
"""


def build(args):
    import torch

    from engine import parse_spec
    from engine.data.datasets import load_data
    from engine.models.families import build_model
    from engine.training.objectives import build_objective

    spec = parse_spec({
        "model": {"n_layer": 1, "n_head": args.n_head, "n_embd": args.n_embd, "block_size": args.block_size},
        "data": {"source": "stdlib", "tokenizer": "char"},
        "train": {"batch_size": 1, "steps": 1, "warmup_steps": 0},
    })
    objective = build_objective(load_data(spec.data, spec.train.objective), spec.model, spec.train)
    torch.manual_seed(0)
    return spec, objective, build_model(spec.model)


def server_side(model, objective, repeats: int, **window) -> tuple[dict, dict]:
    """The event and its (a) compute+encode time, encode alone, (b) size."""
    import torch

    from engine.introspect.attention_maps import attention_event, decode_maps, encode_maps

    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        event = attention_event(model, objective, torch.device("cpu"), contextlib.nullcontext, 100, **window)
        times.append(time.perf_counter() - t0)
    stack = event["stacks"]["self"]
    weights = decode_maps(stack["maps"], stack["shape"])
    # uint8 steps of 1/255: a query spreading its weight over many keys rounds to 0 on most of them
    row_sums = weights.sum(-1)
    t0 = time.perf_counter()
    encode_maps(weights)
    encode = time.perf_counter() - t0
    t0 = time.perf_counter()
    size = len(json.dumps(event))
    dumps = time.perf_counter() - t0
    return event, {
        "shape": stack["shape"], "window": event["window"],
        "compute_encode_ms": round(1000 * min(times), 1), "encode_maps_ms": round(1000 * encode, 1),
        "json_dumps_ms": round(1000 * dumps, 1), "map_bytes": stack["shape"][0] * stack["shape"][1] * stack["shape"][2]
        * stack["shape"][3], "event_json_bytes": size,
        "rows_under_half_their_weight": round(float((row_sums < 0.5).float().mean()), 4),
        "row_sum_min": round(float(row_sums.min()), 4),
    }


def seed_job(user, team, spec):
    """A running job with the events a page has before its first evaluation's maps."""
    from explorer.jobs import services

    job = make_job(user, team, spec.to_dict(), "attention delivery")
    recorder = services.EventRecorder(job)
    recorder({"kind": "start", "total_steps": 100, "params": 0, "vocab_size": spec.model.vocab_size, "device": "cpu",
              "tokens_per_step": spec.model.block_size, "train_tokens": 0, "val_tokens": 0})
    for step in range(1, 100):
        recorder({"kind": "step", "step": step, "loss": 3.0, "lr": 1e-3, "grad_norm": 1.0, "tokens_per_s": 1e4,
                  "elapsed": step * 0.1, "eta": 1.0, "effective_batch": 1, "clipped": False, "update_ratio": 1e-3,
                  "spike": False, "mfu": None})
    recorder.drain()
    recorder({"kind": "eval", "step": 100, "train_loss": 3.0, "val_loss": 3.1, "accuracy": None,
              "sample": {"prompt": "a", "completion": "b", "expected": None}})
    return job, recorder


def clock_offset_ms(page) -> tuple[float, float]:
    """The page's clock (``performance.timeOrigin + now()``) minus this process's ``time.time()``,
    in ms, from the quickest of a few round trips, and that round trip."""
    samples = []
    for _ in range(7):
        t0 = time.time()
        page_ms = page.evaluate("performance.timeOrigin + performance.now()")
        t1 = time.time()
        samples.append((1000 * (t1 - t0), page_ms - 500 * (t0 + t1)))
    rtt, offset = min(samples)
    return offset, rtt


def browser_side(stack, browser, cookie, user, team, spec, event, timeout_s, django_thread) -> dict:
    """Django runs on ``django_thread``: Playwright's sync API keeps an event loop in this one, and
    the ORM and ``async_to_sync`` (the recorder's publish) refuse to run beside it."""
    import httpx

    from explorer.jobs.models import JobEvent

    def on_django(fn, *args):
        return django_thread.submit(fn, *args).result()

    def attention_row(job):
        return JobEvent.objects.filter(job=job, kind="attention").values_list("ts", "seq").get()

    name, value = cookie.split("=", 1)
    job, recorder = on_django(seed_job, user, team, spec)
    url = f"{stack.url}/jobs/{job.pk}/"
    out = {"job": job.pk}

    # live: the page follows the job when the maps arrive
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.add_cookies([{"name": name, "value": value, "url": stack.url}])
    context.add_init_script(WATCH)
    page = context.new_page()
    page.goto(url)
    page.wait_for_function("document.getElementById('live')?.dataset.state === 'open'", timeout=30_000)
    page.wait_for_timeout(500)  # the replay drawn, the page idle
    offset, rtt = clock_offset_ms(page)
    t0 = time.perf_counter()
    on_django(recorder, dict(event))  # not a step: written and sent at once, as at an evaluation
    saved_sent_ms = 1000 * (time.perf_counter() - t0)
    ts, seq = on_django(attention_row, job)
    try:
        page.wait_for_function("window.__attn.painted_epoch", timeout=timeout_s * 1000)
        r = page.evaluate(RESULTS_JS)
        to_ms = lambda t: t + r["time_origin"] - offset - 1000 * ts  # noqa: E731 - page time -> ms after ts
        draw = r["draws"][-1]
        out["live"] = {
            "first_paint_ms": round(to_ms(r["painted"]), 1),
            "clock_offset_ms": round(offset, 2), "clock_offset_uncertainty_ms": round(rtt / 2, 2),
            "saved_and_sent_ms": round(saved_sent_ms, 1),  # EventRecorder: database + channel layer, in the bench
            "ws_message_ms": round(to_ms(r["ws_message"]), 1),  # ts -> the page has the websocket message
            "json_parse_apply_ms": round(r["added"] - r["ws_message"], 1),
            "decode_ms": round(r.get("decode_ms", float("nan")), 1),
            "draw_ms": round(draw["ms"], 1),
            "draw_to_paint_ms": round(r["painted"] - draw["start"] - draw["ms"], 1),
            "draw_error": r["error"], "ws_chars": r["ws_chars"], "thumbs": r["thumbs"], "heatmap": r["heatmap"],
            "headview_lines": r["headview_lines"], "note": r["note"],
        }
    except Exception as exc:  # noqa: BLE001 - a page that cannot draw it in time is a result too
        out["live"] = {"error": f"no paint within {timeout_s} s: {type(exc).__name__}",
                       "saved_and_sent_ms": saved_sent_ms}
    context.close()

    # reload: a fresh page of the same job, the maps in the log
    api = f"{stack.url}/api/v1/jobs/{job.pk}/events?after={seq - 1}&limit=1"
    t0 = time.perf_counter()
    resp = httpx.get(api, headers={"Cookie": cookie}, timeout=120)
    api_ms = 1000 * (time.perf_counter() - t0)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.add_cookies([{"name": name, "value": value, "url": stack.url}])
    context.add_init_script(WATCH)
    page = context.new_page()
    page.goto(url, wait_until="commit")
    try:
        page.wait_for_function("window.__attn && window.__attn.painted_epoch", timeout=timeout_s * 1000)
        r = page.evaluate(RESULTS_JS)
        f, draw = r["fetch"], r["draws"][-1]
        out["reload"] = {
            "first_paint_ms": round(r["painted"], 1),  # after navigation start
            "dom_content_loaded_ms": round(r["dom_content_loaded"], 1),
            "event_fetch_start_ms": round(f["start"], 1),
            "event_fetch_server_ms": round(f["response_start"] - f["start"], 1),  # request -> first byte
            "event_fetch_download_ms": round(f["response_end"] - f["response_start"], 1),
            "parse_decode_draw_paint_ms": round(r["painted"] - f["response_end"], 1),
            "decode_ms": round(r.get("decode_ms", float("nan")), 1),
            "draw_ms": round(draw["ms"], 1),
            "event_fetch_bytes": f["transfer_bytes"], "api_get_ms": round(api_ms, 1), "api_bytes": len(resp.content),
            "api_status": resp.status_code, "draw_error": r["error"], "thumbs": r["thumbs"], "heatmap": r["heatmap"],
            "headview_lines": r["headview_lines"],
        }
    except Exception as exc:  # noqa: BLE001
        out["reload"] = {"error": f"no paint within {timeout_s} s: {type(exc).__name__}",
                         "api_get_ms": round(api_ms, 1),
                         "api_bytes": len(resp.content), "api_status": resp.status_code}
    context.close()
    return out


PARTS_JS = """
async (event) => {
  const a = window.jobPage.attention, out = {};
  a.event = event; a.decoded = {}; a.stackName = "self";
  const time = (name, fn) => {
    const t = performance.now();
    try { return fn(); } catch (e) { out[name + "_error"] = String(e); }
    finally { out[name + "_ms"] = performance.now() - t; }
  };
  const st = time("decode", () => a.stack());
  const m = st.map(0, 0);
  time("thumbs", () => a.drawThumbs(st));
  time("heatmap", () => a.drawHeatmap(st, m));
  time("headview", () => a.drawHeadView(st, m));
  out.headview_lines = out.headview_error ? null : document.querySelectorAll("#attention-headview line").length;
  const t = performance.now();
  await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
  out.paint_ms = performance.now() - t;
  return out;
}
"""


def one_head(model, objective, t: int) -> dict:
    """The engine's event with a window of the last ``t`` positions, less all heads but the first
    (cropped before quantising, as the engine does: a 2,048-key row's weights mostly round to 0)."""
    from engine.introspect.attention_maps import decode_maps, encode_maps

    event, _ = server_side(model, objective, 1, max_tokens=t, max_bytes=10**12)
    stack = event["stacks"]["self"]
    w = decode_maps(stack["maps"], stack["shape"])[:1, :1]  # (1, 1, t, t)
    event["stacks"]["self"] = {**stack, "n_layer": 1, "n_head": 1, "shape": list(w.shape), "maps": encode_maps(w)}
    return event


def in_page_parts(browser, stack, cookie, job_id, model, objective, sizes: list[int]) -> list[dict]:
    """The panel's own steps, timed one by one in the job page, on one head of ``t`` × ``t``
    tokens for each ``t``: decode (base64 → bytes), thumbnails (canvas), heatmap (Plotly), head
    view (SVG), then two frames (the paint)."""
    name, value = cookie.split("=", 1)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.add_cookies([{"name": name, "value": value, "url": stack.url}])
    page = context.new_page()
    page.goto(f"{stack.url}/jobs/{job_id}/")
    page.wait_for_function("window.jobPage && window.Plotly", timeout=30_000)
    rows = []
    for t in sizes:
        r = page.evaluate(PARTS_JS, one_head(model, objective, t))
        rows.append({"tokens": t, **{k: round(v, 1) if isinstance(v, float) else v for k, v in r.items()}})
        errors = "; ".join(f"{k}: {v}" for k, v in r.items() if k.endswith("_error"))
        print(f"  in page, 1 head of {t}×{t}: decode {r['decode_ms']:.0f}, thumbnail {r['thumbs_ms']:.0f}, "
              f"heatmap {r['heatmap_ms']:.0f}, head view {r['headview_ms']:.0f} ms ({r['headview_lines'] or 0} lines), "
              f"paint {r['paint_ms']:.0f} ms" + (f"; {errors}" if errors else ""))
    context.close()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-head", type=int, default=8)
    parser.add_argument("--n-embd", type=int, default=128)
    parser.add_argument("--block-size", type=int, default=2048)
    parser.add_argument("--cases", default="engine,full")
    parser.add_argument("--parts", default="64,256,512,2048",
                        help="window sizes of one head whose decode and draw are timed apart in the page ('' for none)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=45.0, help="seconds a page may take to paint")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--redis-db", type=int, default=13)
    args = parser.parse_args()

    import torch
    from playwright.sync_api import sync_playwright

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="lae-bench-"))
    setup_django(tmp, args.redis_db)
    user, team = make_user("bench")
    cookie = session_cookie(user)
    spec, objective, model = build(args)
    cases = {}
    stack = start_web(tmp)
    django_thread = ThreadPoolExecutor(1)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium)
            for case in args.cases.split(","):
                window = {} if case == "engine" else {"max_tokens": args.block_size, "max_bytes": 10**12}
                event, server = server_side(model, objective, args.repeats, **window)
                cases[case] = {"server": server, **browser_side(stack, browser, cookie, user, team, spec, event,
                                                                 args.timeout, django_thread)}
                report_case(case, cases[case])
            parts = []
            if args.parts:
                job, _ = django_thread.submit(seed_job, user, team, spec).result()  # no maps of its own
                parts = in_page_parts(browser, stack, cookie, job.pk, model, objective,
                                      [int(t) for t in args.parts.split(",")])
            browser.close()
    finally:
        django_thread.shutdown()
        stack.stop()
    if "Traceback" in stack.log("web"):
        print("the ASGI server logged errors:\n" + stack.log("web")[-2000:], file=sys.stderr)
    write("attention_delivery", {
        "name": f"attention maps of a {args.block_size}-token input, 1 layer × {args.n_head} heads: "
                "compute, size, and first paint on the job page (headless Chromium)",
        "model": spec.model.to_dict(), "chromium": args.chromium, "cases": cases, "in_page_one_head": parts,
    })
    return 0


def report_case(case: str, r: dict) -> None:
    s = r["server"]
    print(f"{case}: maps {s['shape']} window {s['window']}: compute+encode {s['compute_encode_ms']:.0f} ms "
          f"(encode_maps {s['encode_maps_ms']:.0f} ms), event {s['event_json_bytes'] / 1e3:,.1f} kB of JSON; "
          f"{100 * s['rows_under_half_their_weight']:.0f}% of rows keep under half their weight after uint8 rounding")
    live, reload = r["live"], r["reload"]
    if "error" in live:
        print(f"  live: {live['error']}")
    else:
        print(f"  live: first paint {live['first_paint_ms']:.0f} ms after ts (websocket message "
              f"{live['ws_message_ms']:.0f}, parse {live['json_parse_apply_ms']:.0f}, decode {live['decode_ms']:.0f}, "
              f"draw {live['draw_ms']:.0f} ms; {live['headview_lines']} head-view lines)"
              + (f"; the draw threw {live['draw_error']}" if live["draw_error"] else ""))
    if "error" in reload:
        print(f"  reload: {reload['error']} (events API {reload['api_get_ms']:.0f} ms, {reload['api_bytes']:,} B)")
    else:
        print(f"  reload: first paint {reload['first_paint_ms']:.0f} ms after navigation (event fetch from "
              f"{reload['event_fetch_start_ms']:.0f} ms: server {reload['event_fetch_server_ms']:.0f} + download "
              f"{reload['event_fetch_download_ms']:.0f} ms; then parse+decode+draw "
              f"{reload['parse_decode_draw_paint_ms']:.0f} ms)"
              + (f"; the draw threw {reload['draw_error']}" if reload["draw_error"] else ""))


if __name__ == "__main__":
    raise SystemExit(main())
