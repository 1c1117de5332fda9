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
the process's frozen image-space views use too. Library layer: numpy, torch, tqdm and
:mod:`bbam.vision`.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor

from bbam.vision.backbones import get_backbone_spec, list_backbones, load_backbone, weights_id

from bbam.devices import resolve_device

from bbam.data.cache import default_cache_dir, read_cache, write_cache
from bbam.data.image_rows import BatchFetch, ImageDecodeError, ImageRows, raise_decode_errors
from bbam.data.progress import progress_bar

__all__ = ["image_features", "image_loader", "SETTINGS"]

_CACHE_FORMAT = 2  # bump when decoding (decode_image) or the feature procedure changes
SETTINGS = {"name", "finetune", "batch_size", "num_workers", "device", "cache_dir", "cache", "progress"}


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


def _cache_key(rows: ImageRows, backbone: str) -> str:
    files = hashlib.sha256()
    for path in rows.files:
        try:
            data = Path(path).read_bytes()
        except OSError as err:
            raise ImageDecodeError(f"image {path}: cannot read ({err.strerror or err})") from None
        files.update(hashlib.sha256(data).digest())
    meta = {"format": _CACHE_FORMAT, "weights": weights_id(backbone), "size": rows.image_size,
            "n": len(rows), "images": files.hexdigest()}
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()


@torch.no_grad()
def image_features(rows: ImageRows, settings: Mapping[str, Any]) -> Tensor:
    """``[N, dim]`` float32 features of ``rows`` through the frozen backbone ``settings["name"]``.

    Args:
        rows: the images (:class:`~bbam.data.images.ImageRows`).
        settings: ``name`` (a registered backbone: :func:`bbam.vision.backbones.list_backbones`); optional
            ``batch_size`` (64), ``num_workers`` (DataLoader decoding workers, 2),
            ``device`` ("auto"), ``cache_dir`` (None: the default folder), ``cache`` (True),
            ``progress`` (True: a progress bar on stderr with photos/s and the time left,
            kept when done; not shown when the features come from the cache).
    """
    unknown = set(settings) - SETTINGS
    if unknown:
        raise ValueError(f"image_features: unknown settings {sorted(unknown)} (expected among {sorted(SETTINGS)})")
    name = str(settings["name"])
    try:
        spec = get_backbone_spec(name)
    except ValueError:
        raise ValueError(f"config key 'model.backbone.name' must be one of {', '.join(list_backbones())} "
                         f"(registered image backbones), got {name!r}") from None
    cache = bool(settings.get("cache", True))
    file = None
    if cache:
        key = _cache_key(rows, name)
        folder = Path(settings.get("cache_dir") or default_cache_dir()).expanduser()
        file = folder / f"{name}-{rows.image_size}px-{key[:32]}.npz"
        cached = read_cache(file, key, len(rows))
        if cached is not None:
            return torch.from_numpy(cached)
    device = resolve_device(settings.get("device", "auto"), "model.backbone.device")
    backbone = load_backbone(name, device=device)  # the process's shared frozen instance
    out = np.empty((len(rows), spec.dim), dtype=np.float32)
    batches = image_loader(rows, int(settings.get("batch_size", 64)), int(settings.get("num_workers", 2)),
                           pin_memory=device.type == "cuda")
    done = 0
    # on stderr: photos done, photos/s and the time left; left on screen with the total time
    # taken (a pass over thousands of photos takes minutes on a CPU). Off with progress=false
    # (the configs pass train.progress).
    with progress_bar(len(rows), f"{name} features ({rows.image_size} px)", "photo",
                      bool(settings.get("progress", True))) as bar:
        for pixels in batches:
            x = pixels.to(device, non_blocking=True).float().div_(255)
            feats = backbone(x)  # float32 on every device: cached features do not depend on where they were made
            out[done:done + len(pixels)] = feats.float().cpu().numpy()
            done += len(pixels)
            bar.update(len(pixels))
    if cache:
        write_cache(file, key, out)
    return torch.from_numpy(out)
