"""Label spreading on a k-nearest-neighbour graph of the rows' features (library layer).

Zhou et al. (NIPS 2004), solved as Iscen et al. (CVPR 2019) do, per label by conjugate
gradient:

* :func:`knn_graph`: the symmetric affinity ``W = A + A^T`` of the rows' ``k`` nearest
  neighbours by cosine similarity (the negative sampler's FAISS index on unit rows: exact
  below ``exact_below`` rows, IVF above), weights ``max(cos, 0)^gamma``, no self-loops.
* :func:`label_spreading`: ``F = (1 - alpha) (I - alpha S)^{-1} Y`` with
  ``S = D^{-1/2} W D^{-1/2}``, every column of ``Y`` solved at once by a block conjugate
  gradient (``I - alpha S`` is symmetric positive definite for ``alpha < 1``).
* :func:`spread_scores`: multi-label pseudo-label scores from the labeled rows: the
  positives and the negatives of each label are spread separately and a row's score is
  the positives' share, ``F+ / (F+ + F-)``; its certainty is ``|2 score - 1|`` (0 where
  neither reaches the row).

Numpy, SciPy sparse matrices, torch and FAISS; nothing of the application.
"""
from __future__ import annotations

import warnings
from typing import Optional, Tuple

import numpy as np
import scipy.sparse as sp
import torch

__all__ = ["knn_graph", "label_spreading", "spread_scores"]


def knn_graph(features, k: int = 50, gamma: float = 3.0, exact_below: int = 100_000,
              nlist: Optional[int] = None, nprobe: int = 8, faiss_threads: Optional[int] = 1) -> sp.csr_matrix:
    """The symmetric ``[N, N]`` kNN affinity of ``features`` ``[N, D]`` (see the module docstring).

    The search is :class:`bbam.sampling_faiss.FaissIndex`, the index of the negative
    sampler: exact (``IndexFlatIP``) below ``exact_below`` rows, else IVF with ``nlist``
    cells (default :func:`bbam.sampling_faiss.default_nlist`) and at least ``nprobe``
    probes (raised with ``k``), FAISS running ``faiss_threads`` threads.

    Args:
        features: row features ``[N, D]`` (tensor or array; rows are scaled to unit length).
        k: neighbours per row (``1 <= k < N``).
        gamma: the power of the clipped cosine similarity (Iscen et al.: 3).
    """
    import faiss

    from .sampling_faiss import FaissIndex, faiss_threads_set

    x = torch.as_tensor(np.asarray(features, dtype=np.float32))
    if x.dim() != 2 or x.shape[0] < 2:
        raise ValueError(f"knn_graph: 'features' must be [N, D] with N >= 2, got shape {tuple(x.shape)}")
    n = x.shape[0]
    if not 1 <= int(k) < n:
        raise ValueError(f"knn_graph: 'k' must be in [1, {n - 1}] for {n} rows, got {k}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("knn_graph: 'features' must be finite")
    unit = torch.nn.functional.normalize(x, dim=1)
    with faiss_threads_set(faiss, faiss_threads):
        index = FaissIndex(faiss, x, "flat" if n < exact_below else "ivf", nlist, chunk=65536)
        ids = index.search(unit, int(k) + 1, int(nprobe))  # the row itself comes back too (dropped below)
    # the cosine of each found edge in float64 (not the index's float32 scores): one batched
    # dot product of each row with its neighbours, 2^24 gathered values (a 64 MB gather and
    # its 128 MB float64 copy) per chunk, never an [N, k, D] or a float64 [N, D] temporary
    width = ids.shape[1]
    step = max(1, (1 << 24) // max(1, width * unit.shape[1]))
    sims = torch.empty(ids.shape, dtype=torch.float64)
    for i in range(0, n, step):
        neighbours = unit[ids[i:i + step].clamp(min=0)].double()            # [b, k + 1, D]
        sims[i:i + step] = torch.bmm(neighbours, unit[i:i + step, :, None].double()).squeeze(2)
    rows = torch.arange(n).repeat_interleave(width)
    cols = ids.reshape(-1)
    keep = (cols >= 0) & (cols != rows)
    rows, cols, sims = rows[keep], cols[keep], sims.reshape(-1)[keep]
    vals = sims.clamp(min=0).pow(float(gamma)).numpy()
    a = sp.csr_matrix((vals, (rows.numpy(), cols.numpy())), shape=(n, n))
    return (a + a.T).tocsr()


def label_spreading(W: sp.spmatrix, Y: np.ndarray, alpha: float = 0.99, tol: float = 1e-6,
                    max_iter: int = 500) -> np.ndarray:
    """``(1 - alpha) (I - alpha S)^{-1} Y`` ``[N, K]`` (float64) for a symmetric affinity ``W``
    ``[N, N]`` and seeds ``Y`` ``[N, K]``. Every column stops when its residual norm is at
    most ``tol`` times the largest seed column's norm: one absolute accuracy for all columns,
    so solves that are compared with each other (:func:`spread_scores`) are equally exact.
    A solve still short of it after ``max_iter`` iterations is returned with a warning."""
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
    stop = (float(tol) ** 2) * max(float(rr.max(initial=0.0)), np.finfo(np.float64).tiny)
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
    else:
        if (rr > stop).any():
            warnings.warn(f"label_spreading: {int((rr > stop).sum())} of {rr.size} columns did not reach tol={tol} "
                          f"in max_iter={max_iter} iterations", RuntimeWarning, stacklevel=2)
    return (1.0 - float(alpha)) * F


def spread_scores(W: sp.spmatrix, targets: np.ndarray, labeled: np.ndarray, alpha: float = 0.99,
                  tol: float = 1e-6, max_iter: int = 500, balance: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """Per-label scores ``[N, K]`` in [0, 1] and certainties ``[N, K]`` from the ``labeled``
    rows' {0, 1} ``targets`` (``labeled``: ``[N]`` bool; other rows' targets are not read):
    the positives and the negatives of every label spread separately, score = the
    positives' share of what reaches the row (0.5, certainty 0, where nothing does).
    ``balance``: each seed column divided by its count (a label's positives and its
    negatives carry equal mass, so 0.5 means "as close to the positives as to the
    negatives" whatever the label's frequency; each label's ranking of rows is unchanged)."""
    targets = np.asarray(targets)
    labeled = np.asarray(labeled, dtype=bool)
    if targets.ndim != 2 or labeled.shape != (targets.shape[0],):
        raise ValueError(f"spread_scores: 'targets' must be [N, K] and 'labeled' [N]; got {targets.shape} and "
                         f"{labeled.shape}")
    pos = np.where(labeled[:, None], targets == 1, False).astype(np.float64)
    neg = np.where(labeled[:, None], targets == 0, False).astype(np.float64)
    if balance:
        pos /= np.maximum(pos.sum(0), 1.0)
        neg /= np.maximum(neg.sum(0), 1.0)
    F = label_spreading(W, np.concatenate([pos, neg], 1), alpha, tol, max_iter)
    f_pos, f_neg = np.clip(F[:, :pos.shape[1]], 0, None), np.clip(F[:, pos.shape[1]:], 0, None)
    total = f_pos + f_neg
    score = np.where(total > 0, f_pos / np.where(total > 0, total, 1.0), 0.5)
    return score, np.abs(2.0 * score - 1.0)
