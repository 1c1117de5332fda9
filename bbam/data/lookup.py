"""Datasets by name, directory or file: :func:`load_dataset` picks the reader from the
suffix (``.npz``, ``.arff``, LIBSVM) or looks a bare name up in :func:`default_data_dirs`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .arff import load_arff, load_arff_pair
from .container import DatasetFormatError, MultiLabelData
from .libsvm import load_libsvm
from .npz import load_npz
from .synthetic import make_synthetic

__all__ = ["load_dataset", "default_data_dirs", "user_cache_data_dir", "fetch_hint"]

_CHECKOUT_DATA_DIR = Path(__file__).resolve().parents[3] / "shared" / "data"  # a data folder beside a checkout


def user_cache_data_dir() -> Path:
    """``~/.cache/bbam/data``: where ``python -m bbam.data.fetch`` stores the sets when
    ``$BBAM_DATA_DIR`` is unset (:func:`bbam.data.fetch.download_dir`)."""
    return Path.home() / ".cache" / "bbam" / "data"


def default_data_dirs() -> list[Path]:
    """Directories searched for dataset names, in order: ``$BBAM_DATA_DIR``
    (``os.pathsep``-separated) or, when it is unset, ``~/.cache/bbam/data`` (the
    download place of ``python -m bbam.data.fetch``); then a ``shared/data`` folder
    beside a development checkout, ``./data``."""
    env = [Path(s).expanduser() for s in os.environ.get("BBAM_DATA_DIR", "").split(os.pathsep) if s]
    return (env or [user_cache_data_dir()]) + [_CHECKOUT_DATA_DIR, Path.cwd() / "data"]


def _not_found(name: str, roots: list[Path], data_dir: object) -> FileNotFoundError:
    """One line: where it looked, and how to get the set (the fetch command for the sets it knows)."""
    from .fetch import SOURCES  # here, not at the top: ``python -m bbam.data.fetch`` must find it unimported

    shown = ", ".join(str(r) for r in roots if r != _CHECKOUT_DATA_DIR or r.is_dir())
    src = SOURCES.get(name)
    if src is not None and f"{name}/{name}.npz" in src.outputs:
        cmd = f"python -m bbam.data.fetch {name}" + (f" --data-dir {data_dir}" if data_dir is not None else "")
        text = f"dataset {name!r} not found in {shown}: get it with `{cmd}`" + (
            "" if data_dir is not None else f" (or set BBAM_DATA_DIR to a folder holding {name}/{name}.npz)")
    else:
        text = (f"dataset {name!r} not found in {shown}: expected {name}/{name}.npz (or {name}/{name}-train.arff "
                f"and -test.arff, or {name}.npz) in one of them; set BBAM_DATA_DIR to the folder holding it")
    return FileNotFoundError(2, text, name)


def fetch_hint(missing: str | os.PathLike[str]) -> str | None:
    """How to get a missing file of a named set (``<data folder>/miml``,
    ``.../reuters21578/reuters21578_texts.jsonl``: the paths the shipped configs name):
    ``get it with `python -m bbam.data.fetch miml` ...``; None for any other path."""
    from .fetch import SOURCES

    missing = Path(missing).absolute()
    for name, src in SOURCES.items():
        for output in src.outputs:
            for root in map(Path.absolute, default_data_dirs()):
                target = root / output
                # the file itself, or a folder of it below the data folder (data=miml names miml/)
                if missing == target or (missing in target.parents and root in missing.parents):
                    return (f"get it with `python -m bbam.data.fetch {name}` (or set BBAM_DATA_DIR to a folder "
                            f"holding {output})")
    return None


LIBSVM_SUFFIXES = (".svm", ".libsvm", ".txt")  # file names read as LIBSVM


def _load_dir(d: Path, **kw: Any) -> MultiLabelData | None:
    npz = d / f"{d.name}.npz"
    if npz.is_file():
        return load_npz(npz)
    for tr_suffix, te_suffix in (("-train", "-test"), ("_train", "_test"), ("-training", "-test"), ("_training", "_test")):
        tr, te = d / f"{d.name}{tr_suffix}.arff", d / f"{d.name}{te_suffix}.arff"
        if tr.is_file() and te.is_file():
            return load_arff_pair(tr, te, **kw)
    arff = d / f"{d.name}.arff"
    if arff.is_file():
        return load_arff(arff, **kw)
    return None


def load_dataset(path_or_name: str | os.PathLike[str] | None = None, **kw: Any) -> MultiLabelData:
    """Load a dataset by file path, directory or name (``path=`` is the same argument: the
    key of the app's file configs, ``data.path``).

    * ``"synthetic"`` -> :func:`make_synthetic` (``**kw`` passed on).
    * ``*.npz`` -> :func:`load_npz`; ``*.arff`` -> :func:`load_arff`;
      ``*.svm``/``*.libsvm``/``*.txt`` -> :func:`load_libsvm` (``**kw``
      passed on).
    * a directory ``<dir>/<name>``: ``<name>.npz``, else the pair
      ``<name>-train.arff``/``<name>-test.arff``, else ``<name>.arff``.
    * a bare name (e.g. ``"emotions"``): looked up as ``<root>/<name>/`` or
      ``<root>/<name>.npz`` in ``kw.pop("data_dir")`` if given, else in
      :func:`default_data_dirs`. Not found: a ``FileNotFoundError`` in one line naming the
      folders, and for a set ``python -m bbam.data.fetch`` serves, that command.
    """
    data_dir = kw.pop("data_dir", None)
    path = kw.pop("path", None)
    if (path_or_name is None) == (path is None):
        raise TypeError("load_dataset: give exactly one of 'path_or_name' and 'path'")
    path_or_name = path_or_name if path is None else path
    if isinstance(path_or_name, str) and path_or_name.lower() == "synthetic":
        return make_synthetic(**kw)
    p = Path(path_or_name)
    suffix = p.suffix.lower()
    if suffix == ".npz":
        return load_npz(p, **kw)
    if suffix == ".arff":
        return load_arff(p, **kw)
    if suffix in LIBSVM_SUFFIXES:
        return load_libsvm(p, **kw)
    if p.is_dir():
        out = _load_dir(p, **kw)
        if out is None:
            raise FileNotFoundError(2, f"no {p.name}.npz, {p.name}-train/-test.arff or {p.name}.arff in directory {p}", str(p))
        return out
    if p.exists():
        raise DatasetFormatError(p, f"unsupported file extension {p.suffix!r} (expected .npz, .arff, .svm, .libsvm or .txt)")
    if suffix or len(p.parts) > 1:
        raise FileNotFoundError(2, f"dataset file not found: {p}", str(p))
    roots = [Path(data_dir)] if data_dir is not None else default_data_dirs()
    for root in roots:
        d = root / str(path_or_name)
        if d.is_dir():
            out = _load_dir(d, **kw)
            if out is not None:
                return out
        f = root / f"{path_or_name}.npz"
        if f.is_file():
            return load_npz(f)
    raise _not_found(str(path_or_name), roots, data_dir)
