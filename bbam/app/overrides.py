"""Command-line overrides checked before Hydra runs (application layer).

Hydra reports a misspelt key in several lines and suggests ``+key=value``, which then adds
a key nothing reads (the run trains with the value silently ignored); an unknown method
prints Hydra's config search path. :func:`check_overrides` composes the config once with
the command's overrides (the first value of each sweep) and turns these mistakes into one
:class:`~bbam.app.errors.UserError` line (``python -m bbam.train`` exits with status 2):

* an unknown key: ``unknown config key 'train.epochz': did you mean train.epochs?``;
* ``+key=value`` / ``++key=value`` adding a key no config reads: refused the same way. A key
  added under a node built from ``_target_`` is read when the target takes it as an
  argument (or takes ``**kwargs``): ``+method.my_option=1`` for a method of your own;
* an unknown choice of a config group (``method=foo``, or any value of a sweep
  ``-m method=cap,foo``): the choices, in one line.

Other problems (a value of the wrong type, a malformed override) are left to Hydra.
"""
from __future__ import annotations

import difflib
import inspect
import re
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

from bbam.app.errors import UserError

__all__ = ["check_overrides", "group_choices", "config_keys"]

# Hydra's flags that change which config is composed: the check steps aside for them
_CONFIG_FLAGS = ("-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir", "-h", "--help",
                 "--hydra-help", "-i", "--info", "-c", "--cfg", "--shell-completion", "-sc", "--resolve", "-p",
                 "--package")
# Hydra flags that take the next argument as their value
_VALUE_FLAGS = ("-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir", "-c", "--cfg",
                "-p", "--package", "-sc", "--shell-completion", "-i", "--info")


def _override_args(argv: Sequence[str]) -> Optional[List[str]]:
    """The overrides among ``argv`` (flags dropped), or None when a flag changes the config."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg.startswith("-"):
            flag = arg.split("=", 1)[0]
            if flag in _CONFIG_FLAGS:
                return None
            skip = flag in _VALUE_FLAGS and "=" not in arg
            continue
        out.append(arg)
    return out


def group_choices(group: str) -> List[str]:
    """The options of a config group (``method``, ``model``, ``data``): its yaml files."""
    from bbam.app.config import config_dir

    folder = Path(config_dir()) / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def config_keys(cfg) -> List[str]:
    """Every key of ``cfg`` as a dotted path (leaves and the nodes above them)."""
    from omegaconf import DictConfig, OmegaConf

    keys: List[str] = []

    def walk(node, prefix: str) -> None:
        for key in node.keys() if isinstance(node, DictConfig) else ():
            path = f"{prefix}{key}"
            keys.append(path)
            child = OmegaConf.select(node, str(key), throw_on_resolution_failure=False)
            if isinstance(child, DictConfig):
                walk(child, path + ".")

    walk(cfg, "")
    return keys


def _suggest(key: str, candidates: Iterable[str]) -> str:
    """``: did you mean a, b?`` for the closest keys (compared whole and by last part)."""
    candidates = sorted(c for c in set(candidates) if not key.startswith(c + "."))  # not its own sections
    close = difflib.get_close_matches(key, candidates, n=3, cutoff=0.75)
    if not close:  # a misspelt section with the right leaf, or the reverse
        leaf = key.rsplit(".", 1)[-1]
        close = [c for c in candidates if c.rsplit(".", 1)[-1] == leaf][:3]
        close += difflib.get_close_matches(key, candidates, n=3 - len(close), cutoff=0.6)
    return f": did you mean {', '.join(dict.fromkeys(close))}?" if close else \
        " (python -m bbam.train --help lists the keys)"


def _first_values(overrides) -> List[str]:
    """Each override as a plain one (a sweep's first value), Hydra's own keys left out."""
    out = []
    for o in overrides:
        if o.key_or_group.split(".")[0].split("/")[0] == "hydra":
            continue
        key = o.get_key_element()
        if o.is_delete():
            out.append(o.input_line)
        elif o.is_sweep_override():
            out.append(f"{key}={next(iter(o.sweep_string_iterator()))}")
        else:
            out.append(f"{key}={o.get_value_element_as_str()}")
    return out


def _unknown_choice(group: str, choice: str) -> UserError:
    choices = group_choices(group)
    close = difflib.get_close_matches(choice, choices, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return UserError(f"unknown {group} {choice!r}{hint}; choose one of: {', '.join(choices)}")


def _check_swept_choices(overrides) -> None:
    """Every value of a sweep over a config group (``-m method=cap,bbsm``) is one of its
    choices: composition sees only the first value, and a sweep should not fail at its
    last job."""
    for o in overrides:
        group = o.key_or_group
        if o.is_sweep_override() and "." not in group and "/" not in group and group_choices(group):
            for choice in o.sweep_string_iterator():
                if choice not in group_choices(group):
                    raise _unknown_choice(group, choice)


def _target_accepts(cfg, key: str) -> tuple:
    """``(accepted, target)``: whether the nearest node above ``key`` built from ``_target_``
    takes it as an argument (target None: no such node; the key then feeds nothing)."""
    from omegaconf import OmegaConf

    parts = key.split(".")
    for depth in range(len(parts) - 1, 0, -1):
        node = OmegaConf.select(cfg, ".".join(parts[:depth]), throw_on_resolution_failure=False)
        target = node.get("_target_") if hasattr(node, "get") else None
        if target is None:
            continue
        try:
            from hydra.utils import get_object

            obj = get_object(str(target))
            params = inspect.signature(obj).parameters
        except Exception:  # an unimportable target is reported when the run builds it
            return True, str(target)
        arg = parts[depth]
        return arg in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()), str(target)
    return False, None


def check_overrides(argv: Sequence[str]) -> None:
    """Raise :class:`UserError` (one line) for an unknown key or group choice in ``argv``,
    or a ``+key`` that no config reads. See the module docstring."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    from bbam.app.config import compose_config

    args = _override_args(argv)
    if not args:
        return
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = OverridesParser.create().parse_overrides(args)
    except OverrideParseException:
        return  # Hydra's own message names the malformed override
    _check_swept_choices(parsed)
    plain = _first_values(parsed)
    try:
        cfg = compose_config(plain)
    except MissingConfigException as err:
        found = re.search(r"Could not find '([^']+)/([^']+)'", str(err))
        if not found:
            raise
        raise _unknown_choice(*found.groups()) from None
    except ConfigCompositionException as err:
        found = re.search(r"Could not override '([^']+)'", str(err))
        if not found:
            return  # e.g. a value of the wrong type: Hydra's message says it
        key = found.group(1)
        others = [p for p in plain if p.split("=", 1)[0].lstrip("+~") != key]
        try:
            known = config_keys(compose_config(others))
        except Exception:
            known = []
        raise UserError(f"unknown config key {key!r}{_suggest(key, known)}") from None
    # keys added with + / ++ must feed something: a _target_ that takes them
    added = [o for o in parsed if (o.is_add() or o.is_force_add()) and "/" not in o.key_or_group
             and o.key_or_group.split(".")[0] != "hydra" and o.package is None]
    if not added:
        return
    base = None
    for o in added:
        key = o.key_or_group
        if "." not in key and key in ("method", "model", "data"):
            continue  # a group choice, not a key
        if base is None:
            rest = [p for p in plain if not p.startswith("+")]
            base = compose_config(rest)
        from omegaconf import OmegaConf

        if OmegaConf.select(base, key, throw_on_resolution_failure=False) is not None:
            continue  # ++ of an existing key: an ordinary override
        accepted, target = _target_accepts(cfg, key)
        if accepted:
            continue
        why = f"{target} takes no argument {key.rsplit('.', 1)[-1]!r}" if target else "no config or class reads it"
        raise UserError(f"config key {key!r} cannot be added ({why}){_suggest(key, config_keys(base))}")
