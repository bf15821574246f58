"""The fine-tuning spec's validation: every bad field named by its dotted path (no torch needed)."""

import pytest

from engine.config.errors import ConfigError
from engine.finetune.config import TARGET_MODULES, parse_finetune


def errors_of(d):
    with pytest.raises(ConfigError) as info:
        parse_finetune(d)
    return info.value.errors


def test_defaults_are_a_50_step_lora_sft_on_the_built_in_set():
    spec = parse_finetune({})
    assert (spec.objective, spec.method, spec.data.source, spec.train.steps) == ("sft", "lora", "builtin", 50)
    assert (spec.lora.rank, spec.lora.alpha, spec.lora.dropout) == (8, 16.0, 0.05)
    assert spec.lora.target_modules == list(TARGET_MODULES)
    assert parse_finetune(spec.to_dict()).to_dict() == spec.to_dict()  # a stored spec parses again


@pytest.mark.parametrize(("lora", "field", "words"), [
    ({"rank": 0}, "lora.rank", "from 1"),
    ({"rank": 2.5}, "lora.rank", "whole number"),
    ({"rank": "8"}, "lora.rank", "number"),
    ({"alpha": 0}, "lora.alpha", "> 0"),
    ({"alpha": -1}, "lora.alpha", "> 0"),
    ({"dropout": 1}, "lora.dropout", "[0, 1)"),
    ({"dropout": -0.1}, "lora.dropout", "[0, 1)"),
    ({"target_modules": []}, "lora.target_modules", "at least one"),
    ({"target_modules": ["qkv"]}, "lora.target_modules", "'qkv'"),
    ({"scale": 2}, "lora.scale", "unknown"),
])
def test_lora_settings_are_checked_at_their_field(lora, field, words):
    errors = errors_of({"lora": lora})
    assert list(errors) == [field] and words in errors[field]


def test_other_fields():
    errors = errors_of({"objective": "ppo", "method": "qlora", "train": {"steps": 0, "optimizer": "sgd"},
                        "data": {"source": "web"}, "prompts": [], "max_new_tokens": 10_000})
    assert set(errors) == {"objective", "method", "train.steps", "train.optimizer", "data.source", "prompts",
                           "max_new_tokens"}
    assert "jsonl" in errors_of({"data": {"source": "jsonl"}})["data.path"]
    # DPO reads preference data: the synthetic task's pairs by default
    assert parse_finetune({"objective": "dpo"}).data.source == "synthetic"


def test_target_modules_keep_the_models_order():
    spec = parse_finetune({"lora": {"target_modules": "v_proj, q_proj,v_proj"}})
    assert spec.lora.target_modules == ["q_proj", "v_proj"]


def test_a_short_run_warms_up_for_at_most_its_steps():
    assert parse_finetune({"train": {"steps": 2}}).train.warmup_steps == 2
    assert "train.warmup_steps" in errors_of({"train": {"steps": 2, "warmup_steps": 3}})
