"""The learning pipeline's fixes: feature scaling, step counts, modality defaults, model
selection, validation size, which model's features feed the statistics, statistics on
classifier angles, the random-negatives variant, the linear encoder and the baseline tool."""
from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bbam import ops
from bbam.data import make_synthetic, split_indices
from bbam.app.batches import index_batches
from bbam.app.models import LinearEncoder
from bbam.app.preprocess import FeatureScaler
from bbam.sampling import NegativeSampler
from bbam.app.plan import prepare
from bbam.app.run import build_engine
from bbam.train import compose_config, train

ROOT = Path(__file__).resolve().parents[1]
TINY_DATA = ["data.num_samples=400", "data.num_labels=5", "data.num_features=12", "train.progress=false"]
TINY = TINY_DATA + ["model.encoder.hidden=[16]", "model.encoder.out_dim=8"]


def _cfg(tmp_path, *overrides):
    cfg = compose_config([*TINY, *overrides])
    cfg.out_dir = str(tmp_path)
    return cfg


# ----------------------------------------------------------------------------- scaling
def test_constant_in_pool_feature_maps_to_zero():
    pool = torch.tensor([[1.0, 5.0], [3.0, 5.0], [5.0, 5.0]])
    scaler = FeatureScaler("standardize").fit(pool)
    test = torch.tensor([[3.0, 7.0], [3.0, 0.0]])  # feature 1 never varied in the pool
    out = scaler.transform(test)
    assert torch.equal(out[:, 1], torch.zeros(2))  # a clamped std made these ~2e6 and ~-5e6
    assert out[:, 0].tolist() == [0.0, 0.0]
    assert torch.allclose(scaler.transform(pool)[:, 0], torch.tensor([-1.2247, 0.0, 1.2247]), atol=1e-4)


def test_tfidf_l2_and_l2_scaling():
    from sklearn.feature_extraction.text import TfidfTransformer

    rng = np.random.default_rng(0)
    pool = (rng.random((30, 7)) < 0.3).astype(np.float32)
    pool[:, 6] = 0  # a word never seen in the pool
    new = (rng.random((5, 7)) < 0.5).astype(np.float32)
    ours = FeatureScaler("tfidf_l2").fit(torch.from_numpy(pool)).transform(torch.from_numpy(new))
    theirs = TfidfTransformer(norm="l2", smooth_idf=True).fit(pool).transform(new).toarray()
    np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-6)
    l2 = FeatureScaler("l2").fit(torch.from_numpy(pool)).transform(torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
    assert torch.allclose(l2, torch.tensor([[0.6, 0.8], [0.0, 0.0]]))
    assert FeatureScaler("none").fit(torch.ones(2, 2)).transform(torch.full((1, 2), 7.0)).tolist() == [[7.0, 7.0]]


def test_scaling_errors_name_the_key():
    with pytest.raises(ValueError, match="train.scaling"):
        FeatureScaler("zscore")
    with pytest.raises(ValueError, match="tfidf_l2.*negative"):
        FeatureScaler("tfidf_l2").fit(torch.tensor([[-1.0, 2.0]]))
    scaler = FeatureScaler("standardize").fit(torch.ones(3, 2))
    with pytest.raises(ValueError, match="3 features.*fitted on 2"):
        scaler.transform(torch.ones(1, 3))


def test_data_configs_set_modality_defaults():
    for name in ("medical", "enron", "bibtex", "reuters21578"):
        cfg = compose_config([f"data={name}"])
        assert (cfg.train.scaling, cfg.method.margin, cfg.method.scale) == ("tfidf_l2", 0.2, 30.0), name
    for name in ("emotions", "scene", "yeast"):
        cfg = compose_config([f"data={name}"])
        assert cfg.train.scaling == "standardize", name
    cfg = compose_config(["data=medical", "method.margin=0.3", "train.scaling=none"])
    assert (cfg.method.margin, cfg.train.scaling) == (0.3, "none")  # the command line still wins


# ----------------------------------------------------------------------------- schedule
def test_every_epoch_gets_the_minimum_number_of_steps(tmp_path):
    # 400 samples, lb 0.05: ~14 labeled rows, one batch of 64 -> 1 step per warm-up epoch without the rule
    cfg = _cfg(tmp_path, "split.lb_ratio=0.05", "train.epochs=3", "train.warmup_epochs=2",
               "train.min_steps_per_epoch=7", "train.unlabeled_batch_size=512")
    plan = prepare(cfg)
    data, tensors = plan.data, plan.tensors
    engine = build_engine(plan, tmp_path)
    assert len(tensors["labeled"]) < cfg.train.batch_size
    engine.fit(progress=False)
    assert int(engine.ema.updates) == 3 * 7  # 2 warm-up epochs + 1 self-training epoch, 7 steps each
    big = _cfg(tmp_path / "b", "train.min_steps_per_epoch=1", "train.batch_size=4")
    plan2 = prepare(big)
    t2 = plan2.tensors
    e2 = build_engine(plan2, tmp_path / "b")
    assert e2.steps_per_epoch("warmup") == math.ceil(len(t2["labeled"]) / 4)  # a full pass when that is more


def test_batches_cover_rows_evenly_and_repeat_deterministically(tmp_path):
    cfg = _cfg(tmp_path)
    plan = prepare(cfg)
    data, tensors = plan.data, plan.tensors
    engine = build_engine(plan, tmp_path)
    batches = index_batches(10, 4, engine.seed, epoch=3, stream=0, min_batches=9)
    assert len(batches) == 9
    rows = torch.cat(batches[:3]).sort().values
    assert rows.tolist() == list(range(10))  # the first pass is a permutation
    again = index_batches(10, 4, engine.seed, epoch=3, stream=0, min_batches=9)
    assert all(torch.equal(a, b) for a, b in zip(batches, again))


# ----------------------------------------------------------------------------- splits
def test_small_pools_get_a_validation_split_that_can_rank():
    data = make_synthetic(num_samples=400, num_features=8, num_labels=4, seed=0)
    old = split_indices(data, 0.1, val_ratio=0.1, test_ratio=0.2, seed=0)
    new = split_indices(data, 0.1, val_ratio=0.1, test_ratio=0.2, seed=0, min_val_size=200, max_val_ratio=0.25)
    assert len(old["val"]) == 32 and len(new["val"]) == 80  # 0.25 * 320 pool rows
    mid = split_indices(data, 0.1, val_ratio=0.1, test_ratio=0.2, seed=0, min_val_size=48, max_val_ratio=0.25)
    assert len(mid["val"]) == 48
    covered = torch.cat(list(new.values())).sort().values
    assert covered.tolist() == list(range(400))


# ----------------------------------------------------------------------------- selection
def _fit_with_falling_validation(tmp_path, *overrides):
    """An engine whose validation mAP falls every epoch: the warm-up always looks best."""
    cfg = _cfg(tmp_path, "train.epochs=5", "train.warmup_epochs=3", "train.min_steps_per_epoch=1", *overrides)
    plan = prepare(cfg)
    data, tensors = plan.data, plan.tensors
    engine = build_engine(plan, tmp_path)
    engine.evaluate = lambda split, model=None: {"mAP": 50.0 - len(engine.state.history)}
    engine.fit(progress=False)
    return engine


def test_self_training_methods_select_a_self_training_epoch(tmp_path):
    default = _fit_with_falling_validation(tmp_path / "st")
    assert default.state.best_epoch == 3 and default.selected_phase() == "self_training"
    anyone = _fit_with_falling_validation(tmp_path / "any", "train.select_from=any")
    assert anyone.state.best_epoch == 0 and anyone.selected_phase() == "warmup"
    sup = _fit_with_falling_validation(tmp_path / "sup", "method=supervised")
    assert sup.state.best_epoch == 0 and sup.selected_phase() == "supervised"
    with pytest.raises(ValueError, match="train.select_from"):
        train(_cfg(tmp_path / "bad", "train.select_from=best"))


# ----------------------------------------------------------------------------- statistics
@pytest.mark.parametrize("features_from", ["online", "ema"])
@pytest.mark.parametrize("stats_angles", ["prototype", "classifier"])
def test_statistics_read_the_configured_model_and_angles(tmp_path, features_from, stats_angles):
    cfg = _cfg(tmp_path, "train.epochs=3", "train.warmup_epochs=2", "train.min_steps_per_epoch=3",
               "method.stats_gamma=0.0", f"method.features_from={features_from}", f"method.stats_angles={stats_angles}")
    plan = prepare(cfg)
    data, tensors = plan.data, plan.tensors
    engine = build_engine(plan, tmp_path)
    engine.fit(progress=False, stop_after_epoch=1)  # warm-up done, no statistics yet
    engine.method.refresh(engine.context())
    method = engine.method
    model = engine.model if features_from == "online" else engine.ema.module
    lb, ub = tensors["labeled"], tensors["unlabeled"]
    with torch.no_grad():
        feats = torch.cat([model.eval()(lb.x)[0], model(ub.x)[0]])
    targets = torch.cat([lb.y, method.targets_ub])
    pos = (targets == 1).double()
    protos = (pos.T @ feats.double() / pos.sum(0).clamp(min=1)[:, None]).float()
    assert torch.allclose(method.prototypes, protos, atol=1e-5)
    anchors = protos if stats_angles == "prototype" else model.classifier_weight.detach()
    count, mean, m2 = ops.label_angle_stats(feats, anchors, targets)
    seen = count > 0
    assert torch.allclose(method.stats.mean[seen], mean[seen], atol=1e-5)
    if features_from == "online":  # the two models differ after the warm-up: the test can tell them apart
        with torch.no_grad():
            other = torch.cat([engine.ema.module(lb.x)[0], engine.ema.module(ub.x)[0]])
        assert not torch.allclose(other, feats, atol=1e-4)


def test_refresh_pseudo_labels_and_logged_summaries(tmp_path):
    """The pseudo-labels of an epoch are CAP's on the EMA model's scores, the logged
    summaries are exact counts, and the features-only prediction is the full model's
    features bit for bit (the classifier head is skipped, not approximated)."""
    cfg = _cfg(tmp_path, "train.epochs=3", "train.warmup_epochs=2", "train.min_steps_per_epoch=3")
    plan = prepare(cfg)
    data, tensors = plan.data, plan.tensors
    engine = build_engine(plan, tmp_path)
    engine.fit(progress=False, stop_after_epoch=1)
    p = engine.method.refresh(engine.context())
    method = engine.method
    lb, ub = tensors["labeled"], tensors["unlabeled"]
    scores, feats, outs = engine.outputs(ub.x)
    targets, mask = method.cap(scores)
    assert torch.equal(method.targets_ub, targets.masked_fill(~mask, -1))
    known = method.targets_ub >= 0
    assert p["pseudo_confident"] == known.sum().item() / known.numel()
    assert p["pseudo_accuracy"] == pytest.approx(
        (method.targets_ub == ub.y).sum().item() / known.sum().item(), rel=1e-6)
    negatives = lb.y == 0
    assert p["neg_kept_lb"] == (method.weight_lb & negatives).sum().item() / negatives.sum().item()
    _, only, _ = engine.outputs(ub.x, engine.model, keep=("features",))
    with torch.no_grad():
        assert torch.equal(only, torch.cat([engine.model.eval()(ub.x[i:i + 1024])[0]
                                            for i in range(0, len(ub.x), 1024)]))
    out = torch.empty_like(only)
    engine.outputs(ub.x, engine.model, keep=("features",), features_out=out)
    assert torch.equal(out, only)
    with pytest.raises(ValueError, match="features_out"):
        engine.outputs(ub.x, keep=("scores",), features_out=out)
    with pytest.raises(ValueError, match="features_out"):
        engine.outputs(ub.x, keep=("features",), features_out=out[1:])


def test_bad_method_switches_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="method.stats_angles"):
        train(_cfg(tmp_path / "a", "method.stats_angles=weights"))
    with pytest.raises(ValueError, match="method.features_from"):
        train(_cfg(tmp_path / "b", "method.features_from=teacher"))


def test_bbam_cls_is_bbam_with_classifier_statistics():
    cls, paper = compose_config(["method=bbam_cls"]).method, compose_config(["method=bbam"]).method
    assert cls.stats_angles == "classifier" and paper.stats_angles == "prototype"
    assert {k: v for k, v in cls.items() if k not in ("name", "stats_angles")} == \
        {k: v for k, v in paper.items() if k not in ("name", "stats_angles")}


# ----------------------------------------------------------------------------- sampling variant
def test_random_share_keeps_hardest_plus_a_share_of_the_rest():
    torch.manual_seed(0)
    N, K, D = 3000, 4, 8
    feats, protos = torch.randn(N, D), torch.randn(K, D)
    targets = (torch.rand(N, K) < 0.05).to(torch.int8)
    targets[:50, 0] = -1
    hard = NegativeSampler(eta=2.0).select(feats, protos, targets)
    mixed = NegativeSampler(eta=2.0, random_share=0.3).select(feats, protos, targets,
                                                              generator=torch.Generator().manual_seed(1))
    assert bool((mixed | ~hard).all())  # every hardest negative and positive is still kept
    assert not bool((mixed & (targets == -1)).any())  # unknowns never
    extra = mixed & ~hard & (targets == 0)
    rest = ~hard & (targets == 0)
    share = extra.sum().item() / rest.sum().item()
    assert 0.27 < share < 0.33
    again = NegativeSampler(eta=2.0, random_share=0.3).select(feats, protos, targets,
                                                              generator=torch.Generator().manual_seed(1))
    assert torch.equal(mixed, again)
    everything = NegativeSampler(eta=2.0, random_share=1.0).select(feats, protos, targets)
    assert torch.equal(everything, targets >= 0)
    with pytest.raises(ValueError, match="random_share"):
        NegativeSampler(random_share=1.5)


# ----------------------------------------------------------------------------- models and baseline
def test_linear_encoder():
    x = torch.randn(3, 5)
    assert torch.equal(LinearEncoder(5)(x), x) and LinearEncoder(5).out_dim == 5
    assert LinearEncoder(5, out_dim=2)(x).shape == (3, 2)


def test_linear_model_config_trains(tmp_path):
    cfg = compose_config([*TINY_DATA, "model=linear", "method=supervised", "train.epochs=2", "train.min_steps_per_epoch=2"])
    cfg.out_dir = str(tmp_path)
    result = train(cfg)
    assert np.isfinite(result["test"]["mAP"])


def test_build_optimizer_steps():
    from bbam.app.models import MultiLabelModel, LinearClassifier, build_optimizer

    model = MultiLabelModel(LinearEncoder(4), LinearClassifier(4, 3))
    train_cfg = {"lr": 0.002, "weight_decay": 1e-4}
    x = torch.tensor([[3.0, 0.0, 0.0, 4.0], [1.0, 0.0, 0.0, 0.0]])  # squared norms 25 and 1: mean 13
    opt, peak = build_optimizer(model, train_cfg, None, x)
    assert isinstance(opt, torch.optim.AdamW) and peak == 0.002
    opt, peak = build_optimizer(model, train_cfg, {"name": "adamw", "lr": None}, None)
    assert isinstance(opt, torch.optim.AdamW) and peak == 0.002
    opt, peak = build_optimizer(model, train_cfg, {"name": "sgd", "lr": 2.0}, x)
    assert isinstance(opt, torch.optim.SGD) and peak == pytest.approx(2.0 / 13)
    assert opt.defaults["momentum"] == 0.9 and opt.defaults["weight_decay"] == 1e-4
    with pytest.raises(ValueError, match="model.optimizer.name"):
        build_optimizer(model, train_cfg, {"name": "adam", "lr": 1.0}, x)
    with pytest.raises(ValueError, match="unknown key.*model.optimizer.momentum"):
        build_optimizer(model, train_cfg, {"name": "sgd", "lr": 1.0, "momentum": 0.5}, x)
    with pytest.raises(ValueError, match="model.optimizer.lr"):
        build_optimizer(model, train_cfg, {"name": "adamw", "lr": "fast"}, x)
    big = torch.ones(10_000, 4)  # squared norms summed in chunks
    assert build_optimizer(model, train_cfg, {"name": "sgd", "lr": 2.0}, big)[1] == pytest.approx(0.5)
    for bad in (0, -1.0, None, "2"):
        with pytest.raises(ValueError, match="model.optimizer.lr"):
            build_optimizer(model, train_cfg, {"name": "sgd", "lr": bad}, x)
    with pytest.raises(ValueError, match="feature-vector inputs"):
        build_optimizer(model, train_cfg, {"name": "sgd", "lr": 2.0}, None)
    with pytest.raises(ValueError, match="all zero"):
        build_optimizer(model, train_cfg, {"name": "sgd", "lr": 2.0}, torch.zeros(2, 4))


def test_linear_model_trains_with_its_own_step(tmp_path):
    cfg = compose_config([*TINY_DATA, "model=linear", "method=supervised", "train.epochs=2",
                          "train.min_steps_per_epoch=2"])
    plan = prepare(cfg)
    engine = build_engine(plan, tmp_path)
    x = plan.tensors["labeled"].x
    assert isinstance(engine.optimizer, torch.optim.SGD)
    assert engine.peak_lr == pytest.approx(float(cfg.model.optimizer.lr) / float(x.double().pow(2).sum(1).mean()))
    engine.fit(progress=False)
    assert np.isfinite(engine.state.best_map)
    # the MLP keeps AdamW at train.lr
    mlp = build_engine(prepare(compose_config([*TINY, "method=supervised"])), tmp_path / "mlp")
    assert isinstance(mlp.optimizer, torch.optim.AdamW) and mlp.peak_lr == pytest.approx(float(cfg.train.lr))


def test_linear_model_reaches_the_logistic_regression_on_word_indicators(tmp_path, shared_data_dir):
    """On sparse word indicators (medical, tf-idf rows, 10 % labels) the linear model's SGD
    reaches the liblinear floor; AdamW's per-coordinate steps stayed several points below it."""
    path = shared_data_dir / "medical" / "medical.npz"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    overrides = ["data=npz", f"data.path={path}", "split.lb_ratio=0.1", "seed=0", "train.scaling=tfidf_l2",
                 "method=supervised", "model=linear", "train.progress=false"]
    floor = _baseline_module().baseline_metrics(compose_config(overrides))["test"]["mAP"]
    cfg = compose_config(overrides)
    cfg.out_dir = str(tmp_path)
    assert train(cfg)["test"]["mAP"] >= floor - 0.5


def _baseline_module():
    spec = importlib.util.spec_from_file_location("bbam_bench_baseline", ROOT / "bench" / "baseline.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_baseline_uses_the_runs_labeled_rows():
    from sklearn.linear_model import LogisticRegression

    from bbam import metrics as M

    baseline = _baseline_module()
    cfg = compose_config(TINY + ["seed=3"])
    result = baseline.baseline_metrics(cfg)
    splits = prepare(cfg).tensors
    lb, test = splits["labeled"], splits["test"]
    assert result["sizes"]["labeled"] == len(lb)
    scores = np.stack([LogisticRegression(solver="liblinear", C=1.0).fit(lb.x.double().numpy(), lb.y[:, k].numpy())
                       .predict_proba(test.x.double().numpy())[:, 1] if lb.y[:, k].min() != lb.y[:, k].max()
                       else np.full(len(test), float(lb.y[0, k])) for k in range(lb.y.shape[1])], 1)
    expected = M.evaluate(torch.from_numpy(scores).float(), test.y)
    assert result["test"]["mAP"] == pytest.approx(expected["mAP"])
    out = baseline.main(TINY + ["--json"])
    assert out["method"] == "logreg"


def test_self_training_starts_from_the_best_warmup_epoch(tmp_path):
    engine = _fit_with_falling_validation(tmp_path / "a", "train.epochs=4", "train.warmup_epochs=3")
    assert engine.warmup_start_epoch == 0  # epoch 0 had the best validation mAP
    off = _fit_with_falling_validation(tmp_path / "b", "train.epochs=4", "train.warmup_epochs=3",
                                       "train.warmup_restore_best=false")
    assert off.warmup_start_epoch is None


def test_resume_across_the_warmup_restore_equals_uninterrupted(tmp_path):
    common = ["train.epochs=5", "train.warmup_epochs=3", "train.min_steps_per_epoch=2"]
    full = train(_cfg(tmp_path / "full", *common))
    part = train(_cfg(tmp_path / "part", *common, "train.stop_after_epoch=1"))  # killed inside the warm-up
    assert part["interrupted"]
    resumed = train(_cfg(tmp_path / "resumed", *common, f"train.resume={tmp_path / 'part'}"))
    assert resumed["self_training_started_from_epoch"] == full["self_training_started_from_epoch"]
    assert resumed["best_epoch"] == full["best_epoch"]
    assert resumed["test"]["mAP"] == pytest.approx(full["test"]["mAP"], rel=1e-6)


def test_resume_refuses_other_settings_and_unreadable_files(tmp_path):
    common = ["train.epochs=3", "train.warmup_epochs=1", "train.min_steps_per_epoch=2"]
    train(_cfg(tmp_path / "a", *common, "train.stop_after_epoch=0"))
    last = tmp_path / "a" / "checkpoints" / "last.pt"
    with pytest.raises(ValueError, match=r"split\.lb_ratio.*method\.margin|method\.margin.*split\.lb_ratio"):
        train(_cfg(tmp_path / "b", *common, "split.lb_ratio=0.2", "method.margin=0.3", f"train.resume={last}"))
    with pytest.raises(ValueError, match=r"train\.epochs.*not supported"):
        train(_cfg(tmp_path / "c", "train.epochs=6", "train.warmup_epochs=1", "train.min_steps_per_epoch=2",
                   f"train.resume={last}"))
    ok = train(_cfg(tmp_path / "d", *common, "train.progress=true", f"train.resume={last}"))  # output-only keys may change
    assert not ok.get("interrupted")
    for name, content in (("empty.pt", b""), ("text.pt", b"not a checkpoint\n")):
        bad = tmp_path / name
        bad.write_bytes(content)
        with pytest.raises(ValueError, match=rf"train\.resume.*{name} is not a readable bbam checkpoint"):
            train(_cfg(tmp_path / f"e_{name}", *common, f"train.resume={bad}"))
