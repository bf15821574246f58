"""Engine fixtures: the tiny shared config (2 layers, 4 heads, width 32) and small inputs."""

import pytest
import torch

from engine import ModelConfig

TINY = {"n_layer": 2, "n_head": 4, "n_embd": 32, "block_size": 16}

# a job that trains in well under a second: copy of 3 letters, learnt in a few dozen steps
TINY_JOB = {
    "model": dict(TINY),
    "data": {"source": "synthetic", "task": "copy", "task_length": 3},
    "train": {"steps": 12, "batch_size": 16, "lr": 1e-2, "warmup_steps": 3, "eval_interval": 5, "eval_iters": 2},
}

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 8


@pytest.fixture
def tiny_config() -> ModelConfig:
    return ModelConfig(**TINY, vocab_size=23)


@pytest.fixture
def tiny_job() -> dict:
    import copy

    return copy.deepcopy(TINY_JOB)


@pytest.fixture
def text_file(tmp_path) -> str:
    path = tmp_path / "tiny.txt"
    path.write_text(TEXT, encoding="utf-8")
    return str(path)


@pytest.fixture(autouse=True, scope="package")
def _one_thread():
    # at these sizes one thread beats several, and does not collapse when the machine is busy
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
