"""The multi-label dataset container and its validation.

Owns :class:`MultiLabelData` (``X`` float32 ``[N, D]``, ``Y`` int8 ``[N, K]`` in {0, 1},
names, optional official split), :class:`DatasetFormatError` (every file error names the
file and, for text formats, the line), and the file helpers every reader shares
(:func:`text_lines`, :func:`check_exists`). Imports only the standard library, numpy and torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

__all__ = ["DatasetFormatError", "MultiLabelData", "text_lines", "check_exists"]


class DatasetFormatError(ValueError):
    """A data file is unreadable or malformed.

    The message always names the file and, where one applies, the 1-based
    line number; both are also available as attributes ``path`` / ``line``.
    """

    def __init__(self, path: Any, message: str, line: int | None = None):
        self.path = str(path)
        self.line = line
        where = f"{self.path}" if line is None else f"{self.path}, line {line}"
        # a message that already names the file (e.g. MultiLabelData's checks of a file's
        # arrays, re-raised by a reader) is not prefixed with it again
        super().__init__(message if line is None and self.path in message else f"{where}: {message}")


def text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, decoded line); errors name file and line."""
    try:
        fh = open(path, "rb")
    except OSError as e:
        raise DatasetFormatError(path, f"cannot open ({e.strerror or e})") from e
    with fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DatasetFormatError(path, f"not UTF-8 text ({e.reason} at byte {e.start})", lineno) from None
            if lineno == 1 and text.startswith("\ufeff"):
                text = text[1:]
            yield lineno, text


def check_exists(path: Path) -> None:
    """FileNotFoundError / IsADirectoryError naming ``path`` unless it is a file."""
    if not path.exists():
        raise FileNotFoundError(2, f"dataset file not found: {path}", str(path))
    if path.is_dir():
        raise IsADirectoryError(21, f"expected a file, got a directory: {path}", str(path))


def _as_tensor(value: Any, what: str, where: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, np.ndarray):
        if value.dtype == object or value.dtype.kind in "USV":
            raise TypeError(f"{where}: {what} must be numeric, got numpy dtype {value.dtype}")
        return torch.from_numpy(np.ascontiguousarray(value))
    raise TypeError(f"{where}: {what} must be a torch.Tensor or numpy array, got {type(value).__name__}")


def _as_index(value: Any, what: str, n: int, where: str) -> torch.Tensor | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple, range)):
        value = np.asarray(list(value), dtype=np.int64)
    t = _as_tensor(value, what, where)
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"{where}: {what} must hold integer indices, got {t.dtype}")
    if t.dim() > 1:
        raise ValueError(f"{where}: {what} must be 1-D, got shape {tuple(t.shape)}")
    t = t.to(torch.long).reshape(-1)
    if t.numel():
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= n:
            raise ValueError(f"{where}: {what} has indices outside [0, {n}) (min {lo}, max {hi})")
        if torch.unique(t).numel() != t.numel():
            raise ValueError(f"{where}: {what} contains duplicate indices")
    return t.contiguous()


def _names(value: Any, count: int, prefix: str, what: str, where: str) -> list[str]:
    if value is None:
        return [f"{prefix}{i}" for i in range(count)]
    if isinstance(value, np.ndarray):
        value = value.tolist()
    names = [str(v) for v in value]
    if len(names) != count:
        raise ValueError(f"{where}: {what} has {len(names)} entries, expected {count}")
    return names


@dataclass(repr=False, eq=False)
class MultiLabelData:
    """A multi-label dataset held in memory.

    Attributes:
        X: float32 features ``[N, D]`` (finite).
        Y: int8 labels ``[N, K]`` with values in {0, 1}.
        label_names: ``K`` names (``label_<k>`` when not given).
        feature_names: ``D`` names (``f<j>`` when not given).
        train_idx, test_idx: the source's official split (LongTensor of row
            indices, disjoint) or ``None``.
        name: short dataset name (e.g. ``"emotions"``).
        source: where it was read from (a path), used in error messages.
        recipe: how the reader made ``X`` from raw data, for reading new data the same way:
            None for numeric features read as they are, else ``{"kind": "text_tokens",
            "vocab", "max_len", "text_keys"}``, ``{"kind": "sentence", "text_keys",
            "sentence"}`` or ``{"kind": "images", "image_size", "backbone"}``.
        images: the set's images (:class:`~bbam.data.image_rows.ImageRows`) for an image set.

    ``__post_init__`` validates and normalises: numpy arrays are accepted and
    converted; ``X`` of any real dtype becomes float32; ``Y`` of any
    real/bool dtype becomes int8 after checking that every value is 0 or 1.
    Errors name ``source`` (or ``name``).
    """

    X: torch.Tensor
    Y: torch.Tensor
    label_names: list[str] | None = None
    feature_names: list[str] | None = None
    train_idx: torch.Tensor | None = None
    test_idx: torch.Tensor | None = None
    name: str = "dataset"
    source: str | None = None
    recipe: dict | None = None
    images: Any = None

    def __post_init__(self) -> None:
        where = f"dataset {self.name!r}" + (f" ({self.source})" if self.source else "")
        X = _as_tensor(self.X, "X", where)
        Y = _as_tensor(self.Y, "Y", where)
        if X.dim() != 2:
            raise ValueError(f"{where}: X must be 2-D [N, D], got shape {tuple(X.shape)}")
        if Y.dim() != 2:
            raise ValueError(f"{where}: Y must be 2-D [N, K], got shape {tuple(Y.shape)}")
        if X.shape[0] != Y.shape[0]:
            raise ValueError(f"{where}: X has {X.shape[0]} rows but Y has {Y.shape[0]}")
        if X.dtype.is_complex or X.dtype == torch.bool:
            raise TypeError(f"{where}: X must be real-valued, got {X.dtype}")
        if Y.dtype.is_complex:
            raise TypeError(f"{where}: Y must be real-valued, got {Y.dtype}")
        if X.dtype == torch.bfloat16:
            X = X.float()
        X = X.to(torch.float32).contiguous()
        Xn = X.numpy()  # checks in numpy: much faster than torch for these reductions
        if not np.isfinite(Xn).all():
            bad = ~np.isfinite(Xn)
            r, c = (int(v) for v in np.argwhere(bad)[0])
            raise ValueError(
                f"{where}: X contains {int(bad.sum())} NaN/Inf value(s), first at row {r}, column {c}"
            )
        Yn = Y.numpy() if Y.dtype != torch.bfloat16 else Y.float().numpy()
        if Yn.dtype == np.bool_:
            Yn = Yn.view(np.int8)
        if Yn.size:
            # byte labels: one pass (as unsigned, -1 is 255: values are 0/1 iff max <= 1)
            bytes_ok = Yn.dtype in (np.int8, np.uint8) and Yn.view(np.uint8).max() <= 1
            badY = None if bytes_ok else (Yn != 0) & (Yn != 1)
            if badY is not None and badY.any():
                r, c = (int(v) for v in np.argwhere(badY)[0])
                raise ValueError(
                    f"{where}: labels must be 0 or 1; found {Yn[r, c].item()!r} at row {r}, label column {c}"
                )
        Y = Y.to(torch.int8).contiguous()
        n, d = X.shape
        k = Y.shape[1]
        self.X, self.Y = X, Y
        self.label_names = _names(self.label_names, k, "label_", "label_names", where)
        self.feature_names = _names(self.feature_names, d, "f", "feature_names", where)
        self.train_idx = _as_index(self.train_idx, "train_idx", n, where)
        self.test_idx = _as_index(self.test_idx, "test_idx", n, where)
        if self.train_idx is not None and self.test_idx is not None and self.train_idx.numel() and self.test_idx.numel():
            if bool(torch.isin(self.train_idx, self.test_idx).any()):
                raise ValueError(f"{where}: train_idx and test_idx overlap")

    # ---- shape helpers -------------------------------------------------
    @property
    def num_samples(self) -> int:
        return int(self.X.shape[0])

    @property
    def num_features(self) -> int:
        return int(self.X.shape[1])

    @property
    def num_labels(self) -> int:
        return int(self.Y.shape[1])

    def label_frequencies(self) -> torch.Tensor:
        """Fraction of positive samples per label, float64 ``[K]``."""
        if self.num_samples == 0:
            return torch.zeros(self.num_labels, dtype=torch.float64)
        return self.Y.to(torch.float64).mean(0)

    def subset(self, index: Any, name: str | None = None) -> "MultiLabelData":
        """Rows ``index`` as a new dataset (no official split)."""
        idx = _as_index(index, "index", self.num_samples, f"dataset {self.name!r}")
        return MultiLabelData(
            self.X[idx], self.Y[idx], list(self.label_names), list(self.feature_names),
            name=name or self.name, source=self.source,
        )

    def __repr__(self) -> str:
        split = ""
        if self.train_idx is not None or self.test_idx is not None:
            ntr = 0 if self.train_idx is None else self.train_idx.numel()
            nte = 0 if self.test_idx is None else self.test_idx.numel()
            split = f", split={ntr}/{nte}"
        card = float(self.Y.sum()) / max(self.num_samples, 1)
        return (
            f"MultiLabelData(name={self.name!r}, N={self.num_samples}, D={self.num_features}, "
            f"K={self.num_labels}, cardinality={card:.3f}{split})"
        )
