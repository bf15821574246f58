"""Inference and tokenizer jobs in the queue's order: one order per route for every kind of job
(priority, moved-to-top, fair share, submission), the running-jobs quotas, and the queue's
controls (priority, move to the top, cancel) through the API, with the real engine."""
import json

import pytest
from django.test import Client

from explorer.accounts.models import Membership
from explorer.inference import jobs as inference_jobs
from explorer.jobs import queue as scheduling
from explorer.jobs import services, tasks
from explorer.jobs.models import Job
from explorer.tokenizers import lab
from explorer.tokenizers.models import Tokenizer
from explorer.training import jobs as training_jobs
from tests.conftest import make_user

pytestmark = pytest.mark.django_db(transaction=True)  # the heartbeat thread reads the job

CORPUS = "the cat sat on the mat. the dog sat on the log. " * 40


@pytest.fixture
def team(alice):
    """alice (admin of her team) and mia, a maintainer of it."""
    user, team = alice
    mia, _ = make_user("mia")
    Membership.objects.create(user=mia, team=team, role="maintainer")
    return {"team": team, "alice": user, "mia": mia}


@pytest.fixture
def trained(team, tiny_spec):
    tiny_spec["train"]["checkpoint_every"] = 30
    job = training_jobs.create_job(team["alice"], team["team"], tiny_spec, name="copy-model")
    assert training_jobs.run_job(job.pk, "test-worker") == "succeeded"
    return job


def infer(team, trained, name, priority="normal"):
    payload = {"source": {"job": trained.pk}, "prompts": ["ab"], "max_new_tokens": 2, "compare_cache": False}
    return inference_jobs.create_inference_job(team["alice"], team["team"], payload, name=name, priority=priority)


def tokenizer_job(team, name, priority="normal"):
    _, job = lab.train(team["alice"], team["team"], {"name": name, "kind": "bpe", "vocab_size": 300,
                                                     "corpus": "text", "text": CORPUS}, priority=priority)
    assert job is not None and job.kind == "tokenizer"
    return job


def client_for(user):
    c = Client()
    c.force_login(user)
    return c


def post(client, url, payload=None):
    return client.post(url, json.dumps(payload or {}), content_type="application/json")


def queued_names():
    return [j.name for j in scheduling.ordered(Job.objects.filter(status="queued"))]


def run_next_name():
    """Run the best job of the CPU queue; the name of the job that ran."""
    before = set(Job.objects.exclude(status="queued").values_list("pk", flat=True))
    assert scheduling.run_next("cpu", "test-worker") == "succeeded"
    (ran,) = Job.objects.exclude(status="queued").exclude(pk__in=before)
    return ran.name


def test_inference_jobs_run_by_priority_then_submission(team, trained):
    low = infer(team, trained, "low", priority="low")
    first = infer(team, trained, "first")
    second = infer(team, trained, "second")
    high = infer(team, trained, "high", priority="high")  # alice administers her team
    assert queued_names() == ["high", "first", "second", "low"]
    places = services.queue_positions([low, first, second, high])
    assert [places[j.pk]["position"] for j in (high, first, second, low)] == [1, 2, 3, 4]
    assert [run_next_name() for _ in range(4)] == ["high", "first", "second", "low"]
    assert scheduling.run_next("cpu", "test-worker") is None  # none left


def test_every_kind_shares_the_queues_order(team, trained, tiny_spec, settings):
    settings.TOKENIZER_SYNC_MAX_BYTES = 100  # every corpus trains as a job
    tokenizer_job(team, "tokenizer (low)", priority="low")
    training_jobs.create_job(team["alice"], team["team"], tiny_spec, name="training")
    infer(team, trained, "inference (high)", priority="high")
    infer(team, trained, "inference")
    order = ["inference (high)", "training", "inference", "Tokenizer tokenizer (low)"]
    assert queued_names() == order
    assert [run_next_name() for _ in range(4)] == order
    assert Tokenizer.objects.get(name="tokenizer (low)").status == "ready"


def test_a_message_of_any_kind_runs_the_best_job_of_its_route(team, trained, tiny_spec, settings, monkeypatch):
    """The task named for a low-priority tokenizer job runs the high-priority inference job, then
    sends a message for the jobs still waiting (``kick``)."""
    settings.TOKENIZER_SYNC_MAX_BYTES = 100
    sent = []

    class Result:
        id = "task-1"

    monkeypatch.setattr(tasks.run_job, "apply_async", lambda args, queue: sent.append((args, queue)) or Result())
    monkeypatch.setattr(scheduling, "_broker_lengths", lambda: {"cpu": 0})  # nothing waiting in the broker
    low = tokenizer_job(team, "slow", priority="low")
    high = infer(team, trained, "urgent", priority="high")
    assert tasks.train_tokenizer(low.pk) == "succeeded"
    assert Job.objects.get(pk=high.pk).status == "succeeded" and Job.objects.get(pk=low.pk).status == "queued"
    assert [queue for _, queue in sent] == ["cpu"]  # a message for the tokenizer job left waiting
    assert tasks.run_inference(high.pk) == "succeeded"  # the inference job's message runs what is left
    assert Job.objects.get(pk=low.pk).status == "succeeded"
    assert Tokenizer.objects.get(job=low).status == "ready"


def test_inference_jobs_wait_at_the_running_quota(team, trained):
    t = team["team"]
    t.max_running = 1
    t.save()
    job = infer(team, trained, "waits")
    Job.objects.filter(pk=trained.pk).update(status="running")  # the team's one running job
    assert scheduling.run_next("cpu", "test-worker") is None
    assert Job.objects.get(pk=job.pk).status == "queued"
    Job.objects.filter(pk=trained.pk).update(status="succeeded")
    assert scheduling.run_next("cpu", "test-worker") == "succeeded"


def test_priority_move_to_top_and_cancel_work_for_inference_jobs(team, trained):
    a, b, c, d = (infer(team, trained, name) for name in "abcd")
    owner, maintainer = client_for(team["alice"]), client_for(team["mia"])
    resp = post(maintainer, f"/api/v1/jobs/{c.pk}/move-to-top")
    assert resp.status_code == 200 and resp.json()["position"] == 1
    resp = post(owner, f"/api/v1/jobs/{a.pk}/priority", {"priority": "low"})
    assert resp.status_code == 200 and resp.json()["priority"] == "low" and resp.json()["position"] == 4
    assert post(owner, f"/api/v1/jobs/{b.pk}/cancel").status_code == 200
    assert Job.objects.get(pk=b.pk).status == "cancelled"
    assert queued_names() == ["c", "d", "a"]
    assert [run_next_name() for _ in range(3)] == ["c", "d", "a"]
    assert Job.objects.get(pk=b.pk).status == "cancelled"  # never ran
    # only queued jobs are reordered
    assert post(maintainer, f"/api/v1/jobs/{c.pk}/move-to-top").status_code == 409


def test_priority_move_to_top_and_cancel_work_for_tokenizer_jobs(team, settings):
    settings.TOKENIZER_SYNC_MAX_BYTES = 100
    a, b, c = (tokenizer_job(team, name) for name in "abc")
    owner, maintainer = client_for(team["alice"]), client_for(team["mia"])
    assert post(owner, f"/api/v1/jobs/{a.pk}/cancel").status_code == 200
    resp = post(owner, f"/api/v1/jobs/{b.pk}/priority", {"priority": "high"})
    assert resp.status_code == 200 and resp.json()["position"] == 1
    resp = post(maintainer, f"/api/v1/jobs/{c.pk}/move-to-top")  # raised to the highest waiting priority
    assert resp.status_code == 200 and resp.json()["position"] == 1 and resp.json()["priority"] == "high"
    assert [run_next_name() for _ in range(2)] == ["Tokenizer c", "Tokenizer b"]
    assert scheduling.run_next("cpu", "test-worker") is None
    rows = {t.name: t for t in Tokenizer.objects.filter(team=team["team"])}
    assert rows["b"].status == rows["c"].status == "ready"
    assert lab.tokenizer_to_dict(rows["a"])["status"] == "failed"  # cancelled before it ran


def test_a_member_cannot_queue_a_high_priority_inference_or_tokenizer_job(team, trained, settings):
    settings.TOKENIZER_SYNC_MAX_BYTES = 100
    carol, _ = make_user("carol")
    Membership.objects.create(user=carol, team=team["team"], role="member")
    payload = {"source": {"job": trained.pk}, "prompts": ["ab"]}
    with pytest.raises(services.SpecError) as refused:
        inference_jobs.create_inference_job(carol, team["team"], payload, priority="high")
    assert "maintainers" in refused.value.errors["priority"]
    with pytest.raises(lab.LabError) as refused:
        lab.train(carol, team["team"], {"kind": "bpe", "vocab_size": 300, "corpus": "text", "text": CORPUS},
                  priority="high")
    assert refused.value.field == "priority"
    assert not Job.objects.filter(owner=carol).exists()


def test_the_api_takes_a_priority_for_inference_and_tokenizer_jobs(team, trained):
    member, _ = make_user("max")
    Membership.objects.create(user=member, team=team["team"], role="member")
    client = client_for(member)
    inference = {"source": {"job": trained.pk}, "prompts": ["ab"], "max_new_tokens": 2, "compare_cache": False}
    resp = post(client, "/api/v1/inference", inference | {"priority": "low"})
    assert resp.status_code == 201 and resp.json()["priority"] == "low"
    resp = post(client, "/api/v1/inference", inference | {"priority": "high"})  # a member may not
    assert resp.status_code == 400 and "priority" in resp.json()["errors"]
    tokenizer = {"name": "slow", "kind": "bpe", "vocab_size": 300, "corpus": "text", "text": CORPUS}
    resp = post(client, "/api/v1/tokenizers", tokenizer | {"priority": "low"})
    if resp.status_code == 202:  # a corpus large enough to run as a job
        assert resp.json()["job"]["priority"] == "low"
    resp = post(client_for(team["mia"]), "/api/v1/inference", inference | {"priority": "high"})
    assert resp.status_code == 201 and resp.json()["priority"] == "high"
