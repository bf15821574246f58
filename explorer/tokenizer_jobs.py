"""Tokenizer training as a job: a corpus too large to train within a request is written to
scratch files and trained in a Celery worker, with progress events (fraction and ETA), the
heartbeat, cancel and the reaper of every job; the ``Tokenizer`` row ends ready or failed with
the reason."""
import logging
import os
import time

from django.conf import settings
from django.utils import timezone

from engine import tokenlab
from explorer import services
from explorer.models import Job, Tokenizer

log = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.25


class _Cancelled(Exception):
    pass


def write_scratch(team, label, text):
    directory = os.path.join(settings.MEDIA_ROOT, "tokenizers", f"team-{team.pk}", "corpora")
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{label}-{os.urandom(8).hex()}.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def enqueue(job_id):
    from explorer import tasks  # tasks import this module

    result = tasks.train_tokenizer.apply_async(args=[job_id], queue="cpu")
    Job.objects.filter(pk=job_id).update(celery_task_id=result.id)
    services.broadcast_team(job_id)


def _corpus_for_job(spec):
    paths = spec.get("path") or {}
    corpus = spec["corpus"]
    if corpus in tokenlab.CORPORA:
        texts = [tokenlab.corpus_text(corpus, max_bytes=spec.get("corpus_bytes") or 1_000_000)]
    elif corpus.startswith("dataset:"):
        with open(paths["dataset_path"], "rb") as f:
            texts = [f.read().decode("utf-8")]
    else:
        with open(paths["pasted_path"], encoding="utf-8") as f:
            texts = [f.read()]
    if paths.get("extra_path"):
        with open(paths["extra_path"], encoding="utf-8") as f:
            extra = f.read()
        if extra.strip():
            texts.append(extra)
    return [t for t in texts if t]


class _Progress:
    """The engine's ``progress(fraction)``: "progress" events at most every 0.25 s, with an ETA;
    raises to stop training when the job was cancelled."""

    def __init__(self, recorder, cancelled):
        self.recorder, self.cancelled = recorder, cancelled
        self.t0, self.last = time.monotonic(), 0.0

    def __call__(self, fraction):
        if self.cancelled():
            raise _Cancelled()
        now = time.monotonic()
        if now - self.last < PROGRESS_INTERVAL_S and fraction < 1:
            return
        self.last = now
        fraction = max(0.0, min(1.0, float(fraction)))
        elapsed = now - self.t0
        eta = elapsed * (1 - fraction) / fraction if fraction > 0 else None
        self.recorder({"kind": "progress", "fraction": fraction, "step": round(fraction * 100),
                       "elapsed": elapsed, "eta": eta})


def run_tokenizer_job(job_id, worker_name):
    """Train a queued tokenizer job to its end; every outcome leaves job and row terminal."""
    from explorer import tokenizers as lab  # it imports this module
    now = timezone.now()
    started = Job.objects.filter(pk=job_id, status=Job.Status.QUEUED, cancel_requested=False).update(
        status=Job.Status.RUNNING, started_at=now, heartbeat_at=now, worker=worker_name
    )
    row = Tokenizer.objects.filter(job_id=job_id).first()
    if not started:
        log.info("tokenizer job %s is no longer queued; skipping", job_id)
        if row is not None:
            lab.refresh_status(row)
        return None
    job = Job.objects.get(pk=job_id)
    services.record_status(job.pk, Job.Status.RUNNING, worker=worker_name)
    recorder, heartbeat = services.EventRecorder(job), services.Heartbeat(job.pk)
    heartbeat.start()
    status, error, t0 = Job.Status.FAILED, "", time.monotonic()
    try:
        spec = job.spec["tokenizer"]
        recorder({"kind": "start", "total_steps": 100, "device": "cpu"})
        texts = _corpus_for_job(spec)
        s = {k: spec[k] for k in ("kind", "vocab_size", "normalization", "lowercase", "pre_tokenizer", "special_tokens")}
        tok = lab.train_tokenizer(s, texts, progress=_Progress(recorder, heartbeat.cancelled.is_set))
        if heartbeat.cancelled.is_set():
            raise _Cancelled()
        if row is not None:
            lab.save_file(row, tok)
            row.kind, row.vocab_size, row.settings = tok.kind, tok.vocab_size, lab.clean(tok.settings or s)
            row.status, row.error = Tokenizer.Status.READY, ""
            row.save()
        recorder({"kind": "end", "reason": "finished", "step": 100, "elapsed": time.monotonic() - t0,
                  "vocab_size": tok.vocab_size})
        status = Job.Status.SUCCEEDED
    except _Cancelled:
        recorder({"kind": "end", "reason": "cancelled", "elapsed": time.monotonic() - t0})
        status, error = Job.Status.CANCELLED, ""
    except lab.LabError as exc:
        error = f"Invalid tokenizer: {exc}"
    except Exception as exc:  # noqa: BLE001 - the reason goes on the job; the worker lives on
        if heartbeat.cancelled.is_set():  # our _Cancelled, as the tokenizers library re-raised it
            recorder({"kind": "end", "reason": "cancelled", "elapsed": time.monotonic() - t0})
            status = Job.Status.CANCELLED
        else:
            log.exception("tokenizer job %s failed", job_id)
            error = f"{type(exc).__name__}: {exc}"
    finally:
        heartbeat.stop()
        _remove_scratch(job.spec["tokenizer"].get("path") or {})
    try:
        recorder.flush()
    except Exception:  # noqa: BLE001
        log.exception("could not save the last events of job %s", job_id)
    if status != Job.Status.SUCCEEDED and row is not None:
        Tokenizer.objects.filter(pk=row.pk).update(
            status=Tokenizer.Status.FAILED, error=error or f"the training job was {status}")
    services.record_status(job_id, status, expect=[Job.Status.RUNNING], error=error)
    return status


def _remove_scratch(paths):
    for key in ("pasted_path", "extra_path"):
        if paths.get(key):
            try:
                os.remove(paths[key])
            except OSError:
                pass


# ---------------------------------------------------------------------------- files
