"""Detail of a long input's attention maps on zoom, recomputed in the web process.

A job's "attention" event of a long input (``engine.attention_maps``) carries a pooled overview
and the ids of its input. When the browser zooms into one head's overview it asks for a region;
``region`` finds that event, loads the job's checkpoint nearest at or before the event's step,
runs the model on the same input up to the chosen layer (``engine.attention_zoom.layer_scores``)
and scores the region's rows only, pooled to at most ``cells`` per side. Loaded models and the
last layers' queries and keys are kept in small LRUs, so panning and zooming in one head costs
only the rows it shows (about a millisecond per 100 rows of 2,048 keys for a tiny model).
"""
import base64
import os
import threading
import time
from collections import OrderedDict

import torch

import engine.checkpoint as ckpt
from engine.attention_maps import event_inputs, label_tokens
from engine.attention_zoom import OVERVIEW_CELLS, layer_scores
from explorer.checkpoints import job_dir
from explorer.models import JobEvent

MAX_CELLS = 256  # cells per side a request may ask for
MODELS_KEPT = 2  # loaded checkpoints (a few MB to a few hundred MB each)
SCORES_KEPT = 4  # one layer's queries and keys each: T·(n_head + n_kv_head)·head_dim floats

_models: OrderedDict = OrderedDict()  # (path, mtime) -> (model, tokenizer)
_scores: OrderedDict = OrderedDict()  # (path, mtime, event seq, stack, layer) -> LayerScores
_lock = threading.Lock()


class BadRegion(Exception):
    """A 400: ``errors`` maps each bad field to what is wrong with it."""

    def __init__(self, errors):
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


class NoRegion(Exception):
    """A 404: no maps, or no checkpoint to recompute them from; the message says which."""


def _remember(cache, key, make, size):
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    value = cache[key] = make()
    while len(cache) > size:
        cache.popitem(last=False)
    return value


def _checkpoint(job, step):
    """The path and step of the job's checkpoint nearest at or before ``step``."""
    found = [c for c in ckpt.list_checkpoints(job_dir(job.pk)) if c["step"] <= step]
    if not found:
        raise NoRegion(f"no checkpoint to recompute from: {job.display_name} keeps none at or before step {step}")
    return found[-1]["path"], found[-1]["step"]


def _event(job, step):
    rows = JobEvent.objects.filter(job=job, kind="attention").order_by("-seq")
    row = (rows.filter(payload__step=step) if step is not None else rows).first()
    if row is None:
        raise NoRegion(f"{job.display_name} has no attention maps" + (f" at step {step}" if step is not None else ""))
    return row


def _bounds(value, default, name, lo, hi, errors):
    value = default if value is None else value
    if not lo <= value <= hi:
        errors[name] = f"must be between {lo} and {hi} (got {value})"
    return value


def region(job, *, step=None, stack="self", layer=0, head=0, q0=0, q1=None, k0=0, k1=None, cells=OVERVIEW_CELLS):
    """One head's weights on queries q0..q1 × keys k0..k1 of the long input behind the job's
    "attention" event at ``step`` (the newest when None), pooled to at most ``cells`` per side.

    Returns {step, checkpoint_step, stack, layer, head, q, k, block, shape, encoding, scale, maps,
    queries, keys, ms}: ``maps`` is base64 of uint8 row-major (nq, nk), a cell's value
    ``byte / 255 · scale`` (``scale`` the region's largest; see ``engine.attention_zoom`` for
    what a pooled cell holds); ``queries`` / ``keys`` label the positions of a side at full
    resolution (block 1), else null. ``BadRegion`` (400) names bad fields; ``NoRegion`` (404)."""
    row = _event(job, step)
    data = row.payload
    stacks = {k: v for k, v in data.get("stacks", {}).items() if "overview" in v}
    if not stacks or "input" not in data:
        raise BadRegion({"step": f"the maps of step {data.get('step')} are whole in the event (the input is short); "
                                 "there is no detail to fetch"})
    if stack not in stacks:
        raise BadRegion({"stack": f"unknown stack {stack!r}; choose from {sorted(stacks)}"})
    st = stacks[stack]
    tq, tk = st["overview"]["length"]
    errors = {}
    layer = _bounds(layer, 0, "layer", 0, st["n_layer"] - 1, errors)
    head = _bounds(head, 0, "head", 0, st["n_head"] - 1, errors)
    q0 = _bounds(q0, 0, "q0", 0, tq - 1, errors)
    k0 = _bounds(k0, 0, "k0", 0, tk - 1, errors)
    q1 = _bounds(q1, tq, "q1", q0 + 1, tq, errors)
    k1 = _bounds(k1, tk, "k1", k0 + 1, tk, errors)
    cells = _bounds(cells, OVERVIEW_CELLS, "cells", 1, MAX_CELLS, errors)
    if errors:
        raise BadRegion(errors)

    path, checkpoint_step = _checkpoint(job, data["step"])
    started = time.perf_counter()
    with _lock, torch.no_grad():
        try:
            key = (path, os.path.getmtime(os.path.join(path, ckpt.MODEL_FILE)))
            model, tokenizer, _ = _remember(_models, key, lambda: ckpt.load_model(path), MODELS_KEPT)
        except (OSError, ValueError) as exc:  # removed meanwhile: a running job keeps only its newest
            raise NoRegion(f"no checkpoint to recompute from: the one at step {checkpoint_step} is gone ({exc})") from None
        inputs, specials = event_inputs(data)
        scores = _remember(_scores, (*key, row.seq, stack, layer),
                           lambda: layer_scores(model, inputs, layer, stack=stack), SCORES_KEPT)
        out = scores.region(head, q0, q1, k0, k1, cells)
    w = out["weights"]
    scale = float(w.max()) if w.numel() else 0.0
    quantised = (w / max(scale, 1e-12) * 255).round().clamp(0, 255).to(torch.uint8).contiguous()
    seqs = {"tokens": inputs[-1][0].tolist(), "source_tokens": inputs[0][0].tolist()}
    bq, bk = out["block"]
    return {
        "step": data["step"], "checkpoint_step": checkpoint_step, "stack": stack, "layer": layer, "head": head,
        "q": [q0, q1], "k": [k0, k1], "block": [bq, bk], "shape": list(w.shape),
        "encoding": "uint8-base64", "scale": scale, "maps": base64.b64encode(quantised.numpy().tobytes()).decode("ascii"),
        "queries": label_tokens(seqs[st["queries"]][q0:q1], tokenizer, specials) if bq == 1 else None,
        "keys": label_tokens(seqs[st["keys"]][k0:k1], tokenizer, specials) if bk == 1 else None,
        "ms": round((time.perf_counter() - started) * 1000, 1),
    }
