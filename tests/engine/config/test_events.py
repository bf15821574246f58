"""The event contract (``engine.config.events``): every event real training runs emit keeps it, the
validator finds what breaks it, the JSON Schema and docs/events.md come from the same
definitions, and the module imports no torch."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine import parse_spec, train
from engine.config import events
from engine.config.events import EVENTS, KINDS, event_schema, validate
from tests.engine.conftest import TEXT, TINY
from tests.engine.training.test_loop import _patch_training_loss, nan_at

ROOT = Path(__file__).resolve().parents[3]


def run(job: dict, **kw) -> list[dict]:
    out: list[dict] = []
    train(parse_spec(job), on_event=out.append, **kw)
    json.dumps(out, allow_nan=False)
    return out


def assert_valid(emitted: list[dict]) -> None:
    problems = [(e["kind"], p) for e in emitted for p in validate(e)]
    assert not problems, problems[:10]


@pytest.fixture
def text_path(tmp_path) -> str:
    path = tmp_path / "text.txt"
    path.write_text(TEXT * 4, encoding="utf-8")
    return str(path)


def test_a_decoder_with_experts_maps_evals_checkpoints_and_a_resume(text_path, tmp_path):
    # block_size 96 > attention_maps.MAX_TOKENS: the long-input maps (overview, input) and a snapshot
    job = {"model": {**TINY, "block_size": 96, "n_expert": 4, "top_k": 2},
           "data": {"source": "text", "path": text_path},
           "train": {"steps": 6, "batch_size": 4, "warmup_steps": 1, "eval_interval": 3, "eval_iters": 1, "log_interval": 1,
                     "checkpoint_every": 4}}
    emitted = run(job, checkpoint_dir=str(tmp_path / "ckpt"))
    kinds = {e["kind"] for e in emitted}
    assert kinds == {"start", "step", "health", "moe", "eval", "attention", "routing", "checkpoint", "end"}
    assert any("overview" in s for e in emitted if e["kind"] == "attention" for s in e["stacks"].values())
    assert all("aux_loss" in e for e in emitted if e["kind"] == "step")
    assert_valid(emitted)
    job["train"]["steps"] = 8
    resumed = run(job, checkpoint_dir=str(tmp_path / "ckpt2"), resume_from=str(tmp_path / "ckpt" / "step-000006"))
    assert resumed[0]["resumed_from_step"] == 6
    assert_valid(resumed)


@pytest.mark.parametrize("family", ["encoder", "encoder_decoder"])
def test_the_other_families(tiny_job, family):
    tiny_job["model"] |= {"family": family, "n_expert": 2, "top_k": 1}
    tiny_job["train"] |= {"steps": 5, "eval_interval": 5}
    emitted = run(tiny_job)
    assert {"attention", "routing", "eval"} <= {e["kind"] for e in emitted}
    if family == "encoder_decoder":
        assert any("source_tokens" in e for e in emitted if e["kind"] == "attention")
    assert_valid(emitted)


@pytest.mark.parametrize("objective", ["sft", "dpo"])
def test_sft_and_dpo(objective):
    job = {"model": {**TINY, "block_size": 48}, "data": {"task": "sort", "task_length": 3},
           "train": {"objective": objective, "steps": 4, "batch_size": 4, "warmup_steps": 1, "eval_interval": 4, "eval_iters": 1}}
    emitted = run(job)
    if objective == "dpo":
        assert {"reward_margin", "chosen_logp"} <= set(next(e for e in emitted if e["kind"] == "eval"))
    assert_valid(emitted)


@pytest.mark.parametrize("policy", ["skip", "stop"])
def test_nonfinite_steps(tiny_job, monkeypatch, policy):
    _patch_training_loss(monkeypatch, nan_at(2))
    tiny_job["train"] |= {"steps": 4, "on_nonfinite": policy}
    emitted = run(tiny_job)
    assert any(e["kind"] == "nonfinite" for e in emitted)
    assert emitted[-1]["kind"] == "end" and emitted[-1]["reason"] == ("nonfinite" if policy == "stop" else "completed")
    assert_valid(emitted)


def test_the_validator_names_what_breaks_the_contract():
    good = {"kind": "nonfinite", "step": 3, "action": "skip", "message": "step 3: loss nan"}
    assert validate(good) == [] and events.check(good) is good
    assert validate({**good, "kind": "nope"}) == [f"unknown event kind 'nope'; choose from {sorted(EVENTS)}"]
    assert validate({**good, "action": "retry"}) == ["nonfinite.action: 'retry' is not one of ['skip', 'lower_lr', 'stop']"]
    assert validate({**good, "step": True}) == ["nonfinite.step: expected int, got bool True"]
    assert validate({**good, "extra": 1}) == ["nonfinite: unexpected key 'extra'"]
    assert validate({k: v for k, v in good.items() if k != "message"}) == ["nonfinite: missing 'message'"]
    ckpt = {"kind": "moe", "step": 1, "layers": [{"layer": 0, "tokens_per_expert": [1, "2"], "dropped": 0,
                                                  "aux_loss": float("nan"), "z_loss": None}]}
    assert validate(ckpt) == ["moe.layers[0].tokens_per_expert[1]: expected int, got str '2'",
                              "moe.layers[0].aux_loss: nan is not float | None"]
    with pytest.raises(ValueError, match="missing 'sample'"):
        events.check({"kind": "eval", "step": 1, "train_loss": 1.0, "val_loss": 1.0, "accuracy": None})
    stored = {"seq": 4, "kind": "lost", "ts": 1.0, "data": {"note": "gone"}}
    assert events.validate_message(stored) == []


def test_the_json_schema_has_one_object_per_kind():
    schema = event_schema()
    json.dumps(schema)
    refs = [entry["$ref"].rsplit("/", 1)[1] for entry in schema["oneOf"]]
    assert [schema["$defs"][r]["properties"]["kind"]["const"] for r in refs] == list(KINDS)
    assert list(schema["x-kinds"]) == list(KINDS)
    step = schema["$defs"]["StepEvent"]
    assert step["additionalProperties"] is False and "aux_loss" not in step["required"] and "loss" in step["required"]
    assert step["properties"]["loss"]["anyOf"] == [{"type": "number"}, {"type": "null"}]
    assert step["properties"]["loss"]["description"].startswith("mean training loss")
    health_layers = schema["$defs"]["HealthEvent"]["properties"]["layers"]
    assert health_layers["items"] == {"$ref": "#/$defs/HealthLayer"}
    assert schema["x-kinds"]["checkpoint"]["saved_at_once"] is True
    assert schema["x-kinds"]["step"]["summary"][:2] == ["loss", "lr"]


def test_every_summary_key_is_a_key_of_its_kind():
    for kind, e in EVENTS.items():
        assert set(e.summary) <= set(e.type.__annotations__), kind
        assert e.type.__annotations__["kind"].__args__ == (kind,)


def test_docs_events_md_is_generated_from_the_definitions():
    assert (ROOT / "docs" / "events.md").read_text(encoding="utf-8") == events.markdown(), \
        "docs/events.md is stale: python -m engine.config.events --markdown > docs/events.md"


def test_the_contract_imports_no_torch():
    # loaded as a file, not through the engine package (whose __init__ imports the models)
    code = ("import importlib.util, sys; s = importlib.util.spec_from_file_location('ev', 'engine/config/events.py'); "
            "m = importlib.util.module_from_spec(s); sys.modules['ev'] = m; s.loader.exec_module(m); "
            "m.event_schema(); print(sorted(n for n in sys.modules if n.split('.')[0] in ('torch', 'engine')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

