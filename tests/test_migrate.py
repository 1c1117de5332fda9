"""``python -m bbam.migrate``: run folders written by an older bbam, rewritten once into
today's format, then predicting and resuming as the older code did; the one-line refusal
of a folder not migrated (library and command lines); migrating twice is a no-op;
``--dry-run`` writes nothing; folders that cannot be migrated.

The old runs are ``tests/fixtures/legacy_run/{finished,interrupted}`` (written by the code
before the method classes: a ``method`` section of flags, checkpoints of format 1 with the
statistics at the top level); the other older formats are made from them by hand.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from omegaconf import OmegaConf

from bbam.app.checkpoints import check_same_settings, read_checkpoint, run_settings, settings_of
from bbam.app.errors import UserError
from bbam.app.predict import Predictor
from bbam.migrate import main as migrate_main
from bbam.train import compose_config, train

ROOT = Path(__file__).resolve().parents[1]
LEGACY = ROOT / "tests" / "fixtures" / "legacy_run"
RESUME = ["data.num_samples=400", "model.encoder.hidden=[16]", "model.encoder.out_dim=8", "train.epochs=5",
          "train.warmup_epochs=2", "train.min_steps_per_epoch=3", "train.progress=false"]


def _older(run: Path) -> str:
    return f"was written by an older bbam: run python -m bbam.migrate {run} once"


def _copy(tmp_path: Path, name: str, to: str = None) -> Path:
    run = tmp_path / (to or name)
    shutil.copytree(LEGACY / name, run)
    return run


def _snapshot(folder: Path) -> dict:
    """Every file's bytes and modification time (what "untouched" means)."""
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


def _migrate(capsys, *args) -> tuple:
    code = migrate_main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _cli(*args, cwd=ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd)


def _ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# ----------------------------------------------------------------------------- what migration writes
def test_migration_rewrites_config_and_checkpoints_into_todays_format(tmp_path, capsys):
    run = _copy(tmp_path, "interrupted")
    before = {name: _ckpt(run / "checkpoints" / name) for name in ("last.pt", "best.pt")}
    code, out, err = _migrate(capsys, run)
    assert code == 0 and err == "" and out.startswith(f"{run}: migrated\n")
    assert "method flags -> BBAM" in out and "format 1 -> 2" in out

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["method"] == {
        "_target_": "bbam.app.methods.BBAM", "name": "bbam", "margin": 0.4, "scale": 20.0,
        "predict_margin_fraction": 0.5, "features_from": "online", "pos_per": 1.0, "neg_per": 0.998,
        "sampling": {"_target_": "bbam.sampling.NegativeSampler", "eta": 5.0, "random_share": 0.0,
                     "backend": "auto", "index": "flat"},
        "stats_gamma": 0.01, "stats_angles": "prototype", "unlabeled_views": [],
        # keys added since, at the values that train as then (the graph is unused with pseudo_labels: model)
        "pseudo_labels": "model", "teacher": "ema", "weight_by_certainty": False,
        "graph": OmegaConf.to_container(compose_config([]).graph)}
    assert cfg["train"]["probe_epochs"] == 6  # train.scaling was given (standardize): the key is unused
    assert cfg["model"]["views"]["_target_"] == "bbam.app.views.FeatureViews"  # today's mlp views (unused then)
    assert (cfg["train"]["loader"], cfg["train"]["num_workers"]) == ("tensor", 0)
    assert cfg["train"]["stop_after_epoch"] == 2 and cfg["data"]["num_samples"] == 400  # the rest as it was

    for name, old in before.items():
        new = _ckpt(run / "checkpoints" / name)
        assert new["format"] == 2 and "stats" not in new and "prototypes" not in new
        assert torch.equal(new["method_state"]["prototypes"], old["prototypes"])
        assert all(torch.equal(new["method_state"]["stats"][k], v) for k, v in old["stats"].items())
        # the settings are those of the migrated config.yaml, and the same as today's config of the run
        assert new["settings"] == run_settings(OmegaConf.load(run / "config.yaml"))
        assert new["settings"] == run_settings(compose_config(RESUME))
        for key in ("model", "ema", "optimizer", "history", "rng_cpu", "epoch", "best_epoch", "method"):
            assert str(new[key]) == str(old[key]), key  # everything else untouched


def test_migrating_twice_is_a_no_op_and_a_dry_run_writes_nothing(tmp_path, capsys):
    runs = [_copy(tmp_path, "finished"), _copy(tmp_path, "interrupted")]
    untouched = {run: _snapshot(run) for run in runs}
    code, out, _ = _migrate(capsys, "--dry-run", *runs)
    assert code == 0 and f"{runs[0]}: would migrate" in out and f"{runs[1]}: would migrate" in out
    assert "checkpoints/last.pt:" in out and "config.yaml:" in out
    assert all(_snapshot(run) == untouched[run] for run in runs)  # nothing written

    assert _migrate(capsys, *runs)[0] == 0
    migrated = {run: _snapshot(run) for run in runs}
    code, out, _ = _migrate(capsys, *runs)
    assert code == 0 and out == f"{runs[0]}: already current\n{runs[1]}: already current\n"
    assert all(_snapshot(run) == migrated[run] for run in runs)  # untouched the second time
    code, out, _ = _migrate(capsys, "--dry-run", runs[0])
    assert (code, out) == (0, f"{runs[0]}: already current\n")


def test_a_run_of_today_is_already_current(tmp_path, capsys):
    cfg = compose_config(RESUME + ["train.epochs=3", "train.warmup_epochs=1"])
    cfg.out_dir = str(tmp_path / "today")
    train(cfg)
    untouched = _snapshot(tmp_path / "today")
    assert _migrate(capsys, tmp_path / "today")[:2] == (0, f"{tmp_path / 'today'}: already current\n")
    assert _snapshot(tmp_path / "today") == untouched


# ----------------------------------------------------------------------------- refused until migrated
def test_an_unmigrated_run_is_refused_in_one_line(tmp_path):
    finished, interrupted = _copy(tmp_path, "finished"), _copy(tmp_path, "interrupted")
    with pytest.raises(UserError) as err:
        Predictor.from_run(finished)
    assert str(err.value) == f"{finished / 'config.yaml'} {_older(finished)}"
    last = interrupted / "checkpoints" / "last.pt"
    for resume in (last, interrupted):  # the checkpoint, or its run folder
        cfg = compose_config(RESUME + [f"train.resume={resume}"])
        cfg.out_dir = str(tmp_path / "resumed")
        with pytest.raises(UserError) as err:
            train(cfg)
        assert str(err.value) == f"{last} {_older(interrupted)}"
    assert not (tmp_path / "resumed").exists()
    with pytest.raises(UserError, match=_older(interrupted)):
        read_checkpoint(last, torch.device("cpu"))
    with pytest.raises(UserError, match=_older(interrupted)):  # a checkpoint without settings
        check_same_settings(compose_config(RESUME), last, None)


def test_the_commands_refuse_an_unmigrated_run_and_use_it_once_migrated(tmp_path):
    finished, interrupted = _copy(tmp_path, "finished"), _copy(tmp_path, "interrupted")
    expected = np.load(LEGACY / "expected_scores.npz")
    np.savez(tmp_path / "new.npz", X=expected["X"])
    untouched = _snapshot(interrupted)

    proc = _cli("bbam.predict", f"run={finished}", f"data={tmp_path / 'new.npz'}", f"out={tmp_path / 'pred'}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"bbam.predict: error: {finished / 'config.yaml'} {_older(finished)}"]
    proc = _cli("bbam.train", f"train.resume={interrupted}")
    assert proc.returncode == 2
    last = interrupted / "checkpoints" / "last.pt"
    assert proc.stderr.strip().splitlines() == [f"bbam.train: error: {last} {_older(interrupted)}"]
    assert _snapshot(interrupted) == untouched and not (tmp_path / "pred").exists()

    proc = _cli("bbam.migrate", finished, interrupted)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == f"{finished}: migrated"

    proc = _cli("bbam.predict", f"run={finished}", f"data={tmp_path / 'new.npz'}", f"out={tmp_path / 'pred'}")
    assert proc.returncode == 0, proc.stderr
    with np.load(tmp_path / "pred" / "scores.npz") as f:  # computed on another CPU: see test_methods
        np.testing.assert_allclose(f["scores"], expected["scores"], rtol=2e-5, atol=1e-7)
    # resumed from the command line: the run's own (migrated) config.yaml and folder
    proc = _cli("bbam.train", f"train.resume={interrupted}", "train.progress=false")
    assert proc.returncode == 0, proc.stderr
    result = json.loads((interrupted / "final_metrics.json").read_text())
    old = json.loads((LEGACY / "finished" / "final_metrics.json").read_text())
    assert result["best_epoch"] == old["best_epoch"]
    assert result["test"]["mAP"] == pytest.approx(old["test"]["mAP"], abs=1e-6)


# ----------------------------------------------------------------------------- the other older formats
def test_a_checkpoint_without_settings_gets_those_of_its_config(tmp_path, capsys):
    run = _copy(tmp_path, "finished")
    path = run / "checkpoints" / "best.pt"
    ckpt = _ckpt(path)
    del ckpt["settings"]  # written before settings were recorded
    torch.save(ckpt, path)
    assert _migrate(capsys, run)[0] == 0
    assert _ckpt(path)["settings"] == run_settings(OmegaConf.load(run / "config.yaml"))
    assert isinstance(Predictor.from_run(run).method.name, str)


def test_older_module_names_and_the_npz_path_key(tmp_path, capsys):
    """Runs from when the readers lived in bbam.app.datasets / bbam.app.inputs, and data=npz
    runs from when its key was path_or_name (named sets keep path_or_name)."""
    runs = {}
    for name, choice in (("npz", "npz"), ("named", "emotions")):
        run = runs[name] = _copy(tmp_path, "interrupted", name)
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        cfg["data"] = {"_target_": "bbam.app.datasets.load_dataset", "path_or_name": "/x/my.npz", "name": "my"}
        (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        (run / ".hydra").mkdir()
        hydra = {"hydra": {"runtime": {"choices": {"data": choice}}}}
        (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
        for file in (run / "checkpoints").glob("*.pt"):
            ckpt = _ckpt(file)
            ckpt["settings"] = {k: v for k, v in ckpt["settings"].items() if not k.startswith("data.")}
            ckpt["settings"].update({"data._target_": "bbam.app.datasets.load_dataset",
                                     "data.path_or_name": "/x/my.npz"})
            torch.save(ckpt, file)
    assert _migrate(capsys, *runs.values())[0] == 0
    key = {"npz": "path", "named": "path_or_name"}
    for name, run in runs.items():
        data = yaml.safe_load((run / "config.yaml").read_text())["data"]
        assert data == {"_target_": "bbam.data.load_dataset", key[name]: "/x/my.npz", "name": "my"}
        settings = _ckpt(run / "checkpoints" / "last.pt")["settings"]
        assert {k: v for k, v in settings.items() if k.startswith("data.")} == {
            "data._target_": "bbam.data.load_dataset", f"data.{key[name]}": "/x/my.npz"}
        assert settings == run_settings(OmegaConf.load(run / "config.yaml"))


def test_a_method_from_before_unlabeled_views_and_a_run_from_before_inputs_json(tmp_path, capsys):
    run = _copy(tmp_path, "finished")
    assert _migrate(capsys, run)[0] == 0
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    del cfg["method"]["unlabeled_views"]  # a BBAM run from before the key (format 2 already)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    ckpt = _ckpt(run / "checkpoints" / "best.pt")
    del ckpt["settings"]["method.unlabeled_views"]
    torch.save(ckpt, run / "checkpoints" / "best.pt")
    (run / "inputs.json").unlink()  # a finished run from before inputs.json: numeric features
    with pytest.raises(UserError, match=_older(run)):
        Predictor.from_run(run)
    with pytest.raises(UserError, match=_older(run)):
        check_same_settings(compose_config(RESUME), run / "checkpoints" / "best.pt", ckpt["settings"])
    code, out, _ = _migrate(capsys, run)
    assert code == 0 and "+method.unlabeled_views" in out and 'inputs.json: {"kind": "features"}' in out
    assert yaml.safe_load((run / "config.yaml").read_text())["method"]["unlabeled_views"] == []
    assert json.loads((run / "inputs.json").read_text()) == {"kind": "features"}
    assert _ckpt(run / "checkpoints" / "best.pt")["settings"] == run_settings(compose_config(RESUME))
    expected = np.load(LEGACY / "expected_scores.npz")
    np.testing.assert_allclose(Predictor.from_run(run).predict_proba(expected["X"]), expected["scores"],
                               rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("method, target", [("supervised", "Supervised"), ("cap", "CAP"), ("bam", "BAM")])
def test_the_added_keys_follow_the_method(tmp_path, capsys, method, target):
    """Only CAP / BAM / BBAM take ``unlabeled_views``; the settings stay those of config.yaml."""
    run = _copy(tmp_path, "interrupted")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    flags = {"name": method, "self_training": method != "supervised", "balance": False,
             "head": "linear" if method in ("supervised", "cap") else "cosine"}
    cfg["method"] = {**cfg["method"], **flags}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    for file in (run / "checkpoints").glob("*.pt"):
        ckpt = _ckpt(file)
        ckpt["settings"].update({f"method.{k}": v for k, v in flags.items()})
        torch.save(ckpt, file)
    assert _migrate(capsys, run)[0] == 0
    section = yaml.safe_load((run / "config.yaml").read_text())["method"]
    assert section["_target_"] == f"bbam.app.methods.{target}" and section["name"] == method
    assert ("unlabeled_views" in section) == (method != "supervised")
    if method == "cap":  # a loss section without them: the older code's defaults, written out
        assert (section["gamma_neg"], section["gamma_pos"], section["clip"]) == (4.0, 0.0, 0.05)
    assert _ckpt(run / "checkpoints" / "last.pt")["settings"] == run_settings(OmegaConf.load(run / "config.yaml"))


# ----------------------------------------------------------------------------- folders it cannot migrate
def test_folders_that_cannot_be_migrated_get_one_line_and_exit_2(tmp_path, capsys):
    images = _copy(tmp_path, "finished", "images")  # an image run from before images were streamed
    cfg = yaml.safe_load((images / "config.yaml").read_text())
    cfg["model"]["encoder"] = {"_target_": "bbam.app.models.ImageEncoder", "backbone": None, "backbone_dim": 64,
                               "out_dim": 128}
    (images / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (images / "inputs.json").write_text(json.dumps({"kind": "images", "image_size": 64}))
    with pytest.raises(UserError, match=_older(images)):  # refused by prediction, as every older run
        Predictor.from_run(images)
    (tmp_path / "no_config").mkdir()
    good = _copy(tmp_path, "finished")
    untouched = _snapshot(images)
    code, out, err = _migrate(capsys, images, tmp_path / "no_config", tmp_path / "missing", good)
    assert code == 2
    assert err.splitlines() == [
        f"bbam.migrate: error: {images} is an image run from before images were streamed (pixel rows in memory, "
        f"bbam.app.models.ImageEncoder): it cannot be converted; retrain it",
        f"bbam.migrate: error: {tmp_path / 'no_config'} has no config.yaml: not a bbam run folder",
        f"bbam.migrate: error: {tmp_path / 'missing'} is not a run folder (it does not exist)"]
    assert out.splitlines()[0] == f"{good}: migrated"  # the others are still migrated
    assert _snapshot(images) == untouched
    (good / "checkpoints" / "best.pt").write_text("not a checkpoint")
    code, _, err = _migrate(capsys, good)
    assert code == 2 and len(err.splitlines()) == 1 and "is not a readable bbam checkpoint" in err


def test_settings_of_is_run_settings_of_plain_sections():
    cfg = compose_config(RESUME)
    sections = {s: OmegaConf.to_container(cfg[s], resolve=True) for s in ("data", "split", "method", "model", "train")}
    assert settings_of(0, sections) == run_settings(cfg)
