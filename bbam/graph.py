"""Label spreading on a k-nearest-neighbour graph of the rows' features (library layer).

Zhou et al. (NIPS 2004), solved as Iscen et al. (CVPR 2019) do, per label by conjugate
gradient:

* :func:`knn_graph`: the symmetric affinity ``W = A + A^T`` of the rows' ``k`` nearest
  neighbours by cosine similarity (FAISS inner product on unit rows; exact below
  ``exact_below`` rows, an IVF index above), weights ``max(cos, 0)^gamma``, no self-loops.
* :func:`label_spreading`: ``F = (1 - alpha) (I - alpha S)^{-1} Y`` with
  ``S = D^{-1/2} W D^{-1/2}``, every column of ``Y`` solved at once by a block conjugate
  gradient (``I - alpha S`` is symmetric positive definite for ``alpha < 1``).
* :func:`spread_scores`: multi-label pseudo-label scores from the labeled rows: the
  positives and the negatives of each label are spread separately and a row's score is
  the positives' share, ``F+ / (F+ + F-)``; its certainty is ``|2 score - 1|`` (0 where
  neither reaches the row).

Numpy, SciPy sparse matrices and FAISS; nothing of the application.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import scipy.sparse as sp

__all__ = ["knn_graph", "label_spreading", "spread_scores"]


def knn_graph(features: np.ndarray, k: int = 50, gamma: float = 3.0, exact_below: int = 100_000,
              nlist: int = 0, nprobe: int = 16, seed: int = 0) -> sp.csr_matrix:
    """The symmetric ``[N, N]`` kNN affinity of ``features`` ``[N, D]`` (see the module docstring).

    Args:
        features: row features (any real values; rows are scaled to unit length here).
        k: neighbours per row (``1 <= k < N``).
        gamma: the power of the clipped cosine similarity (Iscen et al.: 3).
        exact_below: rows below which the search is exact (``IndexFlatIP``); above it an
            ``IndexIVFFlat`` with ``nlist`` lists (0: ``4 sqrt(N)``) probing ``nprobe``.
        seed: the IVF k-means seed.
    """
    import faiss

    x = np.ascontiguousarray(np.asarray(features, dtype=np.float32))
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"knn_graph: 'features' must be [N, D] with N >= 2, got shape {x.shape}")
    n = x.shape[0]
    if not 1 <= int(k) < n:
        raise ValueError(f"knn_graph: 'k' must be in [1, {n - 1}] for {n} rows, got {k}")
    if not np.isfinite(x).all():
        raise ValueError("knn_graph: 'features' must be finite")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norms > 0, norms, 1.0)
    if n < exact_below:
        index = faiss.IndexFlatIP(x.shape[1])
    else:
        lists = int(nlist) or int(4 * np.sqrt(n))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(x.shape[1]), x.shape[1], lists, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = int(seed)
        index.train(x)
        index.nprobe = int(nprobe)
    index.add(x)
    sims, ids = index.search(x, int(k) + 1)  # the row itself comes back too (dropped below)
    rows = np.repeat(np.arange(n), ids.shape[1])
    cols, vals = ids.reshape(-1), sims.reshape(-1)
    keep = (cols >= 0) & (cols != rows)
    vals = np.clip(vals[keep], 0.0, None) ** float(gamma)
    a = sp.csr_matrix((vals, (rows[keep], cols[keep])), shape=(n, n))
    return (a + a.T).tocsr()


def label_spreading(W: sp.spmatrix, Y: np.ndarray, alpha: float = 0.99, tol: float = 1e-6,
                    max_iter: int = 500) -> np.ndarray:
    """``(1 - alpha) (I - alpha S)^{-1} Y`` ``[N, K]`` (float64) for a symmetric affinity ``W``
    ``[N, N]`` and seeds ``Y`` ``[N, K]``; each column stops when its residual norm is at
    most ``tol`` times its seed's norm (or after ``max_iter`` iterations)."""
    if not 0.0 <= float(alpha) < 1.0:
        raise ValueError(f"label_spreading: 'alpha' must be in [0, 1), got {alpha}")
    Y = np.asarray(Y, dtype=np.float64)
    if Y.ndim != 2 or W.shape != (Y.shape[0], Y.shape[0]):
        raise ValueError(f"label_spreading: 'W' must be [N, N] and 'Y' [N, K]; got {W.shape} and {Y.shape}")
    W = sp.csr_matrix(W, dtype=np.float64)
    d = np.asarray(W.sum(axis=1)).reshape(-1)
    inv_sqrt = np.where(d > 0, 1.0 / np.sqrt(np.where(d > 0, d, 1.0)), 0.0)
    S = sp.diags(inv_sqrt) @ W @ sp.diags(inv_sqrt)

    def apply(v):  # (I - alpha S) v for a block of columns
        return v - float(alpha) * (S @ v)

    # block conjugate gradient: every column is an independent CG with its own step sizes
    F = np.zeros_like(Y)
    r = Y.copy()
    p = r.copy()
    rr = (r * r).sum(0)
    stop = (float(tol) ** 2) * np.maximum(rr, np.finfo(np.float64).tiny)
    for _ in range(int(max_iter)):
        active = rr > stop
        if not active.any():
            break
        Ap = apply(p)
        pAp = (p * Ap).sum(0)
        step = np.where(active & (pAp > 0), rr / np.where(pAp > 0, pAp, 1.0), 0.0)
        F += step * p
        r -= step * Ap
        rr_new = (r * r).sum(0)
        p = r + np.where(active, rr_new / np.where(rr > 0, rr, 1.0), 0.0) * p
        rr = rr_new
    return (1.0 - float(alpha)) * F


def spread_scores(W: sp.spmatrix, targets: np.ndarray, labeled: np.ndarray, alpha: float = 0.99,
                  tol: float = 1e-6, max_iter: int = 500) -> Tuple[np.ndarray, np.ndarray]:
    """Per-label scores ``[N, K]`` in [0, 1] and certainties ``[N, K]`` from the ``labeled``
    rows' {0, 1} ``targets`` (``labeled``: ``[N]`` bool; other rows' targets are not read):
    the positives and the negatives of every label spread separately, score = the
    positives' share of what reaches the row (0.5, certainty 0, where nothing does)."""
    targets = np.asarray(targets)
    labeled = np.asarray(labeled, dtype=bool)
    if targets.ndim != 2 or labeled.shape != (targets.shape[0],):
        raise ValueError(f"spread_scores: 'targets' must be [N, K] and 'labeled' [N]; got {targets.shape} and "
                         f"{labeled.shape}")
    pos = np.where(labeled[:, None], targets == 1, False).astype(np.float64)
    neg = np.where(labeled[:, None], targets == 0, False).astype(np.float64)
    F = label_spreading(W, np.concatenate([pos, neg], 1), alpha, tol, max_iter)
    f_pos, f_neg = np.clip(F[:, :pos.shape[1]], 0, None), np.clip(F[:, pos.shape[1]:], 0, None)
    total = f_pos + f_neg
    score = np.where(total > 0, f_pos / np.where(total > 0, total, 1.0), 0.5)
    return score, np.abs(2.0 * score - 1.0)
