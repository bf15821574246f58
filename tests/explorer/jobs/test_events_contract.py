"""The event contract seen from the app: served as JSON Schema through the API (login
required, in the OpenAPI schema), the recorder's and the pages' kind lists taken from it, and
every event real jobs leave in the log (training with experts and checkpoints, a retry, a
reprioritisation, inference with quantisation, a tokenizer job, numbers lost with a worker)
keeping it."""
import json
import re
from pathlib import Path

import pytest
from django.test import Client

from engine.config import events
from explorer.inference import jobs as inference_jobs
from explorer.jobs import queue as scheduling
from explorer.jobs import recorder, services
from explorer.jobs.models import Job, JobEvent
from explorer.tokenizers import jobs as tokenizer_jobs
from explorer.training import jobs as training_jobs
from explorer.training.checkpoints import retry_job

ROOT = Path(__file__).resolve().parents[3]
PAGES = ("job.js", "inference_job.js", "tokenizer_job.js", "chat.js", "serving_load_job.js")


@pytest.mark.django_db
def test_the_schema_is_served_to_signed_in_users_and_documented(alice_client):
    assert Client().get("/api/v1/events/schema").status_code == 401
    resp = alice_client.get("/api/v1/events/schema")
    assert resp.status_code == 200
    assert resp.json() == json.loads(json.dumps(events.event_schema()))
    openapi = alice_client.get("/api/v1/openapi.json").json()
    assert openapi["paths"]["/api/v1/events/schema"]["get"]["summary"] == "The events a job emits, as JSON Schema"


def test_the_recorder_takes_its_kinds_and_keys_from_the_contract():
    # a fine-tune's answers and its saved adapter are milestones too: the page's before/after table
    # and its downloads appear with everything before them in the log
    assert recorder.SAVED_AT_ONCE is events.SAVED_AT_ONCE == {"start", "checkpoint", "end", "answers", "adapter",
                                                              "load_point"}
    assert recorder.SUMMARY_KEYS is events.SUMMARY_KEYS
    assert set(recorder.SUMMARY_KEYS) <= set(events.KINDS)


def test_the_pages_take_their_kind_names_from_one_module_equal_to_the_schema():
    source = (ROOT / "static" / "js" / "events.js").read_text(encoding="utf-8")
    body = re.search(r"export const KIND = Object\.freeze\(\{(.*?)\}\);", source, re.DOTALL)[1]
    pairs = re.findall(r"^\s*(\w+): \"(\w+)\",", body, re.MULTILINE)
    assert all(name == value for name, value in pairs)
    assert [value for _, value in pairs] == list(events.event_schema()["x-kinds"])
    kinds = "|".join(events.KINDS)
    for page in PAGES:
        js = (ROOT / "static" / "js" / page).read_text(encoding="utf-8")
        assert 'import { KIND } from "./events.js";' in js, page
        literal = re.findall(rf'(?:case |kind === |kind: )"({kinds})"', js)
        assert not literal, f"{page} names event kinds {literal} without KIND"
        assert re.findall(r"KIND\.(\w+)", js), page
        assert set(re.findall(r"KIND\.(\w+)", js)) <= set(events.KINDS), page


def _problems(job_ids):
    rows = JobEvent.objects.filter(job_id__in=job_ids).order_by("job_id", "seq")
    messages = [row.as_message() for row in rows]
    return {m["kind"] for m in messages}, [(m["kind"], p) for m in messages for p in events.validate_message(m)]


@pytest.mark.django_db(transaction=True)  # the heartbeat thread reads the job
def test_every_event_real_jobs_log_keeps_the_contract(alice, alice_client, tiny_spec, settings):
    user, team = alice
    tiny_spec["model"] |= {"n_expert": 2, "top_k": 1}
    tiny_spec["train"] |= {"steps": 20, "checkpoint_every": 10}
    trained = training_jobs.create_job(user, team, tiny_spec, name="moe-copy")
    assert training_jobs.run_job(trained.pk, "test-worker") == "succeeded"

    # a queued job reprioritised, cancelled and retried; numbers a dead worker sent, logged as lost
    other = training_jobs.create_job(user, team, tiny_spec, name="second")
    scheduling.set_priority(user, other, "low")
    services.cancel_job(other)
    retry_job(Job.objects.get(pk=other.pk))
    import redis

    last = Job.objects.get(pk=other.pk).last_seq
    redis.Redis.from_url(settings.REDIS_URL).set(recorder.sent_key(other.pk), last + 2, ex=60)
    assert recorder.fill_unsaved(other.pk, "a test's lost numbers") == 2

    resp = alice_client.post("/api/v1/inference", json.dumps(
        {"source": {"job": trained.pk, "step": 20}, "prompts": ["abcd>", "ab>"], "max_new_tokens": 4,
         "compare_cache": True, "quantization": ["int8_weight"], "group_size": 8}), content_type="application/json")
    assert resp.status_code == 201, resp.content
    inference = resp.json()["id"]
    assert inference_jobs.run_inference_job(inference, "test-worker") == "succeeded"

    settings.TOKENIZER_SYNC_MAX_BYTES = 100  # a job, not an answer in the request
    resp = alice_client.post("/api/v1/tokenizers", json.dumps(
        {"name": "tiny-bpe", "kind": "bpe", "vocab_size": 300, "corpus": "text",
         "text": "the cat sat on the mat, the dog sat on the log. " * 20}), content_type="application/json")
    assert resp.status_code == 202, resp.content
    tokenizer = resp.json()["job"]["id"]
    assert tokenizer_jobs.run_tokenizer_job(tokenizer, "test-worker") == "succeeded"

    kinds, problems = _problems([trained.pk, other.pk, inference, tokenizer])
    assert kinds == {"status", "start", "step", "health", "moe", "eval", "attention", "routing", "checkpoint",
                     "end", "queue", "lost", "progress", "generation", "quantization"}
    assert not problems, problems[:10]
