"""Batches of the training loop: which rows, in which order, and how they reach the model.

:func:`index_batches` fixes the order (shuffled passes keyed by seed, epoch and stream, so a
resumed run sees the batches of an uninterrupted one and every rank the same global
batches). Two pipelines turn index batches into :class:`Batch` es:

* :class:`TensorBatches`: rows indexed out of the split's tensors on the training device.
  The fast path for data held in memory (feature vectors, token ids, cached embeddings).
* :class:`LoaderBatches`: a ``torch.utils.data.DataLoader`` over the same index batches,
  rows fetched (and, for data read per sample, decoded) in ``num_workers`` worker
  processes. ``bench/epoch.py --loader dataloader`` measures it against the tensor path.

Both give the same rows, and with the same views (:mod:`bbam.app.views`) the same
batches, so a run does not depend on the pipeline: views are made on the assembled batch
with a generator keyed by (seed, epoch, step, rank).

Images (:class:`bbam.data.image_rows.ImageRows`) are decoded per batch, so a split of images
always goes through :class:`LoaderBatches` (``train.num_workers`` workers decode; with
0 the main process does). Decoded ``uint8`` pixels become float ``[0, 1]`` on the
training device (:func:`model_input`). A split whose model reads cached features can
still carry its images for image-space views (``images``): the views then see the
batch's decoded images, not its features.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence

import torch
from torch import Tensor

from .inputs import decoded_per_batch, model_input

__all__ = ["Batch", "index_batches", "TensorBatches", "LoaderBatches", "PIPELINES", "make_pipeline", "split_pipelines"]

PIPELINES = ("tensor", "dataloader")


@dataclass
class Batch:
    """One batch of a split.

    Attributes:
        idx: ``[B]`` int64, the rows of the split (a method looks up its per-row epoch
            state, e.g. pseudo-labels or sampling masks, by them).
        x: ``[B, ...]`` the inputs as the model takes them.
        y: ``[B, K]`` int8 targets of a labeled batch; None for unlabeled batches.
        views: augmented inputs by name (``"weak"``, ``"strong"``), each shaped as ``x``;
            only those the method asked for.
    """

    idx: Tensor
    x: Tensor
    y: Optional[Tensor] = None
    views: Dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.idx.shape[0])


def index_batches(n: int, batch_size: int, seed: int, epoch: int, stream: int, min_batches: int = 1,
                  device: Optional[torch.device] = None) -> List[Tensor]:
    """Shuffled index batches of ``range(n)``, at least ``min_batches`` of them (the rows are
    reshuffled and passed over again as needed; a last partial batch only ends the final
    pass). The order depends only on ``(seed, epoch, stream)``."""
    batches, rep = [], 0
    while not batches or len(batches) < min_batches:
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + epoch * 101 + stream + 7919 * rep)
        perm = torch.randperm(n, generator=g)
        batches += [perm[i:i + batch_size].to(device) for i in range(0, n, batch_size)]
        rep += 1
    return batches[:max(min_batches, math.ceil(n / batch_size))]


def _views_from_images(views) -> bool:
    return views is not None and bool(views.needs_images)


def _view_generator(seed: int, epoch: int, step: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + epoch * 7_919 + step) * 64 + rank + 17)


class TensorBatches:
    """Batches indexed out of whole split tensors already on the training device.

    Args:
        x, y: the split's ``[N, ...]`` inputs and ``[N, K]`` targets (``y`` None: unlabeled,
            its targets are not handed out).
        views: a :class:`bbam.app.views.Views` (None: no views).
        view_names: the views each batch carries (e.g. ``("weak", "strong")``).
        images: the split's images (:class:`~bbam.data.image_rows.ImageRows`) for views that
            are made from images (``views.needs_images``) while ``x`` holds features.
    """

    def __init__(self, x: Tensor, y: Optional[Tensor] = None, views=None, view_names: Sequence[str] = (),
                 images=None):
        if view_names and views is None:
            raise ValueError(f"views {tuple(view_names)} were asked for but no view maker is configured (key 'views')")
        self.x, self.y, self.views, self.view_names = x, y, views, tuple(view_names)
        self.images = images if view_names and _views_from_images(views) else None
        if self.view_names and _views_from_images(views) and images is None and not decoded_per_batch(x):
            raise ValueError(f"{views!r} makes views from images, but this split has none (an image dataset with "
                             f"model.views of images is needed)")

    def _batch(self, idx: Tensor, x: Tensor, y: Optional[Tensor], seed: int, epoch: int, step: int,
               rank: int, images: Optional[Tensor] = None) -> Batch:
        batch = Batch(idx, x, y)
        if self.view_names:
            g = _view_generator(seed, epoch, step, rank)
            source = x if images is None else images
            batch.views = {name: self.views(name, source, g, rows=idx) for name in self.view_names}
        return batch

    def __call__(self, batches: Sequence[Tensor], seed: int, epoch: int, rank: int = 0) -> Iterator[Batch]:
        """``Batch`` es of the index ``batches`` (this rank's rows of each global batch)."""
        for step, idx in enumerate(batches):
            idx = idx.to(self.x.device)
            yield self._batch(idx, self.x[idx], None if self.y is None else self.y[idx], seed, epoch, step, rank)


class _SplitRows:
    """``fetch(indices)`` of a split for :class:`~bbam.data.image_rows.BatchFetch`: the row
    indices, inputs, targets and (decoded in the worker) images of one batch."""

    def __init__(self, x: Tensor, y: Optional[Tensor], images=None):
        self.x, self.y, self.images = x, y, images

    def __call__(self, idx: List[int]):
        i = torch.as_tensor(idx, dtype=torch.long)
        return (i, self.x[i], None if self.y is None else self.y[i], None if self.images is None else self.images[i])


class LoaderBatches(TensorBatches):
    """The same batches through ``torch.utils.data.DataLoader`` with ``num_workers`` workers.

    The split's tensors stay on the CPU; each batch is fetched by a worker (in shared
    memory) and moved to ``device``. For data held in memory this only adds the workers'
    hand-over (``bench/epoch.py`` measures it); it is the path for data read per batch."""

    def __init__(self, x: Tensor, y: Optional[Tensor] = None, views=None, view_names: Sequence[str] = (),
                 num_workers: int = 0, device: Optional[torch.device] = None, images=None):
        on_cpu = x if decoded_per_batch(x) else x.cpu()
        super().__init__(on_cpu, None if y is None else y.cpu(), views, view_names, images)
        self.num_workers = int(num_workers)
        self.device = device if device is not None else torch.device("cpu") if decoded_per_batch(x) else x.device

    def __call__(self, batches: Sequence[Tensor], seed: int, epoch: int, rank: int = 0) -> Iterator[Batch]:
        # its own generator: the loader's worker seeds must not draw from the global stream
        # (dropout), or the run would depend on the pipeline
        from bbam.data.image_rows import BatchFetch, raise_decode_errors

        loader = torch.utils.data.DataLoader(
            BatchFetch(len(self.x), _SplitRows(self.x, self.y, self.images)),
            batch_sampler=[b.cpu().tolist() for b in batches], collate_fn=BatchFetch.as_is,
            num_workers=self.num_workers, pin_memory=self.device.type == "cuda",
            generator=_view_generator(seed, epoch, 1 << 20, rank))
        for step, fetched in enumerate(loader):
            idx, x, y, images = raise_decode_errors(fetched)
            dev = self.device
            yield self._batch(idx.to(dev), model_input(x, dev), None if y is None else y.to(dev, non_blocking=True),
                              seed, epoch, step, rank, None if images is None else model_input(images, dev))


def make_pipeline(kind: str, x: Tensor, y: Optional[Tensor] = None, views=None, view_names: Sequence[str] = (),
                  num_workers: int = 0, images=None, device: Optional[torch.device] = None) -> TensorBatches:
    """The pipeline named by ``train.loader`` (one of :data:`PIPELINES`) over one split.

    ``x`` or ``images`` being image rows (decoded per batch) selects the DataLoader path
    whatever ``kind`` says; ``device``: the training device (default: ``x``'s)."""
    if kind not in PIPELINES:
        raise ValueError(f"config key 'train.loader' must be one of {', '.join(PIPELINES)}; got {kind!r}")
    decodes = decoded_per_batch(x) or (images is not None and view_names and _views_from_images(views))
    if kind == "tensor" and not decodes:
        return TensorBatches(x, y, views, view_names)
    return LoaderBatches(x, y, views, view_names, num_workers=num_workers, device=device, images=images)


def split_pipelines(train_cfg, splits, views, view_names: Sequence[str], device: torch.device):
    """The labeled and unlabeled pipelines of a run (``train.loader``, ``train.num_workers``):
    labeled batches carry targets; unlabeled ones the views ``view_names`` (``views``)."""
    kind, workers = str(train_cfg.get("loader", "tensor")), int(train_cfg.get("num_workers", 0))
    lb, ub = splits["labeled"], splits["unlabeled"]
    return (make_pipeline(kind, lb.x, lb.y, num_workers=workers, device=device),
            make_pipeline(kind, ub.x, None, views, view_names, workers, images=ub.images, device=device))
