"""Defaults chosen on validation by the model that will train (application layer).

A config that leaves ``train.scaling`` ``auto`` (the file datasets ``data=npz|arff|libsvm``)
or picks ``model=auto`` does not get its value from a rule: :func:`choose_on_validation`
trains a short supervised run (``train.probe_epochs`` epochs of the labeled rows, binary
cross-entropy on a linear head, the run's seed and batches) under every candidate --
scalings ``standardize`` and ``tfidf_l2`` (the latter only for non-negative features) times
the models of ``model.auto`` (e.g. ``[mlp, linear]``; methods with a cosine head are not
offered a model that passes its inputs through) -- and keeps the candidate with the
best validation mAP. Every candidate's score and seconds go into the run's record
(``plan.json``, ``inputs.json``, the checkpoints, ``report.md``). A linear probe's
preference is not the network's (measured: a logistic regression gains 9-11 mAP from
tf-idf on binary indicator sets where the MLP loses 1-7), so the probe is the run's own
model and engine.

The margin and scale of the angular methods follow the chosen scaling (0.2 / 30 for
``tfidf_l2``, 0.4 / 20 otherwise) unless given.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch import Tensor

from .config import plain_section

__all__ = ["SCALING_CANDIDATES", "model_section", "with_model", "chosen_model", "model_to_build", "needs_probe", "probe_candidates",
           "choose_on_validation"]

SCALING_CANDIDATES = ("standardize", "tfidf_l2")


def model_section(name: str) -> Dict[str, Any]:
    """The ``model`` section of ``configs/model/<name>.yaml`` as a plain dict."""
    from omegaconf import OmegaConf

    from .config import config_dir

    path = Path(config_dir()) / "model" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.yaml") if p.stem != "auto")
        raise ValueError(f"config key 'model.auto' must list model configs among {', '.join(known)}, got {name!r}")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def with_model(cfg, name: str):
    """A new config: ``cfg`` with the ``model`` section of ``configs/model/<name>.yaml`` (its
    interpolations resolve against the whole config; ``cfg`` itself is not touched)."""
    from omegaconf import OmegaConf

    conf = OmegaConf.to_container(cfg, resolve=False)
    conf["model"] = model_section(name)
    return OmegaConf.create(conf)


def _model_candidates(cfg) -> Optional[List[str]]:
    names = cfg.model.get("auto") if "model" in cfg else None
    if names is None:
        return None
    names = [str(n) for n in names]
    if not names or len(set(names)) != len(names) or "auto" in names:
        raise ValueError(f"config key 'model.auto' must list distinct model configs (e.g. [mlp, linear]), got {names}")
    return names


def chosen_model(cfg, probe: Optional[Dict[str, Any]]) -> Optional[str]:
    """The model config the run builds in place of ``model=auto``: the probe's choice, or
    (``train.probe_epochs=0``) the first of ``model.auto``; None: the config's own model."""
    if probe and probe.get("model"):
        return str(probe["model"])
    names = _model_candidates(cfg)
    return names[0] if names else None


def model_to_build(cfg, probe: Optional[Dict[str, Any]], recorded: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The ``model`` section (plain values) a run builds: the section its probe recorded;
    else, for ``model=auto``, the section a resumed run's plan ``recorded`` (without a probe,
    ``train.probe_epochs=0``: ``configs/model/*.yaml`` may have changed since it started);
    else the :func:`chosen_model`'s from ``configs/model``, else the config's own."""
    if probe and probe.get("model_section"):
        return dict(probe["model_section"])
    if recorded and _model_candidates(cfg) is not None:
        return dict(recorded)
    name = chosen_model(cfg, probe)
    return plain_section((with_model(cfg, name) if name else cfg).model)


def needs_probe(cfg, saved: Optional[Dict[str, Any]] = None) -> bool:
    """Whether ``cfg`` leaves a choice to the probe: ``train.scaling`` ``auto`` or ``model=auto``
    (with ``train.probe_epochs`` > 0), and no ``saved`` choice (a resumed run keeps its own,
    whether a probe or, in a run of an older bbam, the scaling rule made it)."""
    if saved is not None:
        return False
    auto_scaling = str(cfg.train.scaling) == "auto"
    return int(cfg.train.get("probe_epochs", 0)) > 0 and (auto_scaling or _model_candidates(cfg) is not None)


def _angular(cfg) -> bool:
    """Whether the run's method scores with a cosine head (``head = "cosine"``: bam, bbam, ...)."""
    from hydra.utils import get_class

    target = cfg.method.get("_target_") if "method" in cfg else None
    return target is not None and getattr(get_class(str(target)), "head", "linear") == "cosine"


def _learns_features(name: str) -> bool:
    """Whether ``configs/model/<name>.yaml``'s encoder learns a map of the inputs (the
    ``linear`` model's ``LinearEncoder`` with ``out_dim: null`` passes them through)."""
    encoder = model_section(name).get("encoder") or {}
    return not (str(encoder.get("_target_", "")).endswith(".LinearEncoder") and encoder.get("out_dim") is None)


def probe_candidates(cfg, pool_x: Tensor) -> List[Dict[str, Optional[str]]]:
    """The ``{"scaling", "model"}`` pairs to compare (``model`` None: the config's model).

    A method with a cosine head (bam, bbam, bbam_cls) is not offered a model that passes its
    inputs through: its angles would be those of the raw rows (measured on the four
    bag-of-words sets at 10 % labels: ``bbam`` on the ``linear`` model 9.9 mAP below
    ``supervised`` on it, 9.7 against 20.7 on bibtex)."""
    scalings: List[str] = [str(cfg.train.scaling)]
    if scalings[0] == "auto":  # tf-idf needs counts or indicators: no negative values
        scalings = [s for s in SCALING_CANDIDATES if s != "tfidf_l2" or float(pool_x.min()) >= 0]
    models = _model_candidates(cfg) or [None]
    if models != [None] and _angular(cfg):
        learned = [m for m in models if _learns_features(m)]
        if not learned:
            raise ValueError(f"config key 'model.auto' lists only models that pass the inputs through ({models}); "
                             f"method {cfg.method.get('name', '?')!r} scores angles and needs an encoder that learns "
                             f"features: add one, e.g. [mlp, linear]")
        models = learned
    return [{"scaling": s, "model": m} for m in models for s in scalings]


def _probe_config(cfg, candidate: Dict[str, Optional[str]]):
    """A new config: ``cfg`` with the candidate's scaling and model, ``method=supervised``
    and a short schedule (``cfg`` itself is not touched)."""
    from omegaconf import OmegaConf

    conf = OmegaConf.to_container(cfg if candidate["model"] is None else with_model(cfg, candidate["model"]),
                                  resolve=False)
    epochs = int(cfg.train.probe_epochs)
    conf["train"].update(scaling=candidate["scaling"], epochs=epochs, warmup_epochs=0, patience=epochs, compile=False,
                         progress=False, resume=None, stop_after_epoch=None, save_epoch_state=False)
    conf["method"] = {"_target_": "bbam.app.methods.Supervised", "name": "supervised"}
    return OmegaConf.create(conf)


def choose_on_validation(cfg, data, splits, device: torch.device, pool_x: Tensor, prepare) -> Dict[str, Any]:
    """Train every candidate briefly (see the module docstring); returns the record::

        {"scaling", "model": the better candidate's (model None: the config's),
         "model_section": the chosen model's section as built (model=auto; what prediction
             and resume build again, whatever configs/model/*.yaml say later),
         "candidates": [{"scaling", "model", "val_mAP", "seconds"}, ...],
         "epochs": train.probe_epochs, "seconds": the probe's total}

    ``prepare``: :func:`bbam.app.plan.prepare` (handed in by it: the plan depends on the probe,
    not the other way round). The caller's random state is left as it was; the probe's
    epochs are not logged."""
    import logging

    from .build import build_engine

    rows: List[Dict[str, Any]] = []
    t_all = time.perf_counter()
    engine_log = logging.getLogger("bbam.train.engine")
    level = engine_log.level
    devices = [device] if device.type == "cuda" else []
    try:
        engine_log.setLevel(logging.INFO)  # the probe's epochs are not the run's (train.log)
        with torch.random.fork_rng(devices=devices):
            for candidate in probe_candidates(cfg, pool_x):
                t0 = time.perf_counter()
                plan = prepare(_probe_config(cfg, candidate), device, data=data, splits=splits)
                with tempfile.TemporaryDirectory(prefix="bbam-probe-") as tmp:
                    engine = build_engine(plan, tmp)
                    engine.fit(progress=False)
                rows.append({**candidate, "val_mAP": float(engine.state.best_map),
                             "seconds": time.perf_counter() - t0})
    finally:
        engine_log.setLevel(level)
    best = max(rows, key=lambda r: r["val_mAP"])  # ties: the first candidate (standardize, the first model)
    section = None if best["model"] is None else plain_section(with_model(cfg, best["model"]).model)
    return {"scaling": best["scaling"], "model": best["model"], "model_section": section, "candidates": rows,
            "epochs": int(cfg.train.probe_epochs), "seconds": time.perf_counter() - t_all}
