"""Splits of a dataset: :func:`iterative_stratification` (Sechidis et al. 2011, exact fold
sizes) and :func:`split_indices` (one run's labeled / unlabeled / validation / test rows).

Every published result depends on these exact splits: change nothing here without
rerunning them. The ``iterative-stratification`` package (same paper) was not adopted:
its fold sizes are soft (yeast 80/20: test folds of 480-510 rows, ours 483 exactly) and its
test folds share ~20% of their rows with ours on the MULAN sets, i.e. other splits.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from .container import MultiLabelData

__all__ = ["iterative_stratification", "split_indices"]


def _fold_sizes(n: int, proportions: Sequence[float]) -> np.ndarray:
    props = np.asarray([float(x) for x in proportions], dtype=np.float64)
    if props.ndim != 1 or props.size == 0:
        raise ValueError("proportions must be a non-empty sequence of numbers")
    if not np.isfinite(props).all() or (props < 0).any():
        raise ValueError(f"proportions must be finite and >= 0, got {list(proportions)}")
    if abs(props.sum() - 1.0) > 1e-6:
        raise ValueError(f"proportions must sum to 1, got {props.sum():.6g}")
    exact = props / props.sum() * n
    sizes = np.floor(exact).astype(np.int64)
    rem = n - int(sizes.sum())
    if rem > 0:  # largest remainder, ties by fold order
        order = np.argsort(-(exact - sizes), kind="stable")
        sizes[order[:rem]] += 1
    return sizes


def _stratify(Y: np.ndarray, sizes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Fold id per row; Sechidis et al. 2011 with hard fold capacities.

    Labels are taken rarest first; each unassigned row of the label goes to the fold that
    most wants the label (then the one with most room; ties at random). Within one label
    only that label's demands and the capacities change, so the per-row loop tracks just
    those, and the other labels' demands and remaining counts are updated in bulk after
    the label (the same assignments and random draws as updating them row by row)."""
    n, k = Y.shape
    f = int(sizes.size)
    assign = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return assign
    order = rng.permutation(n)
    # each label's rows, in the order of `order`: the nonzeros of Y[order] (row-major), grouped
    # by label with a stable sort (the same lists as np.flatnonzero(Y[order][:, l]), without
    # reading the permuted matrix column by column)
    rows_o, cols_o = np.nonzero(Y[order])
    by_label = np.argsort(cols_o.astype(np.int16) if k < 2 ** 15 else cols_o, kind="stable")
    counts = np.bincount(cols_o, minlength=k).astype(np.int64)
    # desired[j, l] scaled by n (exact integers): sizes_j * |D^l| - n * assigned_j^l
    desired = sizes.astype(np.int64)[:, None] * counts[None, :]
    capacity = [int(s) for s in sizes]
    remaining = counts.copy()
    member_rows = order[rows_o[by_label]]
    bounds = np.concatenate([[0], np.cumsum(counts)])
    members = [member_rows[bounds[l]:bounds[l + 1]] for l in range(k)]
    del by_label
    # each row's labels (CSR over the permuted rows: row r of Y is row position[r] of Y[order])
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n)
    starts_o = np.searchsorted(rows_o, np.arange(n + 1))
    del rows_o
    while True:
        live = np.flatnonzero(remaining > 0)
        if live.size == 0:
            break
        rmin = remaining[live].min()
        ties = live[remaining[live] == rmin]
        lab = int(ties[rng.integers(ties.size)]) if ties.size > 1 else int(ties[0])
        todo = members[lab][assign[members[lab]] < 0].tolist()
        want = desired[:, lab].tolist()
        folds = []
        for _ in todo:
            best: list[int] = []
            best_key: tuple[int, int] | None = None
            for j in range(f):
                if capacity[j] <= 0:
                    continue
                key = (want[j], capacity[j])
                if best_key is None or key > best_key:
                    best_key, best = key, [j]
                elif key == best_key:
                    best.append(j)
            j = best[0] if len(best) == 1 else best[int(rng.integers(len(best)))]
            folds.append(j)
            capacity[j] -= 1
            want[j] -= n  # the row carries this label
        if todo:
            done, fold = np.asarray(todo, dtype=np.int64), np.asarray(folds, dtype=np.int64)
            assign[done] = fold
            first = starts_o[position[done]]
            lengths = starts_o[position[done] + 1] - first
            labels = cols_o[np.repeat(first - np.cumsum(np.r_[0, lengths[:-1]]), lengths)
                          + np.arange(lengths.sum())]
            np.subtract.at(desired, (np.repeat(fold, lengths), labels), n)
            remaining -= np.bincount(labels, minlength=k)
    rest = order[assign[order] < 0]
    if rest.size:
        fill = np.repeat(np.arange(f), np.maximum(np.asarray(capacity), 0))
        assert fill.size == rest.size
        assign[rest] = fill[rng.permutation(fill.size)]
    return assign


def _labels_numpy(Y: Any) -> np.ndarray:
    if isinstance(Y, MultiLabelData):
        Y = Y.Y
    if isinstance(Y, torch.Tensor):
        Y = Y.detach().cpu().numpy()
    Y = np.asarray(Y)
    if Y.ndim != 2:
        raise ValueError(f"Y must be 2-D [N, K], got shape {Y.shape}")
    return Y == 1


def iterative_stratification(
    Y: torch.Tensor | np.ndarray, proportions: Sequence[float], seed: int = 0
) -> list[torch.Tensor]:
    """Iterative stratification for multi-label data (Sechidis, Tsoumakas &
    Vlahavas, ECML-PKDD 2011, Algorithm 1).

    Repeatedly takes the label with the fewest not-yet-assigned positive
    samples (ties at random) and deals each of those samples to the fold that
    most lacks positives of that label (ties: the fold lacking the most
    samples, then at random); samples with no positive label fill the
    remaining places at random.  Unlike the paper, fold sizes are hard
    capacities -- ``round(N * p_j)`` by largest remainder, summing to
    ``N`` -- so sizes match the proportions exactly.  Only ``Y == 1`` counts
    as positive.  Deterministic given ``seed``.

    Returns one sorted LongTensor of row indices per fold.
    """
    Yb = _labels_numpy(Y)
    sizes = _fold_sizes(Yb.shape[0], proportions)
    assign = _stratify(Yb, sizes, np.random.default_rng(seed))
    return [torch.from_numpy(np.flatnonzero(assign == j).astype(np.int64)) for j in range(sizes.size)]


def _check_ratio(name: str, value: Any, low_open: bool, high_closed: bool) -> float:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    v = float(value) if ok else float("nan")
    lo_ok = v > 0 if low_open else v >= 0
    hi_ok = v <= 1 if high_closed else v < 1
    if not (ok and math.isfinite(v) and lo_ok and hi_ok):
        interval = ("(" if low_open else "[") + "0, 1" + ("]" if high_closed else ")")
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
    return v


def _sub_seed(seed: int, stage: int) -> int:
    return int(np.random.SeedSequence([int(seed), stage]).generate_state(1)[0])


def split_indices(
    data: MultiLabelData,
    lb_ratio: float,
    val_ratio: float = 0.1,
    test_ratio: float = 0.2,
    seed: int = 0,
    min_val_size: int = 0,
    max_val_ratio: float = 0.5,
    unlabeled_ratio: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Split one run's samples into ``labeled``/``unlabeled``/``val``/``test``.

    * test: the official ``data.test_idx`` when present (``test_ratio`` is
      then ignored), else an iterative-stratified ``test_ratio`` share;
    * the rest is the training pool (with an official split: every sample
      not in ``test_idx``);
    * val: an iterative-stratified share of the pool (model selection never
      looks at the test set) of ``max(val_ratio * pool, min_val_size)`` samples,
      at most ``max_val_ratio * pool``: a validation split of a few dozen rows
      ranks checkpoints by noise, so small pools give it a larger share;
    * labeled: an iterative-stratified ``lb_ratio`` share of what remains
      (at least one sample); unlabeled: the remainder (its labels are not for
      the learner), or a random ``unlabeled_ratio`` share of it (at least one
      row; a smaller share's rows are a subset of a larger one's: pool-size
      studies), the other rows being left out of every split.

    All stages are drawn from ``seed`` (one labeled split per seed).  Returns
    sorted, disjoint LongTensors that together cover ``range(N)`` (less the
    unlabeled rows left out).
    """
    lb = _check_ratio("lb_ratio", lb_ratio, low_open=True, high_closed=True)
    vr = _check_ratio("val_ratio", val_ratio, low_open=False, high_closed=False)
    tr = _check_ratio("test_ratio", test_ratio, low_open=False, high_closed=False)
    ur = _check_ratio("unlabeled_ratio", unlabeled_ratio, low_open=True, high_closed=True)
    Yb = _labels_numpy(data.Y)
    n = Yb.shape[0]
    if data.test_idx is not None:
        test = np.sort(data.test_idx.numpy())
        pool = np.setdiff1d(np.arange(n), test)
    else:
        a = _stratify(Yb, _fold_sizes(n, [1.0 - tr, tr]), np.random.default_rng(_sub_seed(seed, 0)))
        test, pool = np.flatnonzero(a == 1), np.flatnonzero(a == 0)
    if pool.size == 0:
        raise ValueError(f"dataset {data.name!r}: no training samples left after the test split")
    if min_val_size < 0:
        raise ValueError(f"min_val_size must be >= 0, got {min_val_size}")
    mvr = _check_ratio("max_val_ratio", max_val_ratio, low_open=False, high_closed=False)
    if vr > 0:  # never below val_ratio; min_val_size raises it up to max_val_ratio
        vr = max(vr, min(min_val_size / pool.size, mvr))
    a = _stratify(Yb[pool], _fold_sizes(pool.size, [1.0 - vr, vr]), np.random.default_rng(_sub_seed(seed, 1)))
    val, rest = pool[a == 1], pool[a == 0]
    if rest.size == 0:
        raise ValueError(f"dataset {data.name!r}: no training samples left after the validation split (val_ratio={vr})")
    n_lab = max(1, int(np.floor(lb * rest.size + 0.5)))
    sizes = np.array([n_lab, rest.size - n_lab], dtype=np.int64)
    a = _stratify(Yb[rest], sizes, np.random.default_rng(_sub_seed(seed, 2)))
    labeled, unlabeled = rest[a == 0], rest[a == 1]
    if ur < 1.0 and unlabeled.size > 0:  # a prefix of one permutation: smaller pools nest in larger ones
        order = np.random.default_rng(_sub_seed(seed, 3)).permutation(unlabeled.size)
        unlabeled = unlabeled[order[:max(1, int(np.floor(ur * unlabeled.size + 0.5)))]]
    t = lambda v: torch.from_numpy(np.sort(v).astype(np.int64))  # noqa: E731
    return {"labeled": t(labeled), "unlabeled": t(unlabeled), "val": t(val), "test": t(test)}
