"""Prototype-based negative sampling.

The method (DESIGN.md §1): over all training samples (labeled + pseudo-labeled), for
each label ``k`` keep every positive and only the

    ``m_k = min(floor(eta * n_pos_k), n_neg_k)``

negatives whose features are most cosine-similar to the label prototype ``p_k`` (the
hard negatives); the other negatives get weight 0 this epoch. A label with no positive
has no prototype and keeps all its negatives. Unknown entries (``-1``) are never
selected. For frequent labels ``m_k = n_neg_k`` (keep all, nothing to search); for rare
labels it is a nearest-neighbour search of ``p_k`` among the label's negatives.

Backends:

* ``"exact"``: chunked torch selection, any device. Memory ``O(N * D + chunk * K)``;
  the ``N x K`` similarity matrix is never materialised.
* ``"faiss"``: one FAISS inner-product index over the L2-normalised float32 features,
  built once per :meth:`NegativeSampler.select` call and shared by all labels; each
  searched label queries its normalised prototype (see :meth:`NegativeSampler._select_faiss`).
  ``index="flat"`` (``IndexFlatIP``) is exact; ``index="ivf"`` (``IndexIVFFlat``,
  inner product) is approximate. GPU FAISS is used when the features are on CUDA and
  ``faiss.StandardGpuResources`` exists.
* ``"auto"``: ``"faiss"`` when ``faiss`` is importable (and, for CUDA features, has GPU
  support), else ``"exact"``.

FAISS backend in brief (details in :meth:`NegativeSampler._select_faiss`):

* **Direction.** A label needs its ``m_k`` nearest negatives; when ``m_k > n_neg_k / 2``
  it is cheaper to find the ``n_neg_k - m_k`` *farthest* negatives (search with
  ``-p_k``) and keep every other negative. Either way ``q_k = min(m_k, n_neg_k - m_k)``
  negatives are searched for.
* **Widening.** A search asks for ``k`` neighbours, ``k`` estimated so that ``q_k``
  negatives survive removing positives and unknowns; labels short of ``q_k`` negatives
  are searched again with ``k`` at least doubled. Labels of similar ``k`` share one
  ``search`` call.
* **Dense route.** FAISS's heap k-selection is slow when ``k`` is a large fraction of
  ``N``; such labels (``k > max(1024, N / 8)``), labels over the GPU limit
  ``k <= 2048``, and IVF labels whose probed cells hold fewer than ``k`` vectors are
  selected exactly with torch (block of ``[labels, N]`` similarities, ``topk`` per label).
* **IVF.** ``nlist`` defaults to ``round(sqrt(N))`` capped so that every cell has
  >= 39 points (k-means on a seeded sample of <= ``64 * nlist`` rows, FAISS's 10
  iterations); a search of ``k`` neighbours probes
  ``max(nprobe, ceil(4 * k * nlist / N))`` cells (at most ``nlist``): ``nprobe`` is the
  floor for small ``k``, the second term keeps the probed pool >= 4x ``k``. Measured
  recall of the selected negatives with the defaults (``nprobe=16``): see
  ``tests/test_sampling.py`` and ``bench/README.md``.
* **Ties / precision.** Similarities are float32 inner products of normalised vectors
  (BLAS in FAISS, torch in the dense route); negatives tied at a label's boundary are
  broken arbitrarily (by FAISS's result order or ``torch.topk``). Exactly ``m_k``
  negatives are always selected. With ``index="flat"`` every selected negative has
  float32 similarity ``>=`` every unselected one (the exact backend works in float64
  for float64 inputs, so near-ties within float32 rounding may resolve differently).
* **Memory.** ``O(N * D)`` float32 for the index (plus the ``N x K`` bool output), and
  per search call ``A x k`` results, bounded by ``2**23`` entries (~100 MB with
  temporaries; one label with larger ``k`` goes alone); dense blocks are bounded by
  ``2**25`` float32 similarities (128 MiB).
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["NegativeSampler", "negative_sample_counts"]

_BACKENDS = ("auto", "exact", "faiss")
_INDEXES = ("flat", "ivf")
_SNAP_RTOL = 1e-9

# FAISS backend constants (see the module docstring). Tests monkeypatch some of them.
_GPU_MAX_K = 2048           # FAISS GPU k-selection limit (k and nprobe)
_DENSE_MIN_K = 1024         # searches with k <= this never take the dense route
_DENSE_FRACTION = 0.125     # ... nor do those with k <= N * this
_RESULT_BUDGET = 1 << 23    # A x k entries of one FAISS search call
_DENSE_BUDGET = 1 << 25     # A x N float32 similarities of one dense block
_IVF_MIN_PER_LIST = 39      # default nlist keeps >= this many points per cell (FAISS's minimum)
_IVF_TRAIN_PER_LIST = 64    # k-means training sample: <= this many points per cell
_IVF_POOL = 4               # probe enough cells to hold ~ this many times k vectors
_IVF_SEED = 0               # seed of the training sample


def _check_eta(where: str, eta: float) -> float:
    try:
        eta = float(eta)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: 'eta' must be a non-negative number, got {eta!r}") from None
    if not eta >= 0.0:  # also rejects NaN
        raise ValueError(f"{where}: 'eta' must be >= 0, got {eta}")
    return eta


def _check_targets(where: str, targets: Tensor, N: Optional[int] = None, K: Optional[int] = None) -> None:
    if not isinstance(targets, Tensor):
        raise TypeError(f"{where}: 'targets' must be a torch.Tensor, got {type(targets).__name__}")
    if targets.dtype != torch.int8:
        raise ValueError(f"{where}: 'targets' must be int8 (1 positive, 0 negative, -1 unknown), "
                         f"got dtype {targets.dtype}")
    if targets.dim() != 2:
        raise ValueError(f"{where}: 'targets' must be 2-D [N, K], got shape {tuple(targets.shape)}")
    if (N is not None and targets.shape[0] != N) or (K is not None and targets.shape[1] != K):
        raise ValueError(f"{where}: 'targets' must be [N, K] = [{N}, {K}] (rows of 'features', rows of "
                         f"'prototypes'), got {tuple(targets.shape)}")
    if targets.numel():
        bad = (targets < -1) | (targets > 1)
        if bool(bad.any()):
            raise ValueError(f"{where}: 'targets' values must be in {{-1, 0, 1}}, found {int(targets[bad][0])}")


@torch.no_grad()
def negative_sample_counts(targets: Tensor, eta: float = 5.0) -> Tuple[Tensor, Tensor, Tensor]:
    """Per-label positive, negative and kept-negative counts.

    Args:
        targets: ``[N, K]`` int8 (1 positive, 0 negative, -1 unknown).
        eta: ratio of kept negatives to positives (``>= 0``; ``inf`` keeps all).

    Returns:
        ``(n_pos [K], n_neg [K], m [K])`` int64 on ``targets.device`` with
        ``m_k = min(floor(eta * n_pos_k), n_neg_k)``, and ``m_k = n_neg_k`` for a label
        with no positive. ``eta * n_pos`` is computed in float64 and a product within
        ``1e-9`` (relative) of an integer is snapped to it before ``floor``.
    """
    eta = _check_eta("negative_sample_counts", eta)
    _check_targets("negative_sample_counts", targets)
    return _counts(targets, eta)


def _counts(targets: Tensor, eta: float) -> Tuple[Tensor, Tensor, Tensor]:
    n_pos = (targets == 1).sum(0, dtype=torch.int64)
    n_neg = (targets == 0).sum(0, dtype=torch.int64)
    x = eta * n_pos.to(torch.float64)
    r = torch.round(x)
    near = (x - r).abs() <= _SNAP_RTOL * x.abs().clamp(min=1.0)
    fl = torch.where(near, r, torch.floor(x))
    neg_f = n_neg.to(torch.float64)
    m = torch.where(n_pos > 0, torch.minimum(fl, neg_f), neg_f).to(torch.int64)
    return n_pos, n_neg, m


class NegativeSampler:
    """Prototype-nearest negative sampling mask.

    Args:
        eta: kept negatives per positive (``m_k = min(floor(eta * n_pos_k), n_neg_k)``;
            the method's default is 5; 0 keeps only positives — except for labels with
            no positive, which keep all negatives).
        backend: ``"exact"`` (chunked torch), ``"faiss"`` (not implemented yet: issue 5)
            or ``"auto"`` (currently ``"exact"``).
        index: FAISS index kind, ``"flat"`` (exact inner product) or ``"ivf"``
            (approximate); used by the FAISS backend only.
        nprobe: IVF cells probed (FAISS ``"ivf"`` only).
        nlist: IVF cells (FAISS ``"ivf"`` only); ``None`` chooses from ``N``.
        chunk_size: rows of ``features`` processed at a time by the exact backend.

    ``select(features [N, D], prototypes [K, D], targets [N, K] int8) -> [N, K] bool``:
    True for every positive and for each label's ``m_k`` negatives most cosine-similar
    (``F.normalize`` on both sides) to its prototype; False for unknowns and the other
    negatives. Prototypes of labels that need no search (no positive, ``m_k = 0`` or
    ``m_k = n_neg_k``) are not read, so they may be zero or NaN.

    Ties: negatives with equal similarity at a label's boundary are broken arbitrarily
    (by ``torch.topk``); exactly ``m_k`` negatives are always selected, and every
    selected negative has similarity ``>=`` every unselected negative of that label.

    Memory of the exact backend: ``O(N * D + chunk_size * K)`` plus the ``N x K`` bool
    output; labels are searched in groups whose running top-``m`` buffers hold at most
    ``chunk_size * K`` entries (a single label may exceed that: its buffer is ``O(N)``).
    """

    def __init__(self, eta: float = 5.0, backend: str = "auto", index: str = "flat", nprobe: int = 16,
                 nlist: Optional[int] = None, chunk_size: int = 65536):
        self.eta = _check_eta("NegativeSampler", eta)
        if backend not in _BACKENDS:
            raise ValueError(f"NegativeSampler: 'backend' must be one of {_BACKENDS}, got {backend!r}")
        if index not in _INDEXES:
            raise ValueError(f"NegativeSampler: 'index' must be one of {_INDEXES}, got {index!r}")
        if not isinstance(nprobe, int) or isinstance(nprobe, bool) or nprobe < 1:
            raise ValueError(f"NegativeSampler: 'nprobe' must be an int >= 1, got {nprobe!r}")
        if nlist is not None and (not isinstance(nlist, int) or isinstance(nlist, bool) or nlist < 1):
            raise ValueError(f"NegativeSampler: 'nlist' must be None or an int >= 1, got {nlist!r}")
        if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
            raise ValueError(f"NegativeSampler: 'chunk_size' must be an int >= 1, got {chunk_size!r}")
        self.backend, self.index, self.nprobe, self.nlist = backend, index, nprobe, nlist
        self.chunk_size = chunk_size

    @property
    def resolved_backend(self) -> str:
        """The backend ``select`` uses: ``"auto"`` resolves to ``"exact"`` for now."""
        return "exact" if self.backend == "auto" else self.backend

    def counts(self, targets: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """``(n_pos [K], n_neg [K], m [K])`` int64 (see :func:`negative_sample_counts`)."""
        return negative_sample_counts(targets, self.eta)

    @torch.no_grad()
    def select(self, features: Tensor, prototypes: Tensor, targets: Tensor) -> Tensor:
        """Sampling mask.

        Args:
            features: ``[N, D]`` floating features of all training samples.
            prototypes: ``[K, D]`` floating label prototypes (see
                :func:`bbam.label_prototypes`).
            targets: ``[N, K]`` int8 (1 positive, 0 negative, -1 unknown), same device.

        Returns:
            ``[N, K]`` bool on ``features.device`` (see the class docstring).
        """
        self._check_inputs(features, prototypes, targets)
        n_pos, n_neg, m = _counts(targets, self.eta)
        out = targets == 1
        keep_all = m == n_neg                       # includes labels with no positive
        out |= (targets == 0) & keep_all.unsqueeze(0)
        search = ((m > 0) & ~keep_all).nonzero().flatten()   # labels with 0 < m_k < n_neg_k
        if search.numel() == 0:
            return out
        protos = prototypes.index_select(0, search)
        if not bool(torch.isfinite(protos).all()):
            raise ValueError("NegativeSampler.select: 'prototypes' of labels with positives must be finite")
        backend = self.resolved_backend
        if backend == "exact":
            self._select_exact(features, protos, targets, search, m.index_select(0, search), out)
        elif backend == "faiss":
            self._select_faiss(features, protos, targets, search, m.index_select(0, search), out)
        else:  # pragma: no cover - guarded in __init__
            raise AssertionError(backend)
        return out

    # -- backends -----------------------------------------------------------------------------
    # Each backend gets the labels to search (``labels [A]`` int64, with ``0 < m_k < n_neg_k``),
    # their prototypes ``[A, D]`` (finite, not normalised) and kept counts ``m [A]``, and sets
    # ``out[i, labels[j]] = True`` for the ``m[j]`` selected negatives ``i`` of each label.

    def _select_exact(self, features: Tensor, protos: Tensor, targets: Tensor, labels: Tensor, m: Tensor,
                      out: Tensor) -> None:
        N, K = targets.shape
        dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
        pn = F.normalize(protos.to(dtype), dim=1)
        # Group labels (largest m first) so that each group's buffer [A_g, M_g] stays within budget.
        budget = self.chunk_size * max(K, 1)
        m_sorted, perm = torch.sort(m, descending=True)
        m_list: List[int] = m_sorted.tolist()
        start = 0
        while start < len(m_list):
            M = m_list[start]
            stop = min(len(m_list), start + max(1, budget // M))
            g = perm[start:stop]
            self._exact_group(features, pn.index_select(0, g), targets, labels.index_select(0, g),
                              m_sorted[start:stop], M, dtype, out)
            start = stop

    def _exact_group(self, features: Tensor, pn: Tensor, targets: Tensor, labels: Tensor, m: Tensor, M: int,
                     dtype: torch.dtype, out: Tensor) -> None:
        """Running top-``M`` (similarity, row) buffer per label over row chunks."""
        device = features.device
        A = labels.numel()
        # Layout [A, rows]: topk along the contiguous last dim is much faster than along dim 0.
        buf_v = torch.full((A, M), float("-inf"), dtype=dtype, device=device)
        buf_i = torch.full((A, M), -1, dtype=torch.int64, device=device)
        N = features.shape[0]
        for s in range(0, N, self.chunk_size):
            e = min(N, s + self.chunk_size)
            f = F.normalize(features[s:e].to(dtype), dim=1)
            sim = pn @ f.T                                                  # [A, c]
            neg = (targets[s:e].index_select(1, labels) == 0).T
            sim = sim.masked_fill(~neg, float("-inf"))
            buf_v, j = torch.topk(torch.cat([buf_v, sim], 1), M, dim=1, largest=True, sorted=False)
            # j < M: from the buffer; j >= M: row s + j - M of this chunk.
            buf_i = torch.where(j < M, buf_i.gather(1, j.clamp(max=M - 1)), j + (s - M))
        # Top m_j of each row (all real negatives since m_j <= n_neg_j).
        buf_v, j = torch.sort(buf_v, dim=1, descending=True)
        buf_i = buf_i.gather(1, j)
        valid = torch.arange(M, device=device).unsqueeze(0) < m.to(device).unsqueeze(1)   # [A, M]
        out[buf_i[valid], labels.unsqueeze(1).expand(A, M)[valid]] = True

    def _select_faiss(self, features: Tensor, protos: Tensor, targets: Tensor, labels: Tensor, m: Tensor,
                      out: Tensor) -> None:
        """FAISS backend (``index="flat"`` exact inner product, ``"ivf"`` approximate with
        ``nlist`` / ``nprobe``) — same contract as :meth:`_select_exact`."""
        raise NotImplementedError("FAISS backend: see issue 5")

    # -- validation -----------------------------------------------------------------------------

    @staticmethod
    def _check_inputs(features: Tensor, prototypes: Tensor, targets: Tensor) -> None:
        where = "NegativeSampler.select"
        for name, t in (("features", features), ("prototypes", prototypes)):
            if not isinstance(t, Tensor):
                raise TypeError(f"{where}: '{name}' must be a torch.Tensor, got {type(t).__name__}")
            if t.dim() != 2:
                raise ValueError(f"{where}: '{name}' must be 2-D, got shape {tuple(t.shape)}")
            if not t.is_floating_point():
                raise ValueError(f"{where}: '{name}' must be floating, got dtype {t.dtype}")
        if prototypes.shape[1] != features.shape[1]:
            raise ValueError(f"{where}: 'features' [N, D] and 'prototypes' [K, D] must agree on D, got "
                             f"{tuple(features.shape)} and {tuple(prototypes.shape)}")
        _check_targets(where, targets, features.shape[0], prototypes.shape[0])
        if prototypes.device != features.device or targets.device != features.device:
            raise ValueError(f"{where}: 'features', 'prototypes' and 'targets' must be on one device, got "
                             f"{features.device}, {prototypes.device}, {targets.device}")
        if not bool(torch.isfinite(features).all()):
            raise ValueError(f"{where}: 'features' must be finite")

    def __repr__(self) -> str:
        return (f"NegativeSampler(eta={self.eta}, backend={self.backend!r}, index={self.index!r}, "
                f"nprobe={self.nprobe}, nlist={self.nlist}, chunk_size={self.chunk_size})")
