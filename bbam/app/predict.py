"""Prediction from a finished run (application layer).

A run folder written by ``python -m bbam.train`` (or by :mod:`bbam.estimator`) holds
what prediction needs, and :class:`Predictor` reuses exactly that:

* ``config.yaml``: the model's config (encoder, head, margin, scale);
* ``checkpoints/best.pt``: the selected checkpoint; its EMA weights (``ema``) are the
  model the run evaluated, its ``method_state`` the method's state (e.g. the angle
  statistics that give the inference transform's coefficients);
* ``scaler.pt``: the :class:`~bbam.app.preprocess.FeatureScaler` fitted on the run's
  training pool, plus the feature width (``num_features``);
* ``labels.json``: the ``K`` label names;
* ``thresholds.json``: ``{"global": t, "tuned": [t_1..t_K]}``: the global threshold
  (``train.threshold``) and per-label thresholds tuned for F1 on the validation split;
* ``inputs.json``: how raw data became ``X`` (numeric features, the run's vocabulary, or
  its sentence encoder's settings), so :meth:`Predictor.read` turns new files or texts
  into inputs the same way (:mod:`bbam.app.inputs`); its ``scaling`` record (runs
  since ``train.scaling=auto``) is the scaling, margin and scale the run chose and used.

Scores come from the run's method, as in training (:meth:`bbam.app.methods.Method.scores`:
for the angular methods ``sigmoid(scale * (angle_transform(cos, a, b) - f * margin))`` with
the statistics of ``best.pt``; for the linear-head methods ``sigmoid(logits)``), with bf16
autocast on CUDA when the run used ``train.amp``.

A run folder written by an older bbam (a ``method`` section of flags, a checkpoint of an
older format, no ``inputs.json``) is refused in one line: ``python -m bbam.migrate <run>``
rewrites it once (:mod:`bbam.migrate`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from .atomic import atomic_save, atomic_write_text
from .checkpoints import check_current_checkpoint, check_current_config, method_state, older_run_error
from .inputs import FeatureInputs, Inputs, as_caller_type, inputs_from_record, read_new_data
from .plan import method_values
from .preprocess import FeatureScaler

__all__ = ["Predictor", "tune_thresholds", "save_predictor_files", "RUN_FILES"]

RUN_FILES = ("config.yaml", "checkpoints/best.pt", "scaler.pt", "labels.json", "thresholds.json")


def tune_thresholds(scores: Tensor, targets: Tensor, default: float) -> List[float]:
    """Per-label thresholds maximising F1 of ``score >= t`` on ``scores``/``targets`` ``[N, K]``.

    Candidates are the label's own scores (every distinct prediction set of the rule is
    one of them, so the tuned F1 is never below the F1 of any global threshold on these
    rows). A label with no positive row keeps ``default`` (F1 is 0 for every candidate).
    Ties keep the highest threshold (fewest predicted positives)."""
    out: List[float] = []
    s_all, y_all = scores.detach().float().cpu(), targets.detach().cpu()
    for k in range(s_all.shape[1]):
        s, y = s_all[:, k], (y_all[:, k] == 1)
        n_pos = int(y.sum())
        if n_pos == 0:
            out.append(float(default))
            continue
        order = torch.argsort(s, descending=True, stable=True)
        s_sorted, y_sorted = s[order], y[order].double()
        tp = torch.cumsum(y_sorted, 0)
        predicted = torch.arange(1, len(s) + 1, dtype=torch.float64)
        # a threshold at s_sorted[i] predicts every row with an equal score: take the last of each tie run
        last = torch.ones(len(s), dtype=torch.bool)
        last[:-1] = s_sorted[1:] != s_sorted[:-1]
        f1 = torch.where(last, 2 * tp / (predicted + n_pos), torch.full_like(tp, -1.0))
        out.append(float(s_sorted[int(torch.argmax(f1))]))  # argmax: first (highest) of equal maxima
    return out


def save_predictor_files(out_dir: Path, scaler: FeatureScaler, num_features: int, label_names: Sequence[str],
                         val_scores: Tensor, val_targets: Tensor, threshold: float,
                         inputs: Optional[Dict[str, Any]] = None) -> None:
    """Write ``scaler.pt``, ``labels.json``, ``thresholds.json`` and ``inputs.json`` into a run folder.

    ``val_scores``/``val_targets``: ``[N_val, K]`` scores of the selected model and the
    validation labels (the thresholds are tuned on them, never on the test split);
    ``inputs``: :meth:`bbam.app.inputs.Inputs.record` (default: numeric features)."""
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "inputs.json", json.dumps(inputs or {"kind": "features"}))
    atomic_save({**scaler.state_dict(), "num_features": int(num_features)}, out_dir / "scaler.pt")
    atomic_write_text(out_dir / "labels.json", json.dumps(list(label_names)))
    tuned = tune_thresholds(val_scores, val_targets, threshold)
    atomic_write_text(out_dir / "thresholds.json", json.dumps({"global": float(threshold), "tuned": tuned}))


def _check_run(run_dir: Union[str, Path]) -> Path:
    run = Path(run_dir)
    if not run.exists():
        raise FileNotFoundError(f"argument 'run': run folder {run} does not exist")
    if not run.is_dir():
        raise ValueError(f"argument 'run': {run} is not a folder")
    missing = [name for name in RUN_FILES if not (run / name).is_file()]
    if "config.yaml" in missing or "checkpoints/best.pt" in missing:
        raise ValueError(f"argument 'run': {run} is not a finished bbam run (missing {', '.join(missing)})")
    if missing:  # runs from before prediction files were saved
        raise ValueError(f"argument 'run': {run} lacks {', '.join(missing)} (written at the end of a run "
                         f"since prediction support; retrain to predict with the run's preprocessing)")
    return run


def _read_inputs_record(run: Path) -> Dict[str, Any]:
    """``inputs.json`` of a run; a run without it, or an image run from before images were
    streamed (no ``backbone`` record), was written by an older bbam."""
    path = run / "inputs.json"
    if not path.is_file():
        raise older_run_error(run, run)
    inputs = json.loads(path.read_text())
    if inputs.get("kind") == "images" and "backbone" not in inputs:
        raise older_run_error(path, run)
    return inputs


def _scaling_values(scaler_state: Dict[str, Any], choice: Optional[Dict[str, Any]], run: Path) -> Dict[str, float]:
    """The margin / scale the run chose for keys its ``config.yaml`` leaves ``auto``
    (``inputs.json``'s ``scaling`` record, made by the run's plan). A record that disagrees
    with ``scaler.pt`` means a damaged run folder."""
    if not choice:  # runs from before the record: config.yaml and scaler.pt hold concrete values
        return {}
    if str(choice.get("scaling")) != str(scaler_state.get("kind")):
        raise ValueError(f"argument 'run': {run}: inputs.json records scaling {choice.get('scaling')!r} but "
                         f"scaler.pt holds {scaler_state.get('kind')!r} (the run folder was altered)")
    return method_values(choice)


class Predictor:
    """The selected model of a finished run, with the run's preprocessing and thresholds.

    Attributes:
        label_names: ``K`` label names; ``num_features``: the input width ``D``;
        thresholds: ``{"global": float, "tuned": [K floats]}``; ``cfg``: the run's config.
    """

    def __init__(self, cfg, model: torch.nn.Module, method, scaler: FeatureScaler, num_features: int,
                 label_names: List[str], thresholds: Dict[str, object], device: torch.device,
                 inputs: Optional[Inputs] = None):
        self.cfg, self.model, self.method, self.scaler = cfg, model.eval(), method, scaler
        self.num_features, self.label_names, self.thresholds = num_features, label_names, thresholds
        self.device = device
        self.inputs = inputs if inputs is not None else FeatureInputs()

    @classmethod
    def from_run(cls, run_dir: Union[str, Path], device: Union[str, torch.device] = "cpu") -> "Predictor":
        """Load the run in ``run_dir`` (see the module docstring for the files it reads)."""
        from hydra.utils import instantiate
        from omegaconf import OmegaConf

        from .methods import build_method
        from .models import MultiLabelModel

        run = _check_run(run_dir)
        device = torch.device(device)
        cfg = OmegaConf.load(run / "config.yaml")
        check_current_config(cfg, run / "config.yaml", run)  # an older bbam's run: python -m bbam.migrate
        record = _read_inputs_record(run)
        ckpt = torch.load(run / "checkpoints" / "best.pt", map_location=device, weights_only=True)
        check_current_checkpoint(run / "checkpoints" / "best.pt", ckpt, run)
        scaler_state = torch.load(run / "scaler.pt", map_location="cpu", weights_only=True)
        label_names = list(json.loads((run / "labels.json").read_text()))
        thresholds = json.loads((run / "thresholds.json").read_text())
        resolved = _scaling_values(scaler_state, record.get("scaling"), run)
        K, D = len(label_names), int(scaler_state["num_features"])
        method = build_method(cfg.method, resolved=resolved)
        method.setup(K, device)
        method.load_state_dict(method_state(ckpt))  # e.g. the angle statistics of the inference transform
        from .probe import model_to_build

        # model=auto: the section of the candidate the run's validation probe chose, as built
        encoder = instantiate(model_to_build(cfg, (record.get("scaling") or {}).get("probe"))["encoder"], in_dim=D)
        model = MultiLabelModel(encoder, method.make_head(encoder.out_dim, K))
        # the EMA copy is the model the run validated, selected and tested
        model.load_state_dict({k[len("module."):]: v for k, v in ckpt["ema"].items() if k.startswith("module.")})
        model.to(device)
        return cls(cfg, model, method, FeatureScaler.from_state_dict(scaler_state), D, label_names,
                   thresholds, device, inputs_from_record(record))

    def read(self, path: Union[str, Path]) -> Tensor:
        """Raw inputs ``[M, D]`` of the new data in ``path``, made as the run made its own:
        ``.npz`` / ARFF / LIBSVM features, ``.jsonl`` / ``.txt`` documents for a run
        trained on text (its vocabulary or sentence encoder), or a folder / label file of
        images for a run on images (its backbone's features, or image rows). Feed them to
        :meth:`predict_proba` / :meth:`predict`. See :mod:`bbam.app.inputs`."""
        return read_new_data(path, self.inputs, self.num_features, len(self.label_names), device=str(self.device))

    def predict_proba(self, x, batch_size: int = 1024) -> Union[Tensor, np.ndarray]:
        """Scores ``[M, K]`` in [0, 1] (float32, CPU) of raw (unscaled) inputs ``x`` ``[M, D]``:
        a torch tensor for a tensor ``x``, else a numpy array (as the scikit-learn estimator)."""
        scores = self._scores(x, batch_size)
        return as_caller_type(x, scores)

    @torch.no_grad()
    def _scores(self, x, batch_size: int = 1024) -> Tensor:
        from .inference import model_outputs

        rows = self.inputs.model_rows(x, self.scaler, self.num_features, self.device)
        # as the engine: bf16 autocast on CUDA when the run trained with train.amp (so CUDA
        # scores equal the run's own evaluation); fp32 on CPU; images decoded in DataLoader workers
        amp = self.device.type == "cuda" and bool(self.cfg.train.amp)
        workers = int(self.cfg.train.get("num_workers", 0))
        scores = model_outputs(self.model, self.method, rows, amp=amp, batch_size=batch_size, keep=("scores",),
                               num_workers=workers)[0]
        return scores.cpu()

    def threshold_vector(self, threshold: Optional[float] = None, thresholds: str = "global") -> Tensor:
        """The ``[K]`` thresholds: ``threshold`` for every label if given, else the run's
        ``"global"`` one (``train.threshold``) or the per-label ``"tuned"`` ones."""
        K = len(self.label_names)
        if threshold is not None:
            return torch.full((K,), float(threshold))
        if thresholds == "global":
            return torch.full((K,), float(self.thresholds["global"]))
        if thresholds == "tuned":
            return torch.tensor(self.thresholds["tuned"], dtype=torch.float32)
        raise ValueError(f"argument 'thresholds' must be 'global' or 'tuned', got {thresholds!r}")

    def predict(self, x, threshold: Optional[float] = None, thresholds: str = "global") -> Union[Tensor, np.ndarray]:
        """Predicted labels ``[M, K]`` (bool): ``score >= threshold`` (see :meth:`threshold_vector`);
        a torch tensor for a tensor ``x``, else a numpy array."""
        labels = self._scores(x) >= self.threshold_vector(threshold, thresholds)
        return as_caller_type(x, labels)

    def __repr__(self) -> str:
        return (f"Predictor(method={self.method.name!r}, D={self.num_features}, K={len(self.label_names)}, "
                f"head={type(self.model.head).__name__})")
