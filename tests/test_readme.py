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
