"""Image datasets: label and split files, the image-folder reader, the common end of readers.

Images are never held as a whole-set pixel tensor: a dataset's images are
:class:`~bbam.data.image_rows.ImageRows` (file paths, decoded when indexed, so a
DataLoader's workers decode each batch and memory does not grow with the set size). Readers return a
:class:`MultiLabelData` whose ``images`` are the set's :class:`ImageRows`, whose ``X`` is an
empty ``[N, 0]`` placeholder and whose ``recipe`` records the image size and the image
model's settings. Nothing here runs a model: a frozen backbone's features are computed
(and cached on disk) by :func:`bbam.vision.features.image_features`, which the training
app calls when it prepares a run.

Files: :func:`load_image_folder` (a folder with ``<path>\\t<label>,<label>`` lines and an
optional ``<path>\\ttrain|test`` split file); :mod:`bbam.data.voc` and
:mod:`bbam.data.coco` read the paper's native formats into the same form
(:func:`image_dataset`). Every error names the file (and line). Library layer: standard
library, numpy, torch, Pillow.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from .container import DatasetFormatError, MultiLabelData, check_exists, text_lines
from .image_rows import IMAGE_SUFFIXES, ImageDecodeError, ImageRows, decode_image

__all__ = ["ImageDecodeError", "ImageRows", "decode_image", "read_label_file", "read_split_file",
           "image_dataset", "load_image_folder", "IMAGE_SUFFIXES"]

def _tab_lines(path: Path):
    """``(line number, first field, second field)`` of a tab-separated file; lines starting
    with ``#`` are comments."""
    for lineno, line in text_lines(path):
        line = line.rstrip("\r\n")
        if not line.strip() or line.lstrip().startswith("#"):  # blank or a comment line ('#' in a path is kept)
            continue
        first, tab, second = line.partition("\t")
        yield lineno, first.strip(), second.strip(), bool(tab)


def read_label_file(path, root) -> List[Tuple[str, List[str]]]:
    """``(image path, labels)`` of each line ``<path relative to root>\\t<label>[,<label>...]``
    (an empty label list is allowed); an image missing from ``root`` is an error naming
    the line."""
    path, root = Path(path), Path(root)
    check_exists(path)
    rows, seen = [], {}
    for lineno, rel, labels, _ in _tab_lines(path):
        file = root / rel
        if not file.is_file():
            raise DatasetFormatError(path, f"image {file} not found", lineno)
        key = str(file.resolve())
        if key in seen:
            raise DatasetFormatError(path, f"image {rel!r} is listed twice (first on line {seen[key]})", lineno)
        seen[key] = lineno
        rows.append((str(file), [s.strip() for s in labels.split(",") if s.strip()]))
    if not rows:
        raise DatasetFormatError(path, "no images listed")
    return rows


def read_split_file(path, root, files: Sequence[str]) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(train_idx, test_idx)`` of ``files`` from lines ``<path relative to root>\\ttrain|test``.
    Every image must be listed once; errors name the line."""
    path, root = Path(path), Path(root)
    check_exists(path)
    row_of = {str(Path(f).resolve()): i for i, f in enumerate(files)}
    assigned: dict[int, str] = {}
    for lineno, rel, split, _ in _tab_lines(path):
        if split not in ("train", "test"):
            raise DatasetFormatError(path, f"expected '<image>\\ttrain' or '<image>\\ttest', got split {split!r}", lineno)
        row = row_of.get(str((root / rel).resolve()))
        if row is None:
            raise DatasetFormatError(path, f"image {rel!r} is not in the label file", lineno)
        if row in assigned:
            raise DatasetFormatError(path, f"image {rel!r} is listed twice", lineno)
        assigned[row] = split
    missing = [f for i, f in enumerate(files) if i not in assigned]
    if missing:
        raise DatasetFormatError(path, f"{len(missing)} image(s) of the label file have no split, e.g. {missing[0]}")
    train = [i for i in range(len(files)) if assigned[i] == "train"]
    test = [i for i in range(len(files)) if assigned[i] == "test"]
    return torch.tensor(train, dtype=torch.long), torch.tensor(test, dtype=torch.long)


def image_dataset(files: Sequence[str], labels: Sequence[Sequence[str]], image_size: int,
                  backbone: Optional[Mapping[str, Any]] = None, name: str = "images", source: Optional[str] = None,
                  train_idx: Optional[torch.Tensor] = None, test_idx: Optional[torch.Tensor] = None,
                  label_names: Optional[Sequence[str]] = None) -> MultiLabelData:
    """The common end of every image reader.

    Args:
        files, labels: each image's path and label names.
        image_size: decoded side ``S``.
        backbone: the image model's settings (``model.backbone`` of the image model configs:
            ``name``, ``finetune``, ``batch_size``, ``num_workers``, ``device``, ``cache_dir``,
            ``cache``, ``progress``), or None (a model that reads pixels, e.g. a CNN trained
            from scratch), recorded in the ``recipe`` (a frozen backbone's features:
            :func:`bbam.vision.features.image_features` of ``images``).
        label_names: the label vocabulary in column order (default: the names found, sorted).

    Returns:
        :class:`MultiLabelData` with ``X`` ``[N, 0]``, ``Y`` int8 ``[N, K]``, ``images``: the set's :class:`ImageRows`, and its ``recipe``.
    """
    rows = ImageRows(files, image_size)
    names = list(label_names) if label_names is not None else sorted({n for labs in labels for n in labs})
    col = {n: j for j, n in enumerate(names)}
    Y = np.zeros((len(files), len(names)), dtype=np.int8)
    for i, labs in enumerate(labels):
        Y[i, [col[n] for n in labs]] = 1
    X, feature_names = torch.zeros((len(files), 0)), []
    recipe = {"kind": "images", "image_size": int(image_size),
              "backbone": None if backbone is None else {str(k): v for k, v in backbone.items()}}
    return MultiLabelData(X=X, Y=torch.from_numpy(Y), label_names=names, feature_names=feature_names,
                          train_idx=train_idx, test_idx=test_idx, name=name, source=source, recipe=recipe,
                          images=rows)


def load_image_folder(root, labels_file: str = "labels.tsv", split_file: Optional[str] = None,
                      image_size: int = 224, backbone: Optional[Mapping[str, Any]] = None,
                      name: Optional[str] = None) -> MultiLabelData:
    """Images of a folder with a label file.

    Args:
        root: the folder.
        labels_file: a text file in ``root`` (or a path), one image a line:
            ``<path relative to root><TAB><label>[,<label>...]``; a line starting with ``#``
            is a comment.
        split_file: None (the app draws a split), or a file in ``root`` (or a path) with
            lines ``<path relative to root><TAB>train|test``: the official split.
        image_size, backbone: see :func:`image_dataset`.

    Returns:
        :func:`image_dataset`'s :class:`MultiLabelData` (labels sorted by name).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(2, f"image folder not found: {root}", str(root))
    label_path = Path(labels_file) if Path(labels_file).is_absolute() else root / labels_file
    rows = read_label_file(label_path, root)
    files = [f for f, _ in rows]
    split = {}
    if split_file:
        split_path = Path(split_file) if Path(split_file).is_absolute() else root / split_file
        split["train_idx"], split["test_idx"] = read_split_file(split_path, root, files)
    return image_dataset(files, [labs for _, labs in rows], image_size, backbone, name=name or root.name,
                         source=str(label_path), **split)
