"""Bring your own model in headless Chromium (web server only): the models page refuses a file that
is not a model at its field, takes two tiny random-weight transformers models (a Qwen2 with a chat
template, a Llama), lists them with their logits check, and "Run inference" opens the inference
form with the model chosen; its tokenizer encodes in the tokenization lab. Screenshot: models.png."""
import re

import pytest

from explorer.pretrained.models import UploadedModel
from tests.conftest import make_user
from tests.e2e.helpers import log_in
from tests.engine.interop.byo_fixtures import tiny_model_dir, zip_dir

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_a_team_uploads_models_and_runs_one(web, page, shots, tmp_path):
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    user, team = make_user("uma")
    qwen = zip_dir(tiny_model_dir(tmp_path / "qwen", "qwen2", chat=True), tmp_path / "tiny-qwen2-chat.zip")
    llama = zip_dir(tiny_model_dir(tmp_path / "llama", "llama", seed=1), tmp_path / "tiny-llama.zip")
    junk = tmp_path / "weights.zip"
    junk.write_bytes(b"these are not weights\n" * 20)

    page.set_viewport_size({"width": 1400, "height": 900})
    log_in(page, web, "uma")
    page.click("nav >> text=Real LLMs")  # the menu of the real model's pages
    page.click("nav >> text=Models")
    page.wait_for_url(re.compile(r"/models/$"))
    assert page.locator("text=No models yet").is_visible()

    page.set_input_files("input[type=file]", str(junk))
    page.click("button[type=submit]:has-text('Upload and check')")
    error = page.locator('[data-errors-for="file"]')
    error.wait_for()
    assert "neither a GGUF file" in error.inner_text()
    assert not UploadedModel.objects.exists()

    for path, name in ((llama, "Tiny Llama"), (qwen, "Tiny Qwen2 chat")):
        page.fill("input[name=name]", name)
        page.set_input_files("input[type=file]", str(path))
        page.click("button[type=submit]:has-text('Upload and check')")
        page.wait_for_selector(f"text=Uploaded {name}")
    assert list(UploadedModel.objects.filter(team=team).values_list("name", flat=True)) == ["Tiny Qwen2 chat",
                                                                                             "Tiny Llama"]
    rows = page.locator(".models-table tbody tr")
    assert rows.count() == 2 and "chat" in rows.first.inner_text() and "qwen2" in rows.first.inner_text()
    page.mouse.move(0, 0)
    page.wait_for_timeout(200)
    page.screenshot(path=str(shots / "models.png"), full_page=True)

    qwen_model = UploadedModel.objects.get(name="Tiny Qwen2 chat")
    rows.first.locator("text=Run inference").click()
    page.wait_for_url(re.compile(rf"/inference/\?model={qwen_model.key}$"))
    assert page.locator("#f-source").input_value() == f"pretrained:{qwen_model.key}"

    # its tokenizer in the tokenization lab, beside the byte-level one
    page.goto(web.url + f"/tokenizers/?t={qwen_model.key},byte")
    page.fill("#lab-text", "Hello world, hello model! def square(x): return x * x")
    page.wait_for_timeout(400)  # the debounce
    page.wait_for_function("() => document.getElementById('lab-state').dataset.state === 'ok'", timeout=60_000)
    cols = page.locator("#lab-results .lab-col")
    assert cols.count() == 2 and cols.nth(0).locator(".chip").count() > 0
    assert "Tiny Qwen2 chat" in cols.nth(0).inner_text()
    assert errors == []
