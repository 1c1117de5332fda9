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
import functools
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

import torch
from torch import Tensor

from bbam.data import split_indices

from .checkpoints import RESOLVED_KEYS, saved_choice
from .config import plain_section
from .inputs import Inputs, inputs_of
from .preprocess import FeatureScaler, resolve_scaling
from .probe import choose_on_validation, model_to_build, needs_probe
from .runtime import Split

__all__ = ["RunPlan", "prepare", "instantiate_data", "plain_section", "method_values"]



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
        model: the ``model`` section the run builds (plain values): the config's, or with
            ``model=auto`` the candidate the validation probe chose (:mod:`bbam.app.probe`).
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
    model: Optional[Dict[str, Any]] = None

    @property
    def method_values(self) -> Dict[str, float]:
        """The margin and scale an angular method uses (replacing ``auto`` in its section)."""
        return method_values(self.scaling)

    @property
    def sizes(self) -> Dict[str, int]:
        """Rows per split."""
        return {name: len(split) for name, split in self.tensors.items()}

    def resolved(self) -> Dict[str, Any]:
        """The resolved values of :data:`RESOLVED_KEYS`, by config key."""
        return {key: self.scaling[name] for key, name in RESOLVED_KEYS.items()}

    @functools.cached_property
    def record(self) -> Dict[str, Any]:
        """The plan as JSON-ready values (``plan.json``, and ``plan`` in each checkpoint); made once."""
        return {"dataset": self.data.name, "num_features": self.num_features, "num_labels": self.data.num_labels,
                "sizes": self.sizes, "inputs": self.inputs.record(), "scaling": dict(self.scaling),
                "data_source": self.data_source, "model": self.model}


def method_values(scaling: Mapping[str, Any]) -> Dict[str, float]:
    """The margin and scale of a scaling record (:func:`bbam.app.preprocess.resolve_scaling`)
    that an angular method takes where its section says ``auto`` (:func:`bbam.app.methods.build_method`)."""
    return {k: float(scaling[k]) for k in ("margin", "scale") if scaling.get(k) is not None}


def prepare(cfg, device: torch.device = torch.device("cpu"), *, data=None,
            splits: Optional[Mapping[str, Tensor]] = None, resume: Optional[Mapping[str, Any]] = None) -> RunPlan:
    """The :class:`RunPlan` of ``cfg``.

    Args:
        cfg: a composed config (not modified).
        device: where the splits' rows go (the training device).
        data: the dataset; default: built from ``cfg.data``.
        splits: row indices by split name; default: drawn from ``cfg.split`` and ``cfg.seed``.
        resume: the checkpoint a resumed run continues from (read once, by the caller, who
            hands it to the engine too): the run keeps the scaling / margin / scale it
            recorded, and finds its data file again through its record
            (:mod:`bbam.app.data_source`).
    """
    from omegaconf import OmegaConf

    from . import data_source

    cfg = copy.deepcopy(cfg)
    OmegaConf.set_readonly(cfg, True)  # nothing after the plan writes into the config
    if data is None:
        data = instantiate_data(cfg, None if resume is None else resume.get("data_source"))
    if splits is None:
        splits = split_indices(data, cfg.split.lb_ratio, cfg.split.val_ratio, cfg.split.test_ratio,
                               seed=int(cfg.seed), min_val_size=int(cfg.split.min_val_size),
                               max_val_ratio=float(cfg.split.max_val_ratio),
                               unlabeled_ratio=float(cfg.split.get("unlabeled_ratio", 1.0)))
    inputs = inputs_of(data)
    matrix = inputs.matrix(data)  # a frozen image backbone's features are computed here (cached)
    pool = matrix[torch.cat([splits["labeled"], splits["unlabeled"]])]
    saved = None if resume is None else saved_choice(resume)
    probe = (saved or {}).get("probe")  # a resumed run keeps the choice its probe made
    if needs_probe(cfg, saved):
        probe = choose_on_validation(cfg, data, splits, device, pool, prepare)
    choice = resolve_scaling(cfg, pool, saved, probe)
    scaler = FeatureScaler(choice["scaling"]).fit(pool)
    x = scaler.transform(matrix)
    tensors = {name: inputs.split(x, data.Y, idx, device) for name, idx in splits.items()}
    model = model_to_build(cfg, probe, ((resume or {}).get("plan") or {}).get("model"))
    return RunPlan(cfg, device, data, dict(splits), inputs, int(matrix.shape[1]), scaler, tensors, choice,
                   data_source.describe(cfg.data, data), model)


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
            return instantiate(plain_section(data_cfg), **overrides)
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
