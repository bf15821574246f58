"""The job page's "Training health" card and export buttons in headless Chromium.

A real job trains through the worker: the gradient-norm chart (clip threshold drawn, clipped
steps marked), the update/weight ratio, the MFU tile and the per-block table fill from the live
stream and come back after a reload. A second job's stored events carry a loss spike and a
non-finite step: both are marked on the loss chart and listed under Events. Screenshot:
docs/screenshots/job_health.png (1400 px wide).
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
    "model": {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 24},
    "data": {"source": "synthetic", "task": "copy", "task_length": 6},
    "train": {"steps": 240, "batch_size": 16, "lr": 3e-3, "eval_interval": 40, "eval_iters": 2, "warmup_steps": 10,
              "grad_clip": 0.5, "attention_maps": False},
}


def points(page, chart):
    return int(page.locator(f"#{chart}").get_attribute("data-points"))


def test_health_card_follows_a_real_job(stack, page, shots):
    user, team = make_user("hana")
    job = training_jobs.create_job(user, team, SPEC, name="health watch")
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_viewport_size({"width": 1400, "height": 900})
    log_in(page, stack, "hana")
    page.goto(stack.url + f"/jobs/{job.pk}/")

    page.wait_for_function("() => Number(document.querySelector('#grad-chart').dataset.points) >= 5", timeout=90_000)
    assert page.locator("#grad-chart .main-svg").count() >= 1
    assert "clip 0.5" in page.locator("#grad-chart").text_content()  # the threshold's label
    page.wait_for_function("() => /%$/.test(document.querySelector('[data-tile=mfu]').textContent.trim())")
    assert "device peak" in page.locator("#mfu-tile").get_attribute("title")
    # never above 100% (a busy machine's CPU peak gave 133%), and the tile says which peak and whence
    assert 0 < float(page.locator("[data-tile=mfu]").text_content().strip().rstrip("%")) <= 100
    assert page.locator("#mfu-peak").text_content().split(" · ")[1] in ("measured", "cached", "raised")
    assert "FLOP/s, " in page.locator("#mfu-tile").get_attribute("title")

    # Reload mid-run: the health history comes back from the log with the loss curve.
    before = points(page, "grad-chart")
    page.reload()
    page.wait_for_function("(n) => Number(document.querySelector('#grad-chart').dataset.points) >= n", arg=before)

    page.wait_for_function("() => document.querySelector('#job-status').textContent.trim() === 'succeeded'", timeout=180_000)
    page.wait_for_function("() => Number(document.querySelector('#grad-chart').dataset.points) === 240")
    page.wait_for_function("() => document.querySelector('#loss-chart').dataset.points === '240'")
    page.wait_for_function("() => document.querySelectorAll('#health-layers tbody tr').length === 2")
    assert page.locator("#layers-step").text_content().startswith("· step 240")
    row = page.locator("#health-layers tbody tr").first.text_content()
    assert "h.0" in row

    job.refresh_from_db()
    clipped = sum(1 for e in job.events.filter(kind="step") if e.payload["clipped"])
    assert page.evaluate("() => document.querySelector('#grad-chart').data[1].x.length") == clipped

    # Exports: the links, and what they fetch with the page's session.
    for fmt in ("csv", "json"):
        link = page.locator(f"#download-{fmt}")
        assert link.get_attribute("href") == f"/api/v1/jobs/{job.pk}/export?format={fmt}"
    csv_text = page.evaluate("async (u) => (await fetch(u)).text()", f"/api/v1/jobs/{job.pk}/export?format=csv")
    assert csv_text.startswith("step,loss,lr,grad_norm") and len(csv_text.strip().splitlines()) == 241
    assert page.locator("button.png-btn").count() == 5
    with page.expect_download() as download:
        page.click("[data-png=grad-chart]")
    assert download.value.suggested_filename == f"job-{job.pk}-grad-chart.png"

    page.mouse.move(0, 0)  # no chart's hover toolbar in the picture
    page.evaluate("() => window.scrollTo(0, 0)")  # the sticky top bar where it belongs
    page.wait_for_timeout(300)
    page.wait_for_function("() => !window.chartsIdle || window.chartsIdle()")  # every chart drawn
    page.screenshot(path=str(shots / "job_health.png"), full_page=True)
    assert not errors, errors


def test_spikes_and_nonfinite_steps_are_marked_and_listed(stack, page):
    user, team = make_user("ivo")
    spec = engine.parse_spec(SPEC)
    job = Job.objects.create(team=team, owner=user, name="bumpy", spec=spec.to_dict(), queue="cpu",
                             status="running", total_steps=240, worker="test", device="cpu")
    events = []
    for step in range(1, 21):
        loss = 3.0 if step == 12 else 2.0 - step * 0.01
        events.append(("step", {"step": step, "loss": loss, "lr": 1e-3, "grad_norm": 0.8 if step % 5 else None,
                                "tokens_per_s": 1000.0, "clipped": step % 2 == 0, "spike": step == 12,
                                "update_ratio": 1e-3, "mfu": 0.004}))
        if step % 5 == 0:
            events.append(("nonfinite", {"step": step, "action": "skip",
                                         "message": f"step {step}: loss nan, gradient norm nan; step skipped"}))
    services.append_events(job.pk, events, step=20)

    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    log_in(page, stack, "ivo")
    page.goto(stack.url + f"/jobs/{job.pk}/")
    page.wait_for_function("() => document.querySelectorAll('#health-events li').length === 5")
    items = page.locator("#health-events li")
    assert items.first.text_content().startswith("skip") and "step 20: loss nan" in items.first.text_content()
    assert page.locator("#health-events li.ev-spike").text_content() == "spikestep 12: loss spike, loss 3.000"
    assert page.locator("#health-events-empty").is_hidden()
    page.wait_for_function("() => Number(document.querySelector('#loss-chart').dataset.points) === 20")
    marks = page.evaluate("() => document.querySelector('#loss-chart').data.slice(3).map((t) => [t.x, t.text])")
    assert marks[0] == [[12], ["loss spike at step 12"]]
    assert marks[1][0] == [5, 10, 15, 20] and "step skipped" in marks[1][1][0]
    assert page.locator("[data-tile=mfu]").text_content() == "0.400%"
    assert not errors, errors
