"""Run-time set-up of the training app: seeding, the device, and a split's tensors."""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

__all__ = ["Split", "seed_everything"]


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
