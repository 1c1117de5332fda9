"""Multi-label LIBSVM text files (``l1,l2 idx:val ...``, optional Extreme-Classification
``N D K`` header): :func:`load_libsvm`.

The rows are read by scikit-learn's compiled ``load_svmlight_file`` (about twice as fast
as the pure-Python reader it replaced: ``bench/parsers.py``). Its errors name neither the
file nor the line, so when it, or a check of what it read, rejects a file, the file is
read once more line by line (:func:`_first_fault`) to name the line and what was expected.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from pathlib import Path

import numpy as np
import torch

from .container import DatasetFormatError, MultiLabelData, check_exists, text_lines

__all__ = ["load_libsvm"]

_XC_HEADER = re.compile(rb"\d+\s+\d+\s+\d+")
_UTF8_BOM = b"\xef\xbb\xbf"
_FLOAT32_MAX = float(np.finfo(np.float32).max)


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
    Feature indices are 1-based (column ``idx - 1`` of the dense ``X``) and
    ascending within a line; absent features are 0.  ``#`` starts a comment;
    blank lines are skipped; a ``qid:`` field (ranking data) is ignored.
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
    header, header_line, start = _header(p)
    feature_bound, label_bound = f"num_features={num_features}", ""
    if header is not None:
        if num_features is None:
            num_features, feature_bound = header[1], f"{header[1]} (header)"
        if num_labels is None:
            num_labels, label_bound = header[2], " (header)"

    def fault(cause: object) -> DatasetFormatError:
        return _first_fault(p, header_line, num_features, feature_bound, num_labels, label_bound, cause)

    from sklearn.datasets import load_svmlight_file  # imported on first use: it takes ~1 s

    with open(p, "rb") as fh:
        fh.seek(start)
        try:
            X, y = load_svmlight_file(fh, multilabel=True, zero_based=False, dtype=np.float32)
        except (ValueError, OverflowError) as err:
            raise fault(err) from None
    n = len(y)
    per_row = np.fromiter(map(len, y), dtype=np.int64, count=n)
    values = np.fromiter(itertools.chain.from_iterable(y), dtype=np.float64, count=int(per_row.sum()))
    labels = np.where(np.isfinite(values), values, -1).astype(np.int64)
    if ((labels != values) | (labels < 0)).any() or not np.isfinite(X.data).all():
        raise fault("a label that is not an integer >= 0, or a feature that is not finite")
    if num_labels is not None and labels.size and labels.max() >= num_labels:
        raise fault(f"label {labels.max()} outside [0, {num_labels}){label_bound}")
    if num_features is not None and X.indices.size and X.indices.max() >= num_features:
        raise fault(f"feature index {X.indices.max() + 1} > {feature_bound}")
    if header is not None and header[0] != n:
        raise DatasetFormatError(p, f"header says {header[0]} samples but the file has {n}")
    d = num_features if num_features is not None else (int(X.indices.max()) + 1 if X.indices.size else 0)
    k = num_labels if num_labels is not None else (int(labels.max()) + 1 if labels.size else 0)
    dense = np.zeros((n, d), dtype=np.float32)
    dense[np.repeat(np.arange(n), np.diff(X.indptr)), X.indices] = X.data
    Y = np.zeros((n, k), dtype=np.int8)
    Y[np.repeat(np.arange(n), per_row), labels] = 1
    return MultiLabelData(
        torch.from_numpy(dense),
        torch.from_numpy(Y),
        [str(i) for i in range(k)],
        [str(j + 1) for j in range(d)],
        name=name or p.stem,
        source=str(p),
    )


def _header(path: Path) -> tuple[tuple[int, int, int] | None, int, int]:
    """``(N, D, K)`` when the first non-comment line is an Extreme-Classification header
    (else None), its line number (0: none), and the byte offset where the rows start."""
    with open(path, "rb") as fh:
        bom = len(_UTF8_BOM) if fh.read(len(_UTF8_BOM)) == _UTF8_BOM else 0
        fh.seek(bom)
        offset = bom
        for lineno, raw in enumerate(fh, 1):
            line = raw.split(b"#", 1)[0].strip()
            if line:
                if _XC_HEADER.fullmatch(line):
                    n, d, k = (int(v) for v in line.split())
                    return (n, d, k), lineno, offset + len(raw)
                break
            offset += len(raw)
    return None, 0, bom


def _first_fault(path: Path, header_line: int, num_features: int | None, feature_bound: str,
                 num_labels: int | None, label_bound: str, cause: object) -> DatasetFormatError:
    """The error for the first line that is not a valid row (naming it and what was
    expected); ``cause`` (what the reader or a check said) when no line is at fault."""
    for lineno, raw in text_lines(path):
        toks = raw.split("#", 1)[0].split()
        if toks and lineno != header_line:
            problem = _row_fault(toks, num_features, feature_bound, num_labels, label_bound)
            if problem is not None:
                return DatasetFormatError(path, problem, lineno)
    return DatasetFormatError(path, f"not a multi-label LIBSVM file ({cause})")


def _row_fault(toks: list[str], num_features: int | None, feature_bound: str,
               num_labels: int | None, label_bound: str) -> str | None:
    """What is wrong with one row's tokens, or None; accepts what ``load_svmlight_file``
    accepts (labels as numbers, a leading ``qid:``) so that it blames the right line."""
    features = toks
    if ":" not in toks[0]:
        features = toks[1:]
        for lab in toks[0].split(","):
            try:
                v = float(lab)
            except ValueError:
                v = math.nan
            if not math.isfinite(v) or v != int(v):
                return f"label {lab!r} is not an integer"
            if v < 0:
                return f"label {int(v)} is negative (labels are 0-based)"
            if num_labels is not None and v >= num_labels:
                return f"label {int(v)} outside [0, {num_labels}){label_bound}"
    if features and features[0].startswith("qid"):
        features = features[1:]
    previous = 0
    for tok in features:
        idx, sep, val = tok.partition(":")
        if not sep:
            return f"feature {tok!r} is not 'index:value'"
        try:
            j, v = int(idx), float(val)
        except ValueError:
            return f"feature {tok!r} is not 'index:value' with an integer index and a number"
        if j < 1:
            return f"feature index {j} < 1 (indices are 1-based)"
        if j <= previous:
            return f"feature index {j} after {previous}: indices must be ascending, each once"
        if num_features is not None and j > num_features:
            return f"feature index {j} > {feature_bound}"
        if not math.isfinite(v):
            return f"feature {tok!r} is not finite"
        if abs(v) > _FLOAT32_MAX:
            return f"feature {tok!r} overflows float32"
        previous = j
    return None
