"""Supervised fine-tuning: the chat template, response-only loss masks, JSONL files and their
errors, the synthetic instruction sets, and SFT trained end to end."""

import json
import math

import pytest
import torch

import engine
from engine import ConfigError
from engine.data.chat import END, ChatFile, cut_response, pad_rows, parse, render, render_pair
from engine.data.datasets import load_data
from engine.training.objectives import TRAINING_OBJECTIVES, build_objective

from ..conftest import TINY

CHAT = {**TINY, "block_size": 48}  # the template alone is 32 characters
SFT_TRAIN = {"objective": "sft", "steps": 40, "batch_size": 16, "lr": 1e-2, "warmup_steps": 5, "eval_interval": 20,
             "eval_iters": 2, "attention_maps": False}


def _jsonl(tmp_path, lines, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    return str(path)


def _path_error(path, objective="sft") -> str:
    with pytest.raises(ConfigError) as e:
        engine.parse_spec({"model": CHAT, "data": {"source": "jsonl", "path": path}, "train": {"objective": objective}})
    return e.value.errors["data.path"]


def test_chat_template_round_trip():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi\nthere"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Reverse: abc"},
                {"role": "assistant", "content": "cba"}]
    prompt, response = render(messages)
    assert prompt.endswith("<|user|>\nReverse: abc\n<|assistant|>\n") and response == "cba" + END
    assert parse(prompt + response) == messages
    assert "".join(render_pair("Reverse: abcd", "dcba")) == "<|user|>\nReverse: abcd\n<|assistant|>\ndcba<|end|>"
    assert cut_response("dcba<|end|>xyz") == "dcba"


def test_loss_mask_covers_the_response_only():
    # prompts of 3 and 2 tokens, responses of 2 and 4 (the end marker included)
    x, y = pad_rows([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]], [3, 2], block_size=16)
    assert x.tolist() == [[1, 2, 3, 4, 0], [6, 7, 8, 9, 10]]
    assert y.tolist() == [[-1, -1, 4, 5, -1], [-1, 7 + 1, 9, 10, 11]]
    # rows longer than block_size + 1 lose their end
    x, y = pad_rows([[1, 2, 3, 4, 5]], [2], block_size=3)
    assert x.tolist() == [[1, 2, 3]] and y.tolist() == [[-1, 3, 4]]


def test_synthetic_instructions_mask_exactly_the_prompt():
    spec = engine.parse_spec({"model": CHAT, "data": {"task": "reverse", "task_length": 4},
                              "train": {"objective": "sft"}})
    data = load_data(spec.data, "sft")
    x, y = data.get_batch("train", 8, spec.model.block_size, torch.Generator().manual_seed(0))
    tok = data.tokenizer
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        text = tok.decode(row_x)
        prompt, response = text.split("<|assistant|>\n")
        instruction = prompt.removeprefix("<|user|>\nReverse: ").removesuffix("\n")
        n_prompt = len(prompt) + len("<|assistant|>\n")
        assert row_y[: n_prompt - 1] == [-1] * (n_prompt - 1)  # no loss up to the assistant header
        assert tok.decode(row_y[n_prompt - 1 :]) == instruction[::-1] + END  # loss on every response token
    assert spec.model.vocab_size == tok.vocab_size


def test_jsonl_sft_file_in_both_formats(tmp_path):
    path = _jsonl(tmp_path, [{"prompt": "2+2?", "response": "4"},
                             {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}]},
                             "", {"prompt": "Capital of France?", "response": "Paris"}])
    spec = engine.parse_spec({"model": CHAT, "data": {"source": "jsonl", "path": path}, "train": {"objective": "sft"}})
    data = load_data(spec.data, "sft")
    assert len(data.train_examples) == 2 and len(data.val_examples) == 1  # blank lines skipped, the last held out
    described = engine.describe_data(spec.data, "sft")
    assert described["vocab_size"] == spec.model.vocab_size and "3 chat examples" in described["description"]
    prompt, response = data.val_examples[0]
    assert data.tokenizer.decode(prompt + response) == "<|user|>\nCapital of France?\n<|assistant|>\nParis<|end|>"


def test_jsonl_errors_name_the_line_and_field(tmp_path):
    assert "has no examples" in _path_error(_jsonl(tmp_path, ["", "  "]))
    message = _path_error(_jsonl(tmp_path, [{"prompt": "a", "response": "b"}, {"prompt": "c"}]))
    assert "line 2" in message and "'response'" in message
    message = _path_error(_jsonl(tmp_path, [{"prompt": "a", "response": "b"}, "", '{"prompt": "c", "response"']))
    assert "line 3" in message and "invalid JSON" in message
    message = _path_error(_jsonl(tmp_path, [{"prompt": "a", "response": 3}, {"prompt": "c", "response": "d"}]))
    assert "line 1" in message and "must be a string" in message
    message = _path_error(_jsonl(tmp_path, [{"messages": [{"role": "user", "content": "x"}]}, {"prompt": "c",
                                                                                              "response": "d"}]))
    assert "line 1" in message and "assistant" in message
    assert "at least 2" in _path_error(_jsonl(tmp_path, [{"prompt": "a", "response": "b"}]))
    assert "not found" in _path_error(str(tmp_path / "missing.jsonl"))


def test_objective_choices_and_refusals(text_file):
    assert list(TRAINING_OBJECTIVES) == ["pretrain", "sft", "dpo"] == engine.choices()["objective"]
    for objective in ("sft", "dpo"):
        for family in ("encoder", "encoder_decoder"):
            with pytest.raises(ConfigError) as e:
                engine.parse_spec({"model": {**CHAT, "family": family}, "train": {"objective": objective}})
            assert "decoder" in e.value.errors["train.objective"] and repr(family) in e.value.errors["train.objective"]
        with pytest.raises(ConfigError) as e:
            engine.parse_spec({"model": CHAT, "data": {"source": "text", "path": text_file},
                               "train": {"objective": objective}})
        assert "'jsonl'" in e.value.errors["train.objective"]
    with pytest.raises(ConfigError) as e:
        engine.parse_spec({"model": CHAT, "data": {"source": "jsonl", "path": text_file}})
    assert "'sft' or 'dpo'" in e.value.errors["train.objective"]
    with pytest.raises(ConfigError) as e:
        engine.parse_spec({"model": CHAT, "data": {"source": "jsonl"}, "train": {"objective": "sft"}})
    assert "path is required" in e.value.errors["data.path"]
    with pytest.raises(ConfigError) as e:
        engine.parse_spec({"model": TINY, "data": {"task": "reverse", "task_length": 4}, "train": {"objective": "sft"}})
    assert "raise block_size" in e.value.errors["model.block_size"]


def test_field_specs_show_beta_for_dpo_only():
    specs = {s["name"]: s for s in engine.field_specs()}
    assert specs["train.objective"]["choices"] == ["pretrain", "sft", "dpo"]
    assert specs["train.objective"]["default"] == "pretrain"
    assert specs["train.dpo_beta"]["show_if"] == {"train.objective": ["dpo"]}
    assert specs["train.dpo_beta"]["default"] == 0.1


def test_sft_lowers_the_response_loss():
    spec = engine.parse_spec({"model": CHAT, "data": {"task": "copy", "task_length": 2}, "train": SFT_TRAIN})
    events = []
    result = engine.train(spec, on_event=events.append)
    steps = [e for e in events if e["kind"] == "step"]
    evals = [e for e in events if e["kind"] == "eval"]
    assert steps[0]["loss"] == pytest.approx(math.log(spec.model.vocab_size), rel=0.25)  # uniform at the start
    assert steps[-1]["loss"] < steps[0]["loss"] - 1.5
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] and 0 <= evals[-1]["accuracy"] <= 1
    sample = evals[-1]["sample"]
    assert sample["prompt"].startswith("<|user|>\nCopy: ") and sample["prompt"].endswith("<|assistant|>\n")
    assert sample["expected"] == sample["prompt"].split(": ")[1].split("\n")[0]  # copy: the items again
    assert END not in sample["completion"] and "chosen_logp" not in steps[-1]
    assert result.tokenizer.vocab_size == spec.model.vocab_size


def test_sft_on_a_file_with_bytes(tmp_path):
    pairs = [{"prompt": f"{a}+{b}", "response": str(a + b)} for a in range(6) for b in range(6)]
    path = _jsonl(tmp_path, pairs)
    spec = engine.parse_spec({"model": CHAT, "data": {"source": "jsonl", "path": path, "tokenizer": "byte"},
                              "train": {**SFT_TRAIN, "steps": 6, "eval_interval": 6, "sample_tokens": 5}})
    assert spec.model.vocab_size == 256
    events = []
    engine.train(spec, on_event=events.append)
    ev = [e for e in events if e["kind"] == "eval"][-1]
    assert ev["accuracy"] is None and ev["val_loss"] is not None  # exact match only on synthetic answers
    # the last 10% of the lines are held out: 5+3, 5+4, 5+5
    assert ev["sample"]["prompt"] == "<|user|>\n5+3\n<|assistant|>\n" and ev["sample"]["expected"] == "8"


def test_chat_file_reads_like_a_data_source(tmp_path):
    cfg = engine.DataConfig(source="jsonl", path=_jsonl(tmp_path, [{"prompt": "a", "response": "b"}] * 4))
    data = ChatFile(cfg)
    assert data.check_block_size(2) is not None and data.check_block_size(64) is None
    x, y = data.eval_batches("val", 8, 64, 1)[0]
    assert x.shape == y.shape and (y != -1).sum() == len("b" + END)


def test_sft_objective_is_the_decoders_next_token_loss():
    spec = engine.parse_spec({"model": CHAT, "data": {"task": "sort", "task_length": 3}, "train": {"objective": "sft"}})
    objective = build_objective(load_data(spec.data, "sft"), spec.model, spec.train)
    model = engine.build_model(spec.model)
    x, y = objective.get_batch("train", 4, torch.Generator().manual_seed(0))
    assert objective.wrap(model, model) is model  # the model's own (masked) loss
    logits, loss = model(x, y)
    picked = torch.log_softmax(logits, -1).gather(-1, y.clamp_min(0)[..., None])[..., 0]
    assert loss.item() == pytest.approx(-(picked[y != -1]).mean().item(), rel=1e-5)
