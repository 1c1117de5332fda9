"""``python -m bbam.predict``: label new samples with a finished run's model.

Usage::

    python -m bbam.predict run=outputs/<run folder> data=new.npz out=predictions/ [thresholds=global|tuned] [device=cpu]

* ``run``: a run folder written by ``python -m bbam.train`` (``config.yaml``,
  ``checkpoints/best.pt``, ``scaler.pt``, ``labels.json``, ``thresholds.json``,
  ``inputs.json``).
* ``data``: the new samples, raw, as the run's own data was (the run's scaler, vocabulary
  or sentence encoder is applied):

  - a run on numeric features: an ``.npz`` with ``X`` ``[M, D]`` (other arrays, e.g.
    ``Y``, are ignored), an ARFF file with the run's features (its label attributes,
    found as at training, are not used), or a LIBSVM file (``.svm``, ``.libsvm``,
    ``.txt``; 1-based feature indices, any leading labels ignored);
  - a run on text (``data=text_jsonl`` / ``reuters21578_text``, any text model): a
    ``.jsonl`` file of objects holding the run's text fields (``title``, ``body`` by
    default) or a ``.txt`` file with one document per line;
  - a run on images (``data=image_folder`` / ``voc`` / ``coco``): a folder of images (every
    image file in it and its sub-folders, sorted by path), one image file, or a label file
    (``<path>[<TAB>...]`` per line, relative to its folder; labels ignored), decoded at
    the run's size and encoded with its backbone (frozen features or fine-tuned model).
* ``out``: a folder (created) receiving

  - ``scores.npz``: ``scores`` float32 ``[M, K]`` in [0, 1], ``predictions`` bool
    ``[M, K]``, ``label_names`` ``[K]`` str, ``thresholds`` float32 ``[K]``;
  - ``predictions.csv``: header ``index,labels`` (images: ``index,file,labels``), then
    one row per sample: its row index in ``data`` (and its image file) and its predicted
    label names joined by ``;`` (empty: none).
* ``thresholds``: ``global`` (default; the run's ``train.threshold``) or ``tuned``
  (per-label thresholds tuned for F1 on the run's validation split).

A bad argument exits with status 2 and a message naming the argument.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

__all__ = ["main", "parse_args", "predict_file"]

_KEYS = {"run": True, "data": True, "out": True, "thresholds": False, "device": False}  # name -> required


def parse_args(argv: Sequence[str]) -> Dict[str, str]:
    """``key=value`` tokens -> dict; unknown, repeated or missing keys raise ``ValueError``."""
    args: Dict[str, str] = {}
    for token in argv:
        key, sep, value = token.partition("=")
        if not sep or key not in _KEYS:
            raise ValueError(f"argument {token!r}: expected one of {', '.join(k + '=...' for k in _KEYS)}")
        if key in args:
            raise ValueError(f"argument '{key}' given twice")
        args[key] = value
    missing = [k for k, required in _KEYS.items() if required and k not in args]
    if missing:
        raise ValueError(f"missing argument(s): {', '.join(k + '=...' for k in missing)}")
    args.setdefault("thresholds", "global")
    args.setdefault("device", "cpu")
    if args["thresholds"] not in ("global", "tuned"):
        raise ValueError(f"argument 'thresholds' must be 'global' or 'tuned', got {args['thresholds']!r}")
    return args


def predict_file(run: str, data: str, out: str, thresholds: str = "global", device: str = "cpu") -> Dict[str, object]:
    """Predict the samples in ``data`` with the run in ``run``; write ``out``/{scores.npz, predictions.csv}.
    Returns ``{"scores": [M, K], "predictions": [M, K], "label_names": [K]}`` (numpy)."""
    from bbam.app.atomic import _atomic_write
    from bbam.app.predict import Predictor

    predictor = Predictor.from_run(run, device=device)
    X = predictor.read(data)  # width and values checked against the run's, naming the file
    files = predictor.inputs.row_files(Path(data))  # image runs: the file of each row, written beside its labels
    scores = torch.as_tensor(predictor.predict_proba(X))  # numpy unless X is a tensor
    t = predictor.threshold_vector(thresholds=thresholds)
    pred = (scores >= t).numpy()
    names = predictor.label_names
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"scores": scores.numpy(), "predictions": pred, "label_names": np.asarray(names, dtype=str)}
    _atomic_write(out_dir / "scores.npz", lambda fh: np.savez(fh, thresholds=t.numpy(), **result))
    labels = [";".join(n for n, p in zip(names, row) if p) for row in pred]
    if files is None:
        rows: List[List[str]] = [["index", "labels"]] + [[str(i), lab] for i, lab in enumerate(labels)]
    else:
        rows = [["index", "file", "labels"]] + [[str(i), f, lab] for i, (f, lab) in enumerate(zip(files, labels))]

    def write_csv(fh) -> None:
        import io

        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows(rows)  # quotes names holding ',' or '"'
        fh.write(text.getvalue().encode("utf-8"))

    _atomic_write(out_dir / "predictions.csv", write_csv)
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    try:
        args = parse_args(argv)
        result = predict_file(**args)
    except (FileNotFoundError, ValueError) as err:
        print(f"bbam.predict: error: {err}", file=sys.stderr)
        return 2
    m, k = result["scores"].shape
    print(f"bbam.predict: {m} samples x {k} labels -> {Path(args['out']) / 'scores.npz'}, "
          f"{Path(args['out']) / 'predictions.csv'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
