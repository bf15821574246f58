"""Where training runs. Every entry takes no arguments and returns a ``torch.device``."""

from __future__ import annotations

import torch


def cpu_device() -> torch.device:
    return torch.device("cpu")


def cuda_device() -> torch.device:
    # checked when training starts, not when a spec is parsed: the job may run on a GPU worker
    if not torch.cuda.is_available():
        raise RuntimeError(
            "device 'cuda' was requested but torch.cuda.is_available() is False on this machine; "
            "use device 'cpu' or 'auto', or run the job on a GPU worker"
        )
    return torch.device("cuda")


def auto_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


DEVICES = {"cpu": cpu_device, "cuda": cuda_device, "auto": auto_device}
