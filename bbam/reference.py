"""Readable, eager, pure-PyTorch versions of every bbam op.

The oracle of the tests and the baseline of the benchmarks: each function is the
formula of ``docs/METHOD.md`` written as plainly as possible (it may materialise
``N x K`` matrices; the fused ops never do). The numerical conventions are those
of the kernels (``csrc/bbam_math.h``): same clamp constants, same identity rule.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["COS_EPS", "label_angle_stats", "bbam_loss", "angle_transform", "negative_select", "cap_select",
           "positive_rank_stats"]

# Clamp of the cosine in the BBAM angle path (csrc/bbam_math.h CosEps).
COS_EPS = {torch.float32: 1e-7, torch.float64: 1e-12}


def _opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _transform(c: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """phi = cos(a * acos(clamp(c)) + b), exactly c where (a, b) = (1, 0).

    The clamp to [-1 + eps, 1 - eps] is straight-through for the gradient (its
    value is clamped, its derivative is 1), so the gradient at |c| = 1 is the
    finite a * sin(theta') / sin(theta) of the clamped angle, as in the kernels.
    """
    eps = COS_EPS[c.dtype]
    clamped = c + (c.clamp(-1 + eps, 1 - eps) - c).detach()
    phi = torch.cos(a * torch.acos(clamped) + b)
    identity = (a == 1) & (b == 0)
    return torch.where(identity, c, phi)


def angle_transform(cos: Tensor, coef_a: Tensor, coef_b: Tensor, targets: Optional[Tensor] = None) -> Tensor:
    """Reference of :func:`bbam.ops.angle_transform`."""
    c = cos.to(_opmath(cos.dtype))
    a_all, b_all = coef_a.to(c.dtype), coef_b.to(c.dtype)
    a_avg, b_avg = a_all.mean(0), b_all.mean(0)  # inference transform: average of both
    if targets is None:
        a, b = a_avg.expand_as(c), b_avg.expand_as(c)
    else:
        t = targets.long()
        a = torch.where(t == 1, a_all[1], torch.where(t == 0, a_all[0], a_avg))
        b = torch.where(t == 1, b_all[1], torch.where(t == 0, b_all[0], b_avg))
    return _transform(c, a, b).to(cos.dtype)


def bbam_loss(
    cos: Tensor,
    targets: Tensor,
    coef_a: Tensor,
    coef_b: Tensor,
    *,
    weight: Optional[Tensor] = None,
    margin: float = 0.4,
    scale: float = 20.0,
    reduction: str = "sum",
) -> Tensor:
    """Reference of :func:`bbam.ops.bbam_loss` (computed in float32, or float64 for float64)."""
    c = cos.to(_opmath(cos.dtype))
    t = targets.long()
    known = t >= 0
    polarity = t.clamp(min=0)  # unknown entries pick row 0 and are masked out below
    y = polarity.to(c.dtype)
    labels = torch.arange(c.shape[1], device=c.device)
    a = coef_a.to(c.dtype)[polarity, labels]
    b = coef_b.to(c.dtype)[polarity, labels]
    phi = _transform(c, a, b)
    logit = scale * (phi - y * margin)
    loss = F.binary_cross_entropy_with_logits(logit, y, reduction="none")
    if weight is not None:
        loss = loss * weight.to(c.dtype)
    loss = torch.where(known, loss, torch.zeros_like(loss))
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    raise ValueError(f"reduction must be 'none', 'sum' or 'mean', got {reduction!r}")


def label_angle_stats(features: Tensor, prototypes: Tensor, targets: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """Reference of :func:`bbam.ops.label_angle_stats` (materialises the N x K angles)."""
    opmath = _opmath(features.dtype)
    z = F.normalize(features.to(opmath), dim=1, eps=1e-12)
    p = F.normalize(prototypes.to(opmath), dim=1, eps=1e-12)
    theta = torch.acos((z @ p.T).clamp(-1, 1)).double()  # [N, K]
    counts, means, m2s = [], [], []
    for polarity in (0, 1):
        mask = targets == polarity
        n = mask.sum(0).double()
        mean = torch.where(mask, theta, 0.0).sum(0) / n.clamp(min=1)
        m2 = torch.where(mask, (theta - mean) ** 2, 0.0).sum(0)
        counts.append(n)
        means.append(mean)
        m2s.append(m2)
    return torch.stack(counts), torch.stack(means), torch.stack(m2s)


def negative_select(features: Tensor, prototypes: Tensor, targets: Tensor, num_kept: Tensor,
                    sample_size: int = 0, band_z: float = 5.0) -> Tensor:
    """Reference of :func:`bbam.ops.negative_select` (materialises the N x K cosines;
    ``sample_size`` and ``band_z`` only tune the op's speed)."""
    opmath = _opmath(features.dtype)
    x = features.to(opmath)
    p = F.normalize(prototypes.to(opmath), dim=1, eps=1e-12)
    cos = (x @ p.T) * torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp(min=1e-12).reciprocal()   # [N, K]
    mask = targets == 1
    for k, m in enumerate(num_kept.tolist()):
        neg = (targets[:, k] == 0).nonzero().flatten()          # increasing rows
        order = torch.sort(cos[neg, k], descending=True, stable=True).indices   # ties: lower row first
        mask[neg[order[:m]], k] = True
    return mask


def cap_select(scores: Tensor, ranks: Tensor, pos_keep: Tensor, not_neg: Tensor,
               unknown_outside_mask: bool = False) -> Tuple[Tensor, Tensor, Tensor]:
    """Reference of :func:`bbam.ops.cap_select`: a stable descending sort per label."""
    N, K = scores.shape
    targets = torch.zeros((N, K), dtype=torch.int8)
    mask = torch.zeros((N, K), dtype=torch.bool)
    thresholds = torch.full((K,), float("inf"), dtype=scores.dtype)
    for k in range(K):
        col = scores[:, k]
        order = torch.sort(col, descending=True, stable=True).indices   # ties: lower row first
        position = torch.empty(N, dtype=torch.long)
        position[order] = torch.arange(N)                                 # 0-based place in that order
        r = int(ranks[k])
        if r > 0:
            thresholds[k] = col[order[r - 1]]
        pos = (col >= thresholds[k]) & (r > 0)
        targets[:, k] = pos.to(torch.int8)
        mask[:, k] = torch.where(pos, position < int(pos_keep[k]), position >= int(not_neg[k]))
    if unknown_outside_mask:
        return targets.masked_fill(~mask, -1), torch.zeros((0, K), dtype=torch.bool), thresholds
    return targets, mask, thresholds


def positive_rank_stats(scores: Tensor, targets: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Reference of :func:`bbam.ops.positive_rank_stats`: every positive compared with its
    whole row."""
    L = scores.shape[0]
    precision_sum = torch.zeros(L, dtype=torch.float64)
    misordered, deepest, positives = (torch.zeros(L, dtype=torch.int64) for _ in range(3))
    for i in range(L):
        row, pos = scores[i], targets[i]
        p = row[pos]                                               # the positives' scores
        rank = (row.unsqueeze(0) >= p.unsqueeze(1)).sum(1)         # entries scored >= each positive
        pos_rank = (p.unsqueeze(0) >= p.unsqueeze(1)).sum(1)       # positives scored >= it
        precision_sum[i] = (pos_rank.double() / rank.double()).sum() if len(p) else 0.0
        misordered[i] = (rank - pos_rank).sum()
        deepest[i] = rank.max() if len(p) else 0
        positives[i] = len(p)
    return precision_sum, misordered, deepest, positives
