"""Checkpoints: a training run's weights, optimiser state and data position, in safetensors.

A checkpoint is a directory::

    step-000100/
        model.safetensors      the model's weights (tied tensors stored once)
        optimizer.safetensors  every tensor of the optimiser's state, keyed "state.<param>.<name>"
        trainer.json           format, step, the JobSpec, the tokenizer, the optimiser's
                               param_groups and non-tensor state, the RNG states (data order,
                               dropout) and the loop's counters, so training resumes exactly

``save_checkpoint`` writes it into a temporary directory and renames it into place, so a run
killed mid-write leaves the previous checkpoint whole; ``latest_checkpoint`` finds the newest
complete one. ``engine.train(spec, checkpoint_dir=..., resume_from=...)`` writes them every
``checkpoint_every`` steps and at the end, and resumes from one: a resumed run's losses equal
those of an uninterrupted run (on the CPU; tests prove it). ``init_from=`` starts a new run from a
checkpoint's weights only (fine-tuning: pretrain → SFT → DPO).

Weights snapshots for attention zoom. The zoom of a long input's attention maps
(``engine.attention_zoom``) recomputes them from the weights of the evaluation's step, but only
the newest ``keep`` checkpoints stay. So when pruning drops a checkpoint whose step was an
evaluation with long-input maps (``keeps_weights``), its weights stay as ``weights-000100/``
(model.safetensors and trainer.json, no optimiser state: a third of an AdamW checkpoint);
``save_snapshot`` writes one directly (for an evaluation between two checkpoints, whose weights
are otherwise never saved). At most ``SNAPSHOTS_KEPT`` of them and ``SNAPSHOT_BYTES`` in all, the
oldest dropped first. They are not checkpoints (``list_checkpoints`` leaves them out: no resume
or export from them); ``list_weights`` finds both.

``load_model(path)`` gives (model, tokenizer, config) for inference;
``engine.interop.export.export_transformers(path, out_dir)`` writes a ``transformers`` model
directory (``save_pretrained``) where ``engine.interop`` maps the architecture.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file
from safetensors.torch import load_model as _load_weights
from safetensors.torch import save_model as _save_weights

from ..config.schema import ModelConfig
from ..data.tokenizers import tokenizer_from_dict
from ..introspect.attention_maps import MAX_TOKENS

FORMAT = "llm-explorer-checkpoint/1"
MODEL_FILE, OPTIMIZER_FILE, STATE_FILE = "model.safetensors", "optimizer.safetensors", "trainer.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_WEIGHTS_DIR = re.compile(r"^weights-(\d+)$")
SNAPSHOTS_KEPT = 8  # weights snapshots kept for attention zoom (besides the checkpoints)
SNAPSHOT_BYTES = 1 << 30  # and their bytes in all; the oldest go first


@dataclass
class Checkpoint:
    """What ``read_checkpoint`` returns: the pieces of a saved run, weights not yet loaded."""

    path: str
    step: int
    spec: dict  # the JobSpec as a dict
    tokenizer: dict  # ``Tokenizer.to_dict()``
    trainer: dict  # the loop's counters and RNG states (see ``engine.train``)

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.spec["model"])


def step_dir(directory: str, step: int) -> str:
    return os.path.join(directory, f"step-{step:06d}")


def _encode_state(state) -> str:
    return base64.b64encode(state.numpy().tobytes()).decode("ascii")


def _decode_state(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


def rng_state(batches: torch.Generator) -> dict:
    """The random streams a run draws from: its batch order and torch's global RNG (dropout)."""
    state = {"batches": _encode_state(batches.get_state()), "torch": _encode_state(torch.get_rng_state())}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [_encode_state(s) for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng(state: dict, batches: torch.Generator) -> None:
    batches.set_state(_decode_state(state["batches"]))
    torch.set_rng_state(_decode_state(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_decode_state(s) for s in state["cuda"]])


def _split_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """The optimiser's state dict as flat tensors for safetensors plus a JSON-able rest."""
    sd = optimizer.state_dict()
    tensors, rest = {}, {}
    for index, entry in sd["state"].items():
        kept = {}
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().contiguous().cpu()
            else:
                kept[name] = value  # None (SGD's first momentum buffer) or a number
        rest[str(index)] = kept
    return tensors, {"state": rest, "param_groups": sd["param_groups"]}


def _join_optimizer(tensors: dict[str, torch.Tensor], rest: dict) -> dict:
    state = {int(index): dict(kept) for index, kept in rest["state"].items()}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": rest["param_groups"]}


def save_checkpoint(directory: str, *, step: int, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                    spec: dict, tokenizer, trainer: dict, keep: int = 3) -> str:
    """Write step ``step``'s checkpoint under ``directory`` (see the module docstring) and keep
    only the newest ``keep`` (0 keeps all). Returns the checkpoint's path."""
    os.makedirs(directory, exist_ok=True)
    final = step_dir(directory, step)
    tmp = tempfile.mkdtemp(prefix=".partial-", dir=directory)
    try:
        _save_weights(model, os.path.join(tmp, MODEL_FILE))
        optimizer_rest = None
        if optimizer is not None:
            tensors, optimizer_rest = _split_optimizer(optimizer)
            save_file(tensors, os.path.join(tmp, OPTIMIZER_FILE))
        with open(os.path.join(tmp, STATE_FILE), "w", encoding="utf-8") as f:
            json.dump({"format": FORMAT, "step": step, "spec": spec, "tokenizer": tokenizer.to_dict(),
                       "optimizer": optimizer_rest, "trainer": trainer}, f)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep:
        for old in list_checkpoints(directory)[:-keep]:
            if keeps_weights(spec, old["step"]):
                _strip_to_weights(old["path"], weights_dir(directory, old["step"]))
            else:
                shutil.rmtree(old["path"], ignore_errors=True)
        prune_snapshots(directory)
    return final


# ---------------------------------------------------------------------------- weights snapshots
def weights_dir(directory: str, step: int) -> str:
    return os.path.join(directory, f"weights-{step:06d}")


def keeps_weights(spec: dict, step: int) -> bool:
    """Whether the run ``spec`` (a JobSpec dict) evaluated at ``step`` with attention maps of an
    input longer than ``attention_maps.MAX_TOKENS``: maps with an overview, whose zoom needs that
    step's weights. The input is at most ``block_size`` tokens (``attention_maps.eval_input``)."""
    t, m = spec.get("train", {}), spec.get("model", {})
    evaluated = step % t.get("eval_interval", 50) == 0 or step == t.get("steps")
    return bool(t.get("attention_maps", True)) and evaluated and m.get("block_size", 0) > MAX_TOKENS


def _strip_to_weights(path: str, target: str) -> None:
    """Turn the checkpoint at ``path`` into the weights snapshot ``target``: drop the optimiser
    state and rename (atomic; no weights rewritten)."""
    try:
        os.remove(os.path.join(path, OPTIMIZER_FILE))
    except FileNotFoundError:
        pass
    shutil.rmtree(target, ignore_errors=True)  # a retried run passes the same step again
    os.replace(path, target)


def save_snapshot(directory: str, *, step: int, model: nn.Module, spec: dict, tokenizer) -> str:
    """Write the weights of ``step`` alone under ``directory`` (for the zoom of that evaluation's
    attention maps, see the module docstring), atomically, then drop the oldest snapshots over
    the limits. Returns its path."""
    os.makedirs(directory, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".partial-", dir=directory)
    try:
        _save_weights(model, os.path.join(tmp, MODEL_FILE))
        with open(os.path.join(tmp, STATE_FILE), "w", encoding="utf-8") as f:
            json.dump({"format": FORMAT, "step": step, "spec": spec, "tokenizer": tokenizer.to_dict(),
                       "optimizer": None, "trainer": {}}, f)
        final = weights_dir(directory, step)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune_snapshots(directory)
    return final


def _listed(directory: str, pattern: re.Pattern) -> list[dict]:
    found = []
    if not directory or not os.path.isdir(directory):
        return found
    for name in os.listdir(directory):
        match = pattern.match(name)
        path = os.path.join(directory, name)
        try:
            if match and os.path.exists(os.path.join(path, STATE_FILE)):
                size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
                found.append({"step": int(match[1]), "path": path, "bytes": size})
        except FileNotFoundError:  # pruned or renamed meanwhile (another process reads while a run writes)
            continue
    return sorted(found, key=lambda c: c["step"])


def list_snapshots(directory: str) -> list[dict]:
    """Weights snapshots under ``directory``, oldest first: {step, path, bytes}."""
    return _listed(directory, _WEIGHTS_DIR)


def prune_snapshots(directory: str, *, kept: int = SNAPSHOTS_KEPT, max_bytes: int = SNAPSHOT_BYTES) -> None:
    """Drop the oldest weights snapshots until at most ``kept`` remain, of ``max_bytes`` in all."""
    found = list_snapshots(directory)
    total = sum(s["bytes"] for s in found)
    while found and (len(found) > kept or total > max_bytes):
        old = found.pop(0)
        shutil.rmtree(old["path"], ignore_errors=True)
        total -= old["bytes"]


def list_weights(directory: str) -> list[dict]:
    """Every step whose weights ``directory`` keeps, checkpoints and snapshots, oldest first:
    {step, path, bytes, checkpoint (bool)}; a checkpoint wins over a snapshot of its step."""
    by_step = {s["step"]: {**s, "checkpoint": False} for s in list_snapshots(directory)}
    by_step.update({c["step"]: {**c, "checkpoint": True} for c in list_checkpoints(directory)})
    return [by_step[step] for step in sorted(by_step)]


def list_checkpoints(directory: str) -> list[dict]:
    """Complete checkpoints under ``directory``, oldest first: {step, path, bytes}."""
    return _listed(directory, _STEP_DIR)


def latest_checkpoint(directory: str) -> str | None:
    found = list_checkpoints(directory)
    return found[-1]["path"] if found else None


def read_checkpoint(path: str) -> Checkpoint:
    """The checkpoint at ``path`` (a step directory); ValueError when it is not one."""
    try:
        with open(os.path.join(path, STATE_FILE), encoding="utf-8") as f:
            state = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a readable checkpoint: {exc}") from None
    if state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a checkpoint of this engine (format {state.get('format')!r})")
    trainer = dict(state.get("trainer") or {})
    trainer["optimizer"] = state.get("optimizer")
    return Checkpoint(path=path, step=state["step"], spec=state["spec"], tokenizer=state["tokenizer"], trainer=trainer)


def architecture_mismatch(saved: ModelConfig, wanted: ModelConfig) -> list[str]:
    """The architecture fields on which two configs differ ("n_embd: checkpoint 128, job 64"),
    ignoring the ones that do not change the weights' shapes or meaning at load time."""
    free = {"dropout", "attn_impl", "mlm_probability", "noise_density", "mean_span_length"}
    a, b = saved.to_dict(), wanted.to_dict()
    return [f"{k}: checkpoint {a[k]!r}, this job {b.get(k)!r}" for k in a if k not in free and a[k] != b.get(k)]


def load_weights(model: nn.Module, path: str) -> None:
    """Load a checkpoint's weights into ``model`` (built from the same architecture)."""
    missing, unexpected = _load_weights(model, os.path.join(path, MODEL_FILE), strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not fit this model: missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")


def load_optimizer(optimizer: torch.optim.Optimizer, checkpoint: Checkpoint) -> None:
    rest = checkpoint.trainer.get("optimizer")
    if rest is None:
        raise ValueError(f"checkpoint {checkpoint.path} holds no optimiser state")
    tensors = load_file(os.path.join(checkpoint.path, OPTIMIZER_FILE))
    optimizer.load_state_dict(_join_optimizer(tensors, rest))


def load_model(path: str, device: str | torch.device = "cpu"):
    """``(model, tokenizer, config)`` from a checkpoint, the model in eval mode on ``device``."""
    from ..models.families import build_model

    checkpoint = read_checkpoint(path)
    config = checkpoint.model_config
    model = build_model(config)
    load_weights(model, path)
    return model.to(device).eval(), tokenizer_from_dict(checkpoint.tokenizer), config
