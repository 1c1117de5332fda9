"""Label spreading (bbam.graph) against a dense solution, and its graph."""
from __future__ import annotations

import numpy as np
import pytest

from bbam.graph import knn_graph, label_spreading, spread_scores


def _dense_spreading(W, Y, alpha):
    W = W.toarray().astype(np.float64)
    d = W.sum(1)
    inv = np.where(d > 0, 1 / np.sqrt(np.where(d > 0, d, 1)), 0)
    S = inv[:, None] * W * inv[None, :]
    return (1 - alpha) * np.linalg.solve(np.eye(len(W)) - alpha * S, Y)


def _clusters(n=120, d=6, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(3, d)) * 4
    which = rng.integers(0, 3, n)
    return centers[which] + rng.normal(size=(n, d)), which


def test_knn_graph_is_symmetric_nonnegative_without_self_loops_and_exact():
    x, _ = _clusters()
    W = knn_graph(x, k=5, gamma=3.0)
    assert (abs(W - W.T) > 1e-7).nnz == 0 and W.min() >= 0 and W.diagonal().max() == 0
    # each row's k neighbours by cosine, found by brute force
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = u @ u.T
    np.fill_diagonal(sims, -np.inf)
    top = np.argsort(-sims, axis=1)[:, :5]
    A = np.zeros_like(sims)
    for i, cols in enumerate(top):
        A[i, cols] = np.clip(sims[i, cols], 0, None) ** 3
    np.testing.assert_allclose(W.toarray(), A + A.T, rtol=1e-5, atol=1e-6)
    # the IVF index (large sets) probes a fraction of its cells: most edges, with the exact weights
    # (here 87 % of them; fewer than all, so the search was approximate)
    x, _ = _clusters(n=4000, d=8, seed=2)
    exact, ivf = knn_graph(x, k=5), knn_graph(x, k=5, exact_below=10, nlist=100, nprobe=1)
    assert 0.8 * exact.nnz <= ivf.multiply(exact > 0).nnz < exact.nnz
    found = ivf.tocoo()
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    w = np.clip((u[found.row] * u[found.col]).sum(1), 0, None) ** 3
    once, twice = np.isclose(found.data, w, rtol=1e-5), np.isclose(found.data, 2 * w, rtol=1e-5)
    assert (once | twice).all()  # an edge found from one end, or from both


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.99])
def test_spreading_matches_the_dense_solution(alpha):
    x, _ = _clusters(n=80)
    W = knn_graph(x, k=6)
    Y = (np.random.default_rng(1).random((80, 4)) < 0.1).astype(float)
    Y[:, 3] = 0  # a label with no seed spreads nothing
    F = label_spreading(W, Y, alpha=alpha, tol=1e-12, max_iter=2000)
    np.testing.assert_allclose(F, _dense_spreading(W, Y, alpha), rtol=1e-7, atol=1e-10)
    assert np.all(F[:, 3] == 0)


def test_an_isolated_row_and_bad_arguments():
    x, _ = _clusters(n=30)
    W = knn_graph(x, k=3).tolil()
    W[0, :] = 0
    W[:, 0] = 0
    W = W.tocsr()
    Y = np.zeros((30, 1))
    Y[0, 0], Y[5, 0] = 1, 1
    F = label_spreading(W, Y, alpha=0.9, tol=1e-12, max_iter=1000)
    np.testing.assert_allclose(F, _dense_spreading(W, Y, 0.9), rtol=1e-7, atol=1e-10)
    assert F[0, 0] == pytest.approx(0.1)  # (1 - alpha) times its own seed: nothing reaches it
    with pytest.warns(RuntimeWarning, match="did not reach tol"):
        label_spreading(W, Y, alpha=0.99, tol=1e-14, max_iter=2)
    with pytest.raises(ValueError, match="'alpha' must be in"):
        label_spreading(W, Y, alpha=1.0)
    with pytest.raises(ValueError, match="'k' must be in"):
        knn_graph(x, k=30)
    with pytest.raises(ValueError, match="must be finite"):
        knn_graph(np.full((4, 2), np.nan), k=1)


def test_spread_scores_recover_clustered_labels_from_few_seeds():
    x, which = _clusters(n=300, seed=3)
    targets = np.stack([which == c for c in range(3)], 1).astype(np.int8)
    labeled = np.zeros(300, dtype=bool)
    labeled[np.random.default_rng(0).choice(300, 15, replace=False)] = True
    W = knn_graph(x, k=10)
    score, certainty = spread_scores(W, targets, labeled, alpha=0.99)
    assert score.shape == certainty.shape == (300, 3) and ((0 <= score) & (score <= 1)).all()
    assert ((score > 0.5) == (targets == 1))[~labeled].mean() > 0.95
    np.testing.assert_allclose(certainty, np.abs(2 * score - 1))
    # the labeled rows' targets are all it reads
    scrambled = targets.copy()
    scrambled[~labeled] = 1 - scrambled[~labeled]
    np.testing.assert_array_equal(spread_scores(W, scrambled, labeled)[0], score)
