"""A scikit-learn estimator around the training app: semi-supervised multi-label learning
on in-memory arrays.

Example::

    from bbam.estimator import SemiSupervisedMultiLabelClassifier

    Y = ...  # [N, K] with 1 (positive), 0 (negative), -1 (unknown); all -1 rows are unlabeled
    clf = SemiSupervisedMultiLabelClassifier(method="bbam", epochs=20).fit(X, Y)
    scores = clf.predict_proba(X_new)   # [M, K] in [0, 1]
    labels = clf.predict(X_new)         # [M, K] in {0, 1}

Rows and splits (the app's ``split.*`` keys are not used here):

* a row whose labels are all ``-1`` is **unlabeled** (the self-training pool);
* a row with at least one known label is **labeled**. Its unknown entries are taken as
  negatives (``partial_labels="negative"``, the usual "unannotated = absent" reading of
  multi-label annotation) or the whole row joins the unlabeled pool
  (``partial_labels="unlabeled"``, its known labels then unused);
* a ``validation_fraction`` share of the labeled rows (iterative stratification, at least
  one row) is held out for model selection and threshold tuning; the engine's test split
  is the validation split (no test rows: nothing is reported on data used for selection).

The app's config is composed with ``method``, ``model`` and ``overrides`` (Hydra override
strings, e.g. ``["train.lr=0.001", "model.encoder.hidden=[64]"]``); ``epochs`` /
``warmup_epochs`` / ``random_state`` / ``device`` set ``train.epochs``,
``train.warmup_epochs``, ``seed`` and ``device`` when given. The run folder (``out_dir``, or
a temporary folder, removed once the model is loaded) holds the usual run files, and prediction
goes through :class:`bbam.app.predict.Predictor` on that folder.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, MultiOutputMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from bbam.data import MultiLabelData, iterative_stratification

__all__ = ["SemiSupervisedMultiLabelClassifier"]


def _numpy(X):
    return X.detach().cpu().numpy() if isinstance(X, torch.Tensor) else X


class SemiSupervisedMultiLabelClassifier(MultiOutputMixin, ClassifierMixin, BaseEstimator):
    """S2ML2-BBAM (or another app method) as a scikit-learn multi-label classifier.

    Args:
        method: the app's ``method`` config (``bbam``, ``bbam_cls``, ``bam``, ``cap``, ``supervised``).
        model: the app's ``model`` config for feature vectors (``mlp`` or ``linear``).
        epochs, warmup_epochs: ``train.epochs`` / ``train.warmup_epochs`` (None: the config's).
        validation_fraction: share of the labeled rows held out for validation, in (0, 1).
        partial_labels: ``"negative"`` or ``"unlabeled"``: how rows with some unknown labels are used.
        thresholds: ``"global"`` (``train.threshold``) or ``"tuned"`` (per label, on validation) for :meth:`predict`.
        overrides: Hydra override strings applied last (None: none).
        random_state: ``seed`` of the run and of the validation split (int).
        device: ``cpu``, ``cuda``, ``auto``.
        out_dir: run folder to keep (None: a temporary one, removed after fit; ``run_dir_`` is then None).

    Fitted attributes: ``classes_`` (K arrays ``[0, 1]``, scikit-learn's multi-output
    convention), ``label_names_``, ``n_features_in_``, ``n_labels_``, ``predictor_``
    (:class:`~bbam.app.predict.Predictor`), ``run_dir_``, ``split_sizes_``.
    """

    def __init__(self, method: str = "bbam", model: str = "mlp", epochs: Optional[int] = None,
                 warmup_epochs: Optional[int] = None, validation_fraction: float = 0.2,
                 partial_labels: str = "negative", thresholds: str = "global",
                 overrides: Optional[Sequence[str]] = None, random_state: int = 0, device: str = "cpu",
                 out_dir: Optional[Union[str, Path]] = None):
        self.method = method
        self.model = model
        self.epochs = epochs
        self.warmup_epochs = warmup_epochs
        self.validation_fraction = validation_fraction
        self.partial_labels = partial_labels
        self.thresholds = thresholds
        self.overrides = overrides
        self.random_state = random_state
        self.device = device
        self.out_dir = out_dir

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = False
        tags.classifier_tags.multi_label = True
        return tags

    # ------------------------------------------------------------------ fit
    def _config(self, out_dir: Path):
        from bbam.train import compose_config

        overrides = [f"method={self.method}", f"model={self.model}", f"seed={int(self.random_state)}",
                     f"device={self.device}", "train.progress=false"]
        if self.epochs is not None:
            overrides.append(f"train.epochs={int(self.epochs)}")
        if self.warmup_epochs is not None:
            overrides.append(f"train.warmup_epochs={int(self.warmup_epochs)}")
        overrides += list(self.overrides or [])
        cfg = compose_config(overrides)
        cfg.out_dir = str(out_dir)
        cfg.data.name = "in_memory"  # the data config is not used (fit's arrays are), only named in reports
        return cfg

    def _rows(self, Y: np.ndarray):
        """Labeled / unlabeled row indices and the labeled rows' {0, 1} targets."""
        if self.partial_labels not in ("negative", "unlabeled"):
            raise ValueError(f"partial_labels must be 'negative' or 'unlabeled', got {self.partial_labels!r}")
        known = Y != -1
        labeled = known.all(1) if self.partial_labels == "unlabeled" else known.any(1)
        lab, unl = np.flatnonzero(labeled), np.flatnonzero(~labeled)
        if lab.size < 2:
            raise ValueError(f"Y: at least 2 labeled rows are needed (training + validation), got {lab.size}")
        return lab, unl, np.where(Y[lab] == 1, 1, 0).astype(np.int8)

    def fit(self, X, Y) -> "SemiSupervisedMultiLabelClassifier":
        """Train on ``X`` ``[N, D]`` (real, finite) and ``Y`` ``[N, K]`` in {1, 0, -1}."""
        # scikit-learn's checks and messages (2-D, finite, >= 2 rows, same row count); sets n_features_in_
        X, Y = validate_data(self, _numpy(X), _numpy(Y), multi_output=True, dtype=np.float32, ensure_min_samples=2)
        if Y.ndim != 2:
            raise ValueError(f"Y must be a 2-D array [N, K] (K labels), got shape {Y.shape}")
        if not np.isin(Y, (-1, 0, 1)).all():
            raise ValueError("Y must hold only 1 (positive), 0 (negative) and -1 (unknown)")
        if not (0.0 < float(self.validation_fraction) < 1.0):
            raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction!r}")
        if self.thresholds not in ("global", "tuned"):
            raise ValueError(f"thresholds must be 'global' or 'tuned', got {self.thresholds!r}")
        lab, unl, Y_lab = self._rows(Y)
        Y01 = np.zeros(Y.shape, dtype=np.int8)  # unlabeled rows' targets are never read by the learner
        Y01[lab] = Y_lab
        data = MultiLabelData(X, Y01, name="in_memory")  # validates X (finite, real) and Y
        n_val = min(max(1, int(round(float(self.validation_fraction) * lab.size))), lab.size - 1)
        train_part, val_part = iterative_stratification(Y_lab, [1 - n_val / lab.size, n_val / lab.size],
                                                        seed=int(self.random_state))
        idx = {"labeled": torch.from_numpy(lab)[train_part], "unlabeled": torch.from_numpy(unl),
               "val": torch.from_numpy(lab)[val_part]}
        idx["test"] = idx["val"]  # the engine's test split: no held-out test rows here

        tmp = tempfile.mkdtemp(prefix="bbam_fit_") if self.out_dir is None else None
        out_dir = Path(self.out_dir if tmp is None else tmp)
        try:
            self._fit_run(data, idx, out_dir)
        finally:
            if tmp is not None:  # the Predictor holds everything in memory once loaded
                shutil.rmtree(tmp, ignore_errors=True)
        self.run_dir_ = None if tmp is not None else str(out_dir)
        self.n_labels_ = Y.shape[1]
        self.label_names_ = list(data.label_names)
        self.classes_ = [np.array([0, 1]) for _ in range(Y.shape[1])]
        self.split_sizes_ = {name: int(i.numel()) for name, i in idx.items() if name != "test"}
        return self

    def _fit_run(self, data, idx, out_dir: Path) -> None:
        """Train in ``out_dir`` on ``data`` rows ``idx`` and load the selected model as ``predictor_``:
        the app's own steps (:mod:`bbam.app.run`) on the caller's split."""
        from omegaconf import OmegaConf

        from bbam.app.atomic import atomic_write_text
        from bbam.app.plan import prepare
        from bbam.app.predict import Predictor
        from bbam.app.run import build_engine, save_model_files
        from bbam.app.runtime import seed_everything
        from bbam.devices import resolve_device

        cfg = self._config(out_dir)
        seed_everything(int(cfg.seed), bool(cfg.deterministic))
        device = resolve_device(str(cfg.device))
        # the app's plan on the caller's rows and split (train.scaling / method.margin / method.scale = auto
        # chosen from the training pool, as the app)
        plan = prepare(cfg, device, data=data, splits=idx)
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "config.yaml", OmegaConf.to_yaml(plan.cfg, resolve=True))
        engine = build_engine(plan, out_dir)
        engine.fit(progress=False)
        engine.load_best()
        val_scores, _, _ = engine.outputs(plan.tensors["val"].x, keep=("scores",))
        save_model_files(out_dir, plan, val_scores)

        self.predictor_ = Predictor.from_run(out_dir, device=device)
        self.best_val_mAP_ = float(engine.state.best_map)

    # ------------------------------------------------------------------ predict
    def predict_proba(self, X) -> np.ndarray:
        """Scores ``[M, K]`` in [0, 1] (float32) of raw inputs ``X`` ``[M, D]``."""
        check_is_fitted(self, "predictor_")
        X = validate_data(self, _numpy(X), reset=False, dtype=np.float32)  # width and finiteness, sklearn messages
        return np.asarray(self.predictor_.predict_proba(X))  # numpy in, numpy out

    def predict(self, X) -> np.ndarray:
        """Labels ``[M, K]`` in {0, 1} (int64): ``score >= threshold`` (``thresholds`` param)."""
        check_is_fitted(self, "predictor_")
        t = self.predictor_.threshold_vector(thresholds=self.thresholds).numpy()
        return (self.predict_proba(X) >= t).astype(np.int64)
