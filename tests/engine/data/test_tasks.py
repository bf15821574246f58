import pytest
import torch

from engine import TASKS


def reference_answer(task: str, prompt: str) -> str:
    """The answer worked out in plain Python, independently of the tensor code."""
    body = prompt[:-1]
    if task == "copy":
        return body + "."
    if task == "reverse":
        return body[::-1] + "."
    if task == "sort":
        return "".join(sorted(body)) + "."
    if task == "modadd":
        a, b = body.split("+")
        return f"{(int(a) + int(b)) % 97:02d}."
    if task == "recall":
        pairs, key = body.split("?")
        return dict(zip(pairs[::2], pairs[1::2]))[key] + "."
    raise AssertionError(f"add a reference answer for the new task {task!r} here")


@pytest.mark.parametrize("name", TASKS)
@pytest.mark.parametrize("n", [1, 3, 8])
def test_examples_are_well_formed_and_correct(name, n):
    task = TASKS[name]()
    prompt, answer = task.sample(64, n, torch.Generator().manual_seed(0))
    assert prompt.size(1) + answer.size(1) == task.example_len(n)
    assert answer.size(1) == task.answer_len(n)
    assert int(torch.cat([prompt, answer], dim=1).max()) < task.tokenizer.vocab_size
    for p, a in zip(prompt.tolist(), answer.tolist()):
        text = task.tokenizer.decode(p)
        assert task.tokenizer.decode(a) == reference_answer(name, text), text


@pytest.mark.parametrize("name", TASKS)
def test_deterministic_per_seed(name):
    task = TASKS[name]()
    a = task.sample(16, 4, torch.Generator().manual_seed(7))
    b = task.sample(16, 4, torch.Generator().manual_seed(7))
    c = task.sample(16, 4, torch.Generator().manual_seed(8))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])


@pytest.mark.parametrize("name", TASKS)
def test_count_is_positive_and_length_limit_holds(name):
    task = TASKS[name]()
    assert task.count(1) >= 10
    task.sample(4, task.max_length, torch.Generator().manual_seed(0))  # the longest allowed works


def test_recall_keys_are_distinct():
    prompt, _ = TASKS["recall"]().sample(32, 16, torch.Generator().manual_seed(0))
    keys = prompt[:, 0:32:2]
    assert all(len(set(row)) == 16 for row in keys.tolist())
