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

__all__ = ["load_dataset", "default_data_dirs"]


def default_data_dirs() -> list[Path]:
    """Directories searched for dataset names, in order: ``$BBAM_DATA_DIR``
    (``os.pathsep``-separated), ``<repo>/../shared/data``, ``./data``."""
    dirs: list[Path] = []
    env = os.environ.get("BBAM_DATA_DIR")
    if env:
        dirs += [Path(s) for s in env.split(os.pathsep) if s]
    dirs.append(Path(__file__).resolve().parents[3] / "shared" / "data")
    dirs.append(Path.cwd() / "data")
    return dirs


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
      :func:`default_data_dirs`.
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
    tried = []
    for root in roots:
        d = root / str(path_or_name)
        if d.is_dir():
            out = _load_dir(d, **kw)
            if out is not None:
                return out
        tried.append(str(d) + "/")
        f = root / f"{path_or_name}.npz"
        if f.is_file():
            return load_npz(f)
        tried.append(str(f))
    raise FileNotFoundError(2, f"dataset {str(path_or_name)!r} not found; looked in: {', '.join(tried)}", str(path_or_name))
