"""Prototype-nearest negative sampling against a brute-force oracle."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import bbam.sampling as sampling
import bbam.sampling_faiss as sampling_faiss
from bbam.sampling import NegativeSampler, negative_sample_counts

faiss = sampling_faiss._import_faiss()
needs_faiss = pytest.mark.skipif(faiss is None, reason="faiss is not installed")
# every backend/index that must agree exactly with the oracle on tie-free data
EXACT_BACKENDS = ["exact"] + (["faiss"] if faiss is not None else [])
# every configuration, IVF included (exact on these small sets: all cells probed)
CONFIGS = [dict(backend="exact")] + ([dict(backend="faiss", index="flat"), dict(backend="faiss", index="ivf")]
                                      if faiss is not None else [])
CONFIG_IDS = ["-".join(c.values()) for c in CONFIGS]


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


@pytest.mark.parametrize("cfg", CONFIGS, ids=CONFIG_IDS)
def test_counts_cover_all_regimes(cfg):
    features, prototypes, targets = _data(400, 8, 10, seed=5)
    targets[:, 0] = torch.where(torch.arange(400) < 50, 1, 0).to(torch.int8)   # 50 pos, 350 neg
    targets[:, 1] = torch.where(torch.arange(400) < 3, 1, 0).to(torch.int8)    # 3 pos: m = 15 < 397
    targets[:, 2] = torch.where(torch.arange(400) < 20, 0, -1).to(torch.int8)  # no positive
    targets[:, 3] = -1                                                         # all unknown
    n_pos, n_neg, m = negative_sample_counts(targets, 5.0)
    assert (m[0], m[1], m[2], m[3]) == (250, 15, 20, 0)
    mask = NegativeSampler(eta=5.0, **cfg).select(features, prototypes, targets)
    assert torch.equal(mask, _oracle(features, prototypes, targets, 5.0))
    selected_neg = (mask & (targets == 0)).sum(0)
    assert torch.equal(selected_neg, m)
    assert torch.equal(mask & (targets == 1), targets == 1)   # every positive
    assert not (mask & (targets == -1)).any()                 # never an unknown
    assert mask[:20, 2].all() and not mask[20:, 2].any()      # no positive: all negatives kept
    assert not mask[:, 3].any()                               # all unknown: nothing


@pytest.mark.parametrize("cfg", CONFIGS, ids=CONFIG_IDS)
def test_keep_all_when_m_equals_n_neg(cfg):
    features, prototypes, targets = _data(200, 6, 4, seed=9, p_pos=0.4, p_unknown=0.0)
    _, n_neg, m = negative_sample_counts(targets, 100.0)
    assert torch.equal(m, n_neg)
    mask = NegativeSampler(eta=100.0, **cfg).select(features, prototypes, targets)
    assert torch.equal(mask, targets >= 0)
    # eta = inf keeps everything too
    assert torch.equal(NegativeSampler(eta=float("inf"), **cfg).select(features, prototypes, targets), targets >= 0)


@pytest.mark.parametrize("cfg", CONFIGS, ids=CONFIG_IDS)
def test_eta_zero_only_positives(cfg):
    features, prototypes, targets = _data(150, 5, 6, seed=2)
    targets[torch.arange(5), torch.arange(5)] = 1  # labels 0..4 have a positive
    targets[:, 5] = torch.where(targets[:, 5] == 1, 0, targets[:, 5])  # label 5 has no positive
    mask = NegativeSampler(eta=0.0, **cfg).select(features, prototypes, targets)
    assert torch.equal(mask[:, :5], targets[:, :5] == 1)
    assert torch.equal(mask[:, 5], targets[:, 5] == 0)


@pytest.mark.parametrize("cfg", CONFIGS, ids=CONFIG_IDS)
def test_n_smaller_than_eta_times_positives(cfg):
    # N < m_k requested: m_k is clamped to n_neg_k
    features = torch.randn(3, 4, dtype=torch.float64)
    prototypes = torch.randn(2, 4, dtype=torch.float64)
    targets = torch.tensor([[1, 1], [0, 0], [0, -1]], dtype=torch.int8)
    mask = NegativeSampler(eta=5.0, **cfg).select(features, prototypes, targets)
    assert torch.equal(mask, targets >= 0)
    mask = NegativeSampler(eta=1.0, **cfg).select(features, prototypes, targets)
    assert torch.equal(mask, _oracle(features, prototypes, targets, 1.0))
    assert int((mask[:, 0] & (targets[:, 0] == 0)).sum()) == 1


@pytest.mark.parametrize("backend", EXACT_BACKENDS)
@pytest.mark.parametrize("chunk_size", [1, 7, 64, 333, 65536])
def test_chunk_size_invariance(chunk_size, backend):
    features, prototypes, targets = _data(333, 12, 9, seed=13, dtype=torch.float32)
    ref = NegativeSampler(eta=3.0, backend="exact", chunk_size=1 << 20).select(features, prototypes, targets)
    mask = NegativeSampler(eta=3.0, backend=backend, chunk_size=chunk_size).select(features, prototypes, targets)
    assert torch.equal(mask, ref)


def test_label_groups_small_budget():
    # chunk_size * K smaller than the buffers: labels are searched in several groups
    features, prototypes, targets = _data(500, 8, 16, seed=17, p_pos=0.08)
    mask = NegativeSampler(eta=2.0, backend="exact", chunk_size=3).select(features, prototypes, targets)
    assert torch.equal(mask, _oracle(features, prototypes, targets, 2.0))


@pytest.mark.parametrize("backend", EXACT_BACKENDS)
def test_float32_selection_is_nearest(backend):
    features, prototypes, targets = _data(800, 32, 10, seed=21, dtype=torch.float32)
    mask = NegativeSampler(eta=2.0, backend=backend, chunk_size=128).select(features, prototypes, targets)
    sims = F.normalize(features.double(), dim=1) @ F.normalize(prototypes.double(), dim=1).T
    _, _, m = negative_sample_counts(targets, 2.0)
    for k in range(10):
        neg = targets[:, k] == 0
        sel, unsel = sims[mask[:, k] & neg, k], sims[~mask[:, k] & neg, k]
        assert sel.numel() == int(m[k])
        if sel.numel() and unsel.numel():
            assert sel.min() >= unsel.max() - 1e-6


@pytest.mark.parametrize("backend", EXACT_BACKENDS)
def test_ties_exact_count_and_order(backend):
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
        mask = NegativeSampler(eta=3.0, backend=backend, chunk_size=chunk).select(features, prototypes, targets)
        _, _, m = negative_sample_counts(targets, 3.0)
        assert torch.equal(mask & (targets == 1), targets == 1)
        for k in range(K):
            neg = targets[:, k] == 0
            sel, unsel = sims[mask[:, k] & neg, k], sims[~mask[:, k] & neg, k]
            assert sel.numel() == int(m[k])
            if sel.numel() and unsel.numel():
                assert sel.min() >= unsel.max()


@pytest.mark.parametrize("backend", EXACT_BACKENDS)
def test_prototypes_of_labels_without_search_are_not_read(backend):
    features, prototypes, targets = _data(100, 4, 3, seed=1)
    targets[:, 1] = torch.where(targets[:, 1] == 1, 0, targets[:, 1])  # no positive
    prototypes[1] = float("nan")
    mask = NegativeSampler(eta=2.0, backend=backend).select(features, prototypes, targets)
    assert torch.equal(mask[:, 1], targets[:, 1] == 0)
    prototypes[0] = float("nan")
    with pytest.raises(ValueError, match="prototypes"):
        NegativeSampler(eta=2.0, backend=backend).select(features, prototypes, targets)


@pytest.mark.parametrize("backend", EXACT_BACKENDS)
def test_zero_norm_features_and_empty(backend):
    features, prototypes, targets = _data(50, 4, 3, seed=8)
    features[:10] = 0
    targets[:3] = 1
    mask = NegativeSampler(eta=1.0, backend=backend).select(features, prototypes, targets)  # zero: cosine 0
    sims = F.normalize(features, dim=1) @ F.normalize(prototypes, dim=1).T
    assert torch.equal((mask & (targets == 0)).sum(0), negative_sample_counts(targets, 1.0)[2])
    for k in range(3):
        neg = targets[:, k] == 0
        sel, unsel = sims[mask[:, k] & neg, k], sims[~mask[:, k] & neg, k]
        assert sel.min() >= unsel.max()
    empty = NegativeSampler(backend=backend).select(torch.zeros(0, 4), torch.randn(3, 4),
                                                    torch.zeros(0, 3, dtype=torch.int8))
    assert empty.shape == (0, 3) and empty.dtype == torch.bool


@pytest.mark.parametrize("backend,index", [("exact", "flat")] + ([("faiss", "flat"), ("faiss", "ivf")] if faiss else []))
def test_inputs_not_mutated(backend, index):
    features, prototypes, targets = _data(120, 6, 5, seed=3, dtype=torch.float32)
    f0, p0, t0 = features.clone(), prototypes.clone(), targets.clone()
    NegativeSampler(eta=1.5, backend=backend, index=index, chunk_size=10).select(features, prototypes, targets)
    assert torch.equal(features, f0) and torch.equal(prototypes, p0) and torch.equal(targets, t0)


def test_backends(monkeypatch):
    assert NegativeSampler().resolved_backend == "exact"   # the fastest measured (bench/sampling.py)
    assert NegativeSampler(backend="exact").resolved_backend == "exact"
    assert NegativeSampler(backend="faiss").resolved_backend == "faiss"
    features, prototypes, targets = _data(200, 4, 3, seed=6)
    targets[:5, 0] = 1
    targets[5:, 0] = 0  # label 0 needs a search
    ref = _oracle(features, prototypes, targets, 5.0)
    # without faiss: auto -> exact, faiss -> a clear ImportError
    monkeypatch.setattr(sampling_faiss, "_faiss_cache", [None])
    assert NegativeSampler().resolved_backend == "exact"
    assert torch.equal(NegativeSampler().select(features, prototypes, targets), ref)
    with pytest.raises(ImportError, match="faiss"):
        NegativeSampler(backend="faiss").select(features, prototypes, targets)


@pytest.mark.parametrize("eta", [1.0, 5.0])
def test_exact_with_sampled_bands_matches_oracle(monkeypatch, eta):
    # small sample floor: N = 6000 takes the sampled-band path (band_sample_size > 0)
    monkeypatch.setattr(sampling, "_BAND_SAMPLE_MIN", 256)
    assert sampling.band_sample_size(6000) == 256 and sampling.band_sample_size(500) == 0
    features, prototypes, targets = _clustered(6000, 16, 20, seed=4)
    features = features.double()
    mask = NegativeSampler(eta=eta, backend="exact").select(features, prototypes.double(), targets)
    assert torch.equal(mask, _oracle(features, prototypes.double(), targets, eta))


def test_band_sample_size():
    assert sampling.band_sample_size(0) == 0
    assert sampling.band_sample_size(8192) == 0            # N <= 2 * 4096: every negative a candidate
    assert sampling.band_sample_size(8193) == 4096
    assert sampling.band_sample_size(1_000_000) == 31250   # N / 32
    assert sampling.band_sample_size(10**8) == 65536


DATASETS = ["bibtex", "emotions", "enron", "medical", "reuters21578", "scene", "yeast"]


@pytest.mark.parametrize("name", DATASETS)
def test_exact_on_mulan_data(shared_data_dir, monkeypatch, name):
    """Exact backend on the shared MULAN sets, bands placed from a sample: the contract,
    and every selected negative at least as similar (float64) as every unselected one."""
    path = shared_data_dir / name / f"{name}.npz"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    monkeypatch.setattr(sampling, "_BAND_SAMPLE_MIN", 256)
    data = np.load(path)
    features = torch.from_numpy(data["X"]).float()
    targets = torch.from_numpy(data["Y"]).to(torch.int8)
    prototypes = _positive_means(features, targets)
    sims = F.normalize(features.double(), dim=1) @ F.normalize(prototypes.double(), dim=1).T
    neg = targets == 0
    for eta in (1.0, 5.0):
        mask = NegativeSampler(eta=eta, backend="exact").select(features, prototypes, targets)
        _check_contract(mask, targets, eta)
        lo = torch.where(mask & neg, sims, torch.inf).amin(0)
        hi = torch.where(~mask & neg, sims, -torch.inf).amax(0)
        assert bool((lo >= hi - 1e-6).all())


# -- FAISS backend ------------------------------------------------------------------------------


class _Spy:
    """Records every FAISS search ``(labels searched, k, cells probed)`` and every dense call."""

    def __init__(self, monkeypatch):
        self.searches, self.dense = [], []
        search, dense = sampling_faiss.FaissIndex.search, sampling_faiss._select_dense

        def spy_search(index, queries, k, nprobe):
            probes = index.nprobe_for(k, nprobe) if index.nlist is not None else None
            self.searches.append((queries.shape[0], k, probes))
            return search(index, queries, k, nprobe)

        def spy_dense(features, queries, targets, labels, *args, **kwargs):
            self.dense.extend(labels.tolist())
            return dense(features, queries, targets, labels, *args, **kwargs)

        monkeypatch.setattr(sampling_faiss.FaissIndex, "search", spy_search)
        monkeypatch.setattr(sampling_faiss, "_select_dense", spy_dense)


def _recall(mask, ref, targets, eta):
    """|selected ∩ reference| / |reference| over the negatives of searched labels."""
    _, n_neg, m = negative_sample_counts(targets, eta)
    searched = (m > 0) & (m < n_neg)
    neg = (targets == 0) & searched.unsqueeze(0)
    assert int((ref & neg).sum()) > 0
    return float((mask & ref & neg).sum()) / float((ref & neg).sum())


def _check_contract(mask, targets, eta):
    """Every positive, exactly m_k negatives, never an unknown."""
    assert torch.equal(mask & (targets == 1), targets == 1)
    assert not (mask & (targets == -1)).any()
    assert torch.equal((mask & (targets == 0)).sum(0), negative_sample_counts(targets, eta)[2])


def _clustered(N, D, K, seed, n_clusters=64, sigma=0.6, p_unknown=0.1):
    """Gaussian clusters; each label lives in 1-3 clusters (plus 0.5% noise positives);
    prototypes are the positive means, as in training."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_clusters, D, generator=gen)
    cluster = torch.randint(0, n_clusters, (N,), generator=gen)
    features = centres[cluster] + sigma * torch.randn(N, D, generator=gen)
    targets = torch.zeros(N, K, dtype=torch.int8)
    for k in range(K):
        home = torch.randint(0, n_clusters, (int(torch.randint(1, 4, (1,), generator=gen)),), generator=gen)
        rate = torch.where(torch.isin(cluster, home), float(torch.rand(1, generator=gen)) * 0.5, 0.005)
        targets[:, k] = (torch.rand(N, generator=gen) < rate).to(torch.int8)
    targets[torch.rand(N, K, generator=gen) < p_unknown] = -1
    return features, _positive_means(features, targets), targets


def _positive_means(features, targets):
    pos = (targets == 1).to(features.dtype)
    return (pos.T @ features) / pos.sum(0).clamp(min=1).unsqueeze(1)


@needs_faiss
@pytest.mark.parametrize("N,D,K", [(1, 3, 2), (5, 2, 7), (64, 8, 5), (300, 16, 12), (1000, 4, 30), (4000, 8, 12)])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0, 2.5, 5.0, 1000.0])
def test_faiss_flat_matches_oracle(N, D, K, eta):
    features, prototypes, targets = _data(N, D, K, seed=N * 31 + K)
    mask = NegativeSampler(eta=eta, backend="faiss", index="flat").select(features, prototypes, targets)
    assert torch.equal(mask, _oracle(features, prototypes, targets, eta))


@needs_faiss
@pytest.mark.parametrize("eta", [0.5, 2.0, 5.0])
def test_faiss_flat_matches_exact_backend_float32(eta):
    features, prototypes, targets = _data(3000, 24, 20, seed=7, dtype=torch.float32, p_pos=0.15)
    exact = NegativeSampler(eta=eta, backend="exact").select(features, prototypes, targets)
    mask = NegativeSampler(eta=eta, backend="faiss", index="flat").select(features, prototypes, targets)
    assert torch.equal(mask, exact)


@needs_faiss
def test_faiss_routes_search_and_dense(monkeypatch):
    # k ~ m + n_pos ranges over 40..3600 at N = 4000: small k -> FAISS, k > max(1024, N/8) -> dense
    spy = _Spy(monkeypatch)
    features, prototypes, targets = _data(4000, 8, 16, seed=3, p_pos=0.1, p_unknown=0.1)
    targets[:, 0] = (torch.arange(4000) % 400 == 0).to(torch.int8)   # 10 positives
    mask = NegativeSampler(eta=5.0, backend="faiss").select(features, prototypes, targets)
    assert torch.equal(mask, _oracle(features, prototypes, targets, 5.0))
    assert spy.searches and spy.dense
    assert max(k for _, k, _ in spy.searches) <= 1024


@needs_faiss
def test_faiss_threads_and_global_state_restored():
    features, prototypes, targets = _data(1500, 8, 10, seed=4)
    threads = faiss.omp_get_max_threads()
    blas = faiss.cvar.distance_compute_blas_threshold
    ref = _oracle(features, prototypes, targets, 2.0)
    for n in (None, 1, 2):
        mask = NegativeSampler(eta=2.0, backend="faiss", faiss_threads=n).select(features, prototypes, targets)
        assert torch.equal(mask, ref)
        assert faiss.omp_get_max_threads() == threads
        assert faiss.cvar.distance_compute_blas_threshold == blas


@needs_faiss
@pytest.mark.parametrize("index", ["flat", "ivf"])
def test_faiss_widening(monkeypatch, index):
    # Label 0 (near): the 100 rows nearest its prototype are positive, the next 300 unknown.
    # Label 1 (far, eta 5 > half the negatives): the 500 rows farthest from it are unknown.
    # The first k underestimates the non-negatives ahead: both labels are searched again, wider.
    monkeypatch.setattr(sampling_faiss, "_DENSE_MIN_K", 10**9)   # no dense route: widen up to N
    spy = _Spy(monkeypatch)
    gen = torch.Generator().manual_seed(11)
    N, D = 2000, 16
    features = torch.randn(N, D, generator=gen, dtype=torch.float64)
    prototypes = torch.randn(3, D, generator=gen, dtype=torch.float64)
    order = torch.argsort(F.normalize(features, dim=1) @ F.normalize(prototypes, dim=1).T, dim=0, descending=True)
    targets = torch.zeros(N, 3, dtype=torch.int8)
    targets[order[:100, 0], 0] = 1
    targets[order[100:400, 0], 0] = -1
    targets[order[-500:, 1], 1] = -1
    targets[torch.randperm(N, generator=gen)[:250], 1] = 1
    targets[torch.randperm(N, generator=gen)[:30], 2] = 1
    _, n_neg, m = negative_sample_counts(targets, 5.0)
    assert m[0] < n_neg[0] - m[0] and m[1] > n_neg[1] - m[1]   # label 0 near, label 1 far
    mask = NegativeSampler(eta=5.0, backend="faiss", index=index).select(features, prototypes, targets)
    ref = _oracle(features, prototypes, targets, 5.0)
    _check_contract(mask, targets, 5.0)
    if index == "flat":
        assert torch.equal(mask, ref)
    else:
        assert _recall(mask, ref, targets, 5.0) >= 0.95
    ks = [k for _, k, _ in spy.searches]
    assert len(ks) >= 3 and max(ks) >= 2 * min(ks)   # rounds with a wider k
    assert not spy.dense


@needs_faiss
@pytest.mark.parametrize("index", ["flat", "ivf"])
def test_faiss_gpu_k_limit_routes_to_exact(monkeypatch, index):
    # A fake GPU: the CPU index, with FAISS's GPU limit on k (and nprobe) lowered to 32.
    monkeypatch.setattr(sampling_faiss, "_use_faiss_gpu", lambda faiss, device: True)
    monkeypatch.setattr(sampling_faiss, "_index_to_gpu", lambda faiss, index, device: (index, None))
    monkeypatch.setattr(sampling_faiss, "_GPU_MAX_K", 32)
    spy = _Spy(monkeypatch)
    features, prototypes, targets = _data(600, 8, 12, seed=5, p_pos=0.03, p_unknown=0.05)
    # label 11: 2 positives (m = 10, first k ~ 22 <= 32), its 40 nearest rows unknown: widening
    # past 32 must go to the exact route
    sims = F.normalize(features, dim=1) @ F.normalize(prototypes, dim=1).T
    targets[:, 11] = 0
    targets[torch.argsort(sims[:, 11], descending=True)[:40], 11] = -1
    targets[torch.argsort(sims[:, 11])[:2], 11] = 1
    mask = NegativeSampler(eta=5.0, backend="faiss", index=index).select(features, prototypes, targets)
    assert torch.equal(mask, _oracle(features, prototypes, targets, 5.0))
    assert spy.searches and spy.dense and 11 in spy.dense
    assert all(k <= 32 and (p is None or p <= 32) for _, k, p in spy.searches)


@needs_faiss
def test_faiss_ivf_exhausted_cells_fall_back_to_exact(monkeypatch):
    # one probed cell (~45 rows) cannot hold k >= 100 neighbours: results padded with -1
    monkeypatch.setattr(sampling_faiss, "_IVF_POOL", 1e-9)
    spy = _Spy(monkeypatch)
    features, prototypes, targets = _data(2000, 8, 6, seed=9, p_unknown=0.1)
    targets[targets >= 0] = (torch.rand(2000, 6) < 0.1).to(torch.int8)[targets >= 0]   # ~180 positives each
    mask = NegativeSampler(eta=1.0, backend="faiss", index="ivf", nprobe=1).select(features, prototypes, targets)
    assert torch.equal(mask, _oracle(features, prototypes, targets, 1.0))
    assert all(p == 1 for _, _, p in spy.searches)
    searched = {j for j in range(6)}
    assert set(spy.dense) == searched


@needs_faiss
@pytest.mark.parametrize("eta", [1.0, 5.0])
def test_faiss_ivf_recall_clustered(eta):
    features, prototypes, targets = _clustered(12000, 48, 30, seed=1)
    ref = NegativeSampler(eta=eta, backend="exact").select(features, prototypes, targets)
    mask = NegativeSampler(eta=eta, backend="faiss", index="ivf").select(features, prototypes, targets)
    _check_contract(mask, targets, eta)
    assert _recall(mask, ref, targets, eta) >= 0.95


@needs_faiss
def test_faiss_ivf_recall_isotropic():
    # no cluster structure at all: the hardest case for IVF
    gen = torch.Generator().manual_seed(3)
    features = torch.randn(12000, 32, generator=gen)
    targets = (torch.rand(12000, 20, generator=gen) < 0.02).to(torch.int8)
    prototypes = torch.randn(20, 32, generator=gen)
    ref = NegativeSampler(eta=1.0, backend="exact").select(features, prototypes, targets)
    mask = NegativeSampler(eta=1.0, backend="faiss", index="ivf").select(features, prototypes, targets)
    _check_contract(mask, targets, 1.0)
    assert _recall(mask, ref, targets, 1.0) >= 0.95


@needs_faiss
@pytest.mark.parametrize("eta", [1.0])   # the harder one for IVF (5.0 measured: recall 0.9999)
def test_faiss_mulan_bibtex(shared_data_dir, eta):
    path = shared_data_dir / "bibtex" / "bibtex.npz"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    data = np.load(path)
    features = torch.from_numpy(data["X"]).float()        # raw bag-of-words features
    targets = torch.from_numpy(data["Y"]).to(torch.int8)
    prototypes = _positive_means(features, targets)
    ref = NegativeSampler(eta=eta, backend="exact").select(features, prototypes, targets)
    flat = NegativeSampler(eta=eta, backend="faiss", index="flat", faiss_threads=1).select(features, prototypes, targets)
    ivf = NegativeSampler(eta=eta, backend="faiss", index="ivf", faiss_threads=1).select(features, prototypes, targets)
    for mask in (flat, ivf):
        _check_contract(mask, targets, eta)
    # binary features: many exact ties, so flat may pick other tied rows; never a worse one
    sims = F.normalize(features.double(), dim=1) @ F.normalize(prototypes.double(), dim=1).T
    neg = targets == 0
    lo = torch.where(flat & neg, sims, torch.inf).amin(0)
    hi = torch.where(~flat & neg, sims, -torch.inf).amax(0)
    assert bool((lo >= hi - 1e-6).all())
    assert _recall(ivf, ref, targets, eta) >= 0.95


def test_errors():
    features, prototypes, targets = _data(20, 4, 3, seed=0)
    s = NegativeSampler()
    with pytest.raises(ValueError, match="NegativeSampler.select: 'targets' must hold only -1"):
        s.select(features, prototypes, targets.to(torch.int64) * 2)
    with pytest.raises(ValueError, match="NegativeSampler.select: 'targets' must hold only -1"):
        s.select(features, prototypes, targets.float() / 2)
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
    f = features.clone()
    f[0, 0] = float("inf")
    for cfg in CONFIGS:   # eta 0.5: labels are ranked, so the features are read (and checked)
        with pytest.raises(ValueError, match="finite"):
            NegativeSampler(eta=0.5, **cfg).select(f, prototypes, targets)
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
    with pytest.raises(ValueError, match="faiss_threads"):
        NegativeSampler(faiss_threads=0)
