"""The worker's event path (explorer.jobs.recorder): events go out to watchers before they are saved,
the engine's thread never waits for the database, and the log ends complete and in order."""
import asyncio
import threading
import time

import pytest
from channels.layers import get_channel_layer
from django.db import connection
from django.test.utils import CaptureQueriesContext

from explorer.jobs import lifecycle, services
from explorer.jobs.models import Job
from explorer.training import jobs as training_jobs

pytestmark = pytest.mark.django_db(transaction=True)


class Watcher:
    """A client of the job's group on the real Redis channel layer, on an event loop of its own
    (the pub/sub layer keeps a channel's subscription in the loop that made it, as the ASGI
    server's one loop does)."""

    def __init__(self, job_id):
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True, name=f"watcher-{job_id}").start()
        self.layer, self.group = get_channel_layer(), services.job_group(job_id)
        self.channel = self.run(self.layer.new_channel())
        self.run(self.layer.group_add(self.group, self.channel))

    def run(self, coroutine, timeout=10):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def events(self, until_seq, timeout=10):
        got, deadline = [], time.monotonic() + timeout
        while not got or got[-1]["seq"] < until_seq:
            wait = max(0.01, deadline - time.monotonic())
            message = self.run(asyncio.wait_for(self.layer.receive(self.channel), wait), wait + 1)
            if message["type"] == "job.events":
                got.extend(message["events"])
        return got


def wait_until_numbering(recorder, timeout=10):
    """Until the recorder's first write told it where its numbers start."""
    deadline = time.monotonic() + timeout
    while recorder.next_seq is None:
        assert time.monotonic() < deadline
        time.sleep(0.005)


def wait_until_saved(job, seq, timeout=10):
    """Until the job's log holds ``seq`` (a writer thread's pending write is done)."""
    deadline = time.monotonic() + timeout
    while Job.objects.get(pk=job.pk).last_seq < seq:
        assert time.monotonic() < deadline
        time.sleep(0.005)


def step(n):
    return {"kind": "step", "step": n, "loss": 3.0 - n / 100}


def saved(job):
    return [(e.seq, e.kind, e.payload.get("step")) for e in job.events.order_by("seq")]


def test_events_reach_watchers_before_they_are_saved(alice, tiny_spec):
    job = training_jobs.create_job(alice[0], alice[1], tiny_spec)  # its log: 1 "queued"
    watcher = Watcher(job.pk)
    recorder = services.EventRecorder(job, save_interval=30, background=True)  # saved only at the end
    assert recorder.threads, "outside a transaction the recorder writes on threads of its own"
    recorder({"kind": "start", "total_steps": 5, "device": "cpu"})  # the start: saved at once
    deadline = time.monotonic() + 10
    while Job.objects.get(pk=job.pk).last_seq < 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with CaptureQueriesContext(connection) as queries:
        for n in range(1, 6):
            recorder(step(n))
    assert len(queries) == 0  # the engine's thread does not touch the database
    live = watcher.events(until_seq=7)
    assert [(e["seq"], e["kind"]) for e in live] == [(2, "start")] + [(s, "step") for s in range(3, 8)]
    assert Job.objects.get(pk=job.pk).last_seq == 2  # sent, the steps not saved yet
    recorder.drain()
    job.refresh_from_db()
    assert saved(job) == [(1, "status", None), (2, "start", None)] + [(s, "step", s - 2) for s in range(3, 8)]
    assert job.last_seq == 7 and job.step == 5 and job.summary["loss"] == pytest.approx(2.95)
    stored = {e.seq: e.as_message() for e in job.events.all()}
    assert all(stored[e["seq"]] == e for e in live)  # watchers saw exactly what was saved


def test_another_writer_in_between_renumbers_and_loses_nothing(alice, tiny_spec, caplog):
    job = training_jobs.create_job(alice[0], alice[1], tiny_spec)
    recorder = services.EventRecorder(job, save_interval=30, background=True)
    recorder({"kind": "start", "total_steps": 4})
    # the start goes out at once and wakes the saver: wait for that write, else a slow machine's
    # saver could write step 3 before the other writer comes (seen on CI)
    wait_until_saved(job, 2)
    for n in (1, 2):
        recorder(step(n))
    recorder.flush()  # 1 queued, 2 start, 3-4 steps
    recorder(step(3))  # numbered 5 and sent...
    deadline = time.monotonic() + 5
    while recorder.next_seq != 6:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    services.append_events(job.pk, [("queue", {"note": "another writer"})])  # ...but 5 is taken now
    recorder(step(4))
    recorder.drain()
    job.refresh_from_db()
    assert saved(job) == [(1, "status", None), (2, "start", None), (3, "step", 1), (4, "step", 2),
                          (5, "queue", None), (6, "step", 3), (7, "step", 4)]
    assert "renumbered" in caplog.text


def test_inside_a_transaction_the_recorder_works_inline(alice, tiny_spec):
    from django.db import transaction

    job = training_jobs.create_job(alice[0], alice[1], tiny_spec)
    with transaction.atomic():
        recorder = services.EventRecorder(job, background=True)
        assert not recorder.threads  # another thread could not see this transaction's rows
        recorder({"kind": "start", "total_steps": 2})
        recorder(step(1))
        recorder(step(2))
        assert recorder.flush()
        assert Job.objects.get(pk=job.pk).last_seq == 4


def test_a_worker_that_dies_before_saving_leaves_no_hole_and_the_requeue_comes_after(alice, tiny_spec):
    from explorer.jobs.recorder import MARK_AHEAD, fill_unsaved

    job = training_jobs.create_job(alice[0], alice[1], tiny_spec)
    Job.objects.filter(pk=job.pk).update(status="running", worker="doomed@host")
    watcher = Watcher(job.pk)
    recorder = services.EventRecorder(Job.objects.get(pk=job.pk), save_interval=30, background=True)
    for n in range(1, 6):
        recorder(step(n))
    assert [e["seq"] for e in watcher.events(until_seq=6)] == [2, 3, 4, 5, 6]  # seen live
    recorder.close()  # the worker dies: nothing of it saved
    assert Job.objects.get(pk=job.pk).last_seq == 1
    lifecycle.lose_worker(Job.objects.get(pk=job.pk), "its worker stopped sending heartbeats.")
    job.refresh_from_db()
    kinds = list(job.events.order_by("seq").values_list("seq", "kind"))
    # events 2-6 were sent; the mark runs up to MARK_AHEAD past the last it noted
    requeue = next(seq for seq, kind in kinds[1:] if kind != "lost")
    assert 6 < requeue <= 6 + MARK_AHEAD + 1  # numbered after every event seen
    assert kinds[:requeue - 1] == [(1, "status")] + [(s, "lost") for s in range(2, requeue)]
    assert kinds[requeue - 1] == (requeue, "status")
    assert fill_unsaved(job.pk, "again") == 0  # nothing more to fill


def test_close_always_stops_the_threads_even_mid_send(alice, tiny_spec):
    # close() must not be lost in the sender's wake-up (it once cleared the wake that close set)
    job = training_jobs.create_job(alice[0], alice[1], tiny_spec)
    for i in range(150):
        recorder = services.EventRecorder(job, flush_interval=0.0005 * (i % 4), background=True)
        for n in range(3):
            recorder(step(n))
        threads = list(recorder.threads)
        recorder.close()
        assert not any(t.is_alive() for t in threads), f"a writer thread outlived close() (round {i})"


def test_inline_an_evaluation_goes_out_at_once_and_a_checkpoint_is_saved_at_once(alice, tiny_spec):
    job = training_jobs.create_job(alice[0], alice[1], tiny_spec)
    watcher = Watcher(job.pk)
    recorder = services.EventRecorder(job, save_interval=30)  # the default: on the engine's thread
    assert not recorder.threads
    recorder({"kind": "start", "total_steps": 50, "device": "cpu"})
    assert Job.objects.get(pk=job.pk).last_seq == 2  # the start: saved at once
    for n in range(1, 6):
        recorder(step(n))
    recorder({"kind": "eval", "step": 5, "train_loss": 2.9, "val_loss": 3.1})
    recorder({"kind": "health", "step": 5, "layers": {}})
    live = watcher.events(until_seq=9)  # sent at once...
    assert [e["kind"] for e in live][-2:] == ["eval", "health"]
    assert Job.objects.get(pk=job.pk).last_seq == 2  # ...saved with the next write (not yet due)
    recorder(step(6))
    recorder({"kind": "checkpoint", "step": 6, "path": "ckpt-000006"})
    job.refresh_from_db()
    # a checkpoint is saved at once with everything before it: a run resumed from it leaves no gap
    assert job.last_seq == 11 and job.step == 6 and job.summary["val_loss"] == 3.1
    assert saved(job)[-3:] == [(9, "health", 5), (10, "step", 6), (11, "checkpoint", 6)]
    recorder.drain()
