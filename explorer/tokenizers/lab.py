"""The tokenization lab's service layer: the one place the web app meets ``engine.tokenlab``.

Built-in tokenizers are named by string ("byte", "char", "minilm-wordpiece"); a team's own are
``Tokenizer`` rows named by id, and a user reaches only their team's (an unknown id and another
team's id get the same answer). Training on a small corpus happens in the request; a larger one
becomes a ``Job`` of kind "tokenizer" on the CPU queue, run in a worker by
``explorer.tokenizers.jobs.run_tokenizer_job`` with the same event log, heartbeat, cancel and
reaper as a training job.
"""
import functools
import logging
import math
import os

from django.conf import settings
from django.core.files.base import ContentFile

from engine import tokenlab
from explorer.datasets.models import Dataset
from explorer.jobs import services
from explorer.jobs.models import Job
from explorer.pretrained.models import UploadedModel
from explorer.tokenizers import jobs as tokenizer_jobs
from explorer.tokenizers.models import Tokenizer

log = logging.getLogger(__name__)

MAX_COMPARED = 4
MAX_TEXT_CHARS = 200_000         # the lab must handle 100k characters; twice that is refused
MAX_REPLAY_CHARS = 20_000
MAX_REPLAY_STEPS = 64
SYNC_MAX_BYTES = 1_100_000       # a corpus up to ~1 MB trains in the request; larger ones in a worker
CORPUS_SIZES = [200_000, 1_000_000, 2_000_000, 5_000_000]  # bytes taken from a built-in corpus
MAX_VOCAB = 200_000


class LabError(ValueError):
    """A request the lab refuses (a 400); ``field`` names the input at fault when there is one."""

    def __init__(self, message, field=None):
        super().__init__(message)
        self.field = field


class UnknownTokenizer(LabError):
    """No such tokenizer for this team: the same message whether it exists elsewhere or not."""


def sync_max_bytes():
    return getattr(settings, "TOKENIZER_SYNC_MAX_BYTES", SYNC_MAX_BYTES)


# ---------------------------------------------------------------------------- options
def options():
    """What the lab's forms offer, straight from the engine's registries."""
    return {
        "kinds": dict(tokenlab.KINDS),
        "normalizations": list(tokenlab.NORMALIZATIONS),
        "pre_tokenizers": list(tokenlab.PRE_TOKENIZERS),
        "corpora": dict(tokenlab.CORPORA),
        "corpus_sizes": CORPUS_SIZES,
        "builtins": [{"id": key, "name": key, "description": desc} for key, desc in tokenlab.BUILTINS.items()],
        "max_compared": MAX_COMPARED,
        "max_text_chars": MAX_TEXT_CHARS,
        "sync_max_bytes": sync_max_bytes(),
    }


# ---------------------------------------------------------------------------- rows
def team_tokenizers(team):
    return Tokenizer.objects.filter(team=team).select_related("owner", "job")


def refresh_status(t):
    """A training row whose job ended without finishing it (cancelled, reaped) is failed, with the reason."""
    if t.status == Tokenizer.Status.TRAINING and t.job_id and t.job.status in Job.TERMINAL:
        t.refresh_from_db()
        if t.status == Tokenizer.Status.TRAINING:
            t.status = Tokenizer.Status.FAILED
            t.error = t.job.error or f"the training job was {t.job.status}"
            t.save(update_fields=["status", "error"])
    return t


def tokenizer_to_dict(t):
    refresh_status(t)
    return {
        "id": t.pk,
        "name": t.name,
        "kind": t.kind,
        "vocab_size": t.vocab_size,
        "settings": t.settings,
        "corpus": t.corpus,
        "status": t.status,
        "error": t.error,
        "owner": t.owner.get_username() if t.owner_id else None,
        "created_at": t.created_at.isoformat(),
        "job": t.job_id,
        "job_url": f"/jobs/{t.job_id}/" if t.job_id else None,
        "download_url": f"/api/v1/tokenizers/{t.pk}/download" if t.status == Tokenizer.Status.READY else None,
        "builtin": False,
    }


def catalogue(team):
    """Built-ins first, then the team's tokenizers (newest first)."""
    builtins = [{"id": key, "name": key, "kind": key, "description": desc, "status": "ready", "builtin": True}
                for key, desc in tokenlab.BUILTINS.items()]
    builtins += [_model_entry(m) for m in UploadedModel.objects.filter(team=team)]
    return {"builtins": builtins, "tokenizers": [tokenizer_to_dict(t) for t in team_tokenizers(team)]}


MODEL_PREFIX = "upload-"  # an uploaded model's tokenizer: its key among the inference sources


def _model_tokenizer(model):
    path = model.path / "tokenizer.json"
    try:
        return _load_file(str(path), os.path.getmtime(path))
    except (OSError, ValueError) as exc:
        raise LabError(f"the tokenizer of model {model.name!r} cannot be read: {exc}", "tokenizers") from None


def _model_entry(model):
    """One of the team's uploaded models (``explorer.pretrained``), as a fixed entry of the catalogue."""
    try:
        tok = _model_tokenizer(model)
    except LabError:
        return {"id": model.key, "name": model.name, "kind": "missing", "status": "failed", "builtin": False,
                "model": True, "description": "its tokenizer cannot be read"}
    return {"id": model.key, "name": f"{model.name} (model)", "kind": tok.kind, "vocab_size": tok.vocab_size,
            "status": "ready", "builtin": False, "model": True,
            "description": f"the tokenizer of your team's uploaded {model.model_type} model {model.name}"}


def get_tokenizer(team, pk):
    try:
        t = team_tokenizers(team).filter(pk=int(pk)).first()
    except (TypeError, ValueError):
        t = None
    if t is None:
        raise UnknownTokenizer(f"no tokenizer {pk!r} in team {team.name}")
    return refresh_status(t)


@functools.lru_cache(maxsize=16)
def _load_file(path, mtime):
    with open(path, "rb") as f:
        data = f.read()
    return tokenlab.load(data, os.path.basename(path).split("-", 1)[-1])


def load(t):
    """The engine's tokenizer for a ready row (cached by file and modification time)."""
    if t.status != Tokenizer.Status.READY or not t.file:
        raise LabError(f"tokenizer {t.name!r} is {t.status}, not ready")
    path = t.file.path
    try:
        return _load_file(path, os.path.getmtime(path))
    except FileNotFoundError:
        raise LabError(f"the file of tokenizer {t.name!r} is missing") from None


def resolve(team, ref):
    """``(id, name, LabTokenizer)`` for a built-in name or one of the team's tokenizer ids."""
    key = str(ref).strip()
    if key in tokenlab.BUILTINS:
        try:
            return key, key, tokenlab.builtin(key)
        except ValueError as exc:  # a built-in whose files are not installed here
            raise LabError(str(exc), "tokenizers") from None
    if key.startswith(MODEL_PREFIX) and key[len(MODEL_PREFIX):].isdigit():
        model = UploadedModel.objects.filter(team=team, pk=int(key[len(MODEL_PREFIX):])).first()
        if model is None:
            raise UnknownTokenizer(f"no uploaded model {key!r} in team {team.name}")
        return key, model.name, _model_tokenizer(model)
    if not key.isdigit():
        raise UnknownTokenizer(f"unknown tokenizer {key!r}; choose from {sorted(tokenlab.BUILTINS)} or your team's ids")
    t = get_tokenizer(team, key)
    return str(t.pk), t.name, load(t)


# ---------------------------------------------------------------------------- tokenizing
def check_text(text, limit=MAX_TEXT_CHARS, field="text"):
    if not isinstance(text, str):
        raise LabError("text must be a string", field)
    if len(text) > limit:
        raise LabError(f"text is {len(text):,} characters; the limit is {limit:,}", field)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise LabError(f"text is not valid Unicode: a lone surrogate (U+{ord(text[exc.start]):04X}) "
                       f"at character {exc.start}", field) from None
    return text


def clean(value):
    """JSON-safe: tuples to lists, NaN/inf to None, numpy scalars to Python numbers."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return clean(value.item())
    return value


def tokenize(team, refs, text):
    """Encode ``text`` with 1-4 tokenizers: tokens, character offsets, flags and metrics for each,
    and the engine's comparison (cost and compute ratios, a sentence)."""
    if not isinstance(refs, list) or not refs:
        raise LabError("choose at least one tokenizer", "tokenizers")
    if len(refs) > MAX_COMPARED:
        raise LabError(f"compare at most {MAX_COMPARED} tokenizers at once ({len(refs)} given)", "tokenizers")
    check_text(text)
    results = []
    for ref in refs:
        key, name, tok = resolve(team, ref)
        enc = tok.encode(text)
        metrics = tokenlab.metrics(tok, text, enc)
        results.append(clean({
            "tokenizer": key,
            "name": name,
            "kind": tok.kind,
            "vocab_size": tok.vocab_size,
            "ids": list(enc.ids),
            "tokens": list(enc.tokens),
            "display": list(enc.display),
            "offsets": [list(o) for o in enc.offsets],
            "byte_fallback": list(enc.byte_fallback),
            "unk": list(enc.unk),
            "char_group": list(enc.char_group) if getattr(enc, "char_group", None) is not None else None,
            "metrics": {"name": name, **metrics},
        }))
    comparison = clean(tokenlab.compare([r["metrics"] for r in results]))
    return {"text_chars": len(text), "results": results, "comparison": comparison}


def replay_merges(team, pk, text, steps):
    t = get_tokenizer(team, pk)
    tok = load(t)
    check_text(text, MAX_REPLAY_CHARS)
    merges = tok.merges()
    if not merges:
        raise LabError(f"{t.name} is a {t.kind} tokenizer with no merges; merge replay needs a BPE one", "tokenizer")
    if not isinstance(steps, list) or not steps or len(steps) > MAX_REPLAY_STEPS:
        raise LabError(f"give 1 to {MAX_REPLAY_STEPS} merge steps", "steps")
    try:
        steps = sorted({max(0, min(int(s), len(merges))) for s in steps})
    except (TypeError, ValueError):
        raise LabError("steps must be whole numbers", "steps") from None
    return {"tokenizer": t.pk, "n_merges": len(merges), "merges": [list(m) for m in merges[: max(steps)]],
            "replay": clean(tokenlab.merge_replay(tok, text, steps))}


def describe(t):
    out = tokenizer_to_dict(t)
    if t.status == Tokenizer.Status.READY:
        merges = load(t).merges()
        out["n_merges"] = None if merges is None else len(merges)
    return out


# ---------------------------------------------------------------------------- training
def _settings_from(payload):
    """Validate the training form; returns the settings the engine gets (and the row keeps)."""
    kind = payload.get("kind") or "bpe"
    if kind not in tokenlab.KINDS:
        raise LabError(f"unknown kind {kind!r}; choose from {list(tokenlab.KINDS)}", "kind")
    try:
        vocab_size = int(payload.get("vocab_size") or 0)
    except (TypeError, ValueError):
        raise LabError("vocab_size must be a whole number", "vocab_size") from None
    if kind not in ("char", "byte") and not 1 <= vocab_size <= MAX_VOCAB:
        raise LabError(f"vocab_size must be between 1 and {MAX_VOCAB:,}", "vocab_size")
    normalization = payload.get("normalization") or "nfc"
    if normalization not in tokenlab.NORMALIZATIONS:
        raise LabError(f"unknown normalization {normalization!r}; choose from {list(tokenlab.NORMALIZATIONS)}",
                       "normalization")
    pre = payload.get("pre_tokenizer") or None
    if pre is not None and pre not in tokenlab.PRE_TOKENIZERS:
        raise LabError(f"unknown pre_tokenizer {pre!r}; choose from {list(tokenlab.PRE_TOKENIZERS)}", "pre_tokenizer")
    special = payload.get("special_tokens") or []
    if isinstance(special, str):
        special = [s.strip() for s in special.replace("\n", ",").split(",")]
    if not isinstance(special, list) or not all(isinstance(s, str) for s in special):
        raise LabError("special_tokens must be a list of strings", "special_tokens")
    special = [s for s in special if s][:64]
    return {"kind": kind, "vocab_size": vocab_size, "normalization": normalization,
            "lowercase": bool(payload.get("lowercase")), "pre_tokenizer": pre, "special_tokens": special}


def _corpus_from(team, payload):
    """``(texts, description, spec)``: the corpus to train on; ``spec`` lets a worker rebuild it."""
    corpus = str(payload.get("corpus") or "")
    extra = payload.get("extra_text") or ""
    check_text(extra, limit=settings.UPLOAD_MAX_BYTES, field="extra_text")
    try:
        max_bytes = int(payload.get("corpus_bytes") or 1_000_000)
    except (TypeError, ValueError):
        raise LabError("corpus_bytes must be a whole number", "corpus_bytes") from None
    max_bytes = max(10_000, min(max_bytes, max(CORPUS_SIZES)))
    if corpus in tokenlab.CORPORA:
        text, description = tokenlab.corpus_text(corpus, max_bytes=max_bytes), f"{corpus} corpus"
        spec = {"corpus": corpus, "corpus_bytes": max_bytes}
    elif corpus.startswith("dataset:"):
        ref = corpus.partition(":")[2]
        dataset = Dataset.objects.filter(team=team, pk=int(ref)).first() if ref.isdigit() else None
        if dataset is None:
            raise LabError(f"no dataset {ref!r} in team {team.name}", "corpus")
        with dataset.file.open("rb") as f:
            text = f.read().decode("utf-8")
        description, spec = f"dataset {dataset.name}", {"corpus": corpus, "dataset_path": dataset.file.path}
    elif corpus == "text":
        text = check_text(payload.get("text") or "", limit=settings.UPLOAD_MAX_BYTES)
        if not text.strip():
            raise LabError("paste some text to train on", "text")
        description, spec = f"pasted text ({len(text):,} characters)", {"corpus": "text"}
    else:
        raise LabError(f"unknown corpus {corpus!r}; choose from {list(tokenlab.CORPORA)}, "
                       "'dataset:<id>' or 'text'", "corpus")
    texts = [text] + ([extra] if extra.strip() else [])
    if extra.strip():
        description += f" + {len(extra):,} pasted characters"
    return texts, description, spec


def save_file(t, tok):
    data, filename = tok.to_bytes()
    t.file.save(filename, ContentFile(data), save=False)


def train_tokenizer(settings_, texts, progress=None):
    s = dict(settings_)
    kind, vocab_size = s.pop("kind"), s.pop("vocab_size")
    try:
        return tokenlab.train(kind, texts, vocab_size=vocab_size, progress=progress, **s)
    except ValueError as exc:
        message = str(exc)
        field = next((f for f in ("vocab_size", "pre_tokenizer", "special_tokens", "normalization") if f in message), None)
        raise LabError(message, field) from None


def train(user, team, payload, priority="normal"):
    """Train a tokenizer: at once for a small corpus (returns ``(tokenizer, None)``), else as a job
    (returns ``(tokenizer, job)`` with the row in status "training") submitted like every job
    (``explorer.jobs.submission``: priority, quota, rate limit, fit), which waits its turn among
    the CPU queue's jobs of every kind, at ``priority`` (``explorer.jobs.queue``)."""
    from explorer.jobs import queue as scheduling
    from explorer.jobs import submission

    if not isinstance(payload, dict):
        raise LabError("expected a JSON object")
    try:
        scheduling.check_priority(user, team, priority or "normal")
    except (ValueError, scheduling.NotAllowed) as exc:
        raise LabError(str(exc), "priority") from None
    s = _settings_from(payload)
    texts, description, corpus_spec = _corpus_from(team, payload)
    size = sum(len(t.encode("utf-8")) for t in texts)
    name = services.storable(str(payload.get("name") or "").strip()[:200]) or f"{s['kind']}-{s['vocab_size']}"
    if size <= sync_max_bytes():
        tok = train_tokenizer(s, texts)
        t = Tokenizer(team=team, owner=user, name=services.storable(name), kind=tok.kind,
                      settings=services.storable(clean(tok.settings or s)),
                      vocab_size=tok.vocab_size, corpus=description[:300])
        save_file(t, tok)
        t.save()
        return t, None
    made = {}

    def make_row(job):
        """The Tokenizer row, in status "training"; a worker rebuilds the corpus, and pasted text
        goes to a file it reads (the path is the app's, never the user's)."""
        made["tokenizer"] = Tokenizer.objects.create(team=team, owner=user, name=services.storable(name), kind=s["kind"],
                                                     settings=services.storable(s), corpus=description[:300],
                                                     status=Tokenizer.Status.TRAINING, job=job)
        paths = {"dataset_path": corpus_spec.get("dataset_path")}
        if corpus_spec["corpus"] == "text" or len(texts) > 1:
            pasted = texts[0] if corpus_spec["corpus"] == "text" else ""
            paths["pasted_path"] = tokenizer_jobs.write_scratch(team, "pasted", pasted)
            paths["extra_path"] = tokenizer_jobs.write_scratch(team, "extra", texts[-1] if len(texts) > 1 else "")
        # "path" keys are the app's, hidden from pages like a dataset's path
        Job.objects.filter(pk=job.pk).update(spec={"tokenizer": {**job.spec["tokenizer"], "path": paths}})

    prepared = {"settings": s, "name": name, "size_bytes": size, "corpus_spec": corpus_spec}
    try:
        job = submission.submit(user, team, "tokenizer", prepared, priority=priority, before_enqueue=make_row)
    except services.SpecError as exc:
        field, message = next(iter(exc.errors.items()))
        raise LabError(message, field) from None
    job.refresh_from_db()
    return made["tokenizer"], job


def import_file(user, team, upload, name=""):
    if upload.size > settings.UPLOAD_MAX_BYTES:
        raise LabError(f"{upload.name} is {upload.size / 2**20:.1f} MiB; the limit is "
                       f"{settings.UPLOAD_MAX_BYTES / 2**20:.0f} MiB", "file")
    data = upload.read(settings.UPLOAD_MAX_BYTES + 1)
    try:
        tok = tokenlab.load(data, upload.name or "tokenizer.json")
    except ValueError as exc:
        raise LabError(f"{upload.name} is not a tokenizer the lab can read: {exc}", "file") from None
    t = Tokenizer(team=team, owner=user, name=services.storable((name or upload.name or "imported")[:200]), kind=tok.kind,
                  settings=clean(tok.settings or {}), vocab_size=tok.vocab_size, corpus=f"imported from {upload.name}"[:300])
    save_file(t, tok)
    t.save()
    return t


def download(t):
    """``(bytes, filename)`` of a ready tokenizer's file."""
    if t.status != Tokenizer.Status.READY or not t.file:
        raise LabError(f"tokenizer {t.name!r} is {t.status}, not ready")
    stored = os.path.basename(t.file.name).split("-", 1)[-1]
    with t.file.open("rb") as f:
        return f.read(), stored


def delete(t):
    if t.job_id and t.job.status in (Job.Status.QUEUED, Job.Status.RUNNING):
        services.cancel_job(t.job)
    if t.file:
        t.file.delete(save=False)
    t.delete()


# ---------------------------------------------------------------------------- the composer
def bind_tokenizer_file(team, data):
    """For a training job's data section: ``tokenizer_id`` (one of the team's ready tokenizers)
    becomes the engine's ``tokenizer_file`` path, set by the app only. Returns errors by field."""
    data.pop("tokenizer_file", None)
    ref = data.pop("tokenizer_id", None)
    if data.get("tokenizer") != "file":
        return {}
    if ref in (None, ""):
        return {"data.tokenizer_id": "choose one of your team's tokenizers (train one under Tokenizers)"}
    try:
        t = get_tokenizer(team, ref)
    except UnknownTokenizer as exc:
        return {"data.tokenizer_id": str(exc)}
    if t.status != Tokenizer.Status.READY or not t.file:
        return {"data.tokenizer_id": f"tokenizer {t.name!r} is {t.status}, not ready"}
    data["tokenizer_file"] = t.file.path
    return {}


def ready_choices(team):
    return [(str(t.pk), f"{t.name} ({t.kind}, {t.vocab_size:,})")
            for t in team_tokenizers(team).filter(status=Tokenizer.Status.READY)]
