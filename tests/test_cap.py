"""CAP pseudo-labels: thresholds and confidence masks against a per-label Python loop."""
import math

import numpy as np
import pytest
import torch

import bbam.cap
from bbam.cap import (CAPLabeler, NEG_PER_MAX, cap_pseudo_labels, cap_pseudo_targets, cap_thresholds,
                      estimate_positive_rates)


@pytest.fixture(autouse=True, params=["cpu-kernel", "torch"])
def selection_path(request, monkeypatch):
    """Every test runs on both ways of selecting: the fused CPU op and the torch path
    (which serves CUDA)."""
    if request.param == "torch":
        monkeypatch.setattr(bbam.cap, "_use_cpu_kernel", lambda scores: False)
    return request.param


def _ceil(x, n):
    """ceil with the documented snap of near-integers, clamped into [0, n]."""
    r = round(x)
    c = r if abs(x - r) <= 1e-9 * max(1.0, abs(x)) else math.ceil(x)
    return int(min(max(c, 0), n))


def _oracle(scores, pis, pos_per=1.0, neg_per=NEG_PER_MAX):
    """Straightforward per-label loop: (thresholds, targets, mask) as numpy."""
    s = scores.numpy().astype(np.float64)
    N, K = s.shape
    neg_per = min(neg_per, NEG_PER_MAX)
    thr = np.full(K, np.inf)
    targets = np.zeros((N, K), dtype=np.int8)
    mask = np.zeros((N, K), dtype=bool)
    for k in range(K):
        pi = float(pis[k])
        order = np.argsort(-s[:, k], kind="stable")  # stable descending: lower index first among ties
        r = _ceil(pi * N, N)
        if r > 0:
            thr[k] = s[order[r - 1], k]
        n_top = _ceil(pos_per * pi * N, N)
        n_bottom = _ceil(neg_per * (1.0 - pi) * N, N)
        for pos, i in enumerate(order):
            is_pos = r > 0 and s[i, k] >= thr[k]
            targets[i, k] = 1 if is_pos else 0
            mask[i, k] = (pos < n_top) if is_pos else (pos >= N - n_bottom)
    return thr, targets, mask


def _random_rates(K, gen):
    pis = torch.rand(K, generator=gen, dtype=torch.float64) * 0.6
    pis[0] = 0.0
    if K > 1:
        pis[1] = 1.0
    if K > 2:
        pis[2] = 0.3  # an exact-ish fraction
    return pis


@pytest.mark.parametrize("N,K", [(1, 1), (7, 3), (10, 5), (53, 8), (200, 20)])
@pytest.mark.parametrize("discrete", [False, True])
def test_thresholds_targets_mask_match_loop(N, K, discrete):
    gen = torch.Generator().manual_seed(N * 100 + K)
    scores = torch.rand(N, K, generator=gen)
    if discrete:  # many ties: the stable order must decide
        scores = torch.round(scores * 4) / 4
    pis = _random_rates(K, gen)
    thr_ref, t_ref, m_ref = _oracle(scores, pis)
    thr = cap_thresholds(scores, pis)
    assert thr.dtype == scores.dtype and thr.shape == (K,)
    np.testing.assert_array_equal(thr.double().numpy(), thr_ref)
    targets, mask = cap_pseudo_labels(scores, pis)
    assert targets.dtype == torch.int8 and mask.dtype == torch.bool
    assert targets.shape == mask.shape == (N, K)
    np.testing.assert_array_equal(targets.numpy(), t_ref)
    np.testing.assert_array_equal(mask.numpy(), m_ref)
    # the targets self-training learns from: -1 outside the mask
    np.testing.assert_array_equal(cap_pseudo_targets(scores, pis).numpy(), np.where(m_ref, t_ref, -1))


@pytest.mark.parametrize("pos_per,neg_per", [(1.0, 1.0), (0.5, 0.5), (0.9, 0.7), (0.1, 0.998), (0.33, 0.01)])
def test_pos_per_neg_per_match_loop(pos_per, neg_per):
    gen = torch.Generator().manual_seed(7)
    scores = torch.rand(97, 12, generator=gen, dtype=torch.float64)
    pis = _random_rates(12, gen)
    _, t_ref, m_ref = _oracle(scores, pis, pos_per, neg_per)
    targets, mask = cap_pseudo_labels(scores, pis, pos_per=pos_per, neg_per=neg_per)
    np.testing.assert_array_equal(targets.numpy(), t_ref)
    np.testing.assert_array_equal(mask.numpy(), m_ref)
    labeler = CAPLabeler(pos_per, neg_per)
    labeler.pos_rates = pis
    np.testing.assert_array_equal(labeler.pseudo_targets(scores).numpy(), np.where(m_ref, t_ref, -1))


def test_large_label_major_scores_match_loop():
    """Beyond 8192 rows the CPU op first bounds each label's candidates from a sample;
    label-major scores (the engine's layout) are read in place."""
    gen = torch.Generator().manual_seed(9)
    scores = (torch.round(torch.rand(6, 9000, generator=gen) * 300) / 300).T   # ties, label-major
    pis = torch.tensor([0.0, 0.01, 0.05, 0.2, 0.5, 1.0], dtype=torch.float64)
    thr_ref, t_ref, m_ref = _oracle(scores, pis, 0.8, 0.9)
    targets, mask = cap_pseudo_labels(scores, pis, 0.8, 0.9)
    np.testing.assert_array_equal(targets.numpy(), t_ref)
    np.testing.assert_array_equal(mask.numpy(), m_ref)
    np.testing.assert_array_equal(cap_thresholds(scores, pis).double().numpy(), thr_ref)


def test_pos_per_neg_per_counts():
    N = 1000
    scores = torch.rand(N, 3, dtype=torch.float64)
    pis = torch.tensor([0.1, 0.25, 0.5], dtype=torch.float64)
    targets, mask = cap_pseudo_labels(scores, pis, pos_per=0.5, neg_per=0.5)
    assert targets.sum(0).tolist() == [100, 250, 500]
    assert (mask & (targets == 1)).sum(0).tolist() == [50, 125, 250]
    assert (mask & (targets == 0)).sum(0).tolist() == [450, 375, 250]
    # kept positives are the highest scores, kept negatives the lowest
    for k in range(3):
        s = scores[:, k]
        kept_pos, other_pos = s[mask[:, k] & (targets[:, k] == 1)], s[~mask[:, k] & (targets[:, k] == 1)]
        kept_neg, other_neg = s[mask[:, k] & (targets[:, k] == 0)], s[~mask[:, k] & (targets[:, k] == 0)]
        assert kept_pos.min() > other_pos.max() and kept_neg.max() < other_neg.min()
    # defaults: every positive kept, neg_per clipped to 0.998 (1.0 behaves as 0.998)
    t1, m1 = cap_pseudo_labels(scores, pis)
    t2, m2 = cap_pseudo_labels(scores, pis, neg_per=1.0)
    assert torch.equal(t1, t2) and torch.equal(m1, m2)
    assert torch.equal(m1 & (t1 == 1), t1 == 1)
    assert (m1 & (t1 == 0)).sum(0).tolist() == [math.ceil(0.998 * 900), math.ceil(0.998 * 750), 499]


def test_rate_zero_and_one():
    scores = torch.rand(20, 2)
    pis = torch.tensor([0.0, 1.0], dtype=torch.float64)
    thr = cap_thresholds(scores, pis)
    assert thr[0] == float("inf") and thr[1] == scores[:, 1].min()
    targets, mask = cap_pseudo_labels(scores, pis)
    assert targets[:, 0].sum() == 0 and targets[:, 1].sum() == 20
    assert mask[:, 1].all()                      # all positives kept
    assert mask[:, 0].sum() == math.ceil(0.998 * 20)


def test_rank_snapping_and_clamp():
    scores = torch.arange(100, 0, -1, dtype=torch.float64).unsqueeze(1) / 100  # descending 1.00 .. 0.01
    # 0.07 * 100 == 7.000000000000001 in float64: the rank is 7, not 8
    thr = cap_thresholds(scores, torch.tensor([0.07], dtype=torch.float64))
    assert thr.item() == scores[6, 0].item()
    # 0.29 * 100 == 28.999999999999996: rank 29
    thr = cap_thresholds(scores, torch.tensor([0.29], dtype=torch.float64))
    assert thr.item() == scores[28, 0].item()
    # tiny positive rate: rank 1 (ceil), not 0
    thr = cap_thresholds(scores, torch.tensor([1e-6], dtype=torch.float64))
    assert thr.item() == 1.0


def test_ties_at_threshold_are_positive_and_mask_by_stable_rank():
    scores = torch.tensor([[0.9], [0.5], [0.5], [0.5], [0.1]])
    pi = torch.tensor([0.4], dtype=torch.float64)
    targets, mask = cap_pseudo_labels(scores, pi, pos_per=1.0)  # rank ceil(0.4 * 5) = 2
    assert cap_thresholds(scores, pi).item() == 0.5
    assert targets[:, 0].tolist() == [1, 1, 1, 1, 0]
    # top 2 positions (stable): rows 0, 1; the tied rows 2, 3 are positive but not confident
    assert mask[:, 0].tolist() == [True, True, False, False, True]


def test_empty_unlabeled_set_pseudo_targets():
    t = cap_pseudo_targets(torch.empty(0, 3), torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64))
    assert t.shape == (0, 3) and t.dtype == torch.int8


def test_empty_unlabeled_set():
    scores = torch.zeros(0, 3)
    pis = torch.tensor([0.0, 0.5, 1.0])
    assert torch.isinf(cap_thresholds(scores, pis)).all()
    t, m = cap_pseudo_labels(scores, pis)
    assert t.shape == m.shape == (0, 3) and t.dtype == torch.int8 and m.dtype == torch.bool


def test_estimate_positive_rates_with_unknowns():
    t = torch.tensor([[1, 0, -1, -1],
                      [0, 0, 1, -1],
                      [-1, 1, 1, -1],
                      [1, 0, 0, -1]], dtype=torch.int8)
    t0 = t.clone()
    pis = estimate_positive_rates(t)
    assert pis.dtype == torch.float64
    torch.testing.assert_close(pis, torch.tensor([2 / 3, 1 / 4, 2 / 3, 0.0], dtype=torch.float64))
    assert torch.equal(t, t0)  # not mutated
    # random: against numpy
    gen = torch.Generator().manual_seed(3)
    t = torch.randint(-1, 2, (500, 30), generator=gen, dtype=torch.int8)
    a = t.numpy()
    ref = np.array([(a[:, k] == 1).sum() / max((a[:, k] >= 0).sum(), 1) for k in range(30)])
    np.testing.assert_allclose(estimate_positive_rates(t).numpy(), ref, rtol=0, atol=1e-15)


def test_labeler_end_to_end():
    gen = torch.Generator().manual_seed(11)
    labeled = torch.randint(-1, 2, (300, 6), generator=gen, dtype=torch.int8)
    scores = torch.rand(120, 6, generator=gen)
    lab = CAPLabeler(pos_per=0.8, neg_per=0.9).fit(labeled)
    assert lab.pos_rates.shape == (6,) and lab.pos_rates.dtype == torch.float64
    t, m = lab(scores)
    t_ref, m_ref = cap_pseudo_labels(scores, estimate_positive_rates(labeled), 0.8, 0.9)
    assert torch.equal(t, t_ref) and torch.equal(m, m_ref)
    assert torch.equal(lab.thresholds(scores), cap_thresholds(scores, lab.pos_rates))
    assert "pos_per=0.8" in repr(lab)
    assert CAPLabeler(neg_per=1.0).neg_per == NEG_PER_MAX


def test_errors():
    scores = torch.rand(10, 3)
    pis = torch.tensor([0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="pos_per"):
        cap_pseudo_labels(scores, pis, pos_per=0.0)
    with pytest.raises(ValueError, match="pos_per"):
        cap_pseudo_labels(scores, pis, pos_per=1.5)
    with pytest.raises(ValueError, match="neg_per"):
        cap_pseudo_labels(scores, pis, neg_per=0.0)
    with pytest.raises(ValueError, match="neg_per"):
        CAPLabeler(neg_per=2.0)
    with pytest.raises(ValueError, match="pos_rates"):
        cap_thresholds(scores, torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="pos_rates"):
        cap_pseudo_labels(scores, torch.tensor([0.1, 1.2, 0.3]))
    with pytest.raises(ValueError, match="scores"):
        cap_thresholds(torch.rand(10), torch.tensor([0.1]))
    with pytest.raises(ValueError, match="scores"):
        cap_thresholds(torch.ones(4, 3, dtype=torch.int64), pis)
    with pytest.raises(ValueError, match="NaN"):
        cap_pseudo_labels(torch.tensor([[float("nan"), 0.1, 0.2]]), pis)
    with pytest.raises(ValueError, match="targets"):
        estimate_positive_rates(torch.rand(4, 3))
    with pytest.raises(ValueError, match="targets"):
        estimate_positive_rates(torch.tensor([[2, 0]], dtype=torch.int8))
    with pytest.raises(ValueError, match="targets"):
        estimate_positive_rates(torch.tensor([1, 0], dtype=torch.int8))
    with pytest.raises(RuntimeError, match="fit"):
        CAPLabeler()(scores)


@pytest.mark.parametrize("block_elements", [1, 64, 500])
def test_label_blocks_and_selection_paths_give_the_same_result(block_elements, monkeypatch):
    """Tiny label blocks (one label, a few) and deep labels (the sort path of the selection)."""
    import bbam.cap as cap

    monkeypatch.setattr(cap, "_BLOCK_ELEMENTS", block_elements)
    gen = torch.Generator().manual_seed(block_elements)
    scores = torch.round(torch.rand(97, 12, generator=gen) * 6) / 6   # many ties
    pis = _random_rates(12, gen)
    pis[3:6] = torch.tensor([0.7, 0.9, 0.55], dtype=torch.float64)   # depth above half the rows
    thr_ref, t_ref, m_ref = _oracle(scores, pis, 0.6, 0.4)
    np.testing.assert_array_equal(cap_thresholds(scores, pis).double().numpy(), thr_ref)
    targets, mask = cap_pseudo_labels(scores, pis, 0.6, 0.4)
    np.testing.assert_array_equal(targets.numpy(), t_ref)
    np.testing.assert_array_equal(mask.numpy(), m_ref)
