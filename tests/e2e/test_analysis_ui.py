"""The analysis report in headless Chromium: the composer's live report follows the form, its
state survives a reload (the URL is the analysis), and the compare page lays two presets side by
side. Screenshots: docs/screenshots/composer_report.png and compare.png (1400 px wide, full page)."""
import re

import pytest

from tests.conftest import make_user
from tests.e2e.helpers import log_in

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def report_ready(page, state_id="report-state"):
    page.wait_for_timeout(400)  # the debounce
    page.wait_for_function(f"() => document.getElementById('{state_id}').dataset.state === 'ok'", timeout=60_000)


def test_composer_report_follows_the_form_and_the_url(web, page, shots):
    make_user("fiona")
    page.set_viewport_size({"width": 1400, "height": 900})
    log_in(page, web, "fiona")
    report_ready(page)
    panel = page.locator("#report-panel")
    before = int(panel.get_attribute("data-params"))
    assert before > 0
    for chart in ("#chart-params", "#chart-memory", "#chart-kv", "#chart-attn"):
        assert page.locator(chart).get_attribute("data-drawn") == "1", chart
    assert page.locator("#fit-table tbody tr").count() >= 7
    # the existing composer still works alongside
    assert page.locator("#est-state").get_attribute("data-state") in ("ok", "invalid")

    page.fill('[name="model.n_layer"]', "6")
    page.wait_for_function(f"() => Number(document.getElementById('report-panel').dataset.params) > {before}",
                           timeout=30_000)
    report_ready(page)
    after = int(panel.get_attribute("data-params"))

    # settings go into the URL and come back on reload, with the architecture
    page.select_option('[data-setting="dtype"]', "fp32")
    page.select_option('[data-setting="hardware"]', "a100-80gb")
    page.wait_for_function("() => location.search.includes('s.dtype=fp32') && location.search.includes('s.hardware=a100-80gb')")
    report_ready(page)
    assert "model.n_layer=6" in page.url
    page.reload()
    report_ready(page)
    assert page.locator('[data-setting="dtype"]').input_value() == "fp32"
    assert page.locator('[data-setting="hardware"]').input_value() == "a100-80gb"
    assert page.locator('[name="model.n_layer"]').input_value() == "6"
    assert int(page.locator("#report-panel").get_attribute("data-params")) == after
    assert page.locator('#fit-table tr.selected[data-device="a100-80gb"]').count() == 1
    # "Compare…" carries this architecture and the settings to the compare page
    page.click("#report-compare")
    page.wait_for_url(re.compile(r"/compare/\?a=link"))
    report_ready(page, "compare-state")
    assert "n_layer" in page.locator('.slot[data-slot="a"] textarea').input_value()
    assert page.locator('[data-setting="dtype"]').input_value() == "fp32"

    # a real model, for the screenshot: Llama 2 7B on an H100, bf16, batch 8 at 4096 tokens
    page.goto(web.url + "/compose/?preset=llama-2-7b&s.hardware=h100-sxm&s.batch_size=8")
    report_ready(page)
    assert int(page.locator("#report-panel").get_attribute("data-params")) == 6_738_415_616
    page.wait_for_timeout(300)
    page.screenshot(path=str(shots / "composer_report.png"), full_page=True)


def test_compare_two_presets(web, page, shots):
    make_user("gus")
    page.set_viewport_size({"width": 1400, "height": 900})
    log_in(page, web, "gus")
    page.click("nav >> text=Compare")
    page.wait_for_url(re.compile(r"/compare/"))
    page.goto(web.url + "/compare/?a=preset:llama-2-7b&b=preset:mistral-7b&s.hardware=h100-sxm&s.seq_len=4096")
    report_ready(page, "compare-state")
    assert page.locator("#compare-root").get_attribute("data-models") == "2"
    differing = page.locator("#diff-table tbody tr.differs")
    assert differing.count() >= 3  # attention, window, n_kv_head, block_size, ffn_hidden...
    differing_fields = differing.locator("th").all_text_contents()
    assert "attention" in differing_fields and "n_kv_head" in differing_fields
    assert page.locator("#diff-table tbody tr", has_text="window").locator("td.muted").count() == 1  # n/a without sliding
    for chart in ("#chart-params", "#chart-memory", "#chart-kv", "#chart-attn"):
        assert page.locator(chart).get_attribute("data-drawn") == "1", chart
    assert page.locator("#chart-kv").get_attribute("data-traces") == "2"
    assert page.locator("#fit-per-model table").count() == 2

    # a third model pasted as a composer link; the URL keeps it across a reload
    page.click("#compare-add")
    third = page.locator('.slot[data-slot="c"]')
    third.locator("select").select_option("custom")
    third.locator("textarea").fill("/compose/?preset=llama-2-7b&model.n_kv_head=8&model.n_layer=16")
    third.locator("textarea").dispatch_event("change")
    page.wait_for_function("() => location.search.includes('c=link')")
    report_ready(page, "compare-state")
    assert page.locator("#compare-root").get_attribute("data-models") == "3"
    page.reload()
    report_ready(page, "compare-state")
    assert page.locator("#compare-root").get_attribute("data-models") == "3"
    assert page.locator('[data-setting="hardware"]').input_value() == "h100-sxm"
    assert "n_layer" in " ".join(page.locator("#diff-table tbody tr.differs th").all_text_contents())
    page.wait_for_timeout(300)
    page.screenshot(path=str(shots / "compare.png"), full_page=True)
