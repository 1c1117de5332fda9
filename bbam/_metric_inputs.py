"""Input validation of :mod:`bbam.metrics`: scores, targets and thresholds checked once at
the boundary, with messages that name the argument and what was expected.

Library layer: depends only on ``torch``, ``numpy`` and ``math``.
"""
from __future__ import annotations

import math
from numbers import Real

import numpy as np
import torch
from torch import Tensor

_F64 = torch.float64


def _as_tensor(x, name: str) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach()
    if isinstance(x, np.ndarray) or isinstance(x, (list, tuple)):
        try:
            return torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError) as exc:  # object arrays, ragged lists
            raise TypeError(f"{name} must be a tensor or a numeric array: {exc}") from None
    raise TypeError(f"{name} must be a torch.Tensor (or numpy array), got {type(x).__name__}")


def _check_scores(scores, convert: bool = True) -> Tensor:
    scores = _as_tensor(scores, "scores")
    if scores.dim() != 2:
        raise ValueError(f"scores must be a 2-D tensor [N, K], got shape {tuple(scores.shape)}")
    if not scores.is_floating_point():
        raise TypeError(f"scores must be a floating-point tensor, got dtype {scores.dtype}")
    n, k = scores.shape
    if n == 0 or k == 0:
        raise ValueError(f"scores must have at least one sample and one label, got shape {(n, k)}")
    if bool(torch.isnan(scores).any()):
        raise ValueError("scores contains NaN")
    return scores.to(_F64) if convert else scores


def _check_targets(targets, scores: Tensor, convert: bool = True) -> Tensor:
    """Returns targets as a float64 tensor of 0/1 on the scores' device (as given: ``convert=False``)."""
    targets = _as_tensor(targets, "targets")
    if targets.dim() != 2:
        raise ValueError(f"targets must be a 2-D tensor [N, K], got shape {tuple(targets.shape)}")
    if targets.shape != scores.shape:
        raise ValueError(
            f"targets shape {tuple(targets.shape)} does not match scores shape {tuple(scores.shape)}"
        )
    if targets.is_complex():
        raise TypeError(f"targets must be a real (bool/int) tensor, got dtype {targets.dtype}")
    if targets.device != scores.device:
        raise ValueError(
            f"targets is on {targets.device} but scores is on {scores.device}; "
            "put both on the same device"
        )
    if targets.dtype != torch.bool:
        bad = (targets != 0) & (targets != 1)
        if bool(bad.any()):
            vals = torch.unique(targets[bad])[:5].tolist()
            raise ValueError(
                f"targets must contain only 0 and 1 (unknown labels such as -1 are not "
                f"allowed in evaluation); found {vals}"
            )
    return targets.to(_F64) if convert else targets


def _check(scores, targets):
    s = _check_scores(scores)
    return s, _check_targets(targets, s)


def _check_light(scores, targets):
    """The checks of :func:`_check` without its float64 copies: the inputs as given, for
    computations that convert one block at a time (:func:`evaluate`, :func:`average_precision`)."""
    s = _check_scores(scores, convert=False)
    return s, _check_targets(targets, s, convert=False)


def _check_threshold(threshold) -> float:
    if isinstance(threshold, Tensor):
        if threshold.numel() != 1:
            raise ValueError(f"threshold must be a scalar, got shape {tuple(threshold.shape)}")
        threshold = threshold.item()
    if isinstance(threshold, bool) or not isinstance(threshold, Real):
        raise TypeError(f"threshold must be a real number, got {type(threshold).__name__}")
    threshold = float(threshold)
    if math.isnan(threshold):
        raise ValueError("threshold must not be NaN")
    return threshold
