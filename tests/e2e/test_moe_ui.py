"""The job page's Mixture-of-Experts card in headless Chromium, on a real job through the worker.

A tiny MoE decoder (4 experts, top-2, capacity factor 1, so some token-choices are dropped)
trains on Python source: the over-time heatmap gets one column per "moe" event, live and again
from the replayed log after a reload; the token → expert view shows a chip per token of the
held-out example, coloured by its first expert, with a legend; the layer picker and the
evaluation slider move both views. An encoder-decoder's encoder layers show the source tokens.
Screenshot: docs/screenshots/moe.png (the card, 1400 px wide).
"""
import pytest

import engine
from explorer.jobs import services
from explorer.jobs.models import Job
from explorer.training import jobs as training_jobs
from tests.conftest import make_user
from tests.e2e.helpers import log_in

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SPEC = {
    "model": {"n_layer": 2, "n_head": 2, "n_embd": 48, "block_size": 48, "n_expert": 4, "top_k": 2,
              "capacity_factor": 1.0},
    "data": {"source": "stdlib"},
    "train": {"steps": 200, "batch_size": 16, "lr": 3e-3, "warmup_steps": 10, "eval_interval": 25, "eval_iters": 2,
              "attention_maps": False},
}


def columns(page):
    return int(page.locator("#moe-time-chart").get_attribute("data-columns"))


def test_moe_card_follows_a_real_job(stack, browser, shots):
    user, team = make_user("moe")
    job = training_jobs.create_job(user, team, SPEC, name="MoE routing")
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        log_in(page, stack, "moe")
        page.goto(stack.url + f"/jobs/{job.pk}/")
        page.wait_for_selector("#moe-card:not([hidden])", timeout=120_000)
        page.wait_for_function("() => document.querySelector('#job-status').textContent.trim() === 'succeeded'",
                               timeout=240_000)

        job.refresh_from_db()
        moe_steps = sorted(e.payload["step"] for e in job.events.filter(kind="moe"))
        routed = sorted((e.payload for e in job.events.filter(kind="routing")), key=lambda d: d["step"])
        assert len(moe_steps) == 24 and [r["step"] for r in routed] == [25, 50, 75, 100, 125, 150, 175, 200]
        for check in ("live", "replayed"):
            page.wait_for_function("(n) => document.querySelector('#moe-time-chart').dataset.columns === String(n)",
                                   arg=len(moe_steps))
            assert page.evaluate("() => document.querySelector('#moe-time-chart').data[0].x") == moe_steps, check
            assert len(page.evaluate("() => document.querySelector('#moe-time-chart').data[0].y")) == 4  # experts
            page.wait_for_function("() => document.getElementById('moe-routing').dataset.step === '200'")
            last = routed[-1]
            chips = page.locator("#moe-chips .moe-chip")
            assert chips.count() == len(last["tokens"]) == 48
            assert chips.locator(".tok").all_text_contents() == last["tokens"]
            first = last["layers"][0]
            assert chips.evaluate_all("cs => cs.map(c => Number(c.dataset.expert))") == [e[0] for e in first["experts"]]
            title = chips.first.get_attribute("title")
            assert f"#1  expert {first['experts'][0][0]} · gate" in title and "#2  expert" in title
            n_dropped = sum(any(d) for d in first["dropped"])
            assert page.locator("#moe-chips .moe-chip.dropped, #moe-chips .moe-chip.dropped-all").count() == n_dropped
            assert page.locator("#moe-legend .moe-key").count() == 4 + 1  # the experts and "dropped choice"
            if check == "live":
                page.reload()  # the same picture from the replayed event log

        # One layer picker moves both views.
        pick = page.locator("#moe-layer")
        assert pick.locator("option").all_text_contents() == ["layer 0", "layer 1"]
        pick.select_option("1")
        page.wait_for_function("() => document.getElementById('moe-routing').dataset.layer === '1'")
        page.wait_for_function("() => document.getElementById('moe-time-chart').dataset.layer === '1'")
        second = routed[-1]["layers"][1]
        assert page.locator("#moe-chips .moe-chip").evaluate_all("cs => cs.map(c => Number(c.dataset.expert))") == [
            e[0] for e in second["experts"]]
        note = page.locator("#moe-routing-note").text_content()
        assert f"{sum(map(sum, second['dropped']))} of 96 choices dropped" in note

        # An earlier evaluation.
        page.locator("#moe-routing-step").fill("0")
        page.wait_for_function("() => document.getElementById('moe-routing').dataset.step === '25'")
        assert page.locator("#moe-routing-step-label").text_content() == "step 25 · evaluation 1 of 8"
        page.locator("#moe-routing-step").fill("7")
        page.wait_for_function("() => document.getElementById('moe-routing').dataset.step === '200'")

        page.evaluate("() => document.activeElement.blur()")  # no focus ring on the slider
        page.mouse.move(0, 0)
        page.evaluate("() => window.scrollTo(0, 0)")  # the sticky top bar stays at the top, off the card
        page.wait_for_timeout(300)
        box = page.evaluate("""() => {
            const r = document.getElementById('moe-card').getBoundingClientRect();
            return {x: r.left + scrollX - 12, y: r.top + scrollY - 12, width: r.width + 24, height: r.height + 24};
        }""")
        page.wait_for_function("() => !window.chartsIdle || window.chartsIdle()")  # every chart drawn
        page.screenshot(path=str(shots / "moe.png"), full_page=True, clip=box)
        assert not errors, errors
    finally:
        context.close()


def test_encoder_decoder_routes_its_encoder_layers_on_the_source(web, page):
    raw = {"model": {"family": "encoder_decoder", "n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 24,
                     "n_expert": 3, "top_k": 1},
           "data": {"source": "synthetic", "task": "reverse", "task_length": 5},
           "train": {"steps": 10, "batch_size": 8, "warmup_steps": 2, "eval_interval": 5, "eval_iters": 1,
                     "attention_maps": False}}
    events = []
    engine.train(engine.parse_spec(raw), on_event=events.append)
    routed = [e for e in events if e["kind"] == "routing"]
    assert [layer["input"] for layer in routed[-1]["layers"]] == ["source_tokens", "tokens"]
    user, team = make_user("ede")
    job = Job.objects.create(team=team, owner=user, name="seq2seq experts", spec=engine.parse_spec(raw).to_dict(),
                             queue="cpu", status="succeeded", total_steps=10, worker="test", device="cpu")
    services.append_events(job.pk, [(e["kind"], {k: v for k, v in e.items() if k != "kind"}) for e in events], step=10)

    log_in(page, web, "ede")
    page.goto(web.url + f"/jobs/{job.pk}/")
    page.wait_for_function("() => document.getElementById('moe-routing').dataset.step === '10'")
    assert page.locator("#moe-layer option").all_text_contents() == ["layer 0", "layer 1"]
    assert "(encoder input)" in page.locator("#moe-routing-note").text_content()
    chips = page.locator("#moe-chips .moe-chip .tok")
    assert chips.all_text_contents() == routed[-1]["source_tokens"]
    page.locator("#moe-layer").select_option("1")
    page.wait_for_function("() => document.getElementById('moe-routing').dataset.layer === '1'")
    assert chips.all_text_contents() == routed[-1]["tokens"]
    assert "encoder" not in page.locator("#moe-routing-note").text_content()
    assert page.locator("#moe-time-chart").get_attribute("data-columns") == str(sum(e["kind"] == "moe" for e in events))
