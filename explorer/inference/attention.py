"""Attention of a pretrained model on one text, as a job: every layer × head, per-head statistics, and
any head's full-resolution map on demand.

The form (``/attention/``) or ``POST /api/v1/attention`` takes a text (or, for a chat model, a chat
turn: ``chat`` wraps the text as a user's turn in the model's chat template; ``messages`` renders a
whole conversation in it, e.g. a chat page's turn with its answer). ``validate`` tokenizes it with
the model's own tokenizer (no weights) and refuses, at the field and with the numbers, a text longer
than the model's context. The job runs on a worker (``run_job``), where the model is loaded once per
process and kept (``engine.interop.pretrained``): one forward under
``engine.introspect.attention_stats.analyze_attention``, whose statistics are taken over the
full-resolution maps of every head, then

- as the forward reaches each layer, its queries and keys (float16, ``attention/layer-NN.pt`` in
  the job's directory; ``attention/meta.pt`` holds the config and the ids), and after the first
  layer an "attention_tokens" event (every token's label): the page draws a head's map as soon as
  its layer is there (layer 0 about a thirtieth of the forward after the start), the other layers
  following, while the rest of the forward and then the statistics run;
- then one "attention_heads" event: the statistics, every head pooled into at most
  ``OVERVIEW_CELLS`` cells a side (the page's layer × head grid).

From the kept queries and keys the web
  process rebuilds one head's map on request (``head_map``; ~0.1 s at 2,048 tokens): the whole map
  at full resolution up to ``MAX_SIDE`` positions a side (2,048² bytes = 4 MB for 2,048 tokens),
  pooled beyond, any region of at most ``MAX_SIDE`` a side at full resolution. It is sent as raw
  bytes on the log colour scale (``engine.introspect.attention_stats.encode_log``), not JSON.
"""
import os
import threading
import time
from collections import OrderedDict

import torch

import engine
from engine.config import events
from engine.interop import pretrained as engine_pretrained
from engine.introspect.attention_maps import label_tokens
from engine.introspect.attention_stats import (
    LOG_FLOOR,
    STATS,
    AttentionAnalysis,
    analyze_attention,
    encode_log,
    head_map,
)
from engine.introspect.attention_zoom import LayerScores
from explorer.jobs import lifecycle, services
from explorer.jobs.models import Job
from explorer.training.checkpoints import job_dir

from .jobs import PRETRAINED, _pretrained_tokenizer, _Progress

MAX_TEXT_CHARS = 200_000
MAX_MESSAGES = 64
MIN_TOKENS = 2
OVERVIEW_CELLS = 32  # a side of each head's pooled map in the event: 30 × 9 heads × 32² = 276 kB
MAX_SIDE = 2048  # positions a side of a head's map sent at full resolution
QK_DIR = "attention"
CHUNK_BYTES = 4 * (1 << 24) * 3  # a row chunk of weights and the temporaries the statistics make of it
DEFAULT_SOURCE = "smollm2-135m-instruct"

HELP = {
    "text": "Any text, up to the model's context (SmolLM2: 8,192 tokens). Every layer and head is analysed; "
            "a 2,048-token text takes about half a minute on a CPU worker.",
    "chat": "Wrap the text as a user's turn in the model's chat template (its special tokens included).",
}


def decoders():
    """The pretrained decoders an attention job can analyse: key -> label."""
    return {key: label for key, (name, label) in PRETRAINED.items()
            if engine_pretrained.PRETRAINED[name].family == "decoder"}


def options():
    out = []
    for key, label in decoders().items():
        name = PRETRAINED[key][0]
        cfg = engine_pretrained.pretrained_config(name)
        out.append({"key": key, "label": label, "context": cfg.block_size, "n_layer": cfg.n_layer,
                    "n_head": cfg.n_head, "chat": engine_pretrained.PRETRAINED[name].chat})
    return {"models": out, "default": DEFAULT_SOURCE, "help": HELP, "limits": {"text_chars": MAX_TEXT_CHARS}}


# ---------------------------------------------------------------------------- validation
def _messages(value, errors):
    if not isinstance(value, list) or not value or len(value) > MAX_MESSAGES:
        errors["messages"] = f"expected a list of 1 to {MAX_MESSAGES} messages {{\"role\", \"content\"}}"
        return None
    out = []
    for i, m in enumerate(value):
        if (not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant")
                or not isinstance(m.get("content"), str)):
            errors["messages"] = (f"message {i + 1}: expected {{\"role\": \"system\" | \"user\" | \"assistant\", "
                                  "\"content\": text}")
            return None
        out.append({"role": m["role"], "content": m["content"]})
    return out


def validate(team, payload):
    """The job's stored settings (``spec["attention"]``) or ``SpecError`` by field. Reads only the
    tokenizer and the model's shape."""
    if not isinstance(payload, dict):
        raise services.SpecError({"request": "expected a JSON object"})
    errors = {}
    source = payload.get("source") or {"pretrained": DEFAULT_SOURCE}
    key = source.get("pretrained") if isinstance(source, dict) else None
    if not isinstance(key, str) or key not in decoders():
        raise services.SpecError({"source": f"choose a pretrained decoder: {{\"pretrained\": one of {list(decoders())}}}"})
    name, label = PRETRAINED[key]
    try:
        tokenizer = _pretrained_tokenizer(name)
        cfg = engine_pretrained.pretrained_config(name)
    except (RuntimeError, OSError, ValueError) as exc:
        raise services.SpecError({"source": str(exc)}) from None

    chat = payload.get("chat", False)
    if not isinstance(chat, bool):
        errors["chat"] = "expected true or false"
    messages = payload.get("messages")
    text = payload.get("text", "")
    if messages is not None:
        messages = _messages(messages, errors)
    elif not isinstance(text, str):
        errors["text"] = "expected a text"
    elif not text.strip():
        errors["text"] = "give a text to analyse (at least a couple of tokens)"
    elif len(text) > MAX_TEXT_CHARS:
        errors["text"] = f"the text has {len(text):,} characters; the limit is {MAX_TEXT_CHARS:,}"
    else:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            errors["text"] = "the text is not valid Unicode (a lone surrogate)"
    if (chat is True or messages) and not hasattr(tokenizer, "apply_chat_template"):
        errors["chat"] = f"{label} has no chat template"
    if errors:
        raise services.SpecError(errors)

    field = "messages" if messages else "text"
    if messages:
        model_text = tokenizer.apply_chat_template(messages, add_generation_prompt=False)
    elif chat:
        model_text = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=False)
    else:
        model_text = text
    n = len(tokenizer.encode(model_text))
    if n > cfg.block_size:
        raise services.SpecError({field: (
            f"the text has {n:,} tokens, more than {label.split(' (')[0]}'s context of {cfg.block_size:,} tokens: "
            f"shorten it by {n - cfg.block_size:,} tokens")})
    if n < MIN_TOKENS:
        raise services.SpecError({field: f"the text has {n} token; give at least {MIN_TOKENS}"})
    out = {"source": {"pretrained": key, "name": label, "family": cfg.family}, "n_tokens": n,
           "chat": bool(chat) or bool(messages)}
    out.update({"messages": messages} if messages else {"text": text})
    return out, cfg


def model_text(spec, tokenizer):
    """What the model reads: the text, or the chat turn(s) in its template."""
    if spec.get("messages"):
        return tokenizer.apply_chat_template(spec["messages"], add_generation_prompt=False)
    if spec.get("chat"):
        return tokenizer.apply_chat_template([{"role": "user", "content": spec["text"]}], add_generation_prompt=False)
    return spec["text"]


def memory_bytes(spec, cfg):
    """The forward's inference memory at the text's length, the kept queries and keys (float16) and
    the statistics' row chunks."""
    t = spec["n_tokens"]
    forward = engine.analyze(cfg, batch_size=1, seq_len=t)["memory"]["inference"]["total"]
    kept = 6 * cfg.n_layer * (cfg.n_head + (cfg.n_kv_head or cfg.n_head)) * t * cfg.head_size  # float32 and 16
    return forward + kept + CHUNK_BYTES


def create_attention_job(user, team, payload, name="", priority="normal"):
    from explorer.jobs import submission

    return submission.submit(user, team, "attention", payload, name=name, priority=priority)


# ---------------------------------------------------------------------------- the run (in a worker)
def qk_dir(job_id):
    return os.path.join(job_dir(job_id), QK_DIR)


def layer_path(job_id, layer):
    return os.path.join(qk_dir(job_id), f"layer-{layer:02d}.pt")


def _save(obj, path):
    torch.save(obj, path + ".tmp")
    os.replace(path + ".tmp", path)


def kept_bytes(job_id):
    """The size of a job's kept queries and keys."""
    d = qk_dir(job_id)
    return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d)) if os.path.isdir(d) else 0


def _b64(t):
    import base64

    return base64.b64encode(t.contiguous().numpy().tobytes()).decode("ascii")


def heads_event(result: AttentionAnalysis, seconds) -> dict:
    n_layer, n_head = result.stats["entropy"].shape
    return events.AttentionHeadsEvent(
        kind="attention_heads", n_tokens=result.n_tokens, n_layer=n_layer, n_head=n_head,
        n_kv_head=result.k.size(1),
        stats={k: [[round(float(v), 5) for v in row] for row in result.stats[k]] for k in STATS},
        overview={"shape": list(result.overview.shape), "block": result.block, "encoding": "uint8-log-base64",
                  "maps": _b64(encode_log(result.overview))},
        seconds=round(seconds, 3),
    )


def _explain(exc):
    return str(exc) if isinstance(exc, ValueError) else None


def run_job(job_id, worker_name):
    """Run a queued attention job (``lifecycle.job_run``). Returns its final status."""
    with lifecycle.job_run(job_id, worker_name, what="attention job", explain=_explain) as run:
        if run is None:
            return None
        recorder, spec = run.recorder, run.job.spec["attention"]
        progress = _Progress(recorder, run.should_stop)
        progress(0.0, "loading", "loading the model", force=True)
        model, tokenizer = engine_pretrained.load_pretrained(PRETRAINED[spec["source"]["pretrained"]][0])
        ids = tokenizer.encode(model_text(spec, tokenizer))
        n_params = sum(p.numel() for p in model.parameters())
        Job.objects.filter(pk=job_id).update(params=n_params)
        recorder(events.StartEvent(kind="start", total_steps=100, device=str(next(model.parameters()).device),
                                   family=model.config.family, params=n_params, source=spec["source"]))
        progress(0.02, "forward", f"{len(ids):,} tokens through {model.config.n_layer} layers", force=True)
        started = time.perf_counter()
        labels = label_tokens(ids, tokenizer)

        def on_layer(phase, layer, n_layer):
            if phase == "forward":
                progress(0.02 + 0.18 * (layer + 1) / n_layer, "forward", f"forward: layer {layer + 1} of {n_layer}")
            else:
                progress(0.25 + 0.7 * (layer + 1) / n_layer, "statistics",
                         f"statistics of every head's full map: layer {layer + 1} of {n_layer}")

        os.makedirs(qk_dir(job_id), exist_ok=True)
        _save({"attention": model.config.attention, "config": model.config.to_dict(), "ids": ids,
               "n_layer": model.config.n_layer}, os.path.join(qk_dir(job_id), "meta.pt"))

        def on_scores(layer, n_layer, q, k):  # a layer's maps can be drawn from now on
            _save({"q": q, "k": k}, layer_path(job_id, layer))
            if layer == 0:
                recorder(events.AttentionTokensEvent(
                    kind="attention_tokens", n_tokens=len(ids), n_layer=n_layer, n_head=q.size(0),
                    n_kv_head=k.size(0), tokens=labels, seconds=round(time.perf_counter() - started, 3)))
                recorder.flush()  # sent and saved now: a page opened meanwhile finds it

        def on_forward(q, k):
            progress(0.25, "statistics", "every layer's maps are ready; statistics of every head's full map",
                     force=True)

        result = analyze_attention(model, torch.tensor(ids), cells=OVERVIEW_CELLS, on_layer=on_layer,
                                   on_scores=on_scores, on_forward=on_forward)
        seconds = time.perf_counter() - started
        recorder(heads_event(result, seconds))
        recorder.summary.update({"n_tokens": len(ids), "seconds": round(seconds, 2)})
        progress(1.0, "done", force=True)
        recorder(events.EndEvent(kind="end", reason="finished", step=100, elapsed=round(run.elapsed(), 3)))
    return run.status


# ---------------------------------------------------------------------------- a head's map (web process)
KEPT = 64  # kept files open (memory-mapped): a job's meta and its layers
_kept: OrderedDict = OrderedDict()
_lock = threading.Lock()


class NoMaps(Exception):
    """A 404: the job has no maps (not an attention job, or it ended without them)."""


class NotYet(Exception):
    """A 409: the job runs and has not reached that layer yet; ask again shortly."""


class BadHead(Exception):
    def __init__(self, errors):
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def _load(path):
    """A kept file, memory-mapped, cached by path and modification time."""
    key = (path, os.path.getmtime(path))
    with _lock:
        if key not in _kept:
            _kept[key] = torch.load(path, mmap=True, weights_only=True)
            while len(_kept) > KEPT:
                _kept.popitem(last=False)
        _kept.move_to_end(key)
        return _kept[key]


def _open(job, layer):
    """(meta, the layer's {"q", "k"}, the attention pattern); ``NotYet`` while the job has not reached it."""
    running = job.status in (Job.Status.QUEUED, Job.Status.RUNNING)
    try:
        meta = _load(os.path.join(qk_dir(job.pk), "meta.pt"))
    except OSError:
        if running:
            raise NotYet(f"{job.display_name} has not started its forward yet") from None
        raise NoMaps(f"{job.display_name} has no attention maps") from None
    if not 0 <= layer < meta["n_layer"]:
        raise BadHead({"layer": f"must be between 0 and {meta['n_layer'] - 1} (got {layer})"})
    try:
        qk = _load(layer_path(job.pk, layer))
    except OSError:
        if running:
            raise NotYet(f"layer {layer} is not computed yet; the forward is on its way there") from None
        raise NoMaps(f"{job.display_name} has no maps of layer {layer}") from None
    cfg = engine.ModelConfig.from_dict(meta["config"])
    return meta, qk, engine.ATTENTIONS[meta["attention"]](cfg)


def head(job, *, layer=0, head=0, q0=0, q1=None, k0=0, k1=None, cells=MAX_SIDE):
    """One head's map as bytes on the log scale, with what describes it: (bytes, meta). The whole
    map by default; ``cells`` (≤ MAX_SIDE) bounds a side, pooled beyond it (a pooled cell: the mean
    over its queries of the mass its keys get)."""
    if job.kind != "attention":
        raise NoMaps(f"{job.display_name} is not an attention job")
    _, qk, pattern = _open(job, layer)
    n_head, t, _ = qk["q"].shape
    q1 = t if q1 is None else q1
    k1 = t if k1 is None else k1
    errors = {}
    for name, value, lo, hi in (("head", head, 0, n_head - 1), ("q0", q0, 0, t - 1), ("k0", k0, 0, t - 1),
                                ("q1", q1, q0 + 1, t), ("k1", k1, k0 + 1, t), ("cells", cells, 1, MAX_SIDE)):
        if not lo <= value <= hi:
            errors[name] = f"must be between {lo} and {hi} (got {value})"
    if errors:
        raise BadHead(errors)
    started = time.perf_counter()
    n_kv = qk["k"].size(0)
    kv = head // (n_head // n_kv)
    scores = LayerScores(pattern, qk["q"][head:head + 1][None], qk["k"][kv:kv + 1][None], 0, None)
    with torch.no_grad():
        out = head_map(scores, 0, q0, q1, k0, k1, max_cells=cells)
    codes = encode_log(out["weights"]).contiguous()
    meta = {"layer": layer, "head": head, "q": [q0, q1], "k": [k0, k1], "block": out["block"],
            "shape": list(codes.shape), "n_tokens": t, "encoding": "uint8-log", "floor": LOG_FLOOR,
            "ms": round(1000 * (time.perf_counter() - started), 1)}
    return codes.numpy().tobytes(), meta
