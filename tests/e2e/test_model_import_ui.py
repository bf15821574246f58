"""A large model upload through the real stack (web server and Celery worker) in headless
Chromium: above MODEL_UPLOAD_SYNC_MAX_BYTES (set to 1 KiB here) the upload becomes a model-import
job, the browser lands on its page, the worker converts and checks it, and the model is then on
the models page. Screenshot: model_import.png (var/ unless `make screenshots`)."""
import os
import re

import pytest

from explorer.jobs.models import Job
from explorer.pretrained.models import UploadedModel
from tests.conftest import make_user
from tests.e2e.helpers import log_in
from tests.engine.interop.byo_fixtures import tiny_model_dir, zip_dir

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module", autouse=True)
def large_uploads():
    """Before the stack starts: its processes read the setting from the environment."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EXPLORER_MODEL_UPLOAD_SYNC_MAX_BYTES", "1024")
        yield


def test_a_large_upload_is_imported_by_the_worker(large_uploads, stack, page, shots, tmp_path):
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    make_user("otto")
    llama = zip_dir(tiny_model_dir(tmp_path / "llama", "llama"), tmp_path / "big-llama.zip")

    page.set_viewport_size({"width": 1400, "height": 900})
    log_in(page, stack, "otto")
    page.goto(stack.url + "/models/")
    page.fill("input[name=name]", "Big Llama")
    page.set_input_files("input[type=file]", str(llama))
    page.click("button[type=submit]:has-text('Upload and check')")
    page.wait_for_url(re.compile(r"/jobs/\d+/$"))
    job_id = int(re.search(r"/jobs/(\d+)/", page.url).group(1))
    assert Job.objects.get(pk=job_id).kind == "model-import"
    page.wait_for_selector("#open-in-lab:not([hidden])", timeout=120_000)  # the worker succeeded
    job = Job.objects.get(pk=job_id)
    assert job.status == "succeeded", job.error + stack.log("worker")
    assert page.locator("#prog-pct").inner_text() == "100%"
    page.mouse.move(0, 0)
    page.screenshot(path=str(shots / "model_import.png"), full_page=True)

    page.click("#open-in-lab")
    page.wait_for_url(re.compile(r"/models/$"))
    model = UploadedModel.objects.get(name="Big Llama")
    assert model.import_job_id == job_id
    assert page.locator(".models-table tbody tr", has_text="Big Llama").count() == 1
    assert errors == []
    assert os.environ["EXPLORER_MODEL_UPLOAD_SYNC_MAX_BYTES"] == "1024"
