"""The training loop of the app; the method (:mod:`bbam.app.methods`) is a plugin.

Schedule (docs/METHOD.md): warm-up epochs on labeled batches with the method's warm-up
loss; then, for a semi-supervised method with unlabeled rows, epochs that start with the
method's ``refresh`` (e.g. CAP pseudo-labels, statistics, sampling masks) and pair each
unlabeled batch with a labeled one for the method's ``loss``. After every epoch: validation
with the EMA model, the best checkpoint by validation mAP, early stopping; the test set is
evaluated once, with the selected checkpoint. The engine owns batches, optimizer, EMA,
validation, selection, checkpoints and DDP; the method owns losses, per-epoch state and
how outputs become scores.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from bbam import distributed as D
from bbam import metrics as M

from . import stopping
from .atomic import atomic_save, atomic_write_text
from .batches import index_batches, split_pipelines
from .checkpoints import carry_best_checkpoint, check_resumable, engine_checkpoint, method_state
from .inference import PARTS, model_outputs, model_outputs_global
from .methods.base import MethodContext
from .models import ModelEMA, MultiLabelModel, build_optimizer
from .runtime import compiled_for_training

__all__ = ["SelfTrainingEngine", "EngineState"]

log = logging.getLogger("bbam.train.engine")  # one DEBUG line per epoch (train.log under Hydra)


@dataclass
class EngineState:
    epoch: int = 0  # epochs completed
    best_map: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    history: List[Dict[str, Any]] = field(default_factory=list)


def _cloned(state: Dict[str, Tensor]) -> Dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


class SelfTrainingEngine:
    """Runs the schedule above for one configuration.

    Args:
        plan: the run's :class:`~bbam.app.plan.RunPlan` (its config's ``seed`` and ``train``
            section, its splits' rows on its device, its record saved in checkpoints).
        model: encoder + classifier (its head as the method's ``head``).
        method: the :class:`~bbam.app.methods.Method`.
        out_dir: the run folder (checkpoints, metrics.jsonl).
        views: the view maker of unlabeled batches (:mod:`bbam.app.views`), when the
            method asks for views.
        resume: ``(path, checkpoint)`` of the ``last.pt`` to continue from, or None.
    """

    def __init__(self, plan, model: MultiLabelModel, method, out_dir: Path, views=None,
                 resume: Optional[Tuple[Path, Dict[str, Any]]] = None):
        self.plan, self.cfg, self.tc, self.seed = plan, plan.cfg, plan.cfg.train, int(plan.cfg.seed)
        self.device, self.out_dir, splits = plan.device, Path(out_dir), plan.tensors
        device = self.device
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.world, self.rank = D.world_size(), D.rank()
        self.is_main = self.rank == 0  # only rank 0 writes outputs and checkpoints
        self.stopped_early: Optional[Dict[str, int]] = None  # set by fit when train.patience ends the run
        self.model = model.to(device)
        self.ema = ModelEMA(self.model, self.tc.ema_decay).to(device)
        # DDP averages gradients over ranks; the engine scales each rank's (sum) loss by the
        # world size so that the update equals the single-process one on the global batch.
        self.train_model = self.model
        if self.world > 1:
            self.train_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)
        if bool(self.tc.get("compile", False)):  # weights, EMA and checkpoints stay on the eager module
            self.train_model = compiled_for_training(self.train_model)
        self.method, self.splits, self.label_names = method, splits, plan.data.label_names
        self.num_labels = splits["labeled"].y.shape[1]
        self.semi_supervised = bool(method.semi_supervised) and len(splits["unlabeled"]) > 0
        self.total_epochs = int(self.tc.epochs)
        self.boundary = int(self.tc.warmup_epochs) if self.semi_supervised else self.total_epochs
        if self.tc.select_from not in ("self_training", "any"):
            raise ValueError(f"config key 'train.select_from' must be 'self_training' or 'any', got {self.tc.select_from!r}")
        self.num_workers = int(self.tc.get("num_workers", 0))
        self.labeled_batches, self.unlabeled_batches = split_pipelines(self.tc, splits, views, method.views, device)
        self.optimizer, self.peak_lr = build_optimizer(self.model, self.tc, plan.model.get("optimizer"),
                                                       splits["labeled"].x if plan.inputs.feature_rows else None)
        self.scheduler: Optional[torch.optim.lr_scheduler.OneCycleLR] = None
        self.state = EngineState()
        self.amp = bool(self.tc.amp) and device.type == "cuda"
        self.warmup_best: Optional[Dict[str, Any]] = None  # best warm-up weights (train.warmup_restore_best)
        self.warmup_start_epoch: Optional[int] = None  # the warm-up epoch the semi-supervised phase started from
        self.phase_s: Dict[str, float] = {}  # this epoch's seconds per phase (cap, features, ..., steps)
        self.last_epoch_state: Dict[str, Tensor] = {}  # train.save_epoch_state
        method.bind(self.context())
        if resume is not None:
            self._resume(*resume)

    def context(self) -> MethodContext:
        """What the method sees of the run at this epoch (:class:`MethodContext`)."""
        models = {"online": self.model, "ema": self.ema.module}
        return MethodContext(
            splits=self.splits, device=self.device, world=self.world, seed=self.seed, epoch=self.state.epoch,
            feature_dim=int(self.model.classifier_weight.shape[1]), save_epoch_state=bool(self.tc.save_epoch_state),
            scores_global=lambda x, label_major=False, source="ema": self.outputs_global(
                x, models[source], keep=("scores",), label_major=label_major)[0],
            features=lambda x, source, out=None: self.outputs(x, models[source], keep=("features",),
                                                              features_out=out)[1],
            outputs=lambda x, source: self.outputs(x, models[source], keep=("outputs",))[2],
            classifier_weight=lambda source: models[source].classifier_weight, timed=self.timed,
            input_features=self.plan.inputs.feature_rows)

    @contextlib.contextmanager
    def timed(self, phase: str):
        """Adds the block's wall time to ``phase_s[phase]`` (logged per epoch as ``phase_s``)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.phase_s[phase] = self.phase_s.get(phase, 0.0) + time.perf_counter() - t0

    # ----------------------------------------------------------------- schedule
    def steps_per_epoch(self, phase: str) -> int:
        """Optimizer steps of one epoch: one pass over the phase's data (labeled rows in the
        warm-up, unlabeled rows after it), and never fewer than ``train.min_steps_per_epoch``
        -- small datasets or label ratios pass over their rows several times instead."""
        n, bs = ((len(self.splits["labeled"]), self.tc.batch_size) if phase == "warmup"
                 else (len(self.splits["unlabeled"]), self.tc.unlabeled_batch_size))
        return max(1, math.ceil(n / bs), int(self.tc.min_steps_per_epoch))

    def _make_scheduler(self, phase: str) -> torch.optim.lr_scheduler.OneCycleLR:
        # one OneCycle per phase, spanning exactly the epochs that phase runs
        epochs = self.boundary if phase == "warmup" else self.total_epochs - self.boundary
        lr = self.peak_lr * (1.0 if phase == "warmup" else self.tc.self_training_lr_scale)
        peaks = [lr * group.get("lr_scale", 1.0) for group in self.optimizer.param_groups]  # e.g. a backbone's lower lr
        for group, peak in zip(self.optimizer.param_groups, peaks):
            group["lr"] = peak
        return torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=peaks, total_steps=max(1, epochs * self.steps_per_epoch(phase)),
            pct_start=self.tc.pct_start)

    def _rank_batches(self, n: int, batch_size: int, epoch: int, stream: int, min_batches: int = 1) -> List[Tensor]:
        """This rank's part of each global index batch (every rank sees the same global batches)."""
        batches = index_batches(n, batch_size, self.seed, epoch, stream, min_batches, device=self.device)
        return [idx[self.rank::self.world] for idx in batches]

    # ----------------------------------------------------------------- model outputs
    def outputs(self, x: Tensor, model=None, **kwargs) -> Tuple[Optional[Tensor], ...]:
        """:func:`bbam.app.inference.model_outputs` with the method's scores (default model: EMA)."""
        kwargs.setdefault("num_workers", self.num_workers)
        return model_outputs(self.ema.module if model is None else model, self.method, x, amp=self.amp, **kwargs)

    def outputs_global(self, x: Tensor, model=None, keep: Sequence[str] = PARTS, label_major: bool = False):
        """:func:`bbam.app.inference.model_outputs_global` (every rank gets every row)."""
        return model_outputs_global(self.ema.module if model is None else model, self.method, x, amp=self.amp,
                              keep=keep, label_major=label_major, num_workers=self.num_workers)

    def evaluate(self, split: str, model=None) -> Dict[str, float]:
        s = self.splits[split]
        scores, _, _ = self.outputs_global(s.x, model, keep=("scores",))  # whole split, every rank
        return M.evaluate(scores, s.y, threshold=self.tc.threshold, oracle_cardinality=self.tc.oracle_cardinality)

    # ----------------------------------------------------------------- epochs
    def _forward(self, xs: Sequence[Tensor]) -> List[Tensor]:
        """One forward of the concatenated inputs (DDP syncs once per step); each part's outputs."""
        _, outs = self.train_model(torch.cat(list(xs)))
        return [part.float() for part in outs.split([x.shape[0] for x in xs])]

    def _step(self, loss_of) -> float:
        """One optimizer step on ``loss_of(forward)``."""
        self.train_model.train()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            total = loss_of(self._forward)
        self.optimizer.zero_grad(set_to_none=True)
        (total * self.world).backward()
        self.optimizer.step()
        self.scheduler.step()
        self.ema.update(self.model)
        stopping.check_after_step(self.device, self.world)  # issue 18: a requested stop ends the run here
        return float(total.detach())

    def _global_mean(self, losses: List[float]) -> float:
        """Mean per-step loss of the global batches: each rank's (sum-reduced) loss covers its
        part of a batch, so the ranks' values add up (one all-reduce per epoch)."""
        return D.sum_over_ranks(float(np.mean(losses)), self.device)

    def _warmup_epoch(self, epoch: int) -> Dict[str, Any]:
        batches = self._rank_batches(len(self.splits["labeled"]), self.tc.batch_size, epoch, 0,
                                     self.steps_per_epoch("warmup"))
        with self.timed("steps"):
            losses = [self._step(lambda forward, lb=lb: self.method.warmup_loss(forward, lb))
                      for lb in self.labeled_batches(batches, self.seed, epoch, self.rank)]
        return {"train_loss": self._global_mean(losses)}

    def _semi_supervised_epoch(self, epoch: int) -> Dict[str, Any]:
        logged = self.method.refresh(self.context())
        lb_plan = self._rank_batches(len(self.splits["labeled"]), self.tc.batch_size, epoch, 0)
        ub_plan = self._rank_batches(len(self.splits["unlabeled"]), self.tc.unlabeled_batch_size, epoch, 1,
                             self.steps_per_epoch("self_training"))
        labeled = itertools.cycle(self.labeled_batches(lb_plan, self.seed, epoch, self.rank))
        losses = []
        with self.timed("steps"):
            for ub in self.unlabeled_batches(ub_plan, self.seed, epoch, self.rank):
                lb = next(labeled)
                losses.append(self._step(lambda forward: self.method.loss(forward, lb, ub)))
        self.last_epoch_state = self.method.epoch_state() if self.tc.save_epoch_state else {}
        return {"train_loss": self._global_mean(losses), **logged, **self.method.end_epoch()}

    # ----------------------------------------------------------------- checkpoints
    def _resume(self, path: Path, ckpt: Dict[str, Any]) -> None:
        """Continue from a ``last.pt`` (``path``, and ``ckpt`` as read once by the caller)."""
        check_resumable(path, ckpt, self.cfg, {"num_labels": self.num_labels, "seed": self.seed,
                                               "method": self.method.name}, self.plan.resolved())
        if self.is_main:
            carry_best_checkpoint(path, ckpt["best_epoch"], self.ckpt_dir)
        self._load_weights(ckpt)
        self.warmup_best, self.warmup_start_epoch = ckpt.get("warmup_best"), ckpt.get("warmup_start_epoch")
        self.state = EngineState(ckpt["epoch"], ckpt["best_map"], ckpt["best_epoch"], ckpt["bad_epochs"],
                                 list(ckpt["history"]))
        if ckpt["scheduler"] is not None:
            phase = "warmup" if self.state.epoch - 1 < self.boundary else "self_training"  # of the last epoch
            self.scheduler = self._make_scheduler(phase)
            self.scheduler.load_state_dict(ckpt["scheduler"])
        # after the scheduler, whose construction resets the learning rates of the param groups
        self.optimizer.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["rng_cpu"].cpu())
        if ckpt["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in ckpt["rng_cuda"]])

    def _load_weights(self, ckpt: Dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.ema.load_state_dict(ckpt["ema"])
        self.method.load_state_dict(method_state(ckpt))

    def load_best(self) -> Dict[str, Any]:
        ckpt = torch.load(self.ckpt_dir / "best.pt", map_location=self.device, weights_only=True)
        self._load_weights(ckpt)
        return ckpt

    def _save(self, improved: bool) -> None:
        with self.timed("checkpoint"):  # in metrics.jsonl, not in the checkpoint's own history
            ckpt = engine_checkpoint(self)  # the run's state as last.pt / best.pt hold it
            if improved:
                atomic_save(ckpt, self.ckpt_dir / "best.pt")
            atomic_save(ckpt, self.ckpt_dir / "last.pt")
        atomic_write_text(self.out_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in self.state.history))
        if self.last_epoch_state:
            atomic_save(self.last_epoch_state, self.out_dir / "epoch_state.pt")

    # ----------------------------------------------------------------- main loop
    def fit(self, progress: bool = True, stop_after_epoch: Optional[int] = None) -> Dict[str, Any]:
        """Train until the last epoch or early stop. Returns ``{"interrupted": bool}``; an
        early stop sets :attr:`stopped_early` (``after_epochs``, ``patience``, ``max_epochs``)."""
        from tqdm.auto import tqdm

        self.out_dir.mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=self.total_epochs, initial=self.state.epoch, desc=self.method.name,
                   disable=not (progress and self.is_main), dynamic_ncols=True, leave=True)
        while self.state.epoch < self.total_epochs:
            epoch = self.state.epoch
            phase = "warmup" if epoch < self.boundary else "self_training"
            if epoch == self.boundary and self.warmup_best is not None:
                self._restore_warmup_best()
            if epoch == 0 or epoch == self.boundary or self.scheduler is None:
                self.scheduler = self._make_scheduler(phase)
            t0 = time.perf_counter()
            self.phase_s = {}
            record: Dict[str, Any] = {"epoch": epoch, "phase": phase}
            record.update(self._warmup_epoch(epoch) if phase == "warmup" else self._semi_supervised_epoch(epoch))
            record["lr"] = self.optimizer.param_groups[0]["lr"]
            with self.timed("evaluation"):
                val = self.evaluate("val")
            record.update({f"val_{k}": v for k, v in val.items()})
            record["time_s"] = time.perf_counter() - t0
            record["phase_s"] = self.phase_s  # seconds per phase: cap, features, statistics, sampling, steps, ...
            self.state.epoch = epoch + 1
            if (phase == "warmup" and self.semi_supervised and self.tc.warmup_restore_best
                    and (self.warmup_best is None or val["mAP"] > self.warmup_best["map"])):
                self.warmup_best = {"map": val["mAP"], "epoch": epoch, "model": _cloned(self.model.state_dict()),
                                    "ema": _cloned(self.ema.state_dict())}
            improved = self._selectable(phase) and val["mAP"] > self.state.best_map
            if improved:
                self.state.best_map, self.state.best_epoch, self.state.bad_epochs = val["mAP"], epoch, 0
            elif phase == "self_training" or not self.semi_supervised:
                self.state.bad_epochs += 1  # patience counts once the method's own phase runs
            self.state.history.append(record)
            if self.is_main:
                best = (f"best {self.state.best_map:.2f} (epoch {self.state.best_epoch})" if self.state.best_epoch >= 0
                        else "no selectable epoch yet")
                log.debug("epoch %d (%s): train loss %.4g, val mAP %.2f, %s, %.1f s", epoch, phase,
                          record["train_loss"], val["mAP"], best, record["time_s"])
                self._save(improved)
            if self.world > 1:
                torch.distributed.barrier()  # the others wait for the files (resume, load_best)
            bar.update(1)
            bar.set_postfix(loss=f"{record['train_loss']:.3g}", val_mAP=f"{val['mAP']:.2f}",
                            best=f"{self.state.best_map:.2f}" if self.state.best_epoch >= 0 else "-")
            if stop_after_epoch is not None and epoch >= stop_after_epoch:
                bar.close()
                return {"interrupted": True}
            if self.state.bad_epochs >= self.tc.patience:
                self.stopped_early = {"after_epochs": self.state.epoch, "patience": int(self.tc.patience),
                                      "max_epochs": int(self.total_epochs)}
                bar.set_description(f"{self.method.name} (stopped early: train.patience)")
                break
        bar.close()
        return {"interrupted": False}

    def _restore_warmup_best(self) -> None:
        """The semi-supervised phase starts from the warm-up epoch with the best validation mAP
        (``train.warmup_restore_best``): on a small labeled set the last warm-up epoch has
        often overfitted it. The optimizer's moments start afresh with the new phase."""
        self.model.load_state_dict(self.warmup_best["model"])
        self.ema.load_state_dict(self.warmup_best["ema"])
        self.optimizer.state.clear()
        self.warmup_start_epoch = int(self.warmup_best["epoch"])
        self.warmup_best = None

    def _selectable(self, phase: str) -> bool:
        """Whether an epoch of ``phase`` may be selected as the run's model.

        ``train.select_from: self_training`` (default): a semi-supervised method is the model
        its own phase trains, never its warm-up model (which is the supervised baseline);
        ``any``: every epoch competes on validation mAP."""
        if not self.semi_supervised or self.tc.select_from == "any" or self.total_epochs <= self.boundary:
            return True
        return phase == "self_training"

    def selected_phase(self) -> str:
        if not self.semi_supervised:
            return "supervised"
        return "warmup" if 0 <= self.state.best_epoch < self.boundary else "self_training"
