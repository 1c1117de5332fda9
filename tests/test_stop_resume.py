"""A run a person can stop, resume and read (``python -m bbam.train`` as a subprocess):
resume from the checkpoint alone, graceful SIGINT / SIGTERM stops, short user errors."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

# small, but long enough to be signalled mid-run (300 optimizer steps per epoch)
RUN = ["data.num_samples=600", "train.epochs=4", "train.warmup_epochs=1", "train.min_steps_per_epoch=300",
       "model.encoder.hidden=[32]", "model.encoder.out_dim=16"]
ENV = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
ENV.pop("BBAM_TRACEBACK", None)


def _cli(cwd: Path, *args, env=None, check=True):
    proc = subprocess.run([sys.executable, "-m", "bbam.train", *args], cwd=cwd, env=env or ENV,
                          capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _start(cwd: Path, *args):
    return subprocess.Popen([sys.executable, "-m", "bbam.train", *args], cwd=cwd, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_epoch(run: Path, proc, epochs: int = 1, timeout: float = 300) -> None:
    """Until ``epochs`` epochs are in metrics.jsonl (the run is then inside the next one)."""
    t0 = time.time()
    history = run / "metrics.jsonl"
    while not (history.is_file() and len(history.read_text().splitlines()) >= epochs):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() - t0 < timeout
        time.sleep(0.05)


def _test_metrics(run: Path):
    return json.loads((run / "final_metrics.json").read_text())["test"]


def _assert_same_metrics(got, expected):
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference: the same run, never interrupted."""
    base = tmp_path_factory.mktemp("full")
    _cli(base, *RUN, "train.progress=false", f"hydra.run.dir={base / 'run'}")
    return _test_metrics(base / "run")


def test_killed_run_resumes_from_its_checkpoint_alone_from_another_directory(tmp_path, uninterrupted):
    launch, elsewhere = tmp_path / "launch", tmp_path / "elsewhere"
    launch.mkdir(), elsewhere.mkdir()
    run = launch / "run"
    proc = _start(launch, *RUN, "train.progress=false", "hydra.run.dir=run")  # a relative run folder
    _wait_for_epoch(run, proc, 2)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert not (run / "final_metrics.json").exists()
    resumed = _cli(elsewhere, f"train.resume={run / 'checkpoints' / 'last.pt'}")
    assert list(elsewhere.iterdir()) == []  # continued in its own folder
    _assert_same_metrics(_test_metrics(run), uninterrupted)
    log = (run / "train.log").read_text()
    assert "resumed from epoch 2" in log and log.count("run folder:") == 2
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 4
    assert "resumed from epoch 2" in resumed.stdout
    # report.md says which epochs competed for the selected model
    assert "best within the self-training phase" in (run / "report.md").read_text()


def test_resume_with_other_settings_is_refused_naming_the_keys_and_writes_nothing(tmp_path):
    run = tmp_path / "run"
    _cli(tmp_path, *RUN, "train.min_steps_per_epoch=20", "train.stop_after_epoch=0", "train.progress=false",
         f"hydra.run.dir={run}")
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    last = run / "checkpoints" / "last.pt"
    proc = _cli(elsewhere, f"train.resume={last}", "data.num_samples=6000", "seed=1", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "data.num_samples: 600 in the checkpoint, 6000 now" in proc.stderr and "seed" in proc.stderr
    proc = _cli(elsewhere, f"train.resume={last}", "method=cap", f"hydra.run.dir={tmp_path / 'new'}", check=False)
    assert proc.returncode == 2 and "method: 'bbam' in the run, 'cap' now" in proc.stderr
    assert not (tmp_path / "new").exists() and list(elsewhere.iterdir()) == []
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before  # the run folder untouched
    # equal values, the run's own group choice and keys that cannot change results are accepted
    _cli(elsewhere, f"train.resume={last}", "data.num_samples=600", "method=bbam", "train.progress=false",
         "device=cpu")
    assert (run / "final_metrics.json").is_file()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_gracefully_and_the_printed_command_finishes_the_run(tmp_path, sig, uninterrupted):
    run = tmp_path / "run"
    proc = _start(tmp_path, *RUN, f"hydra.run.dir={run}")  # progress bar on, as a person runs it
    _wait_for_epoch(run, proc, 1)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + sig, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    lines = [line for line in err.splitlines() if "resume with:" in line]
    assert len(lines) == 1 and lines[0].startswith(f"bbam.train: stopped by {sig.name}"), err[-3000:]
    command = lines[0].split("resume with: ", 1)[1]
    # the line outlives the terminal (a Ctrl-C under `| tee` loses it): train.log and report.md
    assert f"stopped by {sig.name}" in (run / "train.log").read_text()
    assert f"resume with: {command}" in (run / "train.log").read_text()
    assert f"resume with: {command}" in (run / "report.md").read_text()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run(command + " train.progress=false", shell=True, cwd=elsewhere, env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_same_metrics(_test_metrics(run), uninterrupted)


def _bad_inputs(folder: Path):
    np.savez(folder / "labels2.npz", X=np.random.rand(20, 3).astype(np.float32), Y=np.full((20, 2), 2, np.int8))
    x = np.random.rand(20, 3).astype(np.float32)
    x[4, 2] = np.nan
    np.savez(folder / "nan.npz", X=x, Y=np.ones((20, 2), np.int8))
    (folder / "table.csv").write_text("a,b\n1,0\n")
    return {
        "missing file": (["data=npz", "data.path=nope.npz"], "nope.npz"),
        "csv": (["data=npz", "data.path=table.csv"], "table.csv"),
        "labels 2": (["data=npz", "data.path=labels2.npz"], "found 2 at row 0"),
        "nan feature": (["data=npz", "data.path=nan.npz"], "row 4, column 2"),
        "bad config value": (["train.select_from=best"], "config key 'train.select_from'"),
        "missing key": (["data=npz"], "config key 'data.path' is required"),
        "missing checkpoint": (["train.resume=none/last.pt"], "none/last.pt"),
        "misspelt key": (["train.epochz=3"], "unknown config key 'train.epochz': did you mean train.epochs?"),
        "added key nothing reads": (["+train.epochz=3"], "did you mean train.epochs?"),
        "unknown method": (["method=foo"], "unknown method 'foo'; choose one of: bam, bbam, bbam_cls, cap"),
        "unknown model": (["model=mpl"], "unknown model 'mpl' (did you mean mlp?)"),
    }


def test_user_errors_are_one_short_message_and_leave_no_folder(tmp_path):
    cases = _bad_inputs(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    for name, (args, expected) in cases.items():
        proc = _cli(tmp_path, *args, "train.progress=false", check=False)
        assert proc.returncode == 2, (name, proc.stderr[-2000:])
        lines = proc.stderr.strip().splitlines()
        assert len(lines) <= 2 and lines[0].startswith("bbam.train: error: "), (name, proc.stderr[-2000:])
        assert expected in proc.stderr and "Traceback" not in proc.stderr, (name, proc.stderr)
        assert "run folder" not in proc.stdout + proc.stderr, name  # a fast failure prints only its error
        if name in ("misspelt key", "added key nothing reads", "unknown method", "unknown model"):
            assert len(lines) == 1 and "Hydra" not in proc.stderr and "search path" not in proc.stderr, name
        if name == "nan feature":
            assert lines[0].count("nan.npz") == 1, lines[0]  # one file name per message
        assert sorted(p.name for p in tmp_path.iterdir()) == before, name  # no outputs/<name>/<method>/ either


def test_traceback_switch_shows_the_traceback_of_a_user_error(tmp_path):
    proc = _cli(tmp_path, "data=npz", "data.path=nope.npz", env=dict(ENV, BBAM_TRACEBACK="1"), check=False)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "nope.npz" in proc.stderr
    assert not (tmp_path / "outputs").exists()


def test_programming_errors_keep_their_traceback():
    from bbam.app.errors import is_user_error, user_input

    with pytest.raises(ValueError) as info:
        with user_input():
            raise ValueError("config key 'x' is bad")
    assert is_user_error(info.value)
    assert not is_user_error(ValueError("a bug")) and not is_user_error(RuntimeError("a bug"))
    with pytest.raises(RuntimeError) as info:
        with user_input():
            raise RuntimeError("a bug in a reader")
    assert not is_user_error(info.value)


def test_shipped_data_paths_resolve_the_same_from_any_directory(tmp_path, shared_data_dir):
    code = ("from bbam.train import compose_config; "
            "print(compose_config(['data=reuters21578_text']).data.path)")
    paths = [subprocess.run([sys.executable, "-c", code], cwd=cwd, env=ENV, capture_output=True, text=True,
                            check=True).stdout.strip() for cwd in (tmp_path, Path(__file__).parent)]
    assert paths[0] == paths[1] and Path(paths[0]).is_absolute() and Path(paths[0]).is_file()


def test_checkpoints_from_before_the_new_keys_resume(tmp_path):
    """A checkpoint written before split.unlabeled_ratio, the frozen encoders' runtime, the
    view bank and the resume-free train.compile / train.probe_epochs existed resumes under
    today's config when the new keys keep what it trained; a runtime other than torch is
    refused by name (its features would not be the ones the run trained on)."""
    from bbam.app.checkpoints import check_same_settings, run_settings
    from bbam.app.config import compose_config

    cfg = compose_config(["model=efficientnet_lite0", "model.encoder.runtime=torch", "data.num_samples=60"])
    old = {k: v for k, v in run_settings(cfg).items()
           if k not in ("split.unlabeled_ratio", "model.views.bank") and not k.endswith(".runtime")}
    old.update({"train.probe_epochs": 6, "model.backbone.num_workers": 2})  # keys resume-free today
    check_same_settings(cfg, tmp_path / "last.pt", old)
    auto = compose_config(["model=efficientnet_lite0", "data.num_samples=60"])
    with pytest.raises(ValueError, match=r"model.encoder.runtime: '<absent>' in the checkpoint, 'auto' now"):
        check_same_settings(auto, tmp_path / "last.pt", old)
    pooled = compose_config(["model=efficientnet_lite0", "model.encoder.runtime=torch", "data.num_samples=60",
                             "split.unlabeled_ratio=0.5"])
    with pytest.raises(ValueError, match=r"split.unlabeled_ratio"):
        check_same_settings(pooled, tmp_path / "last.pt", old)


def test_checkpoints_from_before_model_optimizer_and_text_batches_resume(tmp_path):
    """A model=linear checkpoint from before model.optimizer trained with AdamW at train.lr:
    today's config resumes it when it says so (model.optimizer=null, or adamw at train.lr),
    and the default SGD is refused by name. The sentence encoder's embedding batch is free."""
    from bbam.app.checkpoints import check_same_settings, run_settings
    from bbam.app.config import compose_config

    def older(cfg):
        return {k: v for k, v in run_settings(cfg).items() if not k.startswith("model.optimizer")}

    old = older(compose_config(["model=linear", "data.num_samples=60"]))
    for same in (["model.optimizer=null"], ["model.optimizer.name=adamw", "model.optimizer.lr=null"],
                 ["model.optimizer.name=adamw", "model.optimizer.lr=0.002"]):
        check_same_settings(compose_config(["model=linear", "data.num_samples=60", *same]), tmp_path / "last.pt", old)
    with pytest.raises(ValueError, match=r"model.optimizer.name: '<absent>' in the checkpoint, 'sgd' now"):
        check_same_settings(compose_config(["model=linear", "data.num_samples=60"]), tmp_path / "last.pt", old)
    with pytest.raises(ValueError, match=r"model.optimizer.lr"):
        check_same_settings(compose_config(["model=linear", "data.num_samples=60", "model.optimizer.name=adamw",
                                            "model.optimizer.lr=0.1"]), tmp_path / "last.pt", old)
    text = ["data=reuters21578_text", "model=sentence_encoder"]
    saved = run_settings(compose_config(text))
    saved.update({"model.sentence.batch_size": 64, "data.sentence_encoder.batch_size": 64})  # the older default
    check_same_settings(compose_config(text), tmp_path / "last.pt", saved)
