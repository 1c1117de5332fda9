"""Label prototypes: the mean feature of each label's positive samples.

Used by the statistics (:class:`bbam.LabelAngleStats`) through their all-reduced version
(:func:`bbam.distributed.global_prototypes`); a module of its own so that
:mod:`bbam.distributed` needs nothing from :mod:`bbam.stats` (no import cycle).
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from .ops import as_targets

__all__ = ["label_prototypes"]


@torch.no_grad()
def label_prototypes(features: Tensor, targets: Tensor, *, chunk_size: int = 8192) -> Tuple[Tensor, Tensor]:
    """Label prototypes: the mean raw feature of each label's positive samples.

    Args:
        features: ``[N, D]`` float features ``z_i``.
        targets: ``[N, K]`` int8 (1 positive; 0 and -1 are not counted; other dtypes are
            converted by :func:`bbam.ops.as_targets`).
        chunk_size: rows per chunk; memory is ``O(chunk_size * K + K * D)``, never ``N x K`` floats.

    Returns:
        ``(prototypes [K, D] float32 (float64 for float64 features), positive counts [K] float64)``.
        A label with no positive gets the zero prototype (it has no prototype).
    """
    targets = as_targets(targets, "label_prototypes", check_int8=True)  # no kernel checks them
    if features.dim() != 2 or targets.dim() != 2 or targets.shape[0] != features.shape[0]:
        raise ValueError(f"label_prototypes: 'features' [N, D] and 'targets' [N, K] must agree on N, "
                         f"got {tuple(features.shape)} and {tuple(targets.shape)}")
    dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
    K = targets.shape[1]
    sums = features.new_zeros((K, features.shape[1]), dtype=dtype)
    counts = features.new_zeros(K, dtype=torch.float64)
    for start in range(0, features.shape[0], chunk_size):
        pos = (targets[start:start + chunk_size] == 1).to(dtype)  # [chunk, K]
        sums += pos.T @ features[start:start + chunk_size].to(dtype)
        counts += pos.sum(0, dtype=torch.float64)
    return sums / counts.clamp(min=1).to(dtype).unsqueeze(1), counts
