"""The analysis report behind ``POST /api/v1/analyze``, the composer's report panel and the
compare page: what a model costs to train and serve, and whether it fits each device of the
catalogue. All figures come from ``engine.analyze`` and ``engine.fit``; this module turns the
request into their arguments (with messages by field for bad input) and adds what a chart
needs: the curves against context length and a fit table over every device.

Real models are far beyond the composer's training bounds, so a size is refused only when it
is nonsense (zero, negative, a head count that does not divide the width, past 10^12), never
for being large: a 10^15-parameter model still gets its report, with "does not fit".
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math

import engine
from engine.analysis import analysis_options
from explorer.jobs.services import SpecError
from explorer.training.jobs import field_applies

MAX_SIZE = 10**12  # beyond this a "size" is a typo, and the numbers stop meaning anything
CURVE_POINTS = 12  # context lengths per curve, evenly spaced on a log axis
CURVE_MIN_CONTEXT = 64
CURVE_MIN_TOP = 32768  # the curves reach at least this context, or the model's own if longer

# name: (kind, default); a kind ending in "?" may be null. The defaults are a sizing question's
# ("does this model fit in bf16 at batch 1?"), not a training job's
SETTINGS = {
    "batch_size": ("int", 1),
    "seq_len": ("int?", None),  # null: the model's block_size
    "vocab_size": ("int?", None),  # null: the model's
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


def options() -> dict:
    """The settings' choices (the engine's) and the device catalogue, for the forms."""
    out = {k: list(v) for k, v in analysis_options().items()}
    if None not in out["quantization"]:
        out["quantization"] = [None, *out["quantization"]]
    out["devices"] = [{"key": k, "name": d.name, "memory": d.memory} for k, d in engine.HARDWARE.items()]
    out["attention_kinds"] = engine.describe_attentions()  # each kind's colour token, for the charts
    return out


def report(payload) -> dict:
    """The report of ``{"model": {...} or {"preset": name, ...overrides}, "settings": {...}}``:
    ``engine.analyze``'s, plus ``config``, ``config_applies``, ``curves``, ``fit_table`` and
    ``options``. Raises ``SpecError`` with messages by "model.x" / "settings.x"."""
    if not isinstance(payload, dict):
        raise SpecError({"request": "expected a JSON object with 'model' and 'settings'"})
    errors = {k: f"unknown section {k!r}; choose from ['model', 'settings']"
              for k in payload if k not in ("model", "settings")}
    choices = options()
    cfg = _model(payload.get("model"), errors)
    settings = _settings(payload.get("settings"), choices, errors)
    if cfg is not None and not errors and cfg.vocab_size is None and settings["vocab_size"] is None:
        errors["model.vocab_size"] = ("vocab_size is needed to count the embedding and head: set model.vocab_size "
                                      "or settings.vocab_size, or start from a preset")
    if errors:
        raise SpecError(errors)
    # the same question asked again (the composer re-asks on every keystroke) is answered from memory
    return _cached(json.dumps({"model": cfg.to_dict(), "settings": settings}, sort_keys=True),
                   tuple(engine.ATTENTIONS.items()))


@functools.lru_cache(maxsize=256)
def _cached(key: str, attentions: tuple) -> dict:
    # ``attentions``: the registered kinds, so a kind registered at run time joins the curves
    data = json.loads(key)
    cfg, s = engine.ModelConfig.from_dict(data["model"]), data["settings"]
    try:
        out = engine.analyze(cfg, **s)
        fit_table = [_fit_row(cfg, device, s) for device in engine.HARDWARE]
    except ValueError as exc:  # a combination the engine refuses (e.g. a context it cannot express)
        raise SpecError({"settings": str(exc)}) from None
    out["config"] = cfg.to_dict()
    flat = {f"model.{key}": value for key, value in out["config"].items()}
    out["config_applies"] = {key: field_applies(f"model.{key}", flat) for key in out["config"]}
    out["curves"] = _curves(cfg, out)
    out["structure"] = engine.structure(cfg)
    out["fit_table"] = fit_table
    out["options"] = options()
    return _finite(out)


def _fit_row(cfg, device: str, s: dict) -> dict:
    fit = engine.fit(cfg, device, n_gpus=s["n_gpus"], batch_size=s["batch_size"], seq_len=s["seq_len"],
                     dtype=s["dtype"], optimizer=s["optimizer"], mfu=s["mfu"], train_tokens=s["train_tokens"],
                     price_per_hour=s["price_per_gpu_hour"], vocab_size=s["vocab_size"], sharding=s["sharding"],
                     activation_checkpointing=s["activation_checkpointing"], flash_attention=s["flash_attention"],
                     quantization=s["quantization"])
    return {"key": device, **fit, "name": engine.HARDWARE[device].name}


# ---------------------------------------------------------------------------- input
def _model(data, errors: dict):
    """A ``ModelConfig`` from a preset and/or fields, checked without the composer's upper bounds."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        errors["model"] = 'model must be an object of engine config fields, or {"preset": name, ...overrides}'
        return None
    data = dict(data)
    name = data.pop("preset", None)
    base = {}
    if name not in (None, ""):
        if not isinstance(name, str) or name not in engine.PRESETS:
            errors["model.preset"] = f"unknown preset {name!r}; choose from {sorted(engine.PRESETS)}"
            return None
        base = engine.PRESETS[name].config.to_dict()
    try:
        cfg = engine.ModelConfig.from_dict({**base, **data})  # unknown keys, untypeable values
        cfg.validate(upper_bounds=False)
    except engine.ConfigError as exc:
        errors.update(exc.errors)
        return None
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) > MAX_SIZE:
            errors[f"model.{f.name}"] = f"{f.name} must be ≤ {MAX_SIZE:.0e} (got {value:g})"
    return cfg


def _settings(data, choices: dict, errors: dict) -> dict:
    data = {} if data is None else data
    if not isinstance(data, dict):
        errors["settings"] = "settings must be an object"
        return {}
    for key in data:
        if key not in SETTINGS:
            errors[f"settings.{key}"] = f"unknown setting {key!r}; choose from {list(SETTINGS)}"
    out = {}
    for key, (kind, default) in SETTINGS.items():
        value, message = _setting(key, kind, data.get(key, default), default, choices)
        if message:
            errors[f"settings.{key}"] = message
        else:
            out[key] = value
    return out


def _setting(key: str, kind: str, value, default, choices: dict):
    """(typed value, None) or (None, message) for one setting."""
    optional, kind = kind.endswith("?"), kind.rstrip("?")
    if value in (None, "") and kind != "bool":
        return (None, None) if optional else (default, None)
    if kind == "int":
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        elif isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            return None, f"{key} must be a whole number (got {value!r})"
        if value < 1:
            return None, f"{key} must be ≥ 1 (got {value})"
        if value > MAX_SIZE:
            return None, f"{key} must be ≤ {MAX_SIZE:.0e} (got {value})"
        return value, None
    if kind == "float":
        try:
            if isinstance(value, bool):
                raise ValueError
            value = float(value)
        except (TypeError, ValueError):
            return None, f"{key} must be a number (got {value!r})"
        if not math.isfinite(value):
            return None, f"{key} must be a finite number (got {value!r})"
        if key == "mfu" and not 0 < value <= 1:
            return None, f"mfu must be in (0, 1] (got {value:g})"
        if value < 0 or (key == "train_tokens" and value == 0):
            return None, f"{key} must be {'>' if key == 'train_tokens' else '≥'} 0 (got {value:g})"
        return value, None
    if kind == "bool":
        if isinstance(value, str) and value.strip().lower() in ("true", "1", "on", "yes", "false", "0", "off", "no", ""):
            return value.strip().lower() in ("true", "1", "on", "yes"), None
        if isinstance(value, (bool, int)) and value in (0, 1):
            return bool(value), None
        return None, f"{key} must be true or false (got {value!r})"
    allowed = choices[key]  # a choice
    if value not in allowed:
        shown = [c for c in allowed if c is not None]
        return None, f"unknown {key} {value!r}; choose from {shown}" + (" or null" if None in allowed else "")
    return value, None


# ---------------------------------------------------------------------------- curves
def curve_contexts(block_size: int) -> list[int]:
    """~12 context lengths from 64 to max(block_size, 32768), evenly spaced on a log axis."""
    top = max(block_size, CURVE_MIN_TOP)
    lo, hi = math.log(CURVE_MIN_CONTEXT), math.log(top)
    points = sorted({round(math.exp(lo + (hi - lo) * i / (CURVE_POINTS - 1))) for i in range(CURVE_POINTS)})
    points[-1] = top
    return points


def _curves(cfg, analysis: dict) -> dict:
    """KV cache bytes (one sequence) and attention FLOPs per token (all layers) against context,
    for the model's attention pattern and each other one, from the engine's per-pattern counts."""
    contexts = curve_contexts(cfg.block_size)
    per_token = analysis["kv_cache_per_token"]
    n_layers = cfg.n_layer + ((cfg.n_decoder_layer or cfg.n_layer) if cfg.family == "encoder_decoder" else 0)
    series, bounded = [], []
    for kind in [cfg.attention, *(k for k in engine.ATTENTIONS if k != cfg.attention)]:
        other, cls = dataclasses.replace(cfg, attention=kind), engine.ATTENTIONS[kind]
        series.append({
            "attention": kind,
            "label": cls.label(other),  # with the values it reads: "sliding (window 4,096)"
            "color": cls.color,  # a token the charts' theme maps to a colour
            "chosen": kind == cfg.attention,
            "kv_cache": [per_token * cls.kv_positions(other, t) for t in contexts],
            "attention_flops": [n_layers * cls.flops_per_token(other, t) for t in contexts],
        })
        bound = cls.kv_bound(other)
        if bound is not None:  # named by the config field that sets it, if one does: "min(T, window)"
            named = [f for f in cls.fields if getattr(other, f) == bound]
            bounded.append(f"{kind}: × min(T, {named[0] if named else f'{bound:,}'})")
    return {
        "contexts": contexts,
        "block_size": cfg.block_size,
        "n_attention_layers": n_layers,
        "series": series,
        "formulas": {
            "kv_cache": f"KV cache(T) = kv_cache_per_token × cached positions = {per_token:,} B × T"
                        + (f" ({'; '.join(bounded)})" if bounded else "") + "; one sequence",
            "attention_flops": f"attention FLOPs/token(T) = {n_layers} layers × 4 · "
                               f"{'n_head · head_dim' if cfg.head_dim else 'n_embd'} · K̄(T), "
                               "K̄ = mean keys a query sees (full: (T+1)/2; linear: constant)",
        },
        "note": "",
    }


def _finite(x):
    """Floats that JSON cannot carry (inf, nan) become None."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x
