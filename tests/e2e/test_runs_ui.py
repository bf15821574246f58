"""The run comparison page in headless Chromium.

Two tiny copy-task jobs with different learning rates train in-process (``training_jobs.run_job``,
the worker's own function); the page overlays their curves, highlights ``train.lr`` in the
settings diff and shows each run's best value and its step. A third job, "running", gets new
events while the page is open and its curve grows. The queue page's checkboxes lead here.
Screenshot: docs/screenshots/runs.png (1400 px wide).
"""
import copy
import re

import pytest

from explorer.jobs import services
from explorer.jobs.models import Job
from explorer.training import jobs as training_jobs
from tests.conftest import TINY_SPEC, make_user
from tests.e2e.helpers import log_in

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def trained(user, team, name, lr, steps=150):
    """A copy-task run long enough (about a second) for accuracy to climb to 100%."""
    spec = copy.deepcopy(TINY_SPEC)
    spec["model"].update(n_layer=2, n_embd=32, block_size=16)
    spec["train"].update(steps=steps, lr=lr, batch_size=16, eval_interval=15, warmup_steps=5)
    job = training_jobs.create_job(user, team, spec, name=name)
    assert training_jobs.run_job(job.pk, "test-worker") == Job.Status.SUCCEEDED
    return Job.objects.get(pk=job.pk)


def points(page, metric):
    return int(page.locator(f"#runs-chart-{metric}").get_attribute("data-points") or 0)


def test_runs_overlay_diff_best_and_live(web, page, shots):
    user, team = make_user("rita")
    otto, otto_team = make_user("otto")
    slow = trained(user, team, "copy lr 3e-3", 3e-3)
    fast = trained(user, team, "copy lr 1e-2", 1e-2)
    foreign = training_jobs.create_job(otto, otto_team, TINY_SPEC, name="otto's private run")

    page.set_viewport_size({"width": 1400, "height": 900})
    log_in(page, web, "rita")
    page.goto(f"{web.url}/runs/?jobs={slow.pk},{fast.pk},{foreign.pk}")

    # one trace per job on every chart, once both logs are in
    page.wait_for_function("() => document.querySelector('#runs-chart-train_loss').dataset.traces === '2'")
    page.wait_for_function("() => document.querySelector('#runs-chart-val_loss').dataset.traces === '2'")
    assert points(page, "train_loss") == 2 * 150
    assert page.locator("#runs-chart-train_loss .scatterlayer .trace").count() == 4  # raw (faint) + smoothed each
    # another team's job: a "not found" slot, nothing of it on the page
    assert page.locator(f'.run-chip[data-job-id="{foreign.pk}"]').inner_text().endswith("not found")
    assert "otto's private run" not in page.content()

    # the diff shows only what differs: the learning rate
    differs = page.locator("#diff-table tr.differs th").all_inner_texts()
    assert "train.lr" in differs and "model.n_layer" not in differs
    page.check("#diff-all")
    assert page.locator('#diff-table tr[data-field="model.n_layer"]').count() == 1
    page.uncheck("#diff-all")

    # best values: the minimum of each run's logged losses, at its step; the top accuracy
    acc = page.locator(f'#runs-best tr[data-job-id="{fast.pk}"] td[data-metric="accuracy"]')
    assert float(acc.get_attribute("data-best")) == max(e.payload["accuracy"] for e in fast.events.filter(kind="eval"))
    for job in (slow, fast):
        cell = page.locator(f'#runs-best tr[data-job-id="{job.pk}"] td[data-metric="val_loss"]')
        vals = [e.payload for e in job.events.filter(kind="eval")]
        best = min(vals, key=lambda p: p["val_loss"])
        assert float(cell.get_attribute("data-best")) == pytest.approx(best["val_loss"])
        assert int(cell.get_attribute("data-best-step")) == best["step"]
        assert "@" in cell.inner_text() and "last" in cell.inner_text()

    # the state is in the URL: smoothing and metrics survive a reload
    page.fill("#runs-smoothing", "0.8")
    page.uncheck('#runs-metrics input[value="lr"]')
    page.wait_for_url(re.compile(r"smooth=0\.80"))
    assert "metrics=train_loss,val_loss,accuracy,tokens_per_s" in page.url
    page.reload()
    page.wait_for_function("() => document.querySelector('#runs-chart-train_loss').dataset.traces === '2'")
    assert page.locator("#runs-chart-lr").count() == 0 and page.input_value("#runs-smoothing") == "0.8"

    # the step cursor shows each run's value at that step
    page.locator("#runs-cursor").fill("30")
    assert page.locator("#runs-cursor-out").inner_text() == "30"
    assert "step=30" in page.url
    at30 = page.locator(f'#runs-at-step tr[data-job-id="{fast.pk}"] td[data-metric="train_loss"]').inner_text()
    logged = fast.events.get(kind="step", payload__step=30).payload["loss"]
    assert at30.startswith(f"{logged:.4g}"[:5]) and "smoothed" in at30

    page.goto(f"{web.url}/runs/?jobs={slow.pk},{fast.pk}&smooth=0.6")
    page.wait_for_function("() => document.querySelector('#runs-chart-accuracy').dataset.traces === '2'")
    page.wait_for_timeout(300)
    page.screenshot(path=str(shots / "runs.png"), full_page=True)


def test_a_running_job_keeps_growing(web, page):
    user, team = make_user("lena")
    done = trained(user, team, "finished", 3e-3, steps=20)
    live = training_jobs.create_job(user, team, TINY_SPEC, name="still running")
    services.record_status(live.pk, Job.Status.RUNNING, worker="w")
    services.append_events(live.pk, [("step", {"step": s, "loss": 3.0 - s / 10, "lr": 1e-3, "tokens_per_s": 900.0}) for s in (1, 2, 3)], step=3)

    log_in(page, web, "lena")
    page.goto(f"{web.url}/runs/?jobs={done.pk},{live.pk}")
    page.wait_for_function("() => document.querySelector('#runs-chart-train_loss').dataset.points === '23'")
    services.append_events(live.pk, [("step", {"step": s, "loss": 3.0 - s / 10, "lr": 1e-3, "tokens_per_s": 900.0}) for s in (4, 5)], step=5)
    page.wait_for_function("() => document.querySelector('#runs-chart-train_loss').dataset.points === '25'", timeout=15_000)
    drawn = page.evaluate("() => document.querySelector('#runs-chart-train_loss').data.map((t) => t.x.length)")
    assert sorted(drawn) == [5, 5, 20, 20]  # raw and smoothed traces of each run, as Plotly holds them
    services.record_status(live.pk, Job.Status.SUCCEEDED, expect=[Job.Status.RUNNING])
    page.wait_for_function(f"() => document.querySelector('.run-chip[data-job-id=\"{live.pk}\"] .badge').textContent === 'succeeded'",
                           timeout=15_000)
    assert page.locator("#runs-live").inner_text() == "all finished"


def test_queue_checkboxes_open_the_comparison(web, page):
    user, team = make_user("quinn")
    a = training_jobs.create_job(user, team, TINY_SPEC, name="first")
    b = training_jobs.create_job(user, team, TINY_SPEC, name="second")
    log_in(page, web, "quinn")
    page.goto(f"{web.url}/queue/")
    button = page.locator("#compare-selected")
    assert button.is_disabled()
    page.check(f'tr[data-job-id="{a.pk}"] input[data-role="pick"]')
    assert button.is_disabled()
    page.check(f'tr[data-job-id="{b.pk}"] input[data-role="pick"]')
    button.click()
    page.wait_for_url(re.compile(r"/runs/\?jobs="))
    assert sorted(re.search(r"jobs=([\d,]+)", page.url).group(1).split(",")) == sorted([str(a.pk), str(b.pk)])
    assert page.locator(".run-chip").count() == 2
