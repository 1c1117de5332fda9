"""A user's mistake versus a programming error (application layer).

A **user's mistake** is an exception raised at the app's input boundary: reading and
checking the data (a missing or malformed file, labels outside 0/1, a NaN feature),
checking the config (a bad value, a missing required key) and resuming (a missing or
foreign checkpoint, other settings). :func:`user_input` marks the ``OSError``,
``ValueError``, ``ImportError`` and Hydra instantiation errors raised inside such a
block; ``python -m bbam.train`` prints a marked error as one short message (its text
names the file, row/column or key and what was expected), without a traceback, and
exits with status 2. Anything else (a programming error) keeps its traceback.
``BBAM_TRACEBACK=1`` shows the traceback of a user's mistake too.

The exceptions keep their type (``FileNotFoundError``, ``ValueError``, ...): callers of
:func:`bbam.train.train` catch them as before.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

__all__ = ["UserError", "user_input", "is_user_error", "show_traceback", "short_message", "USER_ERROR_EXIT"]

USER_ERROR_EXIT = 2  # exit status of a run refused for a user's mistake (as argparse's usage errors)
_MARK = "_bbam_user_error"


class UserError(ValueError):
    """A user's mistake found by the app itself (e.g. a resume with other settings)."""


def _boundary_types():
    types = [OSError, ValueError, ImportError]
    try:
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        types += [HydraException, OmegaConfBaseException]
    except ImportError:  # pragma: no cover - Hydra is a dependency of the app
        pass
    return tuple(types)


@contextlib.contextmanager
def user_input() -> Iterator[None]:
    """Marks the input errors raised in the block as a user's mistake (re-raised as is)."""
    try:
        yield
    except _boundary_types() as err:
        mark(err)
        raise


def mark(err: BaseException) -> BaseException:
    try:
        setattr(err, _MARK, True)
    except AttributeError:  # pragma: no cover - exceptions without a __dict__
        pass
    return err


def is_user_error(err: BaseException) -> bool:
    """A user's mistake: marked at the input boundary, the app's own :class:`UserError`, or a
    photo that cannot be read (found whenever a batch decodes it, mid-run too)."""
    from bbam.data.image_rows import ImageDecodeError

    return isinstance(err, (UserError, ImageDecodeError)) or bool(getattr(err, _MARK, False))


def show_traceback() -> bool:
    """``BBAM_TRACEBACK=1``: show the traceback of a user's mistake too."""
    return os.environ.get("BBAM_TRACEBACK", "").strip().lower() not in ("", "0", "false", "no")


def short_message(err: BaseException) -> str:
    """The error's own message; an ``OSError`` built as ``(errno, text, filename)`` gives
    its text, followed by the file name when the text does not hold it."""
    if isinstance(err, OSError) and len(err.args) >= 2 and isinstance(err.args[1], str):
        text = err.args[1]
        if err.filename and str(err.filename) not in text:
            text = f"{text}: {err.filename}"
    else:
        text = str(err)
    if not text.strip() and err.__cause__ is not None:
        text = str(err.__cause__)
    return text.strip()
