"""Websockets through the real ASGI application and the real Redis channel layer."""
import pytest
from asgiref.sync import sync_to_async
from channels.testing.websocket import WebsocketCommunicator
from django.conf import settings
from django.test import Client

from config.asgi import application
from explorer.jobs import services
from explorer.training import jobs as training_jobs

pytestmark = pytest.mark.django_db(transaction=True)


def session_headers(user):
    c = Client()
    c.force_login(user)
    cookie = c.cookies[settings.SESSION_COOKIE_NAME].value
    return [(b"cookie", f"{settings.SESSION_COOKIE_NAME}={cookie}".encode()), (b"origin", b"http://127.0.0.1")]


async def connect(path, headers):
    comm = WebsocketCommunicator(application, path, headers=headers)
    connected, _ = await comm.connect(timeout=5)
    return comm, connected


async def open_fresh_job(job, headers):
    """A job socket on a job whose log holds only "queued" (1): past the snapshot and that replay."""
    comm, ok = await connect(f"/ws/jobs/{job.pk}/", headers)
    assert ok
    await comm.receive_json_from(timeout=5)  # job snapshot
    assert [e["seq"] for e in (await comm.receive_json_from(timeout=5))["events"]] == [1]
    return comm


def run(coro):
    import asyncio

    return asyncio.run(coro)


def test_job_socket_replays_then_streams_without_duplicates(alice, tiny_spec):
    job = training_jobs.create_job(alice[0], alice[1], tiny_spec)
    services.append_events(job.pk, [("step", {"step": 1, "loss": 3.0}), ("step", {"step": 2, "loss": 2.9})])
    headers = session_headers(alice[0])

    async def scenario():
        comm, ok = await connect(f"/ws/jobs/{job.pk}/?after=1", headers)
        assert ok
        snapshot = await comm.receive_json_from(timeout=5)
        assert snapshot["type"] == "job" and snapshot["job"]["id"] == job.pk
        replay = await comm.receive_json_from(timeout=5)
        assert [e["seq"] for e in replay["events"]] == [2, 3]
        # A live batch that overlaps what was replayed is trimmed to the new events.
        messages = await sync_to_async(services.append_events)(job.pk, [("step", {"step": 3, "loss": 2.8})])
        await sync_to_async(services.publish)(job.pk, messages)
        live = await comm.receive_json_from(timeout=5)
        assert [e["seq"] for e in live["events"]] == [4]
        await comm.disconnect()

    run(scenario())


def test_job_socket_fills_a_gap_from_the_log(alice, tiny_spec):
    job = training_jobs.create_job(alice[0], alice[1], tiny_spec)
    headers = session_headers(alice[0])

    async def scenario():
        comm = await open_fresh_job(job, headers)
        # Event 2 is saved but its broadcast is lost; event 3 arrives live: the consumer reads 2 from the log.
        await sync_to_async(services.append_events)(job.pk, [("step", {"step": 1, "loss": 1.0})])
        messages = await sync_to_async(services.append_events)(job.pk, [("step", {"step": 2, "loss": 0.9})])
        await sync_to_async(services.publish)(job.pk, messages)
        got = await comm.receive_json_from(timeout=5)
        assert [e["seq"] for e in got["events"]] == [2, 3]
        await comm.disconnect()

    run(scenario())


def test_job_socket_catches_up_a_lost_last_message_once_the_job_is_quiet(alice, tiny_spec, monkeypatch):
    from explorer.jobs import consumers

    monkeypatch.setattr(consumers, "TAIL_CHECK_S", 0.3)
    job = training_jobs.create_job(alice[0], alice[1], tiny_spec)
    headers = session_headers(alice[0])

    async def scenario():
        comm = await open_fresh_job(job, headers)
        messages = await sync_to_async(services.append_events)(job.pk, [("step", {"step": 1, "loss": 1.0})])
        await sync_to_async(services.publish)(job.pk, messages)
        assert [e["seq"] for e in (await comm.receive_json_from(timeout=5))["events"]] == [2]
        # the job's last events are saved but their broadcast is lost, and nothing comes after
        await sync_to_async(services.append_events)(job.pk, [("step", {"step": 2, "loss": 0.9}),
                                                             ("end", {"step": 2, "reason": "completed"})])
        got = await comm.receive_json_from(timeout=5)  # read from the log after 0.3 s of quiet
        assert [(e["seq"], e["kind"]) for e in got["events"]] == [(3, "step"), (4, "end")]
        brief = await comm.receive_json_from(timeout=5)
        assert brief["type"] == "job" and brief["job"]["id"] == job.pk
        assert await comm.receive_nothing(timeout=0.8)  # caught up: nothing sent twice
        await comm.disconnect()

    run(scenario())


def test_job_socket_holds_live_events_until_the_ones_before_them_are_saved(alice, tiny_spec):
    # The worker sends events before it saves them: a client that joins meanwhile gets them in
    # order once they are in the log, never with a hole.
    job = training_jobs.create_job(alice[0], alice[1], tiny_spec)
    headers = session_headers(alice[0])

    def live(first, n):
        return [{"seq": seq, "kind": "step", "ts": 0.0, "data": {"step": seq}} for seq in range(first, first + n)]

    async def scenario():
        comm = await open_fresh_job(job, headers)
        # events 2-3 went out before this client joined and are not saved yet; 4-5 arrive live
        await sync_to_async(services.publish)(job.pk, live(4, 2))
        assert await comm.receive_nothing(timeout=0.4)  # held: 2-3 are not in the log yet
        await sync_to_async(services.append_events)(job.pk, [("step", {"step": 2}), ("step", {"step": 3})])
        got = await comm.receive_json_from(timeout=5)  # the gap read from the log, then the held ones
        seqs = [e["seq"] for e in got["events"]]
        while seqs[-1] < 5:
            seqs += [e["seq"] for e in (await comm.receive_json_from(timeout=5))["events"]]
        assert seqs == [2, 3, 4, 5]
        await sync_to_async(services.publish)(job.pk, live(6, 1))  # and on live as before
        assert [e["seq"] for e in (await comm.receive_json_from(timeout=5))["events"]] == [6]
        await comm.disconnect()

    run(scenario())


def test_job_socket_refuses_other_teams_and_anonymous(alice, bob, tiny_spec):
    job = training_jobs.create_job(alice[0], alice[1], tiny_spec)
    bobs = session_headers(bob[0])
    session_headers_alice = session_headers(alice[0])

    async def scenario():
        comm, ok = await connect(f"/ws/jobs/{job.pk}/", bobs)
        assert not ok
        comm, ok = await connect(f"/ws/jobs/{job.pk}/", [(b"origin", b"http://127.0.0.1")])
        assert not ok
        comm, ok = await connect(f"/ws/teams/{alice[1].pk}/", bobs)
        assert not ok
        comm, ok = await connect(f"/ws/jobs/{job.pk + 1000}/", session_headers_alice)
        assert not ok  # a job that does not exist looks the same as another team's

    run(scenario())


def test_team_socket_streams_job_changes(alice, tiny_spec):
    headers = session_headers(alice[0])

    async def scenario():
        comm, ok = await connect(f"/ws/teams/{alice[1].pk}/", headers)
        assert ok
        job = await sync_to_async(training_jobs.create_job)(alice[0], alice[1], tiny_spec)
        await sync_to_async(services.cancel_job)(job)
        seen = []
        while "cancelled" not in seen:
            msg = await comm.receive_json_from(timeout=5)
            assert msg["type"] == "job" and msg["job"]["id"] == job.pk
            seen.append(msg["job"]["status"])
        assert seen[0] in ("queued", "cancelled")
        await comm.disconnect()

    run(scenario())
