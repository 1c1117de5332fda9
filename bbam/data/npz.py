"""The ``.npz`` layout of the named sets (``python -m bbam.data.fetch``): :func:`load_npz` reads it,
:func:`save_npz` writes it."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .container import DatasetFormatError, MultiLabelData, check_exists

__all__ = ["load_npz", "save_npz"]


def _first_bad_label(Y: np.ndarray) -> tuple[int, int, Any] | None:
    bad = (Y != 0) & (Y != 1)
    if not bad.any():
        return None
    r, c = np.argwhere(bad)[0]
    return int(r), int(c), Y[r, c].item()


def load_npz(path: str | os.PathLike[str], name: str | None = None) -> MultiLabelData:
    """Read the named sets' ``.npz`` layout (what ``python -m bbam.data.fetch`` writes).

    Keys: ``X`` ``[N, D]`` (any real dtype, stored float32), ``Y`` ``[N, K]``
    0/1, optional ``train_idx``/``test_idx`` (int), ``label_names``,
    ``feature_names`` (unicode arrays).  Extra keys are ignored.  Loaded
    without pickle.
    """
    p = Path(path)
    check_exists(p)
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {key: z[key] for key in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DatasetFormatError(p, f"not a readable .npz archive ({e})") from e
    for key in ("X", "Y"):
        if key not in arrays:
            raise DatasetFormatError(p, f"missing required key {key!r} (found {sorted(arrays)})")
    X, Y = arrays["X"], arrays["Y"]
    if X.ndim != 2 or Y.ndim != 2:
        raise DatasetFormatError(p, f"X and Y must be 2-D, got shapes {X.shape} and {Y.shape}")
    if X.dtype.kind not in "fiub":
        raise DatasetFormatError(p, f"X must be numeric, got dtype {X.dtype}")
    if Y.dtype.kind not in "fiub":
        raise DatasetFormatError(p, f"Y must be numeric, got dtype {Y.dtype}")
    bad = _first_bad_label(Y)
    if bad is not None:
        raise DatasetFormatError(p, f"labels must be 0 or 1; found {bad[2]!r} at row {bad[0]}, label column {bad[1]}")
    idx = {}
    for key in ("train_idx", "test_idx"):
        if key in arrays:
            a = arrays[key]
            if a.dtype.kind not in "iu":
                raise DatasetFormatError(p, f"{key} must be integer, got dtype {a.dtype}")
            idx[key] = torch.from_numpy(a.astype(np.int64).reshape(-1))
    try:
        return MultiLabelData(
            torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)),
            torch.from_numpy(np.ascontiguousarray(Y, dtype=np.int8)),
            arrays.get("label_names"),
            arrays.get("feature_names"),
            idx.get("train_idx"),
            idx.get("test_idx"),
            name=name or p.stem,
            source=str(p),
        )
    except (ValueError, TypeError) as e:
        raise DatasetFormatError(p, str(e)) from e


def save_npz(data: MultiLabelData, path: str | os.PathLike[str]) -> Path:
    """Write ``data`` in the layout :func:`load_npz` reads (uncompressed)."""
    p = Path(path)
    arrays: dict[str, np.ndarray] = {
        "X": data.X.numpy(),
        "Y": data.Y.numpy(),
        "label_names": np.array(data.label_names, dtype=str),
        "feature_names": np.array(data.feature_names, dtype=str),
    }
    if data.train_idx is not None:
        arrays["train_idx"] = data.train_idx.numpy()
    if data.test_idx is not None:
        arrays["test_idx"] = data.test_idx.numpy()
    with open(p, "wb") as f:
        np.savez(f, **arrays)
    return p
