"""The REST API: validation messages, team isolation, tokens, CSRF, schema."""
import json

import pytest
from django.test import Client

from explorer.accounts.models import ApiToken
from explorer.jobs import services
from explorer.jobs.models import Job
from explorer.training import jobs as training_jobs

pytestmark = pytest.mark.django_db


def post_json(client, url, payload, **extra):
    return client.post(url, data=json.dumps(payload), content_type="application/json", **extra)


def test_create_job_returns_201_and_queues(alice_client, alice, tiny_spec):
    resp = post_json(alice_client, "/api/v1/jobs", {"name": "copy", **tiny_spec})
    assert resp.status_code == 201, resp.content
    body = resp.json()
    job = Job.objects.get(pk=body["id"])
    assert body["status"] == "queued" and job.team == alice[1]
    assert body["position"] == 1 and body["queue"] == "cpu"
    assert body["params"] > 0 and body["total_steps"] == 30
    assert job.spec["model"]["vocab_size"] > 0  # resolved from the data by the engine
    assert list(job.events.values_list("kind", flat=True)) == ["status"]


@pytest.mark.parametrize(
    "patch, field, words",
    [
        ({"model": {"n_head": 3, "n_embd": 16}}, "model.n_head", ["n_head", "3", "16"]),
        ({"model": {"n_layer": 0}}, "model.n_layer", ["n_layer", "0"]),
        ({"model": {"n_embd": -8}}, "model.n_embd", ["n_embd", "-8"]),
        ({"model": {"norm": "rms"}}, "model.norm", ["rms", "layernorm", "rmsnorm"]),
        ({"model": {"block_size": 8}, "data": {"task_length": 6}}, "model.block_size", ["block_size"]),
        ({"train": {"batch_size": 0}}, "train.batch_size", ["batch_size"]),
        ({"data": {"source": "text"}}, "data.dataset", ["upload"]),
    ],
)
def test_bad_spec_is_a_400_naming_the_field(alice_client, tiny_spec, patch, field, words):
    for section, values in patch.items():
        tiny_spec[section].update(values)
    resp = post_json(alice_client, "/api/v1/jobs", tiny_spec)
    assert resp.status_code == 400, resp.content
    errors = resp.json()["errors"]
    assert field in errors, errors
    for word in words:
        assert word in errors[field], errors[field]
    assert Job.objects.count() == 0  # never queued


def test_memory_budget_refuses_with_numbers(alice_client, tiny_spec, settings):
    settings.WORKER_MEMORY_BUDGET_MB = {"cpu": 1, "gpu": 1}
    tiny_spec["model"].update(n_embd=256, n_head=4, n_layer=4)
    resp = post_json(alice_client, "/api/v1/jobs", tiny_spec)
    assert resp.status_code == 400
    message = resp.json()["errors"]["train.batch_size"]
    assert "exceeds the cpu workers' budget of 1.0 MiB" in message and "MiB" in message.split("memory")[1]


def test_user_cannot_pass_a_file_path(alice_client, tiny_spec):
    tiny_spec["data"] = {"source": "text", "path": "/etc/passwd"}
    resp = post_json(alice_client, "/api/v1/jobs", tiny_spec)
    assert resp.status_code == 400
    assert "data.dataset" in resp.json()["errors"]


def test_other_team_gets_404_everywhere(alice, bob, tiny_spec):
    job = training_jobs.create_job(alice[0], alice[1], tiny_spec)
    c = Client()
    c.force_login(bob[0])
    for url in (f"/api/v1/jobs/{job.pk}", f"/api/v1/jobs/{job.pk}/events"):
        assert c.get(url).status_code == 404
    assert c.post(f"/api/v1/jobs/{job.pk}/cancel").status_code == 404
    assert c.get(f"/jobs/{job.pk}/").status_code == 404
    assert c.get("/api/v1/jobs").json()["count"] == 0
    assert post_json(c, "/api/v1/jobs", {**tiny_spec, "team": alice[1].slug}).status_code == 404
    job.refresh_from_db()
    assert job.status == "queued"


def test_anonymous_is_refused(alice, tiny_spec):
    job = training_jobs.create_job(alice[0], alice[1], tiny_spec)
    c = Client()
    assert c.get("/api/v1/jobs").status_code == 401
    assert c.get(f"/api/v1/jobs/{job.pk}").status_code == 401
    assert c.get(f"/jobs/{job.pk}/").status_code == 302  # to the login page


def test_list_events_and_cancel(alice_client, alice, tiny_spec):
    job = training_jobs.create_job(alice[0], alice[1], tiny_spec)
    listing = alice_client.get("/api/v1/jobs").json()
    assert [j["id"] for j in listing["jobs"]] == [job.pk]
    events = alice_client.get(f"/api/v1/jobs/{job.pk}/events?after=0").json()
    assert [e["seq"] for e in events["events"]] == [1]
    resp = alice_client.post(f"/api/v1/jobs/{job.pk}/cancel")
    assert resp.status_code == 200 and resp.json()["status"] == "cancelled"
    assert alice_client.post(f"/api/v1/jobs/{job.pk}/cancel").status_code == 409
    assert alice_client.get(f"/api/v1/jobs/{job.pk}/events?after=1").json()["events"][0]["data"]["status"] == "cancelled"


def test_api_token_auth_and_revocation(alice, tiny_spec):
    token, raw = ApiToken.issue(alice[0], "script")
    assert raw not in ApiToken.objects.values_list("key_hash", flat=True)  # stored hashed
    c = Client()
    auth = {"HTTP_AUTHORIZATION": f"Bearer {raw}"}
    resp = post_json(c, "/api/v1/jobs", tiny_spec, **auth)  # no CSRF needed with a token
    assert resp.status_code == 201
    assert c.get("/api/v1/jobs", **auth).json()["count"] == 1
    token.revoked_at = token.created_at
    token.save()
    assert c.get("/api/v1/jobs", **auth).status_code == 401


def test_session_post_requires_csrf(alice, tiny_spec):
    c = Client(enforce_csrf_checks=True)
    c.force_login(alice[0])
    assert post_json(c, "/api/v1/jobs", tiny_spec).status_code == 403
    assert Job.objects.count() == 0


def test_estimate_reports_params_and_errors(alice_client, tiny_spec):
    ok = post_json(alice_client, "/api/v1/estimate", tiny_spec).json()
    assert ok["valid"] and ok["analysis"]["params"]["total"] > 0 and ok["errors"] == {}
    tiny_spec["model"]["n_head"] = 3
    bad = post_json(alice_client, "/api/v1/estimate", tiny_spec).json()
    assert not bad["valid"] and "model.n_head" in bad["errors"]


def test_openapi_schema_lists_the_endpoints(alice_client):
    schema = alice_client.get("/api/v1/openapi.json").json()
    paths = schema["paths"]
    for path in ("/api/v1/jobs", "/api/v1/jobs/{job_id}", "/api/v1/jobs/{job_id}/events", "/api/v1/jobs/{job_id}/cancel"):
        assert path in paths, sorted(paths)


def test_upload_dataset_checks_utf8_and_size(alice_client, settings):
    from django.core.files.uploadedfile import SimpleUploadedFile

    bad = alice_client.post("/api/v1/datasets", {"file": SimpleUploadedFile("x.txt", b"ok \xff\xfe bad")})
    assert bad.status_code == 400 and "not UTF-8" in bad.json()["detail"]
    settings.UPLOAD_MAX_BYTES = 10
    big = alice_client.post("/api/v1/datasets", {"file": SimpleUploadedFile("big.txt", b"a" * 11)})
    assert big.status_code == 400 and "limit" in big.json()["detail"]
    settings.UPLOAD_MAX_BYTES = 10_000
    good = alice_client.post("/api/v1/datasets", {"file": SimpleUploadedFile("t.txt", "héllo wörld\n".encode() * 100)})
    assert good.status_code == 201 and good.json()["n_chars"] == 1200


def test_a_negative_page_offset_is_a_400(alice_client):
    # found by tests/explorer/test_api_fuzz.py: it was a 500 ("Negative indexing is not supported")
    resp = alice_client.get("/api/v1/jobs?offset=-5&limit=-3")
    assert resp.status_code == 400 and "offset" in resp.json()["detail"]


def test_nul_characters_never_reach_the_database(alice, alice_client, tiny_spec):
    # found by tests/explorer/test_api_fuzz.py on PostgreSQL, whose text and jsonb refuse U+0000
    assert alice_client.get("/api/v1/jobs?team=a%00b").status_code == 404
    resp = alice_client.post("/api/v1/jobs", data=json.dumps({**tiny_spec, "name": "nul\x00name"}),
                             content_type="application/json")
    assert resp.status_code == 201, resp.content
    assert Job.objects.get(pk=resp.json()["id"]).name == "nul\ufffdname"

    job = Job.objects.get(pk=resp.json()["id"])
    services.append_events(job.pk, [("eval", {"sample": {"completion": "a\x00b"}})])
    assert job.events.get(kind="eval").payload["sample"]["completion"] == "a\ufffdb"


def test_a_token_scoped_to_a_team_sees_and_submits_to_that_team_only(alice, tiny_spec):
    from explorer.accounts.models import Membership, Team

    user, own = alice
    other = Team.objects.create(name="Lab", slug="lab")
    Membership.objects.create(user=user, team=other, role="member")
    lab_job = training_jobs.create_job(user, other, tiny_spec, name="lab job")
    own_job = training_jobs.create_job(user, own, tiny_spec, name="own job")
    _, raw = ApiToken.issue(user, "ci", team=own)
    c = Client(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert [j["name"] for j in c.get("/api/v1/jobs").json()["jobs"]] == ["own job"]
    assert c.get(f"/api/v1/jobs/{lab_job.pk}").status_code == 404  # as if it did not exist
    assert c.get(f"/api/v1/jobs/{own_job.pk}").status_code == 200
    resp = c.post("/api/v1/jobs", {**tiny_spec, "team": "lab"}, content_type="application/json")
    assert resp.status_code == 404
    assert [t["slug"] for t in c.get("/api/v1/me").json()["teams"]] == [own.slug]
    # an unscoped (older) token still sees both; a scoped one stops working when its user leaves the team
    _, legacy = ApiToken.issue(user, "old")
    assert Client(HTTP_AUTHORIZATION=f"Bearer {legacy}").get(f"/api/v1/jobs/{lab_job.pk}").status_code == 200
    _, lab_token = ApiToken.issue(user, "lab", team=other)
    Membership.objects.filter(user=user, team=other).delete()
    assert Client(HTTP_AUTHORIZATION=f"Bearer {lab_token}").get("/api/v1/jobs").status_code == 401


def test_the_account_page_issues_a_token_for_the_chosen_team(alice_client, alice):
    resp = alice_client.post("/account/", {"name": "laptop", "team": alice[1].pk})
    assert resp.status_code == 200 and "lae_" in resp.content.decode()
    assert ApiToken.objects.get(name="laptop").team == alice[1]


def test_the_job_list_answers_in_its_schema(alice_client, alice, bob, tiny_spec):
    """GET /api/v1/jobs writes its JSON itself (not through ninja's validation): every job in it, queued,
    running or finished, of this kind or another, is exactly what the documented JobList schema gives."""
    from explorer.jobs.api import JobList

    user, team = alice
    queued = training_jobs.create_job(user, team, tiny_spec, name="waiting")
    training_jobs.create_job(user, team, tiny_spec, name="second in line")
    done = training_jobs.create_job(user, team, tiny_spec, name="done")
    Job.objects.filter(pk=done.pk).update(status="succeeded", summary={"loss": 1.25, "eta": 0}, step=3, total_steps=3)
    training_jobs.create_job(bob[0], bob[1], tiny_spec, name="not alice's")
    resp = alice_client.get("/api/v1/jobs")
    assert resp.status_code == 200 and resp["Content-Type"] == "application/json"
    body = resp.json()
    assert JobList.model_validate(body).model_dump(mode="json") == body
    assert [j["name"] for j in body["jobs"]] == ["done", "second in line", "waiting"] and body["count"] == 3
    by_name = {j["name"]: j for j in body["jobs"]}
    assert by_name["waiting"]["position"] == 1 and by_name["second in line"]["position"] == 2
    assert by_name["done"]["position"] is None and by_name["done"]["summary"]["loss"] == 1.25
    assert by_name["waiting"]["id"] == queued.pk and by_name["waiting"]["team"] == {"id": team.pk, "name": team.name}
