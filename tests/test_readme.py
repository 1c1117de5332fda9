"""The README's Python blocks run as written (placeholders filled with a small finished run)."""
from __future__ import annotations

import re
from pathlib import Path

import torch

from bbam.data import make_synthetic
from bbam.train import compose_config, train

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_the_expected_python_blocks():
    blocks = _python_blocks()
    assert len(blocks) == 2
    assert "bbam.LabelAngleStats" in blocks[0] and "Predictor.from_run" in blocks[1]


def test_library_api_block_runs_as_written():
    exec(compile(_python_blocks()[0], "README.md (Library API)", "exec"), {})


def test_trained_model_block_runs_on_a_small_run(tmp_path):
    cfg = compose_config(["data.num_samples=400", "data.num_labels=5", "data.num_features=12", "train.epochs=3",
                          "train.warmup_epochs=1", "train.min_steps_per_epoch=2", "train.progress=false"])
    cfg.out_dir = str(tmp_path / "run")
    train(cfg)
    data = make_synthetic(num_samples=300, num_features=12, num_labels=5, seed=1)
    Y = data.Y.numpy().astype("int64")
    Y[100:] = -1  # unlabeled rows
    import numpy as np

    np.savez(tmp_path / "new.npz", X=data.X[:7].numpy())
    code = _python_blocks()[1].replace('"outputs/<run>"', repr(cfg.out_dir)).replace('"new.npz"',
                                                                                   repr(str(tmp_path / "new.npz")))
    code = code.replace('method="bbam")', 'method="bbam", epochs=3, warmup_epochs=1)')  # short training
    namespace = {"X": data.X.numpy(), "Y": Y}
    exec(compile(code, "README.md (Using a trained model)", "exec"), namespace)
    assert namespace["scores"].shape == (7, 5) and namespace["labels"].dtype == torch.bool
    assert namespace["clf"].predict_proba(data.X[:3].numpy()).shape == (3, 5)
