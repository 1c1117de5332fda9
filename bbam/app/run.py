"""The run's steps, once (application layer): the plan (:func:`bbam.app.plan.prepare`), the
engine built from it, training, and what a finished run writes. :func:`train` runs them
for ``python -m bbam.train`` (:mod:`bbam.train`, the command line); the scikit-learn
estimator and ``bench/`` call the same steps.

``train(cfg)`` is a plain function returning the final metrics (no signal handling, no Hydra
needed). Under torchrun it joins the process group (and leaves it at the end) unless the
caller already did.
"""
from __future__ import annotations

import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import Any, Dict

import torch

from bbam.app.build import build_engine
from bbam.devices import resolve_device

__all__ = ["train", "build_engine", "finish", "save_model_files"]

# Under Hydra this logger's INFO lines reach the console and <run folder>/train.log, its
# DEBUG lines (one per epoch, the final table) only train.log (configs/train.yaml: hydra.job_logging).
log = logging.getLogger("bbam.train")


class _Announcement:
    """A log line said once, when a block takes longer than a delay (a fast failure of the
    block then prints only its own error)."""

    def __init__(self, say):
        self.say, self.done = say, False

    def _fire(self) -> None:
        from tqdm.contrib.logging import logging_redirect_tqdm

        self.done = True
        with logging_redirect_tqdm():  # on a line of its own above a progress bar being drawn
            self.say()

    @contextlib.contextmanager
    def after(self, delay_s):
        import threading

        timer = None if delay_s is None else threading.Timer(delay_s, self._fire)
        if timer is not None:
            timer.daemon = True
            timer.start()
        try:
            yield
        finally:
            if timer is not None:
                timer.cancel()
                timer.join()


def _init_distributed(cfg) -> bool:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): gloo on CPU,
    nccl on GPU, with a timeout on collectives so a dead rank brings the job down.
    Returns whether this call created the group (then :func:`train` destroys it)."""
    import datetime
    import os

    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or dist.is_initialized():
        return False
    use_cuda = torch.cuda.is_available() and str(cfg.device) in ("auto", "cuda")
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if use_cuda else "gloo",
                            timeout=datetime.timedelta(seconds=float(cfg.dist.timeout_s)))
    return True


def train(cfg) -> Dict[str, Any]:
    """Run one configuration end to end and return the test metrics (and run facts).

    Writes into ``cfg.out_dir``: ``config.yaml`` (as given), ``plan.json`` (what
    :func:`bbam.app.plan.prepare` resolved), ``metrics.jsonl`` (one line per epoch),
    ``checkpoints/{best,last}.pt``, ``final_metrics.json``, ``diagnostics.json``,
    ``report.md``, PNG plots, and the prediction files ``scaler.pt``, ``labels.json``,
    ``thresholds.json`` (see :mod:`bbam.app.predict`). Under torchrun it joins the process group (and leaves
    it at the end) unless the caller already did.
    """
    owns_group = _init_distributed(cfg)
    try:
        result = _train(cfg)
        if owns_group:
            import torch.distributed as dist

            dist.barrier()  # every rank leaves together, once rank 0 has written the run's files
        return result
    finally:
        if owns_group:
            # Explicit teardown, as torch asks. A rank can still abort at interpreter exit
            # ("terminate called without an active exception", seen twice in CI): main()
            # therefore ends torchrun workers without that teardown.
            import torch.distributed as dist

            dist.destroy_process_group()


def _train(cfg) -> Dict[str, Any]:
    from omegaconf import OmegaConf

    from bbam.app import report
    from bbam import distributed as D
    from bbam.app.atomic import atomic_save, atomic_write_text
    from bbam.app.checkpoints import engine_checkpoint, read_checkpoint
    from bbam.app.errors import user_input
    from bbam.app.plan import prepare
    from bbam.app.runtime import seed_everything
    from bbam.app.stopping import record_stop, resume_command

    out_dir = Path(cfg.out_dir)
    is_main = D.rank() == 0  # only rank 0 writes
    seed_everything(int(cfg.seed), bool(cfg.deterministic))
    announce = _Announcement(lambda: log.info("run folder: %s (reading the data)", out_dir.resolve()))
    with user_input(), announce.after(2.0 if is_main else None):  # a user's mistake: bbam.app.errors
        # bad files fail here, before anything is written; a data pass that takes longer than
        # 2 s (a photo set's frozen features: minutes) is preceded by the run folder's line.
        # A resumed run's checkpoint is read once, on the CPU: for the plan, then the engine.
        resume = read_checkpoint(Path(cfg.train.resume), torch.device("cpu")) if cfg.train.resume else None
        plan = prepare(cfg, resolve_device(cfg.device), resume=None if resume is None else resume[1])
    with user_input():
        engine = build_engine(plan, out_dir, resume)
    resumed_from = None if resume is None else resume[0]
    del resume  # its weights now live in the engine
    # config values and the checkpoint are checked above, before the run writes anything
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "config.yaml", OmegaConf.to_yaml(plan.cfg, resolve=True))
        atomic_write_text(out_dir / "plan.json", json.dumps(plan.record, indent=2))
        if not announce.done:
            log.info("run folder: %s", out_dir.resolve())
        sizes = plan.sizes
        log.info("%s on %s: %d labeled / %d unlabeled / %d validation / %d test rows%s",
                 engine.method.name, plan.data.name, sizes["labeled"], sizes["unlabeled"], sizes["val"],
                 sizes["test"], f" (data: {plan.data_source['file']})" if plan.data_source else "")
        log.info("%s", report.scaling_line(plan.scaling, engine.method.traits()))
    last = out_dir / "checkpoints" / "last.pt"
    if resumed_from is not None:
        log.info("resumed from epoch %d (%d epochs done) of %s", engine.state.epoch, engine.state.epoch,
                 resumed_from.resolve())
    elif is_main:
        atomic_save(engine_checkpoint(engine), last)  # the resume point of a run stopped in its first epoch
    status = engine.fit(progress=bool(cfg.train.progress), stop_after_epoch=cfg.train.stop_after_epoch)
    if status["interrupted"]:  # train.stop_after_epoch (a testing aid: as if killed)
        text = f"stopped after epoch {engine.state.epoch - 1}; continue with: {resume_command(last)}"
        if is_main:
            log.info("%s", text)
            record_stop(out_dir, text)
        return {"interrupted": True, "epoch": engine.state.epoch, "out_dir": str(out_dir)}
    if engine.stopped_early and is_main:
        log.info("%s", report.early_stop_line(engine.stopped_early))

    return finish(plan, engine, out_dir)


def finish(plan, engine, out_dir: Path) -> Dict[str, Any]:
    """After training: the selected checkpoint evaluated once on the test split, the
    diagnostics, and the run's files (``final_metrics.json``, ``diagnostics.json``, the
    predictor files, ``report.md``); returns the result (every rank; rank 0 writes)."""
    from bbam import distributed as D
    from bbam.app import report
    from bbam.app.atomic import atomic_write_text
    from bbam.app.diagnostics import run_diagnostics

    cfg, data, tensors = plan.cfg, plan.data, plan.tensors
    is_main = D.rank() == 0
    best = engine.load_best()  # the checkpoint selected on validation
    test = engine.evaluate("test")
    val_scores, _, _ = engine.outputs_global(tensors["val"].x, keep=("scores",))  # every rank (collective); for thresholds.json
    diag = run_diagnostics(engine, "test")  # per-label metrics, and what the method reports (angles, VDFD)
    traits = engine.method.traits()
    if "mean_vdfd" in diag:  # an angular method's VDFD joins the test metrics (after balancing: BBAM's)
        test["vdfd"], test["vdfd_prototype"] = diag["mean_vdfd"], diag["mean_vdfd_prototype"]
        if traits["balances"]:
            test["vdfd_balanced"] = diag["mean_vdfd_after"]
            test["vdfd_prototype_balanced"] = diag["mean_vdfd_prototype_after"]
    result = {
        "dataset": data.name, "method": engine.method.name, "lb_ratio": float(cfg.split.lb_ratio),
        "seed": int(cfg.seed), "best_epoch": int(best["best_epoch"]), "selected_phase": engine.selected_phase(),
        "self_training_started_from_epoch": engine.warmup_start_epoch, "epochs_run": int(engine.state.epoch),
        "best_val_mAP": float(best["best_map"]), "test": test,
        "sizes": plan.sizes, "num_labels": data.num_labels,
    }
    result["world_size"] = D.world_size()
    result["scaling"] = dict(plan.scaling)
    result["data_source"] = plan.data_source
    result["stopped_early"] = engine.stopped_early
    result["method_traits"] = traits  # what the report shows: margin/scale for a cosine head, balancing for BBAM
    if not is_main:
        return result
    atomic_write_text(out_dir / "final_metrics.json", json.dumps(result, indent=2))
    atomic_write_text(out_dir / "diagnostics.json", json.dumps({"label_names": data.label_names, **diag}))
    save_model_files(out_dir, plan, val_scores)
    report.write_report(out_dir)
    table = report.metrics_table(result)
    log.debug("final metrics\n%s", table)
    if cfg.train.progress:
        print(table, file=sys.stderr)
    log.info("done: test mAP %.2f (epoch %d selected on validation); report: %s", test["mAP"], result["best_epoch"],
             out_dir.resolve() / "report.md")
    return result


def save_model_files(out_dir: Path, plan, val_scores) -> None:
    """What :class:`bbam.app.predict.Predictor` needs besides ``config.yaml`` and ``best.pt``:
    the pool-fitted scaler, the label names, per-label thresholds tuned on the selected
    model's validation scores (``val_scores`` ``[N_val, K]``), and how raw data became inputs
    with the scaling / margin / scale the plan chose (``inputs.json``)."""
    from bbam.app.predict import save_predictor_files

    save_predictor_files(out_dir, plan.scaler, plan.num_features, plan.data.label_names, val_scores,
                         plan.tensors["val"].y, float(plan.cfg.train.threshold),
                         {**plan.inputs.record(), "scaling": dict(plan.scaling)})
