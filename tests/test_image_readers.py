"""The PASCAL VOC and COCO readers (bbam.data.voc, bbam.data.coco) on small fixtures
written here: labels (VOC's difficult-object convention, COCO's crowd annotations and
images without annotations), the official split, the label columns, lazy decoding, and
every error naming its file."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
import torch

from bbam.data.coco import load_coco
from bbam.data.container import DatasetFormatError
from bbam.data.voc import VOC_CLASSES, load_voc

S = 16


def _image(path: Path, color: Tuple[int, int, int] = (200, 30, 40)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 12), color).save(path)


# ---- PASCAL VOC ------------------------------------------------------------------

def _xml(objects: List[Tuple[str, int]]) -> str:
    body = "".join(
        f"<object><name>{name}</name><pose>Left</pose><truncated>0</truncated>"
        f"<difficult>{difficult}</difficult>"
        + ("<part><name>head</name></part>" if name == "person" else "")
        + "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object>"
        for name, difficult in objects)
    return f"<annotation><folder>VOC2012</folder><filename>x.jpg</filename>{body}</annotation>"


VOC_OBJECTS: Dict[str, List[Tuple[str, int]]] = {
    "2008_000001": [("cat", 0), ("dog", 1)],                  # difficult-only dog: negative
    "2008_000002": [("cat", 1), ("cat", 0), ("person", 0)],   # one normal cat: positive
    "2008_000003": [("dog", 0)],
    "2008_000004": [("person", 1)],                           # all difficult: all negative
}


def _voc(base: Path, objects: Optional[Dict[str, List[Tuple[str, int]]]] = None,
         sets: Optional[Dict[str, str]] = None) -> Path:
    folder = base / "VOCdevkit" / "VOC2012"
    objects = VOC_OBJECTS if objects is None else objects
    sets = {"train": "2008_000001\n2008_000002\n2008_000001\n", "val": "2008_000003\n\n2008_000004\n"} \
        if sets is None else sets
    (folder / "Annotations").mkdir(parents=True)
    (folder / "ImageSets" / "Main").mkdir(parents=True)
    for image_id, objs in objects.items():
        (folder / "Annotations" / f"{image_id}.xml").write_text(_xml(objs))
        _image(folder / "JPEGImages" / f"{image_id}.jpg")
    for set_name, text in sets.items():
        (folder / "ImageSets" / "Main" / f"{set_name}.txt").write_text(text)
    return folder


def _rows(data, names: List[str]) -> List[List[str]]:
    return [[names[j] for j in range(len(names)) if data.Y[i, j]] for i in range(data.num_samples)]


def test_voc_labels_split_columns_and_images(tmp_path):
    folder = _voc(tmp_path)
    data = load_voc(folder, image_size=S)
    assert data.name == "voc2012" and data.label_names == list(VOC_CLASSES)
    assert list(VOC_CLASSES) == sorted(VOC_CLASSES) and len(VOC_CLASSES) == 20
    assert _rows(data, data.label_names) == [["cat"], ["cat", "person"], ["dog"], []]
    assert data.train_idx.tolist() == [0, 1] and data.test_idx.tolist() == [2, 3]
    assert [Path(f).stem for f in data.images.files] == ["2008_000001", "2008_000002", "2008_000003", "2008_000004"]
    assert data.X.shape == (4, 0) and len(data.images) == 4 and data.images.image_size == S
    img = data.images[0]
    assert img.dtype == torch.uint8 and img.shape == (3, S, S) and int(img[0].float().mean()) > 150


def test_voc_devkit_folder_no_test_sets_and_other_names(tmp_path):
    _voc(tmp_path)
    data = load_voc(tmp_path / "VOCdevkit", train_sets="train", test_sets=(), image_size=S, name="mine")
    assert data.name == "mine" and data.num_samples == 2 and data.train_idx is None and data.test_idx is None
    both = load_voc(tmp_path / "VOCdevkit", train_sets=("train", "val"), test_sets=None, image_size=S)
    assert both.num_samples == 4 and both.train_idx is None
    # names outside the 20 classes: the names found (difficult-only ones included), sorted
    objects = {"a": [("zebra", 0), ("cat", 1)], "b": [("cat", 0)]}
    data = load_voc(_voc(tmp_path / "other", objects, {"train": "a\nb\n"}), test_sets=(), image_size=S)
    assert data.label_names == ["cat", "zebra"] and _rows(data, data.label_names) == [["zebra"], ["cat"]]


def test_voc_devkit_folder_errors(tmp_path):
    _voc(tmp_path)
    _voc(tmp_path / "x")
    (tmp_path / "x" / "VOCdevkit" / "VOC2012").rename(tmp_path / "VOCdevkit" / "VOC2007")
    with pytest.raises(DatasetFormatError, match=r"VOCdevkit: .*2 VOC folders \(VOC2007, VOC2012\)"):
        load_voc(tmp_path / "VOCdevkit")
    with pytest.raises(DatasetFormatError, match=re.escape(str(tmp_path / "x")) + ": 'root' is neither"):
        load_voc(tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_voc(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="'train_sets' must name at least one"):
        load_voc(tmp_path / "VOCdevkit" / "VOC2012", train_sets=())


@pytest.mark.parametrize("case, match", [
    ("no_set_file", r"ImageSets/Main/test\.txt"),
    ("no_annotation", r"val\.txt, line 3: image id '2008_000004': annotation .*2008_000004\.xml not found"),
    ("no_image", r"train\.txt, line 2: image id '2008_000002': image .*2008_000002\.jpg not found"),
    ("bad_xml", r"Annotations/2008_000003\.xml, line 1: malformed XML"),
    ("bad_difficult", r"2008_000003\.xml: <object> 'dog': <difficult> must be 0 or 1"),
    ("no_name", r"2008_000003\.xml: <object> number 1 has no <name>"),
    ("in_both", r"val\.txt, line 1: image id '2008_000001' is in both a train set \(.*train\.txt, line 1\)"),
    ("two_fields", r"train\.txt, line 1: expected one image id a line"),
    ("empty_set", r"train\.txt: no image ids listed"),
])
def test_voc_errors_name_the_file(tmp_path, case, match):
    folder = _voc(tmp_path)
    main = folder / "ImageSets" / "Main"
    test_sets = ("test",) if case == "no_set_file" else ("val",)
    if case == "no_annotation":
        (folder / "Annotations" / "2008_000004.xml").unlink()
    elif case == "no_image":
        (folder / "JPEGImages" / "2008_000002.jpg").unlink()
    elif case == "bad_xml":
        (folder / "Annotations" / "2008_000003.xml").write_text("<annotation><object>")
    elif case == "bad_difficult":
        (folder / "Annotations" / "2008_000003.xml").write_text(_xml([("dog", 2)]))
    elif case == "no_name":
        (folder / "Annotations" / "2008_000003.xml").write_text("<annotation><object/></annotation>")
    elif case == "in_both":
        (main / "val.txt").write_text("2008_000001\n")
    elif case == "two_fields":
        (main / "train.txt").write_text("2008_000001  1\n")
    elif case == "empty_set":
        (main / "train.txt").write_text("\n")
    error = FileNotFoundError if case == "no_set_file" else DatasetFormatError
    with pytest.raises(error, match=match):
        load_voc(folder, test_sets=test_sets, image_size=S)


# ---- COCO --------------------------------------------------------------------------

CATEGORIES = [{"id": 5, "name": "person"}, {"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]


def _coco_docs() -> Tuple[dict, dict]:
    train = {"images": [{"id": 3, "file_name": "c.png"}, {"id": 1, "file_name": "a.jpg"},
                        {"id": 2, "file_name": "b.jpg"}],
             "annotations": [{"image_id": 1, "category_id": 1, "iscrowd": 0},
                             {"image_id": 1, "category_id": 1},
                             {"image_id": 3, "category_id": 5, "iscrowd": 1},  # crowd counts
                             {"image_id": 3, "category_id": 2}],
             "categories": CATEGORIES}                                          # image 2: none
    test = {"images": [{"id": 11, "file_name": "e.jpg"}, {"id": 10, "file_name": "d.jpg"}],
            "annotations": [{"image_id": 10, "category_id": 2}, {"image_id": 11, "category_id": 5}],
            "categories": list(reversed(CATEGORIES))}
    return train, test


def _coco(root: Path, train: Optional[dict] = None, test: Optional[dict] = None) -> Path:
    default_train, default_test = _coco_docs()
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "train.json").write_text(json.dumps(default_train if train is None else train))
    (root / "annotations" / "val.json").write_text(json.dumps(default_test if test is None else test))
    for name in ("a.jpg", "b.jpg", "c.png"):
        _image(root / "tr" / name, (10, 220, 30))
    for name in ("d.jpg", "e.jpg"):
        _image(root / "va" / name)
    return root


def _load_coco(root: Path, **kwargs):
    args = dict(train_annotations="annotations/train.json", test_annotations="annotations/val.json",
                train_images="tr", test_images="va", image_size=S)
    return load_coco(root, **{**args, **kwargs})


def test_coco_labels_split_columns_and_images(tmp_path):
    data = _load_coco(_coco(tmp_path / "coco"))
    assert data.name == "coco" and data.label_names == ["cat", "dog", "person"]
    assert [Path(f).name for f in data.images.files] == ["a.jpg", "b.jpg", "c.png", "d.jpg", "e.jpg"]
    assert _rows(data, data.label_names) == [["cat"], [], ["dog", "person"], ["dog"], ["person"]]
    assert data.train_idx.tolist() == [0, 1, 2] and data.test_idx.tolist() == [3, 4]
    assert data.X.shape == (5, 0)
    img = data.images[0]
    assert img.dtype == torch.uint8 and img.shape == (3, S, S) and int(img[1].float().mean()) > 150


def test_coco_train_only_and_absolute_paths(tmp_path):
    root = _coco(tmp_path / "coco")
    data = load_coco(tmp_path, train_annotations=root / "annotations" / "train.json", test_annotations=None,
                     train_images=str(root / "tr"), image_size=S, name="mine")
    assert data.name == "mine" and data.num_samples == 3 and data.train_idx is None and data.test_idx is None
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_coco(tmp_path / "nowhere")


def _mutate(case: str) -> Tuple[dict, dict]:
    train, test = _coco_docs()
    if case == "missing_key":
        del test["categories"]
    elif case == "missing_field":
        del train["images"][1]["file_name"]
    elif case == "unknown_image":
        test["annotations"].append({"image_id": 99, "category_id": 1})
    elif case == "unknown_category":
        train["annotations"].append({"image_id": 2, "category_id": 7})
    elif case == "other_categories":
        test["categories"] = test["categories"][:2]
    elif case == "missing_image":
        test["images"][0]["file_name"] = "gone.jpg"
    elif case == "duplicate_image":
        train["images"].append({"id": 3, "file_name": "a.jpg"})
    elif case == "same_file":
        test["images"][0]["file_name"] = "../tr/a.jpg"
    return train, test


@pytest.mark.parametrize("case, match", [
    ("missing_key", r"val\.json: missing key 'categories'"),
    ("missing_field", r"train\.json: images\[1\] has no 'file_name'"),
    ("unknown_image", r"val\.json: annotations\[2\]: image id 99 is not in 'images'"),
    ("unknown_category", r"train\.json: annotations\[4\]: category id 7 is not in 'categories'"),
    ("other_categories", r"val\.json: its categories differ from those of .*train\.json"),
    ("missing_image", r"val\.json: images\[0\] \(id 11\): image .*gone\.jpg not found"),
    ("duplicate_image", r"train\.json: images\[3\]: image id 3 is listed twice"),
])
def test_coco_errors_name_the_file(tmp_path, case, match):
    train, test = _mutate(case)
    root = _coco(tmp_path, train, test)
    with pytest.raises(DatasetFormatError, match=match):
        _load_coco(root)


def test_coco_unreadable_files_name_the_file(tmp_path):
    root = _coco(tmp_path)
    (root / "annotations" / "val.json").write_text('{"images": [}')
    with pytest.raises(DatasetFormatError, match=r"val\.json, line 1: invalid JSON"):
        _load_coco(root)
    (root / "annotations" / "val.json").write_text("[]")
    with pytest.raises(DatasetFormatError, match=r"val\.json: expected a JSON object"):
        _load_coco(root)
    with pytest.raises(FileNotFoundError, match=r"missing\.json"):
        _load_coco(root, test_annotations="annotations/missing.json")
    (root / "annotations" / "val.json").write_text(json.dumps(_mutate("same_file")[1]))
    with pytest.raises(DatasetFormatError, match=r"val\.json: 1 image file\(s\) are also in .*train\.json"):
        _load_coco(root)
