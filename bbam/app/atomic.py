"""Atomic file writes of the app (checkpoints, metrics, reports): write a temporary file
in the same folder, fsync, then rename over the target, so a crash leaves either the old
or the new file, never a torn one. No torch import unless a tensor file is written."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, IO

__all__ = ["atomic_save", "atomic_write_text", "atomic_copy"]


def _atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save(obj)`` to ``path``, atomically."""
    import torch

    _atomic_write(Path(path), lambda fh: torch.save(obj, fh))


def atomic_write_text(path: Path, text: str) -> None:
    """``text`` (UTF-8) to ``path``, atomically."""
    _atomic_write(Path(path), lambda fh: fh.write(text.encode("utf-8")))


def atomic_copy(source: Path, path: Path) -> None:
    """The bytes of ``source`` to ``path``, atomically (no deserialisation)."""
    import shutil

    with open(source, "rb") as src:
        _atomic_write(Path(path), lambda fh: shutil.copyfileobj(src, fh, 1 << 20))
