"""Graceful stops of ``python -m bbam.train`` on SIGINT (Ctrl-C) and SIGTERM (application layer).

:func:`install` (called by ``main()`` only: :func:`bbam.train.train` as a library call
keeps Python's own signal handling) replaces both handlers by one that only records the
signal. The engine calls :func:`check_after_step` after every optimizer step; once a
signal was recorded it raises :class:`StopRequested`, so the current step finishes and
nothing is written half-way. The resume point is the run's ``checkpoints/last.pt``:
the last *completed* epoch (written atomically at the end of every epoch; a run
stopped in its first epoch resumes from the checkpoint written before it). What a stop
loses is the interrupted epoch's steps: the resumed run repeats that epoch from its
start, with the same batches, pseudo-labels and random draws, and ends with the
uninterrupted run's metrics. ``main()`` then prints one line holding the resume command
(:func:`resume_command`) and exits with 128 + the signal's number, without a traceback.
A second signal while stopping ends the process at once (the default action).

Under torchrun the recorded signal is all-reduced (max) after every step, so every rank
stops after the same step (one small collective per step).
"""
from __future__ import annotations

import shlex
import shutil
import signal
import sys
from pathlib import Path
from typing import Optional

import torch

__all__ = ["StopRequested", "install", "requested", "check_after_step", "resume_command", "reset", "record_stop",
           "stop_message"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_requested: Optional[int] = None


class StopRequested(BaseException):
    """Raised after the optimizer step during which SIGINT / SIGTERM arrived (a
    ``BaseException``, as ``KeyboardInterrupt``: ``except Exception`` does not catch it)."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        super().__init__(f"stopped by {signal.Signals(self.signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _record(signum, frame) -> None:
    global _requested
    if _requested is None:
        _requested = int(signum)
    for sig in SIGNALS:  # a second signal acts at once (default action: the process ends)
        signal.signal(sig, signal.SIG_DFL)


def install() -> None:
    """Record SIGINT / SIGTERM instead of acting on them (main thread only)."""
    reset()
    for sig in SIGNALS:
        signal.signal(sig, _record)


def reset() -> None:
    global _requested
    _requested = None


def requested() -> Optional[int]:
    """The recorded signal's number, or None."""
    return _requested


def check_after_step(device: torch.device, world: int = 1) -> None:
    """Raise :class:`StopRequested` if a stop was requested (on any rank, under torchrun)."""
    signum = _requested or 0
    if world > 1:
        import torch.distributed as dist

        flag = torch.tensor([signum], dtype=torch.int64, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        signum = int(flag.item())
    if signum:
        raise StopRequested(signum)


def _python() -> str:
    """``python`` when that is this interpreter on PATH, else this interpreter's path."""
    found = shutil.which("python")
    if found and Path(found).resolve() == Path(sys.executable).resolve():
        return "python"
    return shlex.quote(sys.executable)


def resume_command(last_pt: Path) -> str:
    """A shell command that continues the run of ``last_pt`` from any directory."""
    return f"{_python()} -m bbam.train train.resume={shlex.quote(str(Path(last_pt).resolve()))}"


def record_stop(out_dir: Path, text: str) -> None:
    """Write a stop's line (with its resume command) where it outlives the terminal: the
    run's ``train.log`` (through the log file handler when one writes there, else appended)
    and ``report.md``, which until the run finishes says only that it stopped and how to
    continue it."""
    import logging
    import time

    from .atomic import atomic_write_text

    out_dir = Path(out_dir)
    log_file = (out_dir / "train.log").resolve()
    record = logging.LogRecord("bbam.train", logging.WARNING, __file__, 0, text, None, None)
    handlers = [h for h in logging.getLogger().handlers + logging.getLogger("bbam").handlers
                if isinstance(h, logging.FileHandler) and Path(h.baseFilename).resolve() == log_file]
    if handlers:
        for handler in handlers:
            handler.handle(record)
    elif out_dir.is_dir():
        with open(log_file, "a", encoding="utf-8") as f:
            f.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}][bbam.train][WARNING] - {text}\n")
    if out_dir.is_dir():
        atomic_write_text(out_dir / "report.md", f"# Run stopped\n\n{text}\n\nThe report is written when the run "
                                                 "finishes.\n")


def _close_progress_bars() -> None:
    try:
        from tqdm import tqdm

        for bar in list(getattr(tqdm, "_instances", ())):
            bar.close()
    except Exception:  # pragma: no cover - cosmetics only
        pass


def stop_message(err: StopRequested, out_dir: Optional[Path]) -> str:
    """The line a stopped run prints: what ``last.pt`` holds and the command that resumes it,
    also written to the run's ``train.log`` and ``report.md`` (:func:`record_stop`). The
    progress bars are closed first, so the line stands on its own."""
    _close_progress_bars()
    last = Path(out_dir) / "checkpoints" / "last.pt" if out_dir is not None else None
    if last is None or not last.is_file():
        return f"{err} before the run wrote a checkpoint; nothing to resume"
    epoch = int(torch.load(last, map_location="cpu", weights_only=True)["epoch"])
    text = (f"{err}; last.pt holds the first {epoch} epoch(s), the interrupted one reruns; "
            f"resume with: {resume_command(last)}")
    record_stop(Path(out_dir), text)
    return text
