"""The training job kind's validation and run: the composer's options and presets, a payload
turned into the engine's spec (files by id: a team's dataset, tokenizer, or another job's
checkpoint), the live estimate, submission, and the run on a worker."""
import functools

from django.conf import settings

import engine
import engine.training.checkpoint as engine_checkpoint
from explorer.datasets.models import Dataset
from explorer.jobs import submission
from explorer.jobs.lifecycle import job_run
from explorer.jobs.services import SERVER_PATHS, SpecError
from explorer.tokenizers.lab import bind_tokenizer_file
from explorer.training.checkpoints import architecture_errors, bind_init_from, job_dir


def composer_options(team):
    """What the composer offers: the engine's fields and registries, and the team's datasets."""
    from explorer.scheduling import workers  # it imports this module

    return {
        "fields": engine.field_specs(),
        "choices": engine.choices(),
        "attention_kinds": engine.describe_attentions(),
        "datasets": [
            {"id": d.pk, "name": d.name, "size_bytes": d.size_bytes, "n_chars": d.n_chars}
            for d in Dataset.objects.filter(team=team)
        ],
        # the largest registered worker's usable memory per queue (the fit gate's limit)
        "memory_budget_bytes": {q: workers.capacity(q) for q in settings.WORKER_MEMORY_BUDGET_MB},
    }


def composer_options_choices():
    """The engine's registry choices by field key (family, attention, norm ...)."""
    return engine.choices()


def _holds(condition, value):
    if isinstance(condition, dict):
        return (value is not None and value >= condition.get("min", value) and value <= condition.get("max", value))
    return value in condition


def field_applies(name, flat):
    """Whether field ``name`` ("section.key") matters given the other values, ``flat`` by
    "section.key" (the engine's ``show_if``: no window without sliding attention...)."""
    show_if = _show_if(tuple(engine.ATTENTIONS.items()))
    return all(_holds(cond, flat.get(other)) for other, cond in (show_if.get(name) or {}).items())


@functools.lru_cache(maxsize=4)
def _show_if(attentions):
    """Every field's ``show_if``, for the attention kinds registered now (``attentions``, the cache's
    key: a kind registered at run time brings its fields with it)."""
    return {s["name"]: s.get("show_if") for s in engine.field_specs()}


def relevant_config(spec):
    """A job's spec without the fields its other settings make irrelevant (the engine's
    ``show_if``: no window without sliding attention, no expert settings without experts)."""
    flat = {f"{section}.{key}": value for section, values in spec.items() for key, value in values.items()}
    return {
        section: {key: value for key, value in values.items()
                  if f"{section}.{key}" not in SERVER_PATHS and field_applies(f"{section}.{key}", flat)}
        for section, values in spec.items()
    }


# ---------------------------------------------------------------------------- real models
def _preset_summary(name, p):
    params = engine.analyze(p.config)["params"]
    return {"name": name, "description": p.description, "source": p.source, "family": p.config.family,
            "params": params["total"], "active_params": params["active"]}


def list_presets():
    return [_preset_summary(name, p) for name, p in engine.PRESETS.items()]


def get_preset(name):
    """A real model's config and sizes; ``KeyError`` for an unknown name."""
    if name not in engine.PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose from {sorted(engine.PRESETS)}")
    p = engine.PRESETS[name]
    return {**_preset_summary(name, p), "config": p.config.to_dict()}


def preset_form_values(name):
    """The composer's initial values for a preset's architecture (vocabulary comes from the data)."""
    config = get_preset(name)["config"]
    return {f"model.{key}": value for key, value in config.items() if key != "vocab_size" and value is not None}


def import_hf_config(data):
    """An engine config from a Hugging Face ``config.json`` dict; ``SpecError`` names what we can't express."""
    if not isinstance(data, dict):
        raise SpecError({"config": "expected the JSON object of a config.json"})
    try:
        config = engine.config_from_hf(data)
    except engine.ConfigError as exc:
        raise SpecError(exc.errors) from None
    except (ValueError, TypeError, KeyError) as exc:
        raise SpecError({"config": str(exc)}) from None
    params = engine.analyze(config)["params"]
    return {"config": config.to_dict(), "params": params["total"], "active_params": params["active"]}


# ---------------------------------------------------------------------------- validation
def _split_payload(team, payload):
    """Turn the user's payload into the engine's spec dict; user input never names a file path."""
    errors = {}
    if not isinstance(payload, dict):
        raise SpecError({"spec": "expected a JSON object with 'model', 'data' and 'train'"})
    sections = {}
    for section in ("model", "data", "train"):
        value = payload.get(section) or {}
        if not isinstance(value, dict):
            errors[section] = f"'{section}' must be an object"
            value = {}
        sections[section] = dict(value)
    data = sections["data"]
    data.pop("path", None)  # only the app sets paths, from a dataset of the user's team
    dataset_id = data.pop("dataset", None)
    dataset = None
    if data.get("source") in ("text", "jsonl"):
        if dataset_id in (None, ""):
            errors["data.dataset"] = (f"choose an uploaded file for source '{data['source']}' "
                                      "(upload one under Datasets)")
        else:
            try:
                dataset = Dataset.objects.filter(team=team, pk=int(dataset_id)).first()
            except (TypeError, ValueError):
                dataset = None
            if dataset is None:
                errors["data.dataset"] = f"no dataset {dataset_id!r} in team {team.name}"
            else:
                data["path"] = dataset.file.path
    errors.update(bind_tokenizer_file(team, data))  # a lab tokenizer's id -> its file, like a dataset
    errors.update(bind_init_from(team, sections["train"]))  # another job's checkpoint -> its path
    return sections, dataset, errors


def queue_for(spec):
    return "gpu" if spec.train.device == "cuda" else "cpu"


def validate_spec(team, payload, fit=True):
    """Return ``(spec, dataset, analysis)`` or raise ``SpecError`` with every problem found; with
    ``fit``, a model no worker of its queue can hold is one (the composer's live panel; a
    submission applies the fit gate itself, after the quotas: ``explorer.jobs.submission``)."""
    sections, dataset, errors = _split_payload(team, payload)
    spec = None
    try:
        spec = engine.parse_spec(sections)
    except engine.ConfigError as exc:
        # users name files by id
        by_id = {"data.path": "data.dataset", "data.tokenizer_file": "data.tokenizer_id",
                 "train.init_from": "train.init_from_job"}
        for key, message in exc.errors.items():
            errors.setdefault(by_id.get(key, key), message)
    if spec is None or errors:
        raise SpecError(errors)
    errors.update(architecture_errors(spec))
    if spec.train.steps > settings.MAX_STEPS:
        errors["train.steps"] = f"steps ({spec.train.steps}) exceeds this deployment's limit of {settings.MAX_STEPS}"
    analysis = engine.analyze(spec.model, batch_size=spec.train.batch_size)
    if fit:
        from explorer.jobs import kinds
        from explorer.scheduling.workers import FitError, fit_gate

        kind = kinds.get("train")
        try:  # against the memory of the queue's registered workers (WORKER_MEMORY_BUDGET_MB before any)
            fit_gate(queue_for(spec), analysis["memory"]["train_total"], what=kind.fit_what)
        except FitError as exc:
            errors[kind.fit_field] = f"{exc}; {kind.fit_advice}"
    if errors:
        raise SpecError(errors)
    return spec, dataset, analysis


def estimate(team, payload):
    """The composer's live panel: errors by field, and the analysis whenever the model is valid."""
    try:
        spec, _, analysis = validate_spec(team, payload)
    except SpecError as exc:
        return {"valid": False, "errors": exc.errors, **_partial_analysis(team, payload)}
    return {
        "valid": True,
        "errors": {},
        "analysis": analysis,
        "data": engine.describe_data(spec.data, spec.train.objective),
        "queue": queue_for(spec),
        "vocab_size": spec.model.vocab_size,
    }


def _partial_analysis(team, payload):
    """Best effort for an invalid spec: the parameter count still updates while the user types."""
    try:
        sections, _, _ = _split_payload(team, payload)
        data_cfg = engine.DataConfig.from_dict(sections["data"])
        train_cfg = engine.TrainConfig.from_dict(sections["train"])
        described = engine.describe_data(data_cfg, train_cfg.objective)
        model_cfg = engine.ModelConfig.from_dict({**sections["model"], "vocab_size": described["vocab_size"]})
        return {
            "analysis": engine.analyze(model_cfg, batch_size=train_cfg.batch_size),
            "data": described,
            "vocab_size": model_cfg.vocab_size,
        }
    except Exception:  # noqa: BLE001 - any invalid part just means no partial numbers
        return {"analysis": None}


def create_job(user, team, payload, name="", priority="normal"):
    """Submit a training job (``explorer.jobs.submission``: validate, priority, quota, rate limit,
    fit, create, enqueue). ``SpecError`` (by field) for any refusal, ``RateLimited`` over the limit."""
    return submission.submit(user, team, "train", payload, name=name, priority=priority)


def run_job(job_id, worker_name):
    """Run one queued training job to its end (``job_run``: every outcome leaves it terminal).
    Returns its final status, or None when it was no longer queued."""
    with job_run(job_id, worker_name) as run:
        if run is None:
            return None
        spec = engine.parse_spec(run.job.spec)  # again: the data file may have changed since submission
        directory = job_dir(job_id)
        # a retried job (attempt 2, 3...) goes on from its last checkpoint, when it has one
        resume = engine_checkpoint.latest_checkpoint(directory) if run.job.attempt > 1 else None
        result = engine.train(spec, on_event=run.recorder, should_stop=run.should_stop,
                              checkpoint_dir=directory, resume_from=resume)
        if result.cancelled:
            run.cancel()
        elif result.reason == "nonfinite":  # the run's NaN/Inf policy stopped it: a failure, with why
            run.fail(result.message or "training stopped on a non-finite loss")
    return run.status
