"""The run comparison page (/runs/?jobs=...): login, team isolation, the 2–8 limit."""
import json

import pytest

from explorer.training import jobs as training_jobs

pytestmark = pytest.mark.django_db


def page_data(resp):
    html = resp.content.decode()
    start = html.index('<script id="runs-data" type="application/json">') + len('<script id="runs-data" type="application/json">')
    return json.loads(html[start:html.index("</script>", start)])


def test_runs_requires_login(client):
    resp = client.get("/runs/?jobs=1,2")
    assert resp.status_code == 302 and resp["Location"].startswith("/login/")


def test_runs_passes_the_users_jobs_with_their_public_specs(alice_client, alice, tiny_spec):
    a = training_jobs.create_job(alice[0], alice[1], tiny_spec, name="lr small")
    tiny_spec["train"]["lr"] = 0.01
    b = training_jobs.create_job(alice[0], alice[1], tiny_spec, name="lr big")
    resp = alice_client.get(f"/runs/?jobs={a.pk},{b.pk}")
    assert resp.status_code == 200
    jobs = page_data(resp)["jobs"]
    assert [j["id"] for j in jobs] == [a.pk, b.pk] and all(j["found"] for j in jobs)
    assert jobs[1]["name"] == "lr big" and jobs[1]["config"]["train.lr"] == 0.01
    assert "model.n_layer" in jobs[0]["applies"]
    assert not any(k.endswith("_path") or k == "data.tokenizer_file" for j in jobs for k in j["config"])
    assert 'id="runs-note"' not in resp.content.decode()


def test_another_teams_job_is_not_found_and_leaks_nothing(alice_client, alice, bob, tiny_spec):
    mine = training_jobs.create_job(alice[0], alice[1], tiny_spec, name="alice run")
    theirs = training_jobs.create_job(bob[0], bob[1], tiny_spec, name="bob secret run")
    resp = alice_client.get(f"/runs/?jobs={mine.pk},{theirs.pk}")
    html = resp.content.decode()
    slots = page_data(resp)["jobs"]
    assert slots[1] == {"id": theirs.pk, "found": False}
    assert "bob secret run" not in html and "not found" in html
    # and its events stay closed to alice's session
    assert alice_client.get(f"/api/v1/jobs/{theirs.pk}/events").status_code == 404


@pytest.mark.parametrize("ids, message", [("", "Pick 2 to 8"), ("7", "Pick 2 to 8"), ("1,2,3,4,5,6,7,8,9", "At most 8")])
def test_two_to_eight_jobs(alice_client, ids, message):
    resp = alice_client.get(f"/runs/?jobs={ids}")
    assert resp.status_code == 200 and message in resp.content.decode()
    assert len(page_data(resp)["jobs"]) == min(8, len([i for i in ids.split(",") if i]))


def test_queue_page_offers_compare_selected(alice_client):
    html = alice_client.get("/queue/").content.decode()
    assert 'id="compare-selected"' in html and 'data-runs-url="/runs/"' in html
