"""The S2ML2-BBAM self-training engine (application layer).

Schedule (docs/METHOD.md): warm-up on labeled data with the unbalanced loss; then
every epoch (1) CAP pseudo-labels for the unlabeled set from the EMA model with the
inference transform (never the unlabeled samples' true labels), (2) features of
labeled + pseudo-labeled samples -> prototypes and :class:`bbam.LabelAngleStats`,
(3) prototype-based negative-sampling masks (labeled masks refreshed too),
(4) one epoch over unlabeled batches, each paired with a labeled batch, loss
``L_lb + L_ub``, (5) validation with the EMA model; best checkpoint by validation
mAP, early stopping; the test set is evaluated once, with the selected checkpoint.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

import bbam
from bbam import distributed as D
from bbam import metrics as M
from bbam.app.atomic import atomic_save, atomic_write_text
from bbam.cap import CAPLabeler
from bbam.functional import identity_coefficients
from bbam.losses import BBAMLoss
from bbam.stats import LabelAngleStats

from . import stopping  # issue 18: graceful SIGINT / SIGTERM stops (bbam/app/stopping.py)
from .diagnostics import pseudo_label_summary
from .checkpoints import carry_best_checkpoint, check_same_settings, read_checkpoint, run_settings
from .models import ModelEMA, MultiLabelModel

__all__ = ["SelfTrainingEngine", "atomic_save", "atomic_write_text", "seed_everything", "resolve_device"]

PARTS = ("scores", "features", "outputs")  # what SelfTrainingEngine.predict can return
log = logging.getLogger("bbam.train.engine")  # one DEBUG line per epoch (train.log under Hydra)


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"config key 'device' is {name!r} but CUDA is not available")
    return device


@dataclass
class Split:
    """One split's inputs and (possibly hidden) targets, on the training device."""

    x: Tensor
    y: Tensor  # int8 {0, 1}: true labels (hidden from the learner for the unlabeled split)

    def __len__(self) -> int:
        return self.x.shape[0]


@dataclass
class EngineState:
    epoch: int = 0  # epochs completed
    best_map: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    history: List[Dict[str, Any]] = field(default_factory=list)


def _cloned(state: Dict[str, Tensor]) -> Dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


# ---------------------------------------------------------------------------
# engine
# ---------------------------------------------------------------------------
class SelfTrainingEngine:
    """Runs the schedule above for one configuration.

    Args:
        cfg: the run's config (``train``, ``method`` sections used here).
        model: encoder + classifier.
        losses: ``{"warmup": module, "train": module}``.
        sampler: a negative sampler with ``select(features, prototypes, targets)``, or None.
        splits: ``labeled``, ``unlabeled``, ``val``, ``test`` :class:`Split` s.
        out_dir: run folder (checkpoints, metrics.jsonl).
    """

    def __init__(self, cfg, model: MultiLabelModel, losses: Dict[str, torch.nn.Module], sampler,
                 splits: Dict[str, Split], device: torch.device, out_dir: Path, label_names: List[str]):
        self.cfg, self.tc, self.mc = cfg, cfg.train, cfg.method
        self.device, self.out_dir = device, Path(out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.world, self.rank = D.world_size(), D.rank()
        self.is_main = self.rank == 0  # only rank 0 writes outputs and checkpoints
        self.model = model.to(device)
        self.ema = ModelEMA(self.model, self.tc.ema_decay).to(device)
        # DDP averages gradients over ranks; the engine scales each rank's (sum) loss by the
        # world size so that the update equals the single-process one on the global batch.
        self.train_model = self.model
        if self.world > 1:
            self.train_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)
        self.losses, self.sampler = losses, sampler
        self.splits, self.label_names = splits, label_names
        K = splits["labeled"].y.shape[1]
        self.num_labels = K
        self.self_training = bool(self.mc.self_training) and len(splits["unlabeled"]) > 0
        self.boundary = int(self.tc.warmup_epochs) if self.self_training else int(self.tc.epochs)
        self.total_epochs = int(self.tc.epochs)
        self.stats = LabelAngleStats(K, gamma=self.mc.stats_gamma).to(device) if self.mc.balance else None
        self.cap = CAPLabeler(pos_per=self.mc.cap.pos_per, neg_per=self.mc.cap.neg_per) if self.self_training else None
        if self.cap is not None:
            self.cap.fit(splits["labeled"].y)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.tc.lr, weight_decay=self.tc.weight_decay)
        self.scheduler: Optional[torch.optim.lr_scheduler.OneCycleLR] = None
        self.state = EngineState()
        self.amp = bool(self.tc.amp) and device.type == "cuda"
        self.last_pseudo: Optional[Dict[str, Tensor]] = None
        self.prototypes: Optional[Tensor] = None
        self.warmup_best: Optional[Dict[str, Any]] = None  # best warm-up weights (train.warmup_restore_best)
        self.warmup_start_epoch: Optional[int] = None  # the warm-up epoch self-training started from
        self.phase_s: Dict[str, float] = {}  # this epoch's seconds per phase (cap, features, ..., steps)
        if self.tc.select_from not in ("self_training", "any"):
            raise ValueError(f"config key 'train.select_from' must be 'self_training' or 'any', got {self.tc.select_from!r}")
        if self.mc.features_from not in ("online", "ema"):
            raise ValueError(f"config key 'method.features_from' must be 'online' or 'ema', got {self.mc.features_from!r}")
        if self.mc.stats_angles not in ("prototype", "classifier"):
            raise ValueError(f"config key 'method.stats_angles' must be 'prototype' or 'classifier', "
                             f"got {self.mc.stats_angles!r}")

    @contextlib.contextmanager
    def _timed(self, phase: str):
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

    # ----------------------------------------------------------------- batches
    def _batches(self, n: int, batch_size: int, epoch: int, stream: int, min_batches: int = 1):
        """Shuffled index batches, at least ``min_batches`` of them (the rows are reshuffled
        and passed over again as needed; a last partial batch only ends the final pass).
        The order depends only on (seed, epoch, stream) so that a resumed run sees the same
        batches as an uninterrupted one."""
        batches, rep = [], 0
        while not batches or len(batches) < min_batches:
            g = torch.Generator().manual_seed(int(self.cfg.seed) * 1_000_003 + epoch * 101 + stream + 7919 * rep)
            perm = torch.randperm(n, generator=g)
            batches += [perm[i:i + batch_size].to(self.device) for i in range(0, n, batch_size)]
            rep += 1
        return batches[:max(min_batches, math.ceil(n / batch_size))]

    def _local(self, idx: Tensor) -> Tensor:
        """This rank's part of a global batch (every rank sees the same global batches)."""
        return idx[self.rank::self.world]

    def _steps_per_epoch(self, phase: str) -> int:
        """Optimizer steps of one epoch: one pass over the phase's data (labeled rows in the
        warm-up, unlabeled rows in self-training), and never fewer than
        ``train.min_steps_per_epoch`` -- small datasets or label ratios pass over their rows
        several times instead of training for a handful of steps."""
        n, bs = ((len(self.splits["labeled"]), self.tc.batch_size) if phase == "warmup"
                 else (len(self.splits["unlabeled"]), self.tc.unlabeled_batch_size))
        return max(1, math.ceil(n / bs), int(self.tc.min_steps_per_epoch))

    def _make_scheduler(self, phase: str) -> torch.optim.lr_scheduler.OneCycleLR:
        # one OneCycle per phase, spanning exactly the epochs that phase runs
        epochs = self.boundary if phase == "warmup" else self.total_epochs - self.boundary
        lr = self.tc.lr * (1.0 if phase == "warmup" else self.tc.self_training_lr_scale)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=lr, total_steps=max(1, epochs * self._steps_per_epoch(phase)),
            pct_start=self.tc.pct_start)

    # ----------------------------------------------------------------- model outputs
    def coefficients(self) -> Tuple[Tensor, Tensor]:
        if self.stats is None:
            return identity_coefficients(self.num_labels, device=self.device)
        return self.stats.coefficients()

    def _loss(self, loss_fn, outputs: Tensor, targets: Tensor, weight: Optional[Tensor], coefs) -> Tensor:
        if isinstance(loss_fn, BBAMLoss):
            return loss_fn(outputs, targets, weight, coefficients=coefs)
        return loss_fn(outputs, targets, weight)

    @torch.no_grad()
    def predict_global(self, x: Tensor, model=None, keep: Sequence[str] = PARTS,
                       label_major: bool = False) -> Tuple[Optional[Tensor], ...]:
        """:meth:`predict` on all rows of ``x``, each rank computing its shard (rows
        ``rank, rank + world, ...``), gathered back into row order on every rank."""
        if self.world == 1:
            return self.predict(x, model, keep=keep, label_major=label_major)
        n = x.shape[0]
        local = self.predict(x[D.shard_indices(n, device=x.device)], model, keep=keep)
        outs = []
        for name, part in zip(PARTS, local):
            if part is None:
                outs.append(None)
                continue
            if name == "scores" and label_major:  # [N, K] view of label-major storage, as on one rank
                full = part.new_empty((part.shape[1], n)).T
            else:
                full = part.new_empty((n, *part.shape[1:]))
            for r, rows in enumerate(D.gather_rows(part)):
                full[D.shard_indices(n, which=r, device=x.device)] = rows
            outs.append(full)
        return tuple(outs)

    @torch.no_grad()
    def predict(self, x: Tensor, model=None, batch_size: int = 1024,
                keep: Sequence[str] = PARTS, label_major: bool = False,
                features_out: Optional[Tensor] = None) -> Tuple[Optional[Tensor], ...]:
        """``(scores [N, K] in [0, 1], features [N, D], raw outputs [N, K])`` with the inference
        transform (the average of the positive and negative transforms: no labels used).
        Only the parts named in ``keep`` are kept (the others are None): each is one
        preallocated ``[N, *]`` float32 tensor filled batch by batch. ``label_major``: the
        scores are stored label by label (a transposed view: per-label work such as CAP
        reads each label's scores contiguously). ``features_out``: a ``[N, D]`` float32 tensor
        the features are written into (e.g. a slice of a larger buffer) instead of a new one."""
        unknown = set(keep) - set(PARTS)
        if unknown:
            raise ValueError(f"predict: 'keep' must name parts among {PARTS}, got {sorted(unknown)}")
        model = (self.ema.module if model is None else model).eval()
        a, b = self.coefficients()
        n, K = x.shape[0], self.num_labels
        scores = None
        if "scores" in keep:
            scores = torch.empty((K, n), device=x.device).T if label_major else torch.empty((n, K), device=x.device)
        outs = torch.empty((n, K), device=x.device) if "outputs" in keep else None
        dim = model.classifier_weight.shape[1]  # feature dimension D
        feats = None
        if features_out is not None and ("features" not in keep or features_out.shape != (n, dim)
                                         or features_out.dtype != torch.float32 or features_out.device != x.device):
            raise ValueError(f"predict: 'features_out' must be a [{n}, {dim}] float32 tensor on {x.device}, with "
                             f"'features' in keep; got {tuple(features_out.shape)} {features_out.dtype} on "
                             f"{features_out.device}, keep={tuple(keep)}")
        if "features" in keep:
            feats = torch.empty((n, dim), device=x.device) if features_out is None else features_out
        features_only = scores is None and outs is None  # the classifier head is not needed
        for i in range(0, n, batch_size):
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                if features_only:
                    z, out = model.encoder(x[i:i + batch_size]), None
                else:
                    z, out = model(x[i:i + batch_size])
            if feats is not None:
                feats[i:i + batch_size] = z.float()
            if out is None:
                continue
            out = out.float()
            if outs is not None:
                outs[i:i + batch_size] = out
            if scores is None:
                continue
            if model.head_type == "cosine":
                # s * (phi - f * m), then the sigmoid, in place on the transform's fresh output
                logits = bbam.ops.angle_transform(out, a, b).sub_(
                    self.mc.predict_margin_fraction * self.mc.margin).mul_(self.mc.scale)
            else:
                logits = out  # this batch's own output (already copied into outs)
            scores[i:i + batch_size] = torch.sigmoid_(logits)
        return scores, feats, outs

    # ----------------------------------------------------------------- epochs
    def _train_step(self, parts) -> float:
        """One optimizer step on the sum of the losses of ``parts`` = [(x, targets, weight, loss_fn)]."""
        self.train_model.train()
        coefs = self.coefficients()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            xs = torch.cat([x for x, _, _, _ in parts])  # one forward: DDP syncs once per step
            _, outs = self.train_model(xs)
            total, start = 0.0, 0
            for x, t, w, loss_fn in parts:
                out = outs[start:start + x.shape[0]].float()
                start += x.shape[0]
                total = total + self._loss(loss_fn, out, t, None if w is None else w.float(), coefs)
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
        value = float(np.mean(losses))
        if self.world > 1:
            t = torch.tensor([value], dtype=torch.float64, device=self.device)
            torch.distributed.all_reduce(t)
            value = float(t.item())
        return value

    def _warmup_epoch(self, epoch: int) -> Dict[str, float]:
        lb = self.splits["labeled"]
        losses = []
        with self._timed("steps"):
            for idx in self._batches(len(lb), self.tc.batch_size, epoch, 0, self._steps_per_epoch("warmup")):
                idx = self._local(idx)
                losses.append(self._train_step([(lb.x[idx], lb.y[idx], None, self.losses["warmup"])]))
        return {"train_loss": self._global_mean(losses)}

    @torch.no_grad()
    def refresh_pseudo_labels_and_masks(self) -> Dict[str, Tensor]:
        """Steps (1)-(3): CAP pseudo-labels, prototypes + statistics, negative-sampling masks."""
        lb, ub = self.splits["labeled"], self.splits["unlabeled"]
        # (1) CAP on the scores of the WHOLE unlabeled set (global ranks: gathered across ranks)
        with self._timed("cap"):
            scores_u, _, _ = self.predict_global(ub.x, keep=("scores",), label_major=True)
            thresholds = self.cap.thresholds(scores_u) if self.tc.save_epoch_state else None
            pseudo_t = self.cap.pseudo_targets(scores_u)  # [N_u, K] int8, -1: not confident
            del scores_u  # [N_u, K] float: not kept through the epoch
        # (2) each rank: features of its shard; prototypes / statistics reduced across ranks.
        # The method's code reads the online model's features here (CAP scores above come
        # from the EMA model); method.features_from: ema is the alternative.
        feature_model = self.model if self.mc.features_from == "online" else None
        rows_lb, rows_ub = D.shard_indices(len(lb), device=self.device), D.shard_indices(len(ub), device=self.device)
        with self._timed("features"):
            if self.world == 1:  # every row, in sample order: no gathers
                x_lb, x_ub, y_lb, t_ub = lb.x, ub.x, lb.y, pseudo_t
            else:
                x_lb, x_ub, y_lb, t_ub = lb.x[rows_lb], ub.x[rows_ub], lb.y[rows_lb], pseudo_t[rows_ub]
            # one [n_lb + n_ub, D] buffer, filled in place (no concatenation copy)
            feats = torch.empty((len(x_lb) + len(x_ub), self.model.classifier_weight.shape[1]), device=self.device)
            self.predict(x_lb, feature_model, keep=("features",), features_out=feats[:len(x_lb)])
            self.predict(x_ub, feature_model, keep=("features",), features_out=feats[len(x_lb):])
            targets = torch.cat([y_lb, t_ub])
            del t_ub
            if self.world == 1:  # the pseudo-labels are a view of targets
                pseudo_t = targets[len(lb):]
        with self._timed("statistics"):
            self._update_prototypes_and_stats(feats, targets, feature_model)
        with self._timed("sampling"):
            weight = self._sampling_weights(feats, targets, torch.cat([rows_lb, rows_ub + len(lb)]))
        n_lb = len(lb)
        out = {"targets_ub": pseudo_t, "weight_lb": weight[:n_lb], "weight_ub": weight[n_lb:], "thresholds": thresholds}
        with self._timed("bookkeeping"):
            out.update(pseudo_label_summary(pseudo_t, ub.y, out["weight_lb"], lb.y))
        return out

    def _update_prototypes_and_stats(self, feats: Tensor, targets: Tensor, feature_model) -> None:
        """Step (2): label prototypes (reduced across ranks) and, with balancing, the statistics."""
        prototypes, _ = D.global_prototypes(feats, targets)
        self.prototypes = prototypes  # the label prototypes of this epoch (diagnostics, checkpoints)
        if self.stats is not None:
            # prototype: the method's statistics of the angles to the label prototypes;
            # classifier: statistics of the angles the transform moves (to the classifier weights)
            anchors = prototypes if self.mc.stats_angles == "prototype" else \
                (self.model if feature_model is not None else self.ema.module).classifier_weight.detach().float()
            self.stats.update(feats, targets, prototypes=anchors)

    def _sampling_weights(self, feats: Tensor, targets: Tensor, rows: Tensor) -> Tensor:
        """Step (3): ``[N_l + N_u, K]`` bool, the negative-sampling masks in sample order
        (without sampling: the known entries). ``rows``: the sample index of each row of ``feats``."""
        prototypes = self.prototypes
        # negative sampling needs each label's global m_k-th similarity: select on the
        # gathered features (exact), then scatter the masks back to sample order
        if self.world > 1:
            feats = torch.cat(D.gather_rows(feats))
            targets = torch.cat(D.gather_rows(targets))
            rows = torch.cat(D.gather_rows(rows))
        if self.sampler is not None:
            # the same draws on every rank (random_share variant): seeded by (seed, epoch)
            g = torch.Generator().manual_seed(int(self.cfg.seed) * 1_000_003 + self.state.epoch * 101 + 2)
            keep = self.sampler.select(feats, prototypes, targets, generator=g)
        else:
            keep = targets >= 0
        if self.world == 1:  # rows are 0..N-1 in order (bool: made float per batch in _train_step)
            return keep
        weight = torch.empty_like(keep)
        weight[rows] = keep
        return weight

    def _self_training_epoch(self, epoch: int) -> Dict[str, float]:
        lb, ub = self.splits["labeled"], self.splits["unlabeled"]
        p = self.refresh_pseudo_labels_and_masks()
        # kept past the epoch only to be saved (train.save_epoch_state): [N, K] int8 + bool
        self.last_pseudo = p if self.tc.save_epoch_state else None
        lb_batches = self._batches(len(lb), self.tc.batch_size, epoch, 0)
        lb_cycle = itertools.cycle(lb_batches)
        losses = []
        with self._timed("steps"):
            for idx_u in self._batches(len(ub), self.tc.unlabeled_batch_size, epoch, 1,
                                       self._steps_per_epoch("self_training")):
                idx_u, idx_l = self._local(idx_u), self._local(next(lb_cycle))
                losses.append(self._train_step([
                    (lb.x[idx_l], lb.y[idx_l], p["weight_lb"][idx_l], self.losses["train"]),
                    (ub.x[idx_u], p["targets_ub"][idx_u], p["weight_ub"][idx_u], self.losses["train"]),
                ]))
        return {"train_loss": self._global_mean(losses),
                **{key: p[key] for key in ("pseudo_confident", "pseudo_accuracy", "neg_kept_lb")}}

    def evaluate(self, split: str, model=None) -> Dict[str, float]:
        s = self.splits[split]
        scores, _, _ = self.predict_global(s.x, model, keep=("scores",))  # whole split, every rank
        return M.evaluate(scores, s.y, threshold=self.tc.threshold, oracle_cardinality=self.tc.oracle_cardinality)

    # ----------------------------------------------------------------- checkpoints
    def _checkpoint(self) -> Dict[str, Any]:
        return {
            "format": 1,
            "epoch": self.state.epoch,
            "best_map": self.state.best_map,
            "best_epoch": self.state.best_epoch,
            "bad_epochs": self.state.bad_epochs,
            "history": self.state.history,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "stats": None if self.stats is None else self.stats.state_dict(),
            "prototypes": self.prototypes,
            "warmup_best": self.warmup_best,
            "warmup_start_epoch": self.warmup_start_epoch,
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "num_labels": self.num_labels,
            "seed": int(self.cfg.seed),
            "method": str(self.mc.name),
            "settings": run_settings(self.cfg),
        }

    def load_checkpoint(self, path: Path) -> None:
        """Continue from a ``last.pt`` (loaded with ``weights_only=True``)."""
        path, ckpt = read_checkpoint(path, self.device)
        for key, expected in (("num_labels", self.num_labels), ("seed", int(self.cfg.seed)), ("method", str(self.mc.name))):
            if ckpt.get(key) != expected:
                raise ValueError(f"config key 'train.resume': checkpoint {path} has {key}={ckpt.get(key)!r}, "
                                 f"this run has {expected!r}")
        check_same_settings(self.cfg, path, ckpt.get("settings"))
        if self.is_main:
            carry_best_checkpoint(path, ckpt["best_epoch"], self.ckpt_dir)
        self.model.load_state_dict(ckpt["model"])
        self.ema.load_state_dict(ckpt["ema"])
        if self.stats is not None and ckpt["stats"] is not None:
            self.stats.load_state_dict(ckpt["stats"])
        self.prototypes = ckpt.get("prototypes")
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

    def _write_history(self) -> None:
        atomic_write_text(self.out_dir / "metrics.jsonl",
                           "".join(json.dumps(rec) + "\n" for rec in self.state.history))

    # ----------------------------------------------------------------- main loop
    def fit(self, progress: bool = True, stop_after_epoch: Optional[int] = None) -> Dict[str, Any]:
        """Train until the last epoch or early stop. Returns ``{"interrupted": bool}``."""
        from tqdm.auto import tqdm

        self.out_dir.mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=self.total_epochs, initial=self.state.epoch, desc=f"{self.mc.name}",
                   disable=not (progress and self.is_main),
                   dynamic_ncols=True, leave=True)
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
            record.update(self._warmup_epoch(epoch) if phase == "warmup" else self._self_training_epoch(epoch))
            record["lr"] = self.optimizer.param_groups[0]["lr"]
            with self._timed("evaluation"):
                val = self.evaluate("val")
            record.update({f"val_{k}": v for k, v in val.items()})
            record["time_s"] = time.perf_counter() - t0
            record["phase_s"] = self.phase_s  # seconds per phase: cap, features, statistics, sampling, steps, ...
            self.state.epoch = epoch + 1
            if (phase == "warmup" and self.self_training and self.tc.warmup_restore_best
                    and (self.warmup_best is None or val["mAP"] > self.warmup_best["map"])):
                self.warmup_best = {"map": val["mAP"], "epoch": epoch, "model": _cloned(self.model.state_dict()),
                                    "ema": _cloned(self.ema.state_dict())}
            improved = self._selectable(phase) and val["mAP"] > self.state.best_map
            if improved:
                self.state.best_map, self.state.best_epoch, self.state.bad_epochs = val["mAP"], epoch, 0
            elif phase == "self_training" or not self.self_training:
                self.state.bad_epochs += 1  # patience counts once the method's own phase runs
            self.state.history.append(record)
            if self.is_main:
                best = (f"best {self.state.best_map:.2f} (epoch {self.state.best_epoch})" if self.state.best_epoch >= 0
                        else "no selectable epoch yet")
                log.debug("epoch %d (%s): train loss %.4g, val mAP %.2f, %s, %.1f s", epoch, phase,
                          record["train_loss"], val["mAP"], best, record["time_s"])
                with self._timed("checkpoint"):  # in metrics.jsonl, not in the checkpoint's own history
                    if improved:
                        atomic_save(self._checkpoint(), self.ckpt_dir / "best.pt")
                    atomic_save(self._checkpoint(), self.ckpt_dir / "last.pt")
                self._write_history()
                if self.tc.save_epoch_state and self.last_pseudo is not None:
                    atomic_save(self._epoch_state(), self.out_dir / "epoch_state.pt")
            if self.world > 1:
                torch.distributed.barrier()  # the others wait for the files (resume, load_best)
            bar.update(1)
            bar.set_postfix(loss=f"{record['train_loss']:.3g}", val_mAP=f"{val['mAP']:.2f}",
                            best=f"{self.state.best_map:.2f}" if self.state.best_epoch >= 0 else "-")
            if stop_after_epoch is not None and epoch >= stop_after_epoch:
                bar.close()
                return {"interrupted": True}
            if self.state.bad_epochs >= self.tc.patience:
                break
        bar.close()
        return {"interrupted": False}

    def _restore_warmup_best(self) -> None:
        """Self-training starts from the warm-up epoch with the best validation mAP
        (``train.warmup_restore_best``): on a small labeled set the last warm-up epoch has
        often overfitted it. The optimizer's moments start afresh with the new phase."""
        self.model.load_state_dict(self.warmup_best["model"])
        self.ema.load_state_dict(self.warmup_best["ema"])
        self.optimizer.state.clear()
        self.warmup_start_epoch = int(self.warmup_best["epoch"])
        self.warmup_best = None

    def _selectable(self, phase: str) -> bool:
        """Whether an epoch of ``phase`` may be selected as the run's model.

        ``train.select_from: self_training`` (default): a self-training method is the model
        its own phase trains, never its warm-up model (which is the BAM / ASL baseline);
        ``any``: every epoch competes on validation mAP."""
        if not self.self_training or self.tc.select_from == "any" or self.total_epochs <= self.boundary:
            return True
        return phase == "self_training"

    def selected_phase(self) -> str:
        return "warmup" if self.self_training and 0 <= self.state.best_epoch < self.boundary else "self_training" \
            if self.self_training else "supervised"

    def _epoch_state(self) -> Dict[str, Any]:
        """The last self-training epoch's global quantities (tests compare them across world sizes)."""
        p = self.last_pseudo
        # clones: the parts are views of larger tensors (torch.save would store those whole)
        state = {"targets_ub": p["targets_ub"].cpu().clone(), "weight_lb": p["weight_lb"].cpu().clone(),
                 "weight_ub": p["weight_ub"].cpu().clone(), "thresholds": p["thresholds"].cpu()}
        if self.stats is not None:
            state.update({f"stats_{k}": v.cpu() for k, v in self.stats.state_dict().items()})
        return state

    def load_best(self) -> Dict[str, Any]:
        ckpt = torch.load(self.ckpt_dir / "best.pt", map_location=self.device, weights_only=True)
        self.ema.load_state_dict(ckpt["ema"])
        self.model.load_state_dict(ckpt["model"])
        if self.stats is not None and ckpt["stats"] is not None:
            self.stats.load_state_dict(ckpt["stats"])
        self.prototypes = ckpt.get("prototypes")
        return ckpt
