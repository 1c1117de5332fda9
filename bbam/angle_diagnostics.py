"""Per-label angle measurements of a model's features: what the BBAM balancing does.

Two angle families are measured on an evaluation split with its true labels:

* ``prototype``: ``beta_ik = angle(z_i, p_k)`` to the label prototypes — the angles the
  paper takes its statistics on (``method.stats_angles = prototype``);
* ``classifier``: ``theta_ik = angle(z_i, w_k)`` to the classifier weights — the angles the
  loss transforms (and the ``method.stats_angles = classifier`` variant's statistics).

Each family gets its per-label variances before and after the run's transform
``theta' = a_{s,k} theta + b_{s,k}`` (``s`` = the sample's polarity). The transform is affine
in the angle per polarity, so the variance after is exactly ``a_{s,k}^2 var_{s,k}``: no
transformed angles are needed. On the family (and the data) the statistics were taken on,
both polarities end with the same variance ``v_k``, so VDFD after is 0 there; on the other
family, or on other data, it need not be.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import torch
from torch import Tensor

import bbam
from bbam import metrics as M
from bbam.functional import MIN_COUNT, unbiased_variance

__all__ = ["measure_angles", "family_stats", "mean_finite", "BINS", "FAMILIES"]

BINS = 60  # histogram bins over [0, pi]
FAMILIES = ("prototype", "classifier")


def _hist_counts(theta: Tensor, targets: Tensor) -> Tensor:
    """Per-polarity, per-label histogram counts ``[2, K, BINS]`` (int64; row 0 negatives,
    row 1 positives) of the angles ``theta`` ``[n, K]``: one ``bincount`` for both
    polarities; unknown targets go to a discarded extra bin."""
    K = theta.shape[1]
    bins = (theta / math.pi * BINS).long().clamp_(0, BINS - 1)
    bins += torch.arange(K, device=theta.device) * BINS + (targets == 1).long() * (K * BINS)
    flat = torch.where(targets >= 0, bins, 2 * K * BINS)
    return torch.bincount(flat.flatten(), minlength=2 * K * BINS + 1)[:-1].view(2, K, BINS)


def _histograms(feats: Tensor, weights: Tensor, y: Tensor, a: Tensor, b: Tensor,
                chunk_size: int = 8192) -> Dict[str, list]:
    """``hist_{neg,pos}[_after]``: ``[K][BINS]`` counts of the classifier angles of the
    negatives / positives, before and after the training transform; row chunks, so no
    ``N x K`` angle matrix of the whole split is held."""
    K = weights.shape[0]
    counts = {suffix: torch.zeros((2, K, BINS), dtype=torch.long, device=feats.device) for suffix in ("", "_after")}
    w = torch.nn.functional.normalize(weights, dim=1)
    for start in range(0, feats.shape[0], chunk_size):
        cos = torch.nn.functional.normalize(feats[start:start + chunk_size], dim=1) @ w.T
        t = y[start:start + chunk_size]
        theta = torch.acos(cos.clamp(-1, 1))
        theta_after = torch.acos(bbam.ops.angle_transform(cos, a, b, t).clamp(-1, 1))
        counts[""] += _hist_counts(theta, t)
        counts["_after"] += _hist_counts(theta_after, t)
    return {f"hist_{polarity}{suffix}": value[row].tolist()
            for suffix, value in counts.items() for row, polarity in enumerate(("neg", "pos"))}


def _json(t: Tensor) -> list:
    """A float tensor as (nested) lists with NaN -> None, so the file stays strict JSON."""
    return [_json(row) for row in t] if t.dim() > 1 else [None if math.isnan(v) else v for v in t.tolist()]


def mean_finite(values: List[Optional[float]]) -> Optional[float]:
    """Mean over the labels with a defined (non-None, finite) value; None when there is none."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def family_stats(features: Tensor, directions: Tensor, targets: Tensor, coef_a: Tensor) -> Dict[str, Tensor]:
    """Angle statistics of one family, before and after the transform.

    Args:
        features: ``[N, D]`` features ``z``.
        directions: ``[K, D]`` prototypes or classifier weights.
        targets: ``[N, K]`` int8 true labels (1 positive, 0 negative).
        coef_a: ``[2, K]`` transform slopes (row 0 negatives, row 1 positives).

    Returns:
        ``count``, ``mean``, ``var``, ``var_after`` (each ``[2, K]`` float64) and ``vdfd``,
        ``vdfd_after`` (``[K]``). A variance with fewer than ``MIN_COUNT`` samples is
        undefined (NaN): the fused op would report 0, which reads as a real variance.
    """
    count, mean, m2 = bbam.ops.label_angle_stats(features, directions, targets)  # no N x K matrix
    var = torch.where(count >= MIN_COUNT, unbiased_variance(count, m2), torch.full_like(m2, math.nan))
    var_after = coef_a.to(var) ** 2 * var  # Var(a theta + b) = a^2 Var(theta), per polarity
    return {"count": count, "mean": mean, "var": var, "var_after": var_after,
            "vdfd": M.vdfd(var), "vdfd_after": M.vdfd(var_after)}


@torch.no_grad()
def measure_angles(features: Tensor, weights: Tensor, targets: Tensor, coef_a: Tensor, coef_b: Tensor,
                   prototypes: Tensor) -> Dict[str, Any]:
    """Both angle families of ``features`` with their true ``targets``, before and after the
    transform ``(coef_a, coef_b)``; JSON-ready (undefined values are None).

    Args:
        features: ``[N, D]`` features of an evaluation split.
        weights: ``[K, D]`` classifier weights.
        targets: ``[N, K]`` int8 true labels.
        coef_a, coef_b: ``[2, K]`` the transform (row 0 negatives, row 1 positives).
        prototypes: ``[K, D]`` label prototypes.

    Returns:
        ``prototype`` / ``classifier``: per family ``count``, ``mean``, ``var``, ``var_after``
        (``[2][K]``; radians, rad^2) and ``vdfd``, ``vdfd_after`` (``[K]``); ``classifier``
        also holds the histograms ``hist_{neg,pos}[_after]`` (``[K][BINS]`` over ``[0, pi]``);
        ``mean_vdfd_{prototype,classifier}[_after]`` (means over the labels with a value;
        ``mean_vdfd`` / ``mean_vdfd_after`` alias the classifier ones: the loss acts on those
        angles); ``balanced_labels`` (labels whose coefficients are not the identity) and
        ``coefficients`` (``a``, ``b``).
    """
    out: Dict[str, Any] = {"balanced_labels": int(((coef_a != 1) | (coef_b != 0)).any(0).sum())}
    for name, directions in (("prototype", prototypes), ("classifier", weights)):
        fam = family_stats(features, directions, targets, coef_a)
        out[name] = {key: fam[key].tolist() if key == "count" else _json(fam[key]) for key in fam}
    out["classifier"].update(_histograms(features, weights, targets, coef_a, coef_b))  # chunked
    out["coefficients"] = {"a": coef_a.tolist(), "b": coef_b.tolist()}
    for name in FAMILIES:
        out[f"mean_vdfd_{name}"] = mean_finite(out[name]["vdfd"])
        out[f"mean_vdfd_{name}_after"] = mean_finite(out[name]["vdfd_after"])
    out["mean_vdfd"], out["mean_vdfd_after"] = out["mean_vdfd_classifier"], out["mean_vdfd_classifier_after"]
    return out
