"""GET /api/v1/jobs/{id}/export: a trained job's history as CSV and JSON, scoped to its team."""
import csv
import io

import pytest
from django.test import Client

from explorer.jobs.api import EXPORT_EVAL_COLUMNS, EXPORT_STEP_COLUMNS
from explorer.training import jobs as training_jobs

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def trained(alice, tiny_spec):
    tiny_spec["train"]["attention_maps"] = True
    job = training_jobs.create_job(alice[0], alice[1], tiny_spec, name="export me")
    assert training_jobs.run_job(job.pk, "test-worker") == "succeeded"
    job.refresh_from_db()
    return job


def get(client, job, **params):
    return client.get(f"/api/v1/jobs/{job.pk}/export", params)


def test_csv_has_one_row_per_step_with_evals_merged(alice_client, trained):
    resp = get(alice_client, trained, format="csv")
    assert resp.status_code == 200, resp.content
    assert resp["Content-Type"].startswith("text/csv")
    assert resp["Content-Disposition"] == f'attachment; filename="job-{trained.pk}.csv"'
    rows = list(csv.DictReader(io.StringIO(resp.content.decode())))
    assert list(rows[0]) == list(EXPORT_STEP_COLUMNS + EXPORT_EVAL_COLUMNS)
    assert [int(r["step"]) for r in rows] == list(range(1, 31))

    steps = {e.payload["step"]: e.payload for e in trained.events.filter(kind="step")}
    evals = {e.payload["step"]: e.payload for e in trained.events.filter(kind="eval")}
    for row in rows:
        event = steps[int(row["step"])]
        assert float(row["loss"]) == pytest.approx(event["loss"])
        assert float(row["lr"]) == pytest.approx(event["lr"])
        assert float(row["grad_norm"]) == pytest.approx(event["grad_norm"])
        assert row["clipped"] == str(int(event["clipped"])) and row["spike"] == str(int(event["spike"]))
        assert row["mfu"] == ("" if event["mfu"] is None else row["mfu"])
        if int(row["step"]) in evals:
            assert float(row["val_loss"]) == pytest.approx(evals[int(row["step"])]["val_loss"])
            assert row["train_loss"] != ""
        else:
            assert row["val_loss"] == row["train_loss"] == row["accuracy"] == ""
    assert sorted(evals) == [10, 20, 30]


def test_json_has_every_event_but_attention_by_default(alice_client, trained):
    resp = get(alice_client, trained, format="json")
    assert resp.status_code == 200
    assert resp["Content-Disposition"] == f'attachment; filename="job-{trained.pk}.json"'
    body = resp.json()
    assert body["job"]["id"] == trained.pk and body["job"]["name"] == "export me"
    kinds = [e["kind"] for e in body["events"]]
    assert "attention" not in kinds
    assert kinds.count("step") == 30 and kinds.count("eval") == 3 and kinds.count("health") == 3
    assert [e["seq"] for e in body["events"]] == sorted(e["seq"] for e in body["events"])
    health = next(e for e in body["events"] if e["kind"] == "health")["data"]
    assert {"layer", "name", "grad_norm", "weight_norm", "update_ratio"} <= set(health["layers"][0])

    everything = get(alice_client, trained, format="json", exclude="").json()
    assert [e["kind"] for e in everything["events"]].count("attention") == 3
    assert len(everything["events"]) == trained.last_seq


def test_unknown_format_is_a_400(alice_client, trained):
    resp = get(alice_client, trained, format="xlsx")
    assert resp.status_code == 400 and "csv" in resp.json()["detail"]


def test_other_team_gets_404_and_anonymous_401(bob, trained):
    c = Client()
    assert get(c, trained, format="csv").status_code == 401
    c.force_login(bob[0])
    for fmt in ("csv", "json"):
        assert get(c, trained, format=fmt).status_code == 404
