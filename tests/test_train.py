"""The training app: configs, an end-to-end run, resume, sweeps, errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate

from bbam.app.methods import Method, build_method
from bbam.train import config_dir, train

CONFIGS = Path(config_dir())
METHODS = sorted(p.stem for p in (CONFIGS / "method").glob("*.yaml"))
DATASETS = sorted(p.stem for p in (CONFIGS / "data").glob("*.yaml"))
FILE_DATASETS = {"npz": "path", "arff": "path", "libsvm": "path"}
RAW_DATASETS = {"text_jsonl", "image_folder"}  # need files made by the test
IMAGE_DATASETS = {"voc", "coco", "miml"}  # composed only (their photos are large or absent)

FAST_DATA = ["data.num_samples=500", "data.num_labels=6", "data.num_features=16"]
FAST = [
    "model.encoder.hidden=[32]", "model.encoder.out_dim=16",
    "train.epochs=4", "train.warmup_epochs=2", "train.batch_size=32", "train.unlabeled_batch_size=64",
    "train.progress=false",
]


def _compose(overrides):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=False)


def _cfg(tmp_path: Path, *overrides):
    other_data = any(o.startswith("data=") for o in overrides)
    file_data = any(o in ("data=npz", "data=arff", "data=libsvm") for o in overrides)  # their default: model=auto
    cfg = _compose([*([] if other_data else FAST_DATA), *(["model=mlp"] if file_data else []), *FAST, *overrides])
    cfg.out_dir = str(tmp_path)
    return cfg


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("data", DATASETS)
def test_every_config_composes_and_instantiates(method, data, shared_data_dir, tmp_path):
    overrides = [f"method={method}", f"data={data}"]
    if data in FILE_DATASETS:
        overrides.append(f"data.{FILE_DATASETS[data]}={shared_data_dir / 'emotions' / ('emotions.npz' if data == 'npz' else 'emotions-train.arff')}")
        if data == "libsvm":
            pytest.skip("no LIBSVM file among the shared datasets (the loader is tested in test_datasets.py)")
    if data == "text_jsonl":
        from test_inputs import _write_docs

        _write_docs(tmp_path / "docs.jsonl", n=20)
        overrides.append(f"data.path={tmp_path / 'docs.jsonl'}")
    if data == "image_folder":
        from test_images import write_images  # skips without the vision extra

        write_images(tmp_path, n=6)
        overrides += [f"data.root={tmp_path}", "data.image_size=32", f"model.backbone.cache_dir={tmp_path / 'cache'}"]
    cfg = _compose(overrides)
    assert cfg.method.name == method
    in_dim, resolved = 8, None
    if data in ("synthetic", "emotions", "npz", "arff", *RAW_DATASETS):  # the others are larger: composing is enough
        dataset = instantiate(cfg.data)
        assert dataset.num_labels >= 1
        in_dim = dataset.num_features
    if data in FILE_DATASETS:  # train.scaling / angular.margin / angular.scale: auto, resolved from the features
        from bbam.app.preprocess import resolve_scaling

        assert (cfg.train.scaling, cfg.angular.margin, cfg.angular.scale) == ("auto", "auto", "auto")
        record = resolve_scaling(cfg, dataset.X)
        assert (record["scaling"], record["margin"], record["scale"]) == ("standardize", 0.4, 20.0)  # emotions
        assert cfg.train.scaling == "auto"  # the config is only read
        resolved = record
        if "margin" in cfg.method:  # the angular methods take them
            angular = build_method(cfg.method, resolved=record)
            assert (angular.margin, angular.scale) == (0.4, 20.0)
    elif data == "reuters21578_text":
        in_dim = cfg.data.max_len
    if data in IMAGE_DATASETS or data == "image_folder":  # frozen backbone features (the run computes them)
        in_dim = 1280
    models = [cfg.model]
    if "auto" in cfg.model:  # model=auto (the file datasets): every candidate the validation probe may pick
        from bbam.app.probe import with_model

        assert list(cfg.model.auto) == ["mlp", "linear"]
        models = [with_model(cfg, name).model for name in cfg.model.auto]
    built = build_method(cfg.method, resolved=resolved)
    assert built.name == method and isinstance(built, Method)
    for model in models:
        instantiate(model.encoder, in_dim=in_dim)
        if built.views:
            instantiate(model.views)


def test_every_yaml_key_is_commented():
    for path in CONFIGS.rglob("*.yaml"):
        block = None  # the indentation of a block scalar's key (its text lines are not keys)
        for i, line in enumerate(path.read_text().splitlines(), 1):
            stripped = line.strip()
            indent = len(line) - len(line.lstrip())
            if block is not None and (not stripped or indent > block):
                continue
            block = None
            if not stripped or stripped.startswith(("#", "- ", "_target_:")) or ":" not in stripped:
                continue
            assert "#" in line, f"{path.relative_to(CONFIGS)}:{i}: key {stripped.split(':')[0]!r} has no comment"
            if stripped.split("#")[0].rstrip().endswith(("|", "|-", ">", ">-")):
                block = indent


def test_end_to_end_run_writes_outputs(tmp_path):
    result = train(_cfg(tmp_path))
    assert not result.get("interrupted")
    for name in ("config.yaml", "metrics.jsonl", "final_metrics.json", "diagnostics.json", "report.md",
                 "learning_curves.png", "vdfd_per_label.png", "angle_histograms.png",
                 "checkpoints/best.pt", "checkpoints/last.pt"):
        assert (tmp_path / name).is_file(), name
    history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == list(range(4))
    assert [h["phase"] for h in history] == ["warmup"] * 2 + ["self_training"] * 2
    assert 0.0 < history[-1]["pseudo_confident"] <= 1.0
    test = result["test"]
    for key in ("mAP", "micro_f1", "macro_f1", "hamming_loss", "one_error", "vdfd"):
        assert np.isfinite(test[key]), key
    assert test["mAP"] > 20  # far above chance on the synthetic data
    ckpt = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 4
    assert "| mAP |" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize("method", ["bbam", "cap"])
def test_resumed_run_equals_uninterrupted(tmp_path, method):
    full = train(_cfg(tmp_path / "full", f"method={method}", "train.epochs=5"))
    part = train(_cfg(tmp_path / "part", f"method={method}", "train.epochs=5", "train.stop_after_epoch=2"))
    assert part["interrupted"] and part["epoch"] == 3
    assert not (tmp_path / "part" / "final_metrics.json").exists()
    resumed = train(_cfg(tmp_path / "resumed", f"method={method}", "train.epochs=5",
                         f"train.resume={tmp_path / 'part' / 'checkpoints' / 'last.pt'}"))
    assert resumed["epochs_run"] == full["epochs_run"] and resumed["best_epoch"] == full["best_epoch"]
    for key, value in full["test"].items():
        assert resumed["test"][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 5  # the history before the interruption is carried over


def test_resume_rejects_other_run(tmp_path):
    train(_cfg(tmp_path / "a", "train.epochs=3", "train.stop_after_epoch=0"))
    with pytest.raises(ValueError, match="train.resume.*seed"):
        train(_cfg(tmp_path / "b", "seed=1", f"train.resume={tmp_path / 'a'}"))
    with pytest.raises(FileNotFoundError, match="train.resume"):
        train(_cfg(tmp_path / "c", f"train.resume={tmp_path / 'missing.pt'}"))


def test_config_typo_is_a_clear_error():
    with pytest.raises(ConfigCompositionException, match="train.epochz"):
        _compose(["train.epochz=3"])
    with pytest.raises(ConfigCompositionException, match="methd"):
        _compose(["methd=bam"])


def test_bad_data_files_fail_clearly_and_write_nothing(tmp_path):
    missing = tmp_path / "nope.npz"
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        train(_cfg(tmp_path / "out1", "data=npz", f"data.path={missing}"))
    bad = tmp_path / "bad_labels.npz"
    np.savez(bad, X=np.random.rand(20, 3).astype(np.float32), Y=np.full((20, 2), 2, dtype=np.int8))
    with pytest.raises(ValueError, match="bad_labels.npz"):
        train(_cfg(tmp_path / "out2", "data=npz", f"data.path={bad}"))
    garbage = tmp_path / "garbage.arff"
    garbage.write_text("@relation x\n@attribute a numeric\n@data\nnot,a,row\n")
    with pytest.raises(ValueError, match="garbage.arff"):
        train(_cfg(tmp_path / "out3", "data=arff", f"data.path={garbage}", "data.num_labels=1"))
    assert not any((tmp_path / f"out{i}").exists() for i in (1, 2, 3))


def test_multirun_sweep_and_collect(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "bbam.train", "-m", "method=bbam,supervised", "seed=0,1",
           f"hydra.sweep.dir={tmp_path}", *FAST_DATA, *FAST, "train.epochs=3"]
    subprocess.run(cmd, check=True, env=env, cwd=tmp_path, capture_output=True, timeout=600)
    runs = sorted(tmp_path.rglob("final_metrics.json"))
    assert len(runs) == 4
    out = subprocess.run([sys.executable, "-m", "bbam.app.collect", str(tmp_path)], check=True,
                         capture_output=True, text=True).stdout
    assert "| synthetic | 0.1 | bbam | 2 |" in out and "| synthetic | 0.1 | supervised | 2 |" in out
    assert "±" in out


def _cli(tmp_path, *overrides, check=True):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "bbam.train", *overrides], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_cli_names_the_run_folder_and_logs_to_train_log(tmp_path):
    run = tmp_path / "run"
    proc = _cli(tmp_path, f"hydra.run.dir={run}", *FAST_DATA, *FAST, "train.epochs=3")
    console = proc.stdout + proc.stderr
    assert f"run folder: {run.resolve()}" in console        # at the start ...
    assert f"report: {run.resolve() / 'report.md'}" in console  # ... and at the end
    log = (run / "train.log").read_text()
    assert f"run folder: {run.resolve()}" in log and "done: test mAP" in log
    assert log.count("val mAP") == 3 and "epoch 0 (warmup)" in log and "epoch 2 (self_training)" in log
    assert "final metrics" in log and "Micro-F1" in log
    assert "epoch 0 (warmup)" not in console  # per-epoch lines go to the file only


def test_cli_failed_run_leaves_no_empty_folder(tmp_path):
    run = tmp_path / "run"
    proc = _cli(tmp_path, f"hydra.run.dir={run}", "data=npz", f"data.path={tmp_path / 'nope.npz'}",
                check=False)
    assert proc.returncode == 2 and "nope.npz" in proc.stderr and "Traceback" not in proc.stderr
    assert not run.exists()  # a user's mistake: its message only, and no folder


def test_cli_stopped_run_keeps_its_folder_and_says_how_to_resume(tmp_path):
    run = tmp_path / "run"
    proc = _cli(tmp_path, f"hydra.run.dir={run}", *FAST_DATA, *FAST, "train.stop_after_epoch=1")
    assert f"continue with: python -m bbam.train train.resume={run.resolve() / 'checkpoints' / 'last.pt'}" \
        in (proc.stdout + proc.stderr).replace(sys.executable, "python")
    assert (run / "checkpoints" / "last.pt").is_file()


@pytest.mark.parametrize("data", sorted(FILE_DATASETS))
def test_file_datasets_are_named_after_the_file(data, tmp_path):
    cfg = _compose([f"data={data}", f"data.{FILE_DATASETS[data]}={tmp_path / 'my_set.train.npz'}"])
    assert cfg.data.name == "my_set.train"


def test_cli_missing_data_path_is_a_clear_error(tmp_path):
    proc = _cli(tmp_path, f"hydra.run.dir={tmp_path / 'run'}", "data=npz", check=False)
    assert proc.returncode != 0
    assert "config key 'data.path' is required" in proc.stderr and not (tmp_path / "run").exists()


def test_train_compile_gives_the_eager_result(tmp_path):
    """train.compile=true (inductor, dropout drawn as in eager mode) trains the same run: the
    same test metrics within float tolerance, and the per-epoch losses too."""
    from bbam.train import train

    results = {}
    for flag in ("false", "true"):
        cfg = _compose(["data=synthetic", "data.num_samples=300", "method=cap", "train.epochs=3",
                        "train.warmup_epochs=1", "train.progress=false", f"train.compile={flag}"])
        cfg.out_dir = str(tmp_path / flag)
        results[flag] = train(cfg)
    assert results["true"]["test"]["mAP"] == pytest.approx(results["false"]["test"]["mAP"], abs=1e-4)
    losses = {flag: [json.loads(line).get("train_loss") for line in (tmp_path / flag / "metrics.jsonl").open()]
              for flag in results}
    assert losses["true"] == pytest.approx(losses["false"], rel=1e-4)
