"""Image rows decoded when indexed: :class:`ImageRows` and :func:`decode_image`.

:class:`ImageRows` holds file paths only; indexing it decodes just those images
(``uint8 [B, 3, S, S]``, squashed to ``S x S`` as the research code's ``Resize((S, S))``).
Library layer: numpy, torch, Pillow.
"""
from __future__ import annotations

from typing import List, Sequence

import numpy as np
import torch

__all__ = ["ImageDecodeError", "ImageRows", "decode_image", "IMAGE_SUFFIXES", "BatchFetch", "raise_decode_errors"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class ImageDecodeError(ValueError):
    """An image file is missing or cannot be decoded (the message names the file)."""


def decode_image(path, size: int) -> torch.Tensor:
    """The image at ``path`` as ``uint8 [3, size, size]`` RGB (squashed to a square).

    JPEGs are decoded at the smallest DCT scale that still covers ``size`` (Pillow's
    ``draft``: several times faster for photos much larger than ``size``), turned upright
    by their EXIF orientation tag, then resized bilinearly (with antialiasing). Single-channel
    images of more than 8 bits (16-bit PNG, 32-bit or float TIFF) are stretched from their
    own minimum and maximum to 0-255 first."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.draft("RGB", (size, size))
            img = ImageOps.exif_transpose(img)  # photos as they are shown (camera orientation tag)
            if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):  # 16/32-bit or float: to 8 bits
                a = np.asarray(img, dtype=np.float64)
                lo, hi = float(a.min()), float(a.max())
                img = Image.fromarray(((a - lo) * (255.0 / (hi - lo)) if hi > lo else a * 0).astype(np.uint8))
            rgb = img.convert("RGB").resize((size, size), Image.BILINEAR)
            arr = np.asarray(rgb, dtype=np.uint8)
    except FileNotFoundError:
        raise ImageDecodeError(f"image {path}: file not found") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
        raise ImageDecodeError(f"image {path}: cannot decode ({err})") from None
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


class ImageRows(torch.utils.data.Dataset):
    """Rows of images, decoded when indexed.

    Args:
        files: ``N`` image paths.
        image_size: side ``S`` of the decoded square images.

    ``rows[i]`` is ``uint8 [3, S, S]``; ``rows[index]`` (a list, LongTensor or slice) is
    ``uint8 [B, 3, S, S]``; :meth:`subset` is a lazy selection (no decoding); ``len(rows)``
    is ``N``.
    """

    def __init__(self, files: Sequence[str], image_size: int):
        if int(image_size) < 8:
            raise ValueError(f"ImageRows: 'image_size' must be >= 8 pixels, got {image_size}")
        self.files, self.image_size = [str(f) for f in files], int(image_size)

    def __len__(self) -> int:
        return len(self.files)

    def _rows(self, index) -> List[int]:
        if isinstance(index, slice):
            return list(range(len(self.files)))[index]
        if isinstance(index, torch.Tensor):
            if index.dtype == torch.bool:
                raise TypeError("ImageRows: index with row numbers, not a boolean mask")
            return index.cpu().reshape(-1).tolist()
        return [int(i) for i in index]

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return decode_image(self.files[int(index)], self.image_size)
        rows = self._rows(index)
        if not rows:
            return torch.empty((0, 3, self.image_size, self.image_size), dtype=torch.uint8)
        return torch.stack([decode_image(self.files[i], self.image_size) for i in rows])

    def subset(self, index) -> "ImageRows":
        return ImageRows([self.files[i] for i in self._rows(index)], self.image_size)

    def __repr__(self) -> str:
        return f"ImageRows(N={len(self.files)}, image_size={self.image_size})"


class BatchFetch(torch.utils.data.Dataset):
    """A DataLoader dataset that fetches a whole batch at once (``__getitems__``, used with
    ``collate_fn=BatchFetch.as_is``) by ``fetch(indices)``, e.g. decoding its photos in a
    worker. A photo that cannot be decoded travels back as a value, the
    :class:`ImageDecodeError` itself: :func:`raise_decode_errors` raises it again in the main
    process with its own one-line message, not a worker's traceback."""

    def __init__(self, size: int, fetch):
        self.size, self.fetch = int(size), fetch

    def __len__(self) -> int:
        return self.size

    def __getitems__(self, idx):
        try:
            return self.fetch(idx)
        except ImageDecodeError as err:
            return err

    def __getitem__(self, i):  # single rows (not used by the batched fetch)
        return self.__getitems__([i])

    @staticmethod
    def as_is(batch):
        return batch


def raise_decode_errors(batch):
    """``batch``, or the :class:`ImageDecodeError` a :class:`BatchFetch` worker returned, raised."""
    if isinstance(batch, ImageDecodeError):
        raise ImageDecodeError(str(batch))
    return batch
