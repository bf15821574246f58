"""A long-context job's attention panel in headless Chromium: the overview of 2,048 tokens drawn
at once, detail fetched on zoom (a programmatic ``Plotly.relayout``, as a dragged box makes),
token labels at full resolution, stale requests dropped, and "reset zoom".

The job is real: trained by ``training_jobs.run_job`` (ALiBi, so its heads look back over different
distances from the start), its "attention" events made by ``engine.train``, a checkpoint at the
end that the region endpoint recomputes from. Screenshot: docs/screenshots/attention_long.png.
"""
import os
import threading

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from explorer.datasets.uploads import save_upload
from explorer.training import jobs as training_jobs
from tests.conftest import make_user
from tests.e2e.helpers import log_in

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

TEXT = ("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
        "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles\n"
        "And by opposing end them. To die—to sleep,\nNo more; and by a sleep to say we end\n") * 180
LONG = {
    "model": {"n_layer": 2, "n_head": 4, "n_embd": 32, "block_size": 2048, "position": "alibi"},
    "data": {"source": "text", "tokenizer": "char"},
    "train": {"steps": 30, "batch_size": 2, "lr": 1e-2, "warmup_steps": 5, "eval_interval": 30, "eval_iters": 1,
              "sample_tokens": 16, "checkpoint_every": 30},
}


def long_job(name):
    user, team = make_user(name)
    dataset = save_upload(team, user, SimpleUploadedFile("hamlet.txt", TEXT.encode()))
    raw = {**LONG, "data": {**LONG["data"], "dataset": dataset.pk}}
    job = training_jobs.create_job(user, team, raw, name="hamlet · 2,048-token context")
    outcome = []  # in another thread: Playwright keeps an event loop in this one, and run_job publishes
    runner = threading.Thread(target=lambda: outcome.append(training_jobs.run_job(job.pk, "test-worker")))
    runner.start()
    runner.join()
    assert outcome == ["succeeded"]
    return job


def zoom(page, q, k):
    """What a box dragged over queries q[0]..q[1] × keys k[0]..k[1] does: relayout the axes."""
    page.evaluate("([q, k]) => Plotly.relayout(document.getElementById('attention-heatmap'), "
                  "{'xaxis.range': [k[0] - 0.5, k[1] - 0.5], 'yaxis.range': [q[1] - 0.5, q[0] - 0.5]})", [q, k])


def region_shown(page, region):
    page.wait_for_function("(r) => document.getElementById('attention-heatmap').dataset.region === r",
                           arg=",".join(map(str, region)), timeout=20_000)


def test_overview_then_detail_on_zoom(web, browser, shots):
    job = long_job("zoe")
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    errors, regions = [], []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: regions.append(r.url) if "/attention/region" in r.url else None)
    try:
        log_in(page, web, "zoe")
        page.goto(web.url + f"/jobs/{job.pk}/")
        page.wait_for_function("() => document.getElementById('attention-card').dataset.overviewMs", timeout=30_000)
        card = page.locator("#attention-card")
        first_paint = float(card.get_attribute("data-overview-at"))
        draw = float(card.get_attribute("data-overview-ms"))
        print(f"\noverview of 2,048 tokens (2 layers × 4 heads): drawn in {draw:.0f} ms; "
              f"first paint {first_paint:.0f} ms after navigation")
        assert draw < 3_000
        thumbs = page.locator("#attention-thumbs canvas")
        assert thumbs.count() == 2 * 4 and thumbs.first.get_attribute("width") == "128"
        assert "2,048 × 2,048 tokens, in 16×16-token blocks" in page.locator("#attention-note").text_content()
        assert page.locator("#attention-zoom-state").text_content().startswith("overview")
        assert page.locator("#attention-reset").is_disabled()
        assert regions == []  # the overview comes with the event
        if os.environ.get("ATTENTION_OVERVIEW_SHOT"):  # the overview alone, for a closer look
            card.screenshot(path=os.environ["ATTENTION_OVERVIEW_SHOT"])

        # A zoom of 64 × 64 positions: "loading detail…" at once, then the region at full resolution.
        page.click('#attention-thumbs canvas[data-layer="1"][data-head="2"]')
        zoom(page, (1900, 1964), (1900, 1964))
        assert page.locator("#attention-zoom").get_attribute("data-state") == "loading"
        assert "loading detail" in page.locator("#attention-zoom-state").text_content()
        region_shown(page, (1900, 1964, 1900, 1964))
        assert "full resolution" in page.locator("#attention-zoom-state").text_content()
        assert len(regions) == 1 and "layer=1" in regions[0] and "head=2" in regions[0]
        ticks = page.locator("#attention-heatmap .xtick text").all_text_contents()
        body = page.evaluate(f"fetch('/api/v1/jobs/{job.pk}/attention/region?step=30&layer=1&head=2"
                             "&q0=1900&q1=1964&k0=1900&k1=1964').then(r => r.json())")
        assert ticks == body["keys"][::2]  # every other token: at most 40 labels an axis
        # the head view follows the zoom: the region's tokens, lines by weight
        head_view_q = page.locator('#attention-headview .attn-token[data-side="q"]')
        assert head_view_q.all_text_contents() == body["queries"]
        assert "zoomed: 1900–1963 → 1900–1963" in page.locator("#attention-headview-note").text_content()
        regions.clear()

        # Zooms in quick succession: one request, for the last.
        zoom(page, (0, 1024), (0, 1024))
        zoom(page, (500, 1500), (0, 2048))
        zoom(page, (1000, 1500), (600, 1500))
        region_shown(page, (1000, 1500, 600, 1500))
        assert len(regions) == 1
        assert "pooled 4×8" in page.locator("#attention-zoom-state").text_content()
        assert page.locator("#attention-heatmap .xtick text").first.text_content().strip().isdigit()  # positions

        page.click("#attention-reset")
        page.wait_for_function("() => !document.getElementById('attention-heatmap').dataset.region")
        assert page.locator("#attention-zoom-state").text_content().startswith("overview")
        window = page.evaluate(f"fetch('/api/v1/jobs/{job.pk}/events?kind=attention&last=true&limit=1')"
                               ".then(r => r.json()).then(b => b.events[0].data.tokens)")
        assert head_view_q.all_text_contents() == window  # back to the last positions

        # The screenshot: the last 40 positions of layer 0's head 1 (ALiBi slope 1/16), every token labelled.
        page.click('#attention-thumbs canvas[data-layer="0"][data-head="1"]')
        zoom(page, (2008, 2048), (2008, 2048))
        region_shown(page, (2008, 2048, 2008, 2048))
        page.mouse.move(5, 5)
        # as if hovering the query "n" of "not" (a real hover would scroll the page)
        page.locator('#attention-headview .attn-token[data-side="q"][data-i="26"]').dispatch_event("mouseenter")
        page.wait_for_timeout(300)
        card.scroll_into_view_if_needed()
        card.screenshot(path=str(shots / "attention_long.png"))
        assert not errors, errors
    finally:
        context.close()
