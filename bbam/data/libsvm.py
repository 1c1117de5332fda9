"""Multi-label LIBSVM text files (``l1,l2 idx:val ...``, optional Extreme-Classification
``N D K`` header): :func:`load_libsvm`. Every error names the file and the line."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import torch

from .container import DatasetFormatError, MultiLabelData, check_exists, text_lines

__all__ = ["load_libsvm"]

_XC_HEADER = re.compile(r"^\d+\s+\d+\s+\d+$")


def load_libsvm(
    path: str | os.PathLike[str],
    num_features: int | None = None,
    num_labels: int | None = None,
    name: str | None = None,
) -> MultiLabelData:
    """Read multi-label LIBSVM text: one sample per line,
    ``l1,l2,... idx:val idx:val ...``.

    Labels are 0-based integers separated by commas; the label list may be
    empty (the line then starts with a feature, or with whitespace).
    Feature indices are 1-based (column ``idx - 1`` of the dense ``X``);
    absent features are 0.  ``#`` starts a comment; blank lines are skipped.
    An Extreme-Classification header line ``N D K`` (three integers) is
    accepted as the first line and supplies ``num_features``/``num_labels``
    when those are not given (and ``N`` is checked).  ``num_features`` /
    ``num_labels`` default to the largest index seen; indices beyond given
    values are errors naming the line.
    """
    p = Path(path)
    check_exists(p)
    for arg, v in (("num_features", num_features), ("num_labels", num_labels)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0):
            raise ValueError(f"{arg} must be a non-negative int for {p}, got {v!r}")
    rows_f: list[int] = []
    cols_f: list[int] = []
    vals_f: list[float] = []
    rows_l: list[int] = []
    cols_l: list[int] = []
    header: tuple[int, int, int] | None = None
    n = 0
    lineno = 0
    seen_content = False

    def fail(msg: str) -> DatasetFormatError:
        return DatasetFormatError(p, msg, lineno)

    for lineno, raw in text_lines(p):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if not seen_content:
            seen_content = True
            if _XC_HEADER.match(line):
                header = tuple(int(v) for v in line.split())  # type: ignore[assignment]
                continue
        toks = line.split()
        start = 0
        if ":" not in toks[0]:
            start = 1
            for lab in toks[0].split(","):
                if lab == "":
                    continue
                try:
                    li = int(lab)
                except ValueError:
                    raise fail(f"label {lab!r} is not an integer") from None
                if li < 0:
                    raise fail(f"label {li} is negative (labels are 0-based)")
                if num_labels is not None and li >= num_labels:
                    raise fail(f"label {li} outside [0, {num_labels})")
                rows_l.append(n)
                cols_l.append(li)
        for tok in toks[start:]:
            idx, sep, val = tok.partition(":")
            if not sep:
                raise fail(f"feature {tok!r} is not 'index:value'")
            try:
                j = int(idx)
                v = float(val)
            except ValueError:
                raise fail(f"feature {tok!r} is not 'index:value' with an integer index and a number") from None
            if j < 1:
                raise fail(f"feature index {j} < 1 (indices are 1-based)")
            if num_features is not None and j > num_features:
                raise fail(f"feature index {j} > num_features={num_features}")
            if not math.isfinite(v):
                raise fail(f"feature {tok!r} is not finite")
            rows_f.append(n)
            cols_f.append(j - 1)
            vals_f.append(v)
        n += 1
    if header is not None:
        if header[0] != n:
            raise DatasetFormatError(p, f"header says {header[0]} samples but the file has {n}")
        num_features = header[1] if num_features is None else num_features
        num_labels = header[2] if num_labels is None else num_labels
        if cols_f and max(cols_f) >= num_features:
            raise DatasetFormatError(p, f"feature index {max(cols_f) + 1} > {num_features} (header)")
        if cols_l and max(cols_l) >= num_labels:
            raise DatasetFormatError(p, f"label {max(cols_l)} outside [0, {num_labels}) (header)")
    d = num_features if num_features is not None else (max(cols_f) + 1 if cols_f else 0)
    k = num_labels if num_labels is not None else (max(cols_l) + 1 if cols_l else 0)
    X = np.zeros((n, d), dtype=np.float32)
    if rows_f:
        X[np.asarray(rows_f), np.asarray(cols_f)] = np.asarray(vals_f, dtype=np.float64).astype(np.float32)
    Y = np.zeros((n, k), dtype=np.int8)
    if rows_l:
        Y[np.asarray(rows_l), np.asarray(cols_l)] = 1
    return MultiLabelData(
        torch.from_numpy(X),
        torch.from_numpy(Y),
        [str(i) for i in range(k)],
        [str(j + 1) for j in range(d)],
        name=name or p.stem,
        source=str(p),
    )
