"""``train.scaling=auto`` (the default of ``data=npz|arff|libsvm``) with ``train.probe_epochs=0``:
the rule on synthetic matrices, explicit values winning, the record in the log / report / inputs.json /
config.yaml, prediction and the baseline applying the same choice, resume, and the
same pipeline as the named configs on shared sets."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from bbam.app.predict import Predictor
from bbam.app.preprocess import (SPARSE_ZERO_SHARE, FeatureScaler, choose_scaling, feature_profile,
                                 resolve_scaling)
from bbam.app.plan import prepare
from bbam.train import compose_config, train

ROOT = Path(__file__).resolve().parents[1]
# the rule (train.probe_epochs=0) with the MLP: the validation probe is tests/test_unlabeled.py's
FAST = ["train.epochs=3", "train.warmup_epochs=1", "train.min_steps_per_epoch=2", "train.progress=false",
        "model=mlp", "model.encoder.hidden=[32]", "model.encoder.out_dim=16", "device=cpu", "train.probe_epochs=0"]


def _rule(x) -> str:
    return choose_scaling(feature_profile(torch.as_tensor(x, dtype=torch.float32)))[0]


# ----------------------------------------------------------------------------- the rule
def test_rule_on_synthetic_matrices():
    rng = np.random.default_rng(0)
    binary = (rng.random((200, 50)) < 0.05).astype(np.float32)
    counts = rng.poisson(0.1, (200, 50)).astype(np.float32)
    dense = rng.normal(size=(200, 50)).astype(np.float32)
    dense_pos = rng.random((200, 50)).astype(np.float32)  # non-negative but dense (as scene: [0, 1])
    sparse_neg = binary.copy()
    sparse_neg[0, 0] = -1.0  # one negative value: not counts
    with_zero_col = binary.copy()
    with_zero_col[:, 3] = 0  # a word never seen in the pool
    assert _rule(binary) == _rule(counts) == _rule(with_zero_col) == "tfidf_l2"
    assert _rule(dense) == _rule(dense_pos) == _rule(sparse_neg) == "standardize"
    assert choose_scaling(feature_profile(torch.from_numpy(binary))) == ("tfidf_l2", 0.2, 30.0)
    assert choose_scaling(feature_profile(torch.from_numpy(dense))) == ("standardize", 0.4, 20.0)
    p = feature_profile(torch.from_numpy(counts))
    assert p["integer"] and not p["binary"] and p["min"] == 0 and p["zero_share"] > 0.85
    assert feature_profile(torch.from_numpy(binary))["binary"]
    # the threshold: non-negative, exactly at / just under SPARSE_ZERO_SHARE zeros
    half = np.ones((10, 10), dtype=np.float32)
    half.reshape(-1)[: int(100 * SPARSE_ZERO_SHARE)] = 0
    assert _rule(half) == "tfidf_l2"
    half.reshape(-1)[0] = 1
    assert _rule(half) == "standardize"
    # a column of zeros keeps tfidf_l2 finite
    out = FeatureScaler("tfidf_l2").fit(torch.from_numpy(with_zero_col)).transform(torch.ones(2, 50))
    assert torch.isfinite(out).all()


def test_explicit_values_win_over_auto():
    pool = (torch.rand(100, 40) < 0.05).float()  # bag of words: the rule picks tfidf_l2, 0.2 / 30
    cfg = compose_config(["data=npz", "data.path=x.npz"])
    assert (cfg.train.scaling, cfg.method.margin, cfg.method.scale) == ("auto", "auto", "auto")
    rec = resolve_scaling(cfg, pool)
    assert (rec["scaling"], rec["margin"], rec["scale"]) == ("tfidf_l2", 0.2, 30.0)
    assert (cfg.train.scaling, cfg.method.margin, cfg.angular.margin) == ("auto", "auto", "auto")  # only read
    assert rec["source"] == {"scaling": "auto", "margin": "auto", "scale": "auto"}
    for data in ("npz", "arff", "libsvm"):
        cfg = compose_config([f"data={data}", "data.path=x", "method=bam", "method.margin=0.3",
                              "train.scaling=standardize"])
        rec = resolve_scaling(cfg, pool)
        # the scale left auto follows the scaling the run uses (standardize: the dense 20)
        assert (rec["scaling"], rec["margin"], rec["scale"]) == ("standardize", 0.3, 20.0), data
        assert rec["source"] == {"scaling": "config", "margin": "config", "scale": "auto"}
        assert "train.scaling, method.margin as given" in rec["line"]
    # the method's losses and scores take the resolved margin (method.margin interpolates angular.margin)
    from bbam.app.methods import build_method

    cfg = compose_config(["data=npz", "data.path=x.npz", "method.scale=25"])
    rec = resolve_scaling(cfg, pool)
    method = build_method(cfg.method, resolved=rec)
    assert (method.margin, method.scale) == (0.2, 25.0)
    assert (method.loss_fn.margin, method.loss_fn.scale, method.warmup_loss_fn.margin) == (0.2, 25.0, 0.2)
    # a resumed run keeps the values its checkpoint recorded, whatever the rule would pick now
    rec = resolve_scaling(cfg, pool, saved={"scaling": "standardize", "margin": 0.4, "scale": 20.0})
    assert (rec["scaling"], rec["margin"], rec["scale"]) == ("standardize", 0.4, 25.0)
    # a linear-head method has no margin: the record names the modality's
    cfg = compose_config(["data=npz", "data.path=x.npz", "method=cap"])
    rec = resolve_scaling(cfg, pool)
    assert "margin" not in cfg.method and rec["margin"] == 0.2
    # a named config's values are concrete: nothing is resolved
    cfg = compose_config(["data=emotions"])
    rec = resolve_scaling(cfg, pool)
    assert (rec["scaling"], rec["margin"]) == ("standardize", 0.4) and rec["rule"][0] == "tfidf_l2"
    assert rec["line"].endswith("(all given in the config)")
    # train.scaling=auto works with any dataset
    cfg = compose_config(["train.scaling=auto"])
    assert resolve_scaling(cfg, torch.randn(50, 4))["scaling"] == "standardize"


# ----------------------------------------------------------------------------- a run
def _write_bow(path: Path, n: int = 400, d: int = 60, k: int = 5, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    X = (rng.random((n, d)) < 0.08).astype(np.float32)
    X[:, 7] = 0  # a word that never occurs
    Y = np.zeros((n, k), dtype=np.int8)
    for j in range(k):  # each label fires with its own words
        Y[:, j] = (X[:, 10 * j:10 * j + 4].sum(1) > 0).astype(np.int8)
    np.savez(path, X=X, Y=Y)
    return path


@pytest.fixture(scope="module")
def bow_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("auto")
    data = _write_bow(tmp / "words.npz")
    cfg = compose_config(["data=npz", f"data.path={data}", "method=bbam", *FAST])
    cfg.out_dir = str(tmp / "run")
    logger = logging.getLogger("bbam.train")
    records: list = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        result = train(cfg)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    return tmp / "run", data, result, [r.getMessage() for r in records]


def test_run_records_the_choice(bow_run):
    run, _, result, messages = bow_run
    line = "features: 60 binary, 92 % zeros → tfidf_l2, margin 0.2, scale 30"
    assert any(m.startswith(line) for m in messages), messages
    assert result["scaling"]["line"].startswith(line)
    assert line in (run / "report.md").read_text()
    inputs = json.loads((run / "inputs.json").read_text())
    assert inputs["kind"] == "features"
    rec = inputs["scaling"]
    assert (rec["scaling"], rec["margin"], rec["scale"]) == ("tfidf_l2", 0.2, 30.0)
    assert rec["profile"]["binary"] and rec["profile"]["features"] == 60
    saved = yaml.safe_load((run / "config.yaml").read_text())  # the config as given: nothing is written back
    assert (saved["train"]["scaling"], saved["method"]["margin"], saved["method"]["scale"]) == ("auto",) * 3
    plan = json.loads((run / "plan.json").read_text())  # what the run used, and why
    assert plan["scaling"] == result["scaling"] and plan["inputs"] == {"kind": "features"}
    assert plan["sizes"] == result["sizes"]


def test_prediction_applies_the_recorded_choice(bow_run, tmp_path):
    import shutil

    run, data, result, _ = bow_run
    p = Predictor.from_run(run)
    assert p.scaler.kind == "tfidf_l2" and (p.method.margin, p.method.scale) == (0.2, 30.0)
    X = np.load(data)["X"]
    scores = p.predict_proba(p.read(data))
    assert scores.shape == (X.shape[0], 5) and torch.isfinite(scores).all()
    # a folder whose record disagrees with its scaler is refused
    bad = tmp_path / "bad"
    shutil.copytree(run, bad)
    inputs = json.loads((bad / "inputs.json").read_text())
    inputs["scaling"]["scaling"] = "standardize"
    (bad / "inputs.json").write_text(json.dumps(inputs))
    with pytest.raises(ValueError, match="inputs.json records scaling 'standardize'.*scaler.pt holds 'tfidf_l2'"):
        Predictor.from_run(bad)
    # a run from before the record (no "scaling" in inputs.json, the values in config.yaml) predicts as before
    old = tmp_path / "old"
    shutil.copytree(run, old)
    (old / "inputs.json").write_text(json.dumps({"kind": "features"}))
    cfg = yaml.safe_load((old / "config.yaml").read_text())
    cfg["train"]["scaling"], cfg["method"]["margin"], cfg["method"]["scale"] = "tfidf_l2", 0.2, 30.0
    (old / "config.yaml").write_text(yaml.safe_dump(cfg))
    np.testing.assert_array_equal(Predictor.from_run(old).predict_proba(X), scores.numpy())


def test_resume_of_an_old_run_keeps_its_concrete_settings(tmp_path):
    """A run saved with concrete settings (e.g. before ``auto``: standardize, 0.4 / 20 on
    bag-of-words data) resumes under today's ``auto`` defaults with what it used."""
    data = _write_bow(tmp_path / "words.npz")
    common = ["data=npz", f"data.path={data}", "method=bbam", *FAST]
    cfg = compose_config([*common, "train.scaling=standardize", "method.margin=0.4", "method.scale=20",
                          "train.stop_after_epoch=0"])
    cfg.out_dir = str(tmp_path / "a")
    assert train(cfg)["interrupted"]
    cfg = compose_config([*common, f"train.resume={tmp_path / 'a'}"])
    cfg.out_dir = str(tmp_path / "b")
    result = train(cfg)
    assert not result.get("interrupted")
    assert (result["scaling"]["scaling"], result["scaling"]["margin"]) == ("standardize", 0.4)
    assert torch.load(tmp_path / "b" / "scaler.pt", weights_only=True)["kind"] == "standardize"


def test_resume_refuses_another_scaling_than_the_one_auto_chose(tmp_path):
    """A run that chose tfidf_l2 under ``auto`` cannot be resumed with ``train.scaling=standardize``
    (its checkpoint's ``auto`` stands for what it chose, not for what the new plan says)."""
    data = _write_bow(tmp_path / "words.npz")
    common = ["data=npz", f"data.path={data}", "method=bbam", *FAST]
    cfg = compose_config([*common, "train.stop_after_epoch=0"])
    cfg.out_dir = str(tmp_path / "a")
    assert train(cfg)["interrupted"]
    cfg = compose_config([*common, "train.scaling=standardize", f"train.resume={tmp_path / 'a'}"])
    cfg.out_dir = str(tmp_path / "b")
    with pytest.raises(ValueError, match=r"train.scaling: 'tfidf_l2' in the checkpoint, 'standardize' now"):
        train(cfg)
    cfg = compose_config([*common, f"train.resume={tmp_path / 'a'}"])  # as it was started: resumes
    cfg.out_dir = str(tmp_path / "c")
    assert train(cfg)["scaling"]["scaling"] == "tfidf_l2"


# ----------------------------------------------------------------------------- baseline
from test_learning import _baseline_module  # noqa: E402  (bench/baseline.py loaded once, by file)


def test_baseline_uses_the_same_choice(tmp_path):
    baseline = _baseline_module()
    data = _write_bow(tmp_path / "words.npz")
    auto = compose_config(["data=npz", f"data.path={data}", "train.probe_epochs=0"])
    assert prepare(auto).scaler.kind == "tfidf_l2"
    given = compose_config(["data=npz", f"data.path={data}", "train.scaling=tfidf_l2", "train.probe_epochs=0"])
    assert baseline.baseline_metrics(auto)["test"] == baseline.baseline_metrics(given)["test"]


# ----------------------------------------------------------------------------- the shared sets
@pytest.mark.parametrize("name", ["emotions", "medical"])
def test_npz_file_runs_as_its_named_config(name, shared_data_dir, tmp_path):
    """The same file through data=npz gets the named config's pipeline: same resolved
    scaling / margin / scale and the same test metrics (a short bbam run: cosine head)."""
    path = shared_data_dir / name / f"{name}.npz"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    results, saved = {}, {}
    for kind, overrides in (("named", [f"data={name}"]), ("file", ["data=npz", f"data.path={path}"])):
        cfg = compose_config([*overrides, "method=bbam", "split.lb_ratio=0.1", "seed=0", *FAST])
        cfg.out_dir = str(tmp_path / kind)
        results[kind] = train(cfg)
        saved[kind] = yaml.safe_load((tmp_path / kind / "config.yaml").read_text())
        for key, value in json.loads((tmp_path / kind / "plan.json").read_text())["scaling"].items():
            if key in ("scaling", "margin", "scale"):  # what the plan resolved, where the config says auto
                section, name = ("train", key) if key == "scaling" else ("method", key)
                saved[kind][section][name] = value
    for section in ("train", "method", "split", "model"):
        assert saved["named"][section] == saved["file"][section], section
    assert results["file"]["scaling"]["source"]["scaling"] == "auto"
    assert results["file"]["scaling"]["scaling"] == results["named"]["scaling"]["scaling"]
    for key in ("mAP", "micro_f1", "macro_f1", "hamming_loss", "one_error"):
        assert results["file"]["test"][key] == pytest.approx(results["named"]["test"][key], abs=1e-9), key
