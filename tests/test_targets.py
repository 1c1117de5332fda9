"""Targets of any common dtype at the library boundary.

The kernels take int8 (1 positive, 0 negative, -1 unknown). Every public entry point
also takes bool, other integer and floating targets (``bbam.ops.as_targets``) and must
give exactly the int8 result; values other than -1/0/1 are refused naming the entry point.
"""
import pytest
import torch

import bbam
from bbam import ops
from bbam.cap import CAPLabeler, estimate_positive_rates
from bbam.losses import AsymmetricLoss, BAMLoss, BBAMLoss, BCELoss
from bbam.sampling import NegativeSampler, negative_sample_counts
from bbam.stats import label_prototypes

N, K, D = 40, 5, 8
DTYPES = [torch.bool, torch.uint8, torch.int16, torch.int32, torch.int64, torch.float16, torch.float32,
          torch.float64]


def _data(seed=0, unknown=True):
    g = torch.Generator().manual_seed(seed)
    low = -1 if unknown else 0
    targets = torch.randint(low, 2, (N, K), generator=g, dtype=torch.int8)
    targets[0] = 1  # every label has a positive
    return torch.randn(N, D, generator=g), targets, torch.rand(N, K, generator=g) * 2 - 1


def _as(targets, dtype):
    """``targets`` in ``dtype``; bool and uint8 cannot hold -1, so those use 0/1 targets."""
    if dtype in (torch.bool, torch.uint8):
        return (targets == 1).to(dtype), (targets == 1).to(torch.int8)
    return targets.to(dtype), targets


def _entry_points(features, cos):
    stats = bbam.LabelAngleStats(K).update(features, torch.ones(N, K, dtype=torch.int8))
    a, b = stats.coefficients()
    sampler = NegativeSampler(eta=1.0)
    return {
        "bbam_loss": lambda t: ops.bbam_loss(cos, t, a, b),
        "angle_transform": lambda t: ops.angle_transform(cos, a, b, t),
        "label_angle_stats": lambda t: ops.label_angle_stats(features, stats.prototypes, t),
        "negative_select": lambda t: ops.negative_select(features, stats.prototypes, t,
                                                         torch.zeros(K, dtype=torch.int64)),
        "LabelAngleStats.update": lambda t: bbam.LabelAngleStats(K).update(features, t).state_dict(),
        "label_prototypes": lambda t: label_prototypes(features, t),
        "BAMLoss": lambda t: BAMLoss()(cos, t),
        "BBAMLoss": lambda t: BBAMLoss(stats)(cos, t),
        "BCELoss": lambda t: BCELoss()(cos * 5, t),
        "AsymmetricLoss": lambda t: AsymmetricLoss()(cos * 5, t),
        "NegativeSampler.select": lambda t: sampler.select(features, stats.prototypes, t),
        "negative_sample_counts": lambda t: negative_sample_counts(t),
        "estimate_positive_rates": lambda t: estimate_positive_rates(t),
        "CAPLabeler.fit": lambda t: CAPLabeler().fit(t).pos_rates,
    }


def _equal(x, y):
    if isinstance(x, dict):
        return x.keys() == y.keys() and all(_equal(x[k], y[k]) for k in x)
    if isinstance(x, (tuple, list)):
        return len(x) == len(y) and all(_equal(u, v) for u, v in zip(x, y))
    return torch.equal(x, y)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_entry_point_takes_targets_of_any_dtype(dtype):
    features, targets, cos = _data()
    for name, fn in _entry_points(features, cos).items():
        converted, reference = _as(targets, dtype)
        assert _equal(fn(converted), fn(reference)), (name, dtype)


@pytest.mark.parametrize("bad", [0.5, 2.0, -2.0, float("nan"), float("inf")])
def test_values_other_than_minus_one_zero_one_are_refused_naming_the_entry_point(bad):
    features, targets, cos = _data()
    for name, fn in _entry_points(features, cos).items():
        t = targets.double()
        t[3, 2] = bad
        with pytest.raises(ValueError, match=r"'targets' must hold only -1 \(unknown\), 0 \(negative\) or 1"):
            fn(t)
        if bad in (2.0, -2.0):  # also as an integer dtype
            with pytest.raises(ValueError, match="'targets' must hold only -1"):
                fn(t.long())


@pytest.mark.parametrize("bad", [2, -2, 127])
def test_int8_values_outside_minus_one_zero_one_are_refused(bad):
    """int8 is passed through without conversion: every entry point still refuses other values
    (the fused kernels in their pass, the pure-PyTorch losses and CAP before computing)."""
    features, targets, cos = _data()
    t = targets.clone()
    t[3, 2] = bad
    for name, fn in _entry_points(features, cos).items():
        with pytest.raises((ValueError, RuntimeError), match=r"'targets' must (hold|only contain)"):
            fn(t)


def test_unsigned_targets_have_no_unknown():
    """uint8 cannot hold -1: its 255 is an error, not 'unknown' (no wrap-around)."""
    with pytest.raises(ValueError, match="found 255"):
        ops.as_targets(torch.tensor([[1, 0, 255]], dtype=torch.uint8))
    assert ops.as_targets(torch.tensor([[1, 0]], dtype=torch.uint8)).tolist() == [[1, 0]]


def test_as_targets_rules():
    t = torch.tensor([[1.0, 0.0, -1.0]])
    out = ops.as_targets(t)
    assert out.dtype == torch.int8 and out.tolist() == [[1, 0, -1]]
    int8 = torch.tensor([[1, 0, -1]], dtype=torch.int8)
    assert ops.as_targets(int8) is int8  # the fast path: no copy
    assert ops.as_targets(torch.tensor([[True, False]])).tolist() == [[1, 0]]
    assert ops.as_targets(torch.zeros(0, 3)).shape == (0, 3)
    with pytest.raises(TypeError, match="'targets' must be a torch.Tensor"):
        ops.as_targets([[1, 0]])
    with pytest.raises(TypeError, match="complex"):
        ops.as_targets(torch.zeros(2, 2, dtype=torch.complex64))
    assert bbam.functional.as_targets is ops.as_targets
