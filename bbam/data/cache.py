"""The on-disk cache of computed inputs (sentence embeddings, frozen image features).

One ``.npz`` per cached set, holding the array and the key it was computed for; written
atomically, so a killed run or two runs at once never leave a half-written file, and a
bad or foreign file is reported and recomputed. Library layer: standard library, numpy, torch.
"""
from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Optional

import numpy as np

__all__ = ["default_cache_dir", "read_cache", "write_cache"]


def default_cache_dir() -> Path:
    """``$BBAM_CACHE_DIR`` or ``~/.cache/bbam/embeddings`` (sentence embeddings and image features alike)."""
    return Path(os.environ.get("BBAM_CACHE_DIR") or Path.home() / ".cache" / "bbam" / "embeddings").expanduser()


def read_cache(path: Path, key: str, n: int) -> Optional[np.ndarray]:
    """The cached ``[n, D]`` array, or None (missing; a bad file is reported and ignored)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            emb, stored = np.asarray(z["embeddings"], dtype=np.float32), str(z["key"])
        if stored != key or emb.ndim != 2 or emb.shape[0] != n or not np.isfinite(emb).all():
            raise ValueError(f"key or shape {emb.shape} does not match {n} rows")
        return emb
    except Exception as err:  # corrupt / truncated / foreign file: rebuild it
        warnings.warn(f"feature cache {path} is unreadable ({type(err).__name__}: {err}); recomputing it",
                      RuntimeWarning, stacklevel=3)
        return None


def write_cache(path: Path, key: str, emb: np.ndarray) -> None:
    """Atomic write: a temporary file in the same folder, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # as a plain open() would (mkstemp makes it 0600)
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, embeddings=emb, key=np.array(key))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
