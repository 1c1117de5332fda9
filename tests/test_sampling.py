"""Prototype-nearest negative sampling against a brute-force oracle."""
import math

import pytest
import torch
import torch.nn.functional as F

from bbam.sampling import NegativeSampler, negative_sample_counts


def _oracle(features, prototypes, targets, eta):
    """Full N x K cosine matrix (float64), per-label sort of the negatives."""
    sims = F.normalize(features.double(), dim=1) @ F.normalize(prototypes.double(), dim=1).T
    N, K = targets.shape
    out = targets == 1
    for k in range(K):
        neg = (targets[:, k] == 0).nonzero().flatten()
        n_pos = int((targets[:, k] == 1).sum())
        m = len(neg) if n_pos == 0 else min(math.floor(eta * n_pos), len(neg))
        order = torch.argsort(sims[neg, k], descending=True)
        out[neg[order[:m]], k] = True
    return out


def _data(N, D, K, seed, p_pos=0.1, p_unknown=0.2, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(N, D, generator=gen, dtype=dtype)
    u = torch.rand(N, K, generator=gen)
    rates = torch.rand(K, generator=gen) * p_pos * 2
    targets = torch.where(u < rates, 1, 0).to(torch.int8)
    targets[torch.rand(N, K, generator=gen) < p_unknown] = -1
    prototypes = torch.randn(K, D, generator=gen, dtype=dtype)
    return features, prototypes, targets


@pytest.mark.parametrize("N,D,K", [(1, 3, 2), (5, 2, 7), (64, 8, 5), (300, 16, 12), (1000, 4, 30)])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0, 2.5, 5.0, 1000.0])
def test_exact_matches_oracle(N, D, K, eta):
    features, prototypes, targets = _data(N, D, K, seed=N * 31 + K)
    mask = NegativeSampler(eta=eta, backend="exact", chunk_size=97).select(features, prototypes, targets)
    assert mask.dtype == torch.bool and mask.shape == (N, K)
    assert torch.equal(mask, _oracle(features, prototypes, targets, eta))


def test_counts_cover_all_regimes():
    features, prototypes, targets = _data(400, 8, 10, seed=5)
    targets[:, 0] = torch.where(torch.arange(400) < 50, 1, 0).to(torch.int8)   # 50 pos, 350 neg
    targets[:, 1] = torch.where(torch.arange(400) < 3, 1, 0).to(torch.int8)    # 3 pos: m = 15 < 397
    targets[:, 2] = torch.where(torch.arange(400) < 20, 0, -1).to(torch.int8)  # no positive
    targets[:, 3] = -1                                                         # all unknown
    n_pos, n_neg, m = negative_sample_counts(targets, 5.0)
    assert (m[0], m[1], m[2], m[3]) == (250, 15, 20, 0)
    mask = NegativeSampler(eta=5.0).select(features, prototypes, targets)
    assert torch.equal(mask, _oracle(features, prototypes, targets, 5.0))
    selected_neg = (mask & (targets == 0)).sum(0)
    assert torch.equal(selected_neg, m)
    assert torch.equal(mask & (targets == 1), targets == 1)   # every positive
    assert not (mask & (targets == -1)).any()                 # never an unknown
    assert mask[:20, 2].all() and not mask[20:, 2].any()      # no positive: all negatives kept
    assert not mask[:, 3].any()                               # all unknown: nothing


def test_keep_all_when_m_equals_n_neg():
    features, prototypes, targets = _data(200, 6, 4, seed=9, p_pos=0.4, p_unknown=0.0)
    _, n_neg, m = negative_sample_counts(targets, 100.0)
    assert torch.equal(m, n_neg)
    mask = NegativeSampler(eta=100.0).select(features, prototypes, targets)
    assert torch.equal(mask, targets >= 0)
    # eta = inf keeps everything too
    assert torch.equal(NegativeSampler(eta=float("inf")).select(features, prototypes, targets), targets >= 0)


def test_eta_zero_only_positives():
    features, prototypes, targets = _data(150, 5, 6, seed=2)
    targets[torch.arange(5), torch.arange(5)] = 1  # labels 0..4 have a positive
    targets[:, 5] = torch.where(targets[:, 5] == 1, 0, targets[:, 5])  # label 5 has no positive
    mask = NegativeSampler(eta=0.0).select(features, prototypes, targets)
    assert torch.equal(mask[:, :5], targets[:, :5] == 1)
    assert torch.equal(mask[:, 5], targets[:, 5] == 0)


def test_n_smaller_than_eta_times_positives():
    # N < m_k requested: m_k is clamped to n_neg_k
    features = torch.randn(3, 4, dtype=torch.float64)
    prototypes = torch.randn(2, 4, dtype=torch.float64)
    targets = torch.tensor([[1, 1], [0, 0], [0, -1]], dtype=torch.int8)
    mask = NegativeSampler(eta=5.0).select(features, prototypes, targets)
    assert torch.equal(mask, targets >= 0)
    mask = NegativeSampler(eta=1.0).select(features, prototypes, targets)
    assert torch.equal(mask, _oracle(features, prototypes, targets, 1.0))
    assert int((mask[:, 0] & (targets[:, 0] == 0)).sum()) == 1


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 333, 65536])
def test_chunk_size_invariance(chunk_size):
    features, prototypes, targets = _data(333, 12, 9, seed=13, dtype=torch.float32)
    ref = NegativeSampler(eta=3.0, chunk_size=1 << 20).select(features, prototypes, targets)
    mask = NegativeSampler(eta=3.0, chunk_size=chunk_size).select(features, prototypes, targets)
    assert torch.equal(mask, ref)


def test_label_groups_small_budget():
    # chunk_size * K smaller than the buffers: labels are searched in several groups
    features, prototypes, targets = _data(500, 8, 16, seed=17, p_pos=0.08)
    mask = NegativeSampler(eta=2.0, chunk_size=3).select(features, prototypes, targets)
    assert torch.equal(mask, _oracle(features, prototypes, targets, 2.0))


def test_float32_selection_is_nearest():
    features, prototypes, targets = _data(800, 32, 10, seed=21, dtype=torch.float32)
    mask = NegativeSampler(eta=2.0, chunk_size=128).select(features, prototypes, targets)
    sims = F.normalize(features.double(), dim=1) @ F.normalize(prototypes.double(), dim=1).T
    _, _, m = negative_sample_counts(targets, 2.0)
    for k in range(10):
        neg = targets[:, k] == 0
        sel, unsel = sims[mask[:, k] & neg, k], sims[~mask[:, k] & neg, k]
        assert sel.numel() == int(m[k])
        if sel.numel() and unsel.numel():
            assert sel.min() >= unsel.max() - 1e-6


def test_ties_exact_count_and_order():
    # axis-aligned features: cosines are exact prototype components, so many exact ties
    gen = torch.Generator().manual_seed(4)
    N, D, K = 300, 5, 6
    axis = torch.randint(0, D, (N,), generator=gen)
    features = F.one_hot(axis, D).float() * (1 + torch.rand(N, 1, generator=gen))
    prototypes = torch.randn(K, D, generator=gen)
    targets = (torch.rand(N, K, generator=gen) < 0.05).to(torch.int8)
    targets[torch.rand(N, K, generator=gen) < 0.1] = -1
    sims = F.normalize(prototypes, dim=1)[:, axis].T  # [N, K], exact
    for chunk in (1, 16, 1000):
        mask = NegativeSampler(eta=3.0, chunk_size=chunk).select(features, prototypes, targets)
        _, _, m = negative_sample_counts(targets, 3.0)
        assert torch.equal(mask & (targets == 1), targets == 1)
        for k in range(K):
            neg = targets[:, k] == 0
            sel, unsel = sims[mask[:, k] & neg, k], sims[~mask[:, k] & neg, k]
            assert sel.numel() == int(m[k])
            if sel.numel() and unsel.numel():
                assert sel.min() >= unsel.max()


def test_prototypes_of_labels_without_search_are_not_read():
    features, prototypes, targets = _data(100, 4, 3, seed=1)
    targets[:, 1] = torch.where(targets[:, 1] == 1, 0, targets[:, 1])  # no positive
    prototypes[1] = float("nan")
    mask = NegativeSampler(eta=2.0).select(features, prototypes, targets)
    assert torch.equal(mask[:, 1], targets[:, 1] == 0)
    prototypes[0] = float("nan")
    with pytest.raises(ValueError, match="prototypes"):
        NegativeSampler(eta=2.0).select(features, prototypes, targets)


def test_zero_norm_features_and_empty():
    features, prototypes, targets = _data(50, 4, 3, seed=8)
    features[:10] = 0
    targets[:3] = 1
    mask = NegativeSampler(eta=1.0).select(features, prototypes, targets)  # zero features: cosine 0
    sims = F.normalize(features, dim=1) @ F.normalize(prototypes, dim=1).T
    assert torch.equal((mask & (targets == 0)).sum(0), negative_sample_counts(targets, 1.0)[2])
    for k in range(3):
        neg = targets[:, k] == 0
        sel, unsel = sims[mask[:, k] & neg, k], sims[~mask[:, k] & neg, k]
        assert sel.min() >= unsel.max()
    empty = NegativeSampler().select(torch.zeros(0, 4), torch.randn(3, 4), torch.zeros(0, 3, dtype=torch.int8))
    assert empty.shape == (0, 3) and empty.dtype == torch.bool


def test_inputs_not_mutated():
    features, prototypes, targets = _data(120, 6, 5, seed=3, dtype=torch.float32)
    f0, p0, t0 = features.clone(), prototypes.clone(), targets.clone()
    NegativeSampler(eta=1.5, chunk_size=10).select(features, prototypes, targets)
    assert torch.equal(features, f0) and torch.equal(prototypes, p0) and torch.equal(targets, t0)


def test_backends():
    assert NegativeSampler().resolved_backend == "exact"
    assert NegativeSampler(backend="exact").resolved_backend == "exact"
    features, prototypes, targets = _data(200, 4, 3, seed=6)
    targets[:5, 0] = 1
    targets[5:, 0] = 0  # label 0 needs a search
    with pytest.raises(NotImplementedError, match="issue 5"):
        NegativeSampler(backend="faiss").select(features, prototypes, targets)


def test_errors():
    features, prototypes, targets = _data(20, 4, 3, seed=0)
    s = NegativeSampler()
    with pytest.raises(ValueError, match="int8"):
        s.select(features, prototypes, targets.to(torch.int64))
    with pytest.raises(ValueError, match="int8"):
        s.select(features, prototypes, targets.float())
    with pytest.raises(ValueError, match="targets"):
        s.select(features, prototypes, targets[:10])
    with pytest.raises(ValueError, match="targets"):
        s.select(features, prototypes, targets[:, :2])
    with pytest.raises(ValueError, match="targets"):
        s.select(features, prototypes, targets[:, 0])
    with pytest.raises(ValueError, match="targets"):
        bad = targets.clone()
        bad[0, 0] = 3
        s.select(features, prototypes, bad)
    with pytest.raises(ValueError, match="agree on D"):
        s.select(features, prototypes[:, :3], targets)
    with pytest.raises(ValueError, match="features"):
        s.select(features[0], prototypes, targets)
    with pytest.raises(ValueError, match="features"):
        s.select(features.long(), prototypes, targets)
    with pytest.raises(ValueError, match="finite"):
        f = features.clone()
        f[0, 0] = float("inf")
        s.select(f, prototypes, targets)
    with pytest.raises(ValueError, match="eta"):
        NegativeSampler(eta=-1.0)
    with pytest.raises(ValueError, match="eta"):
        NegativeSampler(eta=float("nan"))
    with pytest.raises(ValueError, match="backend"):
        NegativeSampler(backend="annoy")
    with pytest.raises(ValueError, match="index"):
        NegativeSampler(index="hnsw")
    with pytest.raises(ValueError, match="nprobe"):
        NegativeSampler(nprobe=0)
    with pytest.raises(ValueError, match="nlist"):
        NegativeSampler(nlist=0)
    with pytest.raises(ValueError, match="chunk_size"):
        NegativeSampler(chunk_size=0)
