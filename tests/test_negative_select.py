"""bbam.ops.negative_select and the _label_counts op against bbam.reference, opcheck,
edge cases, band placement (forced band misses), determinism and memory.

One sample generator feeds the reference check and opcheck (pytorch/extension-cpp style).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bbam import ops
from bbam import reference as ref

from test_ops import DEVICES, Sample, _device, _peak_extra_rss


def _targets(N, K, gen, p_pos=0.1, p_unk=0.1):
    u = torch.rand(N, K, generator=gen)
    t = (u < p_pos).to(torch.int8)
    t[torch.rand(N, K, generator=gen) < p_unk] = -1
    return t


def _kept(targets, gen, mode="random"):
    """num_kept per label: random in [0, n_neg], or 5 x positives capped (the method's rule)."""
    n_neg = (targets == 0).sum(0)
    if mode == "eta":
        return torch.minimum(5 * (targets == 1).sum(0), n_neg)
    return (torch.rand(n_neg.shape, generator=gen, dtype=torch.float64) * (n_neg + 1)).floor().long().clamp(max=n_neg)


def select_samples(dtype=torch.float32):
    gen = torch.Generator().manual_seed(7)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen).to(dtype)

    t = _targets(300, 5, gen)
    yield Sample("N300D17K5", (rnd(300, 17), rnd(5, 17), t, _kept(t, gen)))
    t = _targets(1, 1, gen, p_pos=0.0, p_unk=0.0)
    yield Sample("N1K1", (rnd(1, 4), rnd(1, 4), t, torch.ones(1, dtype=torch.long)))
    # label 0: no positive, keeps all negatives (its prototype is NaN: never read);
    # label 1: all unknown; label 2: keeps none; label 3: ranked
    t = _targets(200, 4, gen)
    t[:, 0] = torch.where(t[:, 0] == 1, 0, t[:, 0])
    t[:, 1] = -1
    p = rnd(4, 6)
    p[0] = float("nan")
    n_neg = (t == 0).sum(0)
    yield Sample("keep-all-unknown-none", (rnd(200, 6), p, t, torch.stack([n_neg[0], n_neg[1], n_neg[2] * 0,
                                                                               n_neg[3] // 3])))
    # |cos| = 1: rows equal (or opposite) to a prototype, many exact ties at 1 and -1
    p = rnd(3, 5)
    f = torch.cat([p[0:1].repeat(6, 1) * 2.5, -p[0:1].repeat(4, 1), p[1:2].repeat(5, 1), rnd(15, 5)])
    t = _targets(30, 3, gen, p_pos=0.1, p_unk=0.0)
    yield Sample("abs-cos-1-ties", (f, p, t, _kept(t, gen)))
    # a zero feature row and a zero prototype of a ranked label: cosine 0, all tied
    f, p = rnd(40, 4), rnd(3, 4)
    f[3] = 0
    p[2] = 0
    t = _targets(40, 3, gen, p_pos=0.2, p_unk=0.0)
    yield Sample("zero-vectors", (f, p, t, _kept(t, gen)))
    # non-contiguous features / prototypes / targets
    t = _targets(6, 40, gen).T
    yield Sample("non-contiguous", (rnd(9, 40).T, rnd(6, 18)[:, ::2], t, _kept(t, gen)))
    t = _targets(9000, 70, gen, p_pos=0.02)
    yield Sample("many-tiles-groups", (rnd(9000, 6), rnd(70, 6), t, _kept(t, gen, "eta")))
    t = _targets(200, 1000, gen, p_pos=0.02)
    yield Sample("K1000", (rnd(200, 16), rnd(1000, 16), t, _kept(t, gen)))
    # bands from a sample: comfortable, tight and forced misses on both sides
    t = _targets(20000, 12, gen, p_pos=0.03)
    f, p, m = rnd(20000, 8), rnd(12, 8), _kept(t, gen, "eta")
    for size, z in ((512, 5.0), (64, 0.0), (16, 0.0), (4096, 0.5), (30000, 3.0)):
        yield Sample(f"band-S{size}-z{z}", (f, p, t, m), dict(sample_size=size, band_z=z))
    # exact ties under a sample: axis-aligned features (cosines = prototype components)
    axis = torch.randint(0, 5, (5000,), generator=gen)
    f = (F.one_hot(axis, 5).double() * (1 + torch.rand(5000, 1, generator=gen, dtype=torch.float64))).to(dtype)
    t = _targets(5000, 6, gen, p_pos=0.05)
    yield Sample("axis-ties-band", (f, rnd(6, 5), t, _kept(t, gen)), dict(sample_size=256, band_z=1.0))


def _run(fn, sample, device="cpu"):
    args = tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in sample.args)
    return fn(*args, **sample.kwargs)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("sample", list(select_samples()), ids=repr)
def test_negative_select_matches_reference(sample, dtype, device, cpu_kernels):
    dev = _device(device)
    f, p, t, m = sample.args
    args = (f.to(dtype), p.to(dtype), t, m)
    s = Sample(sample.name, args, sample.kwargs)
    mask = _run(ops.negative_select, s, dev)
    assert mask.dtype == torch.bool and mask.shape == t.shape and mask.device.type == dev.type
    expected = ref.negative_select(*args)
    assert torch.equal(mask.cpu(), expected)
    # the contract, independently of the reference
    assert torch.equal(mask.cpu() & (t == 1), t == 1)
    assert not (mask.cpu() & (t == -1)).any()
    assert torch.equal((mask.cpu() & (t == 0)).sum(0), m)


def test_ties_go_to_the_lower_row():
    # every feature has the same cosine with the prototype
    f = torch.ones(50, 3)
    t = torch.zeros(50, 1, dtype=torch.int8)
    t[::7] = 1
    m = torch.tensor([10])
    for size in (0, 16):
        mask = ops.negative_select(f, torch.tensor([[1.0, 2.0, 3.0]]), t, m, sample_size=size)
        neg_rows = (t[:, 0] == 0).nonzero().flatten()
        assert torch.equal(mask[:, 0].nonzero().flatten(),
                           torch.cat([neg_rows[:10], (t[:, 0] == 1).nonzero().flatten()]).sort().values)


@pytest.mark.parametrize("sample", [s for s in select_samples() if s.name in
                                    ("N300D17K5", "keep-all-unknown-none", "non-contiguous", "band-S64-z0.0")],
                         ids=repr)
def test_negative_select_opcheck(sample):
    torch.library.opcheck(torch.ops.bbam.negative_select.default,
                          sample.args + (sample.kwargs.get("sample_size", 0), sample.kwargs.get("band_z", 5.0)))


def test_negative_select_is_identical_for_any_thread_count_and_band():
    gen = torch.Generator().manual_seed(3)
    t = _targets(30000, 20, gen, p_pos=0.02)
    f, p = torch.randn(30000, 24, generator=gen), torch.randn(20, 24, generator=gen)
    m = _kept(t, gen, "eta")
    first = ops.negative_select(f, p, t, m, 2048, 5.0)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(ops.negative_select(f, p, t, m, 2048, 5.0), first)
    finally:
        torch.set_num_threads(threads)
    for size, z in ((0, 5.0), (100, 0.0), (8000, 2.0)):
        assert torch.equal(ops.negative_select(f, p, t, m, size, z), first)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_negative_select_low_precision(dtype, cpu_kernels):
    """fp16/bf16 features are ranked in float32: the selection is the top-m of the
    float32 cosines of the rounded inputs (checked against float64 ones, up to 1e-6)."""
    gen = torch.Generator().manual_seed(11)
    t = _targets(6000, 9, gen, p_pos=0.05)
    f, p = torch.randn(6000, 32, generator=gen).to(dtype), torch.randn(9, 32, generator=gen).to(dtype)
    m = _kept(t, gen, "eta")
    mask = ops.negative_select(f, p, t, m, sample_size=512)
    cos = F.normalize(f.double(), dim=1) @ F.normalize(p.double(), dim=1).T
    assert torch.equal((mask & (t == 0)).sum(0), m)
    for k in range(9):
        neg = t[:, k] == 0
        sel, unsel = cos[mask[:, k] & neg, k], cos[~mask[:, k] & neg, k]
        if sel.numel() and unsel.numel():
            assert sel.min() >= unsel.max() - 1e-6


def test_negative_select_empty_and_no_ranked_label():
    mask = ops.negative_select(torch.zeros(0, 4), torch.randn(3, 4), torch.zeros(0, 3, dtype=torch.int8),
                               torch.zeros(3, dtype=torch.long))
    assert mask.shape == (0, 3)
    t = torch.tensor([[1, 0], [0, -1], [0, 0]], dtype=torch.int8)
    p = torch.full((2, 4), float("nan"))   # no label ranked: prototypes are not read
    mask = ops.negative_select(torch.randn(3, 4), p, t, torch.tensor([2, 0]))
    assert torch.equal(mask, torch.tensor([[True, False], [True, False], [True, False]]))


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/clear_refs"), reason="needs Linux /proc/self/clear_refs")
def test_negative_select_never_builds_n_by_k_scores():
    n, k = 60000, 400
    gen = torch.Generator().manual_seed(5)
    f, p = torch.randn(n, 16, generator=gen), torch.randn(k, 16, generator=gen)
    t = _targets(n, k, gen, p_pos=0.01, p_unk=0.0)
    m = _kept(t, gen, "eta")
    ops.negative_select(f, p, t, m, 2048, 5.0)   # warm-up
    n_by_k_float = n * k * 4
    fused = _peak_extra_rss(ops.negative_select, f, p, t, m, 2048, 5.0)
    reference = _peak_extra_rss(ref.negative_select, f, p, t, m)
    assert reference > n_by_k_float, "the measurement must see the reference's N x K cosines"
    # the [N, K] bool output is a quarter of the float matrix; the rest is small
    assert fused < 0.5 * n_by_k_float, (fused, reference)


def _good():
    gen = torch.Generator().manual_seed(1)
    t = _targets(30, 4, gen)
    return torch.randn(30, 5), torch.randn(4, 5), t, _kept(t, gen)


@pytest.mark.parametrize("mutate, match", [
    (lambda a: (a[0][0],) + a[1:], "features"),
    (lambda a: (a[0].long(),) + a[1:], "features"),
    (lambda a: (a[0], a[1][:, :3]) + a[2:], "prototypes"),
    (lambda a: (a[0], a[1], a[2][:10], a[3]), "targets"),
    (lambda a: (a[0], a[1], a[2].long() * 2, a[3]), "targets"),  # int64 is converted; its values are checked
    (lambda a: (a[0], a[1], torch.where(a[2] == 1, 3, a[2]).to(torch.int8), a[3]), "targets"),
    (lambda a: a[:3] + (a[3].int(),), "num_kept"),
    (lambda a: a[:3] + (a[3][:2],), "num_kept"),
    (lambda a: a[:3] + (a[3] - 100,), "num_kept"),
    (lambda a: a[:3] + ((a[2] == 0).sum(0) + 1,), "num_kept"),
    (lambda a: (torch.where(torch.arange(30).unsqueeze(1) == 2, float("nan"), a[0]),) + a[1:], "features"),
    (lambda a: (a[0], torch.full_like(a[1], float("inf"))) + a[2:], "prototypes"),
])
def test_negative_select_bad_input(mutate, match):
    f, p, t, m = _good()
    m = torch.minimum(torch.maximum(m, torch.ones_like(m)), (t == 0).sum(0) - 1)   # every label ranked
    with pytest.raises((RuntimeError, ValueError), match=match):
        ops.negative_select(*mutate((f, p, t, m)))
    with pytest.raises(RuntimeError, match="sample_size"):
        ops.negative_select(f, p, t, m, sample_size=-1)
    with pytest.raises(RuntimeError, match="band_z"):
        ops.negative_select(f, p, t, m, band_z=-1.0)
    with pytest.raises(RuntimeError, match="band_z"):
        ops.negative_select(f, p, t, m, band_z=float("nan"))


def test_negative_select_inputs_not_mutated():
    f, p, t, m = _good()
    copies = [x.clone() for x in (f, p, t, m)]
    ops.negative_select(f, p, t, m, 8, 0.0)
    for x, y in zip((f, p, t, m), copies):
        assert torch.equal(x, y)


# ---------------------------------------------------------------------------
# _label_counts
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("N, K", [(0, 3), (1, 1), (5, 7), (1000, 80), (70000, 3)])
def test_label_counts(N, K, device, cpu_kernels):
    dev = _device(device)
    t = torch.randint(-1, 2, (N, K), dtype=torch.int8)
    expected = torch.stack([(t == 0).sum(0), (t == 1).sum(0), (t == -1).sum(0)])
    assert torch.equal(torch.ops.bbam._label_counts(t.to(dev)).cpu(), expected)
    assert torch.equal(torch.ops.bbam._label_counts(t.T.to(dev)).cpu(),
                       torch.stack([(t.T == 0).sum(0), (t.T == 1).sum(0), (t.T == -1).sum(0)]))


def test_label_counts_opcheck_and_errors():
    t = torch.randint(-1, 2, (50, 6), dtype=torch.int8)
    torch.library.opcheck(torch.ops.bbam._label_counts.default, (t,))
    bad = t.clone()
    bad[3, 2] = 2
    with pytest.raises(RuntimeError, match="targets"):
        torch.ops.bbam._label_counts(bad)
    with pytest.raises(RuntimeError, match="targets"):
        torch.ops.bbam._label_counts(t.float())
    with pytest.raises(RuntimeError, match="targets"):
        torch.ops.bbam._label_counts(t[0])


# ---------------------------------------------------------------------------
# CUDA: agreement with the CPU (skipped without a GPU)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_negative_select_cuda_matches_cpu(dtype):
    dev = _device("cuda")
    for sample in select_samples(torch.float32):
        f, p, t, m = sample.args
        if dtype != torch.float32 and sample.name.startswith("axis"):
            continue
        args = (f.to(dtype), p.to(dtype), t, m)
        cpu = ops.negative_select(*args, **sample.kwargs)
        gpu = ops.negative_select(*(a.to(dev) for a in args), **sample.kwargs)
        cos = F.normalize(args[0].double(), dim=1) @ F.normalize(args[1].double(), dim=1).T
        assert torch.equal((gpu.cpu() & (t == 0)).sum(0), m), sample.name
        assert torch.equal(gpu.cpu() & (t == 1), t == 1), sample.name
        # both rank by float32 cosines: they may differ only on near-ties
        diff = (gpu.cpu() ^ cpu) & (t == 0)
        if diff.any():
            k = diff.nonzero()[:, 1]
            thr = torch.stack([cos[cpu[:, j] & (t[:, j] == 0), j].min() for j in k.tolist()])
            assert ((cos[diff.nonzero()[:, 0], k] - thr).abs() < 1e-5).all(), sample.name
