"""Frozen backbone features of image rows, computed once per image set and cached on disk.

With a frozen backbone (``model.finetune=false``, the CPU default) the training loop only
trains a head on the features, so they are computed once: every image decoded (in
DataLoader workers) at ``S x S``, passed through the backbone in eval mode, and the
``[N, dim]`` float32 features written to the cache folder
(:func:`bbam.data.cache.default_cache_dir`) as ``<backbone>-<S>px-<key>.npz``. The key
holds the backbone's weights fingerprint, ``S``, the decoding procedure's version and the
SHA-256 of every image file's bytes, so changed images, weights or size never reuse
stale features. The backbone is any registered one (:func:`bbam.vision.backbones.get_backbone_spec`),
loaded through :func:`bbam.vision.backbones.load_backbone`: its frozen instance is the one
the process's frozen image-space views use too. The forward runs in eager PyTorch or, the
faster way on a CPU, in ONNX Runtime (``runtime``, :mod:`bbam.runtimes`); the key
records which, so the two runtimes' features never mix.

:func:`view_features` does the same for augmented views of the images (a weak or strong
view, one of several independent draws): the "view bank" that gives a frozen backbone's
head the photo-space weak/strong views at the cost of feature lookups.
Library layer: numpy, torch, tqdm and :mod:`bbam.vision`.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional

import numpy as np
import torch
from torch import Tensor

from bbam.runtimes import open_encoder, resolve_runtime, runtime_id
from bbam.vision.backbones import frozen_image_encoder, get_backbone_spec, list_backbones, weights_id

from bbam import distributed as D
from bbam.devices import resolve_device

from bbam.data.cache import default_cache_dir, read_cache, write_cache
from bbam.data.image_rows import BatchFetch, ImageDecodeError, ImageRows, raise_decode_errors
from bbam.data.progress import progress_bar

__all__ = ["image_features", "view_features", "image_loader", "SETTINGS", "VIEW_KEYS"]

_CACHE_FORMAT = 2  # bump when decoding (decode_image) or the feature procedure changes
_AUGMENT_FORMAT = 1  # bump when bbam.vision.augment's views change
SETTINGS = {"name", "finetune", "batch_size", "num_workers", "device", "runtime", "shard_rows", "cache_dir", "cache",
            "progress"}
SHARD_ROWS = 1024  # photos per cached shard of a pass (torchrun ranks share shards; a killed pass resumes from them)
# what defines one augmented view of view_features
VIEW_KEYS = {"weak": {"kind", "copy", "flip", "translate"},
             "strong": {"kind", "copy", "flip", "translate", "num_ops", "magnitude", "cutout"}}


def image_loader(rows: ImageRows, batch_size: int = 64, num_workers: int = 0, pin_memory: bool = False):
    """Decoded ``uint8 [B, 3, S, S]`` batches of ``rows`` in order, decoded by ``num_workers``
    DataLoader workers (0: in this process). A missing or corrupt image raises
    :class:`~bbam.data.images.ImageDecodeError` naming the file. The loader has its own
    generator: a pass over images does not draw from the global random stream (a training
    run's dropout draws do not depend on how often it evaluates)."""
    loader = torch.utils.data.DataLoader(BatchFetch(len(rows), rows.__getitem__), batch_size=int(batch_size),
                                         shuffle=False, num_workers=int(num_workers), collate_fn=BatchFetch.as_is,
                                         pin_memory=pin_memory, generator=torch.Generator())
    return (raise_decode_errors(b) for b in loader)


_DIGESTS: Dict[tuple, str] = {}  # (path, size, mtime) of every file -> digest: a run hashes its photos once


def _files_digest(rows: ImageRows) -> str:
    """SHA-256 over every image file's bytes, computed once per unchanged set of files in the
    process (a run's features and each view of the bank share it)."""
    try:
        stamp = tuple((path, st.st_size, st.st_mtime_ns) for path in rows.files for st in [os.stat(path)])
    except OSError:
        stamp = None  # a missing file: hashing below names it
    if stamp is not None and stamp in _DIGESTS:
        return _DIGESTS[stamp]
    files = hashlib.sha256()
    for path in rows.files:
        try:
            data = Path(path).read_bytes()
        except OSError as err:
            raise ImageDecodeError(f"image {path}: cannot read ({err.strerror or err})") from None
        files.update(hashlib.sha256(data).digest())
    if stamp is not None:
        _DIGESTS[stamp] = files.hexdigest()
    return files.hexdigest()


def _cache_key(rows: ImageRows, backbone: str, runtime: str, view: Optional[Mapping[str, Any]] = None,
               batch_size: int = 64, digest: Optional[str] = None) -> str:
    meta = {"format": _CACHE_FORMAT, "weights": weights_id(backbone), "size": rows.image_size,
            "n": len(rows), "images": digest or _files_digest(rows)}
    if runtime_id(runtime) is not None:  # torch's features keep the keys they had before runtimes
        meta["runtime"] = runtime_id(runtime)
    if view is not None:  # an augmented view's draws depend on the batches they were made in
        meta.update(view=dict(view), augment=_AUGMENT_FORMAT, batch_size=int(batch_size))
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()


def _check_view(view: Mapping[str, Any]) -> Dict[str, Any]:
    view = dict(view)
    keys = VIEW_KEYS[view.get("kind")] if view.get("kind") in VIEW_KEYS else None
    if keys is None or set(view) != keys:
        raise ValueError(f"view_features: 'view' must be {{'kind': 'weak', {', '.join(sorted(VIEW_KEYS['weak'] - {'kind'}))}}}"
                         f" or {{'kind': 'strong', ...}} with {sorted(VIEW_KEYS['strong'] - {'kind'})}; got {sorted(view)}")
    return view


def _augmenter(view: Mapping[str, Any]):
    """``augment(pixels, start)``: view ``view`` of a batch of float pixels whose first row
    is row ``start`` of the set, drawn from a generator keyed by the view and ``start``."""
    from .augment import strong_augment, weak_augment

    kind, copy = view["kind"], int(view["copy"])

    def augment(pixels: Tensor, start: int) -> Tensor:
        g = torch.Generator().manual_seed((copy * 2 + (kind == "strong")) * 1_000_003 + start + 104_729)
        if kind == "weak":
            return weak_augment(pixels, g, view["flip"], view["translate"])
        return strong_augment(pixels, g, view["flip"], view["translate"], view["num_ops"], view["magnitude"],
                              view["cutout"])
    return augment


def image_features(rows: ImageRows, settings: Mapping[str, Any]) -> Tensor:
    """``[N, dim]`` float32 features of ``rows`` through the frozen backbone ``settings["name"]``.

    Args:
        rows: the images (:class:`~bbam.data.images.ImageRows`).
        settings: ``name`` (a registered backbone: :func:`bbam.vision.backbones.list_backbones`); optional
            ``batch_size`` (64), ``num_workers`` (DataLoader decoding workers; ``auto``:
            :func:`_decoding_workers`),
            ``device`` ("auto"), ``runtime`` (``auto`` | ``torch`` | ``onnx``: where the
            forward runs, :mod:`bbam.runtimes`; absent: ``torch``, as runs recorded
            before the option computed them), ``cache_dir`` (None: the default folder),
            ``cache`` (True), ``progress`` (True: a progress bar on stderr with photos/s
            and the time left, kept when done; not shown when the features come from the cache).
    """
    return _encoded(rows, settings, None)


def view_features(rows: ImageRows, settings: Mapping[str, Any], view: Mapping[str, Any]) -> Tensor:
    """``[N, dim]`` float32 features of one augmented view of every image of ``rows``: each
    decoded batch augmented (:func:`bbam.vision.augment.weak_augment` or
    :func:`~bbam.vision.augment.strong_augment`, draws keyed by the view's ``copy`` and the
    batch's first row, so a view is the same in every run) and passed through the frozen
    backbone as :func:`image_features` does; cached on disk the same way, the key adding
    the view and ``batch_size``.

    Args:
        rows, settings: as :func:`image_features`.
        view: ``{"kind": "weak", "copy", "flip", "translate"}`` or ``{"kind": "strong",
            "copy", "flip", "translate", "num_ops", "magnitude", "cutout"}`` (``copy``: which
            of the view's independent draws, 0, 1, ...).
    """
    return _encoded(rows, settings, _check_view(view))


@torch.no_grad()
def _encoded(rows: ImageRows, settings: Mapping[str, Any], view: Optional[Dict[str, Any]]) -> Tensor:
    unknown = set(settings) - SETTINGS
    if unknown:
        raise ValueError(f"image_features: unknown settings {sorted(unknown)} (expected among {sorted(SETTINGS)})")
    name = str(settings["name"])
    try:
        spec = get_backbone_spec(name)
    except ValueError:
        raise ValueError(f"config key 'model.backbone.name' must be one of {', '.join(list_backbones())} "
                         f"(registered image backbones), got {name!r}") from None
    device = resolve_device(settings.get("device", "auto"), "model.backbone.device")
    asked = settings.get("runtime", "torch")
    runtime = resolve_runtime(asked, device, "model.encoder.runtime")
    batch_size = int(settings.get("batch_size", 64))
    folder = Path(settings.get("cache_dir") or default_cache_dir()).expanduser()
    cache = bool(settings.get("cache", True))
    digest = _files_digest(rows) if cache else ""

    def cached_file(runtime: str):
        key = _cache_key(rows, name, runtime, view, batch_size, digest)
        tag = "" if view is None else f"-{view['kind']}{int(view['copy'])}"
        return folder / f"{name}-{rows.image_size}px{tag}-{key[:32]}.npz", key

    file, key = cached_file(runtime) if cache else (None, None)
    cached = read_cache(file, key, len(rows)) if cache else None
    if D.all_ranks(cached is not None):  # every rank takes the same path (the pass below has barriers)
        return torch.from_numpy(cached)
    # the process's shared frozen module, or its ONNX Runtime session (exported once, cached)
    encode, used = open_encoder(asked, runtime, lambda r: frozen_image_encoder(name, r, device, rows.image_size,
                                                                               folder)[0], f"backbone {name!r}")
    if used != runtime:  # auto fell back to torch: torch's cache
        runtime = used
        file, key = cached_file(runtime) if cache else (None, None)
        if cache and D.all_ranks((cached := read_cache(file, key, len(rows))) is not None):
            return torch.from_numpy(cached)
    pass_ = _Pass(rows, encode, None if view is None else _augmenter(view), device, batch_size,
                  _decoding_workers(settings.get("num_workers", "auto"), device), spec.dim)
    what = "" if view is None else f" {view['kind']} view {int(view['copy'])}"  # short: 80 columns hold it
    label = f"{name}{what} ({rows.image_size} px, {runtime})"
    progress = bool(settings.get("progress", True))
    if not cache:
        with progress_bar(len(rows), label, "photo", progress) as bar:
            return torch.from_numpy(pass_.rows(0, len(rows), bar.update))
    out = _sharded(pass_, file, key, int(settings.get("shard_rows", SHARD_ROWS)), label, progress)
    return torch.from_numpy(out)


def _decoding_workers(value, device: torch.device) -> int:
    """DataLoader workers decoding photos for a frozen pass. ``auto``: on a CPU the cores
    torch's threads leave free (usually 0: the forward already uses every core, and workers
    would only compete with it -- on 2 cores ONNX Runtime's cold pass made 223 photos/s
    decoding in-process against 141 with 2 workers); on a GPU up to 4 (decoding is then the
    CPU's whole job)."""
    if str(value) != "auto":
        if int(value) < 0:
            raise ValueError(f"config key 'model.backbone.num_workers' must be >= 0 or auto, got {value}")
        return int(value)
    cores = os.cpu_count() or 1
    return min(4, cores) if device.type != "cpu" else max(0, cores - torch.get_num_threads())


class _Pass:
    """The frozen backbone's pass over a range of ``rows`` (decoded by ``num_workers``
    workers, augmented for a view, encoded), batch boundaries at multiples of ``batch_size``
    from row 0 so a range gives the rows' values of a whole-set pass."""

    def __init__(self, rows: ImageRows, encode, augment, device: torch.device, batch_size: int, num_workers: int,
                 dim: int):
        self.all, self.encode, self.augment, self.device = rows, encode, augment, device
        self.batch_size, self.num_workers, self.dim = batch_size, num_workers, dim

    def rows(self, start: int, stop: int, update: Callable[[int], object] = lambda k: None) -> np.ndarray:
        """The ``[stop - start, dim]`` features of rows ``start:stop``; ``update(k)`` after
        each batch of ``k`` rows (a progress bar's)."""
        out = np.empty((stop - start, self.dim), dtype=np.float32)
        done = 0
        for pixels in image_loader(self.all.subset(list(range(start, stop))), self.batch_size, self.num_workers,
                                   pin_memory=self.device.type == "cuda"):
            x = pixels.to(self.device, non_blocking=True).float().div_(255)
            if self.augment is not None:
                x = self.augment(x, start + done)  # draws keyed by the set's row, not the range's
            # float32 on every device: cached features do not depend on where they were made
            out[done:done + len(pixels)] = self.encode(x).float().cpu().numpy()
            done += len(pixels)
            update(len(pixels))
        return out


def _sharded(pass_: _Pass, file: Path, key: str, shard_rows: int, label: str, progress: bool) -> np.ndarray:
    """The whole set's features through cached shards of ``shard_rows`` rows (rounded up to
    whole batches) in the folder ``<file>.parts``: under torchrun rank ``r`` computes shards
    ``r, r + W, ...``; shards already cached (a killed pass) are read, not computed. Rank 0
    then joins them into ``file`` (atomically; unless another process wrote it meanwhile) and
    removes the parts it read; every rank reads it."""
    if shard_rows < 1:
        raise ValueError(f"config key 'model.backbone.shard_rows' must be >= 1, got {shard_rows}")
    n, world, rank = len(pass_.all), D.world_size(), D.rank()
    size = -(-shard_rows // pass_.batch_size) * pass_.batch_size
    parts = file.parent / (file.name[:-len(".npz")] + ".parts")
    bounds = [(i * size, min(n, (i + 1) * size)) for i in range(max(1, -(-n // size)))]

    def part(i: int):  # (file, key) of shard i: the key names its rows
        return parts / f"{i:05d}.npz", f"{key}|{bounds[i][0]}:{bounds[i][1]}"

    todo = [i for i in range(rank, len(bounds), world)
            if read_cache(*part(i), bounds[i][1] - bounds[i][0]) is None]
    with progress_bar(sum(bounds[i][1] - bounds[i][0] for i in todo), label, "photo", progress and rank == 0) as bar:
        for i in todo:
            write_cache(*part(i), pass_.rows(*bounds[i], bar.update))
    D.barrier()
    if rank == 0:
        out = read_cache(file, key, n)  # another process (a parallel run on the same photos) may have joined them
        if out is None:
            out = np.empty((n, pass_.dim), dtype=np.float32)
            for i, (a, b) in enumerate(bounds):
                shard = read_cache(*part(i), b - a)
                out[a:b] = shard if shard is not None else pass_.rows(a, b)  # a part gone missing: computed here
            write_cache(file, key, out)
        for i in range(len(bounds)):  # the parts, not the folder: another process may still be writing into it
            part(i)[0].unlink(missing_ok=True)
        try:
            parts.rmdir()
        except OSError:
            pass
    D.barrier()
    if rank == 0:
        return out
    joined = read_cache(file, key, n)
    if joined is None:
        raise RuntimeError(f"image features: rank {rank} cannot read {file}, which rank 0 wrote (is the cache "
                           f"folder shared by the ranks?)")
    return joined
