"""The method seam: what a training method owns, and the engine's side of the contract.

A method is one class, built from ``method._target_`` with its own arguments only. The
engine (:class:`bbam.app.engine.SelfTrainingEngine`) runs the loop -- batches, optimizer,
EMA, validation, model selection, checkpoints, DDP -- and calls the method's hooks:

==========================  =================================================================
``setup(num_labels, device)``  sizes, device and the state a checkpoint fills (also at prediction)
``bind(engine)``            once, before training: ``setup``, then e.g. the labeled targets
``warmup_loss(forward, lb)``  a warm-up step's loss from a labeled :class:`Batch` (and, for a
                            supervised method, every step's)
``refresh(engine)``         start of each semi-supervised epoch: per-epoch state (CAP
                            pseudo-labels, statistics, sampling masks, or nothing); returns
                            numbers to log for the epoch
``loss(forward, lb, ub)``   a semi-supervised step's loss from a labeled and an unlabeled batch
``end_epoch()``             end of each semi-supervised epoch: numbers gathered over its steps
``scores(outputs)``         model outputs ``[B, K]`` -> scores in [0, 1]: validation, test,
                            CAP and :class:`~bbam.app.predict.Predictor` all call this one
``state_dict()``            what a checkpoint must hold to resume and to predict
==========================  =================================================================

``forward(xs)`` runs the training model once on the concatenation of the input tensors
``xs`` (one forward, so DDP synchronises once per step) and returns each part's outputs
``[B_i, K]`` (float32). Class attributes say what the engine must provide: ``head``
(``"cosine"`` or ``"linear"`` classifier), ``semi_supervised`` (a phase with unlabeled
batches follows the warm-up) and ``views`` (the unlabeled views a step needs, e.g.
``("weak", "strong")``; :mod:`bbam.app.views`).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Sequence, Tuple

import torch
from torch import Tensor

from bbam.functional import identity_coefficients

from ..batches import Batch

__all__ = ["Method", "Forward"]

Forward = Callable[[Sequence[Tensor]], List[Tensor]]


class Method:
    """Base class of the training methods (see the module docstring for the hooks).

    Args:
        name: the method's name (run folders, reports, checkpoints).
    """

    head = "linear"
    semi_supervised = True
    views: Tuple[str, ...] = ()

    def __init__(self, name: str):
        self.name = str(name)
        self.num_labels = 0
        self.device = torch.device("cpu")

    # ------------------------------------------------------------------ set-up
    def setup(self, num_labels: int, device: torch.device) -> None:
        """Sizes and device, and the state :meth:`load_state_dict` fills (training and prediction)."""
        self.num_labels, self.device = int(num_labels), torch.device(device)

    def bind(self, engine) -> None:
        """Called once by the engine before training (and before a checkpoint is loaded)."""
        self.setup(engine.splits["labeled"].y.shape[1], engine.device)

    # ------------------------------------------------------------------ scores
    def coefficients(self) -> Tuple[Tensor, Tensor]:
        """The inference transform's ``(a, b)`` ``[2, K]`` (identity unless the method balances)."""
        return identity_coefficients(self.num_labels, device=self.device)

    def scores(self, outputs: Tensor) -> Tensor:
        """Model outputs ``[B, K]`` (float32) -> scores in [0, 1]; never modifies ``outputs``."""
        return torch.sigmoid(outputs)

    # ------------------------------------------------------------------ training
    def warmup_loss(self, forward: Forward, lb: Batch) -> Tensor:
        raise NotImplementedError

    def refresh(self, engine) -> Dict[str, float]:
        """Per-epoch state at the start of each semi-supervised epoch; returns log values."""
        return {}

    def loss(self, forward: Forward, lb: Batch, ub: Batch) -> Tensor:
        raise NotImplementedError(f"method {self.name!r} has no semi-supervised step")

    def end_epoch(self) -> Dict[str, float]:
        """End of each semi-supervised epoch: numbers gathered over its steps, to log."""
        return {}

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass

    def epoch_state(self) -> Dict[str, Tensor]:
        """The last epoch's global per-row quantities (``train.save_epoch_state``)."""
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
