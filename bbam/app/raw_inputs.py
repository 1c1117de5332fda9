"""What a run needs to turn new raw data into its model's inputs (application layer).

A run saves ``inputs.json`` describing how its data became the feature matrix ``X``;
:func:`read_inputs` applies the same recipe to new data for prediction:

* ``{"kind": "features"}``: numeric features (dense/bag-of-words sets, ``.npz``, ARFF,
  LIBSVM, synthetic). New data: an ``.npz`` with ``X`` ``[M, D]``, a LIBSVM file
  (``idx:value`` pairs, 1-based feature indices; a leading label field is ignored) or
  an ARFF file with the run's features followed by its label attributes (their values
  are ignored).
* ``{"kind": "text_tokens", "vocab", "max_len", "text_keys"}``: token ids of the run's
  own vocabulary (``data=text_jsonl`` with ``model=text_bow``).
* ``{"kind": "sentence", "text_keys", "sentence"}``: a pretrained sentence model's
  embeddings (frozen) or token ids (fine-tuning) with the run's settings
  (``model=sentence_encoder``).

  New texts for both text kinds: a ``.jsonl`` file of objects holding the run's
  ``text_keys`` (other fields, e.g. ``labels``, are ignored) or a ``.txt`` file, one
  document per line.
* ``{"kind": "images", "image_size"}``: prediction takes an ``.npz`` of pixel rows
  (``X`` ``[M, 3 * image_size**2]`` in [0, 1], as ``data=image_folder`` produces).

Scaling is not part of this: the run's ``scaler.pt`` is applied afterwards.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np
import torch

from bbam.data import load_arff, tokenize
from bbam.data.sentence import sentence_inputs

__all__ = ["describe_inputs", "read_inputs", "TEXT_SUFFIXES", "LIBSVM_SUFFIXES"]

TEXT_SUFFIXES = (".jsonl", ".txt")
LIBSVM_SUFFIXES = (".svm", ".libsvm", ".svmlight")


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
    if target.endswith("load_image_folder"):
        return {"kind": "images", "image_size": int(cfg.data.image_size)}
    return {"kind": "features"}


def _texts(path: Path, keys: Sequence[str]) -> List[str]:
    """Documents of a ``.jsonl`` (objects with ``keys``) or ``.txt`` (one per line) file."""
    texts: List[str] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            if path.suffix == ".txt":
                texts.append(line.rstrip("\n"))
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"argument 'data': {path}, line {lineno}: not valid JSON ({err.msg})") from None
            if not isinstance(obj, dict) or not any(obj.get(k) for k in keys):
                raise ValueError(f"argument 'data': {path}, line {lineno}: expected an object with a text in "
                                 f"{', '.join(map(repr, keys))}")
            texts.append("\n".join(str(obj[k]) for k in keys if obj.get(k)))
    if not texts:
        raise ValueError(f"argument 'data': {path} holds no documents")
    return texts


def _token_ids(texts: Sequence[str], vocab: Sequence[str], max_len: int) -> torch.Tensor:
    """The run's vocabulary applied as at training (:func:`bbam.data.load_text_jsonl`)."""
    index = {tok: i for i, tok in enumerate(vocab)}
    X = np.zeros((len(texts), max_len), dtype=np.float32)
    for i, text in enumerate(texts):
        ids = [index[t] for t in tokenize(text) if t in index][:max_len]
        X[i, :len(ids)] = ids
    return torch.from_numpy(X)


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
    from sklearn.datasets import load_svmlight_file

    try:
        X, _ = load_svmlight_file(str(path), n_features=num_features, multilabel=True, zero_based=False)
    except ValueError as err:  # e.g. an index above num_features, a malformed pair
        raise ValueError(f"argument 'data': {path} is not a LIBSVM file with {num_features} features ({err})") from None
    return torch.from_numpy(X.toarray().astype(np.float32))


def _arff(path: Path, num_labels: int) -> torch.Tensor:
    return load_arff(path, num_labels=num_labels).X


def read_inputs(path, spec: Dict[str, Any], num_features: int, num_labels: int) -> torch.Tensor:
    """Raw (unscaled) model inputs ``[M, D]`` float32 of the new data in ``path``, made
    with the run's recipe ``spec`` (see the module docstring). Errors name ``data``."""
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
            return _token_ids(texts, spec["vocab"], int(spec["max_len"]))
        return sentence_inputs(texts, spec["sentence"])[0]
    if kind not in ("features", "images"):
        raise ValueError(f"argument 'run': inputs.json names an unknown kind of inputs {kind!r}")
    if suffix == ".npz":
        return _npz(path)
    if kind == "features" and suffix in LIBSVM_SUFFIXES:
        return _libsvm(path, num_features)
    if kind == "features" and suffix == ".arff":
        return _arff(path, num_labels)
    accepted = ".npz" if kind == "images" else f".npz, .arff or LIBSVM ({', '.join(LIBSVM_SUFFIXES)})"
    raise ValueError(f"argument 'data': expected {accepted} for this run's {kind}, got {path}")
