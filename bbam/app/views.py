"""Weak and strong views of unlabeled inputs, for the consistency methods (FixMatch, SoftMatch).

A view maker is called on an assembled batch, ``views(name, x, generator)`` with ``name``
``"weak"`` or ``"strong"``, and returns a new tensor shaped as ``x``. Its draws come from
the generator the pipeline passes (keyed by seed, epoch, step and rank), so a run is
reproducible and does not depend on the data pipeline.

* :class:`FeatureViews` (feature vectors, embeddings): weak = the input, optionally with
  light Gaussian noise; strong = random feature masking, each masked entry replaced by the
  same feature of another row of the batch (VIME, Yoon et al. 2020: "the pool's value of
  another row") or by zero, plus Gaussian noise. Noise is relative to each feature's
  spread in the batch, so it means the same under every ``train.scaling``.
* :class:`TokenViews` (token ids ``[B, L]``, 0 = padding): token dropout, each token of a
  document dropped (set to padding) with the view's probability.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["Views", "FeatureViews", "TokenViews"]


def _probability(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"config key 'views.{name}' must be in [0, 1), got {value}")
    return value


class Views:
    """Base class: ``__call__(name, x, generator)`` dispatches to :meth:`weak` / :meth:`strong`."""

    def __call__(self, name: str, x: Tensor, generator: torch.Generator) -> Tensor:
        if name == "weak":
            return self.weak(x, generator)
        if name == "strong":
            return self.strong(x, generator)
        raise ValueError(f"unknown view {name!r} (expected 'weak' or 'strong')")

    def weak(self, x: Tensor, generator: torch.Generator) -> Tensor:
        return x

    def strong(self, x: Tensor, generator: torch.Generator) -> Tensor:
        raise NotImplementedError


def _draw(shape, generator: torch.Generator, device, kind: str = "rand") -> Tensor:
    # drawn on the CPU generator (the same numbers on every device), then moved
    t = torch.rand(shape, generator=generator) if kind == "rand" else torch.randn(shape, generator=generator)
    return t.to(device)


class FeatureViews(Views):
    """Views of feature vectors ``[B, D]``.

    Args:
        weak_noise: std of the weak view's Gaussian noise, in units of each feature's
            batch std (0: the weak view is the input itself).
        strong_mask: probability that an entry of the strong view is masked.
        strong_noise: std of the strong view's noise (units of the feature's batch std).
        mask_fill: ``"shuffle"`` (the same feature of another row of the batch) or ``"zero"``.
    """

    def __init__(self, weak_noise: float = 0.0, strong_mask: float = 0.3, strong_noise: float = 0.1,
                 mask_fill: str = "shuffle"):
        if mask_fill not in ("shuffle", "zero"):
            raise ValueError(f"config key 'views.mask_fill' must be 'shuffle' or 'zero', got {mask_fill!r}")
        if float(weak_noise) < 0 or float(strong_noise) < 0:
            raise ValueError(f"config keys 'views.weak_noise' / 'views.strong_noise' must be >= 0, "
                             f"got {weak_noise} / {strong_noise}")
        self.weak_noise, self.strong_noise = float(weak_noise), float(strong_noise)
        self.strong_mask, self.mask_fill = _probability("strong_mask", strong_mask), mask_fill

    def _noisy(self, x: Tensor, std: float, generator: torch.Generator) -> Tensor:
        if std == 0.0 or x.shape[0] < 2:
            return x
        spread = x.float().std(0, keepdim=True)
        return x + (std * spread * _draw(x.shape, generator, x.device, "randn")).to(x.dtype)

    def weak(self, x: Tensor, generator: torch.Generator) -> Tensor:
        return self._noisy(x, self.weak_noise, generator)

    def strong(self, x: Tensor, generator: torch.Generator) -> Tensor:
        masked = _draw(x.shape, generator, x.device) < self.strong_mask
        if self.mask_fill == "shuffle" and x.shape[0] > 1:
            # each entry's replacement: the same feature of a random other row of the batch
            other = (torch.arange(x.shape[0]).view(-1, 1)
                     + torch.randint(1, x.shape[0], x.shape, generator=generator)) % x.shape[0]
            fill = torch.gather(x, 0, other.to(x.device))
        else:
            fill = torch.zeros_like(x)
        return self._noisy(torch.where(masked, fill, x), self.strong_noise, generator)

    def __repr__(self) -> str:
        return (f"FeatureViews(weak_noise={self.weak_noise}, strong_mask={self.strong_mask}, "
                f"strong_noise={self.strong_noise}, mask_fill={self.mask_fill!r})")


class TokenViews(Views):
    """Views of token ids ``[B, L]`` (0 = padding): token dropout.

    Args:
        weak_drop: probability that a token is dropped in the weak view (0: the input).
        strong_drop: probability that a token is dropped in the strong view.
    """

    def __init__(self, weak_drop: float = 0.0, strong_drop: float = 0.3):
        self.weak_drop, self.strong_drop = _probability("weak_drop", weak_drop), _probability("strong_drop", strong_drop)

    def _dropped(self, x: Tensor, p: float, generator: torch.Generator) -> Tensor:
        if p == 0.0:
            return x
        return x.masked_fill(_draw(x.shape, generator, x.device) < p, 0)

    def weak(self, x: Tensor, generator: torch.Generator) -> Tensor:
        return self._dropped(x, self.weak_drop, generator)

    def strong(self, x: Tensor, generator: torch.Generator) -> Tensor:
        return self._dropped(x, self.strong_drop, generator)

    def __repr__(self) -> str:
        return f"TokenViews(weak_drop={self.weak_drop}, strong_drop={self.strong_drop})"
