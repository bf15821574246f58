"""The tokenization lab in headless Chromium: train a small BPE on pasted text, compare it with the
byte tokenizer (chips, hover highlight, the cost sentence), replay its merges, and page through the
chips of a 100k-character text. Screenshot: docs/screenshots/tokenlab.png (1400 px wide)."""
import re

import pytest

from tests.conftest import make_user
from tests.e2e.helpers import log_in

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

CORPUS = """English: Good morning! The quick brown fox jumps over the lazy dog, and the dog sleeps on.
Français : Bonjour à tous, ça va ? Le renard brun saute par-dessus le chien paresseux.
Deutsch: Grüße aus München. Der schnelle braune Fuchs springt über den faulen Hund.
Español: ¡Buenos días! El rápido zorro marrón salta sobre el perro perezoso.
""" * 12


def lab_ready(page):
    page.wait_for_timeout(400)  # the debounce
    page.wait_for_function("() => document.getElementById('lab-state').dataset.state === 'ok'", timeout=60_000)


def test_train_compare_and_replay(web, page, shots):
    make_user("tina")
    page.set_viewport_size({"width": 1400, "height": 900})
    log_in(page, web, "tina")
    page.click("nav >> text=Tokenizers")
    page.wait_for_url(re.compile(r"/tokenizers/"))
    lab_ready(page)  # the default comparison of a sample with the built-ins
    assert page.locator("#lab-results .lab-col").count() == 2

    # train a small byte-level BPE on pasted multilingual text
    page.fill("#t-name", "multi-bpe")
    page.select_option("#t-kind", "bpe")
    page.fill("#t-vocab", "500")
    page.select_option("#t-corpus", "text")
    page.fill("#t-text", CORPUS)
    page.click("#train-btn")
    row = page.locator('#tok-table tbody tr[data-status="ready"]', has_text="multi-bpe")
    row.wait_for()
    assert "bpe" in row.inner_text()
    tok_id = row.get_attribute("data-tokenizer")
    assert page.locator("#train-note").inner_text().startswith("Trained multi-bpe")

    # compare it with the byte tokenizer on pasted text
    page.goto(web.url + f"/tokenizers/?t={tok_id},byte")
    page.fill("#lab-text", "Bonjour à tous, the quick brown fox! Grüße aus München.\n¡Buenos días! ✓")
    lab_ready(page)
    cols = page.locator("#lab-results .lab-col")
    assert cols.count() == 2
    mine, byte = (int(cols.nth(i).get_attribute("data-tokens")) for i in range(2))
    assert 0 < mine < byte
    assert cols.nth(0).locator(".chip").count() == mine and cols.nth(1).locator(".chip").count() == byte
    assert cols.nth(1).locator(".chip-group").count() >= 4  # à, ü, ß, ¡, í, ✓: bytes of one character, boxed
    sentence = page.locator("#lab-cost").inner_text()
    assert re.search(r"costs \d+\.\d× more tokens with byte than with multi-bpe", sentence), sentence
    assert page.locator('#lab-metrics tr[data-metric="n_tokens"] td').all_inner_texts() == [str(mine), str(byte)]
    assert "id " in cols.nth(0).locator(".chip").first.get_attribute("title")

    # hovering a chip marks its characters in the source and the same characters in the other column
    cols.nth(0).locator(".chip").nth(2).hover()
    assert page.locator("#lab-source mark").count() == 1
    assert page.locator("#lab-results .chip.lit").count() >= 2

    # merge replay: fewer tokens as merges are added
    page.locator("#replay-body").wait_for()
    page.wait_for_function("() => /merges · \\d+ tokens/.test(document.getElementById('replay-label').textContent)")
    slider = page.locator("#replay-slider")
    slider.evaluate("(s) => { s.value = 0; s.dispatchEvent(new Event('input')); }")
    first = int(re.search(r"(\d[\d,]*) tokens", page.locator("#replay-label").inner_text()).group(1).replace(",", ""))
    slider.evaluate("(s) => { s.value = s.max; s.dispatchEvent(new Event('input')); }")
    last = int(re.search(r"(\d[\d,]*) tokens", page.locator("#replay-label").inner_text()).group(1).replace(",", ""))
    assert last < first
    slider.evaluate("(s) => { s.value = Math.round(s.max / 4); s.dispatchEvent(new Event('input')); }")

    # the composer link names the tokenizer by id, never by path
    href = page.locator(f'#tok-table tr[data-tokenizer="{tok_id}"] a', has_text="Train a model").get_attribute("href")
    assert href == f"/compose/?data.tokenizer=file&data.tokenizer_id={tok_id}"

    # a third column: BERT's WordPiece marks what it cannot encode
    page.click("#lab-add")
    page.locator('#lab-picks select[data-slot="2"]').select_option("minilm-wordpiece")
    page.wait_for_function("() => document.querySelectorAll('#lab-results .lab-col').length === 3")
    lab_ready(page)
    assert page.locator('#lab-results .lab-col[data-tokenizer="minilm-wordpiece"] .chip.unk').count() >= 1
    assert "t=" + tok_id + ",byte,minilm-wordpiece" in page.url

    # for the picture: the page at the top, one token of A highlighted (an event, so nothing scrolls)
    page.mouse.move(0, 0)
    page.evaluate("window.scrollTo(0, 0)")
    page.locator("#lab-results .lab-col").nth(0).locator(".chip").nth(4).dispatch_event("mouseover")
    page.wait_for_timeout(300)
    page.screenshot(path=str(shots / "tokenlab.png"), full_page=True)


def test_long_text_is_paged(web, page):
    make_user("leo")
    log_in(page, web, "leo")
    page.goto(web.url + "/tokenizers/?t=char,byte")
    lab_ready(page)
    page.locator("#lab-text").evaluate("(t) => { t.value = 'Lorem ipsum dolor sit amet. '.repeat(4000).slice(0, 100000); t.dispatchEvent(new Event('input')); }")
    page.wait_for_function("() => window.tokenLab.columns.length === 2 && window.tokenLab.columns[0].tokens === 100000",
                           timeout=60_000)
    lab_ready(page)
    col = page.locator("#lab-results .lab-col").first
    assert col.get_attribute("data-rendered") == "2000"  # not 100,000 elements at once
    assert page.locator("#lab-results .chip").count() == 4000
    col.locator(".more-chips").click()
    assert col.get_attribute("data-rendered") == "4000"
    assert "characters → 100,000 / 100,000 tokens" in page.locator("#lab-state").inner_text()


def test_large_corpus_trains_as_a_job_with_progress(stack, page):
    """2 MB of the standard library is over the in-request limit: a CPU job trains it, and the
    team's table shows its progress live, then the ready tokenizer."""
    make_user("tara")
    log_in(page, stack, "tara")
    page.goto(stack.url + "/tokenizers/")
    lab_ready(page)
    page.fill("#t-name", "stdlib-bpe")
    page.select_option("#t-corpus", "stdlib")
    page.select_option("#t-bytes", "2000000")
    page.fill("#t-vocab", "2000")
    page.click("#train-btn")
    page.wait_for_function("() => /Training as job #\\d+/.test(document.getElementById('train-note').textContent)")
    row = page.locator("#tok-table tbody tr", has_text="stdlib-bpe")
    assert row.get_attribute("data-status") == "training"
    assert row.locator("a", has_text="Job").get_attribute("href").startswith("/jobs/")
    page.locator('#tok-table tbody tr[data-status="ready"]', has_text="stdlib-bpe").wait_for(timeout=120_000)
    from explorer.jobs.models import Job
    from explorer.tokenizers.models import Tokenizer

    t = Tokenizer.objects.get(name="stdlib-bpe")
    assert t.status == "ready" and t.vocab_size == 2000 and t.job.status == "succeeded"
    assert "progress" in set(t.job.events.values_list("kind", flat=True))
    assert Job.objects.get(pk=t.job_id).kind == "tokenizer"
    # its job page: the progress bar full, a link into the lab
    page.goto(stack.url + f"/jobs/{t.job_id}/")
    page.wait_for_function("() => document.getElementById('job-status').dataset.status === 'succeeded'")
    assert page.locator("#prog-pct").inner_text() == "100%"
    assert page.locator("#open-in-lab").get_attribute("href") == f"/tokenizers/?t={t.pk},byte"
