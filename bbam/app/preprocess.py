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

``auto`` (the default of the file datasets ``data=npz|arff|libsvm``) is not a kind: it is
resolved once per run, in the run's plan (:func:`bbam.app.plan.prepare`), by
:func:`resolve_scaling` from the training pool's features
(:func:`feature_profile`, :func:`choose_scaling`), together with the modality's
``angular.margin`` / ``angular.scale`` (the angular methods' ``method.margin`` /
``method.scale``) when those are ``auto`` too. The rule: features that are all
non-negative with at least :data:`SPARSE_ZERO_SHARE` zeros (word counts, 0/1
indicators) get ``tfidf_l2`` and the text margin/scale 0.2/30; any other features
get ``standardize`` and the dense margin/scale 0.4/20. A value given explicitly
(``train.scaling=...``, ``method.margin=...``, ``method.scale=...``) is kept.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor

__all__ = ["FeatureScaler", "SCALINGS", "AUTO", "SPARSE_ZERO_SHARE", "feature_profile", "choose_scaling",
           "resolve_scaling", "describe_choice", "margin_scale_of"]

SCALINGS = ("none", "standardize", "tfidf_l2", "l2")
AUTO = "auto"  # train.scaling / method.margin / method.scale: chosen from the training pool's features
# The rule's one threshold. Measured on the 7 named MULAN/Reuters sets: the bag-of-words sets have
# 91.6-99.1 % zeros in their training pool, the dense ones 0-1.2 % (scene is non-negative, in [0, 1],
# but dense): 50 % lies far from both.
SPARSE_ZERO_SHARE = 0.5
# margin / scale of the two modalities (as the named configs: configs/data/{medical,emotions}.yaml)
TEXT_MARGIN_SCALE = (0.2, 30.0)
DENSE_MARGIN_SCALE = (0.4, 20.0)


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


# ----------------------------------------------------------------------------- auto
def feature_profile(x: Tensor) -> Dict[str, Any]:
    """Statistics of the pool's ``[N, D]`` features the rule reads: ``rows``, ``features``,
    ``min`` (smallest value), ``zero_share`` (share of entries equal to 0), ``integer``
    (every value a whole number) and ``binary`` (every value 0 or 1)."""
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"feature_profile: 'x' must be a non-empty [N, D] tensor, got {tuple(x.shape)}")
    zeros = int((x == 0).sum())
    binary = bool(((x == 0) | (x == 1)).all())
    integer = binary or bool((x == torch.round(x)).all())
    return {"rows": int(x.shape[0]), "features": int(x.shape[1]), "min": float(x.min()) if x.numel() else 0.0,
            "zero_share": zeros / x.numel() if x.numel() else 0.0, "integer": integer, "binary": binary}


def choose_scaling(profile: Dict[str, Any]) -> Tuple[str, float, float]:
    """The rule: ``(scaling, margin, scale)`` for a :func:`feature_profile`.

    Non-negative features with at least :data:`SPARSE_ZERO_SHARE` zeros are a bag of words
    (counts or 0/1 indicators): ``tfidf_l2`` with the text margin/scale 0.2/30. Anything
    else (negative values, or dense non-negative values) is dense: ``standardize``, 0.4/20."""
    if profile["min"] >= 0 and profile["zero_share"] >= SPARSE_ZERO_SHARE:
        return ("tfidf_l2", *TEXT_MARGIN_SCALE)
    return ("standardize", *DENSE_MARGIN_SCALE)


def _kind_words(profile: Dict[str, Any]) -> str:
    if profile["binary"]:
        return "binary"
    if profile["min"] < 0:
        return "real-valued (with negatives)"
    return "non-negative integer" if profile["integer"] else "non-negative real-valued"


def _percent(share: float) -> str:
    pct = 100.0 * share
    return f"{pct:.0f}" if pct >= 1 or pct == 0 else f"{pct:.1f}"


def _num(v) -> str:
    return "—" if v is None else f"{v:g}"


def describe_choice(record: Dict[str, Any], with_margin: bool = True) -> str:
    """The one line of a :func:`resolve_scaling` record, e.g.
    ``features: 1,449 binary, 99 % zeros → tfidf_l2, margin 0.2, scale 30 (auto: ...)``;
    ``with_margin`` False: the scaling alone (a linear-head method has no margin or scale)."""
    p = record["profile"]
    chosen = record["scaling"] + (f", margin {_num(record['margin'])}, scale {_num(record['scale'])}"
                                  if with_margin else "")
    if p["features"] == 0:  # image sets whose model reads pixels: no feature matrix
        head = f"inputs: pixels decoded per batch → {chosen}"
    else:
        head = f"features: {p['features']:,} {_kind_words(p)}, {_percent(p['zero_share'])} % zeros → {chosen}"
    src = record["source"]
    keys = ("scaling", "margin", "scale") if with_margin else ("scaling",)
    auto = [k for k in keys if src[k] == "auto"]
    given = [k for k in keys if src[k] != "auto"]
    probe = record.get("probe")
    if probe:  # chosen on validation (bbam.app.probe)
        if probe.get("model"):
            head += f", model {probe['model']}"
        tried = ", ".join(f"{c['scaling']}{' + ' + c['model'] if c.get('model') else ''} {c['val_mAP']:.2f}"
                          for c in probe["candidates"])
        return (f"{head} (auto: best validation mAP of {probe['epochs']}-epoch supervised runs: {tried}; "
                f"{probe['seconds']:.1f} s)")
    if not auto:
        return head + (" (all given in the config)" if with_margin else " (given in the config)")
    why = ("non-negative, ≥ {:.0f} % zeros: bag of words".format(100 * SPARSE_ZERO_SHARE)
           if record["rule"][0] == "tfidf_l2" else
           ("negative values: dense" if p["min"] < 0 else
            "< {:.0f} % zeros: dense".format(100 * SPARSE_ZERO_SHARE)))
    names = {"scaling": "train.scaling", "margin": "method.margin", "scale": "method.scale"}
    tail = f"; {', '.join(names[k] for k in given)} as given" if given else ""
    return f"{head} (auto: {why}{tail})"


def margin_scale_of(scaling: str) -> Tuple[float, float]:
    """The angular margin / scale that go with a scaling: the text values for ``tfidf_l2``
    (bag of words), the dense values otherwise."""
    return TEXT_MARGIN_SCALE if scaling == "tfidf_l2" else DENSE_MARGIN_SCALE


def resolve_scaling(cfg, pool_x: Tensor, saved: Optional[Dict[str, Any]] = None,
                    probe: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The scaling, margin and scale a run uses, from its config and the training pool's
    inputs ``pool_x`` (labeled + unlabeled rows: no labels, validation or test rows); ``cfg``
    is only read. Returns the record of the choice::

        {"scaling", "margin", "scale": the values the run uses,
         "source": {key: "auto" | "config"}, "rule": [scaling, margin, scale] the rule picks,
         "profile": feature_profile(pool_x), "line": describe_choice(...)}

    A value given in the config is kept: ``train.scaling``, and the method's ``margin`` /
    ``scale`` (by default an interpolation of ``angular.margin`` / ``angular.scale``, the
    data config's modality values). ``auto`` takes the rule's value, or ``saved``'s (the
    values a resumed run's checkpoint recorded: a run keeps what it started with). The
    record's ``margin`` / ``scale`` are the modality's for a method without them (unused by
    a linear-head method)."""
    angular = cfg.get("angular") or {}

    def used(key):  # the method's value (an interpolation of angular.* unless given), else the modality's
        return cfg.method.get(key, angular.get(key)) if "method" in cfg else angular.get(key)

    keys = ("scaling", "margin", "scale")
    values = {"scaling": cfg.train.scaling, "margin": used("margin"), "scale": used("scale")}
    source = {k: "auto" if isinstance(v, str) and v == AUTO else "config" for k, v in values.items()}
    profile = feature_profile(pool_x)
    rule = choose_scaling(profile)
    saved = {k: v for k, v in (saved or {}).items() if k in keys and v is not None and str(v) != AUTO}
    scaling = values["scaling"] if source["scaling"] == "config" else saved.get(
        "scaling", probe["scaling"] if probe is not None and probe.get("scaling") else rule[0])
    # margin / scale follow the scaling the run uses (given, probed or the rule's)
    picked = {"scaling": scaling, **dict(zip(("margin", "scale"), margin_scale_of(str(scaling)))), **saved}
    chosen = {k: picked[k] if source[k] == "auto" else values[k] for k in keys}
    record = {"scaling": str(chosen["scaling"]),
              "margin": None if chosen["margin"] is None else float(chosen["margin"]),
              "scale": None if chosen["scale"] is None else float(chosen["scale"]),
              "source": source, "rule": list(rule), "profile": profile}
    if probe is not None:
        record["probe"] = probe
    record["line"] = describe_choice(record)
    return record
