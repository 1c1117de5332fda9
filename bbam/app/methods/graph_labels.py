"""Pseudo-label scores from label spreading on a kNN graph of the training rows (``method.graph``).

Each refresh (or once, when the graph is built on the fixed inputs) the labeled and
unlabeled rows' features are L2-normalised and linked to their ``k`` nearest neighbours
(:func:`bbam.graph.knn_graph`); every label's positives and negatives among the labeled
rows are spread over the graph (:func:`bbam.graph.spread_scores`, class-balanced), and an
unlabeled row's score for a label is the positives' share of what reaches it, with a
certainty ``|2 score - 1|``. The methods turn these scores into pseudo-labels with CAP's
class-proportion thresholds, alone (``pseudo_labels: graph``), averaged with the
teacher model's scores (``blend``), or whichever of those and the teacher's own scores
ranks the validation rows best that epoch (``auto``: the validation rows join the graph as
unlabeled rows; their labels choose, never seed).

Under ``torchrun`` every rank's features are gathered in row order, rank 0 builds the
graph and solves, and the scores are broadcast: every rank holds the same pseudo-labels,
equal to a single process's.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from bbam import distributed as D
from bbam.graph import knn_graph, spread_scores

from ..inputs import take_rows
from .base import MethodContext

__all__ = ["GraphLabels", "PSEUDO_LABEL_SOURCES"]

PSEUDO_LABEL_SOURCES = ("model", "graph", "blend", "auto")  # method.pseudo_labels


class GraphLabels:
    """Label spreading for pseudo-labels (see the module docstring).

    Args:
        k: neighbours per row (capped at the number of rows - 1).
        alpha: the spreading's weight of the graph against the seeds, in [0, 1).
        gamma: the power of the clipped cosine similarity on each edge.
        features: ``model`` (the teacher's features ``z``, rebuilt every refresh) or
            ``inputs`` (the run's scaled input rows, e.g. frozen image or sentence
            embeddings: built once; needs inputs that are feature rows).
        exact_below: exact search below this many rows, an IVF index above.
        nprobe: IVF cells probed per query (at least; raised with ``k``).
        tol, max_iter: the conjugate-gradient stop (:func:`bbam.graph.label_spreading`).
    """

    def __init__(self, k: int = 50, alpha: float = 0.99, gamma: float = 3.0, features: str = "model",
                 exact_below: int = 100_000, nprobe: int = 8, tol: float = 1e-4, max_iter: int = 100):
        if int(k) < 1:
            raise ValueError(f"config key 'method.graph.k' must be >= 1, got {k}")
        if not 0.0 <= float(alpha) < 1.0:
            raise ValueError(f"config key 'method.graph.alpha' must be in [0, 1), got {alpha}")
        if float(gamma) <= 0:
            raise ValueError(f"config key 'method.graph.gamma' must be > 0, got {gamma}")
        if features not in ("model", "inputs"):
            raise ValueError(f"config key 'method.graph.features' must be 'model' or 'inputs', got {features!r}")
        self.k, self.alpha, self.gamma, self.features = int(k), float(alpha), float(gamma), features
        self.exact_below, self.nprobe = int(exact_below), int(nprobe)
        self.tol, self.max_iter = float(tol), int(max_iter)
        # scores of a graph on the inputs (they never change), per set of unscored splits
        self._fixed: Dict[Tuple[str, ...], Tuple[Tensor, ...]] = {}

    def _rows(self, ctx: MethodContext, source: str, splits: Sequence[str]) -> Tensor:
        """``[N, D]`` features of the labeled rows, then of each split in ``splits``, on every rank."""
        xs = [ctx.splits[name].x for name in ("labeled", *splits)]
        if self.features == "inputs":
            if not ctx.input_features:
                raise ValueError("config key 'method.graph.features' is 'inputs', but this run's inputs are not "
                                 "feature rows (tokens or pixels): use method.graph.features=model")
            return torch.cat(xs).float()
        parts = []
        for x in xs:  # each rank embeds its interleaved shard; gathered back in row order
            local = x if ctx.world == 1 else take_rows(x, D.shard_indices(len(x)))
            parts.append(D.gather_in_order(ctx.features(local, source), len(x)))
        return torch.cat(parts)

    @torch.no_grad()
    def spread(self, ctx: MethodContext, source: str = "ema",
               also: Sequence[str] = ()) -> Tuple[Tensor, ...]:
        """``(scores, certainty)``: ``[N_u, K]`` float32 on the run's device, each label's
        scores contiguous (as CAP reads them); the same on every rank. ``also``: further
        splits (e.g. ``("val",)``) whose rows join the graph unlabeled (their labels are not
        read); their scores ``[N_s, K]`` follow, one per split."""
        splits = ("unlabeled", *also)
        if splits in self._fixed:
            return self._fixed[splits]
        n_l, K = len(ctx.splits["labeled"].y), ctx.num_labels
        sizes = [len(ctx.splits[name].y) for name in splits]
        n_u = sum(sizes)  # every row the graph scores
        with ctx.timed("graph_features"):
            feats = self._rows(ctx, source, splits)
        out = torch.empty((2, K, n_u), device=ctx.device)  # label-major: out[i].T is [N_u, K]
        with ctx.timed("graph"):
            failed = torch.zeros(1, device=ctx.device)
            error = None
            if D.rank() == 0:
                try:
                    out.copy_(self._solve(feats, ctx.splits["labeled"].y, n_l, n_u, K))
                except Exception as err:  # the other ranks must not wait for a broadcast that never comes
                    failed.fill_(1.0)
                    error = err
            D.broadcast_tensor(failed)
            if error is not None:
                raise error
            if bool(failed.item()):
                raise RuntimeError("label spreading failed on rank 0 (its error is in rank 0's log)")
            D.broadcast_tensor(out)
        scores, certainty = out[0].split(sizes, dim=1), out[1].split(sizes, dim=1)
        result = (scores[0].T, certainty[0].T, *(part.T for part in scores[1:]))
        if self.features == "inputs":
            self._fixed[splits] = result
        return result

    def _solve(self, feats: Tensor, y_lb: Tensor, n_l: int, n_u: int, K: int) -> Tensor:
        """``[2, K, N_u]``: the scores and certainties of the ``N_u`` rows after the labeled
        ones, label-major (rank 0)."""
        W = knn_graph(feats.cpu(), k=min(self.k, n_l + n_u - 1), gamma=self.gamma, exact_below=self.exact_below,
                      nprobe=self.nprobe)
        targets = np.zeros((n_l + n_u, K), dtype=np.int8)
        targets[:n_l] = y_lb.cpu().numpy()
        labeled = np.arange(n_l + n_u) < n_l
        score, certainty = spread_scores(W, targets, labeled, self.alpha, self.tol, self.max_iter, balance=True)
        return torch.from_numpy(np.stack([score[n_l:].T, certainty[n_l:].T]))

    def __repr__(self) -> str:
        return (f"GraphLabels(k={self.k}, alpha={self.alpha}, gamma={self.gamma}, features={self.features!r}, "
                f"exact_below={self.exact_below})")
