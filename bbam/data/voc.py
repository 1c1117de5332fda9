"""The PASCAL VOC reader: a ``VOCdevkit/VOC<year>`` folder as a multi-label image set.

Owns :func:`load_voc` and :data:`VOC_CLASSES`. A VOC folder holds
``Annotations/<id>.xml`` (one ``<object>`` per instance, with its ``<name>`` and
``<difficult>`` flag), ``ImageSets/Main/<set>.txt`` (one image id a line) and
``JPEGImages/<id>.jpg``. The image-set files give the rows and the official split; the
annotations give each image's labels. The rows end in :func:`~bbam.data.images.image_dataset`,
as for :func:`~bbam.data.images.load_image_folder`. Every error names the file (and the
line of an image-set file). Library layer: standard library (``xml.etree``), numpy, torch.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from .container import DatasetFormatError, MultiLabelData, check_exists, text_lines
from .images import image_dataset

__all__ = ["VOC_CLASSES", "load_voc"]

#: The 20 PASCAL VOC object classes, sorted by name (the label columns of a VOC set).
VOC_CLASSES: Tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)

PathLike = Union[str, os.PathLike]


def _voc_folder(root: Path) -> Path:
    """``root`` itself when it holds ``Annotations/``, else the single ``VOC*`` folder in it
    (``root`` a ``VOCdevkit`` folder)."""
    if not root.is_dir():
        raise FileNotFoundError(2, f"VOC folder not found: {root}", str(root))
    if (root / "Annotations").is_dir():
        return root
    found = sorted(p for p in root.iterdir() if p.is_dir() and p.name.upper().startswith("VOC")
                   and (p / "Annotations").is_dir())
    if len(found) == 1:
        return found[0]
    if not found:
        raise DatasetFormatError(root, "'root' is neither a VOC folder (no Annotations/ folder) nor a "
                                       "VOCdevkit folder holding a VOC* folder with Annotations/")
    names = ", ".join(p.name for p in found)
    raise DatasetFormatError(root, f"'root' is a VOCdevkit folder with {len(found)} VOC folders ({names}); "
                                   f"pass one of them as 'root'")


def _set_ids(folder: Path, sets: Sequence[str], what: str) -> Dict[str, Tuple[Path, int]]:
    """Image ids of the image sets ``sets`` in file order (the first occurrence kept), each
    with the file and line that listed it."""
    ids: Dict[str, Tuple[Path, int]] = {}
    for set_name in sets:
        path = folder / "ImageSets" / "Main" / f"{set_name}.txt"
        check_exists(path)
        count = 0
        for lineno, line in text_lines(path):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 1:
                raise DatasetFormatError(path, f"expected one image id a line, got {line.strip()!r} "
                                               f"(a per-class file? '{what}' takes sets such as 'train')", lineno)
            ids.setdefault(fields[0], (path, lineno))
            count += 1
        if not count:
            raise DatasetFormatError(path, "no image ids listed")
    return ids


def _labels(xml_path: Path) -> Tuple[List[str], List[str]]:
    """``(labels, all names)`` of one annotation: ``labels`` the classes with at least one
    object not marked difficult, ``all names`` every object's class."""
    try:
        tree = ET.parse(xml_path)
    except ET.ParseError as err:
        raise DatasetFormatError(xml_path, f"malformed XML ({err})", err.position[0]) from None
    except OSError as err:
        raise DatasetFormatError(xml_path, f"cannot open ({err.strerror or err})") from None
    labels: List[str] = []
    names: List[str] = []
    for k, obj in enumerate(tree.getroot().findall("object")):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise DatasetFormatError(xml_path, f"<object> number {k + 1} has no <name>")
        difficult = (obj.findtext("difficult") or "0").strip()
        if difficult not in ("0", "1"):
            raise DatasetFormatError(xml_path, f"<object> {name!r}: <difficult> must be 0 or 1, got {difficult!r}")
        names.append(name)
        if difficult == "0" and name not in labels:
            labels.append(name)
    return labels, names


def _as_sets(value: Union[str, Sequence[str], None], what: str) -> List[str]:
    if value is None:
        return []
    sets = [value] if isinstance(value, str) else list(value)
    for s in sets:
        if not isinstance(s, str) or not s.strip() or "/" in s or "\\" in s:
            raise ValueError(f"load_voc: '{what}' must be image-set names such as 'train', got {s!r}")
    return sets


def load_voc(root: PathLike, train_sets: Union[str, Sequence[str]] = ("train",),
             test_sets: Union[str, Sequence[str], None] = ("val",), image_size: int = 224,
             backbone: Optional[Mapping[str, Any]] = None, name: Optional[str] = None) -> MultiLabelData:
    """A PASCAL VOC folder as a multi-label image set (one label per object class).

    Args:
        root: a VOC folder such as ``VOCdevkit/VOC2012`` (holding ``Annotations/``,
            ``ImageSets/Main/`` and ``JPEGImages/``), or a ``VOCdevkit`` folder holding
            exactly one such ``VOC*`` folder.
        train_sets: names of the image sets (``ImageSets/Main/<set>.txt``, one image id a
            line) whose images are the training rows, e.g. ``("train",)`` or ``("trainval",)``.
        test_sets: names of the image sets whose images are the test rows, e.g. ``("val",)``
            or ``("test",)`` (VOC2007, whose test annotations are public). Empty or None:
            the rows are the train sets' images only and there is no official split.
        image_size: decoded side ``S`` (see :func:`~bbam.data.images.image_dataset`).
        backbone: the image model's settings or None (see :func:`~bbam.data.images.image_dataset`).
        name: the dataset's name (default: the VOC folder's name lowercased, e.g. ``voc2012``).

    Returns:
        :func:`~bbam.data.images.image_dataset`'s :class:`MultiLabelData`: rows are the
        train sets' image ids then the test sets' (file order; an id listed twice within
        the train sets, or within the test sets, is kept once), ``train_idx`` / ``test_idx``
        those rows. The label columns are :data:`VOC_CLASSES` when every object name found
        is one of them, else the names found, sorted.

    An image is positive for a class when its annotation has an object of that class
    *not* marked ``<difficult>1</difficult>``: an image whose only instances of a class
    are difficult is negative for it. (VOC's classification benchmark leaves such
    image-class pairs out of its score instead; a training target has to be 0 or 1, and
    a difficult-only instance is not counted as a positive.) An image without
    (non-difficult) objects is an all-negative row.

    Raises:
        FileNotFoundError: ``root`` or an image-set file is missing.
        DatasetFormatError: ``root`` holds no (or several) VOC folders; an image-set file
            is empty or malformed; an id is in both a train and a test set; an id's
            annotation or image is missing (the message names the file and the image-set
            line); an annotation is malformed XML (names the XML file).
    """
    folder = _voc_folder(Path(root))
    train_names, test_names = _as_sets(train_sets, "train_sets"), _as_sets(test_sets, "test_sets")
    if not train_names:
        raise ValueError("load_voc: 'train_sets' must name at least one image set")
    train = _set_ids(folder, train_names, "train_sets")
    test = _set_ids(folder, test_names, "test_sets")
    for image_id, (path, lineno) in test.items():
        if image_id in train:
            other, other_line = train[image_id]
            raise DatasetFormatError(path, f"image id {image_id!r} is in both a train set ({other}, line "
                                           f"{other_line}) and a test set", lineno)
    files: List[str] = []
    labels: List[List[str]] = []
    found: set[str] = set()
    for image_id, (path, lineno) in [*train.items(), *test.items()]:
        xml_path = folder / "Annotations" / f"{image_id}.xml"
        if not xml_path.is_file():
            raise DatasetFormatError(path, f"image id {image_id!r}: annotation {xml_path} not found", lineno)
        image = folder / "JPEGImages" / f"{image_id}.jpg"
        if not image.is_file():
            raise DatasetFormatError(path, f"image id {image_id!r}: image {image} not found", lineno)
        labs, names = _labels(xml_path)
        files.append(str(image))
        labels.append(labs)
        found.update(names)
    columns = list(VOC_CLASSES) if found <= set(VOC_CLASSES) else sorted(found)
    split: Dict[str, Any] = {}
    if test_names:
        split = {"train_idx": torch.arange(len(train), dtype=torch.long),
                 "test_idx": torch.arange(len(train), len(files), dtype=torch.long)}
    return image_dataset(files, labels, image_size, backbone, name=name or folder.name.lower(),
                         source=str(folder), label_names=columns, **split)
