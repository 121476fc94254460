"""Choosing the torch device: ``auto`` picks CUDA, then Apple MPS, then the CPU, and says which."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def resolve_device(name: str | torch.device = "auto", *, need_fft: bool = False) -> torch.device:
    """The device for ``name`` ("auto", "cpu", "cuda", "cuda:1", "mps").

    ``need_fft``: the job uses FFTs; MPS is skipped by "auto" then, because not every torch.fft operation
    runs there.
    """
    if isinstance(name, torch.device):
        return name
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            device = torch.device("cuda")
        elif not need_fft and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            device = torch.device("mps")
        else:
            device = torch.device("cpu")
    else:
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {name!r} was asked for but CUDA is not available here")
        if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError(f"device {name!r} was asked for but Apple MPS is not available here")
    log.info("using device %s", describe_device(device))
    return device


def describe_device(device: torch.device) -> str:
    """A one-line description, e.g. "cuda:0 (NVIDIA H100, 80 GB)" or "cpu (2 threads)"."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return f"cuda:{index} ({props.name}, {props.total_memory / 2**30:.0f} GB)"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return str(device)
