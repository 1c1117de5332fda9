"""What a run needs to turn new raw data into its model's inputs (application layer).

A run saves ``inputs.json`` describing how its data became the feature matrix ``X``;
:func:`read_inputs` applies the same recipe to new data for prediction:

* ``{"kind": "features"[, "feature_names"]}``: numeric features (dense/bag-of-words sets,
  ``.npz``, ARFF, LIBSVM, synthetic). New data: an ``.npz`` with ``X`` ``[M, D]``, a
  LIBSVM file (``.svm``, ``.libsvm``, ``.txt``; read by :func:`bbam.data.load_libsvm`, any
  labels ignored) or an ARFF file whose labels are found as at training (its MULAN
  ``.xml``, its MEKA ``-C`` option, else the last ``K`` attributes; label values are read
  but not used). When the run's features have names, an ARFF file must have the same.
* ``{"kind": "text_tokens", "vocab", "max_len", "text_keys"}``: token ids of the run's
  own vocabulary (``data=text_jsonl`` with ``model=text_bow``).
* ``{"kind": "sentence", "text_keys", "sentence"}``: a pretrained sentence model's
  embeddings (frozen) or token ids (fine-tuning) with the run's settings
  (``model=sentence_encoder``).

  New texts for both text kinds: a ``.jsonl`` file of objects holding the run's
  ``text_keys`` (other fields, e.g. ``labels``, are ignored) or a ``.txt`` file, one
  document per line.
* ``{"kind": "images", "image_size", "backbone"}``: images (``data=image_folder``,
  ``voc``, ``coco``). New images: a folder (every image file in it and its sub-folders,
  by sorted path) or a label file (``<path>[<TAB>...]`` per line, paths relative to the
  file's folder, anything after the path ignored). They are decoded at the run's
  ``image_size``; with a frozen backbone (``backbone`` settings, ``finetune`` false) the
  inputs are its features (cached as at training), else the image rows themselves
  (:class:`~bbam.data.image_rows.ImageRows`, decoded per batch by the model's caller).
  (An image run of an older bbam, whose record has no ``backbone``, kept pixel rows in
  memory; :class:`~bbam.app.predict.Predictor` refuses it and ``python -m bbam.migrate``
  cannot convert it: retrain it.)

Scaling is not part of this: the run's ``scaler.pt`` is applied afterwards.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from bbam.data import DatasetFormatError, load_arff, load_libsvm, token_ids, tokenize
from bbam.data.inputs import document_text, json_lines
from bbam.data.lookup import LIBSVM_SUFFIXES
from bbam.data.sentence import sentence_inputs

__all__ = ["describe_inputs", "read_inputs", "TEXT_SUFFIXES"]

TEXT_SUFFIXES = (".jsonl", ".txt")  # documents, for a run trained on text


def describe_inputs(cfg, data) -> Dict[str, Any]:
    """The recipe of a run's inputs (saved as ``inputs.json``) from its config and data."""
    from omegaconf import OmegaConf

    target = str(cfg.data.get("_target_", ""))
    if target.endswith("load_text_jsonl"):
        keys = [str(k) for k in cfg.data.text_keys]
        if getattr(data, "vocab", None) is not None:
            return {"kind": "text_tokens", "vocab": list(data.vocab), "max_len": int(cfg.data.max_len),
                    "text_keys": keys}
        settings = OmegaConf.to_container(cfg.data.sentence_encoder, resolve=True)
        return {"kind": "sentence", "text_keys": keys, "sentence": settings}
    if getattr(data, "images", None) is not None:
        backbone = cfg.data.get("backbone")
        return {"kind": "images", "image_size": int(cfg.data.image_size),
                "backbone": None if backbone is None else OmegaConf.to_container(backbone, resolve=True)}
    names = list(data.feature_names)
    if names == [f"f{j}" for j in range(len(names))]:  # placeholders: nothing to check new files against
        return {"kind": "features"}
    return {"kind": "features", "feature_names": names}


def _texts(path: Path, keys: Sequence[str]) -> List[str]:
    """Documents of a ``.jsonl`` (objects with ``keys``) or ``.txt`` (one per line) file."""
    texts: List[str] = []
    if path.suffix == ".txt":
        with open(path, encoding="utf-8") as fh:
            texts = [line.rstrip("\n") for line in fh if line.strip()]
    else:
        error = lambda lineno, msg: ValueError(f"argument 'data': {path}, line {lineno}: {msg}")  # noqa: E731
        for lineno, obj in json_lines(path, error):
            if not isinstance(obj, dict) or not any(obj.get(k) for k in keys):
                raise error(lineno, f"expected an object with a text in {', '.join(map(repr, keys))}")
            texts.append(document_text(obj, keys))
    if not texts:
        raise ValueError(f"argument 'data': {path} holds no documents")
    return texts


def _npz(path: Path) -> torch.Tensor:
    try:
        with np.load(path, allow_pickle=False) as f:
            if "X" not in f.files:
                raise ValueError(f"argument 'data': {path} has no array 'X' (found: {', '.join(f.files) or 'none'})")
            X = f["X"]
    except (OSError, ValueError) as err:
        if str(err).startswith("argument"):
            raise
        raise ValueError(f"argument 'data': {path} is not a readable .npz file ({err})") from None
    if X.ndim != 2 or not (np.issubdtype(X.dtype, np.number) or X.dtype == np.bool_) or np.iscomplexobj(X):
        raise ValueError(f"argument 'data': X must be a real [M, D] array, got {X.dtype} of shape {X.shape}")
    return torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))


def _libsvm(path: Path, num_features: int) -> torch.Tensor:
    """The features of a LIBSVM file, read as at training (:func:`bbam.data.load_libsvm`)."""
    return load_libsvm(path, num_features=num_features).X


def _arff(path: Path, num_labels: int, feature_names: Optional[Sequence[str]]) -> torch.Tensor:
    """The features of an ARFF file. Its label attributes are found as at training: its MULAN
    ``.xml`` header or MEKA ``-C`` option, else the last ``num_labels`` attributes (their
    values are read, not used). Attributes named otherwise than the run's features are refused."""
    try:
        data = load_arff(path)
    except DatasetFormatError as err:
        if "cannot tell which attributes are labels" not in str(err):
            raise
        data = load_arff(path, num_labels=num_labels)  # MULAN layout without its .xml
    if feature_names is not None and list(data.feature_names) != list(feature_names):
        diff = next(j for j, (a, b) in enumerate(zip(data.feature_names, feature_names)) if a != b) \
            if len(data.feature_names) == len(feature_names) else min(len(data.feature_names), len(feature_names))
        raise ValueError(f"argument 'data': {path} does not have the run's features: attribute {diff} is "
                         f"{(list(data.feature_names) + ['<none>'])[diff]!r}, the run's is "
                         f"{(list(feature_names) + ['<none>'])[diff]!r}")
    return data.X


def image_files(path: Path) -> List[str]:
    """The images to predict: every image file under a folder (sorted paths), or the first
    field of each line of a label file (relative to its folder)."""
    from bbam.data.image_rows import IMAGE_SUFFIXES

    if path.is_dir():
        files = sorted(str(f) for f in path.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"argument 'data': folder {path} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
        return files
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return [str(path)]
    files = []
    with open(path, encoding="utf-8-sig") as fh:
        for lineno, line in enumerate(fh, 1):
            rel = line.split("\t", 1)[0].strip()
            if not rel or rel.startswith("#"):  # blank or a comment line
                continue
            file = path.parent / rel
            if not file.is_file():
                raise ValueError(f"argument 'data': {path}, line {lineno}: image {file} not found")
            files.append(str(file))
    if not files:
        raise ValueError(f"argument 'data': {path} lists no images")
    return files


def _images(path: Path, spec: Dict[str, Any], device: Optional[str]):
    from bbam.data.image_features import image_features
    from bbam.data.image_rows import ImageRows

    rows = ImageRows(image_files(path), int(spec["image_size"]))
    backbone = spec.get("backbone")
    if backbone is not None and not bool(backbone.get("finetune", False)):
        # the run's backbone settings, on the prediction's device (not the training machine's)
        return image_features(rows, {**backbone, **({"device": device} if device else {})})
    return rows


def read_inputs(path, spec: Dict[str, Any], num_features: int, num_labels: int,
                device: Optional[str] = None) -> torch.Tensor:
    """Raw (unscaled) model inputs ``[M, D]`` float32 of the new data in ``path``, made
    with the run's recipe ``spec`` (see the module docstring), or image rows for a run
    whose model reads pixels (``device``: where a frozen backbone computes features; default
    the run's setting). Errors name ``data``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"argument 'data': {path} does not exist")
    kind, suffix = spec.get("kind"), path.suffix.lower()
    if kind in ("text_tokens", "sentence"):
        if suffix not in TEXT_SUFFIXES:
            raise ValueError(f"argument 'data': the run was trained on text; expected a .jsonl or .txt file of "
                             f"documents, got {path}")
        texts = _texts(path, spec["text_keys"])
        if kind == "text_tokens":
            return token_ids([tokenize(t) for t in texts], spec["vocab"], int(spec["max_len"]))
        return sentence_inputs(texts, spec["sentence"])[0]
    if kind == "images":
        return _images(path, spec, device)
    if kind != "features":
        raise ValueError(f"argument 'run': inputs.json names an unknown kind of inputs {kind!r}")
    if suffix == ".npz":
        return _npz(path)
    try:
        if kind == "features" and suffix in LIBSVM_SUFFIXES:
            return _libsvm(path, num_features)
        if kind == "features" and suffix == ".arff":
            return _arff(path, num_labels, spec.get("feature_names"))
    except DatasetFormatError as err:  # names the file and line; say which argument it was
        raise ValueError(f"argument 'data': {err}") from None
    raise ValueError(f"argument 'data': expected .npz, .arff or LIBSVM ({', '.join(LIBSVM_SUFFIXES)}) for this "
                     f"run's features, got {path}")
