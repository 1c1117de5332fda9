"""Inputs by kind: numeric features, token ids, sentence embeddings, images (application layer).

The one place that asks "what kind of input is this?". :func:`inputs_of` reads a dataset's
``recipe`` (how its reader made ``X``, :class:`~bbam.data.MultiLabelData`) once, in
:func:`bbam.app.plan.prepare`, and returns one object per kind that owns

* its encoder: the ``[N, D]`` matrix a run scales and its model reads
  (:meth:`Inputs.matrix`: the reader's features, or a frozen image backbone's, computed
  here rather than in the data package);
* how a split's rows become model input (:meth:`Inputs.split`): feature rows on the
  device, or, for a model that reads pixels, the split's images decoded per batch;
* what the run saves as ``inputs.json`` (:meth:`Inputs.record`) and how new raw data is
  read the same way at prediction (:meth:`Inputs.read`, :func:`inputs_from_record`);
* the checks on inputs handed to a :class:`~bbam.app.predict.Predictor`
  (:meth:`Inputs.model_rows`).

The kinds and their ``inputs.json``:

* ``{"kind": "features"[, "feature_names"]}``: numeric features (dense/bag-of-words sets,
  ``.npz``, ARFF, LIBSVM, synthetic). New data: an ``.npz`` with ``X`` ``[M, D]``, a
  LIBSVM file (``.svm``, ``.libsvm``, ``.txt``; read by :func:`bbam.data.load_libsvm`, any
  labels ignored) or an ARFF file whose labels are found as at training (its MULAN
  ``.xml``, its MEKA ``-C`` option, else the last ``K`` attributes; label values are read
  but not used). When the run's features have names, an ARFF file must have the same.
* ``{"kind": "text_tokens", "vocab", "max_len", "text_keys"}``: token ids of the run's
  own vocabulary (``data=text_jsonl`` with ``model=text_bow``).
* ``{"kind": "sentence", "text_keys", "sentence"[, "runtime_used"]}``: a pretrained
  sentence model's embeddings (frozen) or token ids (fine-tuning) with the run's settings
  (``model=sentence_encoder``); ``runtime_used``: ``torch`` or ``onnx``, the runtime that
  embedded the training texts (``sentence.runtime`` may say ``auto``; prediction resolves
  that again on its own machine).

  New texts for both text kinds: a ``.jsonl`` file of objects holding the run's
  ``text_keys`` (other fields, e.g. ``labels``, are ignored) or a ``.txt`` file, one
  document per line.
* ``{"kind": "images", "image_size", "backbone"[, "runtime_used"]}``: images (``data=image_folder``,
  ``voc``, ``coco``). New images: a folder (every image file in it and its sub-folders,
  by sorted path) or a label file (``<path>[<TAB>...]`` per line, paths relative to the
  file's folder, anything after the path ignored). They are decoded at the run's
  ``image_size``; with a frozen backbone (``backbone`` settings, ``finetune`` false) the
  inputs are its features (cached as at training), else the image rows themselves
  (:class:`~bbam.data.image_rows.ImageRows`, decoded per batch by the model's caller);
  ``runtime_used`` as for sentence models.

Rows handed around the run are a tensor or image rows; :func:`decoded_per_batch`,
:func:`take_rows` and :func:`row_batches` are the only code that tells them apart.
Scaling is not part of this: the run's scaler (:mod:`bbam.app.preprocess`) is applied to
feature rows afterwards.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from bbam.data import DatasetFormatError, load_arff, load_libsvm, token_ids, tokenize
from bbam.data.image_rows import IMAGE_SUFFIXES, ImageRows
from bbam.data.inputs import document_text, json_lines
from bbam.data.lookup import LIBSVM_SUFFIXES
from bbam.data.sentence import sentence_inputs

from .runtime import Split

__all__ = ["Inputs", "FeatureInputs", "TokenInputs", "SentenceInputs", "ImageInputs", "inputs_of",
           "inputs_from_record", "read_new_data", "image_files", "model_input", "as_caller_type", "decoded_per_batch", "take_rows", "row_batches", "TEXT_SUFFIXES"]

TEXT_SUFFIXES = (".jsonl", ".txt")  # documents, for a run trained on text
IMAGE_BATCH = 64  # images per forward at inference (bounds activation memory)


# ----------------------------------------------------------------------------- rows
def model_input(x: Tensor, device: torch.device) -> Tensor:
    """``x`` on ``device`` as the model takes it: decoded ``uint8`` pixels become float32
    in ``[0, 1]`` (after the copy: a quarter of the bytes cross to a GPU)."""
    x = x.to(device, non_blocking=True)
    return x.float().div_(255) if x.dtype == torch.uint8 else x


def decoded_per_batch(x) -> bool:
    """Whether rows ``x`` are image rows decoded per batch (else a tensor of model inputs)."""
    return isinstance(x, ImageRows)


def as_caller_type(x, result: Tensor):
    """``result`` as the caller passed ``x``: a tensor for a tensor, else a numpy array."""
    return result if isinstance(x, Tensor) else result.numpy()


def take_rows(x, idx: Tensor):
    """Rows ``idx`` of ``x``: a tensor's rows, or a lazy selection of image rows."""
    return x.subset(idx) if decoded_per_batch(x) else x[idx]


def row_batches(x, batch_size: int, device: torch.device, num_workers: int = 0) -> Iterator[Tuple[int, Tensor]]:
    """``(start row, model inputs on device)`` of ``x`` in order: slices of a tensor, or
    decoded batches of image rows (``num_workers`` DataLoader workers, at most
    :data:`IMAGE_BATCH` images a batch), pixels as float32 in ``[0, 1]``."""
    if not decoded_per_batch(x):
        for i in range(0, x.shape[0], batch_size):
            yield i, x[i:i + batch_size]
        return
    from bbam.vision.features import image_loader

    start = 0
    for pixels in image_loader(x, min(batch_size, IMAGE_BATCH), num_workers, pin_memory=device.type == "cuda"):
        yield start, model_input(pixels, device)
        start += pixels.shape[0]


# ----------------------------------------------------------------------------- kinds
class Inputs:
    """One kind of model input (subclasses below). ``kind``: its name in ``inputs.json``;
    ``reads_pixels``: the model reads images decoded per batch (no feature matrix)."""

    kind = "features"
    reads_pixels = False

    @property
    def feature_rows(self) -> bool:
        """Whether a split's ``x`` is a float ``[N, D]`` matrix of feature rows (a graph of
        the rows can be built on it); tokens and pixels are not."""
        return not self.reads_pixels

    def matrix(self, data) -> Tensor:
        """The set's ``[N, D]`` inputs the scaler is fitted on and the model reads (the
        reader's ``X``, unless the kind's encoder makes them)."""
        return data.X

    def view_matrix(self, recipe: Dict[str, Any]) -> Tensor:
        """The set's ``[N, D]`` raw inputs of one augmented view (``recipe``:
        :func:`bbam.vision.features.view_features`), for views kept in a bank; only a frozen
        image backbone has them."""
        raise ValueError(f"config key 'model.views.space' is 'bank', which needs image data read through a frozen "
                         f"backbone; this run's inputs are {self.kind}")

    def split(self, x: Tensor, y: Tensor, idx: Tensor, device: torch.device) -> Split:
        """The :class:`Split` of rows ``idx``: ``x`` (the scaled ``[N, D]`` matrix of the
        whole set) on ``device``, with targets ``y`` ``[N, K]``."""
        return Split(x[idx].to(device), y[idx].to(device))

    def record(self) -> Dict[str, Any]:
        """``inputs.json``: what :func:`inputs_from_record` needs to read new data."""
        raise NotImplementedError

    def read(self, path: Path, num_features: int, num_labels: int, device: Optional[str] = None):
        """Raw (unscaled) model inputs of the new data in ``path``; errors name ``data``."""
        raise NotImplementedError

    def check_read(self, rows, num_features: int, path: Path) -> None:
        """New data read from ``path`` has the run's width and finite values (errors name ``data``)."""
        if rows.shape[1] != num_features:
            raise ValueError(f"argument 'data': {path} has {rows.shape[1]} features, the run was trained on "
                             f"{num_features}")
        if not bool(torch.isfinite(rows).all()):
            r, c = (int(v) for v in torch.nonzero(~torch.isfinite(rows))[0])
            raise ValueError(f"argument 'data': {path} has a non-finite value at row {r}, column {c}")

    def row_files(self, path: Path) -> Optional[List[str]]:
        """The file of each row read from ``path`` (images), else None."""
        return None

    def model_rows(self, x, scaler, num_features: int, device: torch.device):
        """Raw inputs handed to a predictor as the model takes them: ``[M, D]`` finite
        values (tensor or array), scaled and on ``device``."""
        if decoded_per_batch(x):
            raise ValueError(f"argument 'x': this run's model reads [M, {num_features}] features, not images "
                             f"(use Predictor.read on the images)")
        x = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x)
        if x.dim() != 2 or x.shape[1] != num_features:
            raise ValueError(f"argument 'x': expected [M, {num_features}] features (the run's feature width), "
                             f"got shape {tuple(x.shape)}")
        x = x.to(torch.float32)
        if not bool(torch.isfinite(x).all()):
            r, c = (int(v) for v in torch.nonzero(~torch.isfinite(x))[0])
            raise ValueError(f"argument 'x': non-finite value at row {r}, column {c}")
        return scaler.transform(x).to(device)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class FeatureInputs(Inputs):
    """Numeric features read as they are (``feature_names``: None when only placeholders)."""

    kind = "features"

    def __init__(self, feature_names: Optional[Sequence[str]] = None):
        names = None if feature_names is None else [str(n) for n in feature_names]
        # placeholders (f0, f1, ...) give nothing to check new files against
        self.feature_names = None if names == [f"f{j}" for j in range(len(names or []))] else names

    def record(self) -> Dict[str, Any]:
        return {"kind": "features"} if self.feature_names is None else \
            {"kind": "features", "feature_names": list(self.feature_names)}

    def read(self, path: Path, num_features: int, num_labels: int, device: Optional[str] = None) -> Tensor:
        suffix = path.suffix.lower()
        if suffix == ".npz":
            return _npz(path)
        try:
            if suffix in LIBSVM_SUFFIXES:
                return _libsvm(path, num_features)
            if suffix == ".arff":
                return _arff(path, num_labels, self.feature_names)
        except DatasetFormatError as err:  # names the file and line; say which argument it was
            raise ValueError(f"argument 'data': {err}") from None
        raise ValueError(f"argument 'data': expected .npz, .arff or LIBSVM ({', '.join(LIBSVM_SUFFIXES)}) for this "
                         f"run's features, got {path}")


class _TextInputs(Inputs):
    def __init__(self, text_keys: Sequence[str]):
        self.text_keys = [str(k) for k in text_keys]

    def _documents(self, path: Path) -> List[str]:
        if path.suffix.lower() not in TEXT_SUFFIXES:
            raise ValueError(f"argument 'data': the run was trained on text; expected a .jsonl or .txt file of "
                             f"documents, got {path}")
        return _texts(path, self.text_keys)


class TokenInputs(_TextInputs):
    """Token ids of the run's own vocabulary (``vocab``: id -> token, 0 = padding)."""

    kind = "text_tokens"
    feature_rows = False  # token ids

    def __init__(self, vocab: Sequence[str], max_len: int, text_keys: Sequence[str]):
        super().__init__(text_keys)
        self.vocab, self.max_len = list(vocab), int(max_len)

    def record(self) -> Dict[str, Any]:
        return {"kind": self.kind, "vocab": list(self.vocab), "max_len": self.max_len, "text_keys": self.text_keys}

    def read(self, path: Path, num_features: int, num_labels: int, device: Optional[str] = None) -> Tensor:
        return token_ids([tokenize(t) for t in self._documents(path)], self.vocab, self.max_len)


class SentenceInputs(_TextInputs):
    """A pretrained sentence model's embeddings (frozen) or token ids (fine-tuning)."""

    kind = "sentence"

    def __init__(self, sentence: Dict[str, Any], text_keys: Sequence[str]):
        super().__init__(text_keys)
        self.sentence = dict(sentence)

    @property
    def feature_rows(self) -> bool:
        return not self.sentence.get("finetune")  # fine-tuning: token ids, not feature rows

    def record(self) -> Dict[str, Any]:
        out = {"kind": self.kind, "text_keys": self.text_keys, "sentence": dict(self.sentence)}
        if not self.sentence.get("finetune"):  # frozen: the runtime that embedded the texts
            from bbam.data.sentence import DEFAULT_MODEL
            from bbam.devices import resolve_device
            from bbam.runtimes import runtime_used

            out["runtime_used"] = runtime_used(str(self.sentence.get("runtime", "torch")),
                                               resolve_device(self.sentence.get("device", "auto")),
                                               f"sentence model {self.sentence.get('pretrained') or DEFAULT_MODEL!r}")
        return out

    def read(self, path: Path, num_features: int, num_labels: int, device: Optional[str] = None) -> Tensor:
        return sentence_inputs(self._documents(path), self.sentence)[0]


class ImageInputs(Inputs):
    """Images decoded at ``image_size``: a frozen backbone's features (``backbone`` settings
    with ``finetune`` false), else pixels read by the model (decoded per batch).

    ``images``: the training set's :class:`ImageRows` (None at prediction). With frozen
    features the split's images ride along beside its feature rows, for views made from
    images (``model.views.space=images``)."""

    kind = "images"

    def __init__(self, image_size: int, backbone: Optional[Dict[str, Any]], images: Optional[ImageRows] = None):
        self.image_size, self.images = int(image_size), images
        self.backbone = None if backbone is None else dict(backbone)

    @property
    def reads_pixels(self) -> bool:
        """Whether the model reads pixels (no backbone, or a fine-tuned one)."""
        return self.backbone is None or bool(self.backbone.get("finetune", False))

    def matrix(self, data) -> Tensor:
        """A frozen backbone's ``[N, dim]`` features of the set's images (computed once,
        cached on disk: :func:`bbam.vision.features.image_features`), else ``[N, 0]``."""
        if self.reads_pixels:
            return data.X
        from bbam.vision.features import image_features

        return image_features(self.images, self.backbone)

    def view_matrix(self, recipe: Dict[str, Any]) -> Tensor:
        """The frozen backbone's ``[N, dim]`` features of one augmented view of every image
        (computed once, cached on disk: :func:`bbam.vision.features.view_features`)."""
        if self.reads_pixels:
            return super().view_matrix(recipe)
        from bbam.vision.features import view_features

        return view_features(self.images, self.backbone, recipe)

    def split(self, x: Tensor, y: Tensor, idx: Tensor, device: torch.device) -> Split:
        images = self.images.subset(idx)
        if self.reads_pixels:  # the model reads pixels: the split's x are its images
            return Split(images, y[idx].to(device))
        return Split(x[idx].to(device), y[idx].to(device), images)

    def record(self) -> Dict[str, Any]:
        out = {"kind": self.kind, "image_size": self.image_size, "backbone": self.backbone}
        if not self.reads_pixels:  # frozen: the runtime that computed the features
            from bbam.devices import resolve_device
            from bbam.runtimes import runtime_used

            out["runtime_used"] = runtime_used(str(self.backbone.get("runtime", "torch")),
                                               resolve_device(self.backbone.get("device", "auto")),
                                               f"backbone {str(self.backbone['name'])!r}")
        return out

    def read(self, path: Path, num_features: int, num_labels: int, device: Optional[str] = None):
        from bbam.vision.features import image_features

        rows = ImageRows(image_files(path), self.image_size)
        if self.reads_pixels:
            return rows
        # the run's backbone settings, on the prediction's device (not the training machine's)
        return image_features(rows, {**self.backbone, **({"device": device} if device else {})})

    def check_read(self, rows, num_features: int, path: Path) -> None:
        if not self.reads_pixels:  # pixels are decoded (and checked) per batch
            super().check_read(rows, num_features, path)

    def row_files(self, path: Path) -> Optional[List[str]]:
        return image_files(path)

    def model_rows(self, x, scaler, num_features: int, device: torch.device):
        if self.reads_pixels:
            if not decoded_per_batch(x):
                raise ValueError("argument 'x': this run's model reads images: pass the image rows of "
                                 "Predictor.read (a folder or label file of images)")
            return x
        return super().model_rows(x, scaler, num_features, device)

    def __repr__(self) -> str:
        return f"ImageInputs(image_size={self.image_size}, reads_pixels={self.reads_pixels})"


def inputs_of(data) -> Inputs:
    """The :class:`Inputs` of a dataset, from its reader's ``recipe``
    (:class:`~bbam.data.MultiLabelData`; None: numeric features)."""
    recipe = data.recipe
    if recipe is None:
        return FeatureInputs(data.feature_names)
    return inputs_from_record(recipe, images=data.images)


def inputs_from_record(spec: Dict[str, Any], images: Optional[ImageRows] = None) -> Inputs:
    """The :class:`Inputs` of an ``inputs.json`` record (or a reader's recipe)."""
    kind = spec.get("kind")
    if kind == "features":
        return FeatureInputs(spec.get("feature_names"))
    if kind == "text_tokens":
        return TokenInputs(spec["vocab"], spec["max_len"], spec["text_keys"])
    if kind == "sentence":
        return SentenceInputs(spec["sentence"], spec["text_keys"])
    if kind == "images":
        return ImageInputs(spec["image_size"], spec.get("backbone"), images)
    raise ValueError(f"argument 'run': inputs.json names an unknown kind of inputs {kind!r}")


# ----------------------------------------------------------------------------- readers of new data
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




def read_new_data(path, inputs: Inputs, num_features: int, num_labels: int, device: Optional[str] = None):
    """Raw (unscaled) model inputs of the new data in ``path`` made as the run made its own
    (``inputs``), checked against the run's width, or image rows for a run whose model reads
    pixels. Errors name ``data``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"argument 'data': {path} does not exist")
    rows = inputs.read(path, num_features, num_labels, device)
    inputs.check_read(rows, num_features, path)
    return rows
