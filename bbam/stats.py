"""Per-label angle statistics with the method's exponential moving average."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from . import functional as BF
from .distributed import global_label_angle_stats, global_prototypes
from .ops import as_targets, label_angle_stats  # noqa: F401  (label_angle_stats: re-exported for convenience)
from .prototypes import label_prototypes  # noqa: F401  (re-exported: bbam.stats.label_prototypes)

__all__ = ["LabelAngleStats", "label_prototypes"]


class LabelAngleStats(nn.Module):
    """Per-label positive / negative angle statistics and the BBAM coefficients.

    Buffers (saved in ``state_dict``):
        ``prototypes [K, D]``: label prototypes of the last update (``D`` is set by the
        first update or by loading a state dict); ``count [2, K]``: samples per
        (polarity, label) in the last update; ``mean [2, K]``, ``var [2, K]`` float64:
        the EMA angle means and unbiased variances (row 0 negatives, row 1 positives);
        ``seen [2, K]``: whether a (polarity, label) ever had samples;
        ``initialized``: whether :meth:`update` ran.

    The EMA is the method's: ``new = (1 - gamma) * current + gamma * old``; the first
    update of an entry takes the current values; the mean is updated first and the
    variance is then taken around the updated mean,
    ``sigma^2 = (M2 + n (mean_cur - mu)^2) / max(n - 1, 1)``, before its own EMA. An
    entry with no samples in an update keeps its old values.

    Args:
        num_labels: ``K``.
        gamma: EMA weight of the old value (0.01).
        chunk_size: rows per chunk when computing prototypes.
    """

    def __init__(self, num_labels: int, gamma: float = 0.01, *, chunk_size: int = 8192):
        super().__init__()
        if num_labels < 1:
            raise ValueError(f"LabelAngleStats: 'num_labels' must be >= 1, got {num_labels}")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"LabelAngleStats: 'gamma' must be in [0, 1], got {gamma}")
        self.num_labels, self.gamma, self.chunk_size = num_labels, float(gamma), chunk_size
        f64 = dict(dtype=torch.float64)
        self.register_buffer("prototypes", torch.zeros(num_labels, 0))
        self.register_buffer("count", torch.zeros(2, num_labels, **f64))
        self.register_buffer("mean", torch.zeros(2, num_labels, **f64))
        self.register_buffer("var", torch.zeros(2, num_labels, **f64))
        self.register_buffer("seen", torch.zeros(2, num_labels, dtype=torch.bool))
        self.register_buffer("initialized", torch.tensor(False))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The prototypes' feature dimension is only known from data: adopt the saved one.
        saved = state_dict.get(prefix + "prototypes")
        if saved is not None and saved.shape != self.prototypes.shape:
            self.prototypes = self.prototypes.new_zeros(saved.shape, dtype=saved.dtype)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def update(self, features: Tensor, targets: Tensor, prototypes: Optional[Tensor] = None) -> "LabelAngleStats":
        """Recompute prototypes (unless given) and angle statistics, and apply the EMA.

        Under ``torch.distributed`` each rank passes its own shard of samples: prototypes
        are all-reduced and the statistics merged across ranks (:mod:`bbam.distributed`),
        so every rank holds the statistics of all samples.

        Args:
            features: ``[N, D]`` features of the labeled + pseudo-labeled samples.
            targets: ``[N, K]`` int8 (1 positive, 0 negative, -1 unknown/ignored); bool,
                integer and float targets are converted (:func:`bbam.ops.as_targets`).
            prototypes: optional ``[K, D]`` prototypes (e.g. computed across ranks);
                by default the mean feature of each label's positives.
        """
        targets = as_targets(targets, "LabelAngleStats.update")
        if targets.dim() != 2 or targets.shape[1] != self.num_labels:
            raise ValueError(f"LabelAngleStats.update: 'targets' must be [N, {self.num_labels}], "
                             f"got {tuple(targets.shape)}")
        if prototypes is None:
            prototypes, _ = global_prototypes(features, targets, chunk_size=self.chunk_size)
        count, mean, m2 = global_label_angle_stats(features, prototypes, targets)
        self.update_from_stats(count, mean, m2)
        self.prototypes = prototypes.detach().to(self.mean.device).clone()
        return self

    @torch.no_grad()
    def update_from_stats(self, count: Tensor, mean: Tensor, m2: Tensor) -> None:
        """Apply the EMA to current ``(count, mean, m2)`` statistics (``[2, K]`` each)."""
        count, mean_cur, m2 = (t.to(self.mean.device, torch.float64) for t in (count, mean, m2))
        has = count > 0
        fresh = has & ~self.seen  # first values of this entry: taken as they are
        g = self.gamma
        mu = torch.where(fresh, mean_cur, (1 - g) * mean_cur + g * self.mean)
        var_cur = (m2 + count * (mean_cur - mu) ** 2) / (count - 1).clamp(min=1)
        var = torch.where(fresh, var_cur, (1 - g) * var_cur + g * self.var)
        self.mean.copy_(torch.where(has, mu, self.mean))
        self.var.copy_(torch.where(has, var, self.var))
        self.count.copy_(count)
        self.seen |= has
        self.initialized.fill_(True)

    @torch.no_grad()
    def coefficients(self, dtype: torch.dtype = torch.float32) -> Tuple[Tensor, Tensor]:
        """BBAM coefficients ``(a, b)``, each ``[2, K]``; the identity for degenerate labels.

        Degenerate: before the first update, or a polarity with fewer than 2 samples in
        the last update, or a variance ``<= 1e-12``. Never NaN.
        """
        # No host-side branch on ``initialized`` (torch.compile(fullgraph=True) cannot guard on
        # it): before the first update every count is 0, which is degenerate, so the identity.
        a, b = BF.balancing_coefficients(self.count, self.mean, self.var)
        return a.to(dtype), b.to(dtype)

    def extra_repr(self) -> str:
        return f"num_labels={self.num_labels}, gamma={self.gamma}"
