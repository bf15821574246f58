"""Faults made to happen, in process: the database locked under a running job, and cancels
racing a job's start. (Killed workers and Redis restarts: tests/integration.)"""
import sqlite3
import threading
import time

import pytest
from django.db import connection, connections

from explorer.jobs import services
from explorer.jobs.models import Job
from explorer.training import jobs as training_jobs

pytestmark = pytest.mark.django_db(transaction=True)

sqlite_only = pytest.mark.skipif(connection.vendor != "sqlite", reason="locks the SQLite file; PostgreSQL writers wait")


def run_in_thread(job):
    runner = threading.Thread(target=training_jobs.run_job, args=(job.pk, "fault-worker"))
    runner.start()
    return runner


def wait_for_step(job, step, timeout=60):
    deadline = time.monotonic() + timeout
    while Job.objects.get(pk=job.pk).step < step:
        assert time.monotonic() < deadline, f"job {job.pk} did not reach step {step}"
        time.sleep(0.02)


def lock_database(seconds):
    """Hold SQLite's write lock from another connection, as a stuck or restarting database would."""
    lock = sqlite3.connect(connection.settings_dict["NAME"], timeout=10)
    lock.execute("BEGIN EXCLUSIVE")
    time.sleep(seconds)
    lock.rollback()
    lock.close()


def assert_complete_log(job, steps):
    seqs = list(job.events.order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, job.last_seq + 1))  # no gap, no duplicate
    logged = [e.payload["step"] for e in job.events.filter(kind="step").order_by("seq")]
    assert logged == list(range(1, steps + 1))


@sqlite_only
def test_events_are_buffered_through_a_database_outage(alice, tiny_spec, monkeypatch, caplog):
    # the worker's connection gives up on a lock after 0.3 s instead of 30 s, so writes fail
    monkeypatch.setitem(connections.settings["default"]["OPTIONS"], "timeout", 0.3)
    tiny_spec["train"] |= {"steps": 600, "eval_interval": 200, "attention_maps": False}
    job = training_jobs.create_job(alice[0], alice[1], tiny_spec)
    runner = run_in_thread(job)
    wait_for_step(job, 30)
    lock_database(3.0)
    runner.join(120)
    job.refresh_from_db()
    assert job.status == "succeeded", job.error
    assert_complete_log(job, 600)
    assert "buffering them" in caplog.text and "the database is back" in caplog.text


@sqlite_only
def test_a_long_outage_fails_the_job_with_the_reason_and_keeps_its_events(alice, tiny_spec, monkeypatch, settings):
    monkeypatch.setitem(connections.settings["default"]["OPTIONS"], "timeout", 0.3)
    settings.EVENT_DB_OUTAGE_S = 2  # shorter than the lock: the run gives up, the final drain waits it out
    tiny_spec["train"] |= {"steps": 5000, "eval_interval": 1000, "attention_maps": False}
    job = training_jobs.create_job(alice[0], alice[1], tiny_spec)
    runner = run_in_thread(job)
    wait_for_step(job, 30)
    lock_database(3.0)
    runner.join(120)
    job.refresh_from_db()
    assert job.status == "failed"
    assert "EventStoreUnavailable" in job.error and "database was unavailable" in job.error
    stopped = job.events.filter(kind="step").order_by("-seq").first().payload["step"]
    assert 30 < stopped < 5000
    assert_complete_log(job, stopped)  # every step up to where it stopped was saved


@pytest.mark.parametrize("when", ["queued", "starting", "running"])
def test_cancel_always_ends_cancelled(alice, tiny_spec, when):
    tiny_spec["train"] |= {"steps": 20000, "eval_interval": 10000, "attention_maps": False}
    for _ in range(3):  # races: a few times each
        job = training_jobs.create_job(alice[0], alice[1], tiny_spec)
        if when == "queued":
            assert services.cancel_job(job)
            assert training_jobs.run_job(job.pk, "fault-worker") is None  # the worker skips it
        else:
            runner = run_in_thread(job)
            if when == "starting":  # as soon as it is claimed, before (or around) its first step
                deadline = time.monotonic() + 30
                while Job.objects.get(pk=job.pk).status != "running":
                    assert time.monotonic() < deadline
                    time.sleep(0.001)
            else:
                wait_for_step(job, 50)
            assert services.cancel_job(Job.objects.get(pk=job.pk))
            runner.join(60)
        job.refresh_from_db()
        assert job.status == "cancelled" and job.finished_at is not None
        assert job.events.order_by("-seq").first().payload["status"] == "cancelled"
        assert job.step < 20000
