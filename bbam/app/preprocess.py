"""Feature scaling of the training app, fitted on the training pool only.

One :class:`FeatureScaler` per run: its statistics come from the training pool (labeled +
unlabeled inputs, never labels, validation or test rows) and are applied to every split
and, later, to new data at prediction time (``state_dict`` travels with the run).

Kinds (chosen per dataset in ``configs/data/*.yaml``, key ``train.scaling``):

* ``standardize``: ``(x - mean) / std`` for dense continuous features (audio, image
  descriptors, expression levels). A feature that is constant in the pool carries no
  information the learner could have used and maps to 0 everywhere: dividing by a
  clamped std instead turns a value unseen in the pool into ~1e6 on validation/test rows.
* ``tfidf_l2``: bag-of-words counts or 0/1 word indicators: ``x * idf`` (smoothed inverse
  document frequency of the pool, as scikit-learn's ``TfidfTransformer``), then each row
  scaled to unit L2 norm.
* ``l2``: each row scaled to unit L2 norm (e.g. sentence embeddings).
* ``none``: the features as they are (token ids, pixels, or already prepared features).
"""
from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor

__all__ = ["FeatureScaler", "SCALINGS"]

SCALINGS = ("none", "standardize", "tfidf_l2", "l2")


class FeatureScaler:
    """Fit on the pool's ``[N, D]`` inputs, transform any ``[M, D]`` inputs.

    Args:
        kind: one of :data:`SCALINGS`.
        eps: a feature whose pool standard deviation is ``<= eps`` is constant (maps to 0).
    """

    def __init__(self, kind: str = "standardize", eps: float = 1e-6):
        if kind not in SCALINGS:
            raise ValueError(f"config key 'train.scaling' must be one of {', '.join(SCALINGS)}; got {kind!r}")
        self.kind, self.eps = kind, float(eps)
        self.shift: Tensor | None = None  # [D] subtracted (standardize)
        self.factor: Tensor | None = None  # [D] multiplied (standardize: 1/std or 0; tfidf: idf)

    def fit(self, x: Tensor) -> "FeatureScaler":
        if x.dim() != 2 or x.shape[0] == 0:
            raise ValueError(f"FeatureScaler.fit: 'x' must be a non-empty [N, D] tensor, got {tuple(x.shape)}")
        x64 = x.double()
        if self.kind == "standardize":
            std = x64.std(0, unbiased=False) if x.shape[0] > 1 else torch.zeros(x.shape[1], dtype=torch.float64)
            self.shift = x64.mean(0).float()
            self.factor = torch.where(std > self.eps, 1.0 / std.clamp(min=self.eps), torch.zeros_like(std)).float()
        elif self.kind == "tfidf_l2":
            if bool((x < 0).any()):
                raise ValueError("train.scaling=tfidf_l2 expects non-negative counts or 0/1 indicators; "
                                 "the features have negative values (use 'standardize')")
            df = (x > 0).sum(0).double()
            self.factor = (torch.log((1.0 + x.shape[0]) / (1.0 + df)) + 1.0).float()
        return self

    def transform(self, x: Tensor) -> Tensor:
        if self.kind == "none":
            return x
        if self.kind != "l2" and self.factor is None:
            raise RuntimeError("FeatureScaler.transform called before fit")
        if self.factor is not None and x.shape[-1] != self.factor.shape[0]:
            raise ValueError(f"FeatureScaler.transform: 'x' has {x.shape[-1]} features, "
                             f"the scaler was fitted on {self.factor.shape[0]}")
        dev = x.device
        if self.kind == "standardize":
            return (x - self.shift.to(dev)) * self.factor.to(dev)
        if self.kind == "tfidf_l2":
            x = x * self.factor.to(dev)
        return torch.nn.functional.normalize(x, dim=-1)  # zero rows stay zero

    def state_dict(self) -> Dict[str, object]:
        return {"kind": self.kind, "eps": self.eps, "shift": self.shift, "factor": self.factor}

    @classmethod
    def from_state_dict(cls, state: Dict[str, object]) -> "FeatureScaler":
        scaler = cls(str(state["kind"]), float(state["eps"]))
        scaler.shift, scaler.factor = state["shift"], state["factor"]
        return scaler

    def __repr__(self) -> str:
        return f"FeatureScaler(kind={self.kind!r})"
