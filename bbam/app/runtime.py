"""Run-time set-up of the training app: seeding, the device, and a split's tensors."""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

__all__ = ["Split", "seed_everything", "compiled_for_training"]


@dataclass
class Split:
    """One split's inputs and (possibly hidden) targets, on the training device.

    ``x`` is a tensor, or the split's images (:class:`bbam.data.image_rows.ImageRows`,
    decoded per batch) for a model that reads pixels; ``images``: the split's images
    beside feature rows ``x`` (frozen backbone features), for image-space views. Made by
    the run's :class:`~bbam.app.inputs.Inputs` (:meth:`~bbam.app.inputs.Inputs.split`)."""

    x: Tensor
    y: Tensor  # int8 {0, 1}: true labels (hidden from the learner for the unlabeled split)
    images: Optional[Any] = None

    def __len__(self) -> int:
        return len(self.x)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def compiled_for_training(module: torch.nn.Module) -> torch.nn.Module:
    """``train.compile=true``: ``module`` through ``torch.compile`` (inductor) for the
    training forward and backward; it shares the module's parameters. Dropout draws from
    torch's generator as in eager mode (``fallback_random``): inductor's own random numbers
    would make a compiled run another run, not the same run faster."""
    import torch._inductor.config as inductor_config

    inductor_config.fallback_random = True
    return torch.compile(module)
