"""Functional API: the bbam ops and the small helpers around them, as functions."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .ops import angle_transform, as_targets, bbam_loss, label_angle_stats, merge_stats

__all__ = [
    "bbam_loss",
    "bam_loss",
    "angle_transform",
    "label_angle_stats",
    "merge_stats",
    "as_targets",
    "identity_coefficients",
    "unbiased_variance",
    "balancing_coefficients",
    "MIN_COUNT",
    "MIN_VARIANCE",
]

# A polarity needs this many samples, and a variance above this, for its label to be balanced.
MIN_COUNT = 2
MIN_VARIANCE = 1e-12


def identity_coefficients(
    num_labels: int, *, device: Optional[torch.device] = None, dtype: torch.dtype = torch.float32
) -> Tuple[Tensor, Tensor]:
    """``(a, b)`` of the identity transform: ``a = 1``, ``b = 0``, each ``[2, num_labels]``."""
    return (torch.ones(2, num_labels, device=device, dtype=dtype),
            torch.zeros(2, num_labels, device=device, dtype=dtype))


def bam_loss(
    cos: Tensor,
    targets: Tensor,
    *,
    weight: Optional[Tensor] = None,
    margin: float = 0.4,
    scale: float = 20.0,
    reduction: str = "sum",
) -> Tensor:
    """Binary angular margin loss: :func:`bbam_loss` with the identity coefficients.

    ``loss = BCEWithLogits(scale * (cos - y * margin), y)`` per known element; see
    :func:`bbam.ops.bbam_loss` for the arguments.
    """
    coef_a, coef_b = identity_coefficients(cos.shape[-1], device=cos.device, dtype=torch.float32)
    return bbam_loss(cos, targets, coef_a, coef_b, weight=weight, margin=margin, scale=scale, reduction=reduction)


def unbiased_variance(count: Tensor, m2: Tensor) -> Tensor:
    """``m2 / max(count - 1, 1)``: the unbiased variance of (count, mean, m2) statistics."""
    return m2 / (count - 1).clamp(min=1)


def balancing_coefficients(
    count: Tensor,
    mean: Tensor,
    var: Tensor,
    *,
    min_count: int = MIN_COUNT,
    min_var: float = MIN_VARIANCE,
) -> Tuple[Tensor, Tensor]:
    """BBAM coefficients from per-label angle statistics.

    Args:
        count, mean, var: ``[2, K]`` (row 0 negatives, row 1 positives): sample
            counts, angle means ``mu`` and variances ``sigma^2``.
        min_count, min_var: a label whose polarity has fewer than ``min_count``
            samples or a variance ``<= min_var`` is degenerate.

    Returns:
        ``(a, b)``, each ``[2, K]`` float64: ``v = (var_0 + var_1) / 2``,
        ``a_s = sqrt(v / var_s)``, ``b_s = (1 - a_s) * mu_s`` (both polarities end up
        with variance ``v`` and keep their means); the identity (1, 0) for
        degenerate labels. Never NaN.
    """
    count, mean, var = count.double(), mean.double(), var.double()
    ok = ((count >= min_count) & (var > min_var) & torch.isfinite(var) & torch.isfinite(mean)).all(0)
    safe_var = torch.where(ok, var, torch.ones_like(var))
    v = safe_var.mean(0)
    a = torch.where(ok, torch.sqrt(v / safe_var), torch.ones_like(var))
    b = torch.where(ok, (1 - a) * mean, torch.zeros_like(mean))
    return a, b
