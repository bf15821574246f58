"""The queue page's paging (explorer/jobs/views.py) and the job list's count (GET /api/v1/jobs):
past the end, empty, and a constant number of queries."""
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from explorer.accounts.models import Membership
from explorer.jobs.models import Job


def make_jobs(user, team, n, **fields):
    Job.objects.bulk_create([Job(team=team, owner=user, name=f"job {i:03d}", kind="train",
                                 status=Job.Status.SUCCEEDED, spec={"model": {}, "train": {}}, **fields)
                             for i in range(n)])


@pytest.mark.django_db
@pytest.mark.parametrize("number, shown", [(None, 1), ("2", 2), ("3", 3), ("99", 3), ("0", 1), ("x", 1)])
def test_queue_pages_count_and_clamp(alice_client, alice, number, shown):
    user, team = alice
    make_jobs(user, team, 120)
    resp = alice_client.get("/queue/" + (f"?page={number}" if number is not None else ""))
    assert resp.status_code == 200
    page = resp.context["page"]
    assert page.paginator.count == 120 and page.paginator.num_pages == 3 and page.number == shown
    names = [row["name"] for row in resp.context["jobs"]]
    assert len(names) == (20 if shown == 3 else 50)
    everything = list(Job.objects.filter(team=team).order_by("-created_at", "-pk").values_list("name", flat=True))
    assert names == everything[(shown - 1) * 50:shown * 50]


@pytest.mark.django_db
def test_queue_page_of_an_empty_team_and_a_search_with_no_match(alice_client, alice):
    resp = alice_client.get("/queue/")
    assert resp.status_code == 200 and resp.context["page"].paginator.count == 0 and resp.context["jobs"] == []
    make_jobs(*alice, 3)
    resp = alice_client.get("/queue/?q=nothing-like-this")
    assert resp.context["page"].paginator.count == 0 and resp.context["jobs"] == []


@pytest.mark.django_db
def test_queue_page_members_and_role(alice_client, alice, bob):
    user, team = alice
    Membership.objects.create(user=bob[0], team=team, role=Membership.Role.MEMBER)
    resp = alice_client.get("/queue/")
    assert list(resp.context["members"]) == ["alice", "bob"] and resp.context["role"] == "admin"


@pytest.mark.django_db
def test_queue_page_and_job_list_take_a_constant_number_of_queries(alice_client, alice):
    user, team = alice
    counts = {}
    for n in (5, 150):
        make_jobs(user, team, n - Job.objects.count())
        for url in ("/queue/", f"/api/v1/jobs?team={team.pk}&limit=50"):
            alice_client.get(url)
            with CaptureQueriesContext(connection) as ctx:
                assert alice_client.get(url).status_code == 200
            counts.setdefault(url, set()).add(len(ctx.captured_queries))
    assert all(len(c) == 1 for c in counts.values()), counts


@pytest.mark.django_db
@pytest.mark.parametrize("offset, expect", [(0, 50), (100, 20), (119, 1), (120, 0), (500, 0)])
def test_job_list_counts_every_match(alice_client, alice, offset, expect):
    user, team = alice
    make_jobs(user, team, 120)
    body = alice_client.get(f"/api/v1/jobs?team={team.pk}&limit=50&offset={offset}").json()
    assert body["count"] == 120 and len(body["jobs"]) == expect
