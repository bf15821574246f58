"""The job page's attention panel in headless Chromium.

Maps made by the real engine (``engine.introspect.attention_maps``) are stored as a job's events with
``services.append_events`` and published as a worker would: the panel shows the newest, pins a
chosen step while new ones arrive live, enlarges a head, and offers an encoder-decoder's three
stacks. The last test watches a real job through the worker and runs once ``engine.train``
emits "attention" events itself. Screenshot: docs/screenshots/attention.png (1400 px wide).
"""
import contextlib
import inspect
import os
import threading

import pytest
import torch

import engine
from engine.introspect.attention_maps import attention_event
from explorer.jobs import services
from explorer.jobs.models import Job
from explorer.training import jobs as training_jobs
from tests.conftest import make_user
from tests.e2e.helpers import log_in

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

COPY = {
    "model": {"n_layer": 2, "n_head": 4, "n_embd": 64, "block_size": 32},
    "data": {"source": "synthetic", "task": "copy", "task_length": 8},
    "train": {"steps": 160, "batch_size": 32, "lr": 3e-3, "warmup_steps": 20, "eval_interval": 20, "eval_iters": 2},
}


def train_events(raw):
    """``engine.train``'s events for ``raw``, with an "attention" event after each evaluation
    (made the way train's ``_evaluate`` is to make it, until it does so itself)."""
    import engine.training.loop as train_module  # the module; ``engine.train`` is the function
    evaluate, maps = train_module._evaluate, {}

    def with_maps(*args, **kwargs):
        a = inspect.signature(evaluate).bind(*args, **kwargs).arguments
        maps[a["step"]] = attention_event(a["model"], a["objective"], a["device"], a["autocast"], a["step"])
        return evaluate(*args, **kwargs)

    events = []

    def record(event):
        if event["kind"] == "attention":
            return  # train emits them itself now: keep ours only
        events.append(event)
        if event["kind"] == "eval" and event["step"] in maps:
            events.append(maps.pop(event["step"]))

    train_module._evaluate = with_maps
    try:
        engine.train(engine.parse_spec(raw), on_event=record)
    finally:
        train_module._evaluate = evaluate
    return events


def untrained_maps(raw, steps):
    spec = engine.parse_spec(raw)
    torch.manual_seed(0)
    from engine.data.datasets import load_data
    from engine.training.objectives import OBJECTIVES

    objective = OBJECTIVES[spec.model.family](load_data(spec.data), spec.model)
    model = engine.build_model(spec.model)
    return [attention_event(model, objective, torch.device("cpu"), contextlib.nullcontext, s) for s in steps]


def make_job(user, team, raw, status, name):
    spec = engine.parse_spec(raw)
    return Job.objects.create(team=team, owner=user, name=name, spec=spec.to_dict(), queue="cpu",
                              status=status, total_steps=spec.train.steps, worker="test", device="cpu")


def add(job, events, publish=False):
    """Store engine events as the worker's EventRecorder does, and broadcast them."""
    pairs = [(e["kind"], {k: v for k, v in e.items() if k != "kind"}) for e in events]
    step = max((d.get("step", 0) for _, d in pairs), default=0)
    messages = services.append_events(job.pk, pairs, step=max(job.step, step))
    if publish:  # from another thread: Playwright keeps an event loop in this one
        sender = threading.Thread(target=services.publish, args=(job.pk, messages))
        sender.start()
        sender.join()


def shown_step(page, step):
    page.wait_for_function("(s) => document.getElementById('attention-card').dataset.step === String(s)", arg=step,
                           timeout=20_000)


def test_panel_follows_new_maps_pins_a_step_and_enlarges_a_head(web, page):
    user, team = make_user("ada")
    job = make_job(user, team, COPY, "running", "attention live")
    m10, m20, m30, m40 = untrained_maps(COPY, [10, 20, 30, 40])
    add(job, [{"kind": "step", "step": 10, "loss": 2.0}, m10, {"kind": "step", "step": 20, "loss": 1.5}, m20])

    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    log_in(page, web, "ada")
    page.goto(web.url + f"/jobs/{job.pk}/")
    page.wait_for_selector("#attention-card:not([hidden])")
    shown_step(page, 20)  # the newest map, fetched alone: the replay leaves maps out
    assert page.locator("#attention-thumbs canvas").count() == 2 * 4
    assert page.locator("#attention-stack").is_hidden()  # a decoder has one stack
    page.wait_for_selector("#attention-heatmap .main-svg")
    assert "layer 0, head 0" in page.locator("#attention-title").text_content()
    page.wait_for_function("() => document.querySelector('#loss-chart').dataset.points === '2'")  # the other events still replay

    # A new evaluation arrives live: followed.
    add(job, [m30], publish=True)
    shown_step(page, 30)
    assert page.locator("#attention-card").get_attribute("data-steps") == "3"

    # Pin the first evaluation; the next live map does not move the view.
    page.locator("#attention-step").fill("0")
    shown_step(page, 10)
    add(job, [m40], publish=True)
    page.wait_for_function("() => document.getElementById('attention-card').dataset.steps === '4'", timeout=20_000)
    assert page.locator("#attention-card").get_attribute("data-step") == "10"
    assert page.locator("#attention-step-label").text_content().startswith("step 10 · evaluation 1 of 4")
    page.click("#attention-latest")
    shown_step(page, 40)

    # Enlarge another head; the head view draws its lines and hovering a token keeps its own.
    page.click('#attention-thumbs canvas[data-layer="1"][data-head="2"]')
    assert "layer 1, head 2" in page.locator("#attention-title").text_content()
    assert page.locator('#attention-thumbs canvas.selected[data-layer="1"][data-head="2"]').count() == 1
    assert page.locator("#attention-headview line").count() > 0
    n_tokens = len(m40["tokens"])
    assert page.locator('#attention-headview .attn-token[data-side="q"]').count() == n_tokens
    page.hover('#attention-headview .attn-token[data-side="q"][data-i="5"]')
    on = page.locator("#attention-headview line.on")
    assert on.count() >= 1
    assert all(q == "5" for q in on.evaluate_all("ls => ls.map(l => l.dataset.q)"))
    assert page.locator('#attention-headview .attn-token.linked[data-side="k"]').count() >= 1
    # the heatmap labels its axes with the tokens
    ticks = page.locator("#attention-heatmap .xtick text").all_text_contents()
    assert ticks[: len(m40["tokens"])] == m40["tokens"]
    assert not errors, errors


def test_encoder_decoder_offers_its_three_stacks(web, page):
    user, team = make_user("bea")
    raw = {**COPY, "model": {**COPY["model"], "family": "encoder_decoder"}}
    job = make_job(user, team, raw, "succeeded", "attention seq2seq")
    (m5,) = untrained_maps(raw, [5])
    add(job, [m5])
    log_in(page, web, "bea")
    page.goto(web.url + f"/jobs/{job.pk}/")
    shown_step(page, 5)
    stack = page.locator("#attention-stack")
    stack.wait_for(state="visible")  # drawn once the event is decoded, which can trail the step label
    assert stack.locator("option").all_text_contents() == ["encoder", "cross-attention", "self-attention"]
    assert stack.input_value() == "self"
    stack.select_option("cross")
    page.wait_for_function("() => document.getElementById('attention-title').textContent.includes('cross')")
    canvas = page.locator("#attention-thumbs canvas").first
    src, tgt = len(m5["source_tokens"]), len(m5["tokens"])
    assert (canvas.get_attribute("width"), canvas.get_attribute("height")) == (str(src), str(tgt))
    assert page.locator('#attention-headview .attn-token[data-side="k"]').count() == src


def test_screenshot_of_a_trained_copy_model(web, browser, shots):
    user, team = make_user("cleo")
    job = make_job(user, team, COPY, "queued", "copy · attention maps")
    events = train_events(COPY)
    assert sum(e["kind"] == "attention" for e in events) == 8
    services.record_status(job.pk, "running", worker="test")
    add(job, events)
    services.record_status(job.pk, "succeeded")

    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    try:
        log_in(page, web, "cleo")
        page.goto(web.url + f"/jobs/{job.pk}/")
        shown_step(page, 160)
        # layer 0's heads copy: each answer token looks at the prompt token after its own
        page.click('#attention-thumbs canvas[data-layer="0"][data-head="2"]')
        page.wait_for_selector("#attention-heatmap .main-svg")
        page.mouse.move(700, 5)  # off the charts, whose tool bars show under the pointer
        page.evaluate("window.scrollTo(0, 0)")  # the sticky top bar stays at the top of a full-page shot
        # as if hovering the answer's "a" (a real hover would scroll the page back down)
        page.locator('#attention-headview .attn-token[data-side="q"][data-i="12"]').dispatch_event("mouseenter")
        page.wait_for_timeout(300)
        page.wait_for_function("() => !window.chartsIdle || window.chartsIdle()")  # every chart drawn
        page.screenshot(path=str(shots / "attention.png"), full_page=True)
        if os.environ.get("ATTENTION_CARD_SHOT"):  # the panel alone, for a closer look
            page.locator("#attention-card").screenshot(path=os.environ["ATTENTION_CARD_SHOT"])
    finally:
        context.close()


def engine_emits_attention():
    spec = engine.parse_spec({"model": {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16},
                              "data": {"source": "synthetic", "task": "copy", "task_length": 3},
                              "train": {"steps": 2, "batch_size": 4, "eval_interval": 1, "eval_iters": 1,
                                        "warmup_steps": 1}})
    kinds = []
    engine.train(spec, on_event=lambda e: kinds.append(e["kind"]))
    return "attention" in kinds


@pytest.mark.skipif(not engine_emits_attention(), reason="engine.train does not emit attention events yet")
def test_a_training_job_shows_its_maps_live(stack, page):
    user, team = make_user("dora")
    raw = {**COPY, "train": {**COPY["train"], "steps": 2000, "eval_interval": 20}}
    job = training_jobs.create_job(user, team, raw, name="attention through the worker")
    log_in(page, stack, "dora")
    page.goto(stack.url + f"/jobs/{job.pk}/")
    page.wait_for_selector("#attention-card:not([hidden])", timeout=120_000)
    page.wait_for_function("() => Number(document.getElementById('attention-card').dataset.steps) >= 3",
                           timeout=120_000)
    assert page.locator("#job-status").text_content().strip() == "running"  # they came live
    first = int(page.locator("#attention-card").get_attribute("data-step"))
    page.wait_for_function("(s) => Number(document.getElementById('attention-card').dataset.step) > s", arg=first,
                           timeout=60_000)
    assert page.locator("#attention-thumbs canvas").count() == 2 * 4
    services.cancel_job(job)
