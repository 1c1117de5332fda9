"""Class-aware pseudo-labels (CAP) for the unlabeled set.

The method (docs/METHOD.md): estimate the positive rate ``pi_k`` of every label on the
labeled set; score the unlabeled set (EMA model, *inference* transform, sigmoid);
for each label the threshold is the score of rank ``ceil(pi_k * N_u)`` in descending
order (rank 1 = highest); scores at or above it are pseudo-positives, the others
pseudo-negatives. A confidence mask keeps the pseudo-positives among the top
``ceil(pos_per * pi_k * N_u)`` scores of the label and the pseudo-negatives among the
bottom ``ceil(neg_per * (1 - pi_k) * N_u)`` scores (``neg_per`` clipped to 0.998 as in
the research code).

Conventions shared by every function here:

* Ranks are positions in the **stable descending order** of each label's ``N_u`` scores:
  among equal scores the sample with the lower row index ranks first. Pseudo-labels use
  the threshold *value* (``score >= threshold``), so every sample tied with the threshold
  score is a pseudo-positive; the confidence mask uses the *ranks*, so among tied samples
  only those ranked within the kept count are kept.
* Counts ``pi * N_u`` etc. are computed in float64; a product within ``1e-9``
  (relative) of an integer is snapped to that integer before ``ceil`` so that, e.g.,
  ``pi = 0.07`` with ``N_u = 100`` (``7.000000000000001`` in float64) gives rank 7,
  never 8. Pass rates as float64 (as :func:`estimate_positive_rates` returns): a
  float32 ``0.4`` is ``0.4000000059...`` and its own rounding is beyond that snap.
  Counts are clamped into ``[0, N_u]``.
* No sort of the score matrix: each label's order statistics come from a selection, and
  "among the first m in the stable order" from the m-th value and a running count of its
  ties. For float32 / float64 CPU scores the fused op :func:`bbam.ops.cap_select` does it
  per label (``std::nth_element`` among the scores above a sampled bound, then one
  writing pass); elsewhere (CUDA, half precision) torch's ``topk``
  to the depth each label needs (``ceil(pi_k N_u)`` for a rare label), labels in blocks of
  similar depth so the temporaries stay bounded (``_BLOCK_ELEMENTS`` elements) whatever
  ``N_u x K``. Both give the same result; the outputs are ``[N_u, K]`` int8 and bool.

The threshold computation lives in :func:`_thresholds` (used by :func:`cap_thresholds`
and :func:`cap_pseudo_labels`), so that a distributed version computing the order
statistic globally across ranks can replace it in one place.

Fidelity note: predictions scored for pseudo-labelling must use the inference
transform (average of the positive and negative BBAM transforms) — never the
transform chosen by the samples' true labels, as the research code does.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .ops import as_targets, cap_select

__all__ = [
    "estimate_positive_rates",
    "cap_thresholds",
    "cap_pseudo_labels",
    "cap_pseudo_targets",
    "CAPLabeler",
    "NEG_PER_MAX",
]

#: Upper clip of ``neg_per`` (as in the research code).
NEG_PER_MAX = 0.998

_SNAP_RTOL = 1e-9


def _ceil_count(x: Tensor, n: int) -> Tensor:
    """``ceil(x)`` as int64, snapping values within ``1e-9`` (relative) of an integer to
    it, clamped into ``[0, n]``. ``x`` is float64."""
    r = torch.round(x)
    near = (x - r).abs() <= _SNAP_RTOL * x.abs().clamp(min=1.0)
    c = torch.where(near, r, torch.ceil(x))
    return c.clamp(0, n).to(torch.int64)


def _check_targets(name: str, targets: Tensor) -> Tensor:
    """Shape check; returns int8 targets (int8 values checked, other dtypes converted by
    :func:`bbam.ops.as_targets`)."""
    if not isinstance(targets, Tensor):
        raise TypeError(f"{name}: 'targets' must be a torch.Tensor, got {type(targets).__name__}")
    if targets.dim() != 2:
        raise ValueError(f"{name}: 'targets' must be 2-D [N, K], got shape {tuple(targets.shape)}")
    return as_targets(targets, name, check_int8=True)


def _check_scores(name: str, scores: Tensor, nan: bool = True) -> None:
    """Type and shape checks; ``nan``: also reject NaN here (the CPU kernel checks it itself)."""
    if not isinstance(scores, Tensor):
        raise TypeError(f"{name}: 'scores' must be a torch.Tensor, got {type(scores).__name__}")
    if scores.dim() != 2:
        raise ValueError(f"{name}: 'scores' must be 2-D [N_u, K], got shape {tuple(scores.shape)}")
    if not scores.is_floating_point():
        raise ValueError(f"{name}: 'scores' must be a floating tensor, got dtype {scores.dtype}")
    if nan and bool(torch.isnan(scores).any()):
        raise ValueError(f"{name}: 'scores' contains NaN")


def _check_pos_rates(name: str, pos_rates: Tensor, K: int) -> Tensor:
    if not isinstance(pos_rates, Tensor):
        pos_rates = torch.as_tensor(pos_rates, dtype=torch.float64)
    if pos_rates.dim() != 1 or pos_rates.shape[0] != K:
        raise ValueError(f"{name}: 'pos_rates' must be 1-D [K] with K = {K} (the number of score columns), "
                         f"got shape {tuple(pos_rates.shape)}")
    pos_rates = pos_rates.to(torch.float64)
    if K and not bool(((pos_rates >= 0) & (pos_rates <= 1)).all()):
        raise ValueError(f"{name}: 'pos_rates' must lie in [0, 1], got min {float(pos_rates.min())}, "
                         f"max {float(pos_rates.max())}")
    return pos_rates


def _check_pers(name: str, pos_per: float, neg_per: float) -> Tuple[float, float]:
    pos_per, neg_per = float(pos_per), float(neg_per)
    if not 0.0 < pos_per <= 1.0:
        raise ValueError(f"{name}: 'pos_per' must be in (0, 1], got {pos_per}")
    if not 0.0 < neg_per <= 1.0:
        raise ValueError(f"{name}: 'neg_per' must be in (0, 1] (values above {NEG_PER_MAX} are clipped to it), "
                         f"got {neg_per}")
    return pos_per, min(neg_per, NEG_PER_MAX)


@torch.no_grad()
def estimate_positive_rates(targets: Tensor) -> Tensor:
    """Positive rate ``pi_k`` of every label over its known entries.

    Args:
        targets: ``[N, K]`` int8: 1 positive, 0 negative, -1 unknown (ignored); bool,
            integer and float targets are converted (:func:`bbam.ops.as_targets`). Not modified.

    Returns:
        ``[K]`` float64 on ``targets.device``: ``#positives / #known`` per label, clamped
        into ``[0, 1]``; a label with no known entry gets 0.
    """
    targets = _check_targets("estimate_positive_rates", targets)
    pos = (targets == 1).sum(0, dtype=torch.int64).to(torch.float64)
    known = (targets >= 0).sum(0, dtype=torch.int64).to(torch.float64)
    return (pos / known.clamp(min=1.0)).clamp(0.0, 1.0)


# Elements of a [B, N_u] block of label rows processed at once: bounds the temporaries of
# CAP to a few bytes x this many, whatever N_u x K (the scores themselves excepted).
_BLOCK_ELEMENTS = 1 << 22


def _label_blocks(need: Tensor, n: int) -> List[Tensor]:
    """Labels grouped for selection: ordered by how deep each needs to look (``need``,
    ``[K]`` int64 in ``[0, n]``), in blocks of at most ``_BLOCK_ELEMENTS / n`` labels, so
    one ``topk`` per block with the block's largest depth wastes little."""
    order = torch.argsort(need.cpu(), stable=True)
    size = max(1, _BLOCK_ELEMENTS // max(n, 1))
    return [order[i:i + size] for i in range(0, len(order), size)]


def _largest(rows: Tensor, depth: int) -> Tensor:
    """``[B, depth]``: the ``depth`` largest values of each row of ``rows`` ``[B, N]``, in
    descending order: one ``topk``, or a sort when ``depth`` exceeds half the row (the value
    at a rank does not depend on how ties are ordered)."""
    if depth <= rows.shape[1] // 2:
        return torch.topk(rows, depth, dim=1, largest=True, sorted=True).values
    return torch.sort(rows, dim=1, descending=True).values[:, :depth]


def _value_at(top: Tensor, m: Tensor) -> Tensor:
    """``[B, 1]``: the ``m``-th largest value of each row (``top`` from :func:`_largest`);
    a placeholder where ``m == 0`` (no element is that deep)."""
    return top.gather(1, (m - 1).clamp(min=0).unsqueeze(1))


def _in_top(rows: Tensor, m: Tensor, value: Tensor) -> Tensor:
    """``[B, N]`` bool: whether each element is among the first ``m[b]`` of its row in the
    stable descending order (larger value first; among equal values the lower column
    first), without sorting: above ``value`` (the ``m``-th largest, ``[B, 1]``), or equal to it
    and among the first ``m - #above`` equal ones."""
    above = rows > value
    equal = rows == value
    room = (m - above.sum(1)).unsqueeze(1)          # equal elements still inside the top m
    inside = above | (equal & (torch.cumsum(equal, 1, dtype=torch.int32) <= room))
    return inside & (m > 0).unsqueeze(1)


def _thresholds(scores: Tensor, ranks: Tensor) -> Tensor:
    """Per-label threshold = score of (1-based) rank ``ranks[k]`` in the descending order
    of column ``k`` of ``scores`` ``[N_u, K]``; ``+inf`` where ``ranks[k] == 0``.

    This is the one place the CAP order statistic is taken (by selection, label block by
    label block); a distributed version (global quantile across ranks) replaces it."""
    N, K = scores.shape
    thr = torch.full((K,), float("inf"), dtype=scores.dtype, device=scores.device)
    ranks = ranks.to(scores.device)
    for labels in _label_blocks(ranks, N):
        labels = labels.to(scores.device)
        labels = labels[ranks[labels] > 0]
        if len(labels):
            top = _largest(scores.T[labels], int(ranks[labels].max()))
            thr[labels] = _value_at(top, ranks[labels]).squeeze(1)
    return thr


@torch.no_grad()
def cap_thresholds(scores: Tensor, pos_rates: Tensor) -> Tensor:
    """CAP per-label thresholds.

    Args:
        scores: ``[N_u, K]`` floating scores of the unlabeled samples (sigmoid
            probabilities of the inference transform; any monotone score works).
        pos_rates: ``[K]`` positive rates ``pi_k`` in ``[0, 1]``
            (see :func:`estimate_positive_rates`).

    Returns:
        ``[K]`` (dtype of ``scores``): the score of rank ``ceil(pi_k * N_u)`` (clamped
        to ``N_u``) in the stable descending order of label ``k``'s scores (rank 1 =
        highest); ``+inf`` when that rank is 0 (``pi_k * N_u <= 0``: nobody positive).
    """
    _check_scores("cap_thresholds", scores)
    N, K = scores.shape
    pi = _check_pos_rates("cap_thresholds", pos_rates, K).to(scores.device)
    return _thresholds(scores, _ceil_count(pi * N, N))


@torch.no_grad()
def cap_pseudo_labels(scores: Tensor, pos_rates: Tensor, pos_per: float = 1.0,
                      neg_per: float = NEG_PER_MAX) -> Tuple[Tensor, Tensor]:
    """CAP pseudo-labels and their confidence mask.

    Args:
        scores: ``[N_u, K]`` floating scores of the unlabeled samples.
        pos_rates: ``[K]`` positive rates ``pi_k`` in ``[0, 1]``.
        pos_per: in ``(0, 1]``: the mask keeps pseudo-positives among the top
            ``ceil(pos_per * pi_k * N_u)`` scores of label ``k``.
        neg_per: in ``(0, 1]``, clipped to ``0.998`` (as in the research code): the mask
            keeps pseudo-negatives among the bottom ``ceil(neg_per * (1 - pi_k) * N_u)``
            scores of label ``k``.

    Returns:
        ``(targets [N_u, K] int8 in {0, 1}, mask [N_u, K] bool)`` on ``scores.device``:
        ``targets = scores >= cap_thresholds(scores, pos_rates)`` (no positive where the
        threshold rank is 0); ``mask`` is True for confident entries. Top/bottom
        positions come from the stable descending sort (lower row index first among
        ties).
    """
    counts = _selection_counts("cap_pseudo_labels", scores, pos_rates, pos_per, neg_per)
    if counts is None:  # no unlabeled sample
        empty = torch.zeros((0, scores.shape[1]), device=scores.device)
        return empty.to(torch.int8), empty.to(torch.bool)
    if _use_cpu_kernel(scores):
        targets, mask, _ = cap_select(scores, *counts)
        return targets, mask
    return _pseudo_labels_by_blocks(scores, *counts)


@torch.no_grad()
def cap_pseudo_targets(scores: Tensor, pos_rates: Tensor, pos_per: float = 1.0,
                       neg_per: float = NEG_PER_MAX) -> Tensor:
    """The targets self-training learns from: :func:`cap_pseudo_labels` with the
    unconfident entries unknown.

    Args: as :func:`cap_pseudo_labels`.

    Returns:
        ``[N_u, K]`` int8: ``1`` / ``0`` the confident pseudo-positives / negatives, ``-1``
        the entries outside the confidence mask (one ``[N_u, K]`` byte tensor: half the
        memory of the pair).
    """
    counts = _selection_counts("cap_pseudo_targets", scores, pos_rates, pos_per, neg_per)
    if counts is None:
        return torch.zeros((0, scores.shape[1]), dtype=torch.int8, device=scores.device)
    if _use_cpu_kernel(scores):
        return cap_select(scores, *counts, unknown_outside_mask=True)[0]
    targets, mask = _pseudo_labels_by_blocks(scores, *counts)
    return targets.masked_fill_(mask.logical_not_(), -1)


def _selection_counts(name: str, scores: Tensor, pos_rates: Tensor, pos_per: float,
                      neg_per: float) -> Optional[Tuple[Tensor, Tensor, Tensor]]:
    """Checked inputs -> ``(ranks, n_pos_keep, n_not_neg)``, each ``[K]`` int64 (None when
    ``N_u == 0``): the threshold rank, and the mask's depths in the stable descending
    order -- a pseudo-positive is kept among the first ``n_pos_keep``, a pseudo-negative
    among the last ``n_neg_keep``, i.e. not among the first ``n_not_neg = N_u - n_neg_keep``."""
    _check_scores(name, scores, nan=not _use_cpu_kernel(scores))
    pos_per, neg_per = _check_pers(name, pos_per, neg_per)
    N, K = scores.shape
    pi = _check_pos_rates(name, pos_rates, K).to(scores.device)
    if N == 0:
        return None
    ranks = _ceil_count(pi * N, N)                            # threshold ranks (1-based)
    n_pos_keep = _ceil_count(pos_per * pi * N, N)             # top positions kept
    n_neg_keep = _ceil_count(neg_per * (1.0 - pi) * N, N)     # bottom positions kept
    return ranks, n_pos_keep, N - n_neg_keep


def _use_cpu_kernel(scores: Tensor) -> bool:
    """The fused CPU op :func:`bbam.ops.cap_select` serves float32 / float64 CPU scores;
    elsewhere (CUDA, half precision) :func:`_pseudo_labels_by_blocks` selects with torch."""
    return scores.device.type == "cpu" and scores.dtype in (torch.float32, torch.float64)


def _pseudo_labels_by_blocks(scores: Tensor, ranks: Tensor, n_pos_keep: Tensor,
                             n_not_neg: Tensor) -> Tuple[Tensor, Tensor]:
    """:func:`cap_pseudo_labels` with torch operations: one ``topk`` per label block serves
    all three depths (the result of :func:`bbam.ops.cap_select`, on any device)."""
    N, K = scores.shape
    targets = torch.empty((N, K), dtype=torch.int8, device=scores.device)
    mask = torch.empty((N, K), dtype=torch.bool, device=scores.device)
    depth = torch.maximum(ranks, n_not_neg)  # n_pos_keep <= ranks
    for labels in _label_blocks(depth, N):
        labels = labels.to(scores.device)
        block = scores.T[labels]                     # [B, N]
        top = _largest(block, max(1, int(depth[labels].max())))
        r = ranks[labels]
        thr = torch.where(r > 0, _value_at(top, r).squeeze(1), torch.full_like(top[:, 0], float("inf")))
        pos = (block >= thr.unsqueeze(1)) & (r > 0).unsqueeze(1)     # by value: ties are positive
        m_pos, m_neg = n_pos_keep[labels], n_not_neg[labels]
        keep = torch.where(pos, _in_top(block, m_pos, _value_at(top, m_pos)),
                           ~_in_top(block, m_neg, _value_at(top, m_neg)))
        targets[:, labels] = pos.T.to(torch.int8)
        mask[:, labels] = keep.T
    return targets, mask


class CAPLabeler:
    """Class-aware pseudo-labeller: positive rates from the labeled set, then
    per-label thresholds on the unlabeled scores.

    Args:
        pos_per: in ``(0, 1]`` (see :func:`cap_pseudo_labels`).
        neg_per: in ``(0, 1]``, clipped to ``0.998``.

    Usage::

        labeler = CAPLabeler().fit(labeled_targets)      # [N_l, K] int8, -1 unknown
        targets, mask = labeler(scores)                  # scores [N_u, K]
        # targets [N_u, K] int8 in {0, 1}; mask [N_u, K] bool

    Attributes:
        pos_rates: ``[K]`` float64 positive rates after :meth:`fit` (``None`` before);
            may also be assigned directly (e.g. rates reduced across ranks).
    """

    def __init__(self, pos_per: float = 1.0, neg_per: float = NEG_PER_MAX):
        self.pos_per, self.neg_per = _check_pers("CAPLabeler", pos_per, neg_per)
        self.pos_rates: Optional[Tensor] = None

    def fit(self, labeled_targets: Tensor) -> "CAPLabeler":
        """Estimate ``pi_k`` from ``labeled_targets [N_l, K]`` (int8, -1 unknown ignored).
        Returns ``self``."""
        self.pos_rates = estimate_positive_rates(labeled_targets)
        return self

    def thresholds(self, scores: Tensor) -> Tensor:
        """``[K]`` thresholds for ``scores [N_u, K]`` (see :func:`cap_thresholds`)."""
        return cap_thresholds(scores, self._rates("thresholds"))

    def __call__(self, scores: Tensor) -> Tuple[Tensor, Tensor]:
        """``scores [N_u, K]`` -> ``(targets [N_u, K] int8 in {0, 1}, mask [N_u, K] bool)``."""
        return cap_pseudo_labels(scores, self._rates("__call__"), self.pos_per, self.neg_per)

    def pseudo_targets(self, scores: Tensor) -> Tensor:
        """``scores [N_u, K]`` -> ``[N_u, K]`` int8: confident pseudo-labels, ``-1`` elsewhere
        (see :func:`cap_pseudo_targets`)."""
        return cap_pseudo_targets(scores, self._rates("pseudo_targets"), self.pos_per, self.neg_per)

    def _rates(self, where: str) -> Tensor:
        if self.pos_rates is None:
            raise RuntimeError(f"CAPLabeler.{where}: call fit(labeled_targets) first")
        return self.pos_rates

    def __repr__(self) -> str:
        K = None if self.pos_rates is None else self.pos_rates.numel()
        return f"CAPLabeler(pos_per={self.pos_per}, neg_per={self.neg_per}, num_labels={K})"
