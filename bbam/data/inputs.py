"""Raw inputs: text documents (JSON lines), as :class:`MultiLabelData`.

``X`` is a float32 ``[N, D]`` tensor and the encoding is left to the model's encoder:
``X`` holds token ids (0 = padding) of a vocabulary built on the training
  documents; encode with :class:`bbam.app.models.TextEncoder` (an embedding bag) or
  any text backbone that takes token ids. With ``sentence_encoder`` settings
  (``model=sentence_encoder``) ``X`` holds instead a pretrained sentence model's
  embeddings (frozen) or its tokenizer's ids (fine-tuning): see :mod:`bbam.data.sentence`.
Images are read by :mod:`bbam.data.images`.

Imports only the standard library, numpy, torch (and sentence-transformers for
``sentence_encoder``).
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence, Tuple

import numpy as np
import torch

from .container import DatasetFormatError, MultiLabelData, check_exists
from .sentence import sentence_inputs

__all__ = ["tokenize", "token_ids", "json_lines", "document_text", "load_text_jsonl"]

_TOKEN = re.compile(r"[a-z]{2,}")


def tokenize(text: str) -> list[str]:
    """Lower-case alphabetic tokens of two letters or more."""
    return _TOKEN.findall(text.lower())


def json_lines(path: Path, error: Callable[[int, str], Exception]) -> Iterator[Tuple[int, Any]]:
    """``(line number, parsed value)`` of each non-empty line of a JSON-lines file; a line
    that is not JSON raises ``error(line number, message)`` (each reader names its own
    argument or file)."""
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as err:
                raise error(lineno, f"not valid JSON ({err.msg})") from None


def document_text(obj: Mapping[str, Any], keys: Sequence[str]) -> str:
    """The text of a document object: its non-empty ``keys`` fields joined by newlines (the
    form a pretrained sentence model reads, in training and prediction alike)."""
    return "\n".join(str(obj[k]) for k in keys if obj.get(k))


def load_text_jsonl(path, text_keys: Sequence[str] = ("title", "body"), labels_key: str = "labels",
                    split_key: str | None = "split", vocab_size: int = 20000, max_len: int = 256,
                    name: str | None = None, sentence_encoder: Mapping[str, Any] | None = None) -> MultiLabelData:
    """Documents of a JSON-lines file (one object per line) as token-id rows.

    Args:
        path: the ``.jsonl`` file (e.g. ``reuters21578_texts.jsonl``).
        text_keys: fields concatenated into the document text.
        labels_key: field holding the document's list of label names.
        split_key: field with ``"train"`` / ``"test"`` (the official split), or None.
        vocab_size: ids 1..vocab_size-1 go to the most frequent training-set tokens (by
            document frequency; ties alphabetical); 0 is padding; other tokens are dropped.
        max_len: tokens kept per document (the first ones); shorter rows are zero-padded.
        sentence_encoder: None (our own vocabulary, above), or the settings of a pretrained
            sentence model (``model.sentence`` of ``model=sentence_encoder``: ``pretrained``,
            ``finetune``, ``max_seq_length``, ``batch_size``, ``device``, ``cache_dir``, ``cache``,
            ``progress``); then ``vocab_size`` and ``max_len`` are not used and the text
            fields are joined by newlines.

    Returns:
        :class:`MultiLabelData` with ``X`` float32 ``[N, max_len]`` token ids, ``Y`` int8
        ``[N, K]`` (labels sorted by name), the official split when ``split_key`` is present,
        and the ``recipe`` ``{"kind": "text_tokens", "vocab" (id -> token; id 0 is
        ``"<pad>"``), "max_len", "text_keys"}``. With ``sentence_encoder``: ``X`` is float32
        ``[N, E]`` sentence embeddings (frozen) or ``[N, max_seq_length]`` the model
        tokenizer's ids (``finetune``), and the recipe ``{"kind": "sentence", "text_keys",
        "sentence"}``.
    """
    path = Path(path)
    check_exists(path)
    if vocab_size < 2 or max_len < 1:
        raise ValueError(f"load_text_jsonl: 'vocab_size' must be >= 2 and 'max_len' >= 1, got {vocab_size}, {max_len}")
    if sentence_encoder is not None and not isinstance(sentence_encoder, Mapping):
        raise TypeError(f"load_text_jsonl: 'sentence_encoder' must be a mapping of settings or None, "
                        f"got {type(sentence_encoder).__name__}")
    docs, labels, splits, texts = [], [], [], []
    for lineno, obj in json_lines(path, lambda lineno, msg: DatasetFormatError(path, msg, lineno)):
        if not isinstance(obj, dict) or not isinstance(obj.get(labels_key), list):
            raise DatasetFormatError(path, f"expected an object with a list '{labels_key}'", lineno)
        if sentence_encoder is None:
            docs.append(tokenize(" ".join(str(obj.get(k) or "") for k in text_keys)))
        else:
            docs.append(None)
            texts.append(document_text(obj, text_keys))
        labels.append([str(v) for v in obj[labels_key]])
        if split_key is not None:
            split = obj.get(split_key)
            if split not in ("train", "test"):
                raise DatasetFormatError(path, f"'{split_key}' must be 'train' or 'test', got {split!r}", lineno)
            splits.append(split)
    if not docs:
        raise DatasetFormatError(path, "no documents")
    train_rows = [i for i, s in enumerate(splits) if s == "train"] if splits else list(range(len(docs)))
    keys = [str(k) for k in text_keys]
    if sentence_encoder is None:
        vocab = _vocabulary(docs, train_rows, vocab_size)
        X, feature_names = token_ids(docs, vocab, max_len), [f"token{j}" for j in range(max_len)]
        recipe = {"kind": "text_tokens", "vocab": vocab, "max_len": int(max_len), "text_keys": keys}
    else:
        X, feature_names = sentence_inputs(texts, sentence_encoder)
        recipe = {"kind": "sentence", "text_keys": keys,
                  "sentence": {str(k): v for k, v in sentence_encoder.items()}}
    label_names = sorted({name for row in labels for name in row})
    col = {name: j for j, name in enumerate(label_names)}
    Y = np.zeros((len(docs), len(label_names)), dtype=np.int8)
    for i, row in enumerate(labels):
        Y[i, [col[name] for name in row]] = 1
    split_idx = {}
    if splits:
        split_idx = {"train_idx": torch.tensor(train_rows, dtype=torch.long),
                     "test_idx": torch.tensor([i for i, s in enumerate(splits) if s == "test"], dtype=torch.long)}
    return MultiLabelData(X=X, Y=torch.from_numpy(Y), label_names=label_names, feature_names=feature_names,
                          name=name or path.stem, source=str(path), recipe=recipe, **split_idx)


def token_ids(docs: Sequence[Sequence[str]], vocab: Sequence[str], max_len: int) -> torch.Tensor:
    """``[N, max_len]`` float32 token ids of tokenised ``docs`` in ``vocab`` (id -> token):
    the first ``max_len`` known tokens of each document, zero-padded; unknown tokens dropped.
    The same ids at training (:func:`load_text_jsonl`) and prediction."""
    index = {tok: i for i, tok in enumerate(vocab)}
    X = np.zeros((len(docs), max_len), dtype=np.float32)
    for i, doc in enumerate(docs):
        ids = [index[t] for t in doc if t in index][:max_len]
        X[i, : len(ids)] = ids
    return torch.from_numpy(X)


def _vocabulary(docs: list[list[str]], train_rows: list[int], vocab_size: int) -> list[str]:
    """``["<pad>"]`` + the ``vocab_size - 1`` tokens in most training documents (ties alphabetical)."""
    df = Counter(tok for i in train_rows for tok in set(docs[i]))
    return ["<pad>"] + [tok for tok, _ in sorted(df.items(), key=lambda kv: (-kv[1], kv[0]))[: vocab_size - 1]]
