"""Per-batch consistency methods, multi-label: ``fixmatch``, ``softmatch`` and ``freematch``.

Each label is a binary problem (docs/METHOD.md): from the weak view's probability ``p_ik``
the pseudo-label is ``p_ik >= 0.5`` and its confidence ``c_ik = max(p_ik, 1 - p_ik)``; the
loss on the strong view is the binary cross-entropy against the pseudo-labels, each
element weighted by a function of its confidence:

* :class:`FixMatch` (Sohn et al., NeurIPS 2020): weight ``1[c_ik >= tau]``.
* :class:`SoftMatch` (Chen et al., ICLR 2023): weight 1 above the label's running mean
  confidence ``mu_k``, a truncated Gaussian ``exp(-(c - mu_k)^2 / (2 sigma_k^2 / n^2))`` below
  it; ``mu_k`` and ``sigma_k^2`` are EMAs of each batch's per-label mean and variance.
* :class:`FreeMatch` (Wang et al., ICLR 2023): weight ``1[c_ik >= tau * MaxNorm(q_k)[y_ik]]``:
  a global threshold ``tau`` (EMA of the batches' mean confidence) scaled per label and per
  pseudo-class by ``q_k = (m_k, 1 - m_k)`` over its largest entry, ``m_k`` the EMA of label
  ``k``'s mean probability (each label is a two-class problem: a rare label's positives pass
  a lower threshold than its negatives).

The weak view's probabilities come from the live model (``teacher: model``, FixMatch's
practice) or from the EMA weights (``teacher: ema``, Mean Teacher's). The labeled rows get
the same loss on a linear head (``supervised``'s BCE), in the warm-up and in every
semi-supervised step. Everything is summed over the batch and the labels, as the other
methods; the unlabeled term is scaled by ``lambda_u`` and, with ``unlabeled_norm: labels``,
divided by the number of labels ``K`` (so its weight against the labeled term does not grow
with ``K``).
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import Tensor

from bbam import distributed as D
from bbam.losses import BCELoss

from ..batches import Batch
from .base import Forward, Method, MethodContext

__all__ = ["FixMatch", "SoftMatch", "FreeMatch"]

TEACHERS = ("model", "ema")
UNLABELED_NORMS = ("sum", "labels")


def _global_sums(*parts: Tensor) -> Tensor:
    """The float64 concatenation of ``parts`` (each flattened), summed over the ranks."""
    sums = torch.cat([p.double().reshape(-1) for p in parts])
    if D.world_size() > 1:
        torch.distributed.all_reduce(sums)
    return sums


class FixMatch(Method):
    """Multi-label FixMatch: confident per-label pseudo-labels of the weak view train the strong view.

    Args:
        name: method name.
        threshold: confidence ``tau`` a label's pseudo-label needs (``max(p, 1 - p) >= tau``).
        lambda_u: weight of the unlabeled loss.
        teacher: ``model`` (the live model's weak-view outputs) or ``ema`` (the EMA weights').
        unlabeled_norm: ``sum`` (the unlabeled loss summed over the batch and the labels) or
            ``labels`` (divided by the number of labels).
    """

    views = ("weak", "strong")

    def __init__(self, name: str = "fixmatch", threshold: float = 0.95, lambda_u: float = 1.0,
                 teacher: str = "model", unlabeled_norm: str = "sum"):
        super().__init__(name)
        if not 0.5 <= float(threshold) <= 1.0:
            raise ValueError(f"config key 'method.threshold' must be in [0.5, 1] (a binary confidence), got {threshold}")
        if float(lambda_u) < 0:
            raise ValueError(f"config key 'method.lambda_u' must be >= 0, got {lambda_u}")
        if teacher not in TEACHERS:
            raise ValueError(f"config key 'method.teacher' must be one of {', '.join(TEACHERS)}, got {teacher!r}")
        if unlabeled_norm not in UNLABELED_NORMS:
            raise ValueError(f"config key 'method.unlabeled_norm' must be one of {', '.join(UNLABELED_NORMS)}, "
                             f"got {unlabeled_norm!r}")
        self.threshold, self.lambda_u = float(threshold), float(lambda_u)
        self.teacher, self.unlabeled_norm = teacher, unlabeled_norm
        self._teacher_outputs = None  # ctx.outputs of the epoch (teacher: ema)
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

    def unlabeled_weight(self, p: Tensor) -> Tensor:
        """``[B, K]`` element weights of the unlabeled loss from the weak view's probabilities
        ``[B, K]`` (their confidences ``max(p, 1 - p)``)."""
        return (torch.maximum(p, 1 - p) >= self.threshold).float()

    def loss(self, forward: Forward, lb: Batch, ub: Batch) -> Tensor:
        if self.teacher == "ema":  # the EMA weights label the weak view: the live model sees only the strong one
            out_l, out_s = forward([lb.x, ub.views["strong"]])
            out_w = self._teacher_outputs(ub.views["weak"], "ema")
        else:
            out_l, out_w, out_s = forward([lb.x, ub.views["weak"], ub.views["strong"]])
        with torch.no_grad():
            p = torch.sigmoid(out_w.detach().float())
            pseudo = (p >= 0.5).to(torch.int8)
            weight = self.unlabeled_weight(p)
            self._log(pseudo, weight, ub.idx)
        lambda_u = self.lambda_u / (self.num_labels if self.unlabeled_norm == "labels" else 1)
        return 0.0 + self.loss_fn(out_l, lb.y, None) + lambda_u * self.loss_fn(out_s, pseudo, weight)

    def _log(self, pseudo: Tensor, weight: Tensor, idx: Tensor) -> None:
        # summed on the device: no host synchronisation per step (read once, at end_epoch)
        correct = (pseudo == self._truth_ub[idx]).float()
        self._counts[0] += weight.sum()
        self._counts[1] += (weight * correct).sum()
        self._counts[2] += weight.numel()

    def refresh(self, ctx: MethodContext) -> Dict[str, float]:
        self._counts.zero_()
        self._teacher_outputs = ctx.outputs
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
        teacher, unlabeled_norm: see :class:`FixMatch`.
    """

    def __init__(self, name: str = "softmatch", lambda_u: float = 1.0, momentum: float = 0.99,
                 n_sigma: float = 2.0, lambda_max: float = 1.0, teacher: str = "model", unlabeled_norm: str = "sum"):
        super().__init__(name, threshold=0.5, lambda_u=lambda_u, teacher=teacher, unlabeled_norm=unlabeled_norm)
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
        n, s1, s2 = _global_sums(torch.full_like(c[0], float(c.shape[0])), c.sum(0), (c * c).sum(0)).view(3, -1)
        mean = s1 / n.clamp(min=1)
        var = (s2 - n * mean * mean).clamp(min=0) / (n - 1).clamp(min=1)
        return mean, var

    @torch.no_grad()
    def unlabeled_weight(self, p: Tensor) -> Tensor:
        confidence = torch.maximum(p, 1 - p)
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


class FreeMatch(FixMatch):
    """Multi-label FreeMatch: self-adaptive global and per-label thresholds (see the module docstring).

    Args:
        name: method name.
        lambda_u: weight of the unlabeled loss.
        momentum: EMA momentum of the global threshold and of each label's mean probability
            (the paper: 0.999 over ~1M steps; 0.99 here, as :class:`SoftMatch`).
        teacher, unlabeled_norm: see :class:`FixMatch`.

    FreeMatch's self-adaptive fairness term (a single-label class-balance regulariser) is
    not used.
    """

    def __init__(self, name: str = "freematch", lambda_u: float = 1.0, momentum: float = 0.99,
                 teacher: str = "model", unlabeled_norm: str = "labels"):
        super().__init__(name, threshold=0.5, lambda_u=lambda_u, teacher=teacher, unlabeled_norm=unlabeled_norm)
        if not 0.0 <= float(momentum) < 1.0:
            raise ValueError(f"config key 'method.momentum' must be in [0, 1), got {momentum}")
        self.momentum = float(momentum)
        self.tau: Optional[Tensor] = None  # [] global threshold: EMA of the mean confidence
        self.p_mean: Optional[Tensor] = None  # [K] EMA of each label's mean probability

    def setup(self, num_labels: int, device: torch.device) -> None:
        super().setup(num_labels, device)
        # the paper starts at 1 / C for C classes: C = 2 per label
        self.tau = torch.tensor(0.5, dtype=torch.float64, device=self.device)
        self.p_mean = torch.full((self.num_labels,), 0.5, dtype=torch.float64, device=self.device)

    @torch.no_grad()
    def thresholds(self) -> Tensor:
        """``[2, K]``: each label's threshold for a pseudo-positive (row 0) and a pseudo-negative (row 1)."""
        q = torch.stack([self.p_mean, 1 - self.p_mean])
        return self.tau * q / q.max(0).values.clamp(min=1e-12)  # MaxNorm over the label's two classes

    @torch.no_grad()
    def unlabeled_weight(self, p: Tensor) -> Tensor:
        confidence = torch.maximum(p, 1 - p)
        sums = _global_sums(torch.tensor([float(p.numel()), float(p.shape[0])], device=p.device),
                            confidence.sum().reshape(1), p.sum(0))
        n_elements, n_rows, c_sum, p_sums = sums[0], sums[1], sums[2], sums[3:]
        m = self.momentum
        self.tau.mul_(m).add_((1 - m) * c_sum / n_elements.clamp(min=1))
        self.p_mean.mul_(m).add_((1 - m) * p_sums / n_rows.clamp(min=1))
        thr = self.thresholds().float()
        return (confidence >= torch.where(p >= 0.5, thr[0], thr[1])).float()

    def state_dict(self) -> Dict[str, Any]:
        return {"tau": self.tau, "p_mean": self.p_mean}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state.get("tau") is not None:
            self.tau = state["tau"].to(self.device, torch.float64)
            self.p_mean = state["p_mean"].to(self.device, torch.float64)
