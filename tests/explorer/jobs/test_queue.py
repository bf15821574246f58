"""The team queue: priorities, fair share, quotas, roles, places and start times, history search."""
import datetime

import pytest
from django.test import Client
from django.utils import timezone

from explorer.accounts.models import Membership
from explorer.jobs import queue as scheduling
from explorer.jobs import services
from explorer.jobs.models import Job
from explorer.training import jobs as training_jobs
from tests.conftest import make_user

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def team(alice):
    """alice (admin) with carol (member) and mia (maintainer) in alice's team."""
    user, team = alice
    carol, _ = make_user("carol")
    mia, _ = make_user("mia")
    Membership.objects.create(user=carol, team=team, role="member")
    Membership.objects.create(user=mia, team=team, role="maintainer")
    return {"team": team, "alice": user, "carol": carol, "mia": mia}


def client_for(user):
    c = Client()
    c.force_login(user)
    return c


def submit(user, team, spec, **kw):
    return training_jobs.create_job(user, team, spec, **kw)


def test_order_is_priority_then_fair_share_then_submission(team, tiny_spec):
    t, alice, carol = team["team"], team["alice"], team["carol"]
    a1 = submit(alice, t, tiny_spec, name="a1")
    a2 = submit(alice, t, tiny_spec, name="a2")
    c1 = submit(carol, t, tiny_spec, name="c1")
    low = submit(carol, t, tiny_spec, name="low", priority="low")
    high = submit(alice, t, tiny_spec, name="high", priority="high")  # alice is an admin
    order = lambda: [j.name for j in scheduling.ordered(Job.objects.filter(status="queued"))]  # noqa: E731
    assert order() == ["high", "a1", "a2", "c1", "low"]
    # alice now has a job running: carol's waiting job goes before alice's next (fair share)
    Job.objects.filter(pk=high.pk).update(status="running")
    assert order() == ["c1", "a1", "a2", "low"]
    plan = services.queue_positions(list(Job.objects.filter(status="queued")))
    assert [plan[j.pk]["position"] for j in (c1, a1, a2, low)] == [1, 2, 3, 4]
    starts = [plan[j.pk]["starts_in_s"] for j in (c1, a1, a2, low)]
    assert starts == sorted(starts) and starts[0] > 0  # one worker, busy with "high" first


def test_run_next_runs_the_best_job_and_waits_at_the_running_quota(team, tiny_spec):
    t, alice, carol = team["team"], team["alice"], team["carol"]
    first = submit(alice, t, tiny_spec, name="first")
    best = submit(carol, t, tiny_spec, name="best", priority="normal")
    scheduling.set_priority(team["mia"], best, "high")  # a maintainer raises carol's job
    assert scheduling.run_next("cpu", "test-worker") == "succeeded"
    assert Job.objects.get(pk=best.pk).status == "succeeded" and Job.objects.get(pk=first.pk).status == "queued"

    t.max_running_per_user = 1
    t.save()
    Job.objects.filter(pk=best.pk).update(status="running")  # carol busy
    other = submit(carol, t, tiny_spec, name="carol again", priority="normal")
    Job.objects.filter(pk=first.pk).update(status="running")  # alice busy too
    assert scheduling.run_next("cpu", "test-worker") is None  # both at their quota: nothing runs
    assert Job.objects.get(pk=other.pk).status == "queued"
    Job.objects.filter(pk=best.pk).update(status="succeeded")
    assert scheduling.run_next("cpu", "test-worker") == "succeeded"
    assert Job.objects.get(pk=other.pk).status == "succeeded"


def test_submission_quotas_refuse_with_a_message(team, tiny_spec):
    t, carol = team["team"], team["carol"]
    t.max_active_per_user = 1
    t.gpu_hours_per_day_per_user = 1.0
    t.save()
    submit(carol, t, tiny_spec)
    resp = client_for(carol).post("/api/v1/jobs", tiny_spec, content_type="application/json")
    assert resp.status_code == 400
    assert "1 active jobs" in resp.json()["errors"]["quota"] and "limit per user is 1" in resp.json()["errors"]["quota"]

    t.max_active_per_user = None
    t.save()
    start = timezone.now() - datetime.timedelta(hours=3)
    used = submit(carol, t, tiny_spec)
    Job.objects.filter(pk=used.pk).update(queue="gpu", status="succeeded", started_at=start,
                                          finished_at=start + datetime.timedelta(hours=2))
    gpu = {**tiny_spec, "train": {**tiny_spec["train"], "device": "cuda"}}
    resp = client_for(carol).post("/api/v1/jobs", gpu, content_type="application/json")
    assert resp.status_code == 400 and "used 2.0 GPU-hours" in resp.json()["errors"]["quota"]
    assert client_for(carol).post("/api/v1/jobs", tiny_spec, content_type="application/json").status_code == 201


def test_roles_decide_who_may_cancel_retry_and_reorder(team, tiny_spec):
    t, alice, carol, mia = team["team"], team["alice"], team["carol"], team["mia"]
    job = submit(alice, t, tiny_spec)
    carol_c, mia_c = client_for(carol), client_for(mia)
    resp = carol_c.post(f"/api/v1/jobs/{job.pk}/cancel")
    assert resp.status_code == 403 and "owner" in resp.json()["detail"]
    assert carol_c.post(f"/api/v1/jobs/{job.pk}/move-to-top").status_code == 403
    assert carol_c.post(f"/api/v1/jobs/{job.pk}/priority", {"priority": "low"}, content_type="application/json").status_code == 403
    own = submit(carol, t, tiny_spec)
    resp = carol_c.post(f"/api/v1/jobs/{own.pk}/priority", {"priority": "high"}, content_type="application/json")
    assert resp.status_code == 403 and "maintainers" in resp.json()["detail"]
    resp = carol_c.post(f"/api/v1/jobs/{own.pk}/priority", {"priority": "low"}, content_type="application/json")
    assert resp.status_code == 200 and resp.json()["priority"] == "low"
    assert carol_c.post(f"/api/v1/jobs/{own.pk}/priority", {"priority": "urgent"},
                        content_type="application/json").status_code == 400
    resp = client_for(carol).post("/api/v1/jobs", {**tiny_spec, "priority": "high"}, content_type="application/json")
    assert resp.status_code == 400 and "maintainers" in resp.json()["errors"]["priority"]

    resp = mia_c.post(f"/api/v1/jobs/{own.pk}/move-to-top")
    assert resp.status_code == 200 and resp.json()["position"] == 1
    assert mia_c.post(f"/api/v1/jobs/{job.pk}/cancel").status_code == 200  # maintainers cancel anyone's
    assert Job.objects.get(pk=job.pk).status == "cancelled"
    assert carol_c.post(f"/api/v1/jobs/{job.pk}/retry").status_code == 403
    assert mia_c.post(f"/api/v1/jobs/{job.pk}/retry").status_code == 200
    # the page's cancel form refuses the same way, with a message
    resp = carol_c.post(f"/jobs/{job.pk}/cancel/", follow=True)
    assert "owner" in resp.content.decode() and Job.objects.get(pk=job.pk).status == "queued"


def test_history_search_filters_and_pages(team, alice_client, tiny_spec):
    t, alice, carol = team["team"], team["alice"], team["carol"]
    for i in range(3):
        submit(alice, t, tiny_spec, name=f"copy run {i}")
    enc = {**tiny_spec, "model": {**tiny_spec["model"], "family": "encoder"}}
    enc_job = submit(carol, t, enc, name="bert-ish")
    old = submit(carol, t, tiny_spec, name="old one")
    Job.objects.filter(pk=old.pk).update(created_at=timezone.now() - datetime.timedelta(days=10))

    def names(**params):
        body = alice_client.get("/api/v1/jobs", params).json()
        return sorted(j["name"] for j in body["jobs"])

    assert names(owner="carol") == ["bert-ish", "old one"]
    assert names(family="encoder") == ["bert-ish"]
    assert names(q="copy run") == ["copy run 0", "copy run 1", "copy run 2"]
    assert names(q=f"#{enc_job.pk}") == ["bert-ish"]
    day = (timezone.now() - datetime.timedelta(days=10)).date().isoformat()
    assert names(since=day, until=day) == ["old one"]
    assert alice_client.get("/api/v1/jobs", {"since": "yesterday"}).status_code == 400
    page = alice_client.get("/queue/", {"owner": "carol", "family": "encoder"}).content.decode()
    assert "bert-ish" in page and "copy run" not in page


def test_team_page_admins_manage_members_and_quotas(team):
    t, alice, carol = team["team"], team["alice"], team["carol"]
    admin = client_for(alice)
    resp = admin.post("/team/", {"action": "quotas", "max_running": "2", "max_running_per_user": "1",
                                 "max_active_per_user": "", "gpu_hours_per_day": "8", "gpu_hours_per_day_per_user": ""})
    assert resp.status_code == 302
    t.refresh_from_db()
    assert (t.max_running, t.max_running_per_user, t.max_active_per_user, t.gpu_hours_per_day) == (2, 1, None, 8.0)
    dave, _ = make_user("dave")
    admin.post("/team/", {"action": "add", "username": "dave", "role": "maintainer"})
    assert Membership.objects.get(team=t, user=dave).role == "maintainer"
    resp = admin.post("/team/", {"action": "add", "username": "nobody", "role": "member"})
    assert "no user" in resp.content.decode()
    admin.post("/team/", {"action": "role", "user": carol.pk, "role": "maintainer"})
    assert Membership.objects.get(team=t, user=carol).role == "maintainer"
    resp = admin.post("/team/", {"action": "remove", "user": alice.pk}, follow=True)
    assert "last admin" in resp.content.decode() and Membership.objects.filter(team=t, user=alice).exists()

    member = client_for(carol)  # a maintainer, not an admin
    member.post("/team/", {"action": "quotas", "max_running": "99"})
    t.refresh_from_db()
    assert t.max_running == 2
    page = member.get("/team/").content.decode()
    assert "Save quotas" not in page and "carol" in page


def test_inference_jobs_count_against_the_active_jobs_quota(team, tiny_spec):
    t, carol = team["team"], team["carol"]
    tiny_spec["train"]["checkpoint_every"] = 10
    trained = submit(carol, t, tiny_spec)
    assert training_jobs.run_job(trained.pk, "w") == "succeeded"
    t.max_active_per_user = 1
    t.save()
    submit(carol, t, tiny_spec)  # one queued training job: at the limit
    resp = client_for(carol).post("/api/v1/inference", {"source": {"job": trained.pk}, "prompts": ["ab"]},
                                  content_type="application/json")
    assert resp.status_code == 400 and "limit per user is 1" in resp.json()["errors"]["quota"]


def test_broker_lengths_read_an_embedded_redis_on_a_unix_socket(team, tiny_spec, settings, tmp_path, caplog):
    """``make run``'s embedded Redis listens on a unix socket, which Celery spells ``redis+socket://``
    and redis-py ``unix://``: the reaper read the queue lengths with Celery's URL and logged a
    ValueError every 15 s."""
    import redis

    from config.settings.base import celery_url
    from explorer.embedded_redis import EmbeddedRedis

    server = EmbeddedRedis(tmp_path, persist=False)
    url = server.start()
    try:
        settings.REDIS_URL, settings.CELERY_BROKER_URL = url, celery_url(url)
        assert settings.CELERY_BROKER_URL.startswith("redis+socket://")
        submit(team["alice"], team["team"], tiny_spec, name="waiting")
        redis.Redis.from_url(url).rpush("cpu", "a message", "another")
        with caplog.at_level("WARNING", logger="explorer.scheduling"):
            assert scheduling._broker_lengths() == {"cpu": 2}
        assert not caplog.records
    finally:
        server.stop()


def test_first_pages_take_as_many_queries_for_many_jobs_as_for_few(team, tiny_spec):
    """The queue page and GET /api/v1/jobs place every waiting job (position, estimated start):
    a fixed number of queries however many jobs wait, run or finished, on however many routes
    (it was one query per route and per running job without an ETA)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    t, alice = team["team"], team["alice"]
    client = client_for(alice)
    template = submit(alice, t, tiny_spec, name="template")

    def add(n, status, route=""):
        rows = []
        for i in range(n):
            job = Job.objects.get(pk=template.pk)
            job.pk, job.name, job.status, job.route = None, f"{status} {i}", status, route
            job.queue_order = template.queue_order + len(rows) + 1
            rows.append(job)
        Job.objects.bulk_create(rows)

    def queries():
        counts = []
        for url in ("/api/v1/jobs?limit=50", "/queue/"):
            client.get(url)  # anything cached per process is cached
            with CaptureQueriesContext(connection) as ctx:
                assert client.get(url).status_code == 200
            counts.append(len(ctx.captured_queries))
        return counts

    add(1, "running")
    add(1, "succeeded")
    few = queries()
    add(200, "succeeded")
    add(5, "running")  # no ETA in their summaries: each used to read the queue's speed again
    add(3, "running", route="cpu.1g")
    add(20, "queued", route="cpu.4g")
    add(60, "queued")
    add(20, "queued", route="cpu.1g")  # the newest: the first pages show jobs of all three routes
    assert Job.objects.filter(status="queued").count() == 101
    page = client.get("/api/v1/jobs?limit=50").json()["jobs"]
    assert len(page) == 50 and all(j["status"] == "queued" and j["position"] >= 1 for j in page)
    assert queries() == few


def test_a_forecast_is_reused_until_the_queue_changes_shape(team, tiny_spec, monkeypatch):
    """Each page and job list asks for the queue's forecast; while nothing joins, leaves, starts,
    ends or moves, the last one is reused (one aggregate query instead of the whole estimate), and
    after any of those the next one is computed afresh."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    t, alice, carol = team["team"], team["alice"], team["carol"]
    first, second = submit(alice, t, tiny_spec), submit(carol, t, tiny_spec)
    routes = {scheduling.route_of(first)}

    def places():
        with CaptureQueriesContext(connection) as ctx:
            plan = scheduling.forecast(routes)
        return {pk: entry["position"] for pk, entry in plan.items()}, len(ctx.captured_queries)

    assert places()[0] == {first.pk: 1, second.pk: 2}
    assert places() == ({first.pk: 1, second.pk: 2}, 1)  # reused: only the shape was read
    scheduling.move_to_top(alice, second)
    assert places()[0] == {first.pk: 2, second.pk: 1}  # a reorder shows at once
    third = submit(alice, t, tiny_spec)
    assert places()[0] == {first.pk: 2, second.pk: 1, third.pk: 3}  # so does a submission
    services.cancel_job(first)
    assert places()[0] == {second.pk: 1, third.pk: 2}  # and a cancellation
    Job.objects.filter(pk=second.pk).update(status="running")
    assert places()[0] == {third.pk: 1}  # and a start
    assert places()[1] == 1
    monkeypatch.setattr(scheduling, "FORECAST_TTL_S", 0.0)  # running jobs' ETAs drift: recomputed after the TTL
    assert places()[1] > 1
