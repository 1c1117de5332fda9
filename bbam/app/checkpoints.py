"""Checkpoint files of a run and the rules of resuming one (application layer).

* :func:`run_settings`: the flattened settings that define what a run trains, saved in
  every checkpoint; :func:`check_same_settings` refuses a resume that would train
  something else, naming every differing key.
* :func:`read_checkpoint`: a ``last.pt`` (or run folder) read with ``weights_only=True``,
  with one clear message for a missing or unreadable file.
* :func:`carry_best_checkpoint`: a run resumed into another folder takes the interrupted
  run's ``best.pt`` along (its best epoch may lie before the interruption).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from .atomic import atomic_copy

__all__ = ["run_settings", "check_same_settings", "read_checkpoint", "carry_best_checkpoint", "current_name",
           "method_state"]

# settings a resumed run may change: they do not change what is trained
_RESUME_FREE = ("train.progress", "train.resume", "train.stop_after_epoch", "train.save_epoch_state",
                "train.loader", "train.num_workers",
                "data.name")
# modules renamed since checkpoints were first written: the same function under its new name
_RENAMED_KEYS = {"data.path_or_name": "data.path"}
# keys added since, with the value that gives the behaviour of the code before them
_ADDED_KEYS = {"method.unlabeled_views": []}
_RENAMED_TARGETS = {"bbam.app.datasets.": "bbam.data.", "bbam.app.inputs.": "bbam.data."}


def current_name(value: Any) -> Any:
    """A config value naming a function of a module renamed since (e.g. an old run's
    ``data._target_``) under its current name; any other value unchanged."""
    if isinstance(value, str):
        for old, new in _RENAMED_TARGETS.items():
            if value.startswith(old):
                return new + value[len(old):]
    return value
_RESUME_FREE_SUFFIXES = (".progress", ".device", ".cache_dir", ".cache")


def _flatten(prefix: str, node: Any, out: Dict[str, Any]) -> Dict[str, Any]:
    """``{"a.b.c": value}`` of the nested dict ``node`` under ``prefix``."""
    if isinstance(node, dict):
        for key, value in node.items():
            _flatten(f"{prefix}.{key}", value, out)
    else:
        out[prefix] = node
    return out


def run_settings(cfg) -> Dict[str, Any]:
    """The flattened settings that define what a run trains (``seed``, ``data``, ``split``,
    ``method``, ``model``, ``train`` less output-only keys), for the resume check."""
    from omegaconf import OmegaConf

    flat: Dict[str, Any] = {}
    for section in ("data", "split", "method", "model", "train"):
        if section in cfg:
            _flatten(section, OmegaConf.to_container(cfg[section], resolve=True), flat)
    return {"seed": int(cfg.seed), **{key: current_name(value) for key, value in flat.items()
                                      if key not in _RESUME_FREE and not key.endswith(_RESUME_FREE_SUFFIXES)}}


def _unflatten(flat: Dict[str, Any], section: str) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in flat.items():
        if key.startswith(section + "."):
            *parents, leaf = key[len(section) + 1:].split(".")
            node = out
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
    return out


def _from_flag_methods(saved: Dict[str, Any], now: Dict[str, Any]) -> Dict[str, Any]:
    """The settings of a checkpoint written before methods were classes, with its ``method``
    flags translated to the class config they mean; keys this version added are taken as
    they are now (they did not exist, so the old run used what they default to)."""
    from .methods.legacy import method_config

    out = {k: v for k, v in saved.items() if not k.startswith("method.")}
    _flatten("method", method_config(_unflatten(saved, "method")), out)
    for key in now:
        if key not in out and not key.startswith("method."):
            out[key] = now[key]
    return out


def check_same_settings(cfg, path: Path, saved: Optional[Dict[str, Any]]) -> None:
    """A resumed run must train what the interrupted one trained: refuse other data,
    split, method, model or schedule settings, naming every differing key."""
    if saved is None:  # a checkpoint written before settings were recorded
        return
    now = run_settings(cfg)
    saved = {key: current_name(value) for key, value in saved.items()}  # checkpoints from before a rename
    for old, new in _RENAMED_KEYS.items():  # keys renamed since (data=npz: data.path_or_name -> data.path)
        if old in saved and new not in saved and new in now and old not in now:
            saved[new] = saved.pop(old)
    if "method._target_" not in saved:
        saved = _from_flag_methods(saved, now)
    for key, before in _ADDED_KEYS.items():  # a checkpoint from before the key: it trained as its default
        if key not in saved and now.get(key, "<absent>") == before:
            saved[key] = before
    differ = sorted(k for k in set(saved) | set(now) if saved.get(k, "<absent>") != now.get(k, "<absent>"))
    if not differ:
        return
    shown = "; ".join(f"{k}: {saved.get(k, '<absent>')!r} in the checkpoint, {now.get(k, '<absent>')!r} now"
                      for k in differ[:8])
    hint = (" Extending or shortening train.epochs on resume is not supported (each phase's learning-rate "
            "schedule spans its planned epochs): start a new run." if "train.epochs" in differ else "")
    raise ValueError(f"config key 'train.resume': {path} was trained with other settings ({shown}).{hint}")


def method_state(ckpt: Dict[str, Any]) -> Dict[str, Any]:
    """The method's state in a checkpoint (``method_state``; checkpoints from before the
    method seam kept the statistics and prototypes at the top level)."""
    state = ckpt.get("method_state")
    return state if state is not None else {"stats": ckpt.get("stats"), "prototypes": ckpt.get("prototypes")}


def read_checkpoint(path, device: torch.device) -> Tuple[Path, Dict[str, Any]]:
    """``(file, checkpoint)`` of ``path``: a ``last.pt`` or a run folder (its
    ``checkpoints/last.pt``); errors name ``train.resume`` and the file."""
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
