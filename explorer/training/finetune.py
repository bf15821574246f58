"""Fine-tuning jobs (kind "finetune"): SmolLM2-135M-Instruct trained with SFT or DPO, through LoRA
adapters (``peft``) or all its weights, on the built-in instruction set, a synthetic task or a
team's uploaded JSONL file (``engine.finetune``).

The payload is ``engine.finetune.config.parse_finetune``'s dict with the file named by dataset id
(``data.dataset``), as training jobs name theirs; every bad setting is a 400 at its field
(``lora.rank``, ``train.steps``, ``data.dataset``...), the examples are tokenized in the model's
chat template at submission (a bad file line is refused then, not on the worker), and the fit
gate sizes the job by the analysis of the base model: weights, the batch's activations, and
gradients and AdamW state of the trained parameters only (for LoRA ~2% of them).

The job's spec is stored in sections (``finetune``: base, objective, method, prompts; ``lora``,
``data``, ``train``) so that ``services.public_spec`` leaves out the file path. On the worker the
run writes its adapter under ``job_dir(id)/finetune/``; downloads zip it as saved, as a merged
``transformers`` model directory, or as a PEFT adapter directory.
"""
import io
import os
import shutil
import tempfile
import zipfile

from django.conf import settings

import engine
from engine.finetune import config as ft_config
from explorer.datasets.models import Dataset
from explorer.jobs import submission
from explorer.jobs.kinds import Plan
from explorer.jobs.lifecycle import job_run
from explorer.jobs.services import SpecError
from explorer.training.checkpoints import NoCheckpoint, job_dir

KIND = "finetune"
BASE_LABELS = {"smollm2-135m-instruct": "SmolLM2-135M-Instruct"}
HELP = {
    "objective": "SFT: learn the responses of prompt/response pairs (loss on the responses only). DPO: prefer "
                 "the chosen response over the rejected one, relative to the starting model.",
    "lora": {
        "rank": "r ≥ 1: the adapters' inner width; trainable parameters grow linearly with it.",
        "alpha": "α > 0: the update is scaled by α / r (2·r is a common choice).",
        "dropout": "In [0, 1): dropout on each adapter's input while training.",
        "target_modules": "Which projections get an adapter: attention (q, k, v, o) and MLP (gate, up, down).",
    },
    "train": {
        "steps": "Optimizer steps; 50 LoRA steps take a few minutes on a CPU worker.",
        "lr": "Peak learning rate after warm-up (LoRA: 1e-4 to 2e-3; a full fine-tune: ~1e-5).",
        "batch_size": "Examples per step (DPO: pairs, two rows each).",
    },
    "data": {"max_tokens": "Tokens an example keeps, chat template included."},
    "prompts": "Answered greedily through the chat template before training and after, side by side on the job's page.",
}


def _label(spec):
    what = "LoRA" if spec.method == "lora" else "full"
    return f"Fine-tune · {BASE_LABELS.get(spec.base, spec.base)} · {what} {spec.objective.upper()}"


def stored(spec):
    """The Job's spec: ``FinetuneSpec.to_dict()`` in sections (see the module docstring)."""
    d = spec.to_dict()
    return {"finetune": {k: d[k] for k in ("base", "objective", "method", "prompts", "max_new_tokens")},
            "lora": d["lora"], "data": d["data"], "train": d["train"]}


def spec_of(job_spec):
    """The ``FinetuneSpec`` of a stored spec."""
    return ft_config.parse_finetune({**job_spec["finetune"], "lora": job_spec["lora"], "data": job_spec["data"],
                                     "train": job_spec["train"]})


def options(team):
    """The form's choices, defaults, help and limits."""
    from engine.interop import pretrained

    entry = pretrained.PRETRAINED["smollm2-135m-instruct"]
    defaults = stored(ft_config.parse_finetune({}))
    return {
        "bases": [{"key": key, "label": BASE_LABELS[key], "parameters": entry.parameters, "note": entry.note}
                  for key in ft_config.BASES],
        "objectives": list(ft_config.OBJECTIVES),
        "methods": ft_config.METHODS,
        "target_modules": list(ft_config.TARGET_MODULES),
        "sources": ft_config.SOURCES,
        "tasks": list(engine.choices()["task"]),
        "datasets": [{"id": d.pk, "name": d.name} for d in Dataset.objects.filter(team=team).order_by("name")],
        "defaults": defaults,
        "dpo_defaults": stored(ft_config.parse_finetune({"objective": "dpo"})),
        "limits": {"prompts": ft_config.MAX_PROMPTS, "max_new_tokens": ft_config.MAX_NEW_TOKENS,
                   "max_tokens": ft_config.MAX_TOKENS_LIMIT, "steps": settings.MAX_STEPS},
        "help": HELP,
    }


# ---------------------------------------------------------------------------- validation
def _bind_dataset(team, payload, errors):
    """``data.dataset`` (an id of the team's uploads) becomes ``data.path``; users never name paths."""
    data = payload.get("data")
    if not isinstance(data, dict):
        return None
    data = dict(data)
    payload["data"] = data
    data.pop("path", None)
    ref = data.pop("dataset", None)
    if data.get("source") != "jsonl":
        return None
    if ref in (None, ""):
        errors["data.dataset"] = "choose an uploaded JSONL file for source 'jsonl' (upload one under Datasets)"
        return None
    try:
        dataset = Dataset.objects.filter(team=team, pk=int(ref)).first()
    except (TypeError, ValueError, OverflowError):
        dataset = None
    if dataset is None:
        errors["data.dataset"] = f"no dataset {ref!r} in team {team.name}"
        return None
    data["path"] = dataset.file.path
    return dataset


def validate(team, payload):
    """``(spec, dataset, examples)`` or ``SpecError`` with every problem by field."""
    if not isinstance(payload, dict):
        raise SpecError({"spec": "expected a JSON object"})
    payload = dict(payload)
    errors = {}
    dataset = _bind_dataset(team, payload, errors)
    spec = None
    try:
        spec = ft_config.parse_finetune(payload)
    except engine.ConfigError as exc:
        for key, message in exc.errors.items():
            errors.setdefault("data.dataset" if key == "data.path" else key, message)
    if spec is not None and spec.train.steps > settings.MAX_STEPS:
        errors["train.steps"] = f"steps ({spec.train.steps}) exceeds this deployment's limit of {settings.MAX_STEPS}"
    if errors:
        raise SpecError(errors)
    examples = _examples(spec)
    return spec, dataset, examples


def _examples(spec):
    """The examples, tokenized in the model's chat template (no weights read): a bad file or a
    prompt too long for ``max_tokens`` is refused at its field now."""
    from engine.finetune.data import load_examples
    from engine.interop.pretrained import pretrained_tokenizer

    try:
        tokenizer = pretrained_tokenizer(spec.base)
    except (RuntimeError, OSError, ValueError) as exc:
        raise SpecError({"base": str(exc)}) from None
    try:
        return load_examples(spec, tokenizer)
    except engine.ConfigError as exc:
        raise SpecError({"data.dataset" if k == "data.path" else k: v for k, v in exc.errors.items()}) from None


def trainable_parameters(spec, cfg=None):
    """(trainable, total) parameters, from the config alone: LoRA adds r·(in + out) per wrapped
    projection of each layer (SmolLM2 with r = 8 on all seven: 2,442,240 of 136,957,248)."""
    from engine.interop.pretrained import pretrained_config
    from engine.nn.ffn import FFNS

    cfg = cfg or pretrained_config(spec.base)
    base = engine.analyze(cfg)["params"]["total"]
    if spec.method != "lora":
        return base, base
    d, width = cfg.n_embd, cfg.attention_width
    kv = (cfg.n_kv_head or cfg.n_head) * cfg.head_size
    hidden = FFNS[cfg.ffn].hidden_dim(cfg)
    shapes = {"q_proj": (d, width), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (width, d),
              "gate_proj": (d, hidden), "up_proj": (d, hidden), "down_proj": (hidden, d)}
    added = cfg.n_layer * sum(spec.lora.rank * sum(shapes[m]) for m in spec.lora.target_modules)
    return added, base + added


def memory_bytes(spec):
    """The run's memory: the base's weights, a batch's activations (rows of ``max_tokens``), and gradients and AdamW's two moments for the trained parameters; a full
    DPO run adds the frozen reference's weights."""
    from engine.interop.pretrained import pretrained_config

    cfg = pretrained_config(spec.base)
    rows = spec.train.batch_size * (2 if spec.objective == "dpo" else 1)
    memory = engine.analyze(cfg, batch_size=rows, seq_len=min(spec.data.max_tokens, cfg.block_size))["memory"]
    trainable, total = trainable_parameters(spec, cfg)
    share = trainable / total
    need = memory["weights"] + memory["activations"] + share * (memory["gradients"] + memory["optimizer"])
    if spec.method == "lora":
        need += trainable * 4  # the adapters' own weights
    elif spec.objective == "dpo":
        need += memory["weights"]
    return int(need)


def queue_for(spec):
    return "gpu" if spec.train.device == "cuda" else "cpu"


# ---------------------------------------------------------------------------- the kind
class Finetune:
    name = KIND
    label = "Fine-tuning"
    task = "explorer.tasks.run_job"
    fit_field = "train.batch_size"
    fit_what = "fine-tuning memory"
    fit_advice = "lower batch_size or data.max_tokens, or use LoRA"
    out_of_memory_advice = "Lower batch_size or max_tokens, or use LoRA instead of a full fine-tune, and submit again."
    default_seconds = 240.0  # a 50-step LoRA run on a CPU worker, answers included
    resumable = False  # a lost worker's fine-tune fails with the reason; submit it again

    def plan(self, user, team, payload):
        spec, dataset, _ = validate(team, payload)
        trainable, _ = trainable_parameters(spec)
        return Plan(spec=stored(spec), queue=queue_for(spec), memory_bytes=memory_bytes(spec),
                    params=trainable, total_steps=spec.train.steps, name=_label(spec),
                    fields={"dataset": dataset})

    def memory_bytes(self, job):
        return memory_bytes(spec_of(job.spec))

    def run(self, job_id, worker_name):
        return run_job(job_id, worker_name)

    def page(self, request, job):
        from explorer.training import views

        return views.finetune_page(request, job)


def create_job(user, team, payload, name="", priority="normal"):
    return submission.submit(user, team, KIND, payload, name=name, priority=priority)


def saved_dir(job_id):
    return os.path.join(job_dir(job_id), "finetune")


def run_job(job_id, worker_name):
    """Run one queued fine-tuning job (``job_run``: every outcome leaves it terminal)."""
    from engine.finetune.run import finetune

    with job_run(job_id, worker_name, what="fine-tuning job") as run:
        if run is None:
            return None
        spec = spec_of(run.job.spec)  # again: the file may have changed since submission
        out = saved_dir(job_id)
        shutil.rmtree(out, ignore_errors=True)
        result = finetune(spec, on_event=run.recorder, should_stop=run.should_stop, out_dir=out)
        if result.cancelled:
            run.cancel()
    return run.status


# ---------------------------------------------------------------------------- files
def saved(job):
    """{method, files: [{name, bytes}], trainable, total, step} of what the job saved, or None."""
    from engine.finetune.lora import read_meta

    directory = saved_dir(job.pk)
    try:
        meta = read_meta(directory)
    except (OSError, ValueError):
        return None
    files = [{"name": n, "bytes": os.path.getsize(os.path.join(directory, n))} for n in sorted(os.listdir(directory))]
    return {"method": "lora" if meta.get("lora") else "full", "files": files, "step": meta.get("step"),
            "bytes": sum(f["bytes"] for f in files),
            "trainable": meta.get("trainable"), "total": meta.get("total")}


EXPORTS = {
    "adapter": "the saved files: adapter_model.safetensors and adapter.json (a full fine-tune: model.safetensors)",
    "merged": "a transformers model directory with the adapter merged into the weights (config.json, "
              "model.safetensors, the tokenizer)",
    "peft": "a PEFT adapter directory (adapter_config.json, adapter_model.safetensors) for the transformers "
            "Llama of the base model (base_config.json)",
}


def zip_export(job, what):
    """``(zip bytes, filename)`` of ``what`` (``EXPORTS``); ``NoCheckpoint`` when the job saved
    nothing, ``ValueError`` when that export does not apply (no adapter in a full fine-tune)."""
    from engine.finetune import export

    directory = saved_dir(job.pk)
    if saved(job) is None:
        raise NoCheckpoint(f"{job.display_name} has saved no adapter yet: it is written when training ends")
    if what not in EXPORTS:
        raise ValueError(f"unknown export {what!r}; choose from {list(EXPORTS)}")
    tmp = tempfile.mkdtemp(prefix="finetune-export-")
    try:
        if what == "adapter":
            source = directory
        else:
            source = os.path.join(tmp, what)
            (export.export_merged if what == "merged" else export.export_peft)(directory, source)
        folder = f"job-{job.pk}-{what}"
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
            for name in sorted(os.listdir(source)):
                z.write(os.path.join(source, name), arcname=f"{folder}/{name}")
        return buffer.getvalue(), f"{folder}.zip"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
