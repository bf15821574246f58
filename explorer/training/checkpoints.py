"""Job checkpoints in the web app: where they live, download and export, retry as a new attempt,
and chaining a job onto another's weights (pretrain → SFT → DPO).

A training job writes its checkpoints (``engine.checkpoint``) under
``settings.CHECKPOINT_ROOT/job-<id>/step-<n>/``; the engine's "checkpoint" events name them by
step only, so no server path reaches users. ``retry_job`` puts a failed or cancelled job back in
the queue as attempt n + 1, which resumes from its last checkpoint (or starts over without one);
its events continue the same log. A new job names another job's checkpoint with
``init_from_job`` (and optionally ``init_from_step``), which becomes the engine's
``train.init_from`` path here, like a dataset id becomes ``data.path``.
"""
import datetime
import io
import os
import re
import shutil
import tempfile
import zipfile

from django.conf import settings
from django.db import transaction

import engine.training.checkpoint as ckpt
from engine.interop.export import export_transformers
from explorer.jobs.models import Job


class NoCheckpoint(Exception):
    """The job has no (such) checkpoint; the message says what there is."""


def job_dir(job_id):
    return os.path.join(settings.CHECKPOINT_ROOT, f"job-{job_id}")


def checkpoints(job):
    """The job's complete checkpoints, oldest first: [{step, bytes, created_at}]."""
    out = []
    for c in ckpt.list_checkpoints(job_dir(job.pk)):
        created = datetime.datetime.fromtimestamp(os.path.getmtime(c["path"]), tz=datetime.UTC)
        out.append({"step": c["step"], "bytes": c["bytes"], "created_at": created.isoformat()})
    return out


def checkpoint_path(job, step=None):
    """The path of the job's checkpoint at ``step`` (the latest when None); ``NoCheckpoint``."""
    found = ckpt.list_checkpoints(job_dir(job.pk))
    if not found:
        raise NoCheckpoint(f"{job.display_name} has no checkpoint yet")
    if step is None:
        return found[-1]["path"]
    for c in found:
        if c["step"] == step:
            return c["path"]
    raise NoCheckpoint(f"{job.display_name} has no checkpoint at step {step}; it has steps "
                       + ", ".join(str(c["step"]) for c in found))


_PATH = re.compile(r"job-(\d+)[/\\]step-(\d+)$")


def parent_of(path):
    """``(job_id, step)`` of a checkpoint path this app wrote, else None."""
    match = _PATH.search(path or "")
    return (int(match[1]), int(match[2])) if match else None


def bind_init_from(team, train):
    """For a job's train section: ``init_from_job`` (a job of ``team`` with checkpoints) and
    ``init_from_step`` become the engine's ``init_from`` path. Returns errors by field."""
    train.pop("init_from", None)  # only the app sets paths
    ref, step = train.pop("init_from_job", None), train.pop("init_from_step", None)
    if ref in (None, ""):
        return {}
    try:
        parent = Job.objects.filter(team=team, pk=int(ref)).exclude(kind="tokenizer").first()
    except (TypeError, ValueError):
        parent = None
    if parent is None:
        return {"train.init_from_job": f"no training job {ref!r} in team {team.name}"}
    try:
        step = None if step in (None, "") else int(step)
        train["init_from"] = checkpoint_path(parent, step)
    except (TypeError, ValueError):
        return {"train.init_from_step": f"expected a step number, got {step!r}"}
    except NoCheckpoint as exc:
        return {"train.init_from_job": str(exc)}
    return {}


def architecture_errors(spec):
    """At submission: the job named in ``init_from`` must have this job's architecture."""
    if not spec.train.init_from:
        return {}
    try:
        saved = ckpt.read_checkpoint(spec.train.init_from)
    except ValueError as exc:
        return {"train.init_from_job": str(exc)}
    problems = ckpt.architecture_mismatch(saved.model_config, spec.model)
    if problems:
        return {"train.init_from_job": "that job's model has another architecture: " + "; ".join(problems)
                + ". Start from its settings (the 'Fine-tune' button on its page) to match them."}
    return {}


def init_choices(team, limit=50):
    """The composer's "Start from" options: the team's newest training jobs that have checkpoints."""
    out = []
    for job in Job.objects.filter(team=team, kind="train").exclude(status=Job.Status.QUEUED).order_by("-created_at"):
        found = ckpt.list_checkpoints(job_dir(job.pk))
        if found:
            out.append((str(job.pk), f"{job.display_name} · step {found[-1]['step']} · {job.status}"))
        if len(out) >= limit:
            break
    return out


# ---------------------------------------------------------------------------- files
def zip_checkpoint(job, step):
    """The checkpoint's files as a zip (model.safetensors, optimizer.safetensors, trainer.json)."""
    path = checkpoint_path(job, step)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        for name in sorted(os.listdir(path)):
            z.write(os.path.join(path, name), arcname=f"job-{job.pk}-step-{step}/{name}")
    return buffer.getvalue()


def zip_transformers(job, step):
    """The checkpoint as a ``transformers`` model directory, zipped; ValueError when no
    ``transformers`` architecture expresses the model (the message says why)."""
    path = checkpoint_path(job, step)
    tmp = tempfile.mkdtemp(prefix="export-")
    try:
        out = os.path.join(tmp, "model")
        export_transformers(path, out)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
            for name in sorted(os.listdir(out)):
                z.write(os.path.join(out, name), arcname=f"job-{job.pk}-step-{step}-transformers/{name}")
        return buffer.getvalue()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def delete_checkpoints(job):
    shutil.rmtree(job_dir(job.pk), ignore_errors=True)


# ---------------------------------------------------------------------------- attempts
class RetryRefused(Exception):
    pass


def retry_job(job, reason="retried by the user", *, automatic=False):
    """Queue a failed or cancelled job again as its next attempt. It resumes from its last
    checkpoint where there is one (the loss curve goes on), else starts over. Returns the
    step it resumes from (0 when from scratch); ``RetryRefused`` for a job still queued or
    running, or one that succeeded. ``automatic``: the app's own retry of a running job whose
    worker was lost (``lifecycle.reap_stale_jobs``), counted in ``auto_retries``."""
    from explorer.jobs import (
        services,  # it imports this module
    )

    if job.kind != "train":
        raise RetryRefused(f"only training jobs can be retried, not {job.kind} jobs")
    found = ckpt.list_checkpoints(job_dir(job.pk))
    resume_step = found[-1]["step"] if found else 0
    allowed = (Job.Status.RUNNING,) if automatic else (Job.Status.FAILED, Job.Status.CANCELLED)
    if automatic:
        reason += (f" Requeued to resume from its checkpoint at step {resume_step}." if resume_step
                   else " Requeued to start over (it had no checkpoint yet).")
    with transaction.atomic():
        row = Job.objects.select_for_update().get(pk=job.pk)
        if row.status not in allowed:
            raise RetryRefused(f"{row.display_name} is {row.status}; only failed or cancelled jobs can be retried")
        attempt = row.attempt + 1
        messages = services.append_events(
            job.pk, [("status", {"status": "queued", "queue": row.queue, "attempt": attempt,
                                 "resume_from_step": resume_step, "reason": reason})],
            status=Job.Status.QUEUED, attempt=attempt, cancel_requested=False, error="", finished_at=None,
            started_at=None, heartbeat_at=None, worker="", step=resume_step,
            auto_retries=row.auto_retries + int(automatic),
        )
        transaction.on_commit(lambda: services.enqueue(job.pk))
    services.publish(job.pk, messages, team_id=job.team_id, places=True)
    return resume_step
