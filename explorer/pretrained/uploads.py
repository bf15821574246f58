"""Uploaded models: streamed to disk, checked and converted (``engine.interop.byo``), and only then
saved.

The upload is streamed in chunks into a staging directory beside its target (never held in
memory; refused as soon as it passes ``MODEL_UPLOAD_MAX_BYTES``), its format and family are read
without the weights, its inference memory is weighed against the workers' (``scheduling.workers.
fit_gate``), then the weights are converted and the logits compared with transformers' on the
probe text, the copy renamed into place whole (``tokenlab.write_copy``), and the database row
made last. Any refusal or failure removes the staging directory and the copy, and leaves no row.

The check runs in the request: about a second for a small model, about 25-40 s for a 135 M
parameter GGUF file (SmolLM2-135M-Instruct) on a CPU; the web process holds the model twice (ours
and transformers') while it converts.
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


def save_model_upload(team, user, upload, name=""):
    """Check and convert ``upload`` (a Django ``UploadedFile``) into ``team``'s models; the new
    ``UploadedModel``, or ``ModelUploadError`` with the reason (and nothing left behind)."""
    limit = settings.MODEL_UPLOAD_MAX_BYTES
    ext = os.path.splitext(upload.name or "")[1].lower()
    if ext not in EXTENSIONS:
        raise ModelUploadError(f"{upload.name}: upload a .gguf file, or a transformers model directory as a .zip "
                               f"(not {ext or 'a file without an extension'})")
    if upload.size is not None and upload.size > limit:
        raise ModelUploadError(f"{upload.name} is {mib(upload.size)}; the model upload limit is {mib(limit)}")
    team_dir = Path(settings.MODEL_UPLOAD_ROOT) / f"team-{team.pk}"
    team_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".upload-", dir=team_dir))
    target = team_dir / secrets.token_hex(8)
    t0 = time.monotonic()
    try:
        size = _stream(upload, staging / f"upload{ext}", limit)
        info = byo.inspect_upload(staging / f"upload{ext}", staging / "unpacked", max_unpacked_bytes=limit)
        cfg = info["config"]
        try:
            workers.fit_gate("cpu", inference_memory(cfg), what="inference memory")
        except workers.FitError as exc:
            raise ModelUploadError(f"{upload.name}: too large for our workers: {exc}") from None
        meta = byo.convert_upload(info, target, name=upload.name, extra={"file": upload.name, "bytes": size})
        meta["check"]["upload_seconds"] = round(time.monotonic() - t0, 2)
        with transaction.atomic():
            return UploadedModel.objects.create(
                team=team, owner=user, name=services.storable((name or upload.name)[:200]),
                directory=str(target.relative_to(settings.MODEL_UPLOAD_ROOT)), source_format=info["format"],
                file_name=services.storable(upload.name[:255]), size_bytes=size, model_type=info["model_type"],
                parameters=meta["parameters"], context=cfg.block_size, chat=meta["chat"], config=meta["config"],
                logits_check=meta["check"])
    except byo.UploadError as exc:
        shutil.rmtree(target, ignore_errors=True)
        raise ModelUploadError(f"{upload.name}: {exc}") from None
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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
