"""``nn.Module`` losses: BAM and BBAM."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from . import functional as BF
from .stats import LabelAngleStats

__all__ = ["BAMLoss", "BBAMLoss"]


class BAMLoss(nn.Module):
    """Binary angular margin loss on cosine logits.

    ``loss = sum_{i,k: y_ik != -1} w_ik * BCEWithLogits(s * (c_ik - y_ik * m), y_ik)``.

    Args:
        margin: ``m`` (0.4 images, 0.2 text).
        scale: ``s`` (20 images, 10 text).
        reduction: ``"sum"`` (default, the method's), ``"mean"`` or ``"none"``.

    Shape: ``forward(cos [B, K], targets [B, K] int8, weight [B, K] | None)``.
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
