"""What a run tells its user: --help, config mistakes caught before Hydra, early stops in
train.log and the results, and where the data was (a resumed run finds its file again)."""
from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from omegaconf import OmegaConf

from bbam.app.errors import UserError
from bbam.app.overrides import check_overrides
from bbam.app.run import _Announcement
from bbam.train import compose_config, train

from test_stop_resume import ENV, _cli  # noqa: E402  (the subprocess helpers)

SMALL = ["model.encoder.hidden=[16]", "model.encoder.out_dim=8", "train.min_steps_per_epoch=2", "train.progress=false"]
TINY = ["data.num_samples=300", *SMALL]


# ----------------------------------------------------------------------------- --help
def test_help_describes_the_app_its_groups_keys_and_examples():
    proc = subprocess.run([sys.executable, "-m", "bbam.train", "--help"], env=ENV, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "semi-supervised multi-label" in text and len(text.splitlines()) < 60
    assert re.search(r"^method: .*bbam.*cap.*supervised", text, re.M)
    assert re.search(r"^model: .*mlp", text, re.M) and re.search(r"^data: .*emotions", text, re.M)
    examples = text.split("== Examples ==", 1)[1]
    assert len(re.findall(r"^python -m bbam\.train", examples, re.M)) == 5
    assert "_target_" not in text  # not a config dump
    # every key it lists exists, with the default it states (docs match the code)
    cfg = compose_config([])
    listed = re.findall(r"^([a-z_.]+)=(\S+)\s{2,}\S", text, re.M)
    assert len(listed) >= 8 and "train.patience" in dict(listed)
    for key, shown in listed:
        # data.* keys belong to the file datasets' configs (data=npz)
        node = compose_config(["data=npz"]) if key.startswith("data.") else cfg
        parent, _, leaf = key.rpartition(".")
        assert leaf in (OmegaConf.select(node, parent) if parent else node).keys(), key
        if shown.isupper():  # a placeholder (RUN, FILE)
            continue
        value = OmegaConf.select(node, key)
        assert str(value) == shown, (key, value, shown)
    # the examples are valid commands
    for line in re.findall(r"^python -m bbam\.train(.*?)(?:#.*)?$", examples, re.M):
        args = [a for a in line.split() if a != "-m" and "<" not in a]
        check_overrides(args)


# ----------------------------------------------------------------------------- config mistakes
@pytest.mark.parametrize("argv, message", [
    (["train.epochz=3"], r"^unknown config key 'train.epochz': did you mean train.epochs\?$"),
    (["trian.epochs=3"], r"did you mean train.epochs\?"),
    (["+train.epochz=3"], r"'train.epochz' cannot be added \(no config or class reads it\): did you mean train.epochs"),
    (["+model.encoder.widht=3"], r"bbam.app.models.MLPEncoder takes no argument 'widht'"),
    (["method=foo"], r"^unknown method 'foo'; choose one of: bam, bbam, bbam_cls, cap, fixmatch, freematch, "
                     r"labelprop, softmatch, supervised$"),
    (["-m", "method=cap,bbsm"], r"^unknown method 'bbsm' \(did you mean bbam\?\); choose one of"),
    (["data=emotionz"], r"unknown data 'emotionz' \(did you mean emotions\?\)"),
])
def test_config_mistakes_are_one_line(argv, message):
    with pytest.raises(UserError) as info:
        check_overrides(argv)
    assert "\n" not in str(info.value)
    assert re.search(message, str(info.value)), str(info.value)


@pytest.mark.parametrize("argv", [
    [], ["train.epochs=3", "method=cap"], ["-m", "method=cap,bbam", "seed=0,1"], ["++train.epochs=3"],
    ["data=npz", "+data.delimiter=1"],  # load_dataset passes **kw on to the reader
    ["+model.encoder.dropout=0.2"], ["hydra.run.dir=x"], ["--help"], ["-cn", "other"],
])
def test_valid_overrides_pass(argv):
    check_overrides(argv)


# ----------------------------------------------------------------------------- early stopping
def test_early_stop_is_logged_and_recorded(tmp_path):
    # lr 0: the validation mAP never improves after the first self-training epoch
    run = tmp_path / "run"
    proc = _cli(tmp_path, *TINY, "train.epochs=10", "train.warmup_epochs=1", "train.patience=2", "train.lr=0",
                f"hydra.run.dir={run}")
    line = "stopped early after 4 of 10 epochs: no better validation mAP for 2 epochs (train.patience)"
    assert line in proc.stdout + proc.stderr
    assert line in (run / "train.log").read_text()
    result = json.loads((run / "final_metrics.json").read_text())
    assert result["stopped_early"] == {"after_epochs": 4, "patience": 2, "max_epochs": 10}
    assert result["epochs_run"] == 4
    assert "stopped early" in (run / "report.md").read_text()


def test_a_run_to_the_last_epoch_records_no_early_stop(tmp_path):
    cfg = compose_config([*TINY, "train.epochs=3", "train.warmup_epochs=1"])
    cfg.out_dir = str(tmp_path / "run")
    assert train(cfg)["stopped_early"] is None


# ----------------------------------------------------------------------------- the run folder
def test_the_run_folder_is_announced_only_when_reading_the_data_takes_long():
    said = []
    quick = _Announcement(lambda: said.append("quick"))
    with quick.after(0.5):
        pass
    slow = _Announcement(lambda: said.append("slow"))
    with slow.after(0.05):
        time.sleep(0.3)
    assert said == ["slow"] and slow.done and not quick.done


# ----------------------------------------------------------------------------- where the data was
def _write_set(path, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(300, 8)).astype(np.float32)
    Y = (X[:, :3] + 0.3 * rng.normal(size=(300, 3)) > 0).astype(np.int8)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, X=X, Y=Y)


def test_a_resumed_run_finds_its_named_data_from_another_shell(tmp_path, monkeypatch, caplog):
    folder = tmp_path / "mydata"
    _write_set(folder / "smallset" / "smallset.npz")
    monkeypatch.setenv("BBAM_DATA_DIR", str(folder))
    common = ["data=npz", "data.path=smallset", "model=mlp", *SMALL, "train.epochs=4", "train.warmup_epochs=1"]
    cfg = compose_config([*common, "train.stop_after_epoch=1"])
    cfg.out_dir = str(tmp_path / "run")
    assert train(cfg)["interrupted"]
    full = compose_config(common)
    full.out_dir = str(tmp_path / "full")
    expected = train(full)
    record = expected["data_source"]
    assert record["key"] == "data.path" and record["given"] == "smallset"
    assert record["file"] == str((folder / "smallset" / "smallset.npz").resolve()) and len(record["sha256"]) == 64
    monkeypatch.delenv("BBAM_DATA_DIR")  # a new shell: the name no longer resolves
    fresh = compose_config(common)
    fresh.out_dir = str(tmp_path / "fresh")
    with pytest.raises(FileNotFoundError, match="smallset"):
        train(fresh)
    resume = compose_config([*common, f"train.resume={tmp_path / 'run'}"])
    resume.out_dir = str(tmp_path / "run")
    with caplog.at_level(logging.WARNING, logger="bbam.train"):
        result = train(resume)
    assert "data.path=smallset is not found from this shell; using the file the run was trained on" in caplog.text
    assert "changed" not in caplog.text
    assert result["test"]["mAP"] == pytest.approx(expected["test"]["mAP"], rel=1e-6)
    assert result["data_source"]["sha256"] == record["sha256"]


def test_a_resumed_run_says_when_its_data_file_changed(tmp_path, caplog):
    path = tmp_path / "set.npz"
    _write_set(path)
    common = ["data=npz", f"data.path={path}", "model=mlp", *SMALL, "train.epochs=3", "train.warmup_epochs=1"]
    cfg = compose_config([*common, "train.stop_after_epoch=0"])
    cfg.out_dir = str(tmp_path / "run")
    train(cfg)
    _write_set(path, seed=1)  # the same shape, other values
    resume = compose_config([*common, f"train.resume={tmp_path / 'run'}"])
    resume.out_dir = str(tmp_path / "run")
    with caplog.at_level(logging.WARNING, logger="bbam.train"):
        train(resume)
    assert f"the data file {path.resolve()} changed since the run started" in caplog.text


def test_collect_of_a_missing_folder_says_so(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bbam.app.collect", str(tmp_path / "multirun")], env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no such folder" in proc.stderr and "Traceback" not in proc.stderr
