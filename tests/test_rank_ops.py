"""The CPU kernels behind CAP and the ranking metrics: bbam.ops.cap_select and
bbam.ops.positive_rank_stats against bbam.reference (and CAP's torch path), opcheck,
edge cases (ties, infinities, empty ranks, the selection's fallback), thread-count
invariance and argument errors.

One sample generator per op feeds the reference check and opcheck.
"""
from __future__ import annotations

import pytest
import torch

import bbam.cap as cap
from bbam import ops
from bbam import reference as ref

from test_ops import Sample


def _counts(N, K, gen, deep=False):
    """ranks, pos_keep <= ranks, not_neg: random, with 0 and N among them."""
    hi = N if deep else max(1, N // 10)
    ranks = torch.randint(0, hi + 1, (K,), generator=gen)
    pos_keep = (ranks.double() * torch.rand(K, generator=gen, dtype=torch.float64)).floor().long()
    not_neg = torch.minimum(ranks + torch.randint(0, max(1, N // 50) + 1, (K,), generator=gen), torch.tensor(N))
    if K > 2:
        ranks[0], pos_keep[0], not_neg[0] = 0, 0, 0          # nobody positive, every negative kept
        ranks[1], pos_keep[1], not_neg[1] = N, N, N          # everybody positive and kept
    return ranks, pos_keep, not_neg


def cap_samples():
    gen = torch.Generator().manual_seed(11)
    s = torch.rand(200, 9, generator=gen)
    yield Sample("N200K9", (s, *_counts(200, 9, gen, deep=True)))
    yield Sample("N1K1", (torch.rand(1, 1, generator=gen), torch.tensor([1]), torch.tensor([1]), torch.tensor([1])))
    s = torch.round(torch.rand(300, 7, generator=gen) * 3) / 3            # heavy ties
    yield Sample("ties", (s, *_counts(300, 7, gen, deep=True)))
    s = torch.rand(120, 5, generator=gen)
    s[::7, 0], s[::5, 1], s[::3, 2] = float("inf"), float("-inf"), float("inf")
    yield Sample("infinities", (s, *_counts(120, 5, gen, deep=True)))
    s = torch.rand(40, 150, generator=gen)
    yield Sample("label-major", (s.T.contiguous().T, *_counts(40, 150, gen, deep=True)))
    # N >= 8192: the candidates come from a sampled bound
    s = torch.rand(20000, 6, generator=gen)
    yield Sample("sampled-bound", (s, *_counts(20000, 6, gen)))
    s = torch.round(torch.rand(20000, 6, generator=gen) * 50) / 50         # ties at the bound
    yield Sample("sampled-bound-ties", (s, *_counts(20000, 6, gen)))
    # the strided sample sees only the largest values: the bound is too high, every value
    # becomes a candidate (the fallback)
    N = 10000
    s = torch.rand(N, 2, generator=gen) * 0.5
    s[::N // 1024] += 1.0
    yield Sample("bound-fallback", (s, torch.tensor([3000, 1500]), torch.tensor([2000, 700]),
                                    torch.tensor([3100, 1600])))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("unknown", [False, True])
@pytest.mark.parametrize("sample", list(cap_samples()), ids=repr)
def test_cap_select_matches_reference(sample, dtype, unknown):
    s, r, p, q = sample.args
    s = s.to(dtype)
    targets, mask, thr = ops.cap_select(s, r, p, q, unknown_outside_mask=unknown)
    t_ref, m_ref, thr_ref = ref.cap_select(s, r, p, q, unknown_outside_mask=unknown)
    assert targets.dtype == torch.int8 and mask.dtype == torch.bool and thr.dtype == dtype
    assert torch.equal(targets, t_ref) and torch.equal(mask, m_ref) and torch.equal(thr, thr_ref)
    if not unknown:  # the torch path of bbam.cap gives the same labels and mask
        t_blocks, m_blocks = cap._pseudo_labels_by_blocks(s, r, p, q)
        assert torch.equal(t_blocks, targets) and torch.equal(m_blocks, mask)
        # the contract, independently of the reference: counts kept per label
        pos = targets == 1
        assert torch.equal((mask & pos).sum(0), torch.minimum(p, pos.sum(0)))


@pytest.mark.parametrize("sample", [s for s in cap_samples() if s.name in ("N200K9", "ties", "label-major")],
                         ids=repr)
@pytest.mark.parametrize("unknown", [False, True])
def test_cap_select_opcheck(sample, unknown):
    torch.library.opcheck(torch.ops.bbam.cap_select.default, sample.args + (unknown,))


def test_cap_select_any_thread_count():
    gen = torch.Generator().manual_seed(5)
    s = torch.round(torch.rand(30000, 70, generator=gen) * 200) / 200
    r, p, q = _counts(30000, 70, gen)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.cap_select(s, r, p, q)
        torch.set_num_threads(max(2, threads))
        many = ops.cap_select(s, r, p, q)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, many))


def test_cap_select_empty():
    t, m, thr = ops.cap_select(torch.empty(0, 3), torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long),
                               torch.zeros(3, dtype=torch.long))
    assert t.shape == (0, 3) and m.shape == (0, 3) and torch.isinf(thr).all()


def test_cap_select_errors():
    s = torch.rand(10, 3)
    z = torch.zeros(3, dtype=torch.long)
    with pytest.raises(RuntimeError, match="'scores' must be float32 or float64"):
        ops.cap_select(s.half(), z, z, z)
    with pytest.raises(RuntimeError, match="'ranks' must have shape"):
        ops.cap_select(s, torch.zeros(2, dtype=torch.long), z, z)
    with pytest.raises(RuntimeError, match="'pos_keep' must be int64"):
        ops.cap_select(s, z, z.int(), z)
    with pytest.raises(RuntimeError, match="'ranks' must lie in"):
        ops.cap_select(s, torch.tensor([0, 11, 0]), z, z)
    with pytest.raises(RuntimeError, match="'pos_keep' must lie in"):
        ops.cap_select(s, torch.tensor([2, 2, 2]), torch.tensor([0, 3, 0]), z)
    with pytest.raises(RuntimeError, match="'not_neg' must lie in"):
        ops.cap_select(s, z, z, torch.tensor([-1, 0, 0]))
    bad = s.clone()
    bad[4, 1] = float("nan")
    with pytest.raises(ValueError, match="'scores' must not contain NaN"):
        ops.cap_select(bad, z, z, z)


# ---------------------------------------------------------------------------
# positive_rank_stats
# ---------------------------------------------------------------------------
def rank_samples():
    gen = torch.Generator().manual_seed(13)

    def targets(L, M, p):
        return torch.rand(L, M, generator=gen) < p

    yield Sample("L50M20", (torch.rand(50, 20, generator=gen), targets(50, 20, 0.2)))
    s = torch.round(torch.rand(80, 30, generator=gen) * 4) / 4
    yield Sample("ties", (s, targets(80, 30, 0.3)))
    t = targets(6, 12, 0.3)
    t[0], t[1] = False, True                     # no positive; every entry positive
    t[2] = False
    t[2, 5] = True                               # one positive
    yield Sample("degenerate-rows", (torch.rand(6, 12, generator=gen), t))
    s = torch.rand(30, 15, generator=gen)
    s[::4, 3], s[::3, 7] = float("inf"), float("-inf")
    yield Sample("infinities", (s, targets(30, 15, 0.4)))
    yield Sample("non-contiguous", (torch.rand(40, 25, generator=gen).T, targets(40, 25, 0.2).T))
    yield Sample("long-rows", (torch.rand(4, 20000, generator=gen), targets(4, 20000, 0.02)))
    yield Sample("M1", (torch.rand(9, 1, generator=gen), targets(9, 1, 0.5)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sample", list(rank_samples()), ids=repr)
def test_positive_rank_stats_matches_reference(sample, dtype):
    s, t = sample.args
    s = s.to(dtype)
    prec, mis, deep, npos = ops.positive_rank_stats(s, t)
    prec_ref, mis_ref, deep_ref, npos_ref = ref.positive_rank_stats(s, t)
    assert prec.dtype == torch.float64 and mis.dtype == deep.dtype == npos.dtype == torch.int64
    assert torch.equal(mis, mis_ref) and torch.equal(deep, deep_ref) and torch.equal(npos, npos_ref)
    torch.testing.assert_close(prec, prec_ref, rtol=1e-13, atol=0)


@pytest.mark.parametrize("sample", [s for s in rank_samples() if s.name in ("L50M20", "ties", "non-contiguous")],
                         ids=repr)
def test_positive_rank_stats_opcheck(sample):
    torch.library.opcheck(torch.ops.bbam.positive_rank_stats.default, sample.args)


def test_positive_rank_stats_any_thread_count():
    gen = torch.Generator().manual_seed(2)
    s = torch.round(torch.rand(3000, 500, generator=gen) * 100) / 100
    t = torch.rand(3000, 500, generator=gen) < 0.05
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.positive_rank_stats(s, t)
        torch.set_num_threads(max(2, threads))
        many = ops.positive_rank_stats(s, t)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, many))


def test_positive_rank_stats_errors():
    s, t = torch.rand(5, 4), torch.rand(5, 4) < 0.5
    with pytest.raises(RuntimeError, match="'targets' must be bool"):
        ops.positive_rank_stats(s, t.to(torch.int8))
    with pytest.raises(RuntimeError, match="'targets' must have shape"):
        ops.positive_rank_stats(s, t[:3])
    with pytest.raises(RuntimeError, match="'scores' must be float32 or float64"):
        ops.positive_rank_stats(s.to(torch.int32), t)
    with pytest.raises(RuntimeError, match="'scores' must be 2-D"):
        ops.positive_rank_stats(s[0], t[0])
    bad = s.clone()
    bad[2, 2] = float("nan")
    with pytest.raises(ValueError, match="'scores' must not contain NaN"):
        ops.positive_rank_stats(bad, t)


def test_cpu_only_kernels_say_so():
    meta = torch.empty(4, 3, device="meta")
    z = torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match="'scores' must be a CPU tensor"):
        ops.cap_select(meta, z, z, z)
    with pytest.raises(ValueError, match="'targets' must be a CPU tensor"):
        ops.positive_rank_stats(torch.rand(4, 3), torch.empty(4, 3, dtype=torch.bool, device="meta"))
