"""A person in headless Chromium: log in, compose a tiny model, watch it train, cancel another.

Screenshots of the compose, job and queue pages go to docs/screenshots/.
"""
import re

import pytest

from explorer.jobs.models import Job
from tests.conftest import make_user
from tests.e2e.helpers import log_in

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

TINY = {
    "model.n_layer": "2", "model.n_head": "2", "model.n_embd": "32", "model.block_size": "24",
    "data.source": "synthetic", "data.task": "copy", "data.task_length": "6",
    "train.steps": "400", "train.batch_size": "16", "train.eval_interval": "25", "train.warmup_steps": "10",
}


def fill(page, values):
    for name, value in values.items():
        field = page.locator(f'[name="{name}"]')
        if field.evaluate("el => el.tagName") == "SELECT":
            field.select_option(value)
        else:
            field.fill(value)


def settled(page):
    """Wait out the composer's debounce and its estimate request."""
    page.wait_for_timeout(500)
    page.wait_for_function("() => document.getElementById('est-state').dataset.state !== 'busy'")


def test_compose_launch_watch_and_cancel(stack, page, shots):
    user, team = make_user("erin")
    log_in(page, stack, "erin")

    # The live cost panel follows the form: 1 layer fewer means fewer parameters.
    fill(page, TINY)
    settled(page)
    total = page.locator('[data-out="params.note"]')  # the exact count, "12,345 parameters · ..."
    before = total.text_content()
    assert re.search(r"\d", before), before
    fill(page, {"model.n_layer": "1"})
    settled(page)
    assert total.text_content() != before
    fill(page, {"model.n_layer": "2"})
    settled(page)
    assert total.text_content() == before

    # A bad value is shown at its field before anything is queued.
    fill(page, {"model.n_head": "3"})
    page.wait_for_selector("text=must divide")
    fill(page, {"model.n_head": "2"})
    page.locator('[name="name"]').fill("browser copy task")
    settled(page)
    page.evaluate("window.scrollTo(0, 0)")  # a full-page shot scrolled to a field draws the sticky header mid-page
    page.screenshot(path=str(shots / "compose.png"), full_page=True)

    page.click("#launch")
    page.wait_for_url(re.compile(r"/jobs/\d+/"))
    job = Job.objects.get(name="browser copy task")
    page.wait_for_function("() => Number(document.querySelector('#loss-chart').dataset.points) >= 5", timeout=90_000)

    # Reload mid-run: the whole curve comes back from the log and keeps growing.
    points_before = int(page.locator("#loss-chart").get_attribute("data-points"))
    page.reload()
    page.wait_for_function("(n) => Number(document.querySelector('#loss-chart').dataset.points) >= n", arg=points_before,
                           timeout=30_000)
    page.wait_for_function("() => document.querySelectorAll('#samples li').length >= 1", timeout=90_000)
    page.screenshot(path=str(shots / "job.png"), full_page=True)

    # A second, long job: cancel it from its page.
    page.goto(stack.url + "/compose/?" + "&".join(f"{k}={v}" for k, v in {**TINY, "train.steps": "50000"}.items()))
    page.locator('[name="name"]').fill("to cancel")
    page.click("#launch")
    page.wait_for_url(re.compile(r"/jobs/\d+/"))
    page.goto(stack.url + "/queue/")
    page.wait_for_selector("text=to cancel")
    page.screenshot(path=str(shots / "queue.png"), full_page=True)
    page.click("text=to cancel")
    page.click("#cancel-btn")
    page.wait_for_function("() => document.querySelector('#job-status').textContent.trim() === 'cancelled'", timeout=60_000)
    assert Job.objects.get(name="to cancel").status == "cancelled"

    # The first job trains to the end while we watch.
    page.goto(stack.url + f"/jobs/{job.pk}/")
    page.wait_for_function("() => document.querySelector('#job-status').textContent.trim() === 'succeeded'", timeout=120_000)
    job.refresh_from_db()
    assert job.step == 400
    # charts draw in passes (at most ten a second): the last point follows the status shortly
    page.wait_for_function("() => document.querySelector('#loss-chart').dataset.points === '400'", timeout=5_000)
