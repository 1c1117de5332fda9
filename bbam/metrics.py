"""Multi-label evaluation metrics, vectorised in PyTorch.

Library layer: depends only on ``torch``, ``numpy``, ``math`` and bbam's own
ops (no scikit-learn, no I/O).  Every function works on CPU or CUDA tensors,
never loops over samples or labels in Python, and computes in ``float64``.
The ranking metrics need, for every positive entry, how many entries (and how
many positives) of its label or its sample score at least as high: on CPU the
fused op :func:`bbam.ops.positive_rank_stats` counts them without sorting; on
other devices a stable sort per row with tie groups does (the same counts).

Common arguments
----------------
scores : Tensor ``[N, K]``, floating point
    One row per sample, one column per label.  For the thresholded metrics
    (F1, Hamming loss, class accuracies, VCA) these are probabilities in
    ``[0, 1]`` (e.g. the sigmoid of the logits) compared with ``threshold``.
    The ranking metrics (AP/mAP, one-error, coverage, ranking loss, LRAP)
    depend only on the order of the scores, so logits or cosines work too.
    NaN is rejected; ``+-inf`` is accepted and ordered as usual.
targets : Tensor ``[N, K]``, values in ``{0, 1}`` (any bool/int/float dtype)
    Ground truth, ``1`` = label present.  Unknown entries (``-1``) are not
    allowed here: evaluation needs complete labels.
threshold : float
    A label is predicted positive when ``score >= threshold`` (default 0.5).

Ties are handled exactly as scikit-learn does: ranking metrics group equal
scores (see each function).  The reference values are
``sklearn.metrics.average_precision_score``, ``f1_score(zero_division=0)``,
``hamming_loss``, ``coverage_error``, ``label_ranking_loss`` and
``label_ranking_average_precision_score``; the tests check agreement to
1e-10.

Differences from the research code (changchunli/SSMLL-BBAM, evaluation.py),
all deliberate:

* mAP averages AP over the labels that have at least one positive; the
  research code averages over all labels, counting a label without positives
  as AP 0.
* F1 / Hamming loss / VCA use a threshold.  The research code predicts each
  sample's top-k labels with k = its *true* number of labels ("oracle
  cardinality"); that is available only as the explicitly named
  :func:`oracle_topk_predictions` / ``evaluate(..., oracle_cardinality=True)``
  for comparison with published numbers.
* ``coverage`` is scikit-learn's ``coverage_error`` (MULAN's coverage is this
  minus 1; the research code reports ``(coverage_error - 1) / K``).
* one-error takes the first arg-max on ties; the research code counts a
  sample as correct when any of the tied top labels is true.
"""

from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor

__all__ = [
    "average_precision",
    "mean_average_precision",
    "micro_f1",
    "macro_f1",
    "hamming_loss",
    "one_error",
    "coverage_error",
    "ranking_loss",
    "label_ranking_average_precision",
    "class_accuracies",
    "vca",
    "vdfd",
    "mean_vdfd",
    "oracle_topk_predictions",
    "evaluate",
]

from ._metric_inputs import _F64, _as_tensor, _check, _check_light, _check_threshold
from .ops import positive_rank_stats

# Elements of an [N, K] block converted and sorted at once (float64, int64 temporaries):
# evaluation memory stays bounded whatever N x K; results do not depend on it.
_CHUNK_ELEMENTS = 1 << 22


def _predict(scores: Tensor, threshold) -> Tensor:
    return (scores >= _check_threshold(threshold)).to(_F64)


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _tie_group_end(sorted_vals: Tensor) -> Tensor:
    """Index of the last element of each element's tie group along the last dim.

    ``sorted_vals`` is sorted (either direction) along its last dimension.
    Returns an int64 tensor of the same shape: for position ``j`` the largest
    ``j' >= j`` with ``sorted_vals[..., j'] == sorted_vals[..., j]``.
    """
    n = sorted_vals.shape[-1]
    idx = torch.arange(n, device=sorted_vals.device).expand_as(sorted_vals)
    is_end = torch.ones_like(sorted_vals, dtype=torch.bool)
    is_end[..., :-1] = sorted_vals[..., 1:] != sorted_vals[..., :-1]
    end_idx = torch.where(is_end, idx, torch.full_like(idx, n))
    # reverse cumulative minimum: nearest group end at or after each position
    return torch.flip(torch.cummin(torch.flip(end_idx, (-1,)), dim=-1).values, (-1,))


def _sorted_with_groups(scores: Tensor, targets: Tensor, descending: bool):
    """Sorts each row of ``scores`` and returns (sorted targets, group-end index,
    cumulative number of positives at the group end)."""
    vals, order = torch.sort(scores, dim=-1, descending=descending, stable=True)
    y = torch.gather(targets, -1, order)
    end = _tie_group_end(vals)
    cum_pos_at_end = torch.gather(torch.cumsum(y, dim=-1), -1, end)
    return y, end, cum_pos_at_end


def _use_cpu_kernel(s: Tensor) -> bool:
    """Ranks on CPU come from the fused op :func:`bbam.ops.positive_rank_stats` (no sort);
    elsewhere (CUDA) from a stable sort per row with tie groups."""
    return s.device.type == "cpu"


def _rank_stats(s: Tensor, y: Tensor):
    """Per row of ``s`` ``[L, M]`` with 0/1 targets ``y``: ``(precision_sum, misordered,
    deepest, positives)``, all float64 ``[L]``, over the row's positives ``j`` with
    ``rank_j`` = entries scored ``>= s_j`` and ``pos_rank_j`` = positives scored ``>= s_j``:
    ``sum_j pos_rank_j / rank_j``, ``sum_j (rank_j - pos_rank_j)``, ``max_j rank_j`` (0
    without positives) and the number of positives. The sufficient statistics of AP
    (rows = labels), LRAP, ranking loss and coverage (rows = samples)."""
    return _rank_stats_kernel(s, y) if _use_cpu_kernel(s) else _rank_stats_sorted(s, y)


def _rank_stats_kernel(s: Tensor, y: Tensor):
    """:func:`_rank_stats` by the fused CPU op (binary search among each row's positives)."""
    if s.dtype not in (torch.float32, _F64):  # exact: the order is kept; one contiguous copy
        s = s.to(torch.float32, memory_format=torch.contiguous_format)
    y_bool = y if y.dtype == torch.bool else y != 0
    return tuple(t.to(_F64) for t in positive_rank_stats(s, y_bool))


def _rank_stats_sorted(s: Tensor, y: Tensor):
    """:func:`_rank_stats` by a stable sort of every row with tie groups (any device)."""
    y_sorted, end, pos_ge = _sorted_with_groups(s.to(_F64), y.to(_F64), descending=True)
    rank = (end + 1).to(_F64)
    return ((y_sorted * pos_ge / rank).sum(-1), (y_sorted * (rank - pos_ge)).sum(-1),
            (y_sorted * rank).amax(-1), y_sorted.sum(-1))


def _f1(tp: Tensor, fp: Tensor, fn: Tensor) -> Tensor:
    denom = 2.0 * tp + fp + fn
    return torch.where(denom > 0, 2.0 * tp / denom.clamp_min(1.0), torch.zeros_like(denom))


def _micro_f1_pred(pred: Tensor, y: Tensor) -> float:
    tp = (pred * y).sum()
    fp = (pred * (1.0 - y)).sum()
    fn = ((1.0 - pred) * y).sum()
    return float(_f1(tp, fp, fn).item())


def _macro_f1_pred(pred: Tensor, y: Tensor) -> float:
    tp = (pred * y).sum(0)
    fp = (pred * (1.0 - y)).sum(0)
    fn = ((1.0 - pred) * y).sum(0)
    return float(_f1(tp, fp, fn).mean().item())


def _hamming_pred(pred: Tensor, y: Tensor) -> float:
    return float((pred != y).to(_F64).mean().item())


def _class_acc_pred(pred: Tensor, y: Tensor) -> Tensor:
    return (pred == y).to(_F64).mean(0)


def _vca_pred(pred: Tensor, y: Tensor) -> float:
    return float(_class_acc_pred(pred, y).var(unbiased=False).item())


# ---------------------------------------------------------------------------
# label-based ranking metrics
# ---------------------------------------------------------------------------


def average_precision(scores, targets) -> Tensor:
    """Per-label average precision.

    Args:
        scores: ``[N, K]`` float scores (only their order matters).
        targets: ``[N, K]`` ground truth in ``{0, 1}``.

    Returns:
        ``[K]`` float64 tensor (on the scores' device).  Entry ``k`` equals
        ``sklearn.metrics.average_precision_score(targets[:, k], scores[:, k])``:
        ``AP = sum_t (R_t - R_{t-1}) P_t`` over the *distinct* score values
        ``t`` (tied scores enter together), i.e. every positive contributes
        the precision at the end of its tie group, averaged over positives.
        Labels with no positive sample get ``NaN`` (AP is undefined there;
        scikit-learn would warn and return 0).
    """
    return _average_precision(*_check_light(scores, targets))


def _average_precision(s: Tensor, y: Tensor) -> Tensor:
    """:func:`average_precision` of checked inputs, label block by label block (each
    label is a row of the transposed block: bounded temporaries)."""
    n, k = s.shape
    block = max(1, _CHUNK_ELEMENTS // n)  # labels per block: each block's label-major copy is bounded
    aps = []
    for j in range(0, k, block):
        # every positive contributes the precision at the end of its tie group
        precision_sum, _, _, n_pos = _rank_stats(s[:, j:j + block].T, y[:, j:j + block].T)
        ap = precision_sum / n_pos
        aps.append(torch.where(n_pos > 0, ap, torch.full_like(ap, float("nan"))))
    return torch.cat(aps)


def mean_average_precision(scores, targets) -> float:
    """Mean average precision ×100.

    Args:
        scores: ``[N, K]`` float scores (only their order matters).
        targets: ``[N, K]`` ground truth in ``{0, 1}``.

    Returns:
        Mean of :func:`average_precision` over the labels with at least one
        positive sample, times 100 (``NaN`` when no label has a positive).
        Note: the research code instead averages over all ``K`` labels with
        AP 0 for labels without positives.
    """
    ap = average_precision(scores, targets)
    valid = ~torch.isnan(ap)
    if not bool(valid.any()):
        return float("nan")
    return float(ap[valid].mean().item() * 100.0)


# ---------------------------------------------------------------------------
# thresholded metrics
# ---------------------------------------------------------------------------


def micro_f1(scores, targets, threshold: float = 0.5) -> float:
    """Micro-averaged F1 of the predictions ``scores >= threshold``.

    Args:
        scores: ``[N, K]`` probabilities.
        targets: ``[N, K]`` ground truth in ``{0, 1}``.
        threshold: decision threshold (predict positive when ``>=``).

    Returns:
        ``2 TP / (2 TP + FP + FN)`` pooled over all entries; 0 when the
        denominator is 0 (``sklearn f1_score(average='micro', zero_division=0)``).
    """
    s, y = _check(scores, targets)
    return _micro_f1_pred(_predict(s, threshold), y)


def macro_f1(scores, targets, threshold: float = 0.5) -> float:
    """Macro-averaged F1 of the predictions ``scores >= threshold``.

    Args:
        scores: ``[N, K]`` probabilities.
        targets: ``[N, K]`` ground truth in ``{0, 1}``.
        threshold: decision threshold (predict positive when ``>=``).

    Returns:
        Unweighted mean over all ``K`` labels of the per-label F1; a label with
        ``TP + FP + FN = 0`` (no positive, none predicted) counts as 0, as in
        ``sklearn f1_score(average='macro', zero_division=0)``.
    """
    s, y = _check(scores, targets)
    return _macro_f1_pred(_predict(s, threshold), y)


def hamming_loss(scores, targets, threshold: float = 0.5) -> float:
    """Hamming loss of the predictions ``scores >= threshold``.

    Args:
        scores: ``[N, K]`` probabilities.
        targets: ``[N, K]`` ground truth in ``{0, 1}``.
        threshold: decision threshold (predict positive when ``>=``).

    Returns:
        Fraction of the ``N*K`` entries predicted wrongly
        (``sklearn.metrics.hamming_loss``).
    """
    s, y = _check(scores, targets)
    return _hamming_pred(_predict(s, threshold), y)


def class_accuracies(scores, targets, threshold: float = 0.5) -> Tensor:
    """Per-label accuracy of the predictions ``scores >= threshold``.

    Args:
        scores: ``[N, K]`` probabilities.
        targets: ``[N, K]`` ground truth in ``{0, 1}``.
        threshold: decision threshold (predict positive when ``>=``).

    Returns:
        ``[K]`` float64 tensor, fraction of samples whose label ``k`` is
        predicted correctly.
    """
    s, y = _check(scores, targets)
    return _class_acc_pred(_predict(s, threshold), y)


def vca(scores, targets, threshold: float = 0.5) -> float:
    """Variance of class-wise accuracy (VCA), the paper's fairness diagnostic.

    Args:
        scores: ``[N, K]`` probabilities.
        targets: ``[N, K]`` ground truth in ``{0, 1}``.
        threshold: decision threshold (predict positive when ``>=``).

    Returns:
        Population variance (divide by ``K``) of :func:`class_accuracies`;
        0 for ``K = 1``.
    """
    s, y = _check(scores, targets)
    return _vca_pred(_predict(s, threshold), y)


# ---------------------------------------------------------------------------
# example-based ranking metrics
# ---------------------------------------------------------------------------


def one_error(scores, targets) -> float:
    """One-error: fraction of samples whose top-scored label is not a true label.

    Args:
        scores: ``[N, K]`` float scores (only their order matters).
        targets: ``[N, K]`` ground truth in ``{0, 1}``.

    Returns:
        ``mean_i [targets[i, argmax_k scores[i, k]] == 0]``.  Ties at the top
        go to the first maximal index (``torch.argmax``).  Following MULAN
        (``mulan.evaluation.loss.OneError``, averaged over every example),
        a sample with no positive label counts as an error and stays in the
        denominator.
    """
    s, y = _check(scores, targets)
    return float(_one_error_rows(s, y).mean().item())


def _one_error_rows(s: Tensor, y: Tensor) -> Tensor:
    top = torch.argmax(s, dim=1, keepdim=True)
    return (torch.gather(y, 1, top) == 0).to(_F64).squeeze(1)


def coverage_error(scores, targets) -> float:
    """Coverage error (``sklearn.metrics.coverage_error``).

    Args:
        scores: ``[N, K]`` float scores (only their order matters).
        targets: ``[N, K]`` ground truth in ``{0, 1}``.

    Returns:
        Mean over samples of how far down the ranking one must go to cover all
        true labels: the number of labels scored ``>=`` the lowest-scored true
        label (ties count against the model).  Samples with no true label
        contribute 0.  MULAN's "coverage" is this value minus 1 (with MULAN's
        own ranking of ties); the research code reports ``(this - 1) / K``.
    """
    s, y = _check_light(scores, targets)
    return float(_coverage_rows(_rank_stats(s, y)).mean().item())


def _coverage_rows(stats) -> Tensor:
    # the deepest rank among the positives (0 without positives)
    return stats[2]


def ranking_loss(scores, targets) -> float:
    """Label ranking loss (``sklearn.metrics.label_ranking_loss``).

    Args:
        scores: ``[N, K]`` float scores (only their order matters).
        targets: ``[N, K]`` ground truth in ``{0, 1}``.

    Returns:
        Mean over samples of the fraction of (true, false) label pairs that
        are mis-ordered, i.e. with ``score_false >= score_true`` (a tie counts
        as a full error, as in scikit-learn).  Samples whose labels are all 0
        or all 1 contribute 0 (and stay in the denominator).
    """
    s, y = _check_light(scores, targets)
    return float(_ranking_loss_rows(_rank_stats(s, y), s.shape[1]).mean().item())


def _ranking_loss_rows(stats, k: int) -> Tensor:
    # a positive's mis-ordered pairs: the negatives scored >= it (ties count as errors)
    _, misordered, _, n_pos = stats
    n_pairs = n_pos * (k - n_pos)
    return torch.where(n_pairs > 0, misordered / n_pairs.clamp_min(1.0), torch.zeros_like(n_pairs))


def label_ranking_average_precision(scores, targets) -> float:
    """Label ranking average precision
    (``sklearn.metrics.label_ranking_average_precision_score``).

    Args:
        scores: ``[N, K]`` float scores (only their order matters).
        targets: ``[N, K]`` ground truth in ``{0, 1}``.

    Returns:
        Mean over samples of ``mean_{j true} L_ij / rank_ij`` where
        ``rank_ij`` = number of labels scored ``>= s_ij`` and ``L_ij`` = number
        of true labels scored ``>= s_ij``.  As in scikit-learn, a sample with
        no true label or with all labels true scores 1.
    """
    s, y = _check_light(scores, targets)
    return float(_lrap_rows(_rank_stats(s, y), s.shape[1]).mean().item())


def _lrap_rows(stats, k: int) -> Tensor:
    precision_sum, _, _, n_pos = stats
    per = precision_sum / n_pos.clamp_min(1.0)
    degenerate = (n_pos == 0) | (n_pos == k)
    return torch.where(degenerate, torch.ones_like(per), per)


# ---------------------------------------------------------------------------
# VDFD
# ---------------------------------------------------------------------------


def vdfd(var_neg, var_pos=None) -> Tensor:
    """Per-label variance difference of the angle distributions (VDFD).

    Args:
        var_neg: ``[K]`` variances of the angles of the negative samples of each
            label.  Alternatively the single argument may be a ``[2, K]``
            tensor ``var`` (the statistics layout): row 0 negatives, row 1
            positives.
        var_pos: ``[K]`` variances of the angles of the positive samples
            (omit when passing a ``[2, K]`` tensor).

    Returns:
        ``[K]`` float64 tensor ``|var_pos - var_neg|``.  NaN inputs propagate.
    """
    if var_pos is None:
        var = _as_tensor(var_neg, "var")
        if var.dim() != 2 or var.shape[0] != 2:
            raise ValueError(
                "with a single argument, var must be a [2, K] tensor (row 0 negatives, "
                f"row 1 positives), got shape {tuple(var.shape)}"
            )
        neg, pos = var[0], var[1]
    else:
        neg = _as_tensor(var_neg, "var_neg")
        pos = _as_tensor(var_pos, "var_pos")
        if neg.dim() != 1:
            raise ValueError(f"var_neg must be a 1-D tensor [K], got shape {tuple(neg.shape)}")
        if pos.dim() != 1:
            raise ValueError(f"var_pos must be a 1-D tensor [K], got shape {tuple(pos.shape)}")
        if neg.shape != pos.shape:
            raise ValueError(
                f"var_neg shape {tuple(neg.shape)} does not match var_pos shape {tuple(pos.shape)}"
            )
        if neg.device != pos.device:
            raise ValueError(f"var_neg is on {neg.device} but var_pos is on {pos.device}")
    for name, t in (("var_neg", neg), ("var_pos", pos)):
        if t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"{name} must be a real floating-point tensor, got dtype {t.dtype}")
    if neg.numel() == 0:
        raise ValueError("variances must have at least one label (K >= 1)")
    return (pos.to(_F64) - neg.to(_F64)).abs()


def mean_vdfd(var_neg, var_pos=None) -> float:
    """Mean over labels of :func:`vdfd` (same arguments: two ``[K]`` tensors
    ``var_neg, var_pos`` or one ``[2, K]`` tensor)."""
    return float(vdfd(var_neg, var_pos).mean().item())


# ---------------------------------------------------------------------------
# oracle cardinality and the full report
# ---------------------------------------------------------------------------


def oracle_topk_predictions(scores, targets) -> Tensor:
    """The research code's "oracle cardinality" predictions.

    FOR COMPARISON WITH PUBLISHED NUMBERS ONLY: it looks at the true labels.
    Each sample predicts its ``k_i`` highest-scored labels, with
    ``k_i = targets[i].sum()`` its *true* number of labels.

    Args:
        scores: ``[N, K]`` float scores.
        targets: ``[N, K]`` ground truth in ``{0, 1}``.

    Returns:
        ``[N, K]`` bool tensor.  Ties are broken toward the lower label index
        (a stable descending sort, like ``np.argsort(-s, kind='stable')``; the
        research code's unstable ``np.argsort`` may break ties differently).
    """
    s, y = _check(scores, targets)
    return _oracle_rows(s, y)


def _oracle_rows(s: Tensor, y: Tensor) -> Tensor:
    n, k = s.shape
    order = torch.argsort(s, dim=1, descending=True, stable=True)
    card = y.sum(1, keepdim=True).to(torch.int64)
    take = torch.arange(k, device=s.device).unsqueeze(0) < card
    return torch.zeros((n, k), dtype=torch.bool, device=s.device).scatter(1, order, take)


def evaluate(scores, targets, threshold: float = 0.5, oracle_cardinality: bool = False) -> Dict[str, float]:
    """All evaluation metrics at once.

    Args:
        scores: ``[N, K]`` probabilities (e.g. sigmoid outputs).
        targets: ``[N, K]`` ground truth in ``{0, 1}``.
        threshold: decision threshold for F1 / Hamming loss / VCA
            (predict positive when ``score >= threshold``).
        oracle_cardinality: if True, F1 / Hamming loss / VCA use
            :func:`oracle_topk_predictions` (true label counts, as in the
            research code) instead of the threshold.  Only for comparison with
            published numbers.

    Returns:
        dict with float values under the keys ``mAP`` (×100), ``micro_f1``,
        ``macro_f1``, ``hamming_loss``, ``one_error``, ``coverage``
        (sklearn's coverage error), ``ranking_loss``, ``lrap`` and ``vca``.
    """
    s, y = _check_light(scores, targets)
    threshold = _check_threshold(threshold)
    y = y if y.dtype == torch.bool else y != 0  # 0/1 checked: one bool copy serves every metric
    n, k = s.shape
    # thresholded metrics from per-label counts, example-based ones from per-row values,
    # accumulated over row chunks (counts of 0/1 are exact in float64: the same values as
    # one pass over the whole matrix)
    tp = torch.zeros(k, dtype=torch.int64, device=s.device)
    fp, fn = torch.zeros_like(tp), torch.zeros_like(tp)
    rows = {"one_error": [], "coverage": [], "ranking_loss": [], "lrap": []}
    chunk = max(1, _CHUNK_ELEMENTS // k)
    for i in range(0, n, chunk):
        s_c, y_c = s[i:i + chunk], y[i:i + chunk]
        # the threshold is compared in float64, as the separate metrics do
        pred = _oracle_rows(s_c, y_c) if oracle_cardinality else s_c.to(_F64) >= threshold
        tp += torch.count_nonzero(pred & y_c, dim=0)
        fp += torch.count_nonzero(pred & ~y_c, dim=0)
        fn += torch.count_nonzero(~pred & y_c, dim=0)
        stats = _rank_stats(s_c, y_c)
        rows["one_error"].append(_one_error_rows(s_c, y_c))
        rows["coverage"].append(_coverage_rows(stats))
        rows["ranking_loss"].append(_ranking_loss_rows(stats, k))
        rows["lrap"].append(_lrap_rows(stats, k))
    ap = _average_precision(s, y)  # inputs checked above, once
    valid = ~torch.isnan(ap)
    tp, fp, fn = tp.to(_F64), fp.to(_F64), fn.to(_F64)  # exact counts
    class_acc = (n - fp - fn) / n
    out = {
        "mAP": float(ap[valid].mean().item() * 100.0) if bool(valid.any()) else float("nan"),
        "micro_f1": float(_f1(tp.sum(), fp.sum(), fn.sum()).item()),
        "macro_f1": float(_f1(tp, fp, fn).mean().item()),
        "hamming_loss": float(((fp + fn).sum() / (n * k)).item()),
    }
    out.update({name: float(torch.cat(values).mean().item()) for name, values in rows.items()})
    out["vca"] = float(class_acc.var(unbiased=False).item())
    return {key: out[key] for key in ("mAP", "micro_f1", "macro_f1", "hamming_loss", "one_error", "coverage",
                                      "ranking_loss", "lrap", "vca")}
