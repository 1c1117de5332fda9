"""Checkpoint files of a run and the rules of resuming one (application layer).

* :func:`run_settings`: the flattened settings that define what a run trains, saved in
  every checkpoint; :func:`check_same_settings` refuses a resume that would train
  something else, naming every differing key.
* :func:`read_checkpoint`: a ``last.pt`` (or run folder) read with ``weights_only=True``,
  with one clear message for a missing or unreadable file.
* :func:`carry_best_checkpoint`: a run resumed into another folder takes the interrupted
  run's ``best.pt`` along (its best epoch may lie before the interruption).
* :func:`older_run_error`, :func:`check_current_checkpoint`, :func:`check_current_config`:
  a run folder written by an older bbam (checkpoint ``format`` 1, no ``settings``, a
  ``method`` section of flags) is refused in one line that names ``python -m bbam.migrate``,
  which rewrites it into today's format once (:mod:`bbam.migrate`); nothing here reads the
  older formats.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import torch

from .atomic import atomic_copy
from .errors import UserError

__all__ = ["run_settings", "settings_of", "check_same_settings", "check_resumable", "engine_checkpoint",
           "saved_choice", "RESOLVED_KEYS", "read_checkpoint", "carry_best_checkpoint",
           "method_state", "FORMAT", "SETTINGS_SECTIONS", "older_run_error", "check_current_checkpoint",
           "check_current_config", "run_folder"]

FORMAT = 2  # the checkpoint format the engine writes ("format"); python -m bbam.migrate rewrites older ones
SETTINGS_SECTIONS = ("data", "split", "method", "model", "train")  # config sections that define a run
# settings a resumed run may change: they do not change what is trained
_RESUME_FREE = ("train.progress", "train.resume", "train.stop_after_epoch", "train.save_epoch_state",
                "train.loader", "train.num_workers",
                "train.probe_epochs",  # a resumed run keeps the choice its probe (or the rule) made
                "train.compile",  # the same steps compiled or eager (dropout draws as eager's)
                "model.sentence.batch_size", "data.sentence_encoder.batch_size",  # not in the embeddings' cache key
                "data.name")
# the config keys a run's plan may resolve (bbam.app.plan), and where its scaling record holds them
RESOLVED_KEYS = {"train.scaling": "scaling", "method.margin": "margin", "method.scale": "scale"}
_RESUME_FREE_SUFFIXES = (".progress", ".device", ".cache_dir", ".cache",
                         ".num_workers", ".shard_rows")  # how a feature pass is spread, not what it computes
# methods whose config has had ``unlabeled_views`` since it exists (a run of them without it is older)
_VIEW_METHODS = ("bbam.app.methods.CAP", "bbam.app.methods.BAM", "bbam.app.methods.BBAM")
_CONSISTENCY_METHODS = ("bbam.app.methods.FixMatch", "bbam.app.methods.SoftMatch")


def added_method_keys(target: Optional[str]) -> Dict[str, Any]:
    """The ``method`` keys added to the configs since checkpoints hold settings, at the values
    that train as an older run of the class ``target`` did (its ``method.graph`` is unused
    with ``pseudo_labels: model``). Read by the resume check and by ``python -m bbam.migrate``."""
    if target in _VIEW_METHODS:
        return {"pseudo_labels": "model", "teacher": "ema", "weight_by_certainty": False}
    if target in _CONSISTENCY_METHODS:
        return {"teacher": "model", "unlabeled_norm": "sum"}
    return {}


def _flatten(prefix: str, node: Any, out: Dict[str, Any]) -> Dict[str, Any]:
    """``{"a.b.c": value}`` of the nested dict ``node`` under ``prefix``."""
    if isinstance(node, dict):
        for key, value in node.items():
            _flatten(f"{prefix}.{key}", value, out)
    else:
        out[prefix] = node
    return out


def _defining(flat: Mapping[str, Any]) -> Dict[str, Any]:
    """``flat`` less the keys a resumed run may change (:data:`_RESUME_FREE`)."""
    return {key: value for key, value in flat.items()
            if key not in _RESUME_FREE and not key.endswith(_RESUME_FREE_SUFFIXES)}


def settings_of(seed: int, sections: Mapping[str, Any]) -> Dict[str, Any]:
    """The flattened settings of plain config ``sections`` (``{"data": {...}, ...}``, the
    keys of :data:`SETTINGS_SECTIONS` present) and ``seed``, less output-only keys."""
    flat: Dict[str, Any] = {}
    for section in SETTINGS_SECTIONS:
        if section in sections:
            _flatten(section, sections[section], flat)
    return {"seed": int(seed), **_defining(flat)}


def run_settings(cfg) -> Dict[str, Any]:
    """The flattened settings that define what a run trains (``seed``, ``data``, ``split``,
    ``method``, ``model``, ``train`` less output-only keys), for the resume check."""
    from omegaconf import OmegaConf

    return settings_of(int(cfg.seed), {section: OmegaConf.to_container(cfg[section], resolve=True)
                                       for section in SETTINGS_SECTIONS if section in cfg})


# ----------------------------------------------------------------------------- runs of an older bbam
def run_folder(path: Path) -> Path:
    """The run folder of a file in it (``checkpoints/last.pt`` -> the folder above ``checkpoints``)."""
    path = Path(path)
    if path.is_dir():
        return path
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def older_run_error(path: Path, run: Optional[Path] = None) -> UserError:
    """The one-line refusal of a file written by an older bbam (a user's mistake: exit status 2)."""
    return UserError(f"{path} was written by an older bbam: run python -m bbam.migrate "
                     f"{run if run is not None else run_folder(path)} once")


def _older_settings(flat: Mapping[str, Any]) -> bool:
    """Cheap markers of settings written by an older bbam: a ``method`` section of flags (no
    ``method._target_``), or CAP / BAM / BBAM without ``method.unlabeled_views``."""
    target = flat.get("method._target_")
    return target is None or (target in _VIEW_METHODS and "method.unlabeled_views" not in flat)


def check_current_checkpoint(path: Path, ckpt: Mapping[str, Any], run: Optional[Path] = None) -> None:
    """Refuse (:func:`older_run_error`) a checkpoint of an older format: ``format`` other
    than :data:`FORMAT`, no ``settings`` or ``method_state``, or older settings."""
    settings = ckpt.get("settings")
    if (ckpt.get("format") != FORMAT or not isinstance(settings, dict) or "method_state" not in ckpt
            or _older_settings(settings)):
        raise older_run_error(path, run)


def check_current_config(cfg, path: Path, run: Optional[Path] = None) -> None:
    """Refuse (:func:`older_run_error`) a run's ``config.yaml`` (``cfg``) written by an older
    bbam: its ``method`` section has no ``_target_`` (flags), or lacks a key added since."""
    from omegaconf import OmegaConf

    method = cfg.get("method") if hasattr(cfg, "get") else None
    flat = _flatten("method", OmegaConf.to_container(method, resolve=False) if method is not None else {}, {})
    if _older_settings(flat):
        raise older_run_error(path, run)


# ----------------------------------------------------------------------------- resuming
def _trained_as_before(key: str, now: Mapping[str, Any]) -> bool:
    """Whether a key absent from an older checkpoint's settings has, in the config ``now``
    (flattened), the value that trains as the older run did (:func:`added_method_keys`)."""
    if key.startswith("method.graph."):
        return now.get("method.pseudo_labels", "model") == "model"
    if key == "split.unlabeled_ratio":  # every unlabeled row, as before the key
        return now[key] == 1.0
    if key == "model.views.bank":  # the bank did not exist: unused unless space=bank
        return now.get("model.views.space") != "bank"
    if key.startswith("model.") and key.endswith(".runtime"):  # frozen passes ran in torch
        return now[key] == "torch"
    if key == "model.optimizer":  # every model trained with AdamW at train.lr
        return now[key] is None
    if key == "model.optimizer.name":
        return now[key] == "adamw"
    if key == "model.optimizer.lr":
        return now.get("model.optimizer.name") == "adamw" and now[key] in (None, now.get("train.lr"))
    old = added_method_keys(now.get("method._target_"))
    name = key[len("method."):]
    return key.startswith("method.") and name in old and now[key] == old[name]


def check_same_settings(cfg, path: Path, saved: Optional[Dict[str, Any]],
                        resolved: Optional[Mapping[str, Any]] = None,
                        saved_resolved: Optional[Mapping[str, Any]] = None) -> None:
    """A resumed run must train what the interrupted one trained: refuse other data,
    split, method, model or schedule settings, naming every differing key (settings of an
    older bbam: :func:`older_run_error`). ``resolved`` / ``saved_resolved``: the values a
    key left ``auto`` stands for now (the plan's, :meth:`bbam.app.plan.RunPlan.resolved`)
    and in the checkpoint (what its run chose, :func:`saved_choice`), by config key; so a
    checkpoint holding concrete values matches a config saying ``auto`` when they agree."""
    if not isinstance(saved, dict) or _older_settings(saved):
        raise older_run_error(path)

    def concrete(flat, values):
        return {k: values[k] if k in (values or {}) and str(v) == "auto" else v for k, v in flat.items()}

    # a checkpoint may hold keys made resume-free since it was written
    now, saved = concrete(run_settings(cfg), resolved), concrete(_defining(saved), saved_resolved)
    differ = sorted((k for k in set(saved) | set(now) if saved.get(k, "<absent>") != now.get(k, "<absent>")
                     and not (k not in saved and _trained_as_before(k, now))),
                    key=lambda k: (k.count("."), k))  # a section's own keys before its sub-sections'

    if not differ:
        return
    shown = "; ".join(f"{k}: {saved.get(k, '<absent>')!r} in the checkpoint, {now.get(k, '<absent>')!r} now"
                      for k in differ[:8])
    hint = (" Extending or shortening train.epochs on resume is not supported (each phase's learning-rate "
            "schedule spans its planned epochs): start a new run." if "train.epochs" in differ else "")
    raise ValueError(f"config key 'train.resume': {path} was trained with other settings ({shown}).{hint}")


def engine_checkpoint(engine) -> Dict[str, Any]:
    """The checkpoint of a :class:`~bbam.app.engine.SelfTrainingEngine` (format :data:`FORMAT`):
    its loop state, weights (online and EMA), optimizer, scheduler, the method's state, the
    random streams, and what identifies the run (settings, the plan's record, the data file)."""
    state = engine.state
    return {
        "format": FORMAT, "epoch": state.epoch, "best_map": state.best_map, "best_epoch": state.best_epoch,
        "bad_epochs": state.bad_epochs, "history": state.history,
        "model": engine.model.state_dict(), "ema": engine.ema.state_dict(), "optimizer": engine.optimizer.state_dict(),
        "scheduler": None if engine.scheduler is None else engine.scheduler.state_dict(),
        "method_state": engine.method.state_dict(),
        "warmup_best": engine.warmup_best, "warmup_start_epoch": engine.warmup_start_epoch,
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "num_labels": engine.num_labels, "seed": engine.seed, "method": engine.method.name,
        "settings": run_settings(engine.cfg), "plan": engine.plan.record,
        "data_source": engine.plan.data_source,  # where the data was: bbam.app.data_source
    }


def check_resumable(path: Path, ckpt: Mapping[str, Any], cfg, expected: Mapping[str, Any],
                    resolved: Optional[Mapping[str, Any]] = None) -> None:
    """Refuse a checkpoint of another run: ``expected`` facts (``num_labels``, ``seed``,
    ``method``) that differ, or other settings (:func:`check_same_settings`)."""
    for key, value in expected.items():
        if ckpt.get(key) != value:
            raise ValueError(f"config key 'train.resume': checkpoint {path} has {key}={ckpt.get(key)!r}, "
                             f"this run has {value!r}")
    chosen = saved_choice(ckpt)
    check_same_settings(cfg, path, ckpt.get("settings"), resolved,
                        {key: chosen[name] for key, name in RESOLVED_KEYS.items() if name in chosen})


def saved_choice(ckpt: Mapping[str, Any]) -> Dict[str, Any]:
    """The scaling / margin / scale a checkpoint's run used: its plan's record, or (a
    checkpoint written before plans were saved) the concrete values of its settings."""
    plan = ckpt.get("plan")
    if isinstance(plan, Mapping) and isinstance(plan.get("scaling"), Mapping):
        # with the validation probe's record (bbam.app.probe), when the run made one
        return {**{k: plan["scaling"].get(k) for k in RESOLVED_KEYS.values()}, "probe": plan["scaling"].get("probe")}
    settings = ckpt.get("settings") or {}
    return {name: settings[key] for key, name in RESOLVED_KEYS.items() if key in settings}


def method_state(ckpt: Dict[str, Any]) -> Dict[str, Any]:
    """The method's state in a checkpoint (``method_state``: :meth:`bbam.app.methods.Method.state_dict`)."""
    return ckpt["method_state"]


def read_checkpoint(path, device: torch.device) -> Tuple[Path, Dict[str, Any]]:
    """``(file, checkpoint)`` of ``path``: a ``last.pt`` or a run folder (its
    ``checkpoints/last.pt``); errors name ``train.resume`` and the file. A checkpoint of an
    older bbam is refused in one line (:func:`check_current_checkpoint`)."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / "last.pt" if (path / "checkpoints").is_dir() else path / "last.pt"
    if not path.is_file():
        raise FileNotFoundError(f"config key 'train.resume': checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
        if not isinstance(ckpt, dict) or "model" not in ckpt:
            raise ValueError("no model state in it")
    except Exception as err:  # empty, truncated, a text file, another program's pickle
        raise ValueError(f"config key 'train.resume': {path} is not a readable bbam checkpoint "
                         f"({type(err).__name__}: {str(err)[:200]})") from None
    check_current_checkpoint(path, ckpt)
    return path, ckpt


def carry_best_checkpoint(path: Path, best_epoch: int, ckpt_dir: Path) -> None:
    """Copy ``best.pt`` beside the checkpoint ``path`` into ``ckpt_dir`` (a byte copy,
    atomic) when the interrupted run had selected an epoch and the folders differ."""
    source, target = path.parent / "best.pt", Path(ckpt_dir) / "best.pt"
    if best_epoch < 0 or source.resolve() == target.resolve():
        return
    if not source.is_file():
        raise FileNotFoundError(f"config key 'train.resume': {path} selected epoch {best_epoch} "
                                f"but its best checkpoint {source} is missing")
    atomic_copy(source, target)
