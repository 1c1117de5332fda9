"""Per-label angle diagnostics of a trained model: what the BBAM balancing does.

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

Also here: :func:`pseudo_label_summary`, the pseudo-label counts the engine logs each
self-training epoch.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor

import bbam
from bbam import metrics as M
from bbam.functional import MIN_COUNT, unbiased_variance
from bbam.stats import label_prototypes

__all__ = ["angle_diagnostics", "family_stats", "mean_finite", "pseudo_label_summary", "BINS", "FAMILIES"]

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


def _label_prototypes(engine) -> Tuple[Tensor, str]:
    """The label prototypes of the run: the method's last ones (``method.prototypes``, saved in
    checkpoints), else the statistics' anchors when those are prototypes, else the labeled
    split's (a method without prototypes, or an older checkpoint)."""
    method = engine.method
    prototypes = getattr(method, "prototypes", None)
    if prototypes is not None and prototypes.numel():
        return prototypes, "training (labeled + pseudo-labeled samples, last refresh)"
    stats = getattr(method, "stats", None)
    # with stats_angles=classifier the statistics' anchors are the classifier weights, not prototypes
    if stats is not None and stats.prototypes.numel() and method.stats_angles == "prototype":
        return stats.prototypes, "statistics (labeled + pseudo-labeled samples)"
    lb = engine.splits["labeled"]
    _, lb_feats, _ = engine.predict(lb.x, keep=("features",))
    return label_prototypes(lb_feats, lb.y)[0], "labeled split"


@torch.no_grad()
def angle_diagnostics(engine, split: str = "test", model: Optional[torch.nn.Module] = None) -> Dict[str, Any]:
    """Angle statistics of ``split`` with its true labels (an evaluation, not training).

    Features and classifier weights come from ``model`` (default: the EMA model, the one
    evaluated; ``engine.model`` matches statistics taken with ``method.features_from=online``).
    AP / F1 / accuracy are always those of the evaluated (EMA) predictions.

    Returns a JSON-ready dict (undefined values are None):

    * ``prototype`` / ``classifier``: per family ``count``, ``mean``, ``var``, ``var_after``
      (``[2][K]``, row 0 negatives, row 1 positives; angles in radians, variances in rad^2)
      and ``vdfd``, ``vdfd_after`` (``[K]``); ``classifier`` also holds the histograms
      ``hist_{neg,pos}[_after]`` (``[K][BINS]`` over ``[0, pi]``; after = the training transform).
    * ``mean_vdfd_{prototype,classifier}[_after]``: means over the labels with a value;
      ``mean_vdfd`` / ``mean_vdfd_after`` are aliases of the classifier ones.
    * ``features_from``: ``ema`` or ``online`` (``model``);
      ``stats_angles``: the family the run's statistics were taken on (``none``: no balancing);
      ``balanced_labels``: labels whose coefficients are not the identity;
      ``prototype_source``: where the prototypes come from.
    * ``coefficients``: ``a``, ``b`` (``[2][K]``); ``per_label``: ``ap``, ``f1``, ``accuracy``
      (percent) and ``positives``.
    """
    s = engine.splits[split]
    y = s.y
    online = model is not None and model is not engine.ema.module
    scores, feats, _ = engine.predict(s.x, keep=("scores",) if online else ("scores", "features"))
    if online:
        _, feats, _ = engine.predict(s.x, model, keep=("features",))
    weights = (model if online else engine.ema.module).classifier_weight.detach().float()
    a, b = engine.method.coefficients()
    prototypes, source = _label_prototypes(engine)
    stats_angles = str(getattr(engine.method, "stats_angles", "none"))
    out: Dict[str, Any] = {"split": split, "num_samples": int(y.shape[0]), "stats_angles": stats_angles,
                           "features_from": "online" if online else "ema",
                           "prototype_source": source,
                           "balanced_labels": int(((a != 1) | (b != 0)).any(0).sum())}
    for name, directions in (("prototype", prototypes), ("classifier", weights)):
        fam = family_stats(feats, directions, y, a)
        out[name] = {key: fam[key].tolist() if key == "count" else _json(fam[key]) for key in fam}
    out["classifier"].update(_histograms(feats, weights, y, a, b))  # the angles themselves, chunked
    out["coefficients"] = {"a": a.tolist(), "b": b.tolist()}
    ap = M.average_precision(scores, y)
    preds, positive = scores >= engine.tc.threshold, y == 1
    count = lambda mask: torch.count_nonzero(mask, dim=0)  # exact, and faster than a bool sum
    tp = count(preds & positive).double()
    f1 = 2 * tp / (count(preds) + count(positive)).double().clamp(min=1)
    out["per_label"] = {"ap": _json(ap * 100), "f1": (f1 * 100).tolist(), "positives": count(positive).tolist(),
                        "accuracy": (count(preds == positive).double() / len(y) * 100).tolist()}
    for name in FAMILIES:
        out[f"mean_vdfd_{name}"] = mean_finite(out[name]["vdfd"])
        out[f"mean_vdfd_{name}_after"] = mean_finite(out[name]["vdfd_after"])
    # the loss acts on the classifier angles: train.py's vdfd / vdfd_balanced read these
    out["mean_vdfd"], out["mean_vdfd_after"] = out["mean_vdfd_classifier"], out["mean_vdfd_classifier_after"]
    return out


def pseudo_label_summary(pseudo_t: Tensor, truth: Tensor, weight_lb: Tensor, y_lb: Tensor,
                         chunk_size: int = 8192) -> Dict[str, float]:
    """Logged per epoch (the learner never sees them): the share of confident
    pseudo-labels, their accuracy against the true labels, and the share of the labeled
    negatives kept by negative sampling. Exact counts over row chunks (no ``[N_u, K]``
    temporaries; ``count_nonzero`` is several times faster than a bool ``sum``)."""
    correct = known = 0
    for i in range(0, len(pseudo_t), chunk_size):
        p = pseudo_t[i:i + chunk_size]
        correct += int(torch.count_nonzero(p == truth[i:i + chunk_size]))  # -1 never equals a 0/1 truth
        known += int(torch.count_nonzero(p >= 0))
    negatives = y_lb == 0
    n_neg = int(torch.count_nonzero(negatives))
    kept = int(torch.count_nonzero(weight_lb & negatives)) if n_neg else 0
    return {"pseudo_confident": known / max(pseudo_t.numel(), 1),
            "pseudo_accuracy": float(torch.tensor(correct) / torch.tensor(max(known, 1))),
            "neg_kept_lb": kept / n_neg if n_neg else 1.0}
