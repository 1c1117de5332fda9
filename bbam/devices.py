"""The one place a device name becomes a ``torch.device`` (library layer)."""
from __future__ import annotations

import os
from typing import Optional, Union

import torch

__all__ = ["resolve_device"]


def resolve_device(name: Optional[Union[str, torch.device]] = "auto", key: str = "device") -> torch.device:
    """``auto`` (or None): the GPU if CUDA is available, else the CPU. A plain ``cuda``
    under torchrun is this rank's GPU (``LOCAL_RANK``). A CUDA device without CUDA is refused
    with a message naming the config ``key``."""
    name = "auto" if name is None else str(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"config key '{key}' must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"config key '{key}' is {name!r} but CUDA is not available")
        if device.index is None and "LOCAL_RANK" in os.environ:
            device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device
