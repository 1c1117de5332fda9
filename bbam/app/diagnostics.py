"""Per-label angle diagnostics of a trained model (VDFD, histograms before/after balancing)."""
from __future__ import annotations

import math
from typing import Any, Dict

import torch

import bbam
from bbam import metrics as M
from bbam.functional import unbiased_variance
from bbam.stats import label_prototypes

__all__ = ["angle_diagnostics", "BINS"]

BINS = 60  # histogram bins over [0, pi]


def _hist(theta: torch.Tensor, mask: torch.Tensor) -> list:
    """Per-label histograms [K][BINS] of the masked angles."""
    K = theta.shape[1]
    bins = (theta / math.pi * BINS).long().clamp(0, BINS - 1)
    flat = bins + torch.arange(K, device=theta.device) * BINS
    counts = torch.zeros(K * BINS, dtype=torch.long, device=theta.device)
    counts.index_add_(0, flat[mask], torch.ones_like(flat[mask]))
    return counts.view(K, BINS).tolist()


@torch.no_grad()
def angle_diagnostics(engine, split: str = "test") -> Dict[str, Any]:
    """Angle statistics of ``split`` with its true labels (an evaluation, not training).

    * ``classifier``: angles ``theta = acos(cos(z, w_k))`` to the classifier weights — the
      angles the BBAM transform acts on — before and after balancing (``theta' = a theta + b``
      with the training coefficients); variances after = ``a^2 var``.
    * ``prototype``: angles to the label prototypes (the statistics' own angles).
    * ``vdfd``: ``|var_pos - var_neg|`` per label, for each of the above.
    """
    s = engine.splits[split]
    scores, feats, outs = engine.predict(s.x)
    y = s.y
    weights = engine.ema.module.classifier_weight.detach().float()
    a, b = engine.coefficients()
    out: Dict[str, Any] = {"split": split, "num_samples": int(y.shape[0])}
    # statistics with the fused op (no N x K matrix), then the balanced variances analytically
    count, mean, m2 = bbam.ops.label_angle_stats(feats, weights, y)
    var = unbiased_variance(count, m2)
    var_after = a.double() ** 2 * var
    if engine.stats is not None and engine.stats.prototypes.numel():
        prototypes = engine.stats.prototypes
    else:
        lb = engine.splits["labeled"]
        _, lb_feats, _ = engine.predict(lb.x)
        prototypes, _ = label_prototypes(lb_feats, lb.y)
    p_count, p_mean, p_m2 = bbam.ops.label_angle_stats(feats, prototypes, y)
    p_var = unbiased_variance(p_count, p_m2)
    # histograms need the angles themselves: fine for an evaluation split
    cos = torch.nn.functional.normalize(feats, dim=1) @ torch.nn.functional.normalize(weights, dim=1).T
    theta = torch.acos(cos.clamp(-1, 1))
    theta_after = torch.acos(bbam.ops.angle_transform(cos, a, b, y).clamp(-1, 1))
    out["classifier"] = {
        "count": count.tolist(), "mean": mean.tolist(), "var": var.tolist(), "var_after": var_after.tolist(),
        "vdfd": M.vdfd(var).tolist(), "vdfd_after": M.vdfd(var_after).tolist(),
        "hist_neg": _hist(theta, y == 0), "hist_pos": _hist(theta, y == 1),
        "hist_neg_after": _hist(theta_after, y == 0), "hist_pos_after": _hist(theta_after, y == 1),
    }
    out["prototype"] = {"count": p_count.tolist(), "mean": p_mean.tolist(), "var": p_var.tolist(),
                        "vdfd": M.vdfd(p_var).tolist()}
    out["coefficients"] = {"a": a.tolist(), "b": b.tolist()}
    ap = M.average_precision(scores, y)
    preds = scores >= engine.tc.threshold
    tp = (preds & (y == 1)).sum(0).double()
    f1 = 2 * tp / (preds.sum(0) + (y == 1).sum(0)).double().clamp(min=1)
    out["per_label"] = {"ap": [None if math.isnan(v) else v * 100 for v in ap.tolist()],
                        "f1": (f1 * 100).tolist(), "positives": (y == 1).sum(0).tolist(),
                        "accuracy": M.class_accuracies(scores, y, engine.tc.threshold).tolist()}
    finite = [v for v in out["classifier"]["vdfd"] if not math.isnan(v)]
    out["mean_vdfd"] = sum(finite) / max(len(finite), 1)
    finite_after = [v for v in out["classifier"]["vdfd_after"] if not math.isnan(v)]
    out["mean_vdfd_after"] = sum(finite_after) / max(len(finite_after), 1)
    return out
