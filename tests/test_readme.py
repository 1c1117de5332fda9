"""The README's Python blocks run as written."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_the_expected_python_blocks():
    blocks = _python_blocks()
    assert len(blocks) == 2
    assert "bbam.LabelAngleStats" in blocks[0] and "Predictor.from_run" in blocks[1]


def test_library_api_block_runs_as_written():
    exec(compile(_python_blocks()[0], "README.md (Library API)", "exec"), {})


def test_trained_model_block_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the block writes outputs/readme_run under the working directory
    namespace = {}
    exec(compile(_python_blocks()[1], "README.md (Using a trained model)", "exec"), namespace)
    assert isinstance(namespace["scores"], np.ndarray) and namespace["scores"].shape == (300, 20)
    assert namespace["labels"].dtype == bool
    assert namespace["clf"].predict_proba(namespace["X"][:3]).shape == (3, 20)
    assert (tmp_path / "outputs" / "readme_run" / "final_metrics.json").is_file()


def test_photo_commands_run_as_written(tmp_path):
    """The two commands of "Photos", on a folder of generated photos (small sizes added)."""
    import shlex
    import subprocess
    import sys

    import pytest

    pytest.importorskip("efficientnet_lite_pytorch", reason="the vision extra is not installed")
    from test_images import write_images

    section = README.read_text().split("### Photos", 1)[1]
    train_cmd, predict_cmd = re.search(r"```bash\n(.*?)```", section, re.S).group(1).strip().splitlines()
    write_images(tmp_path / "photos", n=40, split=True)
    write_images(tmp_path / "new_photos", n=5, seed=1)
    env = {**__import__("os").environ, "BBAM_CACHE_DIR": str(tmp_path / "cache"),
           "PYTHONPATH": str(README.parent)}
    small = ["data.image_size=32", "train.epochs=2", "train.warmup_epochs=1", "train.progress=false",
             "hydra.run.dir=outputs/photos/bbam/run1"]
    args = shlex.split(train_cmd)
    assert args[:3] == ["python", "-m", "bbam.train"]
    subprocess.run([sys.executable, *args[1:], *small], cwd=tmp_path, env=env, check=True, capture_output=True)
    args = [a.replace("<run>", "run1") for a in shlex.split(predict_cmd)]
    assert args[:3] == ["python", "-m", "bbam.predict"]
    subprocess.run([sys.executable, *args[1:]], cwd=tmp_path, env=env, check=True, capture_output=True)
    lines = (tmp_path / "pred" / "predictions.csv").read_text().splitlines()
    assert lines[0] == "index,file,labels" and len(lines) == 6
