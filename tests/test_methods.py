"""The method seam: each method's loss and refresh on small hand-computed cases, resume of
every method, a method defined here (outside bbam/) trained through ``method._target_``,
views and batch pipelines, and runs saved before methods were classes (once migrated by
``python -m bbam.migrate``)."""
from __future__ import annotations

import json
import math
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from bbam.app.batches import Batch, LoaderBatches, TensorBatches, index_batches
from bbam.app.methods import BAM, BBAM, CAP, FixMatch, Method, SoftMatch, Supervised, build_method
from bbam.app.methods.base import MethodContext
from bbam.app.views import FeatureViews, TokenViews
from bbam.losses import BCELoss
from bbam.migrate import main as migrate_main
from bbam.migrate import method_config
from bbam.train import compose_config, train

METHODS = ["supervised", "cap", "bam", "bbam", "bbam_cls", "fixmatch", "softmatch"]
SMALL = ["data.num_samples=400", "model.encoder.hidden=[32]", "model.encoder.out_dim=16", "train.epochs=5",
         "train.warmup_epochs=2", "train.min_steps_per_epoch=3", "train.progress=false"]
LEGACY = Path(__file__).parent / "fixtures" / "legacy_run"  # written by the code before the method seam


def _migrated(tmp_path: Path, name: str) -> Path:
    """A copy of the legacy run ``name`` (finished / interrupted), migrated by ``python -m bbam.migrate``."""
    run = tmp_path / name
    shutil.copytree(LEGACY / name, run)
    assert migrate_main([str(run)]) == 0
    return run


def _softplus(x: float) -> float:
    return math.log1p(math.exp(-abs(x))) + max(x, 0.0)


def _bce(logit: float, y: int) -> float:
    return _softplus(-logit) if y == 1 else _softplus(logit)


def _forward(table):
    """A stand-in for the engine's forward: each input tensor's preset outputs."""
    return lambda xs: [table[id(x)] for x in xs]


def _bound(method: Method, num_labels: int, labeled_y=None, unlabeled_y=None) -> Method:
    """``method`` bound to a minimal engine (labeled / unlabeled targets only)."""
    lb_y = labeled_y if labeled_y is not None else torch.zeros(2, num_labels, dtype=torch.int8)
    ub_y = unlabeled_y if unlabeled_y is not None else torch.zeros(2, num_labels, dtype=torch.int8)
    method.bind(_context(m_splits(lb_y, ub_y)))
    return method


def _context(splits, scores=None) -> MethodContext:
    """A :class:`MethodContext` of ``splits`` whose EMA scores are ``scores`` (no model)."""
    def no_model(*args, **kwargs):
        raise AssertionError("this test's context has no model")

    return MethodContext(splits=splits, device=torch.device("cpu"), world=1, seed=0, epoch=0, feature_dim=1,
                         save_epoch_state=False, scores_global=no_model if scores is None else
                         (lambda x, label_major=False, source="ema": scores.T.contiguous().T if label_major
                          else scores), features=no_model, outputs=no_model, classifier_weight=no_model)


# ----------------------------------------------------------------------------- losses
def test_supervised_loss_is_the_summed_binary_cross_entropy():
    m = _bound(Supervised(), 2)
    x, y = torch.zeros(1, 3), torch.tensor([[1, 0]], dtype=torch.int8)
    loss = m.warmup_loss(_forward({id(x): torch.tensor([[2.0, -1.0]])}), Batch(torch.tensor([0]), x, y))
    assert float(loss) == pytest.approx(_bce(2.0, 1) + _bce(-1.0, 0), rel=1e-6)
    assert not m.semi_supervised and m.head == "linear"


def test_cap_loss_uses_the_epochs_pseudo_labels_and_masks():
    m = _bound(CAP(gamma_neg=4.0, gamma_pos=0.0, clip=0.05), 1)
    m.targets_ub = torch.tensor([[1], [0], [-1]], dtype=torch.int8)
    m.weight_lb = torch.tensor([[True], [True]])
    m.weight_ub = torch.tensor([[True], [False], [True]])  # row 1's negative is masked out this epoch
    x_l, x_u = torch.zeros(1, 2), torch.zeros(2, 2)
    lb = Batch(torch.tensor([1]), x_l, torch.tensor([[0]], dtype=torch.int8))
    ub = Batch(torch.tensor([0, 1]), x_u)
    logit_l, logit_u = 0.5, [1.5, 3.0]
    loss = m.loss(_forward({id(x_l): torch.tensor([[logit_l]]), id(x_u): torch.tensor([[v] for v in logit_u])}), lb, ub)

    def asl_negative(z):  # -(p - clip)^4 log(1 - (p - clip))
        pm = max(1 / (1 + math.exp(-z)) - 0.05, 0.0)
        return -(pm ** 4) * math.log(1 - pm)

    expected = asl_negative(logit_l) + _softplus(-logit_u[0])  # row 0: a pseudo-positive; row 1: masked
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_cap_on_both_views_sums_their_losses_with_the_same_pseudo_labels():
    m = _bound(CAP(gamma_neg=4.0, gamma_pos=0.0, clip=0.05, unlabeled_views=["weak", "strong"]), 1)
    assert m.views == ("weak", "strong")
    m.targets_ub = torch.tensor([[1], [0]], dtype=torch.int8)
    m.weight_lb, m.weight_ub = torch.tensor([[False]]), torch.tensor([[True], [False]])
    x_l, x_u, w, s = torch.zeros(1, 2), torch.zeros(2, 2), torch.ones(2, 2), torch.full((2, 2), 2.0)
    lb = Batch(torch.tensor([0]), x_l, torch.tensor([[0]], dtype=torch.int8))
    ub = Batch(torch.tensor([0, 1]), x_u, views={"weak": w, "strong": s})
    table = {id(x_l): torch.tensor([[0.5]]), id(x_u): torch.tensor([[9.0], [9.0]]),
             id(w): torch.tensor([[1.0], [4.0]]), id(s): torch.tensor([[-2.0], [4.0]])}
    loss = m.loss(_forward(table), lb, ub)  # the plain unlabeled inputs are not read; row 1 is masked
    assert float(loss) == pytest.approx(_softplus(-1.0) + _softplus(2.0), rel=1e-6)
    with pytest.raises(ValueError, match="'method.unlabeled_views' must list distinct views among weak, strong"):
        CAP(unlabeled_views=["weak", "medium"])


def test_bam_and_bbam_losses_and_scores_by_hand():
    margin, scale = 0.3, 10.0
    # BAM: logit = s * (cos - y * m)
    bam = _bound(BAM(margin=margin, scale=scale), 1)
    x = torch.zeros(2, 1)
    cos = torch.tensor([[0.6], [-0.2]])
    lb = Batch(torch.tensor([0, 1]), x, torch.tensor([[1], [0]], dtype=torch.int8))
    loss = bam.warmup_loss(_forward({id(x): cos}), lb)
    assert float(loss) == pytest.approx(_bce(scale * (0.6 - margin), 1) + _bce(scale * -0.2, 0), rel=1e-5)
    # scores: sigmoid(s * (phi - f * m)), phi = cos with the identity transform
    assert float(bam.scores(torch.tensor([[0.6]]))) == pytest.approx(1 / (1 + math.exp(-scale * (0.6 - 0.5 * margin))),
                                                                    rel=1e-5)
    # BBAM: statistics give a_s = sqrt(v / var_s), b_s = (1 - a_s) mu_s; theta' = a_y theta + b_y
    bbam = _bound(BBAM(margin=margin, scale=scale, stats_gamma=0.0), 1)
    count = torch.tensor([[20.0], [10.0]])
    mean = torch.tensor([[1.6], [0.9]])
    var = torch.tensor([[0.04], [0.01]])
    bbam.stats.update_from_stats(count, mean, var * (count - 1))
    v = float(var.mean())
    a = [math.sqrt(v / float(var[s])) for s in (0, 1)]
    b = [(1 - a[s]) * float(mean[s]) for s in (0, 1)]
    bbam.targets_ub = torch.tensor([[1]], dtype=torch.int8)
    bbam.weight_lb, bbam.weight_ub = torch.tensor([[True], [True]]), torch.tensor([[True]])
    x_u = torch.zeros(1, 1)
    weight_row = Batch(torch.tensor([0]), x_u)
    total = bbam.loss(_forward({id(x): cos, id(x_u): torch.tensor([[0.8]])}), lb, weight_row)

    def term(c, y):
        phi = math.cos(a[y] * math.acos(c) + b[y])
        return _bce(scale * (phi - y * margin), y)

    assert float(total) == pytest.approx(term(0.6, 1) + term(-0.2, 0) + term(0.8, 1), rel=1e-4)
    # inference transform: the average of both polarities' coefficients
    phi = math.cos(0.5 * (a[0] + a[1]) * math.acos(0.8) + 0.5 * (b[0] + b[1]))
    assert float(bbam.scores(torch.tensor([[0.8]]))) == pytest.approx(
        1 / (1 + math.exp(-scale * (phi - 0.5 * margin))), rel=1e-4)


def test_fixmatch_trains_the_strong_view_on_confident_weak_pseudo_labels():
    m = _bound(FixMatch(threshold=0.9, lambda_u=2.0), 2, unlabeled_y=torch.tensor([[1, 0], [0, 0]], dtype=torch.int8))
    x_l, w, s = torch.zeros(1, 1), torch.zeros(2, 1), torch.zeros(2, 1)
    weak = torch.tensor([[3.0, 0.1], [-4.0, 1.0]])  # confidences 0.953, 0.525 / 0.982, 0.731
    strong = torch.tensor([[0.5, -2.0], [1.0, 0.0]])
    lb = Batch(torch.tensor([0]), x_l, torch.tensor([[1, 1]], dtype=torch.int8))
    ub = Batch(torch.tensor([0, 1]), torch.zeros(2, 1), views={"weak": w, "strong": s})
    m.refresh(_context(m_splits(torch.zeros(1, 2, dtype=torch.int8), torch.zeros(2, 2, dtype=torch.int8))))
    loss = m.loss(_forward({id(x_l): torch.tensor([[0.0, 1.0]]), id(w): weak, id(s): strong}), lb, ub)
    labeled = _bce(0.0, 1) + _bce(1.0, 1)
    unlabeled = _bce(0.5, 1) + _bce(1.0, 0)  # (0, 0): pseudo 1; (1, 0): pseudo 0; the others below 0.9
    assert float(loss) == pytest.approx(labeled + 2.0 * unlabeled, rel=1e-6)
    logged = m.end_epoch()
    assert logged["pseudo_confident"] == pytest.approx(2 / 4)
    assert logged["pseudo_accuracy"] == pytest.approx(1.0)  # both confident pseudo-labels are right


def test_softmatch_weights_are_a_truncated_gaussian_of_the_running_confidence():
    m = _bound(SoftMatch(momentum=0.5, n_sigma=2.0, lambda_max=1.0), 1)
    p = torch.tensor([[0.9], [0.6], [0.2]])  # confidences 0.9, 0.6, 0.8
    conf = torch.maximum(p, 1 - p)
    weight = m.unlabeled_weight(p)
    c = [0.9, 0.6, 0.8]
    mean = sum(c) / 3
    var_b = sum((v - mean) ** 2 for v in c) / 2
    mu, var = 0.5 * 0.5 + 0.5 * mean, 0.5 * 1.0 + 0.5 * var_b  # EMA from the start (0.5, 1)
    expected = [1.0 if v >= mu else math.exp(-(v - mu) ** 2 / (2 * var / 4.0)) for v in c]
    assert weight.flatten().tolist() == pytest.approx(expected, rel=1e-5)
    assert float(m.mu) == pytest.approx(mu) and float(m.var) == pytest.approx(var)
    fresh = _bound(SoftMatch(momentum=0.5), 1)
    fresh.load_state_dict(m.state_dict())
    assert torch.equal(fresh.mu, m.mu) and torch.equal(fresh.var, m.var)


# ----------------------------------------------------------------------------- refresh
def test_cap_refresh_pseudo_labels_by_class_aware_ranks():
    labeled = torch.tensor([[1], [0], [1], [0]], dtype=torch.int8)  # positive rate 0.5
    truth = torch.tensor([[1], [0], [0], [0]], dtype=torch.int8)
    m = _bound(CAP(neg_per=0.5), 1, labeled_y=labeled, unlabeled_y=truth)
    scores = torch.tensor([[0.9], [0.1], [0.8], [0.3]])
    logged = m.refresh(_context(m_splits(labeled, truth), scores))
    # top ceil(0.5 * 4) = 2 rows are pseudo-positive; the bottom 0.5 * 0.5 * 4 = 1 row a confident negative
    assert m.targets_ub.flatten().tolist() == [1, 0, 1, -1]
    assert logged["pseudo_confident"] == pytest.approx(3 / 4)
    assert logged["pseudo_accuracy"] == pytest.approx(2 / 3)  # row 2 is a wrong pseudo-positive
    m.end_epoch()
    assert m.targets_ub is None  # per-epoch state is not kept past the epoch


def m_splits(labeled, truth):
    return {"labeled": types.SimpleNamespace(y=labeled, x=torch.zeros(len(labeled), 1)),
            "unlabeled": types.SimpleNamespace(y=truth, x=torch.zeros(len(truth), 1))}


def test_consistency_refresh_only_resets_the_epochs_counts():
    m = _bound(FixMatch(), 1, unlabeled_y=torch.tensor([[1]], dtype=torch.int8))
    m._log(torch.tensor([[1]], dtype=torch.int8), torch.tensor([[1.0]]), torch.tensor([0]))
    ctx = _context(m_splits(torch.zeros(1, 1, dtype=torch.int8), torch.tensor([[1]], dtype=torch.int8)))
    assert m.refresh(ctx) == {} and m.end_epoch()["pseudo_confident"] == 0.0


# ----------------------------------------------------------------------------- end to end
def _run(tmp_path: Path, name: str, *overrides: str):
    cfg = compose_config(SMALL + list(overrides))
    cfg.out_dir = str(tmp_path / name)
    return cfg, train(cfg)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_resumes_to_the_uninterrupted_result(tmp_path, method):
    _, full = _run(tmp_path, "full", f"method={method}")
    cfg, stopped = _run(tmp_path, "stopped", f"method={method}", "train.stop_after_epoch=2")
    assert stopped["interrupted"]
    ckpt = torch.load(tmp_path / "stopped" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["method"] == method and "method_state" in ckpt
    _, resumed = _run(tmp_path, "resumed", f"method={method}", f"train.resume={cfg.out_dir}/checkpoints/last.pt")
    assert resumed["test"] == full["test"]
    history = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    if method != "supervised":
        assert [r["phase"] for r in history][:3] == ["warmup", "warmup", "self_training"]
        assert "pseudo_confident" in history[2]


class EntropyMinimisation(Method):
    """A toy method defined outside bbam/: BCE on labeled rows plus the entropy of the
    predictions on the strong view of unlabeled rows (Grandvalet & Bengio 2005)."""

    views = ("strong",)

    def __init__(self, name: str = "entmin", weight: float = 0.1):
        super().__init__(name)
        self.weight, self.bce, self.calls = weight, BCELoss(), 0

    def warmup_loss(self, forward, lb):
        (out,) = forward([lb.x])
        return self.bce(out, lb.y)

    def loss(self, forward, lb, ub):
        self.calls += 1
        out_l, out_s = forward([lb.x, ub.views["strong"]])
        p = torch.sigmoid(out_s).clamp(1e-6, 1 - 1e-6)
        return self.bce(out_l, lb.y) - self.weight * (p * p.log() + (1 - p) * (1 - p).log()).sum()


def test_a_method_defined_outside_the_package_trains_through_its_target(tmp_path):
    cfg, result = _run(tmp_path, "toy", "method=supervised", f"method._target_={__name__}.EntropyMinimisation",
                       "method.name=entmin", "+method.weight=0.2")
    assert result["method"] == "entmin" and result["selected_phase"] == "self_training"
    assert math.isfinite(result["test"]["mAP"])
    history = [json.loads(line) for line in (tmp_path / "toy" / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in history].count("self_training") == 3


def test_dataloader_pipeline_gives_the_tensor_pipelines_run(tmp_path):
    _, tensor = _run(tmp_path, "tensor", "method=fixmatch", "train.epochs=3")
    _, loader = _run(tmp_path, "loader", "method=fixmatch", "train.epochs=3", "train.loader=dataloader",
                     "train.num_workers=2")
    assert loader["test"] == tensor["test"]


# ----------------------------------------------------------------------------- pipelines and views
def test_pipelines_hand_out_the_same_batches_and_views():
    x, y = torch.randn(37, 5), torch.randint(0, 2, (37, 3), dtype=torch.int8)
    plan = index_batches(37, 8, seed=3, epoch=2, stream=1, min_batches=7)
    views = FeatureViews(weak_noise=0.05)
    a = list(TensorBatches(x, y, views, ("weak", "strong"))(plan, 3, 2))
    b = list(LoaderBatches(x, y, views, ("weak", "strong"), num_workers=2)(plan, 3, 2))
    assert len(a) == len(b) == 7
    for p, q, idx in zip(a, b, plan):
        assert torch.equal(p.idx, idx) and torch.equal(q.idx, idx)
        assert torch.equal(p.x, x[idx]) and torch.equal(q.x, x[idx]) and torch.equal(p.y, q.y)
        assert all(torch.equal(p.views[k], q.views[k]) for k in ("weak", "strong"))
    with pytest.raises(ValueError, match="views"):
        TensorBatches(x, y, None, ("weak",))


def test_feature_views_mask_entries_with_other_rows_values():
    x = torch.arange(400 * 50, dtype=torch.float32).view(400, 50)
    g = torch.Generator().manual_seed(0)
    strong = FeatureViews(strong_mask=0.3, strong_noise=0.0)("strong", x, g)
    changed = strong != x
    assert 0.27 < float(changed.float().mean()) < 0.33
    # a masked entry holds the same feature of another row (values of column j are j mod 50)
    assert torch.equal(strong.long() % 50, x.long() % 50)
    assert torch.equal(FeatureViews()("weak", x, g), x)
    zero = FeatureViews(strong_mask=0.5, strong_noise=0.0, mask_fill="zero")("strong", x + 1, g)
    assert set(zero[zero != x + 1].tolist()) == {0.0}
    noisy = FeatureViews(strong_mask=0.0, strong_noise=0.1)("strong", x, g)
    ratio = float(((noisy - x) / x.std(0)).std())
    assert 0.09 < ratio < 0.11
    with pytest.raises(ValueError, match="views.strong_mask"):
        FeatureViews(strong_mask=1.5)
    with pytest.raises(ValueError, match="views.mask_fill"):
        FeatureViews(mask_fill="mean")


def test_token_views_drop_tokens_only():
    ids = torch.randint(1, 100, (200, 30)).float()
    ids[:, 25:] = 0  # padding
    strong = TokenViews(strong_drop=0.3)("strong", ids, torch.Generator().manual_seed(1))
    dropped = (strong == 0) & (ids != 0)
    assert 0.27 < float(dropped.float().sum() / (ids != 0).sum()) < 0.33
    assert torch.equal(strong[strong != 0], ids[strong != 0])
    assert torch.equal(TokenViews()("weak", ids, torch.Generator()), ids)


# ----------------------------------------------------------------------------- runs from before the seam (migrated)
@pytest.mark.parametrize("name, cls", [("supervised", Supervised), ("cap", CAP), ("bam", BAM), ("bbam", BBAM),
                                       ("bbam_cls", BBAM)])
def test_flag_configs_of_older_runs_map_to_the_classes(name, cls):
    old = {"name": name, "head": "linear" if name in ("supervised", "cap") else "cosine", "margin": 0.2,
           "scale": 30.0, "self_training": name != "supervised", "balance": name.startswith("bbam"),
           "negative_sampling": name not in ("supervised", "cap"), "stats_angles":
           "classifier" if name == "bbam_cls" else "prototype", "cap": {"pos_per": 1.0, "neg_per": 0.9},
           "sampling": {"_target_": "bbam.sampling.NegativeSampler", "eta": 3.0},
           "loss": {"_target_": "bbam.losses.AsymmetricLoss", "gamma_neg": 2.0}}
    conf = method_config(old)  # what python -m bbam.migrate writes into config.yaml
    assert list(conf)[:2] == ["_target_", "name"] and conf["_target_"] == f"bbam.app.methods.{cls.__name__}"
    method = build_method(OmegaConf.create(conf))
    assert type(method) is cls and method.name == name
    if isinstance(method, BAM):
        assert (method.margin, method.scale, method.cap.neg_per) == (0.2, 30.0, 0.9)
        assert method.sampler.eta == 3.0
    if isinstance(method, BBAM):
        assert method.stats_angles == old["stats_angles"]
    if type(method) is CAP:
        assert method.loss_fn.gamma_neg == 2.0
    assert method_config({"_target_": "x.Y", "a": 1}) == {"_target_": "x.Y", "a": 1}
    with pytest.raises(ValueError, match="no _target_.*python -m bbam.migrate"):  # flags are not read any more
        build_method(OmegaConf.create(old))


def test_a_run_saved_before_the_seam_still_predicts(tmp_path):
    from bbam.app.predict import Predictor

    expected = np.load(LEGACY / "expected_scores.npz")
    p = Predictor.from_run(_migrated(tmp_path, "finished"))
    assert isinstance(p.method, BBAM)
    # The stored scores were computed on another CPU: float32 sums in another order (AVX-512 vs
    # AVX2 kernels) move each cosine by a few ulps (~1e-7), i.e. a logit by scale (20) x that
    # (~1e-5 at most for this 64 -> 16 -> 8 MLP), hence a score by at most 2.5e-6 absolute
    # and 2e-5 relative. A changed computation moves scores by orders of magnitude more.
    np.testing.assert_allclose(p.predict_proba(expected["X"]), expected["scores"], rtol=2e-5, atol=1e-7)


def test_a_checkpoint_saved_before_the_seam_still_resumes(tmp_path):
    run = _migrated(tmp_path, "interrupted")
    overrides = ["data.num_samples=400", "model.encoder.hidden=[16]", "model.encoder.out_dim=8", "train.epochs=5",
                 "train.warmup_epochs=2", "train.min_steps_per_epoch=3", "train.progress=false"]
    cfg = compose_config(overrides + [f"train.resume={run}/checkpoints/last.pt"])
    cfg.out_dir = str(tmp_path / "resumed")
    result = train(cfg)
    old = json.loads((LEGACY / "finished" / "final_metrics.json").read_text())
    # the old code's uninterrupted run, written on another CPU: the same selected epoch and the
    # same ranking of the test scores (mAP moves only when two scores swap, by far more than 1e-6)
    assert result["best_epoch"] == old["best_epoch"]
    assert result["test"]["mAP"] == pytest.approx(old["test"]["mAP"], abs=1e-6)
