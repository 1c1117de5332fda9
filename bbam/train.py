"""``python -m bbam.train``: S2ML2-BBAM training with Hydra configs (the command line).

With no arguments it runs the full method on the embedded synthetic dataset. Examples::

    python -m bbam.train                                   # bbam on synthetic data
    python -m bbam.train method=cap data=emotions split.lb_ratio=0.05
    python -m bbam.train -m split.lb_ratio=0.05,0.1,0.2 method=bbam,bam,cap,supervised seed=0,1,2
    python -m bbam.train train.resume=outputs/<run>/checkpoints/last.pt   # continue a stopped or killed run

``main()`` adds to Hydra: config mistakes in one line (:mod:`bbam.app.overrides`), a resume
from the checkpoint alone (:mod:`bbam.app.resume`), graceful SIGINT / SIGTERM stops
(:mod:`bbam.app.stopping`) and one-line user errors (:mod:`bbam.app.errors`). The run's
steps are :mod:`bbam.app.run`; ``train`` and ``compose_config`` are importable from here too,
for a run from Python as the command line makes it.
"""
from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path
from typing import Any, Dict

from bbam.app.config import compose_config, config_dir
from bbam.app.run import train

__all__ = ["main", "train", "compose_config", "config_dir"]


def _after_failure(out_dir: Path, quiet: bool = False) -> None:
    """A run that failed before it wrote anything of its own leaves no folder behind (Hydra
    creates it with only ``.hydra/`` and an empty ``train.log``), nor the parents Hydra
    created for it (``outputs/<data>/<method>/``, up to the launch folder); otherwise say where
    it is. ``quiet``: a user's mistake, whose own message is all that is printed."""
    if not out_dir.is_dir():
        return
    own = [p.name for p in out_dir.iterdir() if p.name not in (".hydra", "train.log")]
    if not own:
        shutil.rmtree(out_dir, ignore_errors=True)
        _remove_empty_parents(out_dir)
        if not quiet:
            print(f"bbam.train: the run failed before training; removed its empty folder {out_dir}", file=sys.stderr)
    elif (out_dir / "checkpoints" / "last.pt").is_file():
        from bbam.app.stopping import resume_command

        print(f"bbam.train: the run failed; its folder is {out_dir} "
              f"(continue with: {resume_command(out_dir / 'checkpoints' / 'last.pt')})", file=sys.stderr)
    else:
        print(f"bbam.train: the run failed; its folder is {out_dir}", file=sys.stderr)


def _remove_empty_parents(folder: Path) -> None:
    """Remove the empty folders above ``folder`` inside the launch folder (not the launch folder)."""
    cwd = Path.cwd().resolve()
    parent = folder.resolve().parent
    while parent != cwd and cwd in parent.parents:
        try:
            parent.rmdir()  # only succeeds when empty
        except OSError:
            return
        parent = parent.parent


def _is_rank0() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def _exit(code: int) -> None:
    """Leave with ``code``; a torchrun worker leaves without the C++ teardown (see main)."""
    import os

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        os._exit(code)
    sys.exit(code)


def _report_and_exit(err: BaseException, out_dir: Path = None) -> None:
    """A graceful stop or a user's mistake: one line on stderr, no traceback, and the exit
    status (128 + signal number, or 2). Any other error is re-raised (its traceback shown)."""
    from bbam.app.errors import USER_ERROR_EXIT, is_user_error, short_message, show_traceback
    from bbam.app.stopping import StopRequested, stop_message

    if isinstance(err, StopRequested):
        if _is_rank0():  # with its resume command, also in train.log and report.md
            print(f"bbam.train: {stop_message(err, out_dir)}", file=sys.stderr)
        _exit(err.exit_code)
    if is_user_error(err) and not show_traceback():
        if _is_rank0():
            print(f"bbam.train: error: {short_message(err)}", file=sys.stderr)
        _exit(USER_ERROR_EXIT)
    raise err


def _resume_main(value: str, argv) -> None:
    """``train.resume=<last.pt>``: continue that run with its own settings (bbam.app.resume)."""
    import os

    from bbam.app import resume
    from bbam.app.errors import user_input

    out_dir = None
    created = False
    try:
        with user_input():
            plan = resume.plan(value, argv)
        out_dir = Path(plan.cfg.out_dir)
        created = not out_dir.exists()
        if plan.launch_dir is not None:
            os.chdir(plan.launch_dir)  # relative paths in the run's settings mean what they meant
        resume.configure_logging(out_dir, config_dir())
        train(plan.cfg)
    except BaseException as err:  # noqa: B902 - stops and user errors end here, the rest re-raised
        from bbam.app.errors import is_user_error

        if created and out_dir is not None and _is_rank0() and is_user_error(err):
            _after_failure(out_dir, quiet=True)
        _report_and_exit(err, out_dir)


def main() -> None:
    """Entry point of ``python -m bbam.train``: Hydra, or a resume from a checkpoint alone.

    SIGINT / SIGTERM stop the run gracefully (:mod:`bbam.app.stopping`); a user's mistake
    prints one line (:mod:`bbam.app.errors`)."""
    import os

    import hydra

    from bbam.app import stopping
    from bbam.app.resume import resume_value

    stopping.install()
    argv = sys.argv[1:]
    value = resume_value(argv)
    if value is not None and not any(a.startswith("-") for a in argv):
        _resume_main(value, argv)
    else:
        from bbam.app.overrides import check_overrides

        try:
            check_overrides(argv)  # a misspelt key or choice: one line, status 2 (not Hydra's page)
        except BaseException as err:  # noqa: B902 - user errors end here, the rest re-raised
            _report_and_exit(err)
        failure: Dict[str, Any] = {}

        @hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
        def _run(cfg) -> float:
            from bbam.app.errors import is_user_error, show_traceback
            from bbam.app.stopping import StopRequested

            try:
                return train(cfg).get("test", {}).get("mAP", float("nan"))
            except BaseException as err:
                from hydra.core.hydra_config import HydraConfig

                # only Hydra's own run folder (not a folder the user named with out_dir=); only
                # rank 0 (the process group is gone by now)
                hydra_dir = Path(HydraConfig.get().runtime.output_dir)
                handled = isinstance(err, StopRequested) or (is_user_error(err) and not show_traceback())
                if _is_rank0() and Path(cfg.out_dir).resolve() == hydra_dir.resolve():
                    if not isinstance(err, StopRequested):
                        _after_failure(hydra_dir, quiet=handled)
                if not handled:
                    raise
                failure.update(error=err, out_dir=Path(cfg.out_dir))
                return float("nan")

        _run()
        if failure:
            _report_and_exit(failure["error"], failure["out_dir"])
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # A torchrun worker whose work is done and written leaves without the interpreter's
        # C++ teardown: torch's distributed threads can abort a process there ("terminate
        # called without an active exception", seen in CI), and torchrun then fails the job
        # and kills the other ranks, still writing. Every file was written atomically before.
        _exit(0)


if __name__ == "__main__":
    main()
