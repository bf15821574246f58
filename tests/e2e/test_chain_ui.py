"""A pretrain → SFT → DPO chain and a retried job, in headless Chromium through the real stack.

SFT on the synthetic sort instructions runs in the worker; a DPO job starts from its checkpoint
("Fine-tune from this"); the DPO page draws the reward margin and accuracy live, lists its
checkpoints and links back to its parent. Then a job cancelled mid-run is retried from its page:
it resumes from the checkpoint the cancel left and the loss chart ends with each step once.
Screenshots: docs/screenshots/dpo.png, docs/screenshots/checkpoints.png.
"""
import pytest

from explorer.jobs.models import Job
from explorer.training import checkpoints
from explorer.training import jobs as training_jobs
from tests.conftest import make_user
from tests.e2e.helpers import log_in

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

MODEL = {"n_layer": 2, "n_head": 2, "n_embd": 48, "block_size": 48}
DATA = {"source": "synthetic", "task": "sort", "task_length": 3}
TRAIN = {"batch_size": 16, "lr": 1e-2, "warmup_steps": 5, "eval_iters": 2, "attention_maps": False, "sample_tokens": 8}


def wait_status(page, status, timeout=180_000):
    page.wait_for_function("(s) => document.querySelector('#job-status').textContent.trim() === s", arg=status,
                           timeout=timeout)


def test_sft_then_dpo_chain_shows_reward_metrics_and_lineage(stack, page, shots):
    user, team = make_user("dora")
    sft = training_jobs.create_job(user, team, {"model": MODEL, "data": DATA, "train": {
        **TRAIN, "objective": "sft", "steps": 80, "eval_interval": 40, "checkpoint_every": 40}}, name="sort SFT")
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_viewport_size({"width": 1400, "height": 900})
    log_in(page, stack, "dora")
    page.goto(stack.url + f"/jobs/{sft.pk}/")
    wait_status(page, "succeeded")
    page.wait_for_function("() => document.querySelectorAll('#checkpoints-table tbody tr').length === 2")
    assert not page.locator("#dpo-card").count()  # an SFT job has no preference card

    # "Fine-tune from this": the composer with this architecture and the checkpoint chosen
    page.click("#finetune-link")
    page.wait_for_url("**/compose/**")
    assert page.locator("[name='train.init_from_job']").input_value() == str(sft.pk)
    assert page.locator("[name='model.n_embd']").input_value() == "48"

    dpo = training_jobs.create_job(user, team, {"model": MODEL, "data": DATA, "train": {
        **TRAIN, "objective": "dpo", "dpo_beta": 0.5, "steps": 80, "eval_interval": 20, "init_from_job": sft.pk}},
        name="sort DPO")
    assert (dpo.parent_id, dpo.parent_step) == (sft.pk, 80)
    page.goto(stack.url + f"/jobs/{dpo.pk}/")
    page.wait_for_function("() => window.jobPage.rewardPoints >= 10", timeout=120_000)
    wait_status(page, "succeeded")
    page.wait_for_function("() => window.jobPage.rewardPoints === 80")
    page.wait_for_function("() => window.chartsIdle()")  # drawn (charts draw in passes, at most ten a second)
    assert "held out (step 80)" in page.locator("#dpo-summary").text_content()
    assert page.locator("#meta-parent a").get_attribute("href") == f"/jobs/{sft.pk}/"
    events = [e.payload for e in Job.objects.get(pk=dpo.pk).events.filter(kind="eval").order_by("seq")]
    assert events[-1]["reward_accuracy"] > 0.5  # DPO ranks the correct answers above corrupted ones
    page.mouse.move(0, 0)
    page.evaluate("() => window.scrollTo(0, 0)")
    page.locator("#dpo-card").screenshot(path=str(shots / "dpo.png"))

    page.goto(stack.url + f"/jobs/{sft.pk}/")  # the parent lists its child
    assert page.locator("#children a").get_attribute("href") == f"/jobs/{dpo.pk}/"
    assert not errors, errors


# enough that the page can cancel well before the end (it does so at 150 steps, after a
# checkpoint), few enough that the retried attempt, trained while the page draws, is not minutes
RETRIED_STEPS = 1200


def test_a_cancelled_job_is_retried_from_its_page_and_resumes(stack, page, shots):
    user, team = make_user("rory")
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_viewport_size({"width": 1400, "height": 900})
    log_in(page, stack, "rory")  # first: the job must not finish before the page can cancel it
    job = training_jobs.create_job(user, team, {"model": MODEL, "data": {"source": "synthetic", "task": "copy", "task_length": 4},
                                           "train": {**TRAIN, "steps": RETRIED_STEPS, "eval_interval": 400, "checkpoint_every": 100}},
                              name="interrupted run")
    page.goto(stack.url + f"/jobs/{job.pk}/")
    page.wait_for_function("() => window.jobPage.points >= 150", timeout=120_000)
    assert page.locator("#retry-form").is_hidden()
    page.click("#cancel-btn")
    wait_status(page, "cancelled", timeout=60_000)
    page.wait_for_function("() => !document.querySelector('#retry-form').hidden")
    stopped = Job.objects.get(pk=job.pk).step
    assert checkpoints.checkpoints(job)[-1]["step"] == stopped
    page.wait_for_function("(s) => document.querySelector('#checkpoints-table tbody tr:last-child')?.dataset.step == s",
                           arg=str(stopped))

    page.click("#retry-btn")
    page.wait_for_function("() => document.querySelector('#meta-attempt') && !document.querySelector('#meta-attempt').hidden")
    assert page.locator("[data-meta=attempt]").text_content() == "2"
    wait_status(page, "succeeded", timeout=240_000)
    page.wait_for_function(f"() => window.jobPage.points === {RETRIED_STEPS}", timeout=30_000)  # received...
    page.wait_for_function(f"() => document.querySelector('#loss-chart').data[0].x.length >= {RETRIED_STEPS}",
                           timeout=10_000)  # ...and drawn (charts draw in passes, at most ten a second)
    xs = page.evaluate("() => document.querySelector('#loss-chart').data[0].x")
    assert xs == list(range(1, RETRIED_STEPS + 1))  # each step once: the abandoned steps past the checkpoint are gone

    page.reload()  # the replay leaves them out too
    page.wait_for_function(f"() => window.jobPage.points === {RETRIED_STEPS} && window.jobPage.finished", timeout=60_000)
    page.wait_for_function(f"() => document.querySelector('#loss-chart').dataset.points === '{RETRIED_STEPS}'")  # drawn
    page.mouse.move(0, 0)
    page.evaluate("() => window.scrollTo(0, 0)")
    page.wait_for_timeout(300)
    page.wait_for_function("() => !window.chartsIdle || window.chartsIdle()")  # every chart drawn
    page.screenshot(path=str(shots / "checkpoints.png"), full_page=True)
    assert not errors, errors
