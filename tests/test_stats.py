"""LabelAngleStats: prototypes, EMA and coefficients against hand-computed values."""
import math

import pytest
import torch

import bbam
from bbam import LabelAngleStats, label_prototypes
from bbam.functional import balancing_coefficients


def _unit(angles):
    """2-D features at the given angles from the x axis (the prototype direction)."""
    a = torch.tensor(angles, dtype=torch.float64)
    return torch.stack([torch.cos(a), torch.sin(a)], dim=1)


def _var(xs, mu):
    return sum((x - mu) ** 2 for x in xs) / max(len(xs) - 1, 1)


def test_ema_and_coefficients_by_hand():
    proto = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    pos1, neg1 = [0.1, 0.2, 0.4], [1.0, 1.3, 1.1, 1.5]
    f1 = _unit(pos1 + neg1) * torch.tensor([[2.0]] * 7, dtype=torch.float64)  # scale must not matter
    t1 = torch.tensor([[1]] * 3 + [[0]] * 4, dtype=torch.int8)
    stats = LabelAngleStats(1, gamma=0.01)
    a0, b0 = stats.coefficients()
    assert torch.equal(a0, torch.ones(2, 1)) and torch.equal(b0, torch.zeros(2, 1))  # warm-up: identity

    stats.update(f1, t1, prototypes=proto)
    m_pos, m_neg = sum(pos1) / 3, sum(neg1) / 4
    v_pos, v_neg = _var(pos1, m_pos), _var(neg1, m_neg)
    torch.testing.assert_close(stats.mean, torch.tensor([[m_neg], [m_pos]], dtype=torch.float64))
    torch.testing.assert_close(stats.var, torch.tensor([[v_neg], [v_pos]], dtype=torch.float64))

    # second update: EMA of the mean first, variance around the updated mean, then its EMA
    pos2, neg2 = [0.3, 0.5], [0.9, 1.2, 1.6]
    f2 = _unit(pos2 + neg2 + [0.7])
    t2 = torch.tensor([[1]] * 2 + [[0]] * 3 + [[-1]], dtype=torch.int8)
    stats.update(f2, t2, prototypes=proto)
    g = 0.01
    expected = {}
    for name, cur, old_m, old_v in (("pos", pos2, m_pos, v_pos), ("neg", neg2, m_neg, v_neg)):
        mc = sum(cur) / len(cur)
        mu = (1 - g) * mc + g * old_m
        m2 = sum((x - mc) ** 2 for x in cur)
        v_cur = (m2 + len(cur) * (mc - mu) ** 2) / (len(cur) - 1)
        expected[name] = (mu, (1 - g) * v_cur + g * old_v)
    torch.testing.assert_close(stats.mean[:, 0], torch.tensor([expected["neg"][0], expected["pos"][0]], dtype=torch.float64))
    torch.testing.assert_close(stats.var[:, 0], torch.tensor([expected["neg"][1], expected["pos"][1]], dtype=torch.float64))
    assert stats.count[:, 0].tolist() == [3.0, 2.0]

    a, b = stats.coefficients(dtype=torch.float64)
    v = (expected["neg"][1] + expected["pos"][1]) / 2
    a_neg, a_pos = math.sqrt(v / expected["neg"][1]), math.sqrt(v / expected["pos"][1])
    torch.testing.assert_close(a[:, 0], torch.tensor([a_neg, a_pos], dtype=torch.float64))
    torch.testing.assert_close(b[:, 0], torch.tensor([(1 - a_neg) * expected["neg"][0], (1 - a_pos) * expected["pos"][0]],
                                                     dtype=torch.float64))


def test_degenerate_labels_get_identity_never_nan():
    K = 5
    f = torch.randn(40, 6)
    t = torch.zeros(40, K, dtype=torch.int8)
    t[:20, 0] = 1  # healthy label
    t[:1, 1] = 1  # a single positive
    t[:, 2] = -1  # all unknown
    # label 3: no positives; label 4: positives all identical features -> zero variance
    f[30:35] = f[30]
    t[30:35, 4] = 1
    stats = LabelAngleStats(K).update(f, t)
    a, b = stats.coefficients()
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    assert not torch.equal(a[:, 0], torch.ones(2))
    for k in (1, 2, 3, 4):
        assert torch.equal(a[:, k], torch.ones(2)) and torch.equal(b[:, k], torch.zeros(2)), k


def test_balancing_coefficients_zero_variance_and_nan_guard():
    count = torch.tensor([[10.0, 10.0], [10.0, 10.0]])
    mean = torch.tensor([[1.5, 1.5], [0.5, 0.5]])
    var = torch.tensor([[0.01, 0.0], [0.04, float("nan")]])
    a, b = balancing_coefficients(count, mean, var)
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    assert a[:, 1].tolist() == [1.0, 1.0]
    torch.testing.assert_close(a[:, 0], torch.tensor([math.sqrt(0.025 / 0.01), math.sqrt(0.025 / 0.04)], dtype=torch.float64))


def test_label_prototypes_chunked_equals_naive():
    f = torch.randn(1000, 7)
    t = torch.randint(-1, 2, (1000, 4), dtype=torch.int8)
    t[:, 3] = 0  # no positives: zero prototype
    protos, counts = label_prototypes(f, t, chunk_size=64)
    for k in range(3):
        torch.testing.assert_close(protos[k], f[t[:, k] == 1].mean(0), rtol=1e-5, atol=1e-6)
    assert torch.equal(protos[3], torch.zeros(7)) and counts[3] == 0
    assert counts[:3].tolist() == [(t[:, k] == 1).sum().item() for k in range(3)]


def test_state_dict_round_trip_restores_lazy_prototypes():
    stats = LabelAngleStats(3).update(torch.randn(50, 9), torch.randint(-1, 2, (50, 3), dtype=torch.int8))
    fresh = LabelAngleStats(3)
    fresh.load_state_dict(stats.state_dict())
    assert fresh.prototypes.shape == (3, 9)
    for x, y in zip(fresh.coefficients(), stats.coefficients()):
        assert torch.equal(x, y)


def test_bbam_loss_module_uses_stats():
    f = torch.randn(60, 4)
    t = torch.randint(0, 2, (60, 3), dtype=torch.int8)
    stats = LabelAngleStats(3).update(f, t)
    cos = torch.rand(8, 3) * 2 - 1
    tb = torch.randint(-1, 2, (8, 3), dtype=torch.int8)
    a, b = stats.coefficients()
    torch.testing.assert_close(bbam.BBAMLoss(stats)(cos, tb), bbam.functional.bbam_loss(cos, tb, a, b))
    # without stats: identity = BAM
    torch.testing.assert_close(bbam.BBAMLoss(margin=0.2, scale=10)(cos, tb), bbam.BAMLoss(margin=0.2, scale=10)(cos, tb))


def test_update_rejects_wrong_label_count():
    with pytest.raises(ValueError, match=r"'targets' must be \[N, 3\]"):
        LabelAngleStats(3).update(torch.randn(5, 2), torch.zeros(5, 4, dtype=torch.int8))
    with pytest.raises(ValueError, match="'num_labels' must be >= 1"):
        LabelAngleStats(0)


def test_bbam_loss_with_statistics_compiles_fullgraph():
    # coefficients() must not branch on a buffer on the host (no data-dependent guard)
    torch.manual_seed(0)
    stats = bbam.LabelAngleStats(num_labels=5)
    loss_fn = bbam.BBAMLoss(stats, margin=0.4, scale=20.0)
    cos = torch.rand(8, 5) * 2 - 1
    targets = torch.randint(-1, 2, (8, 5), dtype=torch.int8)
    compiled = torch.compile(lambda c, t: loss_fn(c, t), fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(cos, targets), loss_fn(cos, targets))  # identity before any update
    stats.update(torch.randn(40, 6), torch.randint(0, 2, (40, 5), dtype=torch.int8))
    torch.testing.assert_close(compiled(cos, targets), loss_fn(cos, targets))  # balanced after it
    a, b = bbam.LabelAngleStats(num_labels=3).coefficients()
    assert torch.equal(a, torch.ones(2, 3)) and torch.equal(b, torch.zeros(2, 3))
