"""Progress bars of the long data passes (frozen image features, sentence embeddings).

Library layer: the standard library and tqdm."""
from __future__ import annotations

import os
import sys

__all__ = ["progress_bar"]


def progress_bar(total: int, desc: str, unit: str, enabled: bool = True):
    """A tqdm bar on stderr with its rate and time left, left on screen when done (with the
    pass's total time); ``enabled`` false: silent."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=True, disable=not enabled,
                **_bar_size(sys.stderr))


def _bar_size(stream) -> dict:
    """tqdm's ``ncols`` / ``nrows`` for a bar on ``stream``: none (tqdm measures the terminal)
    unless ``stream`` is a terminal that reports no size (0 x 0: a pseudo-terminal nobody
    sized, e.g. under ``script``, ``docker exec -t`` or some CI runners), where tqdm's measured
    size (-1 x -1) would print nothing at all: then ``$COLUMNS`` x ``$LINES`` or 80 x 24."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError):  # not a terminal (a file, a pipe, captured)
        return {}
    if size.columns > 1 and size.lines > 1:
        return {}

    def env(name: str, default: int) -> int:
        try:
            return max(int(os.environ.get(name, "")), 2)
        except ValueError:
            return default

    return {"ncols": size.columns if size.columns > 1 else env("COLUMNS", 80),
            "nrows": size.lines if size.lines > 1 else env("LINES", 24)}
