"""The serving load test as a job, with a real web server, a Celery worker and a serving process of
SmolLM2: a bad form is a 400 naming each field; the job meets the quota, the fit gate and the
rate limit as every kind does; run by the worker against the OpenAI-compatible endpoint, it
measures every (policy, rate) point, puts the serving process back to its own policy and revokes
the token it used."""
import json
import time
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from engine.tokenlab import SMOLLM2_NAME
from explorer.accounts.models import ApiToken
from explorer.jobs.models import Job
from explorer.scheduling.models import Worker

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def served(django_db_setup, django_db_blocker, tmp_path_factory, smollm2_models_dir):
    from engine.interop import pretrained
    from tests.stack import Stack

    why = pretrained.available(SMOLLM2_NAME)
    if why:
        pytest.skip(f"SmolLM2 is not installed here: {why}")
    with django_db_blocker.unblock():
        s = Stack(tmp_path_factory.mktemp("loadjob"))
        s.env["EXPLORER_SERVING_ENDPOINT"] = s.url + "/v1"  # where the worker's load test sends its requests
        try:
            s.start_web()
            s.start_worker()
            s.start_serving(SMOLLM2_NAME, EXPLORER_SERVING_KV_MB=64, EXPLORER_SERVING_MAX_BATCH=8)
            yield s
        finally:
            s.stop()


def submit(client, **payload):
    return client.post("/api/v1/serving/loadtest", json.dumps({"model": SMOLLM2_NAME, **payload}),
                       content_type="application/json")


def figures():
    from explorer.serving import bus

    return bus.unpack(bus.sync_client().get(bus.alive(SMOLLM2_NAME)))


def test_a_bad_load_test_is_refused_at_its_fields(served, alice_client):
    bad = submit(alice_client, model="gpt-9", rates="fast", requests=0, policies=["greedy"], max_tokens=4, seed="x")
    assert bad.status_code == 400
    errors = bad.json()["errors"]
    assert set(errors) == {"model", "rates", "requests", "policies", "max_tokens", "seed"}
    assert SMOLLM2_NAME in errors["model"]  # it says what is served
    too_many = submit(alice_client, rates=[1, 2, 3, 4, 5, 6], requests=100)
    assert too_many.status_code == 400 and "600 requests in all" in too_many.json()["errors"]["requests"]
    assert not Job.objects.filter(kind="serving-load").exists()


def test_the_load_test_meets_the_quota_the_fit_gate_and_the_rate_limit(served, alice, alice_client, settings):
    user, team = alice
    team.max_active_per_user = 1
    team.save()
    blocker = Job.objects.create(team=team, owner=user, spec={}, status=Job.Status.QUEUED)
    refused = submit(alice_client, requests=2)
    assert refused.status_code == 400 and "its limit per user is 1" in refused.json()["errors"]["quota"]
    blocker.delete()
    team.max_active_per_user = None
    team.save()

    deadline = time.monotonic() + 15  # (the database is emptied between tests: the worker's heartbeat registers again)
    while not (kept := [(w.pk, w.usable_bytes) for w in Worker.objects.all() if "cpu" in w.queues]):
        assert time.monotonic() < deadline, "the worker did not register"
        time.sleep(0.2)
    Worker.objects.filter(pk__in=[pk for pk, _ in kept]).update(usable_bytes=1024)  # too small for the client
    try:
        refused = submit(alice_client, requests=2)
        assert refused.status_code == 400 and "fits no cpu worker" in refused.json()["errors"]["model"]
    finally:
        for pk, usable in kept:
            Worker.objects.filter(pk=pk).update(usable_bytes=usable)
    assert not Job.objects.filter(kind="serving-load").exists()

    settings.RATELIMIT_PREFIX = f"test-loadjob-{uuid.uuid4().hex}"
    settings.RATELIMIT_JOBS, settings.RATELIMIT_JOBS_WINDOW_S = 1, 3600
    first = submit(alice_client, requests=2, rates=[2.0], policies=["continuous"], max_tokens=8)
    assert first.status_code == 201, first.content
    limited = submit(alice_client, requests=2)
    assert limited.status_code == 429 and int(limited["Retry-After"]) > 0
    assert wait(first.json()["id"]).status == "succeeded"  # (the worker runs it: two short requests)


def wait(job_id, timeout=600):
    deadline = time.monotonic() + timeout
    while (job := Job.objects.get(pk=job_id)).status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, "the load test did not finish"
        time.sleep(1)
    return job


def test_the_worker_measures_every_point_then_restores_the_policy(served, alice, alice_client):
    before = figures()["policy"]
    resp = submit(alice_client, rates=[1.0, 4.0], requests=4, max_tokens=16, seed=3)
    assert resp.status_code == 201, resp.content
    job_id = resp.json()["id"]
    job = wait(job_id)
    assert job.status == "succeeded", job.error
    points = [e.payload for e in job.events.filter(kind="load_point").order_by("seq")]
    assert [(p["policy"], p["rate"]) for p in points] == [("continuous", 1.0), ("continuous", 4.0),
                                                         ("static", 1.0), ("static", 4.0)]
    for p in points:
        s = p["summary"]
        assert s["requests"] == 4 and s["completed"] + s["refused"] + s["errors"] == 4 and s["completed"] >= 1
        assert s["output_tokens_per_s"] > 0 and s["ttft_s"]["p50"] <= s["e2e_s"]["p99"]
    assert job.events.filter(kind="progress").exists() and job.events.filter(kind="end").exists()
    deadline = time.monotonic() + 10
    while figures()["policy"] != before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert figures()["policy"] == before  # put back: the process serves as it did
    token = ApiToken.objects.get(name=f"load test #{job_id}")
    assert token.revoked_at is not None and token.revoked_at > timezone.now() - timedelta(minutes=15)
