"""A fine-tuning job's settings (``FinetuneSpec``) and their validation, without torch.

``parse_finetune(d)`` turns a JSON dict into a ``FinetuneSpec`` or raises ``ConfigError`` whose
``errors`` name each bad field by its dotted path (``"lora.rank"``, ``"train.steps"``,
``"data.source"``, ``"prompts"``), as ``parse_spec`` does for a training job::

    {"base": "smollm2-135m-instruct", "objective": "sft", "method": "lora",
     "lora": {"rank": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", ...]},
     "data": {"source": "builtin"}, "train": {"steps": 50, "lr": 1e-3, "batch_size": 4},
     "prompts": ["What is the capital of France?"], "max_new_tokens": 48}

The ``train`` section is the engine's ``TrainConfig`` (its field checks), limited to the
fields a fine-tune reads (``TRAIN_FIELDS``) and with fine-tuning's defaults (``TRAIN_DEFAULTS``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from ..config.errors import ConfigError
from ..config.schema import DataConfig, TrainConfig, _parse_section

BASES = ("smollm2-135m-instruct",)  # engine.interop.pretrained's decoders
OBJECTIVES = ("sft", "dpo")
METHODS = {
    "lora": "LoRA (Hu et al. 2021): the pretrained weights stay frozen; each chosen projection W gains a "
            "trainable low-rank update (alpha / rank)·B·A, B starting at zero. Trains ~2% of the weights.",
    "full": "Every weight trains (the optimiser keeps two more copies of them): for small models.",
}
# the Decoder's projections, under transformers' names (so peft's and Llama's module names agree)
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# where the examples come from, by objective (the first is the default)
SOURCES = {
    "sft": {"builtin": "the built-in instruction set: 48 short questions with one-sentence answers "
                       "(6 more held out)",
            "synthetic": "a synthetic task as instructions (\"Reverse: abcd\" -> \"dcba\")",
            "jsonl": "an uploaded JSONL file: {\"prompt\", \"response\"} or {\"messages\": [...]} per line"},
    "dpo": {"synthetic": "a synthetic task's preference pairs: the right answer over one with an item changed",
            "builtin": "the built-in instruction set's answers preferred over a refusal (\"I don't know.\")",
            "jsonl": "an uploaded JSONL file: {\"prompt\", \"chosen\", \"rejected\"} per line"},
}
TRAIN_FIELDS = ("steps", "lr", "batch_size", "warmup_steps", "weight_decay", "grad_clip", "schedule",
                "min_lr_ratio", "eval_interval", "seed", "dpo_beta", "device")
TRAIN_DEFAULTS = {"steps": 50, "lr": 1e-3, "batch_size": 4, "warmup_steps": 5, "weight_decay": 0.0,
                  "eval_interval": 10, "seed": 0}
MAX_PROMPTS, MAX_PROMPT_CHARS, MAX_NEW_TOKENS = 8, 500, 256
MAX_TOKENS_LIMIT = 1024  # the longest example (prompt and response) a batch row keeps
DEFAULT_PROMPTS = (
    "What is the boiling point of water at sea level?",
    "Why do we have seasons?",
    "Give me a tip for writing clear emails.",
)


@dataclass
class LoraSettings:
    """The adapters: ``rank`` r ≥ 1, ``alpha`` > 0 (the update is scaled by alpha / r),
    ``dropout`` in [0, 1) on the adapter's input, and which projections get one."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(TARGET_MODULES))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class FinetuneData:
    source: str = "builtin"
    path: str | None = None  # a "jsonl" file (the web app sets it from a dataset id)
    task: str = "reverse"  # a "synthetic" source's task
    task_length: int = 6
    max_tokens: int = 256  # an example's tokens kept (prompt, in the chat template, and response)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class FinetuneSpec:
    base: str = "smollm2-135m-instruct"
    objective: str = "sft"
    method: str = "lora"
    lora: LoraSettings = field(default_factory=LoraSettings)
    data: FinetuneData = field(default_factory=FinetuneData)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(**TRAIN_DEFAULTS))
    prompts: list[str] = field(default_factory=lambda: list(DEFAULT_PROMPTS))
    max_new_tokens: int = 48

    def to_dict(self) -> dict:
        return {"base": self.base, "objective": self.objective, "method": self.method,
                "lora": self.lora.to_dict(), "data": self.data.to_dict(),
                "train": {k: getattr(self.train, k) for k in TRAIN_FIELDS}, "prompts": list(self.prompts),
                "max_new_tokens": self.max_new_tokens}


def _number(value, name, errors, *, integer=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        errors[name] = f"{name.split('.')[-1]} must be a number (got {value!r})"
        return None
    if integer and value != int(value):
        errors[name] = f"{name.split('.')[-1]} must be a whole number (got {value!r})"
        return None
    if not math.isfinite(value):
        errors[name] = f"{name.split('.')[-1]} must be finite (got {value!r})"
        return None
    return int(value) if integer else float(value)


def _section(d, name, errors) -> dict:
    value = d.get(name) if isinstance(d, dict) else None
    if value is None:
        return {}
    if not isinstance(value, dict):
        errors[name] = f"{name} must be an object of fields (got {type(value).__name__})"
        return {}
    return value


def _unknown(section: dict, allowed, prefix: str, errors) -> None:
    for key in section:
        if key not in allowed:
            errors[f"{prefix}.{key}"] = f"unknown {prefix} field {key!r}; choose from {list(allowed)}"


def _parse_lora(d: dict, errors) -> LoraSettings:
    lora = LoraSettings()
    _unknown(d, ("rank", "alpha", "dropout", "target_modules"), "lora", errors)
    if "rank" in d and (rank := _number(d["rank"], "lora.rank", errors, integer=True)) is not None:
        if not 1 <= rank <= 512:
            errors["lora.rank"] = f"rank must be from 1 to 512 (got {rank})"
        else:
            lora.rank = rank
    if "alpha" in d and (alpha := _number(d["alpha"], "lora.alpha", errors)) is not None:
        if not 0 < alpha <= 10_000:
            errors["lora.alpha"] = f"alpha must be > 0 (and at most 10000; got {alpha:g})"
        else:
            lora.alpha = alpha
    if "dropout" in d and (dropout := _number(d["dropout"], "lora.dropout", errors)) is not None:
        if not 0 <= dropout < 1:
            errors["lora.dropout"] = f"dropout must be in [0, 1) (got {dropout:g})"
        else:
            lora.dropout = dropout
    if "target_modules" in d:
        targets = d["target_modules"]
        if isinstance(targets, str):
            targets = [t.strip() for t in targets.split(",") if t.strip()]
        if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
            errors["lora.target_modules"] = f"target_modules must be a list of projection names from {list(TARGET_MODULES)}"
        elif not targets:
            errors["lora.target_modules"] = f"choose at least one projection from {list(TARGET_MODULES)}"
        elif unknown := [t for t in targets if t not in TARGET_MODULES]:
            errors["lora.target_modules"] = f"unknown projection {unknown[0]!r}; choose from {list(TARGET_MODULES)}"
        else:
            lora.target_modules = [t for t in TARGET_MODULES if t in targets]  # the model's order, no repeats
    return lora


def _parse_data(d: dict, objective: str, errors) -> FinetuneData:
    from ..data.tasks import TASKS

    data = FinetuneData(source=next(iter(SOURCES.get(objective, SOURCES["sft"]))))
    _unknown(d, ("source", "path", "task", "task_length", "max_tokens"), "data", errors)
    sources = SOURCES.get(objective, SOURCES["sft"])
    if "source" in d:
        if d["source"] not in sources:
            errors["data.source"] = f"unknown source {d['source']!r} for {objective}; choose from {list(sources)}"
        else:
            data.source = d["source"]
    if d.get("path") is not None:
        data.path = str(d["path"])
    if "task" in d:
        if d["task"] not in TASKS:
            errors["data.task"] = f"unknown task {d['task']!r}; choose from {sorted(TASKS)}"
        else:
            data.task = d["task"]
    if "task_length" in d and (n := _number(d["task_length"], "data.task_length", errors, integer=True)) is not None:
        if not 2 <= n <= 32:
            errors["data.task_length"] = f"task_length must be from 2 to 32 (got {n})"
        else:
            data.task_length = n
    if "max_tokens" in d and (n := _number(d["max_tokens"], "data.max_tokens", errors, integer=True)) is not None:
        if not 32 <= n <= MAX_TOKENS_LIMIT:
            errors["data.max_tokens"] = f"max_tokens must be from 32 to {MAX_TOKENS_LIMIT} (got {n})"
        else:
            data.max_tokens = n
    if data.source == "jsonl" and not data.path and "data.source" not in errors:
        errors["data.path"] = "source 'jsonl' needs a file (an uploaded dataset)"
    return data


def _parse_prompts(value, errors) -> list[str]:
    if isinstance(value, str):
        value = [line for line in value.splitlines() if line.strip()]
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        errors["prompts"] = "prompts must be a list of strings (one question each)"
        return list(DEFAULT_PROMPTS)
    value = [p.strip() for p in value if p.strip()]
    if not 1 <= len(value) <= MAX_PROMPTS:
        errors["prompts"] = f"give 1 to {MAX_PROMPTS} prompts (got {len(value)})"
    elif too_long := [i for i, p in enumerate(value) if len(p) > MAX_PROMPT_CHARS]:
        errors["prompts"] = f"prompt {too_long[0] + 1} has {len(value[too_long[0]])} characters; the limit is {MAX_PROMPT_CHARS}"
    return value


def parse_finetune(d) -> FinetuneSpec:
    """Validate a fine-tuning job's dict (missing keys take defaults); ``ConfigError`` names every
    bad field. No data is read here: ``engine.finetune.data.load_examples`` checks the file."""
    if not isinstance(d, dict):
        raise ConfigError({"spec": "a fine-tuning spec must be an object"})
    errors: dict[str, str] = {}
    _unknown(d, ("base", "objective", "method", "lora", "data", "train", "prompts", "max_new_tokens"), "spec", errors)
    errors = {k.removeprefix("spec."): v for k, v in errors.items()}
    spec = FinetuneSpec()
    for key, allowed in (("base", BASES), ("objective", OBJECTIVES), ("method", tuple(METHODS))):
        if key in d:
            if d[key] not in allowed:
                errors[key] = f"unknown {key} {d[key]!r}; choose from {list(allowed)}"
            else:
                setattr(spec, key, d[key])
    spec.lora = _parse_lora(_section(d, "lora", errors), errors)
    spec.data = _parse_data(_section(d, "data", errors), spec.objective, errors)
    train = _section(d, "train", errors)
    _unknown(train, TRAIN_FIELDS, "train", errors)
    defaults = dict(TRAIN_DEFAULTS)
    steps = train.get("steps")
    if "warmup_steps" not in train and isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1:
        defaults["warmup_steps"] = min(TRAIN_DEFAULTS["warmup_steps"], steps)  # a short run warms up less
    train_cfg, train_errors = _parse_section(TrainConfig, {**defaults, **{k: v for k, v in train.items()
                                                                          if k in TRAIN_FIELDS}})
    errors.update(train_errors)
    train_cfg.objective = spec.objective
    spec.train = train_cfg
    if "prompts" in d:
        spec.prompts = _parse_prompts(d["prompts"], errors)
    if "max_new_tokens" in d and (n := _number(d["max_new_tokens"], "max_new_tokens", errors, integer=True)) is not None:
        if not 1 <= n <= MAX_NEW_TOKENS:
            errors["max_new_tokens"] = f"max_new_tokens must be from 1 to {MAX_NEW_TOKENS} (got {n})"
        else:
            spec.max_new_tokens = n
    if errors:
        raise ConfigError(errors)
    return spec


def data_config(spec: FinetuneSpec) -> DataConfig:
    """The engine's ``DataConfig`` of a synthetic source (its task's examples)."""
    return DataConfig(source="synthetic", task=spec.data.task, task_length=spec.data.task_length)
