"""Detail of a long input's attention maps on zoom, recomputed in the web process.

A job's "attention" event of a long input (``engine.introspect.attention_maps``) carries a pooled overview
and the ids of its input. When the browser zooms into one head's overview it asks for a region;
``region`` finds that event, loads the weights of the event's step, runs the model on the same
input up to the chosen layer (``engine.introspect.attention_zoom.layer_scores``) and scores the region's
rows only, pooled to at most ``cells`` per side. Loaded models and the last layers' queries and
keys are kept in small LRUs, so panning and zooming in one head costs only the rows it shows
(about a millisecond per 100 rows of 2,048 keys for a tiny model).

Which weights (``_weights``). The exact ones when the job keeps them: a checkpoint of that step,
or the weights snapshot the engine keeps of a pruned checkpoint whose step evaluated a long
input (``engine.checkpoint``: the newest few, within a byte budget). An evaluation between two
checkpoints (``eval_interval`` 50, ``checkpoint_every`` 100) never had its weights saved: it is
recomputed from the nearest weights kept within ``checkpoint_every`` steps, and the answer says
so (``exact`` false, ``checkpoint_step``, ``note``), since its maps differ from the overview's.
Nothing closer: a 404 whose message says what the job keeps. Never another step's weights silently.
"""
import base64
import os
import threading
import time
from collections import OrderedDict

import torch

import engine.training.checkpoint as ckpt
from engine.introspect.attention_maps import event_inputs, label_tokens
from engine.introspect.attention_zoom import OVERVIEW_CELLS, layer_scores
from explorer.jobs.models import JobEvent
from explorer.training.checkpoints import job_dir

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


def _weights(job, step):
    """``(path, step)`` of the weights to recompute the maps of ``step`` from: that step's, else the
    nearest kept within the job's ``checkpoint_every`` steps (ties: the earlier); see the module
    docstring. ``NoRegion`` when there are none."""
    found = ckpt.list_weights(job_dir(job.pk))
    if not found:
        raise NoRegion(f"no checkpoint to recompute from: {job.display_name} keeps none")
    exact = [w for w in found if w["step"] == step]
    if exact:
        return exact[0]["path"], step
    every = (job.spec.get("train") or {}).get("checkpoint_every") or 0
    near = min(found, key=lambda w: (abs(w["step"] - step), w["step"]))
    if abs(near["step"] - step) <= every:
        return near["path"], near["step"]
    raise NoRegion(f"the weights of step {step} are no longer kept: {job.display_name} keeps its newest checkpoints "
                   f"and the weights of its last {ckpt.SNAPSHOTS_KEPT} long-input evaluations "
                   f"(steps {', '.join(str(w['step']) for w in found)})")


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

    Returns {step, checkpoint_step, exact, note, stack, layer, head, q, k, block, shape, encoding,
    scale, maps, queries, keys, ms}: ``checkpoint_step`` is the step whose weights computed the
    region, ``exact`` whether it is ``step`` (else ``note`` says so, for the UI; see the module
    docstring for which weights are used); ``maps`` is base64 of uint8 row-major (nq, nk), a
    cell's value ``byte / 255 · scale`` (``scale`` the region's largest; see
    ``engine.introspect.attention_zoom`` for what a pooled cell holds); ``queries`` / ``keys`` label the
    positions of a side at full resolution (block 1), else null. ``BadRegion`` (400) names bad
    fields; ``NoRegion`` (404) says why there is nothing to recompute from."""
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

    started = time.perf_counter()
    with _lock, torch.no_grad():
        for attempt in range(2):  # a running job may prune (or snapshot) those weights meanwhile: look again
            path, checkpoint_step = _weights(job, data["step"])
            try:
                key = (path, os.path.getmtime(os.path.join(path, ckpt.MODEL_FILE)))
                model, tokenizer, _ = _remember(_models, key, lambda path=path: ckpt.load_model(path), MODELS_KEPT)
                break
            except (OSError, ValueError) as exc:
                if attempt:
                    raise NoRegion(f"no checkpoint to recompute from: the one at step {checkpoint_step} "
                                   f"is gone ({exc})") from None
        inputs, specials = event_inputs(data)
        scores = _remember(_scores, (*key, row.seq, stack, layer),
                           lambda: layer_scores(model, inputs, layer, stack=stack), SCORES_KEPT)
        out = scores.region(head, q0, q1, k0, k1, cells)
    w = out["weights"]
    scale = float(w.max()) if w.numel() else 0.0
    quantised = (w / max(scale, 1e-12) * 255).round().clamp(0, 255).to(torch.uint8).contiguous()
    seqs = {"tokens": inputs[-1][0].tolist(), "source_tokens": inputs[0][0].tolist()}
    bq, bk = out["block"]
    exact = checkpoint_step == data["step"]
    return {
        "step": data["step"], "checkpoint_step": checkpoint_step, "exact": exact,
        "note": None if exact else (f"approximate: weights of step {checkpoint_step:,} "
                                    f"(step {data['step']:,}'s were not saved)"),
        "stack": stack, "layer": layer, "head": head,
        "q": [q0, q1], "k": [k0, k1], "block": [bq, bk], "shape": list(w.shape),
        "encoding": "uint8-base64", "scale": scale, "maps": base64.b64encode(quantised.numpy().tobytes()).decode("ascii"),
        "queries": label_tokens(seqs[st["queries"]][q0:q1], tokenizer, specials) if bq == 1 else None,
        "keys": label_tokens(seqs[st["keys"]][k0:k1], tokenizer, specials) if bk == 1 else None,
        "ms": round((time.perf_counter() - started) * 1000, 1),
    }
