"""A run's plan: every setting resolved once, before anything trains (application layer).

:func:`prepare` turns a composed config into a frozen :class:`RunPlan`: the dataset, its
split, the kind of its inputs (:mod:`bbam.app.inputs`), the scaler fitted on the training
pool, each split's rows on the device, and the defaults left ``auto`` in the config
(``train.scaling``, the method's ``margin`` / ``scale``) with the reason for each choice.
Training, resume, prediction, the scikit-learn estimator and ``bench/`` read the plan;
nothing writes into the config afterwards (the plan holds a read-only copy of it). The
plan's record (:meth:`RunPlan.record`) is saved in every checkpoint and as the run
folder's ``plan.json``; a resumed run takes the values its checkpoint's plan recorded.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from torch import Tensor

from bbam.data import split_indices

from .inputs import Inputs, inputs_of
from .preprocess import FeatureScaler, resolve_scaling
from .runtime import Split

__all__ = ["RunPlan", "prepare", "instantiate_data", "settings_of", "saved_choice", "RESOLVED_KEYS"]

# the config keys a plan may resolve, and where its record holds them
RESOLVED_KEYS = {"train.scaling": "scaling", "method.margin": "margin", "method.scale": "scale"}


@dataclass(frozen=True)
class RunPlan:
    """What a run trains on and with, resolved once (see the module docstring).

    Attributes:
        cfg: the composed config, read-only (``auto`` stays ``auto`` in it: the resolved
            values are :attr:`scaling`'s).
        device: the training device.
        data: the dataset (:class:`~bbam.data.MultiLabelData`).
        splits: row indices of ``labeled``, ``unlabeled``, ``val`` and ``test``.
        inputs: the kind of the inputs (:class:`~bbam.app.inputs.Inputs`).
        num_features: the width ``D`` of the model's input rows (0: the model reads pixels).
        scaler: the :class:`~bbam.app.preprocess.FeatureScaler` fitted on the training pool.
        tensors: each split's :class:`~bbam.app.runtime.Split` on ``device``.
        scaling: the record of the scaling / margin / scale choice
            (:func:`bbam.app.preprocess.resolve_scaling`: values, source, rule, reason).
        data_source: where the data file was (:mod:`bbam.app.data_source`), or None.
        resume: ``(path, checkpoint)`` of the ``last.pt`` a resumed run continues from
            (read once), else None.
    """

    cfg: Any
    device: torch.device
    data: Any
    splits: Mapping[str, Tensor]
    inputs: Inputs
    num_features: int
    scaler: FeatureScaler
    tensors: Mapping[str, Split]
    scaling: Mapping[str, Any]
    data_source: Optional[Dict[str, Any]] = None
    resume: Optional[Tuple[Path, Dict[str, Any]]] = None

    @property
    def method_values(self) -> Dict[str, float]:
        """The margin and scale an angular method uses (replacing ``auto`` in its section)."""
        return {k: self.scaling[k] for k in ("margin", "scale") if self.scaling.get(k) is not None}

    def resolved(self) -> Dict[str, Any]:
        """The resolved values of :data:`RESOLVED_KEYS`, by config key."""
        return {key: self.scaling[name] for key, name in RESOLVED_KEYS.items()}

    def record(self) -> Dict[str, Any]:
        """The plan as JSON-ready values (``plan.json``, and ``plan`` in each checkpoint)."""
        return {"dataset": self.data.name, "num_features": self.num_features,
                "num_labels": self.data.num_labels, "sizes": {k: len(v) for k, v in self.tensors.items()},
                "inputs": self.inputs.record(), "scaling": dict(self.scaling), "data_source": self.data_source}


def settings_of(node) -> Dict[str, Any]:
    """A section of the plan's read-only config as plain values, interpolations resolved, to
    instantiate from (Hydra's ``instantiate`` resolves a config node in place)."""
    from omegaconf import DictConfig, OmegaConf

    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def saved_choice(ckpt: Mapping[str, Any]) -> Dict[str, Any]:
    """The scaling / margin / scale a checkpoint's run used: its plan's record, or (a
    checkpoint written before plans were saved) the concrete values of its settings."""
    plan = ckpt.get("plan")
    if isinstance(plan, Mapping) and isinstance(plan.get("scaling"), Mapping):
        return {k: plan["scaling"].get(k) for k in RESOLVED_KEYS.values()}
    settings = ckpt.get("settings") or {}
    return {name: settings[key] for key, name in RESOLVED_KEYS.items() if key in settings}


def prepare(cfg, device: torch.device = torch.device("cpu"), *, data=None,
            splits: Optional[Mapping[str, Tensor]] = None) -> RunPlan:
    """The :class:`RunPlan` of ``cfg``.

    Args:
        cfg: a composed config (not modified).
        device: where the splits' rows go (the training device).
        data: the dataset; default: built from ``cfg.data`` (a resumed run finds its file
            again through its checkpoint's record, :mod:`bbam.app.data_source`).
        splits: row indices by split name; default: drawn from ``cfg.split`` and ``cfg.seed``.
    """
    from omegaconf import OmegaConf

    from . import data_source
    from .checkpoints import read_checkpoint

    cfg = copy.deepcopy(cfg)
    OmegaConf.set_readonly(cfg, True)  # nothing after the plan writes into the config
    resume = read_checkpoint(Path(cfg.train.resume), device) if cfg.train.get("resume") else None
    saved = resume[1] if resume is not None else {}
    if data is None:
        data = instantiate_data(cfg, saved.get("data_source"))
    if splits is None:
        splits = split_indices(data, cfg.split.lb_ratio, cfg.split.val_ratio, cfg.split.test_ratio,
                               seed=int(cfg.seed), min_val_size=int(cfg.split.min_val_size),
                               max_val_ratio=float(cfg.split.max_val_ratio))
    inputs = inputs_of(data)
    matrix = inputs.matrix(data)  # a frozen image backbone's features are computed here (cached)
    pool = torch.cat([splits["labeled"], splits["unlabeled"]])
    choice = resolve_scaling(cfg, matrix[pool], saved_choice(saved) if resume is not None else None)
    scaler = FeatureScaler(choice["scaling"]).fit(matrix[pool])
    x = scaler.transform(matrix)
    tensors = {name: inputs.split(x, data.Y, idx, device) for name, idx in splits.items()}
    source = data_source.describe(cfg.data, data) if "data" in cfg else None
    return RunPlan(cfg, device, data, dict(splits), inputs, int(matrix.shape[1]), scaler, tensors, choice, source,
                   resume)


def instantiate_data(cfg, data_record=None):
    """Build the dataset; a file or format problem surfaces as its own clear message. A
    resumed run's ``data_record`` (:mod:`bbam.app.data_source`) finds its file again."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from omegaconf.errors import MissingMandatoryValue

    from bbam.app import data_source
    from bbam.data.lookup import fetch_hint

    def build(data_cfg, **overrides):
        try:
            return instantiate(settings_of(data_cfg), **overrides)
        except MissingMandatoryValue as err:  # e.g. data=npz without data.path=...
            key = err.full_key if str(err.full_key).startswith("data.") else f"data.{err.full_key}"
            raise ValueError(f"config key '{key}' is required: add {key}=... to the command") from None
        except InstantiationException as err:
            cause = err.__cause__ or err
            hint = fetch_hint(cause.filename) if isinstance(cause, FileNotFoundError) and cause.filename else None
            if hint:  # a named set's file (data=miml, data=reuters21578_text): how to get it
                raise FileNotFoundError(2, f"{cause.strerror}: {hint}", cause.filename) from None
            if isinstance(cause, (FileNotFoundError, ValueError, ImportError)):
                raise cause from None
            raise

    return data_source.load(cfg.data, build, data_record)
