"""The run's steps, once (application layer): the data and its splits, the engine, training,
and what a finished run writes. :func:`train` runs them for ``python -m bbam.train``
(:mod:`bbam.train`, the command line); the scikit-learn estimator and ``bench/`` call the
same steps.

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

from bbam.data import split_indices
from bbam.devices import resolve_device

__all__ = ["train", "load_run_data", "build_engine", "split_tensors", "instantiate_data", "finish",
           "save_model_files"]

# Under Hydra this logger's INFO lines reach the console and <run folder>/train.log, its
# DEBUG lines (one per epoch, the final table) only train.log (configs/train.yaml: hydra.job_logging).
log = logging.getLogger("bbam.train")


def split_tensors(data, splits: Dict[str, torch.Tensor], device: torch.device, scaling: str):
    """Each split's (scaled) inputs and targets on ``device``, and the fitted scaler. For an
    image set, a model reading pixels gets the split's images as ``x`` (decoded per batch);
    a frozen backbone's features are ``x`` and the images ride along for image-space views.

    The scaler's statistics come from the training pool only (labeled + unlabeled
    inputs; no labels, no validation or test rows): see :mod:`bbam.app.preprocess`."""
    from bbam.app.preprocess import FeatureScaler
    from bbam.app.runtime import Split

    pool = torch.cat([splits["labeled"], splits["unlabeled"]])
    scaler = FeatureScaler(scaling).fit(data.X[pool])
    x = scaler.transform(data.X)
    images = getattr(data, "images", None)  # image sets: ImageRows, decoded per batch
    if images is not None and data.num_features == 0:  # the model reads pixels: the split's x are its images
        return {name: Split(images.subset(idx), data.Y[idx].to(device)) for name, idx in splits.items()}, scaler
    return {name: Split(x[idx].to(device), data.Y[idx].to(device), None if images is None else images.subset(idx))
            for name, idx in splits.items()}, scaler


def load_run_data(cfg, device: torch.device = torch.device("cpu"), data_record=None):
    """The run's dataset, its split (from ``cfg.split`` and ``cfg.seed``) and scaled split tensors.

    Returns ``(data, {"labeled", "unlabeled", "val", "test"}: Split, scaler)``; the same
    rows and inputs for the app, ``bench/baseline.py`` and prediction. ``train.scaling``,
    ``method.margin`` and ``method.scale`` set to ``auto`` are resolved here, in ``cfg``,
    from the training pool's features (:func:`bbam.app.preprocess.resolve_scaling`); the
    record of that choice is ``scaler.choice``. ``data_record``: where a resumed run's data
    was (:mod:`bbam.app.data_source`)."""
    from bbam.app.preprocess import resolve_scaling

    data = instantiate_data(cfg, data_record)
    splits = split_indices(data, cfg.split.lb_ratio, cfg.split.val_ratio, cfg.split.test_ratio, seed=int(cfg.seed),
                           min_val_size=int(cfg.split.min_val_size), max_val_ratio=float(cfg.split.max_val_ratio))
    choice = resolve_scaling(cfg, data.X[torch.cat([splits["labeled"], splits["unlabeled"]])])
    tensors, scaler = split_tensors(data, splits, device, choice["scaling"])
    scaler.choice = choice
    return data, tensors, scaler


def build_engine(cfg, data, tensors, device: torch.device, out_dir):
    """The method (from ``method._target_``), the model (seeded by ``cfg.seed``), the views
    of unlabeled batches (``model.views``, when the method uses views) and the
    :class:`SelfTrainingEngine` of a run."""
    from hydra.utils import instantiate

    from bbam.app.engine import SelfTrainingEngine
    from bbam.app.methods import build_method
    from bbam.app.models import MultiLabelModel

    method = build_method(cfg.method)
    torch.manual_seed(int(cfg.seed))  # model init independent of what data loading consumed
    encoder = instantiate(cfg.model.encoder, in_dim=data.num_features)
    model = MultiLabelModel(encoder, method.make_head(encoder.out_dim, data.num_labels))
    views = None
    if method.views:
        if cfg.model.get("views") is None:
            raise ValueError(f"method {method.name!r} trains on weak/strong views, but config key 'model.views' "
                             f"is not set (see configs/model/mlp.yaml)")
        views = instantiate(cfg.model.views)
        if getattr(views, "needs_images", False) and str(cfg.train.scaling) != "none":
            raise ValueError(f"model.views.space=images makes views from the frozen backbone's raw features, but "
                             f"train.scaling={cfg.train.scaling} scales the cached ones: use train.scaling=none")
    return SelfTrainingEngine(cfg, model, method, tensors, device, Path(out_dir), data.label_names, views=views)


def _resume_auto_settings(cfg, path: Path):
    """A resumed run keeps what the interrupted one used: ``train.scaling`` and
    ``angular.margin`` / ``angular.scale`` still ``auto`` take the checkpoint's values
    (``train.scaling``, ``method.margin``, ``method.scale``; a checkpoint from before
    ``auto`` existed holds concrete ones; the choice is otherwise the same, being made from
    the same pool). Returns the checkpoint's record of where the data was (or None)."""
    from omegaconf import open_dict

    from bbam.app.checkpoints import read_checkpoint
    from bbam.app.preprocess import AUTO

    keys = [("train", "scaling", "train.scaling"), ("angular", "margin", "method.margin"),
            ("angular", "scale", "method.scale")]
    _, ckpt = read_checkpoint(path, torch.device("cpu"))
    saved = ckpt.get("settings") or {}
    with open_dict(cfg):
        for sec, key, saved_key in keys:
            if sec in cfg and str(cfg[sec].get(key)) == AUTO and saved_key in saved:
                cfg[sec][key] = saved[saved_key]
    return ckpt.get("data_source")


def instantiate_data(cfg, data_record=None):
    """Build the dataset; a file or format problem surfaces as its own clear message. A
    resumed run's ``data_record`` (:mod:`bbam.app.data_source`) finds its file again."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from omegaconf.errors import MissingMandatoryValue

    from bbam.app import data_source
    from bbam.data.lookup import fetch_hint

    def build(data_cfg, **overrides):
        try:
            return instantiate(data_cfg, **overrides)
        except MissingMandatoryValue as err:  # e.g. data=npz without data.path=...
            raise ValueError(f"config key '{err.full_key}' is required: add {err.full_key}=... to the command") \
                from None
        except InstantiationException as err:
            cause = err.__cause__ or err
            hint = fetch_hint(cause.filename) if isinstance(cause, FileNotFoundError) and cause.filename else None
            if hint:  # a named set's file (data=miml, data=reuters21578_text): how to get it
                raise FileNotFoundError(2, f"{cause.strerror}: {hint}", cause.filename) from None
            if isinstance(cause, (FileNotFoundError, ValueError, ImportError)):
                raise cause from None
            raise

    return data_source.load(cfg.data, build, data_record)


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

    Writes into ``cfg.out_dir``: ``config.yaml``, ``metrics.jsonl`` (one line per epoch),
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
    from bbam.app.errors import user_input
    from bbam.app.runtime import seed_everything
    from bbam.app.stopping import record_stop, resume_command
    from bbam.app import data_source

    out_dir = Path(cfg.out_dir)
    is_main = D.rank() == 0  # only rank 0 writes
    seed_everything(int(cfg.seed), bool(cfg.deterministic))
    announce = _Announcement(lambda: log.info("run folder: %s (reading the data)", out_dir.resolve()))
    with user_input(), announce.after(2.0 if is_main else None):  # a user's mistake: bbam.app.errors
        device = resolve_device(cfg.device)
        data_record = _resume_auto_settings(cfg, Path(cfg.train.resume)) if cfg.train.resume else None
        # bad files fail here, before anything is written; a data pass that takes longer than
        # 2 s (a photo set's frozen features: minutes) is preceded by the run folder's line
        data, tensors, scaler = load_run_data(cfg, device, data_record)
    with user_input():
        engine = build_engine(cfg, data, tensors, device, out_dir)
        engine.data_source = data_source.describe(cfg.data, data)  # saved in every checkpoint
        if cfg.train.resume:
            engine.load_checkpoint(Path(cfg.train.resume))
    # config values and the checkpoint are checked above, before the run writes anything
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        # written after load_run_data: train.scaling / method.margin / method.scale as the run uses them
        atomic_write_text(out_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        if not announce.done:
            log.info("run folder: %s", out_dir.resolve())
        log.info("%s on %s: %d labeled / %d unlabeled / %d validation / %d test rows%s",
                 cfg.method.name, data.name, len(tensors["labeled"]), len(tensors["unlabeled"]),
                 len(tensors["val"]), len(tensors["test"]),
                 f" (data: {engine.data_source['file']})" if engine.data_source else "")
        # margin and scale matter to a cosine head only
        log.info("%s", scaler.choice["line"] if engine.method.head == "cosine" else
                 report.line_without_margin(scaler.choice))
    last = out_dir / "checkpoints" / "last.pt"
    if cfg.train.resume:
        log.info("resumed from epoch %d (%d epochs done) of %s", engine.state.epoch, engine.state.epoch,
                 Path(cfg.train.resume).resolve())
    elif is_main:
        atomic_save(engine._checkpoint(), last)  # the resume point of a run stopped in its first epoch
    status = engine.fit(progress=bool(cfg.train.progress), stop_after_epoch=cfg.train.stop_after_epoch)
    if status["interrupted"]:  # train.stop_after_epoch (a testing aid: as if killed)
        text = f"stopped after epoch {engine.state.epoch - 1}; continue with: {resume_command(last)}"
        if is_main:
            log.info("%s", text)
            record_stop(out_dir, text)
        return {"interrupted": True, "epoch": engine.state.epoch, "out_dir": str(out_dir)}
    if engine.stopped_early and is_main:
        log.info("%s", report.early_stop_line(engine.stopped_early))

    return finish(cfg, engine, data, tensors, scaler, out_dir)


def finish(cfg, engine, data, tensors, scaler, out_dir: Path) -> Dict[str, Any]:
    """After training: the selected checkpoint evaluated once on the test split, the
    diagnostics, and the run's files (``final_metrics.json``, ``diagnostics.json``, the
    predictor files, ``report.md``); returns the result (every rank; rank 0 writes)."""
    from bbam import distributed as D
    from bbam.app import report
    from bbam.app.atomic import atomic_write_text
    from bbam.app.diagnostics import run_diagnostics
    from bbam.app.raw_inputs import describe_inputs

    is_main = D.rank() == 0
    best = engine.load_best()  # the checkpoint selected on validation
    test = engine.evaluate("test")
    val_scores, _, _ = engine.outputs_global(tensors["val"].x, keep=("scores",))  # every rank (collective); for thresholds.json
    diag = run_diagnostics(engine, "test")  # per-label metrics, and what the method reports (angles, VDFD)
    balances = str(diag.get("stats_angles", "none")) != "none"
    if "mean_vdfd" in diag:  # an angular method's VDFD joins the test metrics (after balancing: BBAM's)
        test["vdfd"], test["vdfd_prototype"] = diag["mean_vdfd"], diag["mean_vdfd_prototype"]
        if balances:
            test["vdfd_balanced"] = diag["mean_vdfd_after"]
            test["vdfd_prototype_balanced"] = diag["mean_vdfd_prototype_after"]
    result = {
        "dataset": data.name, "method": engine.method.name, "lb_ratio": float(cfg.split.lb_ratio),
        "seed": int(cfg.seed), "best_epoch": int(best["best_epoch"]), "selected_phase": engine.selected_phase(),
        "self_training_started_from_epoch": engine.warmup_start_epoch, "epochs_run": int(engine.state.epoch),
        "best_val_mAP": float(best["best_map"]), "test": test,
        "sizes": {k: len(v) for k, v in tensors.items()}, "num_labels": data.num_labels,
    }
    result["world_size"] = D.world_size()
    result["scaling"] = scaler.choice
    result["data_source"] = engine.data_source
    result["stopped_early"] = engine.stopped_early
    # what the report shows: margin/scale only for a cosine head, "after balancing" only for BBAM
    result["method_traits"] = {"angular": engine.method.head == "cosine", "balances": balances}
    if not is_main:
        return result
    atomic_write_text(out_dir / "final_metrics.json", json.dumps(result, indent=2))
    atomic_write_text(out_dir / "diagnostics.json", json.dumps({"label_names": data.label_names, **diag}))
    save_model_files(out_dir, scaler, data, tensors["val"].y, val_scores, float(cfg.train.threshold),
                     {**describe_inputs(cfg, data), "scaling": scaler.choice})
    report.write_report(out_dir)
    table = report.metrics_table(result)
    log.debug("final metrics\n%s", table)
    if cfg.train.progress:
        print(table, file=sys.stderr)
    log.info("done: test mAP %.2f (epoch %d selected on validation); report: %s", test["mAP"], result["best_epoch"],
             out_dir.resolve() / "report.md")
    return result




def save_model_files(out_dir: Path, scaler, data, val_targets, val_scores, threshold: float, inputs=None) -> None:
    """What :class:`bbam.app.predict.Predictor` needs besides ``config.yaml`` and ``best.pt``:
    the pool-fitted scaler, the label names and per-label thresholds tuned on the selected
    model's validation scores (``val_scores`` ``[N_val, K]``), and how raw data became inputs."""
    from bbam.app.predict import save_predictor_files

    save_predictor_files(out_dir, scaler, data.num_features, data.label_names, val_scores, val_targets, threshold,
                         inputs)
