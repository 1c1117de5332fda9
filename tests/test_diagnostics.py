"""Balancing diagnostics: VDFD per angle family before / after the transform, and the report."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

import bbam
from bbam.app import diagnostics
from bbam.angle_diagnostics import FAMILIES, mean_finite
from bbam.app.diagnostics import run_diagnostics
from bbam.functional import MIN_VARIANCE
from bbam.stats import LabelAngleStats
from bbam.train import config_dir, train

OVERRIDES = ["data.num_samples=400", "data.num_labels=5", "data.num_features=16",
             "model.encoder.hidden=[32]", "model.encoder.out_dim=16", "device=cpu",
             "train.epochs=3", "train.warmup_epochs=1", "train.batch_size=32", "train.unlabeled_batch_size=64",
             "train.progress=false"]


def _cfg(out_dir: Path, *overrides):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*OVERRIDES, *overrides])
    cfg.out_dir = str(out_dir)
    return cfg


def _angles(feats: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """``[N, K]`` angles (float64) between features and directions, computed here with torch."""
    cos = torch.nn.functional.normalize(feats.double(), dim=1) @ torch.nn.functional.normalize(
        directions.double(), dim=1).T
    return torch.acos(cos.clamp(-1, 1))


def _balanced(diag, family: str):
    """Labels where both polarities have a defined, non-degenerate variance in ``family``."""
    var = diag[family]["var"]
    return [k for k in range(len(var[0])) if all(v[k] is not None and v[k] > MIN_VARIANCE for v in var)]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny bbam run, and its engine (captured where train() calls the diagnostics, so the
    test does not rebuild train()'s data pipeline)."""
    out = tmp_path_factory.mktemp("run")
    engines = []

    def capture(engine, split="test"):
        engines.append(engine)
        return run_diagnostics(engine, split)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(diagnostics, "run_diagnostics", capture)
        train(_cfg(out))
    assert len(engines) == 1
    return out, engines[0]


def test_diagnostics_json_has_both_families_before_and_after(run):
    out, _ = run
    diag = json.loads((out / "diagnostics.json").read_text())
    K = len(diag["label_names"])
    for family in FAMILIES:
        for key in ("vdfd", "vdfd_after"):
            assert len(diag[family][key]) == K, (family, key)
        for key in ("var", "var_after"):
            assert [len(row) for row in diag[family][key]] == [K, K], (family, key)
        assert diag[f"mean_vdfd_{family}"] == pytest.approx(mean_finite(diag[family]["vdfd"]))
        assert diag[f"mean_vdfd_{family}_after"] == pytest.approx(mean_finite(diag[family]["vdfd_after"]))
        assert math.isfinite(diag[f"mean_vdfd_{family}"]) and math.isfinite(diag[f"mean_vdfd_{family}_after"])
    assert diag["mean_vdfd"] == diag["mean_vdfd_classifier"]
    assert diag["mean_vdfd_after"] == diag["mean_vdfd_classifier_after"]
    assert diag["stats_angles"] == "prototype"  # the paper's method (the default)
    result = json.loads((out / "final_metrics.json").read_text())
    assert result["test"]["vdfd"] == pytest.approx(diag["mean_vdfd_classifier"])


def test_after_variances_are_a_squared_var_of_the_angles(run):
    """Recompute both families' angles with torch on an engine at the last checkpoint (self-training
    ran, so the coefficients are not the identity) and check var and var after = Var(a theta + b)."""
    out, engine = run
    from bbam.app.checkpoints import read_checkpoint

    engine._load_weights(read_checkpoint(out / "checkpoints" / "last.pt", engine.device)[1])  # weights + method state
    diag = run_diagnostics(engine, "test")
    assert diag["balanced_labels"] > 0 and diag["prototype_source"] != "labeled split"
    online = run_diagnostics(engine, "test", source="online")
    assert diag["features_from"] == "ema" and online["features_from"] == "online"
    assert online["classifier"]["var"] != diag["classifier"]["var"]  # other features, other angles
    s = engine.splits["test"]
    _, feats, _ = engine.outputs(s.x)
    a, b = (t.double() for t in engine.method.coefficients())
    prototypes = engine.method.prototypes
    directions = {"prototype": prototypes, "classifier": engine.ema.module.classifier_weight}
    for family in FAMILIES:
        theta = _angles(feats, directions[family])
        for polarity in (0, 1):
            for k in range(theta.shape[1]):
                angles = theta[s.y[:, k] == polarity, k]
                if angles.numel() < 2:
                    assert diag[family]["var"][polarity][k] is None
                    continue
                after = a[polarity, k] * angles + b[polarity, k]  # the transform, applied to the angles
                assert diag[family]["var"][polarity][k] == pytest.approx(float(angles.var()), rel=1e-4, abs=1e-9)
                assert diag[family]["var_after"][polarity][k] == pytest.approx(float(after.var()), rel=1e-4,
                                                                               abs=1e-9)


@pytest.mark.parametrize("family", FAMILIES)
def test_after_vdfd_is_zero_on_the_angles_the_statistics_measure(run, family, monkeypatch):
    """Statistics taken on the test split's own angles of ``family`` (gamma 0: the EMA takes the
    current values) balance exactly those angles: VDFD after ≈ 0 there, not on the other family."""
    out, engine = run
    method = engine.method
    s = engine.splits["test"]
    _, feats, _ = engine.outputs(s.x)
    # the engine is shared with the other tests: monkeypatch puts its statistics and settings back
    monkeypatch.setattr(method, "stats_angles", family)
    monkeypatch.setattr(method, "stats", LabelAngleStats(engine.num_labels, gamma=0.0))
    if family == "prototype":
        method.stats.update(feats, s.y)  # prototypes of the test split, angles to them
        monkeypatch.setattr(method, "prototypes", method.stats.prototypes)
    else:
        weights = engine.ema.module.classifier_weight.detach()
        method.stats.update_from_stats(*bbam.ops.label_angle_stats(feats, weights, s.y))
    diag = run_diagnostics(engine, "test")
    assert diag["stats_angles"] == family
    labels = _balanced(diag, family)
    assert labels and diag["balanced_labels"] == len(labels)
    after = [diag[family]["vdfd_after"][k] for k in labels]
    before = [diag[family]["vdfd"][k] for k in labels]
    assert max(after) < 1e-6, after
    assert max(before) > 1e-4  # there was something to balance
    other = "classifier" if family == "prototype" else "prototype"
    assert diag[f"mean_vdfd_{other}_after"] > 1e-6  # the transform balances only what it measured


def test_report_explains_balancing(run):
    out, _ = run
    text = (out / "report.md").read_text()
    assert "## What balancing does" in text
    assert "| angles | before balancing | after balancing |" in text
    assert "| to label prototypes (statistics taken here) |" in text and "| to classifier weights |" in text
    assert "VCA is the variance over labels" in text and "a neg / a pos:" in text
    assert "| mAP |" in text and "| metric | value | unit |" in text
    assert "AP (%)" in text and "fraction of label slots" in text
    for name in ("learning_curves.png", "vdfd_per_label.png", "angle_histograms.png"):
        assert (out / name).is_file(), name


@pytest.mark.parametrize("chunk_size", [7, 8192])
def test_histograms_count_every_angle_once(chunk_size):
    """Chunked histograms equal a direct per-label count of the classifier angles."""
    import math

    from bbam.angle_diagnostics import BINS, _histograms

    g = torch.Generator().manual_seed(0)
    N, K, D = 50, 4, 6
    feats, weights = torch.randn(N, D, generator=g), torch.randn(K, D, generator=g)
    y = torch.randint(0, 2, (N, K), generator=g, dtype=torch.int8)
    a = 1 + 0.2 * torch.rand(2, K, generator=g)
    b = 0.1 * torch.rand(2, K, generator=g)
    hist = _histograms(feats, weights, y, a, b, chunk_size=chunk_size)
    cos = torch.nn.functional.normalize(feats, dim=1) @ torch.nn.functional.normalize(weights, dim=1).T
    for suffix, theta in (("", torch.acos(cos.clamp(-1, 1))),
                          ("_after", torch.acos(bbam.ops.angle_transform(cos, a, b, y).clamp(-1, 1)))):
        for name, polarity in (("neg", 0), ("pos", 1)):
            expected = [[0] * BINS for _ in range(K)]
            for i in range(N):
                for k in range(K):
                    if y[i, k] == polarity:
                        expected[k][min(int(theta[i, k] / math.pi * BINS), BINS - 1)] += 1
            assert hist[f"hist_{name}{suffix}"] == expected


def test_each_method_reports_its_own_diagnostics(tmp_path):
    """A method without angles (FixMatch, CAP) reports none: diagnostics.json holds the
    per-label metrics only, and the test metrics no VDFD; the angular ones report theirs."""
    for name, angular in (("fixmatch", False), ("cap", False), ("bam", True)):
        out = tmp_path / name
        result = train(_cfg(out, f"method={name}"))
        diag = json.loads((out / "diagnostics.json").read_text())
        assert set(diag["per_label"]) == {"ap", "f1", "positives", "accuracy"}, name
        assert ("classifier" in diag) == angular and ("vdfd" in result["test"]) == angular, name
        if angular:
            assert diag["stats_angles"] == "none"  # bam does not balance
        assert "VDFD" not in (out / "report.md").read_text() or angular, name
