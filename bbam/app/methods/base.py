"""The method seam: what a training method owns, and the engine's side of the contract.

A method is one class, built from ``method._target_`` with its own arguments only. The
engine (:class:`bbam.app.engine.SelfTrainingEngine`) runs the loop -- batches, optimizer,
EMA, validation, model selection, checkpoints, DDP -- and calls the method's hooks:

==========================  =================================================================
``make_head(dim, K)``       the classifier module the model ends with (linear logits, or
                            cosines for the angular methods)
``setup(num_labels, device)``  sizes, device and the state a checkpoint fills (also at prediction)
``bind(ctx)``               once, before training: ``setup``, then e.g. the labeled targets
``warmup_loss(forward, lb)``  a warm-up step's loss from a labeled :class:`Batch` (and, for a
                            supervised method, every step's)
``refresh(ctx)``            start of each semi-supervised epoch: per-epoch state (CAP
                            pseudo-labels, statistics, sampling masks, or nothing); returns
                            numbers to log for the epoch
``loss(forward, lb, ub)``   a semi-supervised step's loss from a labeled and an unlabeled batch
``end_epoch()``             end of each semi-supervised epoch: numbers gathered over its steps
``scores(outputs)``         model outputs ``[B, K]`` -> scores in [0, 1]: validation, test,
                            CAP and :class:`~bbam.app.predict.Predictor` all call this one
``state_dict()``            what a checkpoint must hold to resume and to predict
``diagnostics(ctx, split)``  what the method reports of a trained model on an evaluation
                            split (``diagnostics.json``; the angular methods: angle families
                            and VDFD; by default nothing)
==========================  =================================================================

``forward(xs)`` runs the training model once on the concatenation of the input tensors
``xs`` (one forward, so DDP synchronises once per step) and returns each part's outputs
``[B_i, K]`` (float32). A method sees the run through a :class:`MethodContext` (the splits,
predictions, features, the epoch's seed, the world size, timers), never the engine.
Class attributes say what the engine must provide: ``head`` (``"cosine"`` or ``"linear"``:
the kind of classifier :meth:`Method.make_head` builds), ``semi_supervised`` (a phase with
unlabeled batches follows the warm-up) and ``views`` (the unlabeled views a step needs, e.g.
``("weak", "strong")``; :mod:`bbam.app.views`).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Dict, List, Mapping, Sequence, Tuple

import torch
from torch import Tensor, nn

from bbam.functional import identity_coefficients

from ..batches import Batch
from ..models import LinearClassifier
from ..runtime import Split

__all__ = ["Method", "Forward", "MethodContext"]

Forward = Callable[[Sequence[Tensor]], List[Tensor]]


@dataclass(frozen=True)
class MethodContext:
    """All a method sees of the run, made by the engine for :meth:`Method.bind` and for
    each epoch's :meth:`Method.refresh`.

    Attributes:
        splits: ``labeled``, ``unlabeled``, ``val``, ``test`` :class:`~bbam.app.runtime.Split` s
            (inputs ``x``, targets ``y`` ``[N, K]`` int8, ``-1`` unknown).
        device: the training device.
        world: the number of processes (torchrun ranks); 1 in a single process.
        seed: the run's seed (``seed``).
        epoch: the epoch about to run (0-based).
        feature_dim: the width ``D`` of the model's features.
        save_epoch_state: whether the epoch's per-row state is kept (``train.save_epoch_state``).
        scores_global: ``scores_global(x, label_major=False, source="ema")``: the ``source``
            model's (``ema`` or ``online``) scores ``[N, K]`` of every row of ``x``, on every
            rank (``label_major``: stored with each label's scores contiguous, as per-label
            ranks want them).
        features: ``features(x, source, out=None)``: features ``[n, D]`` of this rank's rows
            ``x`` from the ``online`` (trained) or ``ema`` model, written into ``out`` if given.
        outputs: ``outputs(x, source)``: that model's raw outputs ``[n, K]`` of this rank's
            rows ``x`` (eval mode, no gradient: a teacher's view of a batch).
        classifier_weight: ``classifier_weight(source)``: that model's classifier weights ``[K, D]``.
        input_features: whether the splits' ``x`` are feature rows ``[N, D]`` (features,
            sentence embeddings, a frozen backbone's features), not tokens or pixels.
        timed: ``timed(phase)``: a context manager adding the block's seconds to the epoch's
            ``phase_s[phase]`` in ``metrics.jsonl``.
    """

    splits: Mapping[str, Split]
    device: torch.device
    world: int
    seed: int
    epoch: int
    feature_dim: int
    save_epoch_state: bool
    scores_global: Callable[..., Tensor]
    features: Callable[..., Tensor]
    outputs: Callable[[Tensor, str], Tensor]
    classifier_weight: Callable[[str], Tensor]
    input_features: bool = True
    timed: Callable[[str], ContextManager] = lambda phase: contextlib.nullcontext()

    @property
    def num_labels(self) -> int:
        return int(self.splits["labeled"].y.shape[1])

    def epoch_seed(self, stream: int) -> int:
        """A seed of this epoch's random draw number ``stream``, the same on every rank."""
        return self.seed * 1_000_003 + self.epoch * 101 + int(stream)


class Method:
    """Base class of the training methods (see the module docstring for the hooks).

    Args:
        name: the method's name (run folders, reports, checkpoints).
    """

    head = "linear"
    balances = False  # whether its scores go through the BBAM balancing transform
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

    def traits(self) -> Dict[str, bool]:
        """What reports show of the method: ``angular`` (a cosine head: margin and scale
        matter) and ``balances`` (the BBAM transform of its scores)."""
        return {"angular": self.head == "cosine", "balances": bool(self.balances)}

    @classmethod
    def make_head(cls, dim: int, num_labels: int) -> nn.Module:
        """The model's classifier on ``dim``-wide features: plain logits (:attr:`head` ``linear``)."""
        return LinearClassifier(dim, num_labels)

    def bind(self, ctx: MethodContext) -> None:
        """Called once by the engine before training (and before a checkpoint is loaded)."""
        self.setup(ctx.num_labels, ctx.device)

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

    def refresh(self, ctx: MethodContext) -> Dict[str, float]:
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

    def diagnostics(self, ctx: MethodContext, split: str = "test", source: str = "ema") -> Dict[str, Any]:
        """What the method reports of the trained model on ``ctx.splits[split]`` with its true
        labels, measured on the ``source`` model (``ema`` or ``online``); JSON-ready."""
        return {}

    def epoch_state(self) -> Dict[str, Tensor]:
        """The last epoch's global per-row quantities (``train.save_epoch_state``)."""
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
