"""Tests of the fused ops against bbam.reference, gradcheck and opcheck.

One ``*_samples()`` generator per op feeds (a) the reference check, (b) gradcheck
in float64 and (c) ``torch.library.opcheck`` (pytorch/extension-cpp style).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
import torch

import bbam
from bbam import ops
from bbam import reference as ref

DEVICES = ["cpu", "cuda"]


def _device(name: str) -> torch.device:
    if name == "cuda" and not (torch.cuda.is_available() and bbam._extension.with_cuda()):
        pytest.skip("CUDA device or CUDA build of bbam not available")
    return torch.device(name)


@dataclass
class Sample:
    name: str
    args: tuple
    kwargs: dict = field(default_factory=dict)
    smooth: bool = True  # False when some |cos| = 1 (finite differences cross the clamp)

    def __repr__(self):
        return self.name


def _coefficients(K, kind, dtype, device):
    if kind == "identity":
        return torch.ones(2, K, dtype=dtype, device=device), torch.zeros(2, K, dtype=dtype, device=device)
    gen = torch.Generator(device=device).manual_seed(K)
    a = torch.rand(2, K, dtype=dtype, device=device, generator=gen) + 0.5
    b = (torch.rand(2, K, dtype=dtype, device=device, generator=gen) - 0.5) * 0.4
    if kind == "mixed":  # some labels balanced, some degenerate (identity)
        keep = torch.arange(K, device=device) % 3 == 0
        a[:, keep], b[:, keep] = 1.0, 0.0
    return a, b


def _targets(B, K, device, gen):
    t = torch.randint(-1, 2, (B, K), dtype=torch.int8, device=device, generator=gen)
    if K > 2:
        t[:, 1] = -1  # a label all unknown
        t[:, 2] = t[:, 2].clamp(max=0)  # a label without positives
    return t


def _cos(B, K, dtype, device, gen):
    return torch.rand(B, K, dtype=dtype, device=device, generator=gen) * 1.96 - 0.98


def loss_samples(device="cpu", dtype=torch.float64, requires_grad=False):
    gen = torch.Generator(device=device).manual_seed(1234)
    cases = [
        ("B16K11", 16, 11, "random", {}),
        ("B5K37-mixed-mean", 5, 37, "mixed", {"reduction": "mean"}),
        ("B4K9-none", 4, 9, "random", {"reduction": "none"}),
        ("K1", 6, 1, "random", {}),
        ("N1", 1, 19, "random", {}),
        ("B1K1", 1, 1, "random", {"reduction": "none"}),
        ("identity-BAM", 8, 10, "identity", {"margin": 0.2, "scale": 10.0}),
        ("B3K130", 3, 130, "mixed", {}),
    ]
    for name, B, K, coef_kind, kw in cases:
        for weighted in (False, True):
            cos = _cos(B, K, dtype, device, gen)
            t = _targets(B, K, device, gen)
            a, b = _coefficients(K, coef_kind, dtype, device)
            kwargs = dict(kw)
            if weighted:
                kwargs["weight"] = torch.rand(B, K, dtype=dtype, device=device, generator=gen)
            yield Sample(f"{name}{'-w' if weighted else ''}", (cos.requires_grad_(requires_grad), t, a, b), kwargs)
    # |cos| = 1 exactly, on balanced and identity labels
    cos = _cos(6, 12, dtype, device, gen)
    cos[0, :6], cos[1, 6:], cos[2, ::2] = 1.0, -1.0, 1.0
    t = _targets(6, 12, device, gen)
    a, b = _coefficients(12, "mixed", dtype, device)
    yield Sample("abs-cos-1", (cos.requires_grad_(requires_grad), t, a, b), {"reduction": "none"}, smooth=False)
    # non-contiguous inputs: transposed cos and targets, strided weight
    cos = _cos(13, 7, dtype, device, gen).T
    t = _targets(13, 7, device, gen).T
    w = torch.rand(7, 26, dtype=dtype, device=device, generator=gen)[:, ::2]
    a, b = _coefficients(13, "random", dtype, device)
    yield Sample("non-contiguous", (cos.detach().requires_grad_(requires_grad), t, a, b), {"weight": w})


def transform_samples(device="cpu", dtype=torch.float64, requires_grad=False):
    for s in loss_samples(device, dtype, requires_grad):
        cos, t, a, b = s.args
        yield Sample(s.name + "-targets", (cos, a, b, t), {}, s.smooth)
        yield Sample(s.name + "-inference", (cos, a, b, None), {}, s.smooth)


def stats_samples(device="cpu", dtype=torch.float32):
    gen = torch.Generator(device=device).manual_seed(99)

    def rnd(*shape):
        return torch.randn(*shape, dtype=dtype, device=device, generator=gen)

    def tg(N, K):
        return _targets(N, K, device, gen)

    yield Sample("N300D17K5", (rnd(300, 17), rnd(5, 17), tg(300, 5)))
    yield Sample("N1", (rnd(1, 8), rnd(4, 8), tg(1, 4)))
    yield Sample("K1", (rnd(50, 8), rnd(1, 8), tg(50, 1)))
    yield Sample("many-tiles-groups", (rnd(9000, 6), rnd(70, 6), tg(9000, 70)))
    yield Sample("K1000", (rnd(200, 16), rnd(1000, 16), tg(200, 1000)))
    # samples equal (or opposite) to a prototype: |cos| = 1, angle 0 or pi
    p = rnd(3, 5)
    f = torch.cat([p[0:1].repeat(4, 1) * 2.5, -p[1:2].repeat(3, 1), rnd(5, 5)])
    yield Sample("abs-cos-1", (f, p, tg(12, 3)))
    # a zero feature row and a zero prototype (F.normalize gives 0: angle pi/2)
    f, p = rnd(20, 4), rnd(3, 4)
    f[3] = 0
    p[2] = 0
    yield Sample("zero-vectors", (f, p, tg(20, 3)))
    # non-contiguous features / targets
    yield Sample("non-contiguous", (rnd(9, 40).T, rnd(6, 18)[:, ::2], tg(6, 40).T))


def _cmp(actual, expected, rtol, atol, what):
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


# ---------------------------------------------------------------------------
# bbam_loss
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("sample", list(loss_samples()), ids=repr)
def test_bbam_loss_matches_reference(sample, dtype, device, cpu_kernels):
    dev = _device(device)
    cos, t, a, b = (x.detach().to(dev) for x in sample.args)
    kwargs = {k: (v.to(dev, dtype) if torch.is_tensor(v) else v) for k, v in sample.kwargs.items()}
    cos = cos.to(dtype)
    c1, c2 = cos.clone().requires_grad_(), cos.clone().requires_grad_()
    out = ops.bbam_loss(c1, t, a.to(dtype), b.to(dtype), **kwargs)
    expected = ref.bbam_loss(c2, t, a.to(dtype), b.to(dtype), **kwargs)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-5)
    grad_tol = tol
    if not sample.smooth and dtype == torch.float32:
        # at |cos| = 1 the gradient a sin(theta') / sin(theta) divides by sin(theta) ~ 4.5e-4:
        # fp32 rounding of theta is amplified ~2000x there, in the reference as in the kernel
        grad_tol = dict(rtol=5e-4, atol=2e-5)
    assert out.dtype == expected.dtype and out.shape == expected.shape
    _cmp(out, expected, what="loss", **tol)
    g = torch.randn_like(out)
    (gc1,) = torch.autograd.grad(out, c1, g)
    (gc2,) = torch.autograd.grad(expected, c2, g)
    assert torch.isfinite(gc1).all()
    _cmp(gc1, gc2, what="grad cos", **grad_tol)


@pytest.mark.parametrize("sample", [s for s in loss_samples(requires_grad=True) if s.smooth], ids=repr)
def test_bbam_loss_gradcheck(sample, cpu_kernels):
    cos, t, a, b = sample.args
    assert torch.autograd.gradcheck(lambda c: ops.bbam_loss(c, t, a, b, **sample.kwargs), (cos,))


def _loss_op_args(sample, dtype=None):
    """The schema's positional arguments of bbam_loss / _bbam_loss_with_grad for a sample
    (the defaults of ops.bbam_loss filled in)."""
    cos, t, a, b = sample.args
    kw = sample.kwargs
    w = kw.get("weight")
    if dtype is not None:
        cos, a, b = cos.detach().to(dtype).requires_grad_(cos.requires_grad), a.to(dtype), b.to(dtype)
        w = None if w is None else w.to(dtype)
    return (cos, t, a, b, w, float(kw.get("margin", 0.4)), float(kw.get("scale", 20.0)),
            ops.REDUCTIONS[kw.get("reduction", "sum")])


@pytest.mark.parametrize("sample", list(loss_samples(requires_grad=True)), ids=repr)
def test_bbam_loss_opcheck(sample):
    torch.library.opcheck(torch.ops.bbam.bbam_loss.default, _loss_op_args(sample))


@pytest.mark.parametrize("sample", list(loss_samples(requires_grad=True)), ids=repr)
def test_bbam_loss_with_grad_opcheck(sample):
    torch.library.opcheck(torch.ops.bbam._bbam_loss_with_grad.default, _loss_op_args(sample))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("sample", list(loss_samples(requires_grad=True)), ids=repr)
def test_bbam_loss_both_backward_paths_agree(sample, dtype, cpu_kernels):
    """The training op (loss + saved gradient) and the op's own recomputing backward
    (bbam_loss_backward) agree, on every CPU kernel variant. In float32 the two paths use
    different Sleef lanes (sincos vs cos, 3.5 ulp each), hence the tolerance."""
    args = _loss_op_args(sample, dtype)
    kw = {k: (v.to(dtype) if torch.is_tensor(v) else v) for k, v in sample.kwargs.items()}
    c1, c2 = args[0].detach().clone().requires_grad_(), args[0].detach().clone().requires_grad_()
    fused = ops.bbam_loss(c1, *args[1:4], **kw)  # _bbam_loss_with_grad
    direct = torch.ops.bbam.bbam_loss.default(c2, *args[1:])  # bbam_loss + bbam_loss_backward
    exact = dtype == torch.float64
    tol = dict(rtol=1e-12, atol=1e-12) if exact else dict(rtol=1e-5, atol=1e-5)
    grad_tol = tol if exact or sample.smooth else dict(rtol=5e-4, atol=1e-5)   # 1/sin(theta) at |cos| = 1
    torch.testing.assert_close(fused, direct, **tol)
    g = torch.randn_like(fused)
    (g1,) = torch.autograd.grad(fused, c1, g)
    (g2,) = torch.autograd.grad(direct, c2, g)
    torch.testing.assert_close(g1, g2, **grad_tol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_bbam_loss_low_precision_gradient_scaled_before_rounding(dtype):
    """The saved d loss / d cos stays in float32: an upstream factor (GradScaler's 2**16)
    multiplies it before the rounding to fp16/bf16, so mean-reduced gradients of a large
    batch (~1e-6 each) are not flushed or coarsened by fp16's subnormal range."""
    B, K = 512, 1000
    gen = torch.Generator().manual_seed(5)
    cos = (torch.rand(B, K, generator=gen) * 1.8 - 0.9).to(dtype)
    t = _targets(B, K, "cpu", gen)
    a, b = _coefficients(K, "random", torch.float32, "cpu")
    c = cos.clone().requires_grad_()
    loss = ops.bbam_loss(c, t, a, b, reduction="mean")
    (loss * 2.0**16).backward()
    c64 = cos.double().requires_grad_()
    (ref.bbam_loss(c64, t, a.double(), b.double(), reduction="mean") * 2.0**16).backward()
    truth = c64.grad.to(dtype)   # the best a dtype gradient can be
    assert c.grad.dtype == dtype
    # within 4 units in the last place of the dtype (at the true value) everywhere, the
    # smallest gradients included (float32's own error in sigmoid - y near 0 costs up to ~4
    # fp16 ulps); a gradient saved in fp16 and then scaled was off by up to 2047 ulps here
    ulp = (torch.nextafter(truth.abs(), torch.tensor(float("inf"), dtype=dtype)) - truth.abs()).double()
    assert bool(((c.grad.double() - truth.double()).abs() <= 4 * ulp).all())
    assert not ((c.grad == 0) & (truth != 0)).any()


def test_bbam_loss_finite_at_abs_cos_one():
    cos = torch.tensor([[1.0, -1.0, 1.0, -1.0]], requires_grad=True)
    t = torch.tensor([[1, 0, 0, 1]], dtype=torch.int8)
    a = torch.tensor([[1.3, 0.7, 1.3, 0.7], [0.8, 1.2, 0.8, 1.2]])
    b = torch.tensor([[0.1, -0.1, 0.1, -0.1], [0.05, 0.2, 0.05, 0.2]])
    loss = ops.bbam_loss(cos, t, a, b, reduction="none")
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(cos.grad).all()


def test_bam_is_exact_with_identity_coefficients():
    cos = torch.rand(7, 9) * 2 - 1
    t = torch.randint(0, 2, (7, 9), dtype=torch.int8)
    y = t.float()
    expected = torch.nn.functional.binary_cross_entropy_with_logits(20 * (cos - 0.4 * y), y, reduction="sum")
    torch.testing.assert_close(bbam.functional.bam_loss(cos, t), expected, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(bbam.BAMLoss()(cos, t), expected, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("sample", [s for s in loss_samples(dtype=torch.float32) if s.name in
                                    ("B16K11-w", "B3K130", "abs-cos-1", "non-contiguous")], ids=repr)
def test_bbam_loss_low_precision(sample, dtype, cpu_kernels):
    """Errors vs the float64 truth stay within 2x the reference's own error in that precision."""
    cos, t, a, b = (x.detach() for x in sample.args)
    kw = {k: (v.to(dtype) if torch.is_tensor(v) else v) for k, v in sample.kwargs.items()}
    cos_lp = cos.to(dtype)
    truth_in = cos_lp.double().requires_grad_()
    kw64 = {k: (v.double() if torch.is_tensor(v) else v) for k, v in kw.items()}
    truth = ref.bbam_loss(truth_in, t, a.double(), b.double(), **kw64)
    g = torch.ones_like(truth)
    (truth_grad,) = torch.autograd.grad(truth, truth_in, g)
    results = {}
    for name, fn in (("ours", ops.bbam_loss), ("reference", ref.bbam_loss)):
        c = cos_lp.clone().requires_grad_()
        out = fn(c, t, a, b, **kw)
        (gc,) = torch.autograd.grad(out, c, g.to(out.dtype))
        assert out.dtype == torch.float32 and gc.dtype == dtype
        results[name] = ((out.double() - truth).abs().max().item(), (gc.double() - truth_grad).abs().max().item())
    scale_loss = truth.abs().max().item() + 1
    scale_grad = truth_grad.abs().max().item() + 1
    (ours_l, ours_g), (ref_l, ref_g) = results["ours"], results["reference"]
    assert ours_l <= 2 * ref_l + 1e-6 * scale_loss, results
    assert ours_g <= 2 * ref_g + 1e-3 * scale_grad, results


# ---------------------------------------------------------------------------
# angle_transform
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("sample", list(transform_samples()), ids=repr)
def test_angle_transform_matches_reference(sample, dtype, device, cpu_kernels):
    dev = _device(device)
    cos, a, b, t = sample.args
    cos = cos.detach().to(dev, dtype)
    a, b = a.to(dev, dtype), b.to(dev, dtype)
    t = None if t is None else t.to(dev)
    c1, c2 = cos.clone().requires_grad_(), cos.clone().requires_grad_()
    out, expected = ops.angle_transform(c1, a, b, t), ref.angle_transform(c2, a, b, t)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    grad_tol = tol
    if not sample.smooth and dtype == torch.float32:
        grad_tol = dict(rtol=5e-4, atol=1e-5)  # see test_bbam_loss_matches_reference: 1/sin(theta) at |cos| = 1
    assert out.dtype == dtype
    _cmp(out, expected, what="phi", **tol)
    g = torch.randn_like(out)
    (g1,) = torch.autograd.grad(out, c1, g)
    (g2,) = torch.autograd.grad(expected, c2, g)
    assert torch.isfinite(g1).all()
    _cmp(g1, g2, what="grad cos", **grad_tol)


@pytest.mark.parametrize("sample", [s for s in transform_samples(requires_grad=True) if s.smooth], ids=repr)
def test_angle_transform_gradcheck(sample):
    cos, a, b, t = sample.args
    assert torch.autograd.gradcheck(lambda c: ops.angle_transform(c, a, b, t), (cos,))


@pytest.mark.parametrize("sample", list(transform_samples(requires_grad=True))[:12], ids=repr)
def test_angle_transform_opcheck(sample):
    torch.library.opcheck(torch.ops.bbam.angle_transform.default, sample.args)


def test_angle_transform_identity_is_exact_and_balances_variances():
    cos = torch.rand(5, 4) * 2 - 1
    a, b = bbam.functional.identity_coefficients(4)
    assert torch.equal(ops.angle_transform(cos, a, b), cos)
    # The transform maps each polarity's angle distribution to the mean variance v.
    theta_neg, theta_pos = torch.rand(2000, dtype=torch.float64) * 0.3 + 1.6, torch.rand(2000, dtype=torch.float64) * 0.9 + 0.2
    var = torch.stack([theta_neg.var(), theta_pos.var()]).unsqueeze(1)
    mean = torch.stack([theta_neg.mean(), theta_pos.mean()]).unsqueeze(1)
    a, b = bbam.functional.balancing_coefficients(torch.full((2, 1), 2000.0), mean, var)
    cos_all = torch.cos(torch.cat([theta_neg, theta_pos])).unsqueeze(1)
    t = torch.cat([torch.zeros(2000), torch.ones(2000)]).to(torch.int8).unsqueeze(1)
    new_theta = torch.acos(ops.angle_transform(cos_all, a, b, t)).squeeze(1)
    v = var.mean()
    torch.testing.assert_close(new_theta[:2000].var(), v, rtol=1e-6, atol=0)
    torch.testing.assert_close(new_theta[2000:].var(), v, rtol=1e-6, atol=0)
    torch.testing.assert_close(new_theta[:2000].mean(), mean[0, 0], rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_angle_transform_low_precision(dtype, cpu_kernels):
    gen = torch.Generator().manual_seed(5)
    cos = (_cos(32, 45, torch.float32, "cpu", gen)).to(dtype)
    t = _targets(32, 45, "cpu", gen)
    a, b = _coefficients(45, "mixed", torch.float32, "cpu")
    truth = ref.angle_transform(cos.double(), a.double(), b.double(), t)
    err_ours = (ops.angle_transform(cos, a, b, t).double() - truth).abs().max().item()
    err_ref = (ref.angle_transform(cos, a, b, t).double() - truth).abs().max().item()
    assert err_ours <= 2 * err_ref + 1e-6, (err_ours, err_ref)


# ---------------------------------------------------------------------------
# label_angle_stats and merge_stats
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("sample", list(stats_samples()), ids=repr)
def test_label_angle_stats_matches_reference(sample, dtype, device, cpu_kernels):
    dev = _device(device)
    f, p, t = sample.args
    f, p, t = f.to(dev, dtype), p.to(dev, dtype), t.to(dev)
    count, mean, m2 = ops.label_angle_stats(f, p, t)
    e_count, e_mean, e_m2 = ref.label_angle_stats(f, p, t)
    assert count.dtype == mean.dtype == m2.dtype == torch.float64 and count.shape == (2, p.shape[0])
    assert torch.equal(count, e_count)
    # acos' is unbounded at |cos| = 1: a last-bit cosine difference becomes ~sqrt(eps) in angle.
    tight = 1e-12 if dtype == torch.float64 else 1e-5
    edge = math.sqrt(torch.finfo(dtype).eps) * 4
    atol = edge if sample.name == "abs-cos-1" else tight
    _cmp(mean, e_mean, rtol=tight, atol=atol, what="mean")
    _cmp(m2, e_m2, rtol=10 * tight, atol=atol * count.max().item(), what="m2")


@pytest.mark.parametrize("sample", list(stats_samples())[:4], ids=repr)
def test_label_angle_stats_opcheck(sample):
    torch.library.opcheck(torch.ops.bbam.label_angle_stats.default, sample.args)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_label_angle_stats_low_precision(dtype, cpu_kernels):
    gen = torch.Generator().manual_seed(3)
    f = torch.randn(700, 24, generator=gen).to(dtype)
    p = torch.randn(9, 24, generator=gen).to(dtype)
    t = _targets(700, 9, "cpu", gen)
    truth = ref.label_angle_stats(f.double(), p.double(), t)
    ours = ops.label_angle_stats(f, p, t)
    theirs = ref.label_angle_stats(f, p, t)
    for i, what in ((1, "mean"), (2, "m2")):
        err_ours = (ours[i] - truth[i]).abs().max().item()
        err_ref = (theirs[i] - truth[i]).abs().max().item()
        assert err_ours <= 2 * err_ref + 1e-6 * truth[i].abs().max().item(), (what, err_ours, err_ref)


def test_label_angle_stats_is_deterministic_across_threads():
    f, p, t = torch.randn(20000, 8), torch.randn(30, 8), torch.randint(-1, 2, (20000, 30), dtype=torch.int8)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.label_angle_stats(f, p, t)
        torch.set_num_threads(max(2, threads))
        many = ops.label_angle_stats(f, p, t)
    finally:
        torch.set_num_threads(threads)
    for x, y in zip(one, many):
        assert torch.equal(x, y)


def test_merge_stats_of_chunks_equals_one_pass():
    f, p = torch.randn(1000, 12, dtype=torch.float64), torch.randn(7, 12, dtype=torch.float64)
    t = torch.randint(-1, 2, (1000, 7), dtype=torch.int8)
    t[:, 0] = -1
    t[:400, 3] = 1  # polarity absent from some chunks
    t[400:, 3] = -1
    whole = ops.label_angle_stats(f, p, t)
    bounds = [0, 1, 250, 400, 401, 1000]
    parts = [ops.label_angle_stats(f[s:e], p, t[s:e]) for s, e in zip(bounds[:-1], bounds[1:])]
    merged = ops.merge_stats(*parts)
    for x, y in zip(merged, whole):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)
    # merging in another order gives the same statistics
    for x, y in zip(ops.merge_stats(*reversed(parts)), whole):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="at least one"):
        ops.merge_stats()


def _peak_extra_rss(fn, *args) -> int:
    """Peak resident memory added while fn(*args) runs (Linux: reset VmHWM via clear_refs)."""
    import gc
    from pathlib import Path

    def status(key):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) * 1024
        raise KeyError(key)

    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    base = status("VmRSS:")
    fn(*args)
    return status("VmHWM:") - base


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/clear_refs"), reason="needs Linux /proc/self/clear_refs")
def test_label_angle_stats_never_builds_n_by_k():
    """The fused op's temporary memory stays far below one N x K float matrix (the reference's is above it)."""
    n, k = 60000, 500
    f, p = torch.randn(n, 16), torch.randn(k, 16)
    t = torch.randint(-1, 2, (n, k), dtype=torch.int8)
    ops.label_angle_stats(f, p, t)  # warm-up (allocator, thread pool)
    n_by_k_float = n * k * 4
    fused = _peak_extra_rss(ops.label_angle_stats, f, p, t)
    reference = _peak_extra_rss(ref.label_angle_stats, f, p, t)
    assert reference > n_by_k_float, "the measurement must see the reference's N x K matrices"
    assert fused < 0.1 * n_by_k_float, (fused, reference)


# ---------------------------------------------------------------------------
# torch.compile
# ---------------------------------------------------------------------------
def test_torch_compile_fullgraph_loss_and_backward():
    torch._dynamo.reset()
    x = torch.randn(16, 8)
    w = torch.randn(5, 8, requires_grad=True)
    t = torch.randint(-1, 2, (16, 5), dtype=torch.int8)
    a, b = _coefficients(5, "mixed", torch.float32, "cpu")

    def step(x, w, t, a, b):
        cos = torch.nn.functional.normalize(x, dim=1) @ torch.nn.functional.normalize(w, dim=1).T
        phi = ops.angle_transform(cos, a, b)
        return ops.bbam_loss(cos, t, a, b, reduction="mean") + phi.square().mean()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss_c = compiled(x, w, t, a, b)
    (g_c,) = torch.autograd.grad(loss_c, w)
    loss_e = step(x, w, t, a, b)
    (g_e,) = torch.autograd.grad(loss_e, w)
    torch.testing.assert_close(loss_c, loss_e)
    torch.testing.assert_close(g_c, g_e)


# ---------------------------------------------------------------------------
# Bad input: clear errors naming the argument
# ---------------------------------------------------------------------------
def _good():
    return torch.rand(4, 3), torch.zeros(4, 3, dtype=torch.int8), torch.ones(2, 3), torch.zeros(2, 3)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda c, t, a, b, kw: (c[0], t, a, b, kw), "argument 'cos' must be 2-D"),
        (lambda c, t, a, b, kw: (c.long(), t, a, b, kw), "argument 'cos' must be float32"),
        (lambda c, t, a, b, kw: (c, t[:2], a, b, kw), "argument 'targets' must have shape"),
        (lambda c, t, a, b, kw: (c, t.float() + 0.5, a, b, kw), "'targets' must hold only -1"),
        (lambda c, t, a, b, kw: (c, t + 2, a, b, kw), "argument 'targets' must only contain -1"),
        (lambda c, t, a, b, kw: (c, t - 2, a, b, kw), "argument 'targets' must only contain -1"),
        (lambda c, t, a, b, kw: (c, t, a[0], b, kw), "argument 'coef_a' must be 2-D"),
        (lambda c, t, a, b, kw: (c, t, a, torch.zeros(2, 4), kw), r"argument 'coef_b' must have shape \[2, K\]"),
        (lambda c, t, a, b, kw: (c, t, a, b, {"weight": torch.ones(3, 3)}), "argument 'weight' must have shape"),
        (lambda c, t, a, b, kw: (c, t, a, b, {"scale": -1.0}), "argument 'scale' must be finite and > 0"),
        (lambda c, t, a, b, kw: (c, t, a, b, {"margin": float("nan")}), "argument 'margin' must be finite"),
        (lambda c, t, a, b, kw: (c, t, a, b, {"reduction": "avg"}), "argument 'reduction' must be one of"),
    ],
)
def test_bbam_loss_bad_input(mutate, match):
    c, t, a, b, kw = mutate(*_good(), {})
    with pytest.raises((RuntimeError, ValueError), match=match):
        ops.bbam_loss(c, t, a, b, **kw)


def test_angle_transform_bad_input():
    c, t, a, b = _good()
    with pytest.raises(RuntimeError, match="angle_transform: argument 'targets' must only contain"):
        ops.angle_transform(c, a, b, t + 3)
    with pytest.raises(RuntimeError, match="angle_transform: argument 'coef_a' must have shape"):
        ops.angle_transform(c, torch.ones(2, 5), b)


@pytest.mark.parametrize(
    "args, match",
    [
        ((torch.randn(5), torch.randn(3, 4), torch.zeros(5, 3, dtype=torch.int8)), "argument 'features' must be 2-D"),
        ((torch.randn(5, 4), torch.randn(3, 6), torch.zeros(5, 3, dtype=torch.int8)),
         r"argument 'prototypes' must have shape \[K, D\] with D = features.size\(1\) = 4"),
        ((torch.randn(5, 4), torch.randn(3, 4), torch.zeros(5, 2, dtype=torch.int8)), "argument 'targets' must have shape"),
        ((torch.randn(5, 4), torch.randn(3, 4), torch.full((5, 3), 0.5)), "'targets' must hold only -1"),
        ((torch.randn(5, 4), torch.randn(3, 4), torch.full((5, 3), 7, dtype=torch.int8)),
         "argument 'targets' must only contain -1"),
        ((torch.randn(5, 4).int(), torch.randn(3, 4), torch.zeros(5, 3, dtype=torch.int8)), "argument 'features' must be float"),
        ((torch.tensor([[float("nan"), 1.0]]), torch.randn(2, 2), torch.zeros(1, 2, dtype=torch.int8)),
         "argument 'features' .* contains NaN or Inf"),
    ],
)
def test_label_angle_stats_bad_input(args, match):
    with pytest.raises((RuntimeError, ValueError), match=match):
        ops.label_angle_stats(*args)


def test_inputs_are_not_mutated():
    c, t, a, b = _good()
    t[0, 0] = -1
    copies = [x.clone() for x in (c, t, a, b)]
    ops.bbam_loss(c, t, a, b)
    ops.angle_transform(c, a, b, t)
    ops.label_angle_stats(torch.randn(4, 2), torch.randn(3, 2), t)
    for x, y in zip((c, t, a, b), copies):
        assert torch.equal(x, y)


# ---------------------------------------------------------------------------
# CUDA: agreement with the CPU kernels, determinism (skipped without a GPU)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("B, K", [(256, 80), (64, 1000), (3, 7), (1, 1)])
def test_cuda_matches_cpu(B, K, dtype):
    dev = _device("cuda")
    gen = torch.Generator().manual_seed(B * K)
    cos = _cos(B, K, torch.float32, "cpu", gen).to(dtype)
    t = _targets(B, K, "cpu", gen)
    a, b = _coefficients(K, "mixed", torch.float32, "cpu")
    w = torch.rand(B, K, generator=gen).to(dtype)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    for reduction in ("sum", "none"):
        c_cpu = cos.clone().requires_grad_()
        c_gpu = cos.to(dev).requires_grad_()
        l_cpu = ops.bbam_loss(c_cpu, t, a, b, weight=w, reduction=reduction)
        l_gpu = ops.bbam_loss(c_gpu, t.to(dev), a.to(dev), b.to(dev), weight=w.to(dev), reduction=reduction)
        torch.testing.assert_close(l_gpu.cpu(), l_cpu, rtol=1e-4, atol=1e-3 * max(1.0, l_cpu.abs().max().item()))
        g = torch.rand_like(l_cpu)
        (g_cpu,) = torch.autograd.grad(l_cpu, c_cpu, g)
        (g_gpu,) = torch.autograd.grad(l_gpu, c_gpu, g.to(dev))
        torch.testing.assert_close(g_gpu.cpu(), g_cpu, **tol)
    for targets in (t, None):
        phi_cpu = ops.angle_transform(cos, a, b, targets)
        phi_gpu = ops.angle_transform(cos.to(dev), a.to(dev), b.to(dev), None if targets is None else targets.to(dev))
        torch.testing.assert_close(phi_gpu.cpu(), phi_cpu, **tol)
    f = torch.randn(B * 9, 32, generator=gen).to(dtype)
    p = torch.randn(K, 32, generator=gen).to(dtype)
    tf = _targets(B * 9, K, "cpu", gen)
    s_cpu = ops.label_angle_stats(f, p, tf)
    s_gpu = ops.label_angle_stats(f.to(dev), p.to(dev), tf.to(dev))
    assert torch.equal(s_gpu[0].cpu(), s_cpu[0])
    for x, y in zip(s_gpu[1:], s_cpu[1:]):
        torch.testing.assert_close(x.cpu(), y, rtol=1e-4, atol=1e-4 * max(1.0, y.abs().max().item()))


def test_cuda_results_are_bitwise_deterministic():
    dev = _device("cuda")
    f, p = torch.randn(50000, 64, device=dev), torch.randn(300, 64, device=dev)
    t = torch.randint(-1, 2, (50000, 300), dtype=torch.int8, device=dev)
    first = ops.label_angle_stats(f, p, t)
    second = ops.label_angle_stats(f, p, t)
    for x, y in zip(first, second):
        assert torch.equal(x, y)
    cos = torch.rand(512, 300, device=dev) * 2 - 1
    tt = t[:512]
    a, b = _coefficients(300, "random", torch.float32, dev)
    assert torch.equal(ops.bbam_loss(cos, tt, a, b), ops.bbam_loss(cos, tt, a, b))
