"""``nn.Module`` losses: BAM and BBAM."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from . import functional as BF
from .ops import as_targets
from .stats import LabelAngleStats

__all__ = ["BAMLoss", "BBAMLoss", "BCELoss", "AsymmetricLoss"]


class BAMLoss(nn.Module):
    """Binary angular margin loss on cosine logits.

    ``loss = sum_{i,k: y_ik != -1} w_ik * BCEWithLogits(s * (c_ik - y_ik * m), y_ik)``.

    Args:
        margin: ``m`` (0.4 images, 0.2 text).
        scale: ``s`` (the method: 20 images, 10 text).
        reduction: ``"sum"`` (default, the method's), ``"mean"`` or ``"none"``.

    Shape: ``forward(cos [B, K], targets [B, K] int8, weight [B, K] | None)``; bool,
    integer and float targets are converted (:func:`bbam.ops.as_targets`).
    """

    def __init__(self, margin: float = 0.4, scale: float = 20.0, reduction: str = "sum"):
        super().__init__()
        self.margin, self.scale, self.reduction = float(margin), float(scale), reduction

    def forward(self, cos: Tensor, targets: Tensor, weight: Optional[Tensor] = None) -> Tensor:
        return BF.bam_loss(cos, targets, weight=weight, margin=self.margin, scale=self.scale,
                           reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, scale={self.scale}, reduction={self.reduction!r}"


class BBAMLoss(nn.Module):
    """Balanced binary angular margin loss.

    The cosine of each element is first moved by the BBAM angle transformation of
    its label and polarity (``phi = cos(a * theta + b)``), then fed to the BAM loss.
    Coefficients come from, in order: the ``coefficients`` argument of ``forward``;
    the attached :class:`~bbam.LabelAngleStats` (``stats.coefficients()``); else the
    identity (warm-up).

    Args:
        stats: optional :class:`~bbam.LabelAngleStats` providing the coefficients.
        margin, scale, reduction: as :class:`BAMLoss`.

    Shape: ``forward(cos [B, K], targets [B, K] int8, weight [B, K] | None,
    coefficients (a [2, K], b [2, K]) | None)``.
    """

    def __init__(self, stats: Optional[LabelAngleStats] = None, margin: float = 0.4, scale: float = 20.0,
                 reduction: str = "sum"):
        super().__init__()
        self.stats = stats
        self.margin, self.scale, self.reduction = float(margin), float(scale), reduction

    def forward(self, cos: Tensor, targets: Tensor, weight: Optional[Tensor] = None,
                coefficients: Optional[Tuple[Tensor, Tensor]] = None) -> Tensor:
        if coefficients is None:
            if self.stats is not None:
                coefficients = self.stats.coefficients(
                    dtype=torch.float64 if cos.dtype == torch.float64 else torch.float32)
            else:
                coefficients = BF.identity_coefficients(cos.shape[-1], device=cos.device)
        coef_a, coef_b = coefficients
        return BF.bbam_loss(cos, targets, coef_a, coef_b, weight=weight, margin=self.margin,
                            scale=self.scale, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, scale={self.scale}, reduction={self.reduction!r}"


def _known_weight(targets: Tensor, weight: Optional[Tensor], dtype: torch.dtype) -> Tensor:
    """Element weights with unknown (-1) targets zeroed."""
    known = (targets >= 0).to(dtype)
    return known if weight is None else known * weight.to(dtype)


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    if reduction == "none":
        return loss
    raise ValueError(f"argument 'reduction' must be 'none', 'sum' or 'mean', got {reduction!r}")


class BCELoss(nn.Module):
    """Binary cross-entropy on logits with int8 targets (-1 unknown -> 0 contribution) and weights.

    Shape: ``forward(logits [B, K], targets [B, K] int8, weight [B, K] | None)``; bool,
    integer and float targets are converted (:func:`bbam.ops.as_targets`).
    """

    def __init__(self, reduction: str = "sum"):
        super().__init__()
        self.reduction = reduction

    def forward(self, logits: Tensor, targets: Tensor, weight: Optional[Tensor] = None) -> Tensor:
        x = logits.float()
        targets = as_targets(targets, type(self).__name__, check_int8=True)  # no kernel checks them
        y = targets.clamp(min=0).to(x.dtype)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x, y, reduction="none")
        return _reduce(loss * _known_weight(targets, weight, x.dtype), self.reduction)


class AsymmetricLoss(nn.Module):
    """Asymmetric loss (ASL, Ridnik et al. 2021), the CAP baseline's loss.

    ``p = sigmoid(x)``, ``p_m = max(p - clip, 0)``;
    positives: ``-(1 - p)^gamma_pos log p``; negatives: ``-p_m^gamma_neg log(1 - p_m)``.
    Defaults as in CAP: ``gamma_neg = 4``, ``gamma_pos = 0``, ``clip = 0.05``.

    Shape: ``forward(logits [B, K], targets [B, K] int8, weight [B, K] | None)``; bool,
    integer and float targets are converted (:func:`bbam.ops.as_targets`).
    """

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05,
                 eps: float = 1e-8, reduction: str = "sum"):
        super().__init__()
        self.gamma_neg, self.gamma_pos, self.clip, self.eps = gamma_neg, gamma_pos, clip, eps
        self.reduction = reduction

    def forward(self, logits: Tensor, targets: Tensor, weight: Optional[Tensor] = None) -> Tensor:
        x = logits.float()
        targets = as_targets(targets, type(self).__name__, check_int8=True)  # no kernel checks them
        y = targets.clamp(min=0).to(x.dtype)
        p = torch.sigmoid(x)
        p_neg = (p - self.clip).clamp(min=0) if self.clip > 0 else p
        # log-probabilities in the stable logsigmoid form; clipped negatives use log(1 - p_m)
        log_p = torch.nn.functional.logsigmoid(x)
        log_not_pm = torch.log((1 - p_neg).clamp(min=self.eps))
        loss_pos = -((1 - p) ** self.gamma_pos) * log_p if self.gamma_pos else -log_p
        loss_neg = -(p_neg ** self.gamma_neg) * log_not_pm
        loss = y * loss_pos + (1 - y) * loss_neg
        return _reduce(loss * _known_weight(targets, weight, x.dtype), self.reduction)
