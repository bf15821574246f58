import json
import os
import time

import pytest
import torch

from engine import DATA_SOURCES, TASKS, ConfigError, DataConfig, describe_data
from engine.data.datasets import STDLIB_MAX_CHARS, load_data, read_stdlib

DESCRIBE_KEYS = {"vocab_size", "n_tokens", "train_tokens", "val_tokens", "name", "description"}


OBJECTIVE = {"jsonl": "sft"}  # a source pretraining cannot read, with an objective that can


def config_for(source: str, text_file: str) -> DataConfig:
    path = None
    if source == "text":
        path = text_file
    elif source == "jsonl":  # prompt/response lines beside the text file
        path = os.path.join(os.path.dirname(text_file), "chats.jsonl")
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"prompt": f"say {i}", "response": str(i)}) + "\n" for i in range(10))
    return DataConfig(source=source, path=path, task_length=3)


@pytest.mark.parametrize("source", DATA_SOURCES)
def test_every_source_describes_itself_and_batches(source, text_file):
    objective = OBJECTIVE.get(source, "pretrain")
    data = load_data(config_for(source, text_file), objective)
    info = describe_data(config_for(source, text_file), objective)
    assert set(info) == DESCRIBE_KEYS
    assert info["vocab_size"] == data.tokenizer.vocab_size > 0
    assert info["train_tokens"] > 0 and info["val_tokens"] > 0
    block_size = 48 if source == "jsonl" else 16  # the chat template alone is 32 characters
    assert data.check_block_size(block_size) is None
    x, y = data.get_batch("train", 4, block_size, torch.Generator().manual_seed(0))
    assert x.shape == y.shape and x.shape[0] == 4 and x.shape[1] <= block_size
    assert x.dtype == y.dtype == torch.long
    assert int(x.max()) < info["vocab_size"] and int(y.max()) < info["vocab_size"]
    scored = y[y != -1]
    assert len(scored) > 0


def test_stdlib_is_real_python_source():
    text = read_stdlib()
    assert 1_000_000 < len(text) <= STDLIB_MAX_CHARS
    assert "def " in text and "import " in text and "class " in text
    info = describe_data(DataConfig(source="stdlib"))
    assert info["n_tokens"] == len(text)  # char tokenizer: one token per character


def test_text_split_holds_out_the_end(text_file):
    cfg = DataConfig(source="text", path=text_file, val_fraction=0.25)
    data = load_data(cfg)
    text = open(text_file, encoding="utf-8").read()
    n_val = int(len(text) * 0.25)
    assert data.tokenizer.decode(data.val.tolist()) == text[len(text) - n_val :]
    assert data.tokenizer.decode(data.train.tolist()) == text[: len(text) - n_val]


def test_text_batches_are_shifted_by_one(text_file):
    data = load_data(DataConfig(source="text", path=text_file))
    x, y = data.get_batch("val", 3, 8, torch.Generator().manual_seed(1))
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_describe_is_cached_and_sees_file_edits(text_file):
    cfg = DataConfig(source="text", path=text_file)
    first = describe_data(cfg)
    assert load_data(cfg) is load_data(DataConfig(source="text", path=text_file))
    assert describe_data(cfg) == first
    with open(text_file, "a", encoding="utf-8") as f:
        f.write("Zebra!")
    os.utime(text_file, ns=(time.time_ns(), time.time_ns() + 10**9))
    second = describe_data(cfg)
    assert second["n_tokens"] == first["n_tokens"] + 6
    assert second["vocab_size"] > first["vocab_size"]  # "Z" and "b" are new characters


@pytest.mark.parametrize(
    "content,message",
    [(None, "file not found"), (b"", "is empty"), (b"caf\xe9 latin-1", "not UTF-8")],
)
def test_bad_text_files_are_reported_on_data_path(tmp_path, content, message):
    path = tmp_path / "data.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as e:
        describe_data(DataConfig(source="text", path=str(path)))
    assert list(e.value.errors) == ["data.path"]
    assert message in e.value.errors["data.path"]


@pytest.mark.parametrize("task", TASKS)
def test_synthetic_held_out_set_is_disjoint_from_training(task):
    data = load_data(DataConfig(task=task, task_length=2, val_fraction=0.5))
    val = {tuple(p) for p in data.val_prompts.tolist()}
    assert len(val) == len(data.val_prompts)  # distinct
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        x, _ = data.get_batch("train", 32, 16, generator)
        prompts = x[:, : data.prompt_len].tolist()
        assert not val.intersection(map(tuple, prompts))


def test_synthetic_loss_only_on_the_answer():
    data = load_data(DataConfig(task="copy", task_length=4))
    x, y = data.get_batch("train", 2, 16, torch.Generator().manual_seed(0))
    row = data.tokenizer.decode(x[0].tolist())  # e.g. "abcd>abcd": the last "." is only a target
    assert len(row) == 9 and row[4] == ">" and row[:4] == row[5:]
    assert (y[:, :4] == -1).all() and (y[:, 4:] != -1).all()
    assert data.tokenizer.decode(y[0, 4:].tolist()) == row[:4] + "."


def test_synthetic_held_out_set_depends_on_the_seed_only():
    a = load_data(DataConfig(task="sort", seed=1))
    b = load_data(DataConfig(task="sort", seed=1, tokenizer="byte"))  # tokenizer is ignored
    c = load_data(DataConfig(task="sort", seed=2))
    assert torch.equal(a.val_prompts, b.val_prompts)
    assert not torch.equal(a.val_prompts, c.val_prompts)


def test_block_size_checks_name_the_numbers(text_file):
    text = load_data(DataConfig(source="text", path=text_file))
    assert text.check_block_size(8) is None
    message = text.check_block_size(1000)
    assert "block_size (1000)" in message and "validation split" in message
    copy = load_data(DataConfig(task="copy", task_length=8))
    assert copy.check_block_size(17) is None
    assert copy.check_block_size(16) == (
        "block_size (16) is shorter than one copy example (18 tokens at task_length 8, which needs "
        "block_size ≥ 17); raise block_size to ≥ 17 or lower task_length"
    )
