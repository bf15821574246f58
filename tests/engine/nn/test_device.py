import pytest
import torch

from engine.nn.device import DEVICES


def test_cpu_and_auto_without_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert DEVICES["cpu"]() == torch.device("cpu")
    assert DEVICES["auto"]() == torch.device("cpu")


def test_cuda_without_gpu_says_what_to_do(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="use device 'cpu' or 'auto'"):
        DEVICES["cuda"]()
