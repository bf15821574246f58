"""Tokenizer training as a job: a corpus too large to train within a request is written to
scratch files and trained in a Celery worker, with progress events (fraction and ETA), the
heartbeat, cancel and the reaper of every job; the ``Tokenizer`` row ends ready or failed with
the reason."""
import os
import time

from django.conf import settings

from engine import tokenlab
from engine.config import events
from explorer.jobs import lifecycle
from explorer.jobs.models import Job
from explorer.tokenizers.models import Tokenizer

PROGRESS_INTERVAL_S = 0.25


def write_scratch(team, label, text):
    directory = os.path.join(settings.MEDIA_ROOT, "tokenizers", f"team-{team.pk}", "corpora")
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{label}-{os.urandom(8).hex()}.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


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
    raises ``lifecycle.JobCancelled`` to stop training when the job was cancelled."""

    def __init__(self, recorder, cancelled):
        self.recorder, self.cancelled = recorder, cancelled
        self.t0, self.last = time.monotonic(), 0.0

    def __call__(self, fraction):
        if self.cancelled():
            raise lifecycle.JobCancelled()
        now = time.monotonic()
        if now - self.last < PROGRESS_INTERVAL_S and fraction < 1:
            return
        self.last = now
        fraction = max(0.0, min(1.0, float(fraction)))
        elapsed = now - self.t0
        eta = elapsed * (1 - fraction) / fraction if fraction > 0 else None
        self.recorder(events.ProgressEvent(kind="progress", fraction=fraction, step=round(fraction * 100),
                                           elapsed=elapsed, eta=eta))


def run_tokenizer_job(job_id, worker_name):
    """Train a queued tokenizer job to its end (``lifecycle.job_run``); the ``Tokenizer`` row ends
    ready, or failed with the job's reason. Returns the job's final status, or None when it was no
    longer queued."""
    from explorer.tokenizers import lab  # it imports this module

    row = Tokenizer.objects.filter(job_id=job_id).first()

    def explain(exc):
        return f"Invalid tokenizer: {exc}" if isinstance(exc, lab.LabError) else None

    def fail_row(run):  # also when the job's last events could not be saved after the file was
        if run.status != Job.Status.SUCCEEDED and row is not None:
            Tokenizer.objects.filter(pk=row.pk).update(
                status=Tokenizer.Status.FAILED, error=run.error or f"the training job was {run.status}")

    with lifecycle.job_run(job_id, worker_name, what="tokenizer job", explain=explain, on_end=fail_row) as run:
        if run is None:
            if row is not None:
                lab.refresh_status(row)
            return None
        spec = run.job.spec["tokenizer"]
        try:
            run.recorder(events.StartEvent(kind="start", total_steps=100, device="cpu"))
            texts = _corpus_for_job(spec)
            s = {k: spec[k] for k in ("kind", "vocab_size", "normalization", "lowercase", "pre_tokenizer",
                                      "special_tokens")}
            try:
                tok = lab.train_tokenizer(s, texts, progress=_Progress(run.recorder, run.should_stop))
            except Exception:
                if run.should_stop():  # our JobCancelled, as the tokenizers library re-raised it
                    raise lifecycle.JobCancelled() from None
                raise
            if run.should_stop():
                raise lifecycle.JobCancelled()
            if row is not None:
                lab.save_file(row, tok)
                row.kind, row.vocab_size, row.settings = tok.kind, tok.vocab_size, lab.clean(tok.settings or s)
                row.status, row.error = Tokenizer.Status.READY, ""
                row.save()
            run.recorder(events.EndEvent(kind="end", reason="finished", step=100, elapsed=run.elapsed(),
                                         vocab_size=tok.vocab_size))
        finally:
            _remove_scratch(spec.get("path") or {})
    return run.status


def _remove_scratch(paths):
    for key in ("pasted_path", "extra_path"):
        if paths.get(key):
            try:
                os.remove(paths[key])
            except OSError:
                pass


# ---------------------------------------------------------------------------- files
