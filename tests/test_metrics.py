"""Tests of bbam.metrics against scikit-learn and straightforward numpy loops."""

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from bbam import metrics

TOL = 1e-10


@pytest.fixture(autouse=True, params=["cpu-kernel", "torch"])
def ranking_path(request, monkeypatch):
    """Every test runs on both ways of ranking: the fused CPU op (no sort) and the
    stable sort with tie groups (which serves CUDA)."""
    if request.param == "torch":
        monkeypatch.setattr(metrics, "_use_cpu_kernel", lambda s: False)
    return request.param

# (N, K) shapes, including the degenerate ones
SHAPES = [(1, 1), (1, 6), (6, 1), (2, 2), (40, 5), (128, 17), (301, 33)]
# how scores are drawn: continuous, heavy ties, very heavy ties, all equal
SCORE_MODES = ["cont", "round1", "round0", "const"]


def _make(n, k, score_mode, seed):
    rng = np.random.default_rng(seed)
    s = rng.random((n, k))
    if score_mode == "round1":
        s = np.round(s, 1)
    elif score_mode == "round0":
        s = np.round(s * 2) / 2  # values in {0, .5, 1}
    elif score_mode == "const":
        s = np.full((n, k), 0.5)
    y = (rng.random((n, k)) < rng.uniform(0.1, 0.6)).astype(np.int64)
    if n >= 4 and k >= 3:
        y[:, 0] = 0  # a label with no positive
        y[:, 1] = 1  # a label with only positives
        y[0, :] = 0  # a sample with no positive
        y[1, :] = 1  # a sample with only positives
    return s, y


def _cases():
    seed = 0
    for n, k in SHAPES:
        for mode in SCORE_MODES:
            seed += 1
            yield pytest.param(n, k, mode, seed, id=f"{n}x{k}-{mode}")


CASES = list(_cases())


# ---------------------------------------------------------------------------
# references
# ---------------------------------------------------------------------------


def ref_ap(s, y):
    out = np.full(s.shape[1], np.nan)
    for k in range(s.shape[1]):
        if y[:, k].any():
            out[k] = skm.average_precision_score(y[:, k], s[:, k])
    return out


def ref_f1_per_label(y, p):
    return np.array(
        [skm.f1_score(y[:, k], p[:, k], average="binary", pos_label=1, zero_division=0) for k in range(y.shape[1])]
    )


def ref_micro_f1(y, p):
    if y.shape[1] > 1:
        return skm.f1_score(y, p, average="micro", zero_division=0)
    return ref_f1_per_label(y, p)[0]  # a single column is "binary" to sklearn


def ref_macro_f1(y, p):
    if y.shape[1] > 1:
        return skm.f1_score(y, p, average="macro", zero_division=0)
    return ref_f1_per_label(y, p).mean()


def loop_one_error(s, y):
    return np.mean([y[i, np.argmax(s[i])] == 0 for i in range(len(s))])


def loop_coverage(s, y):
    out = []
    for i in range(len(s)):
        rel = np.flatnonzero(y[i])
        out.append(0 if rel.size == 0 else np.sum(s[i] >= s[i, rel].min()))
    return np.mean(out)


def loop_ranking_loss(s, y):
    out = []
    k = s.shape[1]
    for i in range(len(s)):
        pos, neg = np.flatnonzero(y[i]), np.flatnonzero(y[i] == 0)
        if pos.size == 0 or pos.size == k:
            out.append(0.0)
            continue
        bad = sum(s[i, b] >= s[i, a] for a in pos for b in neg)
        out.append(bad / (pos.size * neg.size))
    return np.mean(out)


def loop_lrap(s, y):
    out = []
    k = s.shape[1]
    for i in range(len(s)):
        pos = np.flatnonzero(y[i])
        if pos.size == 0 or pos.size == k:
            out.append(1.0)
            continue
        vals = [np.sum(s[i, pos] >= s[i, j]) / np.sum(s[i] >= s[i, j]) for j in pos]
        out.append(np.mean(vals))
    return np.mean(out)


def loop_oracle(s, y):
    p = np.zeros_like(y, dtype=bool)
    for i in range(len(s)):
        p[i, np.argsort(-s[i], kind="stable")[: int(y[i].sum())]] = True
    return p


def loop_class_acc(y, p):
    return np.array([np.mean(y[:, k] == p[:, k]) for k in range(y.shape[1])])


def T(a):
    return torch.from_numpy(np.ascontiguousarray(a))


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# ---------------------------------------------------------------------------
# agreement with the references
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("n,k,mode,seed", CASES)
def test_average_precision_and_map(n, k, mode, seed):
    s, y = _make(n, k, mode, seed)
    ap = metrics.average_precision(T(s), T(y))
    assert ap.dtype == torch.float64 and ap.shape == (k,)
    ref = ref_ap(s, y)
    np.testing.assert_array_equal(np.isnan(ap.numpy()), np.isnan(ref))
    np.testing.assert_allclose(ap.numpy(), ref, rtol=0, atol=TOL, equal_nan=True)
    m = metrics.mean_average_precision(T(s), T(y))
    if np.all(np.isnan(ref)):
        assert math.isnan(m)
    else:
        assert abs(m - 100 * np.nanmean(ref)) < 100 * TOL


@pytest.mark.parametrize("n,k,mode,seed", CASES)
@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_thresholded_metrics(n, k, mode, seed, threshold):
    s, y = _make(n, k, mode, seed)
    p = (s >= threshold).astype(np.int64)
    assert abs(metrics.micro_f1(T(s), T(y), threshold) - ref_micro_f1(y, p)) < TOL
    assert abs(metrics.macro_f1(T(s), T(y), threshold=threshold) - ref_macro_f1(y, p)) < TOL
    assert abs(metrics.hamming_loss(T(s), T(y), threshold) - skm.hamming_loss(y, p)) < TOL
    acc = metrics.class_accuracies(T(s), T(y), threshold)
    assert acc.dtype == torch.float64 and acc.shape == (k,)
    np.testing.assert_allclose(acc.numpy(), loop_class_acc(y, p), rtol=0, atol=TOL)
    assert abs(metrics.vca(T(s), T(y), threshold) - np.var(loop_class_acc(y, p))) < TOL


@pytest.mark.parametrize("n,k,mode,seed", CASES)
def test_ranking_metrics(n, k, mode, seed):
    s, y = _make(n, k, mode, seed)
    oe = metrics.one_error(T(s), T(y))
    cov = metrics.coverage_error(T(s), T(y))
    rl = metrics.ranking_loss(T(s), T(y))
    lrap = metrics.label_ranking_average_precision(T(s), T(y))
    assert abs(oe - loop_one_error(s, y)) < TOL
    assert abs(cov - loop_coverage(s, y)) < TOL
    assert abs(rl - loop_ranking_loss(s, y)) < TOL
    assert abs(lrap - loop_lrap(s, y)) < TOL
    assert abs(lrap - skm.label_ranking_average_precision_score(y, s)) < TOL
    if k > 1:  # sklearn rejects a single column ("binary") for these two
        assert abs(cov - skm.coverage_error(y, s)) < TOL
        assert abs(rl - skm.label_ranking_loss(y, s)) < TOL


@pytest.mark.parametrize("n,k,mode,seed", CASES)
def test_oracle_topk(n, k, mode, seed):
    s, y = _make(n, k, mode, seed)
    p = metrics.oracle_topk_predictions(T(s), T(y))
    assert p.dtype == torch.bool and p.shape == (n, k)
    np.testing.assert_array_equal(p.numpy(), loop_oracle(s, y))
    np.testing.assert_array_equal(p.sum(1).numpy(), y.sum(1))


@pytest.mark.parametrize("oracle", [False, True])
@pytest.mark.parametrize("n,k,mode,seed", CASES[::3])
def test_evaluate(n, k, mode, seed, oracle):
    s, y = _make(n, k, mode, seed)
    out = metrics.evaluate(T(s), T(y), threshold=0.5, oracle_cardinality=oracle)
    assert set(out) == {
        "mAP", "micro_f1", "macro_f1", "hamming_loss", "one_error",
        "coverage", "ranking_loss", "lrap", "vca",
    }
    assert all(type(v) is float for v in out.values())
    p = loop_oracle(s, y).astype(np.int64) if oracle else (s >= 0.5).astype(np.int64)
    assert abs(out["micro_f1"] - ref_micro_f1(y, p)) < TOL
    assert abs(out["macro_f1"] - ref_macro_f1(y, p)) < TOL
    assert abs(out["hamming_loss"] - skm.hamming_loss(y, p)) < TOL
    assert abs(out["vca"] - np.var(loop_class_acc(y, p))) < TOL
    m = metrics.mean_average_precision(T(s), T(y))
    assert (math.isnan(m) and math.isnan(out["mAP"])) or out["mAP"] == m
    assert out["one_error"] == metrics.one_error(T(s), T(y))
    assert out["coverage"] == metrics.coverage_error(T(s), T(y))
    assert out["ranking_loss"] == metrics.ranking_loss(T(s), T(y))
    assert out["lrap"] == metrics.label_ranking_average_precision(T(s), T(y))


# ---------------------------------------------------------------------------
# hand-checked values and conventions
# ---------------------------------------------------------------------------


def test_small_hand_example():
    s = torch.tensor([[0.9, 0.2, 0.6], [0.1, 0.8, 0.8], [0.3, 0.3, 0.3]])
    y = torch.tensor([[1, 0, 0], [0, 0, 1], [0, 0, 0]])
    # sample 0: top=0 true; sample 1: argmax -> first max (index 1) false;
    # sample 2: no positive -> counted as an error (MULAN)
    assert metrics.one_error(s, y) == pytest.approx(2 / 3, abs=TOL)
    # coverage: sample0 -> 1, sample1 -> 2 (tie counts), sample2 -> 0
    assert metrics.coverage_error(s, y) == pytest.approx(1.0, abs=TOL)
    # ranking loss: sample0 -> 0, sample1 -> (0.8>=0.8) 1 of 2 pairs, sample2 -> 0
    assert metrics.ranking_loss(s, y) == pytest.approx(0.5 / 3, abs=TOL)
    # AP of label 1 (no positive) is NaN; mAP averages the other two
    ap = metrics.average_precision(s, y)
    assert math.isnan(ap[1].item())
    assert ap[0].item() == pytest.approx(1.0, abs=TOL)
    # label 2: scores .6 (neg), .8 (pos), .3 (neg) -> positive ranked first
    assert ap[2].item() == pytest.approx(1.0, abs=TOL)
    assert metrics.mean_average_precision(s, y) == pytest.approx(100.0, abs=1e-8)


def test_map_all_labels_without_positive_is_nan():
    s = torch.rand(5, 3)
    y = torch.zeros(5, 3, dtype=torch.int64)
    assert math.isnan(metrics.mean_average_precision(s, y))
    assert torch.isnan(metrics.average_precision(s, y)).all()


def test_ranking_metrics_depend_only_on_order():
    s, y = _make(64, 9, "round1", 123)
    s = np.clip(s, 0.01, 0.99)
    logit = np.log(s / (1 - s))
    for fn in (
        metrics.one_error, metrics.coverage_error, metrics.ranking_loss,
        metrics.label_ranking_average_precision, metrics.mean_average_precision,
    ):
        assert abs(fn(T(s), T(y)) - fn(T(logit), T(y))) < 1e-9
    np.testing.assert_array_equal(
        metrics.oracle_topk_predictions(T(s), T(y)).numpy(),
        metrics.oracle_topk_predictions(T(logit), T(y)).numpy(),
    )


@pytest.mark.parametrize("sdtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("ydtype", [torch.bool, torch.int8, torch.uint8, torch.int32, torch.float32])
def test_dtypes(sdtype, ydtype):
    s, y = _make(50, 6, "cont", 7)
    s_low = T(s).to(sdtype)
    ref = metrics.evaluate(s_low.double(), T(y))
    out = metrics.evaluate(s_low, T(y).to(ydtype))
    for key, v in ref.items():
        assert out[key] == pytest.approx(v, abs=TOL, nan_ok=True), key


def test_non_contiguous_and_numpy_inputs_and_no_mutation():
    s, y = _make(20, 7, "round1", 11)
    st, yt = T(s.T.copy()).t(), T(y.T.copy()).t()  # transposed views
    assert not st.is_contiguous()
    s_copy, y_copy = st.clone(), yt.clone()
    a = metrics.evaluate(st, yt)
    b = metrics.evaluate(s, y)  # numpy arrays are accepted too
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], abs=TOL, nan_ok=True)
    assert torch.equal(st, s_copy) and torch.equal(yt, y_copy)


def test_vdfd():
    neg = torch.tensor([0.1, 0.5, 0.2], dtype=torch.float32)
    pos = torch.tensor([0.3, 0.1, 0.2], dtype=torch.float32)
    expected = (pos.double() - neg.double()).abs()
    out = metrics.vdfd(neg, pos)
    assert out.dtype == torch.float64 and out.shape == (3,)
    torch.testing.assert_close(out, expected, rtol=0, atol=TOL)
    torch.testing.assert_close(metrics.vdfd(torch.stack([neg, pos])), expected, rtol=0, atol=TOL)
    assert metrics.mean_vdfd(neg, pos) == pytest.approx(expected.mean().item(), abs=TOL)
    assert metrics.mean_vdfd(torch.stack([neg, pos])) == pytest.approx(expected.mean().item(), abs=TOL)


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------


ALL_2ARG = [
    metrics.average_precision, metrics.mean_average_precision, metrics.micro_f1,
    metrics.macro_f1, metrics.hamming_loss, metrics.one_error, metrics.coverage_error,
    metrics.ranking_loss, metrics.label_ranking_average_precision, metrics.class_accuracies,
    metrics.vca, metrics.oracle_topk_predictions, metrics.evaluate,
]


@pytest.mark.parametrize("fn", ALL_2ARG, ids=lambda f: f.__name__)
def test_input_errors(fn):
    s = torch.rand(4, 3)
    y = torch.randint(0, 2, (4, 3))
    with pytest.raises(ValueError, match="scores must be a 2-D"):
        fn(torch.rand(4), y)
    with pytest.raises(ValueError, match="targets must be a 2-D"):
        fn(s, torch.zeros(4, 3, 1))
    with pytest.raises(ValueError, match="targets shape .* does not match scores"):
        fn(s, torch.zeros(4, 2))
    with pytest.raises(ValueError, match="targets must contain only 0 and 1"):
        fn(s, y - 1)
    with pytest.raises(ValueError, match="targets must contain only 0 and 1"):
        fn(s, torch.full((4, 3), 0.5))
    bad = s.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="scores contains NaN"):
        fn(bad, y)
    with pytest.raises(TypeError, match="scores must be a floating-point"):
        fn(y, y)
    with pytest.raises(ValueError, match="at least one sample"):
        fn(torch.rand(0, 3), torch.zeros(0, 3))
    with pytest.raises(TypeError, match="scores must be a torch.Tensor"):
        fn("abc", y)


@pytest.mark.parametrize("fn", [metrics.micro_f1, metrics.macro_f1, metrics.hamming_loss,
                                metrics.class_accuracies, metrics.vca, metrics.evaluate])
def test_threshold_errors(fn):
    s, y = torch.rand(4, 3), torch.randint(0, 2, (4, 3))
    with pytest.raises(ValueError, match="threshold must not be NaN"):
        fn(s, y, threshold=float("nan"))
    with pytest.raises(TypeError, match="threshold must be a real number"):
        fn(s, y, threshold="0.5")


def test_vdfd_errors():
    with pytest.raises(ValueError, match=r"var must be a \[2, K\]"):
        metrics.vdfd(torch.rand(3, 4))
    with pytest.raises(ValueError, match=r"var must be a \[2, K\]"):
        metrics.vdfd(torch.rand(4))
    with pytest.raises(ValueError, match="var_neg shape .* does not match var_pos"):
        metrics.vdfd(torch.rand(3), torch.rand(4))
    with pytest.raises(ValueError, match="var_pos must be a 1-D"):
        metrics.vdfd(torch.rand(3), torch.rand(2, 3))


# ---------------------------------------------------------------------------
# CUDA
# ---------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
@pytest.mark.parametrize("oracle", [False, True])
def test_cuda_matches_cpu(oracle):
    s, y = _make(500, 20, "round1", 5)
    cpu = metrics.evaluate(T(s).float(), T(y).to(torch.int8), oracle_cardinality=oracle)
    gpu = metrics.evaluate(T(s).float().cuda(), T(y).to(torch.int8).cuda(), oracle_cardinality=oracle)
    for key in cpu:
        assert gpu[key] == pytest.approx(cpu[key], abs=TOL), key
    ap = metrics.average_precision(T(s).cuda(), T(y).cuda())
    assert ap.device.type == "cuda"
    torch.testing.assert_close(ap.cpu(), metrics.average_precision(T(s), T(y)), rtol=0, atol=TOL, equal_nan=True)
    p = metrics.oracle_topk_predictions(T(s).cuda(), T(y).cuda())
    assert torch.equal(p.cpu(), metrics.oracle_topk_predictions(T(s), T(y)))
    with pytest.raises(ValueError, match="same device"):
        metrics.evaluate(T(s).cuda(), T(y))


def test_cpu_kernel_and_sort_paths_agree(monkeypatch):
    """The two ranking paths give the same metrics: the integer-valued ones exactly, the
    precision sums (AP, LRAP) to rounding."""
    gen = torch.Generator().manual_seed(4)
    s = torch.round(torch.rand(3000, 200, generator=gen) * 40) / 40
    y = (torch.rand(3000, 200, generator=gen) < 0.05).to(torch.int8)
    kernel = metrics.evaluate(s, y)
    ap_kernel = metrics.average_precision(s, y)
    monkeypatch.setattr(metrics, "_use_cpu_kernel", lambda s: False)
    torch_path = metrics.evaluate(s, y)
    torch.testing.assert_close(ap_kernel, metrics.average_precision(s, y), rtol=1e-13, atol=0, equal_nan=True)
    for key in ("micro_f1", "macro_f1", "hamming_loss", "one_error", "coverage", "ranking_loss", "vca"):
        assert kernel[key] == torch_path[key], key
    for key in ("mAP", "lrap"):
        assert kernel[key] == pytest.approx(torch_path[key], rel=1e-13), key
