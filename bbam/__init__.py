"""bbam: fused PyTorch ops and a training pipeline for semi-supervised multi-label
learning with the Balanced Binary Angular Margin loss (S2ML2-BBAM, NeurIPS 2024).

Library layer (this package's top level; no Hydra, no I/O):

* :mod:`bbam.ops` — the custom operators (``label_angle_stats``, ``bbam_loss``,
  ``angle_transform``, ``merge_stats``), CPU and CUDA kernels.
* :mod:`bbam.functional` — the same as functions, plus coefficient helpers.
* :class:`BAMLoss`, :class:`BBAMLoss`, :class:`LabelAngleStats`.
* :mod:`bbam.reference` — readable eager versions of every op (test oracle).
* :mod:`bbam.metrics` — multi-label metrics; :mod:`bbam.cap` — class-aware pseudo-labels;
  :mod:`bbam.sampling` — prototype negative sampling.

Datasets (container, readers, splits) are in :mod:`bbam.data`; the application layer
(models, engine, ``python -m bbam.train``) lives in :mod:`bbam.app` and :mod:`bbam.train`.
Neither is imported here.
"""
from . import cap, functional, metrics, ops, reference, sampling
from ._extension import BUILD_INFO
from .losses import AsymmetricLoss, BAMLoss, BBAMLoss, BCELoss
from .prototypes import label_prototypes
from .stats import LabelAngleStats

__version__ = "0.1.0"

__all__ = [
    "ops",
    "functional",
    "reference",
    "metrics",
    "cap",
    "sampling",
    "BAMLoss",
    "BBAMLoss",
    "BCELoss",
    "AsymmetricLoss",
    "LabelAngleStats",
    "label_prototypes",
    "BUILD_INFO",
    "__version__",
]
