"""The MS-COCO reader: instance-annotation JSON files as a multi-label image set.

Owns :func:`load_coco`. A COCO annotation file (``instances_<split>.json``) lists
``images`` (``id``, ``file_name``), ``annotations`` (``image_id``, ``category_id``, optional
``iscrowd``) and ``categories`` (``id``, ``name``); an image's labels are the categories of
its annotations. The train file (and optionally a test file) give the rows and the
official split; the rows end in :func:`~bbam.data.images.image_dataset`, as for
:func:`~bbam.data.images.load_image_folder`. Every error names the file. Library layer:
standard library (``json``), numpy, torch.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch

from .container import DatasetFormatError, MultiLabelData, check_exists
from .images import image_dataset

__all__ = ["load_coco"]

PathLike = Union[str, os.PathLike]


def _path(root: Path, value: PathLike) -> Path:
    """``value`` relative to ``root`` (an absolute path as is)."""
    path = Path(value)
    return path if path.is_absolute() else root / path


def _read_json(path: Path) -> Dict[str, Any]:
    check_exists(path)
    try:
        with open(path, "rb") as fh:
            doc = json.load(fh)
    except json.JSONDecodeError as err:
        raise DatasetFormatError(path, f"invalid JSON ({err.msg}, column {err.colno})", err.lineno) from None
    except UnicodeDecodeError as err:
        raise DatasetFormatError(path, f"not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise DatasetFormatError(path, f"cannot open ({err.strerror or err})") from None
    if not isinstance(doc, dict):
        raise DatasetFormatError(path, f"expected a JSON object with 'images', 'annotations' and "
                                       f"'categories', got a {type(doc).__name__}")
    for key in ("images", "annotations", "categories"):
        if key not in doc:
            raise DatasetFormatError(path, f"missing key {key!r} (a COCO instances file has 'images', "
                                           f"'annotations' and 'categories')")
        if not isinstance(doc[key], list):
            raise DatasetFormatError(path, f"{key!r} must be a list, got {type(doc[key]).__name__}")
    return doc


def _field(path: Path, key: str, i: int, entry: Any, field: str, kind: type) -> Any:
    """``entry[field]`` of entry ``i`` of list ``key``, checked to be of type ``kind``."""
    if not isinstance(entry, dict):
        raise DatasetFormatError(path, f"{key}[{i}] must be a JSON object, got {type(entry).__name__}")
    if field not in entry:
        raise DatasetFormatError(path, f"{key}[{i}] has no {field!r}")
    value = entry[field]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DatasetFormatError(path, f"{key}[{i}].{field} must be a JSON {'integer' if kind is int else 'string'}, "
                                       f"got {value!r}")
    return value


def _categories(path: Path, doc: Mapping[str, Any]) -> Dict[int, str]:
    """Category id -> name, sorted by id; ids and names unique."""
    cats: Dict[int, str] = {}
    for i, entry in enumerate(doc["categories"]):
        cid = _field(path, "categories", i, entry, "id", int)
        name = _field(path, "categories", i, entry, "name", str).strip()
        if cid in cats:
            raise DatasetFormatError(path, f"categories[{i}]: category id {cid} is listed twice")
        if not name or name in cats.values():
            raise DatasetFormatError(path, f"categories[{i}]: category name {name!r} is empty or listed twice")
        cats[cid] = name
    if not cats:
        raise DatasetFormatError(path, "no categories listed")
    return dict(sorted(cats.items()))


def _rows(path: Path, doc: Mapping[str, Any], images: Path, cats: Mapping[int, str]) -> Tuple[List[str], List[List[str]]]:
    """``(image files, labels)`` of one annotation file, images sorted by id."""
    files: Dict[int, str] = {}
    for i, entry in enumerate(doc["images"]):
        image_id = _field(path, "images", i, entry, "id", int)
        file_name = _field(path, "images", i, entry, "file_name", str)
        if image_id in files:
            raise DatasetFormatError(path, f"images[{i}]: image id {image_id} is listed twice")
        file = images / file_name
        if not file.is_file():
            raise DatasetFormatError(path, f"images[{i}] (id {image_id}): image {file} not found")
        files[image_id] = str(file)
    if not files:
        raise DatasetFormatError(path, "no images listed")
    labels: Dict[int, List[str]] = {image_id: [] for image_id in files}
    for i, entry in enumerate(doc["annotations"]):
        image_id = _field(path, "annotations", i, entry, "image_id", int)
        cid = _field(path, "annotations", i, entry, "category_id", int)
        if image_id not in labels:
            raise DatasetFormatError(path, f"annotations[{i}]: image id {image_id} is not in 'images'")
        if cid not in cats:
            raise DatasetFormatError(path, f"annotations[{i}]: category id {cid} is not in 'categories'")
        if cats[cid] not in labels[image_id]:
            labels[image_id].append(cats[cid])
    order = sorted(files)
    return [files[k] for k in order], [labels[k] for k in order]


def load_coco(root: PathLike, train_annotations: PathLike = "annotations/instances_train2014.json",
              test_annotations: Optional[PathLike] = "annotations/instances_val2014.json",
              train_images: PathLike = "train2014", test_images: PathLike = "val2014",
              image_size: int = 224, backbone: Optional[Mapping[str, Any]] = None,
              name: Optional[str] = None) -> MultiLabelData:
    """MS-COCO instance annotations as a multi-label image set (one label per category).

    Args:
        root: the COCO folder; the paths below are relative to it (absolute paths are
            taken as they are).
        train_annotations: the training rows' annotation JSON (``images``,
            ``annotations``, ``categories``).
        test_annotations: the test rows' annotation JSON, or None: the rows are the train
            file's images only and there is no official split.
        train_images: the folder of the train file's images (its ``file_name`` entries).
        test_images: the folder of the test file's images (unused without ``test_annotations``).
        image_size: decoded side ``S`` (see :func:`~bbam.data.images.image_dataset`).
        backbone: the image model's settings or None (see :func:`~bbam.data.images.image_dataset`).
        name: the dataset's name (default ``"coco"``).

    Returns:
        :func:`~bbam.data.images.image_dataset`'s :class:`MultiLabelData`: rows are the
        train file's images sorted by image id, then the test file's; ``train_idx`` /
        ``test_idx`` those rows. The label columns are the train file's category names,
        in the order of category id (the test file must list the same categories).

    An image's labels are the categories of all its annotations; crowd annotations
    (``iscrowd`` 1) count, as in multi-label COCO research code. Images with no
    annotations are kept, as all-negative rows (about 1% of COCO 2014; research code
    often drops them, which changes the row count).

    Raises:
        FileNotFoundError: an annotation file is missing.
        DatasetFormatError: an annotation file is unreadable or invalid JSON, lacks a key,
            has an annotation pointing at an unknown image or category id, lists an image
            whose file is missing, or (the test file) lists other categories than the
            train file, or the same image file. The message names the file.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(2, f"COCO folder not found: {root}", str(root))
    train_path = _path(root, train_annotations)
    train_doc = _read_json(train_path)
    cats = _categories(train_path, train_doc)
    files, labels = _rows(train_path, train_doc, _path(root, train_images), cats)
    del train_doc
    split: Dict[str, Any] = {}
    if test_annotations is not None:
        test_path = _path(root, test_annotations)
        test_doc = _read_json(test_path)
        test_cats = _categories(test_path, test_doc)
        if test_cats != cats:
            diff = sorted(set(test_cats.items()) ^ set(cats.items()))[:3]
            raise DatasetFormatError(test_path, f"its categories differ from those of {train_path} "
                                                f"(e.g. (id, name) {diff}); both files must list the same categories")
        test_files, test_labels = _rows(test_path, test_doc, _path(root, test_images), cats)
        shared = {os.path.abspath(f) for f in files}.intersection(os.path.abspath(f) for f in test_files)
        if shared:
            raise DatasetFormatError(test_path, f"{len(shared)} image file(s) are also in {train_path}, "
                                                f"e.g. {min(shared)}")
        split = {"train_idx": torch.arange(len(files), dtype=torch.long),
                 "test_idx": torch.arange(len(files), len(files) + len(test_files), dtype=torch.long)}
        files, labels = files + test_files, labels + test_labels
    return image_dataset(files, labels, image_size, backbone, name=name or "coco", source=str(train_path),
                         label_names=list(cats.values()), **split)
