"""The one place where the web app meets the engine.

Views, the API, tasks and consumers call these functions; only this module imports ``engine``.
A job's life: ``create_job`` validates the spec with the engine, refuses what cannot fit, saves
the row and enqueues a Celery task; the task calls ``run_job``, which runs ``engine.train`` with
callbacks that append numbered events to the database and broadcast them on the channel layer.
"""
import logging
import threading
import time

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.utils import timezone

import engine
from explorer.models import Dataset, Job, JobEvent

log = logging.getLogger(__name__)


class SpecError(Exception):
    """A job spec the engine or the app refused; ``errors`` maps dotted field names to messages."""

    def __init__(self, errors):
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def job_group(job_id):
    return f"job.{job_id}"


def team_group(team_id):
    return f"team.{team_id}"


def fmt_bytes(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024


# ---------------------------------------------------------------------------- options
def composer_options(team):
    """What the composer offers: the engine's fields and registries, and the team's datasets."""
    return {
        "fields": engine.field_specs(),
        "choices": engine.choices(),
        "datasets": [
            {"id": d.pk, "name": d.name, "size_bytes": d.size_bytes, "n_chars": d.n_chars}
            for d in Dataset.objects.filter(team=team)
        ],
        "memory_budget_bytes": {q: mb * 2**20 for q, mb in settings.WORKER_MEMORY_BUDGET_MB.items()},
    }


def _holds(condition, value):
    if isinstance(condition, dict):
        return (value is not None and value >= condition.get("min", value) and value <= condition.get("max", value))
    return value in condition


def relevant_config(spec):
    """A job's spec without the fields its other settings make irrelevant (the engine's
    ``show_if``: no window without sliding attention, no expert settings without experts)."""
    show_if = {s["name"]: s.get("show_if") for s in engine.field_specs()}
    flat = {f"{section}.{key}": value for section, values in spec.items() for key, value in values.items()}
    return {
        section: {
            key: value for key, value in values.items()
            if key != "path" and all(_holds(cond, flat.get(other)) for other, cond in (show_if.get(f"{section}.{key}") or {}).items())
        }
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
    if data.get("source") == "text":
        if dataset_id in (None, ""):
            errors["data.dataset"] = "choose an uploaded text file for source 'text' (upload one under Datasets)"
        else:
            try:
                dataset = Dataset.objects.filter(team=team, pk=int(dataset_id)).first()
            except (TypeError, ValueError):
                dataset = None
            if dataset is None:
                errors["data.dataset"] = f"no dataset {dataset_id!r} in team {team.name}"
            else:
                data["path"] = dataset.file.path
    return sections, dataset, errors


def queue_for(spec):
    return "gpu" if spec.train.device == "cuda" else "cpu"


def validate_spec(team, payload):
    """Return ``(spec, dataset, analysis)`` or raise ``SpecError`` with every problem found."""
    sections, dataset, errors = _split_payload(team, payload)
    spec = None
    try:
        spec = engine.parse_spec(sections)
    except engine.ConfigError as exc:
        for key, message in exc.errors.items():
            errors.setdefault("data.dataset" if key == "data.path" else key, message)
    if spec is None or errors:
        raise SpecError(errors)
    if spec.train.steps > settings.MAX_STEPS:
        errors["train.steps"] = f"steps ({spec.train.steps}) exceeds this deployment's limit of {settings.MAX_STEPS}"
    analysis = engine.analyze(spec.model, batch_size=spec.train.batch_size)
    queue = queue_for(spec)
    need = analysis["memory"]["train_total"]
    budget = settings.WORKER_MEMORY_BUDGET_MB[queue] * 2**20
    if need > budget:
        errors["train.batch_size"] = (
            f"estimated training memory {fmt_bytes(need)} exceeds the {queue} workers' budget of "
            f"{fmt_bytes(budget)}; lower batch_size, block_size, n_embd or n_layer"
        )
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
        "data": engine.describe_data(spec.data),
        "queue": queue_for(spec),
        "vocab_size": spec.model.vocab_size,
    }


def _partial_analysis(team, payload):
    """Best effort for an invalid spec: the parameter count still updates while the user types."""
    try:
        sections, _, _ = _split_payload(team, payload)
        data_cfg = engine.DataConfig.from_dict(sections["data"])
        described = engine.describe_data(data_cfg)
        model_cfg = engine.ModelConfig.from_dict({**sections["model"], "vocab_size": described["vocab_size"]})
        train_cfg = engine.TrainConfig.from_dict(sections["train"])
        return {
            "analysis": engine.analyze(model_cfg, batch_size=train_cfg.batch_size),
            "data": described,
            "vocab_size": model_cfg.vocab_size,
        }
    except Exception:  # noqa: BLE001 - any invalid part just means no partial numbers
        return {"analysis": None}


# ---------------------------------------------------------------------------- jobs
def create_job(user, team, payload, name=""):
    spec, dataset, analysis = validate_spec(team, payload)
    with transaction.atomic():
        job = Job.objects.create(
            team=team,
            owner=user,
            name=name[:200],
            spec=spec.to_dict(),
            dataset=dataset,
            queue=queue_for(spec),
            params=analysis["params"]["total"],
            total_steps=spec.train.steps,
        )
        append_events(job.pk, [("status", {"status": "queued", "queue": job.queue})])
        transaction.on_commit(lambda: enqueue(job.pk))
    return job


def enqueue(job_id):
    from explorer import tasks  # tasks import this module

    job = Job.objects.get(pk=job_id)
    result = tasks.run_job.apply_async(args=[job.pk], queue=job.queue)
    Job.objects.filter(pk=job.pk).update(celery_task_id=result.id)
    broadcast_team(job.pk)


def append_events(job_id, events, **job_fields):
    """Append ``(kind, data)`` events to a job's log and update the job row, atomically.

    Sequence numbers come from the job row inside the transaction, so every writer (worker, web,
    reaper) numbers events without gaps or collisions. Returns the messages to broadcast.
    """
    now = time.time()
    with transaction.atomic():
        last_seq = Job.objects.select_for_update().filter(pk=job_id).values_list("last_seq", flat=True).get()
        rows = [
            JobEvent(job_id=job_id, seq=last_seq + i, kind=kind, payload=data, ts=data.pop("_ts", now))
            for i, (kind, data) in enumerate(events, start=1)
        ]
        JobEvent.objects.bulk_create(rows)
        Job.objects.filter(pk=job_id).update(last_seq=last_seq + len(rows), **job_fields)
    return [row.as_message() for row in rows]


def publish(job_id, messages, team_id=None):
    """Send a batch of events to the job's websocket group in one message (one event-loop hop)."""
    if not messages and team_id is None:
        return
    brief = job_brief_by_id(job_id) if team_id is not None else None

    async def send():
        layer = get_channel_layer()
        if messages:
            await layer.group_send(job_group(job_id), {"type": "job.events", "events": messages})
        if brief is not None:
            await layer.group_send(team_group(team_id), {"type": "team.job", "job": brief})

    try:
        async_to_sync(send)()
    except Exception:  # noqa: BLE001 - events are saved; clients catch up from the log on reconnect
        log.warning("could not broadcast %d events of job %s", len(messages), job_id, exc_info=True)


def job_brief_by_id(job_id):
    job = Job.objects.select_related("owner", "team").get(pk=job_id)
    return job_to_dict(job, position=queue_positions([job]).get(job.pk))


def broadcast_team(job_id):
    job = Job.objects.only("team_id").get(pk=job_id)
    publish(job_id, [], team_id=job.team_id)


def record_status(job_id, status, *, expect=None, **fields):
    """Move a job to a new status, log it as an event and tell the job's and team's watchers.

    With ``expect`` (statuses), the move happens only from one of them; returns whether it did.
    """
    data = {"status": status}
    for key in ("error", "worker", "device"):
        if fields.get(key):
            data[key] = fields[key]
    if status in Job.TERMINAL:
        fields.setdefault("finished_at", timezone.now())
    with transaction.atomic():
        if expect is not None and not Job.objects.select_for_update().filter(pk=job_id, status__in=expect).exists():
            return False
        messages = append_events(job_id, [("status", data)], status=status, **fields)
    team_id = Job.objects.values_list("team_id", flat=True).get(pk=job_id)
    publish(job_id, messages, team_id=team_id)
    return True


def cancel_job(job):
    """Cancel a queued job at once; ask a running one to stop at its next step.

    Returns False when the job had already ended. A queued job's task, when a worker takes it,
    finds the job cancelled and returns without running.
    """
    if record_status(job.pk, Job.Status.CANCELLED, expect=[Job.Status.QUEUED], cancel_requested=True):
        return True
    return bool(Job.objects.filter(pk=job.pk, status=Job.Status.RUNNING).update(cancel_requested=True))


def queue_positions(jobs):
    """Place in line (1 = next) of each queued job among all queued jobs of its queue."""
    queues = {j.queue for j in jobs if j.status == Job.Status.QUEUED}
    positions = {}
    for queue in queues:
        ids = Job.objects.filter(queue=queue, status=Job.Status.QUEUED).order_by("created_at", "pk").values_list("pk", flat=True)
        positions.update({pk: i for i, pk in enumerate(ids, start=1)})
    return {j.pk: positions.get(j.pk) for j in jobs}


def job_to_dict(job, position=None):
    return {
        "id": job.pk,
        "name": job.display_name,
        "team": {"id": job.team_id, "name": job.team.name},
        "owner": job.owner.get_username(),
        "status": job.status,
        "queue": job.queue,
        "position": position,
        "params": job.params,
        "step": job.step,
        "total_steps": job.total_steps,
        "last_seq": job.last_seq,
        "summary": job.summary,
        "worker": job.worker,
        "device": job.device,
        "error": job.error,
        "cancel_requested": job.cancel_requested,
        "created_at": job.created_at.isoformat(),
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "spec": job.spec,
        "dataset": job.dataset.name if job.dataset_id else None,
        "url": f"/jobs/{job.pk}/",
    }


# ---------------------------------------------------------------------------- running (in a worker)
SUMMARY_KEYS = {
    "step": ("loss", "lr", "grad_norm", "tokens_per_s", "elapsed", "eta", "aux_loss"),
    "eval": ("train_loss", "val_loss", "accuracy"),
    "start": ("params", "vocab_size", "tokens_per_step"),
}


class EventRecorder:
    """The engine's ``on_event`` callback: buffers events and flushes them in batches.

    A flush writes the batch in one transaction and broadcasts it in one channel-layer message,
    at most every ``flush_interval`` seconds for step events and at once for anything else.
    """

    def __init__(self, job, flush_interval=0.1, team_interval=1.0):
        self.job_id, self.team_id = job.pk, job.team_id
        self.flush_interval, self.team_interval = flush_interval, team_interval
        self.buffer, self.summary = [], dict(job.summary)
        self.step, self.total_steps, self.device = job.step, job.total_steps, job.device
        self.last_flush = self.last_team = 0.0
        self.lock = threading.Lock()

    def __call__(self, event):
        event = dict(event)
        kind = event.pop("kind")
        event["_ts"] = time.time()
        for key in SUMMARY_KEYS.get(kind, ()):
            if key in event:
                self.summary[key] = event[key]
        if "step" in event:
            self.step = event["step"]
        if kind == "start":
            self.total_steps, self.device = event.get("total_steps", self.total_steps), event.get("device", self.device)
        with self.lock:
            self.buffer.append((kind, event))
        if kind != "step" or time.monotonic() - self.last_flush >= self.flush_interval:
            self.flush()

    def flush(self):
        with self.lock:
            batch, self.buffer = self.buffer, []
        if not batch:
            return
        self.last_flush = now = time.monotonic()
        messages = append_events(
            self.job_id, batch, step=self.step, total_steps=self.total_steps, summary=self.summary,
            device=self.device, heartbeat_at=timezone.now(),
        )
        send_team = now - self.last_team >= self.team_interval
        if send_team:
            self.last_team = now
        publish(self.job_id, messages, team_id=self.team_id if send_team else None)


class Heartbeat(threading.Thread):
    """Marks the job alive every few seconds and notices a cancel request from the web."""

    def __init__(self, job_id, interval=5.0, poll=0.5):
        super().__init__(daemon=True, name=f"heartbeat-{job_id}")
        self.job_id, self.interval, self.poll = job_id, interval, poll
        self.cancelled, self.stopped = threading.Event(), threading.Event()

    def run(self):
        last_beat = time.monotonic()
        try:
            while not self.stopped.wait(self.poll):
                try:
                    row = Job.objects.filter(pk=self.job_id).values("status", "cancel_requested").first()
                    # Stop on a cancel request, or when the job was ended elsewhere (the reaper).
                    if row is None or row["cancel_requested"] or row["status"] != Job.Status.RUNNING:
                        self.cancelled.set()
                    if time.monotonic() - last_beat >= self.interval:
                        Job.objects.filter(pk=self.job_id).update(heartbeat_at=timezone.now())
                        last_beat = time.monotonic()
                except Exception:  # noqa: BLE001 - a database blip must not kill the job
                    log.warning("heartbeat of job %s failed", self.job_id, exc_info=True)
                    close_old_connections()
        finally:
            connection.close()

    def stop(self):
        self.stopped.set()
        self.join(timeout=5)


def run_job(job_id, worker_name):
    """Run one queued job to its end. Every outcome leaves the job in a terminal status."""
    now = timezone.now()
    started = Job.objects.filter(pk=job_id, status=Job.Status.QUEUED, cancel_requested=False).update(
        status=Job.Status.RUNNING, started_at=now, heartbeat_at=now, worker=worker_name
    )
    if not started:
        log.info("job %s is no longer queued; skipping", job_id)
        return None
    job = Job.objects.get(pk=job_id)
    record_status(job.pk, Job.Status.RUNNING, worker=worker_name)
    recorder, heartbeat = EventRecorder(job), Heartbeat(job.pk)
    heartbeat.start()
    status, error = Job.Status.FAILED, ""
    try:
        spec = engine.parse_spec(job.spec)  # again: the data file may have changed since submission
        result = engine.train(spec, on_event=recorder, should_stop=heartbeat.cancelled.is_set)
        status = Job.Status.CANCELLED if result.cancelled else Job.Status.SUCCEEDED
    except engine.ConfigError as exc:
        error = "Invalid job: " + "; ".join(f"{k}: {v}" for k, v in exc.errors.items())
    except Exception as exc:  # noqa: BLE001 - the reason goes on the job; the worker lives on
        log.exception("job %s failed", job_id)
        error = f"{type(exc).__name__}: {exc}"
    finally:
        heartbeat.stop()
    try:
        recorder.flush()
    except Exception:  # noqa: BLE001
        log.exception("could not save the last events of job %s", job_id)
    record_status(job_id, status, expect=[Job.Status.RUNNING], error=error)
    return status


def reap_stale_jobs(timeout_s=None):
    """Fail running jobs whose worker stopped sending heartbeats (killed, lost its host...)."""
    timeout_s = timeout_s or settings.JOB_HEARTBEAT_TIMEOUT_S
    cutoff = timezone.now() - timezone.timedelta(seconds=timeout_s)
    reaped = []
    for job in Job.objects.filter(status=Job.Status.RUNNING, heartbeat_at__lt=cutoff):
        error = (
            f"Worker {job.worker or '?'} stopped responding: no heartbeat for over {timeout_s} s. "
            "The events up to then are kept."
        )
        if record_status(job.pk, Job.Status.FAILED, expect=[Job.Status.RUNNING], error=error):
            reaped.append(job.pk)
    return reaped


def fail_orphaned_jobs(worker_name):
    """At worker start: jobs this worker (by name) was running died with its previous process."""
    orphans = list(Job.objects.filter(status=Job.Status.RUNNING, worker=worker_name).values_list("pk", flat=True))
    for job_id in orphans:
        error = f"Worker {worker_name} restarted while running this job."
        record_status(job_id, Job.Status.FAILED, expect=[Job.Status.RUNNING], error=error)
    return orphans


# ---------------------------------------------------------------------------- analysis report
# ``POST /api/v1/analyze``, the composer's report panel and the compare page: what a model costs
# to train and serve, on every device of the catalogue. Real models are far beyond the composer's
# training bounds, so sizes here are only refused when they are nonsense (negative, zero, a head
# count that does not divide the width), never for being large.
ANALYSIS_MAX_INT = 10**12  # beyond this a "size" is a typo, and the numbers stop meaning anything
CURVE_POINTS = 12
CURVE_MIN_CONTEXT = 64
# sliding, dilated and block-sparse count their mean keys with a loop over positions: their
# curves stop here (the point is the shape, and a request must stay fast)
CURVE_LOOPED_MAX = 2**16
LOOPED_ATTENTIONS = ("sliding", "dilated", "block_sparse")
ANALYSIS_SETTINGS = {
    # name: (kind, default)
    "batch_size": ("int", 1),
    "seq_len": ("int?", None),
    "vocab_size": ("int?", None),
    "dtype": ("choice", "bf16"),
    "optimizer": ("choice", "adamw"),
    "n_gpus": ("int", 1),
    "sharding": ("choice", "none"),
    "activation_checkpointing": ("bool", False),
    "flash_attention": ("bool", False),
    "quantization": ("choice?", None),
    "hardware": ("choice?", None),
    "mfu": ("float", 0.4),
    "price_per_gpu_hour": ("float?", None),
    "train_tokens": ("float?", None),
}


def _analysis_engine_params(fn):
    import inspect

    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return set()


def analysis_options():
    """The choices of the report's settings: the engine's when it lists them, else what the
    engine's tables hold today."""
    from engine import analysis as engine_analysis

    options = None
    if hasattr(engine_analysis, "analysis_options"):
        try:
            options = {k: list(v) for k, v in engine_analysis.analysis_options().items()}
        except Exception:  # noqa: BLE001 - fall back to the tables below
            options = None
    fallback = {
        "dtype": list(getattr(engine_analysis, "DTYPE_BYTES", {"fp32": 4, "bf16": 2, "fp16": 2})),
        "optimizer": list(getattr(engine_analysis, "OPTIMIZER_STATES", {"adamw": 2, "sgd": 0})),
        "sharding": ["none"],
        "quantization": [None],
        "hardware": list(engine.HARDWARE),
    }
    options = {**fallback, **(options or {})}
    if None not in options["quantization"]:
        options["quantization"] = [None] + [q for q in options["quantization"] if q is not None]
    options["devices"] = [{"key": k, "name": d.name, "memory": d.memory} for k, d in engine.HARDWARE.items()]
    return options


def _analysis_model(data, errors):
    """A ``ModelConfig`` from ``{"preset": name, ...overrides}`` or plain fields; errors by "model.x"."""
    import dataclasses

    from engine import config as engine_config

    if data is None:
        data = {}
    if not isinstance(data, dict):
        errors["model"] = "model must be an object of engine config fields, or {\"preset\": name, ...overrides}"
        return None
    data = dict(data)
    name = data.pop("preset", None)
    base = {}
    if name not in (None, ""):
        if not isinstance(name, str) or name not in engine.PRESETS:
            errors["model.preset"] = f"unknown preset {name!r}; choose from {sorted(engine.PRESETS)}"
            return None
        base = engine.PRESETS[name].config.to_dict()
    merged = {**base, **data}
    try:
        cfg = engine.ModelConfig.from_dict(merged)  # unknown keys and untypeable values
    except engine.ConfigError as exc:
        errors.update(exc.errors)
        return None
    # the composer's bounds without their upper limits: a 405B model is a fine thing to analyse
    bad = set()
    for f in dataclasses.fields(engine.ModelConfig):
        meta = dict(f.metadata)
        if not meta:
            continue
        value = getattr(cfg, f.name)
        if meta["kind"] == "int":
            meta["max"] = None
        message = engine_config._check_value(f.name, meta, value)
        if message is None and meta["kind"] in ("int", "float") and value is not None and abs(value) > ANALYSIS_MAX_INT:
            message = f"{f.name} must be ≤ {ANALYSIS_MAX_INT:.0e} (got {value:g})"
        if message:
            errors[f"model.{f.name}"] = message
            bad.add(f.name)
    errors.update({f"model.{k}": v for k, v in engine_config._cross_checks("model", cfg, bad).items()})
    return cfg


def _analysis_settings(data, options, errors):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        errors["settings"] = "settings must be an object"
        return {}
    out = {}
    for key in data:
        if key not in ANALYSIS_SETTINGS:
            errors[f"settings.{key}"] = f"unknown setting {key!r}; choose from {list(ANALYSIS_SETTINGS)}"
    for key, (kind, default) in ANALYSIS_SETTINGS.items():
        value = data.get(key, default)
        optional = kind.endswith("?")
        kind = kind.rstrip("?")
        if value in (None, "") and kind != "bool":
            if optional:
                out[key] = None
                continue
            value = default
        where = f"settings.{key}"
        if kind == "int":
            if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())
                                               or (isinstance(value, str) and value.strip().lstrip("-").isdigit())):
                errors[where] = f"{key} must be a whole number (got {value!r})"
                continue
            value = int(value)
            if value < 1:
                errors[where] = f"{key} must be ≥ 1 (got {value})"
            elif value > ANALYSIS_MAX_INT:
                errors[where] = f"{key} must be ≤ {ANALYSIS_MAX_INT:.0e} (got {value})"
        elif kind == "float":
            try:
                if isinstance(value, bool):
                    raise ValueError
                value = float(value)
            except (TypeError, ValueError):
                errors[where] = f"{key} must be a number (got {value!r})"
                continue
            import math

            if not math.isfinite(value):
                errors[where] = f"{key} must be a finite number (got {value!r})"
            elif key == "mfu" and not 0 < value <= 1:
                errors[where] = f"mfu must be in (0, 1] (got {value:g})"
            elif value < 0 or (key == "train_tokens" and value == 0):
                errors[where] = f"{key} must be {'>' if key == 'train_tokens' else '≥'} 0 (got {value:g})"
        elif kind == "bool":
            if isinstance(value, str) and value.strip().lower() in ("true", "1", "on", "yes", "false", "0", "off", "no", ""):
                value = value.strip().lower() in ("true", "1", "on", "yes")
            elif isinstance(value, (bool, int)) and value in (0, 1):
                value = bool(value)
            else:
                errors[where] = f"{key} must be true or false (got {value!r})"
                continue
        else:  # choice
            choices = options.get(key) or [default]
            if value not in choices:
                shown = [c for c in choices if c is not None]
                errors[where] = f"unknown {key} {value!r}; choose from {shown}" + (" or null" if None in choices else "")
                continue
        out[key] = value
    return out


def _call_filtered(fn, *args, **kwargs):
    """Call an engine function with the keyword arguments it takes (the engine grows new ones)."""
    params = _analysis_engine_params(fn)
    return fn(*args, **{k: v for k, v in kwargs.items() if k in params and v is not None})


def _engine_kwargs(s):
    return {
        "vocab_size": s["vocab_size"], "batch_size": s["batch_size"], "seq_len": s["seq_len"], "dtype": s["dtype"],
        "optimizer": s["optimizer"], "n_gpus": s["n_gpus"], "sharding": s["sharding"],
        "activation_checkpointing": s["activation_checkpointing"], "flash_attention": s["flash_attention"],
        "quantization": s["quantization"], "hardware": s["hardware"], "mfu": s["mfu"],
        "price_per_gpu_hour": s["price_per_gpu_hour"], "train_tokens": s["train_tokens"],
    }


def _fit_kwargs(s, seq_len):
    return {
        "n_gpus": s["n_gpus"], "batch_size": s["batch_size"], "seq_len": seq_len, "dtype": s["dtype"],
        "optimizer": s["optimizer"], "mfu": s["mfu"], "train_tokens": s["train_tokens"],
        "price_per_hour": s["price_per_gpu_hour"], "price_per_gpu_hour": s["price_per_gpu_hour"],
        "vocab_size": s["vocab_size"], "sharding": s["sharding"],
        "activation_checkpointing": s["activation_checkpointing"], "flash_attention": s["flash_attention"],
        "quantization": s["quantization"],
    }


import functools  # noqa: E402


@functools.lru_cache(maxsize=4096)
def _attention_flops(kind, n_embd, n_head, window, dilation, sparse_block, sparse_stride, t):
    from types import SimpleNamespace

    cfg = SimpleNamespace(n_embd=n_embd, n_head=n_head, window=window, dilation=dilation, sparse_block=sparse_block,
                          sparse_stride=sparse_stride)
    return engine.ATTENTIONS[kind].flops_per_token(cfg, t)


def curve_contexts(block_size):
    """~12 context lengths from 64 to max(block_size, 32768), evenly spaced on a log axis."""
    import math

    top = max(block_size, 32768)
    lo, hi = math.log(CURVE_MIN_CONTEXT), math.log(top)
    points = sorted({int(round(math.exp(lo + (hi - lo) * i / (CURVE_POINTS - 1)))) for i in range(CURVE_POINTS)})
    points[-1] = top
    return points


def _curves(cfg, base, settings):
    """KV cache bytes (one sequence) and attention FLOPs per token (all layers) against context,
    for the model's attention pattern and each other one, from the engine's per-pattern counts."""
    contexts = curve_contexts(cfg.block_size)
    per_token = base["kv_cache_per_token"]
    n_attn_layers = cfg.n_layer + ((cfg.n_decoder_layer or cfg.n_layer) if cfg.family == "encoder_decoder" else 0)
    kinds = [cfg.attention] + [k for k in engine.ATTENTIONS if k != cfg.attention]
    series = []
    for kind in kinds:
        kv, flops = [], []
        for t in contexts:
            cached = min(t, cfg.window) if kind == "sliding" else t
            kv.append(per_token * cached)
            if kind in LOOPED_ATTENTIONS and t > CURVE_LOOPED_MAX:
                flops.append(None)
            else:
                flops.append(n_attn_layers * _attention_flops(kind, cfg.n_embd, cfg.n_head, cfg.window, cfg.dilation,
                                                              cfg.sparse_block, cfg.sparse_stride, t))
        label = {"sliding": f"sliding (window {cfg.window:,})", "dilated": f"dilated (×{cfg.dilation})",
                 "block_sparse": f"block_sparse ({cfg.sparse_block}/{cfg.sparse_stride})"}.get(kind, kind)
        series.append({"attention": kind, "label": label, "chosen": kind == cfg.attention, "kv_cache": kv,
                       "attention_flops": flops})
    return {
        "contexts": contexts,
        "block_size": cfg.block_size,
        "n_attention_layers": n_attn_layers,
        "series": series,
        "formulas": {
            "kv_cache": f"KV cache(T) = kv_cache_per_token × cached positions = {per_token:,} B × T "
                        "(sliding: × min(T, window)); one sequence",
            "attention_flops": f"attention FLOPs/token(T) = {n_attn_layers} layers × 4 · n_embd · K̄(T), "
                               "K̄ = mean keys a query sees (full: (T+1)/2; linear: constant)",
        },
        "note": (f"sliding, dilated and block-sparse FLOPs are counted up to {CURVE_LOOPED_MAX:,} tokens"
                 if contexts[-1] > CURVE_LOOPED_MAX else ""),
    }


def _fit_table(cfg, settings, seq_len, report=None):
    rows = []
    for key, device in engine.HARDWARE.items():
        try:
            fit = _call_filtered(engine.fit, cfg, key, **_fit_kwargs(settings, seq_len), report=report)
        except (ValueError, ArithmeticError) as exc:
            rows.append({"key": key, "name": device.name, "error": str(exc)})
            continue
        rows.append({"key": key, **fit, "name": device.name})
    return rows


def _jsonable(x):
    """Floats that JSON cannot carry (inf, nan) become None."""
    import math

    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def analysis_report(team, payload):
    """The analysis report of ``{"model": {...} or {"preset": ..., ...}, "settings": {...}}``:
    ``engine.analyze``'s report, the curves against context and a fit table over every device.
    ``SpecError`` with messages by "model.x" / "settings.x" for bad input. ``team`` is unused:
    an analysis touches nothing of a team's, but the call keeps the services' shape."""
    import json

    if not isinstance(payload, dict):
        raise SpecError({"request": "expected a JSON object with 'model' and 'settings'"})
    errors = {k: f"unknown section {k!r}; choose from ['model', 'settings']" for k in payload if k not in ("model", "settings")}
    options = analysis_options()
    cfg = _analysis_model(payload.get("model"), errors)
    settings_ = _analysis_settings(payload.get("settings"), options, errors)
    if errors:
        raise SpecError(errors)
    key = json.dumps({"model": cfg.to_dict(), "settings": settings_}, sort_keys=True, default=str)
    return _cached_report(key)


@functools.lru_cache(maxsize=256)
def _cached_report(key):
    import json

    data = json.loads(key)
    cfg = engine.ModelConfig.from_dict(data["model"])
    s = data["settings"]
    if cfg.vocab_size is None and s["vocab_size"] is None:
        raise SpecError({"model.vocab_size": "vocab_size is needed to count the embedding and head: set "
                                             "model.vocab_size or settings.vocab_size, or start from a preset"})
    seq_len = s["seq_len"] or cfg.block_size
    if cfg.attention in LOOPED_ATTENTIONS and seq_len > engine_hardware_max_looped():
        field = "settings.seq_len" if s["seq_len"] else "model.block_size"
        raise SpecError({field: f"{cfg.attention} attention is analysed up to {engine_hardware_max_looped():,} tokens "
                                f"(got {seq_len:,}); full and linear attention have no limit"})
    try:
        report = _call_filtered(engine.analyze, cfg, **_engine_kwargs(s))
        base = _call_filtered(engine.analyze, cfg, **{**_engine_kwargs(s), "batch_size": 1, "seq_len": 1,
                                                       "hardware": None})
    except (ValueError, KeyError) as exc:
        raise SpecError({"settings": str(exc)}) from None
    fit_table = _fit_table(cfg, s, seq_len, report=report)
    report = dict(report)
    report.setdefault("formulas", {})
    report["settings"] = {**s, "seq_len": seq_len, **(report.get("settings") or {})}
    report["config"] = cfg.to_dict()
    report["config_applies"] = _config_applies(report["config"])
    report["curves"] = _curves(cfg, base, s)
    report["fit_table"] = fit_table
    if report.get("fit") is None and s["hardware"]:
        report["fit"] = next((r for r in report["fit_table"] if r["key"] == s["hardware"]), None)
    report["options"] = analysis_options()
    return _jsonable(report)


def _config_applies(config):
    """model field -> whether it matters under the other settings (the engine's ``show_if``: no
    window without sliding attention, no expert settings without experts)."""
    show_if = {spec["key"]: spec.get("show_if") for spec in engine.field_specs() if spec["section"] == "model"}
    flat = {f"model.{key}": value for key, value in config.items()}
    return {
        key: all(_holds(cond, flat.get(other)) for other, cond in (show_if.get(key) or {}).items())
        for key in config
    }


def engine_hardware_max_looped():
    from engine import hardware as engine_hardware

    return getattr(engine_hardware, "MAX_LOOPED_CONTEXT", 2**20)
