"""Rate limits on the real Redis: failed log-ins per address, job submissions per user (API and
composer), off at 0, and open (with a warning) when Redis does not answer.

Each test counts under its own key prefix and with a window far longer than the test, so runs
never share counters and no window ends mid-test."""
import json
import logging
import uuid

import pytest
from django.test import Client

from explorer.accounts import ratelimit
from explorer.jobs.models import Job

pytestmark = pytest.mark.django_db

LONG_WINDOW = 10**7  # s: no window boundary falls inside a test


@pytest.fixture
def limits(settings):
    settings.RATELIMIT_PREFIX = f"test-ratelimit-{uuid.uuid4().hex}"
    settings.RATELIMIT_LOGIN, settings.RATELIMIT_LOGIN_WINDOW_S = 3, LONG_WINDOW
    settings.RATELIMIT_JOBS, settings.RATELIMIT_JOBS_WINDOW_S = 2, LONG_WINDOW
    return settings


def post_login(client, username, password, ip="10.0.0.1"):
    return client.post("/login/", {"username": username, "password": password}, REMOTE_ADDR=ip)


def post_job(client, spec, **extra):
    return client.post("/api/v1/jobs", data=json.dumps(spec), content_type="application/json", **extra)


def test_a_limit_counts_hits_per_key_and_window(limits):
    limit = ratelimit.Limit("unit", "RATELIMIT_JOBS", "RATELIMIT_JOBS_WINDOW_S")
    assert [limit.hit("k") for _ in range(2)] == [None, None]
    wait = limit.hit("k")
    assert 0 < wait <= LONG_WINDOW
    assert 0 < limit.exceeded("k") <= LONG_WINDOW  # looking does not count a hit...
    assert limit.count("k") == 3  # ...the refused hit did
    assert limit.hit("other") is None  # keys are counted apart


def test_failed_logins_lock_out_the_address_only(limits, alice):
    c = Client()
    for _ in range(3):
        resp = post_login(c, "alice", "wrong")
        assert resp.status_code == 200  # the form again, with Django's own message
    blocked = post_login(c, "alice", "pw-alice-123")  # even the right password: the address is locked
    assert blocked.status_code == 429 and int(blocked["Retry-After"]) > 0
    assert b"Too many failed log-ins" in blocked.content and b'name="password"' in blocked.content
    assert "_auth_user_id" not in c.session
    elsewhere = post_login(Client(), "alice", "pw-alice-123", ip="10.0.0.2")
    assert elsewhere.status_code == 302  # another address logs in


def test_successful_logins_do_not_count(limits, alice):
    for _ in range(5):
        assert post_login(Client(), "alice", "pw-alice-123").status_code == 302


def test_job_submissions_are_limited_per_user(limits, alice, bob, alice_client, tiny_spec):
    assert [post_job(alice_client, tiny_spec).status_code for _ in range(2)] == [201, 201]
    refused = post_job(alice_client, tiny_spec)
    assert refused.status_code == 429 and int(refused["Retry-After"]) > 0
    assert "Too many job submissions" in refused.json()["detail"] and "at most 2" in refused.json()["detail"]
    assert Job.objects.filter(owner=alice[0]).count() == 2
    bobs = Client()
    bobs.force_login(bob[0])
    assert post_job(bobs, tiny_spec).status_code == 201  # counted per user


def test_the_limit_holds_with_an_api_token_too(limits, alice, tiny_spec):
    from explorer.accounts.models import ApiToken

    auth = {"HTTP_AUTHORIZATION": f"Bearer {ApiToken.issue(alice[0], 'script')[1]}"}
    codes = [post_job(Client(), tiny_spec, **auth).status_code for _ in range(3)]
    assert codes == [201, 201, 429]


def test_the_composer_shows_the_limit_as_a_form_error(limits, alice_client, tiny_spec):
    form = {f"{section}.{key}": value for section, values in tiny_spec.items() for key, value in values.items()}
    assert [alice_client.post("/compose/", form).status_code for _ in range(2)] == [302, 302]
    resp = alice_client.post("/compose/", form)
    assert resp.status_code == 200 and Job.objects.count() == 2
    assert any("Too many job submissions" in e for e in resp.context["form"].non_field_errors())
    assert b"Too many job submissions" in resp.content


def test_zero_turns_a_limit_off(limits, alice_client, tiny_spec):
    limits.RATELIMIT_JOBS = 0
    assert {post_job(alice_client, tiny_spec).status_code for _ in range(4)} == {201}
    assert ratelimit.JOBS.count("anyone") == 0  # nothing was counted


def test_an_unreachable_redis_fails_open_with_a_warning(limits, alice, alice_client, tiny_spec, caplog):
    limits.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    with caplog.at_level(logging.WARNING, logger="explorer.accounts.ratelimit"):
        assert {post_job(alice_client, tiny_spec).status_code for _ in range(3)} == {201}
        for _ in range(4):
            assert post_login(Client(), "alice", "wrong").status_code == 200
    warnings = [r.getMessage() for r in caplog.records if r.name == "explorer.accounts.ratelimit"]
    assert warnings and all("not applied" in w and "127.0.0.1:1" in w for w in warnings)
