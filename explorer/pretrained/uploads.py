"""Uploaded models: streamed to disk, checked and converted (``engine.interop.byo``), and only then
saved.

The upload is streamed in chunks into a staging directory beside its target (never held in
memory; refused as soon as it passes ``MODEL_UPLOAD_MAX_BYTES``), its format and family are read
without the weights, its inference memory is weighed against the workers' (``scheduling.workers.
fit_gate``), then the weights are converted and the logits compared with transformers' on the
probe text, the copy renamed into place whole (``tokenlab.write_copy``), and the database row
made last. Any refusal or failure removes the staging directory and the copy, and leaves no row.

Up to ``MODEL_UPLOAD_SYNC_MAX_BYTES`` (32 MiB) the conversion and logits check run in the request
(about a second for a small model), and the new model is returned. A larger upload is checked in
the request only as far as its format, family and the fit gate (no weights read), and then
becomes a job of kind "model-import" (``explorer.jobs.submission``: quota, rate limit, fit of its
conversion memory), which a worker runs with progress events: the staging directory stays until
the job ends, and the row appears when it succeeds (a failed or cancelled import leaves nothing).
"""
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path

from django.conf import settings
from django.db import transaction

import engine
from engine.config import events
from engine.interop import byo
from explorer.jobs import services
from explorer.pretrained.models import UploadedModel
from explorer.scheduling import workers

EXTENSIONS = (".gguf", ".zip")
PROBE_CONTEXT = 512  # the fit gate sizes a job's KV cache for this many tokens (or the model's context)


class ModelUploadError(ValueError):
    pass


def mib(n):
    return f"{n / 2**20:,.0f} MiB" if n >= 2**20 else f"{n:,} bytes"


def inference_memory(cfg):
    """What one prompt through the model needs (weights, KV cache, activations): the fit gate's figure."""
    seq = min(cfg.block_size, PROBE_CONTEXT)
    return engine.analyze(cfg, batch_size=1, seq_len=seq)["memory"]["inference"]["total"]


def _stream(upload, path, limit):
    """Copy the upload to ``path`` chunk by chunk; its size. Refuses it past ``limit`` bytes."""
    n = 0
    with open(path, "wb") as out:
        for chunk in upload.chunks(1 << 20):
            n += len(chunk)
            if n > limit:
                raise ModelUploadError(f"{upload.name} is larger than {mib(limit)}, the model upload limit")
            out.write(chunk)
    if n == 0:
        raise ModelUploadError(f"{upload.name} is empty")
    return n


def team_dir(team):
    return Path(settings.MODEL_UPLOAD_ROOT) / f"team-{team.pk}"


def staging_dir(team, name):
    """The staging directory ``name`` of ``team``'s uploads; ``ValueError`` for anything else."""
    if not isinstance(name, str) or not name.startswith(".upload-") or "/" in name or "\\" in name or ".." in name:
        raise ValueError(f"{name!r} is not an upload's staging directory")
    path = team_dir(team) / name
    if not path.is_dir():
        raise ValueError(f"{name} is gone")
    return path


def save_model_upload(team, user, upload, name="", priority="normal"):
    """Check and convert ``upload`` (a Django ``UploadedFile``) into ``team``'s models:
    ``(UploadedModel, None)``, or for an upload above ``MODEL_UPLOAD_SYNC_MAX_BYTES`` ``(None,
    the import Job)``; ``ModelUploadError`` with the reason (and nothing left behind)."""
    limit = settings.MODEL_UPLOAD_MAX_BYTES
    ext = os.path.splitext(upload.name or "")[1].lower()
    if ext not in EXTENSIONS:
        raise ModelUploadError(f"{upload.name}: upload a .gguf file, or a transformers model directory as a .zip "
                               f"(not {ext or 'a file without an extension'})")
    if upload.size is not None and upload.size > limit:
        raise ModelUploadError(f"{upload.name} is {mib(upload.size)}; the model upload limit is {mib(limit)}")
    directory = team_dir(team)
    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".upload-", dir=directory))
    target = directory / secrets.token_hex(8)
    t0 = time.monotonic()
    keep_staging = False
    try:
        size = _stream(upload, staging / f"upload{ext}", limit)
        info = byo.inspect_upload(staging / f"upload{ext}", staging / "unpacked", max_unpacked_bytes=limit)
        cfg = info["config"]
        try:
            workers.fit_gate("cpu", inference_memory(cfg), what="inference memory")
        except workers.FitError as exc:
            raise ModelUploadError(f"{upload.name}: too large for our workers: {exc}") from None
        if size > settings.MODEL_UPLOAD_SYNC_MAX_BYTES:
            job = _submit_import(user, team, staging, info, upload, size, name, priority)
            keep_staging = True
            return None, job
        meta = byo.convert_upload(info, target, name=upload.name, extra={"file": upload.name, "bytes": size})
        meta["check"]["upload_seconds"] = round(time.monotonic() - t0, 2)
        return _create(team, user, target, meta, name=name or upload.name, file_name=upload.name, size=size), None
    except byo.UploadError as exc:
        shutil.rmtree(target, ignore_errors=True)
        raise ModelUploadError(f"{upload.name}: {exc}") from None
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    finally:
        if not keep_staging:
            shutil.rmtree(staging, ignore_errors=True)


def _create(team, user, target, meta, *, name, file_name, size, job=None):
    """The row, made once the copy at ``target`` is whole."""
    with transaction.atomic():
        return UploadedModel.objects.create(
            team=team, owner=user, name=services.storable(name[:200]),
            directory=str(target.relative_to(settings.MODEL_UPLOAD_ROOT)), source_format=meta["source"]["format"],
            file_name=services.storable(file_name[:255]), size_bytes=size, model_type=meta["model_type"],
            parameters=meta["parameters"], context=meta["config"]["block_size"], chat=meta["chat"],
            config=meta["config"], logits_check=meta["check"], import_job=job)


def _submit_import(user, team, staging, info, upload, size, name, priority):
    from explorer.jobs import submission

    cfg = info["config"]
    prepared = {"staging": staging.name, "source": str(Path(info["source"]).relative_to(staging)),
                "format": info["format"], "model_type": info["model_type"], "file_name": upload.name[:255],
                "name": (name or upload.name)[:200], "size_bytes": size,
                "parameters": engine.analyze(cfg)["params"]["total"]}
    try:
        return submission.submit(user, team, "model-import", prepared, priority=priority)
    except services.SpecError as exc:
        raise ModelUploadError(f"{upload.name}: " + "; ".join(exc.errors.values())) from None


def run_import_job(job_id, worker_name):
    """Convert and check a queued import (``lifecycle.job_run``), then make the row; the staging
    directory goes whatever the outcome, the copy too unless the row was made."""
    from explorer.jobs import lifecycle
    from explorer.jobs.models import Job

    job = Job.objects.filter(pk=job_id).select_related("team", "owner").first()
    if job is None:
        return None
    spec = job.spec["model_import"]
    target = team_dir(job.team) / secrets.token_hex(8)
    made = {}

    def explain(exc):
        return str(exc) if isinstance(exc, byo.UploadError) else None

    try:
        with lifecycle.job_run(job_id, worker_name, what="model import", explain=explain) as run:
            if run is None:
                return None
            staging = staging_dir(job.team, spec["staging"])
            run.recorder(events.StartEvent(kind="start", total_steps=100, device="cpu"))
            t0 = time.monotonic()

            def progress(fraction, what):
                if run.should_stop():
                    raise lifecycle.JobCancelled()
                run.recorder(events.ProgressEvent(kind="progress", fraction=fraction, step=round(fraction * 100),
                                                  elapsed=round(time.monotonic() - t0, 3), eta=None, detail=what))

            info = {"format": spec["format"], "source": staging / spec["source"], "model_type": spec["model_type"]}
            meta = byo.convert_upload(info, target, name=spec["file_name"], progress=progress,
                                      extra={"file": spec["file_name"], "bytes": spec["size_bytes"]})
            if run.should_stop():
                raise lifecycle.JobCancelled()
            made["model"] = _create(job.team, job.owner, target, meta, name=spec["name"], file_name=spec["file_name"],
                                    size=spec["size_bytes"], job=job)
            run.recorder(events.EndEvent(kind="end", reason="finished", step=100, elapsed=run.elapsed()))
    finally:
        try:
            shutil.rmtree(staging_dir(job.team, spec["staging"]), ignore_errors=True)
        except ValueError:
            pass
        if "model" not in made:
            shutil.rmtree(target, ignore_errors=True)
    return run.status


def delete_model(model):
    """Remove the row, then the copy (a job still queued on it fails with "no longer exists")."""
    path = model.path
    model.delete()
    shutil.rmtree(path, ignore_errors=True)


def analysis(model):
    """The analysis of its shape: parameters, the KV cache per token, inference memory."""
    cfg = engine.ModelConfig.from_dict(model.config)
    a = engine.analyze(cfg, batch_size=1, seq_len=min(cfg.block_size, PROBE_CONTEXT))
    return {"params": a["params"]["total"], "inference_bytes": a["memory"]["inference"]["total"],
            "weights_bytes": a["memory"]["weights"], "seq_len": min(cfg.block_size, PROBE_CONTEXT)}
