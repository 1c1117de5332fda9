"""Rewrite run folders written by an older bbam into today's format, once.

    python -m bbam.migrate RUN [RUN ...] [--dry-run]

bbam reads only today's run format; a folder written by an older bbam is refused in one
line naming this command (:func:`bbam.app.checkpoints.older_run_error`). Each ``RUN`` (a
run folder: ``config.yaml``, ``checkpoints/*.pt``, the prediction files) is rewritten in
place so that it resumes and predicts exactly as the older code did:

``config.yaml``
  * module names that moved: ``bbam.app.datasets.*`` / ``bbam.app.inputs.*`` ->
    ``bbam.data.*`` (the same functions);
  * a ``data=npz`` run (Hydra's record in ``.hydra/hydra.yaml``): ``data.path_or_name`` ->
    ``data.path``;
  * a ``method`` section of flags (``self_training``, ``balance``, ``negative_sampling``,
    ``head``, ``stats_angles``, ``cap``, ``loss``, ...; runs from before the methods were
    classes) -> the class config it meant (:func:`method_config`: ``Supervised``, ``CAP``,
    ``BAM``, ``BBAM`` with the run's values); with it the keys added with the method
    classes, at the values that give the old behaviour: ``model.views`` (today's views of the
    run's encoder: no method of that time used views), ``train.loader: tensor``,
    ``train.num_workers: 0``;
  * ``method.unlabeled_views: []`` for CAP / BAM / BBAM runs from before the key (the
    unlabeled inputs themselves, as then).

``checkpoints/*.pt`` (read with ``weights_only=True``)
  * ``settings``: the same steps on its flattened keys; a checkpoint from before settings
    were recorded gets the settings of the migrated ``config.yaml``;
  * ``stats`` / ``prototypes`` at the top level -> ``method_state`` (what
    :meth:`bbam.app.methods.Method.state_dict` holds);
  * ``format`` -> :data:`bbam.app.checkpoints.FORMAT` (2).

``inputs.json``
  * absent in a finished run (runs from before it): ``{"kind": "features"}``, the numeric
    features those runs predicted from.

Everything is computed first, then each changed file is replaced atomically (checkpoints
first, ``config.yaml`` last), so an interrupted migration leaves whole files and a second
call finishes it. A folder already in today's format is reported ``already current`` and
not touched; migrating twice is a no-op. ``--dry-run`` prints what would change and writes
nothing. A folder that cannot be migrated (no ``config.yaml``, an unreadable checkpoint, an
image run from before images were streamed: pixel rows in memory and a CNN this bbam no
longer has, which cannot be converted, retrain it) gets one line on stderr; the exit status
is then 2 (0 otherwise).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

__all__ = ["main", "migrate_run", "apply", "method_config", "MigrationError", "Migration"]

_PACKAGE = "bbam.app.methods"
# modules renamed since the first runs: the same functions under their new names
_RENAMED_TARGETS = {"bbam.app.datasets.": "bbam.data.", "bbam.app.inputs.": "bbam.data."}
# the older code's asymmetric-loss defaults (CAP runs whose loss section left them out)
_OLD_ASL_DEFAULTS = {"gamma_neg": 4.0, "gamma_pos": 0.0, "clip": 0.05}
# the pixel-row image encoder of the runs from before images were streamed (gone since)
_OLD_IMAGE_ENCODER = "bbam.app.models.ImageEncoder"


class MigrationError(ValueError):
    """A run folder that cannot be migrated (the message says why, in one line)."""


@dataclass
class Migration:
    """What migrating one run folder changes: ``changes`` (file name -> what changes in it)
    and ``writes`` (path -> new content: ``str`` for text files, a dict for checkpoints)."""

    run: Path
    changes: Dict[str, List[str]] = field(default_factory=dict)
    writes: Dict[Path, Any] = field(default_factory=dict)

    @property
    def current(self) -> bool:
        return not self.writes


# ----------------------------------------------------------------------------- the method section
def method_config(mc: Dict[str, Any]) -> Dict[str, Any]:
    """The class config (``_target_`` first) meant by an older run's ``method`` section of
    flags ``mc`` (a plain dict); a section with a ``_target_`` is returned unchanged.

    ``self_training: false`` -> ``Supervised``; ``head: linear`` -> ``CAP`` (its ``loss``'s
    ``gamma_neg`` / ``gamma_pos`` / ``clip``, by default 4 / 0 / 0.05); otherwise ``BBAM`` when ``balance``
    (default true) else ``BAM``, with the run's margin, scale, score margin fraction,
    feature source, CAP shares (``cap.pos_per`` / ``cap.neg_per``), negative sampler (none
    when ``negative_sampling`` is false) and, for BBAM, ``stats_gamma`` / ``stats_angles``.
    Missing flags take the older code's defaults."""
    mc = dict(mc)
    if "_target_" in mc:
        return mc
    name = str(mc.get("name", "method"))
    if not mc.get("self_training", True):
        return {"_target_": f"{_PACKAGE}.Supervised", "name": name}
    cap = mc.get("cap") or {}
    shares = {"pos_per": float(cap.get("pos_per", 1.0)), "neg_per": float(cap.get("neg_per", 0.998))}
    if mc.get("head", "cosine") == "linear":
        loss = mc.get("loss") or {}
        asl = {key: float(loss.get(key, default)) for key, default in _OLD_ASL_DEFAULTS.items()}
        return {"_target_": f"{_PACKAGE}.CAP", "name": name, **shares, **asl}
    out = {"_target_": f"{_PACKAGE}.BBAM" if mc.get("balance", True) else f"{_PACKAGE}.BAM", "name": name,
           "margin": float(mc.get("margin", 0.4)), "scale": float(mc.get("scale", 20.0)),
           "predict_margin_fraction": float(mc.get("predict_margin_fraction", 0.5)),
           "features_from": str(mc.get("features_from", "online")), **shares,
           "sampling": mc.get("sampling") if mc.get("negative_sampling", True) else None}
    if mc.get("balance", True):
        out.update(stats_gamma=float(mc.get("stats_gamma", 0.01)),
                   stats_angles=str(mc.get("stats_angles", "prototype")))
    return out


# ----------------------------------------------------------------------------- config trees
def _rename_targets(node: Any) -> Tuple[Any, int]:
    """``node`` with every string naming a renamed module under its new name, and how many."""
    if isinstance(node, dict):
        out, count = {}, 0
        for key, value in node.items():
            out[key], n = _rename_targets(value)
            count += n
        return out, count
    if isinstance(node, list):
        items = [_rename_targets(v) for v in node]
        return [v for v, _ in items], sum(n for _, n in items)
    if isinstance(node, str):
        for old, new in _RENAMED_TARGETS.items():
            if node.startswith(old):
                return new + node[len(old):], 1
    return node, 0


def _renamed_key(section: Dict[str, Any], old: str, new: str) -> Dict[str, Any]:
    """``section`` with the key ``old`` renamed ``new``, in place of it."""
    return {(new if key == old else key): value for key, value in section.items()}


def _migrate_tree(tree: Dict[str, Any], data_choice: Optional[str],
                  views_of: Callable[[Dict[str, Any]], Optional[Dict[str, Any]]],
                  settings: bool = False) -> Tuple[Dict[str, Any], List[str]]:
    """Today's form of a run's config ``tree`` (plain nested dict: ``config.yaml``, or with
    ``settings`` a checkpoint's settings unflattened, which hold no batching keys) and the
    changes made. ``data_choice``: the run's Hydra ``data`` choice (or None);
    ``views_of(tree)``: ``model.views`` for a run from before the method classes."""
    from bbam.app.checkpoints import _VIEW_METHODS

    tree, renamed = _rename_targets(copy.deepcopy(tree))
    changes = [f"bbam.app.datasets/inputs -> bbam.data ({renamed})"] if renamed else []
    data = tree.get("data")
    if data_choice == "npz" and isinstance(data, dict) and "path_or_name" in data and "path" not in data:
        tree["data"] = _renamed_key(data, "path_or_name", "path")
        changes.append("data.path_or_name -> data.path")
    method = tree.get("method")
    if isinstance(method, dict) and "_target_" not in method:  # a run from before the method classes
        tree["method"] = method_config(method)
        changes.append(f"method flags -> {tree['method']['_target_'].rpartition('.')[2]}")
        model = tree.get("model")
        if isinstance(model, dict) and "views" not in model:
            views = views_of(tree)
            if views is not None:
                model["views"] = views
                changes.append("+model.views")
        train = tree.get("train")
        added = {}
        if isinstance(train, dict) and not settings:
            added = {key: value for key, value in (("loader", "tensor"), ("num_workers", 0)) if key not in train}
            train.update(added)
        if added:
            changes.append(", ".join(f"+train.{k}" for k in added))
    method = tree.get("method")
    if isinstance(method, dict) and method.get("_target_") in _VIEW_METHODS and "unlabeled_views" not in method:
        method["unlabeled_views"] = []
        changes.append("+method.unlabeled_views")
    changes += _add_pseudo_label_keys(tree, settings)
    return tree, changes


def _add_pseudo_label_keys(tree: Dict[str, Any], settings: bool = False) -> List[str]:
    """The keys added with graph pseudo-labels, teachers and the validation probe, at the
    values that train as before: CAP / BAM / BBAM ``pseudo_labels: model``, ``teacher: ema``,
    ``weight_by_certainty: false`` and today's default ``graph`` (unused with ``model``);
    FixMatch / SoftMatch ``teacher: model``, ``unlabeled_norm: sum``; ``split.unlabeled_ratio``
    1 (every unlabeled row); ``train.probe_epochs``
    0 (the scaling rule) where ``train.scaling`` is ``auto``, else today's default (unused; not
    in a checkpoint's ``settings``, which leave it out as a key a resumed run may change)."""
    from omegaconf import OmegaConf

    from bbam.app.checkpoints import _VIEW_METHODS, added_method_keys
    from bbam.app.config import config_dir

    defaults = OmegaConf.to_container(OmegaConf.load(Path(config_dir()) / "train.yaml"), resolve=False)
    method, train, added = tree.get("method"), tree.get("train"), []
    target = method.get("_target_") if isinstance(method, dict) else None
    new = added_method_keys(target)
    if target in _VIEW_METHODS:
        new["graph"] = defaults["graph"]
    for key, value in new.items():
        if key not in method:
            method[key] = copy.deepcopy(value)
            added.append(f"+method.{key}")
    split = tree.get("split")
    if isinstance(split, dict) and "unlabeled_ratio" not in split:  # every unlabeled row, as then
        split["unlabeled_ratio"] = 1.0
        added.append("+split.unlabeled_ratio")
    if isinstance(train, dict) and "probe_epochs" not in train and not settings:
        train["probe_epochs"] = 0 if str(train.get("scaling")) == "auto" else defaults["train"]["probe_epochs"]
        added.append("+train.probe_epochs")
    return [", ".join(added)] if added else []


def _today_views(tree: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """``views`` of today's model config whose encoder is the run's (``configs/model``), or None."""
    from omegaconf import OmegaConf

    from bbam.app.config import config_dir, register_resolvers

    encoder = ((tree.get("model") or {}).get("encoder") or {}).get("_target_")
    if encoder is None:
        return None
    register_resolvers()
    for file in sorted((Path(config_dir()) / "model").glob("*.yaml")):
        conf = OmegaConf.load(file)
        if OmegaConf.select(conf, "encoder._target_", default=None) != encoder or conf.get("views") is None:
            continue
        try:  # interpolations (e.g. ${model.backbone.name}) resolved in the run's config
            merged = OmegaConf.merge(OmegaConf.create(tree), {"model": {"views": conf.views}})
            return OmegaConf.to_container(merged.model.views, resolve=True)
        except Exception:
            return None
    return None


def _unflatten(flat: Dict[str, Any]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def _hydra_data_choice(run: Path) -> Optional[str]:
    """The ``data`` choice Hydra recorded for the run (``.hydra/hydra.yaml``), or None."""
    from omegaconf import OmegaConf

    try:
        choice = OmegaConf.select(OmegaConf.load(run / ".hydra" / "hydra.yaml"), "hydra.runtime.choices.data")
        return None if choice is None else str(choice)
    except Exception:  # no record (e.g. bbam.estimator's folders), or another Hydra layout
        return None


# ----------------------------------------------------------------------------- one run folder
def _load_checkpoint(path: Path) -> Dict[str, Any]:
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise MigrationError(f"{path} is not a readable bbam checkpoint ({type(err).__name__}: {str(err)[:200]})")
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise MigrationError(f"{path} is not a readable bbam checkpoint (no model state in it)")
    return ckpt


def _migrate_checkpoint(ckpt: Dict[str, Any], config: Dict[str, Any],
                        data_choice: Optional[str]) -> Tuple[Dict[str, Any], List[str]]:
    """Today's form of a checkpoint whose run's migrated (resolved) config is ``config``."""
    from bbam.app.checkpoints import FORMAT, settings_of

    out, changes = dict(ckpt), []
    saved = ckpt.get("settings")
    if not isinstance(saved, dict):  # written before settings were recorded: those of its config.yaml
        out["settings"] = settings_of(int(config.get("seed", ckpt.get("seed", 0))), config)
        changes.append("settings (from config.yaml)")
    else:
        views = (config.get("model") or {}).get("views")
        tree, done = _migrate_tree(_unflatten({k: v for k, v in saved.items() if k != "seed"}), data_choice,
                                   lambda _tree: copy.deepcopy(views), settings=True)
        if done:
            out["settings"] = settings_of(int(saved.get("seed", config.get("seed", 0))), tree)
            changes.append(f"settings ({', '.join(done)})")
    if "method_state" not in ckpt:  # the method's state was kept at the top level
        out["method_state"] = {key: ckpt[key] for key in ("prototypes", "stats") if ckpt.get(key) is not None}
        for key in ("prototypes", "stats"):
            out.pop(key, None)
        changes.append(f"method_state ({', '.join(sorted(out['method_state'])) or 'empty'})")
    if ckpt.get("format") != FORMAT:
        out["format"] = FORMAT
        changes.append(f"format {ckpt.get('format')} -> {FORMAT}")
    return out, changes


def migrate_run(run) -> Migration:
    """What migrating the run folder ``run`` changes (nothing written: see :func:`apply`).
    Raises :class:`MigrationError` for a folder that cannot be migrated."""
    from omegaconf import OmegaConf

    run = Path(run)
    if not run.is_dir():
        raise MigrationError(f"{run} is not a run folder" + (" (give the folder)" if run.is_file() else
                                                             " (it does not exist)"))
    cfg_path = run / "config.yaml"
    if not cfg_path.is_file():
        raise MigrationError(f"{run} has no config.yaml: not a bbam run folder")
    try:
        raw = OmegaConf.to_container(OmegaConf.load(cfg_path), resolve=False)
    except Exception as err:
        raise MigrationError(f"{cfg_path} is not readable YAML ({type(err).__name__}: {str(err)[:200]})")
    if not isinstance(raw, dict):
        raise MigrationError(f"{cfg_path} is not a run's config")
    inputs_path = run / "inputs.json"
    try:
        inputs = json.loads(inputs_path.read_text()) if inputs_path.is_file() else None
    except ValueError as err:
        raise MigrationError(f"{inputs_path} is not readable JSON ({err})")
    encoder = ((raw.get("model") or {}).get("encoder") or {}).get("_target_")
    if encoder == _OLD_IMAGE_ENCODER or (isinstance(inputs, dict) and inputs.get("kind") == "images"
                                         and "backbone" not in inputs):
        raise MigrationError(f"{run} is an image run from before images were streamed (pixel rows in memory, "
                             f"{_OLD_IMAGE_ENCODER}): it cannot be converted; retrain it")
    out = Migration(run)
    data_choice = _hydra_data_choice(run)
    new_raw, changes = _migrate_tree(raw, data_choice, _today_views)
    try:
        config = OmegaConf.to_container(OmegaConf.create(new_raw), resolve=True)
    except Exception:  # config.yaml is written resolved; an unresolvable leftover is kept as written
        config = new_raw
    for path in sorted((run / "checkpoints").glob("*.pt")):
        ckpt, done = _migrate_checkpoint(_load_checkpoint(path), config, data_choice)
        if done:
            out.changes[str(path.relative_to(run))] = done
            out.writes[path] = ckpt
    if inputs is None and (run / "scaler.pt").is_file():  # a finished run from before inputs.json
        out.changes["inputs.json"] = ['{"kind": "features"}']
        out.writes[inputs_path] = json.dumps({"kind": "features"})
    if changes:
        out.changes["config.yaml"] = changes
        out.writes[cfg_path] = OmegaConf.to_yaml(OmegaConf.create(new_raw))
    return out


def apply(migration: Migration) -> None:
    """Write a :class:`Migration`'s files, each atomically (in the order computed:
    checkpoints, ``inputs.json``, ``config.yaml`` last)."""
    from bbam.app.atomic import atomic_save, atomic_write_text

    for path, content in migration.writes.items():
        if isinstance(content, str):
            atomic_write_text(path, content)
        else:
            atomic_save(content, path)


# ----------------------------------------------------------------------------- command line
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bbam.migrate",
        description="Rewrite run folders written by an older bbam into today's format, once (in place).")
    parser.add_argument("runs", nargs="+", metavar="RUN", type=Path, help="run folders (config.yaml, checkpoints/)")
    parser.add_argument("--dry-run", action="store_true", help="print what would change; write nothing")
    args = parser.parse_args(argv)
    failed = False
    for run in args.runs:
        try:
            migration = migrate_run(run)
            if migration.current:
                print(f"{run}: already current")
                continue
            if not args.dry_run:
                apply(migration)
            print(f"{run}: {'would migrate' if args.dry_run else 'migrated'}")
            for name, changes in migration.changes.items():
                print(f"  {name}: {'; '.join(changes)}")
        except Exception as err:  # noqa: BLE001 - one line per folder; BBAM_TRACEBACK=1 shows the traceback
            from bbam.app.errors import show_traceback

            if show_traceback():
                raise
            failed = True
            text = str(err) if isinstance(err, (MigrationError, OSError)) else \
                f"{run} cannot be migrated ({type(err).__name__}: {str(err)[:200]})"
            print(f"bbam.migrate: error: {text}", file=sys.stderr)
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
