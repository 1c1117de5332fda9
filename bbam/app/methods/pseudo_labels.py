"""Methods that pseudo-label once per epoch: ``supervised`` (none), ``cap``, ``labelprop``, ``bam``, ``bbam``.

Each semi-supervised epoch of :class:`CAP` and its subclasses starts with a refresh
(docs/METHOD.md): (1) CAP pseudo-labels of the whole unlabeled set from the teacher's
scores (``teacher``: the EMA model by default; with the inference transform), from label
spreading on a kNN graph of the rows (``pseudo_labels: graph``,
:mod:`.graph_labels`) or from the mean of both (``blend``); never from the unlabeled
samples' true labels; for the
angular methods also (2) features of labeled + pseudo-labeled samples -> label prototypes
and, with balancing, the per-label angle statistics; (3) prototype negative-sampling masks
(labeled rows' masks refreshed too). The epoch's steps then read the pseudo-labels and
masks of their rows.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor

import bbam
from bbam import distributed as D
from bbam.cap import CAPLabeler
from bbam.metrics import mean_average_precision
from bbam.losses import AsymmetricLoss, BAMLoss, BBAMLoss, BCELoss
from bbam.angle_diagnostics import measure_angles
from bbam.stats import LabelAngleStats, label_prototypes

from ..batches import Batch
from ..inputs import take_rows
from ..models import CosineClassifier
from .base import Forward, Method, MethodContext
from .graph_labels import PSEUDO_LABEL_SOURCES, GraphLabels

__all__ = ["Supervised", "CAP", "LabelProp", "BAM", "BBAM"]

TEACHERS = ("ema", "model")  # method.teacher: the EMA weights or the live model make the pseudo-labels



def pseudo_label_summary(pseudo_t: Tensor, truth: Tensor, weight_lb: Tensor, y_lb: Tensor,
                         chunk_size: int = 8192) -> Dict[str, float]:
    """Logged per epoch (the learner never sees them): the share of confident
    pseudo-labels, their accuracy against the true labels, and the share of the labeled
    negatives kept by negative sampling. Exact counts over row chunks (no ``[N_u, K]``
    temporaries; ``count_nonzero`` is several times faster than a bool ``sum``)."""
    correct = known = 0
    for i in range(0, len(pseudo_t), chunk_size):
        p = pseudo_t[i:i + chunk_size]
        correct += int(torch.count_nonzero(p == truth[i:i + chunk_size]))  # -1 never equals a 0/1 truth
        known += int(torch.count_nonzero(p >= 0))
    negatives = y_lb == 0
    n_neg = int(torch.count_nonzero(negatives))
    kept = int(torch.count_nonzero(weight_lb & negatives)) if n_neg else 0
    return {"pseudo_confident": known / max(pseudo_t.numel(), 1),
            "pseudo_accuracy": float(torch.tensor(correct) / torch.tensor(max(known, 1))),
            "neg_kept_lb": kept / n_neg if n_neg else 1.0}

class Supervised(Method):
    """Labeled rows only: binary cross-entropy on a linear head (summed over batch and labels)."""

    semi_supervised = False

    def __init__(self, name: str = "supervised"):
        super().__init__(name)
        self.loss_fn = BCELoss(reduction="sum")

    def warmup_loss(self, forward: Forward, lb: Batch) -> Tensor:
        (out,) = forward([lb.x])
        return 0.0 + self.loss_fn(out, lb.y, None)


def _view_names(names: Sequence[str]) -> Tuple[str, ...]:
    names = tuple(str(n) for n in (names or ()))
    bad = [n for n in names if n not in ("weak", "strong")]
    if bad or len(set(names)) != len(names):
        raise ValueError(f"config key 'method.unlabeled_views' must list distinct views among weak, strong; "
                         f"got {list(names)}")
    return names


class CAP(Method):
    """Class-aware pseudo-labels (Xie et al. 2023) with the asymmetric loss on a linear head.

    Args:
        name: method name.
        pos_per, neg_per: CAP's shares of each label's expected positives / negatives kept
            as confident pseudo-labels (``neg_per`` clipped to 0.998).
        gamma_neg, gamma_pos, clip: the asymmetric loss (warm-up and self-training).
        unlabeled_views: the views of each unlabeled batch the loss is taken on, each with
            the epoch's pseudo-labels and summed (``[weak, strong]``: CAP's image recipe);
            empty: the unlabeled inputs themselves.
        pseudo_labels: where the scores CAP thresholds come from: ``model`` (the teacher's
            scores), ``graph`` (label spreading, ``graph``), ``blend`` (their mean) or
            ``auto`` (each epoch, whichever of the three ranks the validation rows best).
        teacher: ``ema`` (the EMA weights) or ``model`` (the live model): the model whose
            scores (and, for the graph, features) make the pseudo-labels.
        graph: a :class:`~.graph_labels.GraphLabels` (``pseudo_labels`` graph, blend or auto).
        weight_by_certainty: each unlabeled element's loss weighted by the graph's certainty
            ``|2 score - 1|`` of its row and label (graph or blend; auto when it chooses either).
    """

    def __init__(self, name: str = "cap", pos_per: float = 1.0, neg_per: float = 0.998, gamma_neg: float = 4.0,
                 gamma_pos: float = 0.0, clip: float = 0.05, unlabeled_views: Sequence[str] = (),
                 pseudo_labels: str = "model", teacher: str = "ema", graph: Optional[GraphLabels] = None,
                 weight_by_certainty: bool = False):
        super().__init__(name)
        if pseudo_labels not in PSEUDO_LABEL_SOURCES:
            raise ValueError(f"config key 'method.pseudo_labels' must be one of {', '.join(PSEUDO_LABEL_SOURCES)}, "
                             f"got {pseudo_labels!r}")
        if teacher not in TEACHERS:
            raise ValueError(f"config key 'method.teacher' must be one of {', '.join(TEACHERS)}, got {teacher!r}")
        if pseudo_labels != "model" and not isinstance(graph, GraphLabels):
            raise ValueError(f"config key 'method.graph' must be a graph section (_target_: "
                             f"bbam.app.methods.GraphLabels) with method.pseudo_labels={pseudo_labels}, got {graph!r}")
        self.pseudo_labels, self.teacher, self.graph = pseudo_labels, teacher, graph
        self._source = "online" if teacher == "model" else "ema"  # the engine's name of the teacher
        self.weight_by_certainty = bool(weight_by_certainty) and pseudo_labels != "model"
        self.certainty: Optional[Tensor] = None  # [N_u, K] this epoch's graph certainty (weight_by_certainty)
        self.views = _view_names(unlabeled_views)
        self.cap = CAPLabeler(pos_per=pos_per, neg_per=neg_per)
        self.warmup_loss_fn = AsymmetricLoss(gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip, reduction="sum")
        self.loss_fn = self.warmup_loss_fn
        self.targets_ub: Optional[Tensor] = None  # [N_u, K] int8 this epoch's pseudo-labels (-1: not confident)
        self.weight_lb: Optional[Tensor] = None  # [N_l, K] bool this epoch's masks of the labeled rows
        self.weight_ub: Optional[Tensor] = None  # [N_u, K] ... of the unlabeled rows (float: times the certainty)
        self.thresholds: Optional[Tensor] = None  # [K] CAP thresholds (only kept with train.save_epoch_state)
        self.source_log: Dict[str, float] = {}  # pseudo_labels auto: the epoch's choice and its scores

    def bind(self, ctx: MethodContext) -> None:
        super().bind(ctx)
        self.cap.fit(ctx.splits["labeled"].y)

    # ------------------------------------------------------------------ training
    def _loss(self, loss_fn, out: Tensor, targets: Tensor, weight: Optional[Tensor], coefs) -> Tensor:
        return loss_fn(out, targets, weight)

    def warmup_loss(self, forward: Forward, lb: Batch) -> Tensor:
        (out,) = forward([lb.x])
        return 0.0 + self._loss(self.warmup_loss_fn, out, lb.y, None, None)

    def loss(self, forward: Forward, lb: Batch, ub: Batch) -> Tensor:
        coefs = self.coefficients()
        out_l, *outs_u = forward([lb.x, *([ub.views[v] for v in self.views] or [ub.x])])
        total = 0.0 + self._loss(self.loss_fn, out_l, lb.y, self.weight_lb[lb.idx].float(), coefs)
        targets, weight = self.targets_ub[ub.idx], self.weight_ub[ub.idx].float()
        for out_u in outs_u:  # the plain unlabeled inputs, or each view with the same pseudo-labels
            total = total + self._loss(self.loss_fn, out_u, targets, weight, coefs)
        return total

    # ------------------------------------------------------------------ per epoch
    @torch.no_grad()
    def _pseudo_targets(self, ctx: MethodContext) -> Tensor:
        """Step (1): CAP on the scores of the WHOLE unlabeled set (global ranks): the
        teacher's, the graph's or their mean (``pseudo_labels``; ``auto``: :meth:`_chosen_scores`)."""
        if self.pseudo_labels == "auto":
            scores_u = self._chosen_scores(ctx)
        else:
            scores_u = None
            if self.pseudo_labels != "graph":
                with ctx.timed("cap"):
                    scores_u = ctx.scores_global(ctx.splits["unlabeled"].x, label_major=True, source=self._source)
            if self.pseudo_labels != "model":
                spread, certainty = self.graph.spread(ctx, self._source)
                scores_u = spread if scores_u is None else scores_u.add_(spread).mul_(0.5)  # label-major, as CAP reads
                self.certainty = certainty if self.weight_by_certainty else None
        with ctx.timed("cap"):
            self.thresholds = self.cap.thresholds(scores_u) if ctx.save_epoch_state else None
            return self.cap.pseudo_targets(scores_u)  # [N_u, K] int8, -1: not confident

    def _chosen_scores(self, ctx: MethodContext) -> Tensor:
        """``pseudo_labels: auto``: the unlabeled rows' scores from the source -- the teacher,
        the graph or their mean -- whose scores of the validation rows have the best mAP this
        epoch (the validation rows join the graph unlabeled: their labels choose, never seed).
        Ties go to the teacher, then the blend. Logs each source's validation mAP and the
        choice (``pseudo_source``: 0 teacher, 1 blend, 2 graph)."""
        with ctx.timed("cap"):
            model_u = ctx.scores_global(ctx.splits["unlabeled"].x, label_major=True, source=self._source)
            model_v = ctx.scores_global(ctx.splits["val"].x, label_major=True, source=self._source)
        graph_u, certainty, graph_v = self.graph.spread(ctx, self._source, also=("val",))
        y_val = ctx.splits["val"].y
        with ctx.timed("cap"):
            candidates = (model_v, model_v.add(graph_v).mul_(0.5), graph_v)
            quality = [mean_average_precision(v.float(), y_val) for v in candidates]
            rank = [q if q == q else float("-inf") for q in quality]  # NaN: no validation positives
            best = max(range(3), key=lambda i: (rank[i], -i))
            choice = torch.tensor([float(best)], device=ctx.device)
            D.broadcast_tensor(choice)  # every rank computed the same; rank 0's makes it certain
            best = int(choice.item())
        self.source_log = {"pseudo_source": float(best), "source_val_mAP_model": quality[0],
                           "source_val_mAP_blend": quality[1], "source_val_mAP_graph": quality[2]}
        self.certainty = certainty if (self.weight_by_certainty and best > 0) else None
        if best == 0:
            return model_u
        return graph_u if best == 2 else model_u.add_(graph_u).mul_(0.5)

    def _unlabeled_weight(self, known: Tensor) -> Tensor:
        """The unlabeled rows' element weights from their mask ``[N_u, K]`` bool: the mask, or
        (``weight_by_certainty``) the mask times the graph's certainty."""
        return known if self.certainty is None else known * self.certainty

    @torch.no_grad()
    def refresh(self, ctx: MethodContext) -> Dict[str, float]:
        lb = ctx.splits["labeled"]
        self.targets_ub = self._pseudo_targets(ctx)
        # every known entry counts
        self.weight_lb, self.weight_ub = lb.y >= 0, self._unlabeled_weight(self.targets_ub >= 0)
        return self._summary(ctx)

    def _summary(self, ctx: MethodContext) -> Dict[str, float]:
        with ctx.timed("bookkeeping"):
            summary = pseudo_label_summary(self.targets_ub, ctx.splits["unlabeled"].y, self.weight_lb,
                                           ctx.splits["labeled"].y)
        return {**summary, **self.source_log}

    def end_epoch(self) -> Dict[str, float]:
        # the [N, K] pseudo-labels and masks live for one epoch (not through validation)
        self.targets_ub = self.weight_lb = self.weight_ub = self.certainty = None
        return {}

    def epoch_state(self) -> Dict[str, Tensor]:
        if self.targets_ub is None:
            return {}
        # clones: the parts may be views of larger tensors (torch.save would store those whole)
        state = {"targets_ub": self.targets_ub.cpu().clone(), "weight_lb": self.weight_lb.cpu().clone(),
                 "weight_ub": self.weight_ub.cpu().clone()}
        if self.thresholds is not None:
            state["thresholds"] = self.thresholds.cpu()
        return state


class LabelProp(CAP):
    """Label propagation as the pseudo-labeller: CAP's class-proportion thresholds on label
    spreading's scores (Zhou et al. 2004; Iscen et al. 2019) train a linear head with
    binary cross-entropy, each unlabeled element weighted by its certainty.

    Args:
        name: method name.
        graph: the :class:`~.graph_labels.GraphLabels` (by default on the teacher's
            features, rebuilt every epoch; ``features="inputs"``: built and solved once).
        pos_per, neg_per: CAP's shares (see :class:`CAP`).
        pseudo_labels, teacher, weight_by_certainty, unlabeled_views: see :class:`CAP`.
    """

    def __init__(self, name: str = "labelprop", graph: Optional[GraphLabels] = None, pos_per: float = 1.0,
                 neg_per: float = 0.998, pseudo_labels: str = "graph", teacher: str = "ema",
                 weight_by_certainty: bool = True, unlabeled_views: Sequence[str] = ()):
        super().__init__(name, pos_per=pos_per, neg_per=neg_per, unlabeled_views=unlabeled_views,
                         pseudo_labels=pseudo_labels, teacher=teacher,
                         graph=GraphLabels() if graph is None else graph,
                         weight_by_certainty=weight_by_certainty)
        self.warmup_loss_fn = self.loss_fn = BCELoss(reduction="sum")


class BAM(CAP):
    """Binary angular margin loss on a cosine head, CAP pseudo-labels and prototype
    negative sampling (S2ML2-BBAM without the balancing).

    Args:
        name: method name.
        margin, scale: the angular margin ``m`` and logit scale ``s`` (training and scores).
        predict_margin_fraction: score logit ``s * (phi - f * m)``: the boundary midway
            between negatives (``phi < 0``) and positives (``phi > m``) at ``f = 0.5``.
        features_from: ``online`` (the method's code) or ``ema``: the model whose features
            give prototypes, statistics and sampling.
        pos_per, neg_per: CAP (see :class:`CAP`).
        sampling: a negative sampler with ``select(features, prototypes, targets, generator)``
            (e.g. :class:`bbam.sampling.NegativeSampler`), or None: every known entry counts.
        pseudo_labels, teacher, graph, weight_by_certainty, unlabeled_views: see :class:`CAP`.
    """

    head = "cosine"

    @classmethod
    def make_head(cls, dim: int, num_labels: int) -> torch.nn.Module:
        """Cosines of the features to the label weights: the angles the margin (and BBAM's
        transform) act on."""
        return CosineClassifier(dim, num_labels)

    def __init__(self, name: str = "bam", margin: float = 0.4, scale: float = 20.0,
                 predict_margin_fraction: float = 0.5, features_from: str = "online", pos_per: float = 1.0,
                 neg_per: float = 0.998, sampling=None, unlabeled_views: Sequence[str] = (),
                 pseudo_labels: str = "model", teacher: str = "ema", graph: Optional[GraphLabels] = None,
                 weight_by_certainty: bool = False):
        super().__init__(name, pos_per=pos_per, neg_per=neg_per, unlabeled_views=unlabeled_views,
                         pseudo_labels=pseudo_labels, teacher=teacher, graph=graph,
                         weight_by_certainty=weight_by_certainty)
        if features_from not in ("online", "ema"):
            raise ValueError(f"config key 'method.features_from' must be 'online' or 'ema', got {features_from!r}")
        self.margin, self.scale = float(margin), float(scale)
        self.predict_margin_fraction = float(predict_margin_fraction)
        self.features_from, self.sampler = features_from, sampling
        self.warmup_loss_fn = BAMLoss(margin=margin, scale=scale, reduction="sum")
        self.loss_fn = self._train_loss_fn()
        self.prototypes: Optional[Tensor] = None  # [K, D] this epoch's label prototypes

    def _train_loss_fn(self):
        return BAMLoss(margin=self.margin, scale=self.scale, reduction="sum")

    def scores(self, outputs: Tensor) -> Tensor:
        a, b = self.coefficients()
        # s * (phi - f * m), then the sigmoid, in place on the transform's fresh output
        logits = bbam.ops.angle_transform(outputs, a, b).sub_(self.predict_margin_fraction * self.margin)
        return torch.sigmoid_(logits.mul_(self.scale))

    # ------------------------------------------------------------------ per epoch
    @torch.no_grad()
    def refresh(self, ctx: MethodContext) -> Dict[str, float]:
        lb, ub = ctx.splits["labeled"], ctx.splits["unlabeled"]
        pseudo_t = self._pseudo_targets(ctx)
        # (2) each rank: features of its shard; prototypes / statistics reduced across ranks.
        # The method's code reads the online model's features (the pseudo-labels come from the teacher).
        source, single = self.features_from, ctx.world == 1
        rows_lb, rows_ub = D.shard_indices(len(lb), device=self.device), D.shard_indices(len(ub), device=self.device)
        with ctx.timed("features"):
            if single:  # every row, in sample order: no gathers
                x_lb, x_ub, y_lb, t_ub = lb.x, ub.x, lb.y, pseudo_t
            else:
                x_lb, x_ub = take_rows(lb.x, rows_lb), take_rows(ub.x, rows_ub)
                y_lb, t_ub = lb.y[rows_lb], pseudo_t[rows_ub]
            # one [n_lb + n_ub, D] buffer, filled in place (no concatenation copy)
            feats = torch.empty((len(x_lb) + len(x_ub), ctx.feature_dim), device=self.device)
            ctx.features(x_lb, source, out=feats[:len(x_lb)])
            ctx.features(x_ub, source, out=feats[len(x_lb):])
            targets = torch.cat([y_lb, t_ub])
            del t_ub
            if single:  # the pseudo-labels are a view of targets
                pseudo_t = targets[len(lb):]
        with ctx.timed("statistics"):
            self.prototypes, _ = D.global_prototypes(feats, targets)
            self._update_statistics(ctx, feats, targets)
        with ctx.timed("sampling"):
            weight = self._sampling_weights(ctx, feats, targets, torch.cat([rows_lb, rows_ub + len(lb)]))
        self.targets_ub, self.weight_lb = pseudo_t, weight[:len(lb)]
        self.weight_ub = self._unlabeled_weight(weight[len(lb):])
        return self._summary(ctx)

    def _update_statistics(self, ctx: MethodContext, feats: Tensor, targets: Tensor) -> None:
        pass  # no balancing

    def _sampling_weights(self, ctx: MethodContext, feats: Tensor, targets: Tensor, rows: Tensor) -> Tensor:
        """Step (3): ``[N_l + N_u, K]`` bool, the negative-sampling masks in sample order
        (without sampling: the known entries). ``rows``: the sample index of each row of ``feats``."""
        # negative sampling needs each label's global m_k-th similarity: select on the
        # gathered features (exact), then scatter the masks back to sample order
        if ctx.world > 1:
            feats, targets, rows = (torch.cat(D.gather_rows(t)) for t in (feats, targets, rows))
        if self.sampler is not None:
            # the same draws on every rank (random_share variant): seeded by (seed, epoch)
            g = torch.Generator().manual_seed(ctx.epoch_seed(2))
            keep = self.sampler.select(feats, self.prototypes, targets, generator=g)
        else:
            keep = targets >= 0
        if ctx.world == 1:  # rows are 0..N-1 in order (bool: made float per batch in the step)
            return keep
        weight = torch.empty_like(keep)
        weight[rows] = keep
        return weight

    # ------------------------------------------------------------------ diagnostics
    stats_angles = "none"  # the angle family the balancing statistics are taken on (none: no balancing)

    @property
    def balances(self) -> bool:
        return self.stats_angles != "none"

    def _diagnostic_prototypes(self, ctx: MethodContext) -> Tuple[Tensor, str]:
        """The label prototypes of the run: the last refresh's (saved in checkpoints), else
        the labeled split's."""
        if self.prototypes is not None and self.prototypes.numel():
            return self.prototypes, "training (labeled + pseudo-labeled samples, last refresh)"
        lb = ctx.splits["labeled"]
        return label_prototypes(ctx.features(lb.x, "ema"), lb.y)[0], "labeled split"

    @torch.no_grad()
    def diagnostics(self, ctx: MethodContext, split: str = "test", source: str = "ema") -> Dict[str, Any]:
        """Angles to the label prototypes and to the classifier weights of the split's
        ``source`` features, before / after the transform (:func:`bbam.angle_diagnostics.measure_angles`)."""
        s = ctx.splits[split]
        prototypes, origin = self._diagnostic_prototypes(ctx)
        a, b = self.coefficients()
        weights = ctx.classifier_weight(source).detach().float()
        return {"stats_angles": self.stats_angles, "features_from": source, "prototype_source": origin,
                **measure_angles(ctx.features(s.x, source), weights, s.y, a, b, prototypes)}

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> Dict[str, Any]:
        return {"prototypes": self.prototypes}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.prototypes = state.get("prototypes")


class BBAM(BAM):
    """S2ML2-BBAM: :class:`BAM` plus per-label angle statistics and the balancing transform.

    Args:
        stats_gamma: EMA weight of the old statistics (``new = (1 - g) * current + g * old``).
        stats_angles: ``prototype`` (the paper: angles to the label prototypes) or
            ``classifier`` (the angles the transform moves: the ``bbam_cls`` variant).
        (others as :class:`BAM`)
    """

    def __init__(self, name: str = "bbam", margin: float = 0.4, scale: float = 20.0,
                 predict_margin_fraction: float = 0.5, features_from: str = "online", pos_per: float = 1.0,
                 neg_per: float = 0.998, sampling=None, stats_gamma: float = 0.01, stats_angles: str = "prototype",
                 unlabeled_views: Sequence[str] = (), pseudo_labels: str = "model", teacher: str = "ema",
                 graph: Optional[GraphLabels] = None, weight_by_certainty: bool = False):
        if stats_angles not in ("prototype", "classifier"):
            raise ValueError(f"config key 'method.stats_angles' must be 'prototype' or 'classifier', "
                             f"got {stats_angles!r}")
        super().__init__(name, margin, scale, predict_margin_fraction, features_from, pos_per, neg_per, sampling,
                         unlabeled_views, pseudo_labels, teacher, graph, weight_by_certainty)
        self.stats_gamma, self.stats_angles = float(stats_gamma), stats_angles
        self.stats: Optional[LabelAngleStats] = None

    def _train_loss_fn(self):
        return BBAMLoss(margin=self.margin, scale=self.scale, reduction="sum")

    def setup(self, num_labels: int, device: torch.device) -> None:
        super().setup(num_labels, device)
        self.stats = LabelAngleStats(self.num_labels, gamma=self.stats_gamma).to(self.device)

    def coefficients(self) -> Tuple[Tensor, Tensor]:
        return self.stats.coefficients()

    def _loss(self, loss_fn, out: Tensor, targets: Tensor, weight: Optional[Tensor], coefs) -> Tensor:
        if isinstance(loss_fn, BBAMLoss):
            return loss_fn(out, targets, weight, coefficients=coefs)
        return loss_fn(out, targets, weight)

    def _diagnostic_prototypes(self, ctx: MethodContext) -> Tuple[Tensor, str]:
        found = super()._diagnostic_prototypes(ctx)
        # with stats_angles=classifier the statistics' anchors are the classifier weights, not prototypes
        if found[1] == "labeled split" and self.stats_angles == "prototype" and self.stats.prototypes.numel():
            return self.stats.prototypes, "statistics (labeled + pseudo-labeled samples)"
        return found

    def _update_statistics(self, ctx: MethodContext, feats: Tensor, targets: Tensor) -> None:
        # prototype: the method's statistics of the angles to the label prototypes;
        # classifier: statistics of the angles the transform moves (to the classifier weights)
        anchors = (self.prototypes if self.stats_angles == "prototype"
                   else ctx.classifier_weight(self.features_from).detach().float())
        self.stats.update(feats, targets, prototypes=anchors)

    def state_dict(self) -> Dict[str, Any]:
        return {**super().state_dict(), "stats": self.stats.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict(state)
        if state.get("stats") is not None:
            self.stats.load_state_dict(state["stats"])

    def epoch_state(self) -> Dict[str, Tensor]:
        state = super().epoch_state()
        if state:
            state.update({f"stats_{k}": v.cpu() for k, v in self.stats.state_dict().items()})
        return state
