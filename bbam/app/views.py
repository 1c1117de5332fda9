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
* :class:`ImageViews` (image datasets): image-space views (flip + translation; the strong
  one adds per-image RandAugment and Cutout, :mod:`bbam.vision.augment`) of the batch's
  decoded images; or, on a frozen backbone's cached features, the feature-space views of
  :class:`FeatureViews`; or the *view bank*: ``V`` weak and ``V`` strong image-space views
  of every photo encoded once by the frozen backbone (cached like its features,
  :func:`bbam.vision.features.view_features`), a step drawing one of each per row. Image-space
  views on a frozen backbone's features pass the views through the process's shared
  frozen instance (:func:`bbam.vision.backbones.load_backbone`, the one the feature pass used).

Views that need the run's data before training (the bank) build it in :meth:`Views.prepare`,
which the run calls once; a batch's views are then looked up by its rows (``rows``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import torch
from torch import Tensor

__all__ = ["Views", "FeatureViews", "TokenViews", "ImageViews"]


def _probability(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"config key 'model.views.{name}' must be in [0, 1), got {value}")
    return value


class Views:
    """Base class: ``__call__(name, x, generator)`` dispatches to :meth:`weak` / :meth:`strong`.

    ``needs_images``: the views are made from the batch's decoded images rather than from
    its model inputs (features); the pipeline then passes those images as ``x``."""

    needs_images = False

    def prepare(self, plan) -> None:
        """Called once by the run (:func:`bbam.app.build.build_engine`) with its
        :class:`~bbam.app.plan.RunPlan` before the first batch; nothing to do here."""

    def __call__(self, name: str, x: Tensor, generator: torch.Generator, rows: Optional[Tensor] = None) -> Tensor:
        """View ``name`` of the batch ``x``; ``rows``: the batch's ``[B]`` rows of the unlabeled
        split (read only by views looked up per row)."""
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
            raise ValueError(f"config key 'model.views.mask_fill' must be 'shuffle' or 'zero', got {mask_fill!r}")
        if float(weak_noise) < 0 or float(strong_noise) < 0:
            raise ValueError(f"config keys 'model.views.weak_noise' / 'model.views.strong_noise' must be >= 0, "
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


class ImageViews(Views):
    """Weak/strong views for image datasets.

    Args:
        space: ``images``: augmented images (weak: flip + translation; strong: + RandAugment
            + Cutout); ``features``: :class:`FeatureViews` of the frozen backbone's features
            (no image work); ``bank``: ``bank`` weak and ``bank`` strong image-space views of
            every photo through the frozen backbone, computed once before training (cached
            on disk like its features) and scaled as the run's features, a step drawing one
            of each per row; ``auto``: ``features`` with a frozen backbone, ``images`` when
            fine-tuning (the model then reads pixels, so only image views make sense).
        backbone: the model's backbone (a registered one: :func:`bbam.vision.backbones.list_backbones`),
            or None (a model trained from scratch on pixels, e.g. ``model=image_cnn``).
        finetune: whether the model reads pixels (fine-tuning). With a frozen backbone and
            ``space=images`` the views are the frozen backbone's features of the augmented
            images: a backbone forward per view per batch (``bench/images.py`` measures it).
        flip, translate: weak view: flip probability, largest shift (share of the side).
        num_ops, magnitude, cutout: strong view: RandAugment operations per image, their
            largest magnitude in [0, 1], Cutout square side (share of the side; 0: none).
        weak_noise, strong_mask, strong_noise, mask_fill: :class:`FeatureViews` settings
            (``space=features``).
        bank: ``space=bank``: ``V``, the weak and the strong views kept per photo (``2 V``
            backbone passes over the set, once; ``2 V`` times the features' memory).
        runtime: where a frozen backbone's passes over ``space=images`` views run (``auto`` |
            ``torch`` | ``onnx``, :mod:`bbam.runtimes`; the bank is computed as the
            features are, in ``model.backbone.runtime``). ``auto`` runs them in torch, with a
            warning, where the backbone cannot be exported.
        cache_dir: where the exported ``.onnx`` file of ``space=images`` views is kept (None:
            :func:`bbam.data.cache.default_cache_dir`; the features' folder in the configs).
    """

    def __init__(self, space: str = "auto", backbone: Optional[str] = None, finetune: bool = False,
                 flip: float = 0.5, translate: float = 0.125, num_ops: int = 2, magnitude: float = 1.0,
                 cutout: float = 0.5, weak_noise: float = 0.0, strong_mask: float = 0.3, strong_noise: float = 0.1,
                 mask_fill: str = "shuffle", bank: int = 4, runtime: str = "torch", cache_dir: Optional[str] = None):
        if space not in ("auto", "images", "features", "bank"):
            raise ValueError(f"config key 'model.views.space' must be auto, images, features or bank, got {space!r}")
        pixels = bool(finetune) or backbone is None  # the model reads pixels
        self.space = ("images" if pixels else "features") if space == "auto" else space
        if pixels and self.space in ("features", "bank"):
            raise ValueError(f"config key 'model.views.space' is {self.space!r} but the model reads pixels "
                             f"(model.finetune=true or a CNN trained from scratch): use images or auto")
        _probability("flip", flip)
        if not 0.0 <= float(translate) < 0.5 or not 0.0 <= float(cutout) < 1.0 or not 0.0 <= float(magnitude) <= 1.0:
            raise ValueError(f"config keys 'model.views.translate' (in [0, 0.5)), 'cutout' (in [0, 1)) and "
                             f"'magnitude' (in [0, 1]) out of range: {translate}, {cutout}, {magnitude}")
        if int(num_ops) < 0:
            raise ValueError(f"config key 'model.views.num_ops' must be >= 0, got {num_ops}")
        if int(bank) < 1:
            raise ValueError(f"config key 'model.views.bank' must be >= 1 (views per photo), got {bank}")
        self.flip, self.translate, self.num_ops = float(flip), float(translate), int(num_ops)
        self.magnitude, self.cutout, self.bank = float(magnitude), float(cutout), int(bank)
        from bbam.runtimes import check_runtime

        self.runtime = check_runtime(runtime, "model.views.runtime")
        self.cache_dir = cache_dir
        self._encoder = None  # space=images on a frozen backbone: ((device, size), encode) of the last batch
        self.backbone_name = None if pixels else str(backbone)
        if self.backbone_name is not None:
            from bbam.vision.backbones import get_backbone_spec, list_backbones

            try:
                get_backbone_spec(self.backbone_name)
            except ValueError:
                raise ValueError(f"config key 'model.views.backbone' must be one of {', '.join(list_backbones())}, "
                                 f"got {backbone!r}") from None
        self.features = FeatureViews(weak_noise, strong_mask, strong_noise, mask_fill)
        self._bank: Optional[Dict[str, Tensor]] = None  # space=bank: {"weak", "strong"}: [V, N_unlabeled, D]
        self.bank_seconds: Optional[float] = None  # space=bank: time to build (or read) the bank

    @property
    def needs_images(self) -> bool:
        return self.space == "images" and self.backbone_name is not None

    def recipes(self) -> Dict[str, List[Dict[str, object]]]:
        """``space=bank``: each kept view's recipe (:func:`bbam.vision.features.view_features`), by name."""
        weak = {"flip": self.flip, "translate": self.translate}
        strong = {**weak, "num_ops": self.num_ops, "magnitude": self.magnitude, "cutout": self.cutout}
        return {"weak": [{"kind": "weak", "copy": v, **weak} for v in range(self.bank)],
                "strong": [{"kind": "strong", "copy": v, **strong} for v in range(self.bank)]}

    def prepare(self, plan) -> None:
        """``space=bank``: the unlabeled rows' ``V`` weak and ``V`` strong view features,
        scaled as the run's features (``plan.scaler``), on the training device."""
        if self.space != "bank":
            return
        import time

        start = time.perf_counter()
        rows = plan.splits["unlabeled"]
        self._bank = {name: torch.stack([plan.scaler.transform(plan.inputs.view_matrix(recipe)[rows])
                                         for recipe in recipes]).to(plan.device)
                      for name, recipes in self.recipes().items()}
        self.bank_seconds = time.perf_counter() - start

    def __call__(self, name: str, x: Tensor, generator: torch.Generator, rows: Optional[Tensor] = None) -> Tensor:
        if self.space != "bank":
            return super().__call__(name, x, generator)
        if name not in ("weak", "strong"):
            raise ValueError(f"unknown view {name!r} (expected 'weak' or 'strong')")
        if self._bank is None or rows is None:
            raise RuntimeError("ImageViews(space='bank'): the bank is built by prepare(plan) and read by the "
                               "batch's rows; call prepare first and pass rows")
        bank = self._bank[name]
        copy = torch.randint(bank.shape[0], (rows.shape[0],), generator=generator).to(bank.device)
        return bank[copy, rows.to(bank.device)]

    @torch.no_grad()
    def _encoded(self, pixels: Tensor) -> Tensor:
        if self.backbone_name is None:
            return pixels
        where = (pixels.device, int(pixels.shape[-1]))
        if self._encoder is None or self._encoder[0] != where:
            from bbam.data.cache import default_cache_dir
            from bbam.runtimes import open_encoder, resolve_runtime
            from bbam.vision.backbones import frozen_image_encoder

            # the frozen backbone in the run's runtime: the process's shared module on this
            # device, or its ONNX Runtime session (exported once, kept beside the features)
            folder = Path(self.cache_dir or default_cache_dir()).expanduser()
            runtime = resolve_runtime(self.runtime, pixels.device, "model.views.runtime")
            encode, _ = open_encoder(self.runtime, runtime, lambda r: frozen_image_encoder(
                self.backbone_name, r, pixels.device, where[1], folder)[0], f"backbone {self.backbone_name!r}")
            self._encoder = (where, encode)
        return self._encoder[1](pixels).to(pixels.device)

    def _not_bank(self) -> None:
        if self.space == "bank":  # bank views are looked up by row: __call__ with rows
            raise RuntimeError("ImageViews(space='bank'): call the view maker with the batch's rows")

    def weak(self, x: Tensor, generator: torch.Generator) -> Tensor:
        self._not_bank()
        if self.space == "features":
            return self.features.weak(x, generator)
        from bbam.vision.augment import weak_augment

        return self._encoded(weak_augment(x, generator, self.flip, self.translate))

    def strong(self, x: Tensor, generator: torch.Generator) -> Tensor:
        self._not_bank()
        if self.space == "features":
            return self.features.strong(x, generator)
        from bbam.vision.augment import strong_augment

        return self._encoded(strong_augment(x, generator, self.flip, self.translate, self.num_ops, self.magnitude,
                                            self.cutout))

    def __repr__(self) -> str:
        return (f"ImageViews(space={self.space!r}, backbone={self.backbone_name!r}, flip={self.flip}, "
                f"translate={self.translate}, num_ops={self.num_ops}, magnitude={self.magnitude}, "
                f"cutout={self.cutout}" + (f", bank={self.bank})" if self.space == "bank" else ")"))
