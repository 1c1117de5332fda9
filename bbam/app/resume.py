"""``python -m bbam.train train.resume=<last.pt>``: a run resumed from its checkpoint alone
(application layer).

The resumed run takes every setting from the run that wrote the checkpoint: its
``config.yaml`` is the base, and the command line's other overrides must leave what is
trained unchanged. Allowed: values equal to the run's, a config group equal to the one
the run chose (e.g. ``method=cap`` for a cap run), and the keys that cannot change the
results (:data:`bbam.app.checkpoints.RESUME_FREE_DOC`). Anything else is refused before
anything is written, naming the keys. By default the run continues in its own folder
(``out_dir=`` or ``hydra.run.dir=`` resume into another folder, which takes the
``best.pt`` along) and works in the directory it was launched from, so relative paths
in its settings mean what they meant; ``train.log`` records ``resumed from epoch N``.

No Hydra run is started: :func:`plan` composes nothing, creates no folder, and
:func:`configure_logging` reproduces the run's logging (console + ``train.log``,
appended).
"""
from __future__ import annotations

import logging.config
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from .checkpoints import check_same_settings, read_checkpoint
from .errors import UserError

__all__ = ["resume_value", "plan", "ResumePlan", "configure_logging"]

_KEY = "train.resume="
GROUPS = ("method", "model", "data")
# keys of one invocation: not taken over from the interrupted run
_PER_INVOCATION = {"train.stop_after_epoch": None}


def resume_value(argv: Sequence[str]) -> Optional[str]:
    """The value of the last ``train.resume=`` override in ``argv`` (None: not a resume)."""
    value = None
    for arg in argv:
        bare = arg.lstrip("+")
        if bare.startswith(_KEY):
            value = bare[len(_KEY):]
    if value is None or value.strip().strip("'\"").lower() in ("", "null", "none"):
        return None
    return value.strip().strip("'\"")


@dataclass
class ResumePlan:
    cfg: Any                 # the run's config with the accepted overrides; out_dir and train.resume set
    checkpoint: Path         # the last.pt read
    run_dir: Path            # the folder of the run that wrote it
    launch_dir: Optional[Path]  # where that run was launched (relative paths), when known
    epoch: int               # epochs the checkpoint holds


def _run_dir(ckpt: Path) -> Path:
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def _hydra_facts(run_dir: Path) -> Dict[str, Any]:
    """The group choices and launch folder Hydra recorded for the run (``.hydra/hydra.yaml``)."""
    from omegaconf import OmegaConf

    path = run_dir / ".hydra" / "hydra.yaml"
    if not path.is_file():
        return {}
    try:
        hydra = OmegaConf.load(path).hydra
        return {"choices": dict(OmegaConf.to_container(hydra.runtime.choices)), "cwd": str(hydra.runtime.cwd)}
    except Exception:  # another Hydra version's layout: no choices, no launch folder
        return {}


def plan(value: str, overrides: Sequence[str], cwd: Optional[Path] = None) -> ResumePlan:
    """The config of ``train.resume=value`` with the other ``overrides``; raises
    :class:`UserError` (or the checkpoint reader's ``FileNotFoundError`` / ``ValueError``)
    naming the keys when the overrides would train something else."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    cwd = Path.cwd() if cwd is None else Path(cwd)
    path = Path(value).expanduser()
    path, ckpt = read_checkpoint(path if path.is_absolute() else cwd / path, torch.device("cpu"))
    path = path.resolve()
    run_dir = _run_dir(path)
    saved_cfg = run_dir / "config.yaml"
    if not saved_cfg.is_file():
        raise UserError(f"config key 'train.resume': {run_dir} has no config.yaml, so the run's settings are "
                        f"unknown; resume it as it was started (its overrides plus train.resume=...)")
    cfg = OmegaConf.load(saved_cfg)
    facts = _hydra_facts(run_dir)
    out_dir: Optional[Path] = None
    refused: List[str] = []
    try:
        parsed = OverridesParser.create().parse_overrides([o for o in overrides if resume_value([o]) is None
                                                           and not o.lstrip("+").startswith(_KEY)])
    except Exception as err:
        raise UserError(f"bad override with train.resume: {err}") from None
    for ov in parsed:
        key, val = ov.key_or_group, ov.value()
        if key in ("hydra.run.dir", "out_dir"):
            out_dir = Path(str(val)).expanduser()
            out_dir = out_dir if out_dir.is_absolute() else cwd / out_dir
        elif ov.is_hydra_override():
            raise UserError(f"{ov.input_line}: with train.resume only hydra.run.dir (or out_dir) may be given")
        elif key in GROUPS:
            choice = facts.get("choices", {}).get(key)
            if choice != val:
                refused.append(f"{key}: {choice if choice is not None else '<unknown>'!r} in the run, {val!r} now")
        elif OmegaConf.select(cfg, key, default=_MISSING) is _MISSING:
            raise UserError(f"config key '{key}' does not exist in the run's config ({saved_cfg})")
        else:
            OmegaConf.update(cfg, key, val, merge=False)
    for key, default in _PER_INVOCATION.items():
        if not any(ov.key_or_group == key for ov in parsed):
            OmegaConf.update(cfg, key, default, merge=False)
    if refused:
        raise UserError(f"config key 'train.resume': {path} was trained with other settings ({'; '.join(refused)})")
    cfg.train.resume = str(path)
    cfg.out_dir = str((out_dir or run_dir).resolve())
    try:
        check_same_settings(cfg, path, ckpt.get("settings"))
    except ValueError as err:
        raise UserError(str(err)) from None
    launch = Path(facts["cwd"]) if facts.get("cwd") and Path(facts["cwd"]).is_dir() else None
    return ResumePlan(cfg, path, run_dir, launch, int(ckpt.get("epoch", 0)))


_MISSING = object()


def configure_logging(out_dir: Path, config_dir: str) -> None:
    """The run's logging as under Hydra (``config_dir``/train.yaml: hydra.job_logging), with
    ``<out_dir>/train.log`` appended to."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        hydra_cfg = compose(config_name="train", return_hydra_config=True).hydra
    job_logging = hydra_cfg.job_logging
    job_logging.handlers.file.filename = str(Path(out_dir) / "train.log")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    logging.config.dictConfig(OmegaConf.to_container(job_logging, resolve=True))


