"""A trained run's diagnostics (application layer): per-label AP / F1 / accuracy of an
evaluation split for every method, plus what the method itself reports
(:meth:`bbam.app.methods.Method.diagnostics`: the angular methods their angle families and
VDFD, :mod:`bbam.angle_diagnostics`; the others nothing). Written to ``diagnostics.json``
and read by the report."""
from __future__ import annotations

import math
from typing import Any, Dict

import torch

from bbam import metrics as M

__all__ = ["run_diagnostics"]


def _json(values) -> list:
    return [None if isinstance(v, float) and math.isnan(v) else v for v in values]


@torch.no_grad()
def run_diagnostics(engine, split: str = "test", source: str = "ema") -> Dict[str, Any]:
    """Diagnostics of ``split`` with its true labels (an evaluation, not training).

    ``per_label``: ``ap``, ``f1``, ``accuracy`` (percent, of the evaluated EMA model's
    predictions at ``train.threshold``) and ``positives``; then the method's own entries,
    measured on the ``source`` model's features (``ema``, the one evaluated, or ``online``).
    """
    s = engine.splits[split]
    y = s.y
    scores, _, _ = engine.outputs(s.x, keep=("scores",))
    ap = M.average_precision(scores, y)
    preds, positive = scores >= engine.tc.threshold, y == 1
    count = lambda mask: torch.count_nonzero(mask, dim=0)  # exact, and faster than a bool sum
    tp = count(preds & positive).double()
    f1 = 2 * tp / (count(preds) + count(positive)).double().clamp(min=1)
    out: Dict[str, Any] = {"split": split, "num_samples": int(y.shape[0]), "per_label": {
        "ap": _json((ap * 100).tolist()), "f1": (f1 * 100).tolist(), "positives": count(positive).tolist(),
        "accuracy": (count(preds == positive).double() / len(y) * 100).tolist()}}
    out.update(engine.method.diagnostics(engine.context(), split, source))
    return out
