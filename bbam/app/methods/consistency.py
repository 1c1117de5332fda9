"""Per-batch consistency methods, multi-label: ``fixmatch`` and ``softmatch``.

Each label is a binary problem (docs/METHOD.md): from the weak view's probability ``p_ik``
the pseudo-label is ``p_ik >= 0.5`` and its confidence ``c_ik = max(p_ik, 1 - p_ik)``; the
loss on the strong view is the binary cross-entropy against the pseudo-labels, each
element weighted by a function of its confidence:

* :class:`FixMatch` (Sohn et al., NeurIPS 2020): weight ``1[c_ik >= tau]``.
* :class:`SoftMatch` (Chen et al., ICLR 2023): weight 1 above the label's running mean
  confidence ``mu_k``, a truncated Gaussian ``exp(-(c - mu_k)^2 / (2 sigma_k^2 / n^2))`` below
  it; ``mu_k`` and ``sigma_k^2`` are EMAs of each batch's per-label mean and variance.

The labeled rows get the same loss on a linear head (``supervised``'s BCE), in the warm-up
and in every semi-supervised step. Everything is summed over the batch and the labels, as
the other methods; the unlabeled term is scaled by ``lambda_u``.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import Tensor

from bbam import distributed as D
from bbam.losses import BCELoss

from ..batches import Batch
from .base import Forward, Method, MethodContext

__all__ = ["FixMatch", "SoftMatch"]


class FixMatch(Method):
    """Multi-label FixMatch: confident per-label pseudo-labels of the weak view train the strong view.

    Args:
        name: method name.
        threshold: confidence ``tau`` a label's pseudo-label needs (``max(p, 1 - p) >= tau``).
        lambda_u: weight of the unlabeled loss.
    """

    views = ("weak", "strong")

    def __init__(self, name: str = "fixmatch", threshold: float = 0.95, lambda_u: float = 1.0):
        super().__init__(name)
        if not 0.5 <= float(threshold) <= 1.0:
            raise ValueError(f"config key 'method.threshold' must be in [0.5, 1] (a binary confidence), got {threshold}")
        if float(lambda_u) < 0:
            raise ValueError(f"config key 'method.lambda_u' must be >= 0, got {lambda_u}")
        self.threshold, self.lambda_u = float(threshold), float(lambda_u)
        self.loss_fn = BCELoss(reduction="sum")
        self._truth_ub: Optional[Tensor] = None  # the unlabeled rows' true labels: logged accuracy only
        self._counts = torch.zeros(3, dtype=torch.float64)  # weight sum, weighted correct, elements (on the device)

    def bind(self, ctx: MethodContext) -> None:
        super().bind(ctx)
        self._truth_ub = ctx.splits["unlabeled"].y
        self._counts = self._counts.to(self.device)

    def warmup_loss(self, forward: Forward, lb: Batch) -> Tensor:
        (out,) = forward([lb.x])
        return 0.0 + self.loss_fn(out, lb.y, None)

    def unlabeled_weight(self, confidence: Tensor) -> Tensor:
        """``[B, K]`` element weights of the unlabeled loss from the confidences ``[B, K]``."""
        return (confidence >= self.threshold).float()

    def loss(self, forward: Forward, lb: Batch, ub: Batch) -> Tensor:
        out_l, out_w, out_s = forward([lb.x, ub.views["weak"], ub.views["strong"]])
        with torch.no_grad():
            p = torch.sigmoid(out_w.detach())
            pseudo = (p >= 0.5).to(torch.int8)
            weight = self.unlabeled_weight(torch.maximum(p, 1 - p))
            self._log(pseudo, weight, ub.idx)
        return 0.0 + self.loss_fn(out_l, lb.y, None) + self.lambda_u * self.loss_fn(out_s, pseudo, weight)

    def _log(self, pseudo: Tensor, weight: Tensor, idx: Tensor) -> None:
        # summed on the device: no host synchronisation per step (read once, at end_epoch)
        correct = (pseudo == self._truth_ub[idx]).float()
        self._counts[0] += weight.sum()
        self._counts[1] += (weight * correct).sum()
        self._counts[2] += weight.numel()

    def refresh(self, ctx: MethodContext) -> Dict[str, float]:
        self._counts.zero_()
        return {}

    def end_epoch(self) -> Dict[str, float]:
        """This epoch's mean unlabeled weight (``pseudo_confident``: the share of elements
        that pass for FixMatch) and the weighted accuracy of the pseudo-labels."""
        w, correct, n = (float(v) for v in self._counts)
        return {"pseudo_confident": w / max(n, 1.0), "pseudo_accuracy": correct / w if w > 0 else float("nan")}


class SoftMatch(FixMatch):
    """Multi-label SoftMatch: every per-label pseudo-label, weighted by a truncated Gaussian of its confidence.

    Args:
        name: method name.
        lambda_u: weight of the unlabeled loss.
        momentum: EMA momentum of the per-label confidence mean and variance (the paper: 0.999
            over ~1M steps; 0.99 here, where a semi-supervised phase has hundreds of steps).
        n_sigma: width of the Gaussian in standard deviations (2 as the paper).
        lambda_max: the largest weight (1 as the paper).
    """

    def __init__(self, name: str = "softmatch", lambda_u: float = 1.0, momentum: float = 0.99,
                 n_sigma: float = 2.0, lambda_max: float = 1.0):
        super().__init__(name, threshold=0.5, lambda_u=lambda_u)
        if not 0.0 <= float(momentum) < 1.0:
            raise ValueError(f"config key 'method.momentum' must be in [0, 1), got {momentum}")
        if float(n_sigma) <= 0 or float(lambda_max) <= 0:
            raise ValueError(f"config keys 'method.n_sigma' / 'method.lambda_max' must be > 0, got {n_sigma} / {lambda_max}")
        self.momentum, self.n_sigma, self.lambda_max = float(momentum), float(n_sigma), float(lambda_max)
        self.mu: Optional[Tensor] = None  # [K] running mean confidence of each label
        self.var: Optional[Tensor] = None  # [K] running variance

    def setup(self, num_labels: int, device: torch.device) -> None:
        super().setup(num_labels, device)
        # the paper's start for C classes is mean 1 / C, variance 1: here C = 2 per label
        self.mu = torch.full((self.num_labels,), 0.5, dtype=torch.float64, device=self.device)
        self.var = torch.ones(self.num_labels, dtype=torch.float64, device=self.device)

    @torch.no_grad()
    def _batch_moments(self, confidence: Tensor):
        """Per-label mean and unbiased variance of the global batch's confidences (all ranks)."""
        c = confidence.double()
        sums = torch.stack([torch.full_like(c[0], float(c.shape[0])), c.sum(0), (c * c).sum(0)])
        if D.world_size() > 1:
            torch.distributed.all_reduce(sums)
        n, s1, s2 = sums
        mean = s1 / n.clamp(min=1)
        var = (s2 - n * mean * mean).clamp(min=0) / (n - 1).clamp(min=1)
        return mean, var

    @torch.no_grad()
    def unlabeled_weight(self, confidence: Tensor) -> Tensor:
        mean, var = self._batch_moments(confidence)
        m = self.momentum
        self.mu.mul_(m).add_((1 - m) * mean)
        self.var.mul_(m).add_((1 - m) * var)
        mu, var = self.mu.float(), self.var.float()
        gauss = self.lambda_max * torch.exp(-(confidence - mu) ** 2 / (2 * var.clamp(min=1e-12) / self.n_sigma ** 2))
        return torch.where(confidence >= mu, torch.full_like(confidence, self.lambda_max), gauss)

    def state_dict(self) -> Dict[str, Any]:
        return {"mu": self.mu, "var": self.var}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state.get("mu") is not None:
            self.mu = state["mu"].to(self.device, torch.float64)
            self.var = state["var"].to(self.device, torch.float64)
