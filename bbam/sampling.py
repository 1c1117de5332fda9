"""Prototype-based negative sampling.

The method (docs/METHOD.md): over all training samples (labeled + pseudo-labeled), for
each label ``k`` keep every positive and only the

    ``m_k = min(floor(eta * n_pos_k), n_neg_k)``

negatives whose features are most cosine-similar to the label prototype ``p_k`` (the
hard negatives); the other negatives get weight 0 this epoch. A label with no positive
has no prototype and keeps all its negatives. Unknown entries (``-1``) are never
selected. For frequent labels ``m_k = n_neg_k`` (keep all, nothing to search); for rare
labels it is a nearest-neighbour search of ``p_k`` among the label's negatives.

Backends:

* ``"exact"`` (the default through ``"auto"``): :func:`bbam.ops.negative_select`, a
  fused C++/CUDA op: a seeded sample of rows places each label's *band* of cosines around
  its threshold (the ``m_k``-th largest negative cosine); one tiled pass over all rows
  (GEMM of a row tile with the normalised prototypes, then a vectorised classification)
  selects the negatives above the band and collects those inside it; each label is
  completed from its candidates; a label whose threshold fell outside its band (~1e-6 per
  label) is scanned again with that side opened. Exact, any device; ties go to the lower
  row; memory ``O(K * D + tile * K + candidates)`` plus the ``N x K`` bool output (no
  ``N x K`` score matrix). Measured against the research code's method (full ``N x K``
  cosine matrix, full sort per label; ``bench/sampling.py``, 2 CPU cores): 10-25x faster
  and ~1/10 of its memory, e.g. N = 100k, K = 80: 32 ms vs 432 ms; N = 1M, K = 1000:
  2.7 s with 1.24 GiB extra (1 GB of it the output) where the naive method needs 16.8 GiB.
* ``"faiss"``: one FAISS inner-product index over the L2-normalised float32 features,
  built once per :meth:`NegativeSampler.select` call and shared by all labels; each
  searched label queries its normalised prototype (see :mod:`bbam.sampling_faiss`).
  ``index="flat"`` (``IndexFlatIP``) is exact; ``index="ivf"`` (``IndexIVFFlat``,
  inner product) is approximate. GPU FAISS is used when the features are on CUDA and
  ``faiss.StandardGpuResources`` exists. On the development CPU it was 6-10x slower than
  ``"exact"`` (FAISS's k-selection heaps cost more than one band pass when ``k`` is
  thousands); it stays for FAISS-based pipelines and the approximate IVF index.
* ``"auto"``: ``"exact"`` (the fastest measured everywhere; GPU timings are still to be
  taken).

The FAISS backend (index, search batches, widening, dense route, IVF, threads, memory)
is in :mod:`bbam.sampling_faiss`.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Tuple

import torch
from torch import Tensor

from .ops import as_targets
from .sampling_faiss import select_faiss

__all__ = ["NegativeSampler", "negative_sample_counts"]

_BACKENDS = ("auto", "exact", "faiss")
_INDEXES = ("flat", "ivf")
_SNAP_RTOL = 1e-9


def _check_eta(where: str, eta: float) -> float:
    try:
        eta = float(eta)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: 'eta' must be a non-negative number, got {eta!r}") from None
    if not eta >= 0.0:  # also rejects NaN
        raise ValueError(f"{where}: 'eta' must be >= 0, got {eta}")
    return eta


def _check_targets(where: str, targets: Tensor, N: Optional[int] = None, K: Optional[int] = None) -> Tensor:
    """Shape checks; returns the targets as int8 (bool / integer / float converted by
    :func:`bbam.ops.as_targets`)."""
    targets = as_targets(targets, where)
    if targets.dim() != 2:
        raise ValueError(f"{where}: 'targets' must be 2-D [N, K], got shape {tuple(targets.shape)}")
    if (N is not None and targets.shape[0] != N) or (K is not None and targets.shape[1] != K):
        raise ValueError(f"{where}: 'targets' must be [N, K] = [{N}, {K}] (rows of 'features', rows of "
                         f"'prototypes'), got {tuple(targets.shape)}")
    return targets


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
    targets = _check_targets("negative_sample_counts", targets)
    return _counts(targets, eta)


@contextlib.contextmanager
def _value_errors(where: str) -> Iterator[None]:
    """Re-raise the ops' argument errors (bad target values, non-finite inputs) as the
    ``ValueError`` this module raises for bad arguments, naming the caller."""
    try:
        yield
    except RuntimeError as e:
        msg = str(e).split("\n")[0]
        if "argument '" in msg and ("must only contain" in msg or "must be finite" in msg):
            raise ValueError(f"{where}: {msg}") from None
        raise


def _counts(targets: Tensor, eta: float, where: str = "negative_sample_counts") -> Tuple[Tensor, Tensor, Tensor]:
    with _value_errors(where):   # the counting op validates the target values
        counts = torch.ops.bbam._label_counts(targets)   # [3, K]: negatives, positives, unknowns
    n_neg, n_pos = counts[0], counts[1]
    x = eta * n_pos.to(torch.float64)
    r = torch.round(x)
    near = (x - r).abs() <= _SNAP_RTOL * x.abs().clamp(min=1.0)
    fl = torch.where(near, r, torch.floor(x))
    neg_f = n_neg.to(torch.float64)
    m = torch.where(n_pos > 0, torch.minimum(fl, neg_f), neg_f).to(torch.int64)
    return n_pos, n_neg, m


# -- exact backend ------------------------------------------------------------------------------

_BAND_SAMPLE_MIN = 4096      # rows sampled to place the bands of bbam.ops.negative_select:
_BAND_SAMPLE_MAX = 65536     # N / 32 within [min, max]; none when N <= 2 * that
_BAND_Z = 5.0                # band half-width in binomial standard deviations


def band_sample_size(N: int) -> int:
    """Rows :func:`bbam.ops.negative_select` samples to place its bands for ``N`` rows
    (0: none, every negative is a candidate): ``N / 32`` within [4096, 65536], 0 when
    ``N`` is at most twice that. Only speed depends on it (bench/sampling.py)."""
    S = min(_BAND_SAMPLE_MAX, max(_BAND_SAMPLE_MIN, N // 32))
    return 0 if N <= 2 * S else S


class NegativeSampler:
    """Prototype-nearest negative sampling mask.

    Args:
        eta: kept negatives per positive (``m_k = min(floor(eta * n_pos_k), n_neg_k)``;
            the method's default is 5; 0 keeps only positives — except for labels with
            no positive, which keep all negatives).
        backend: ``"exact"`` (:func:`bbam.ops.negative_select`, fused C++/CUDA),
            ``"faiss"`` (FAISS index, exact torch fallback for some labels; see
            :mod:`bbam.sampling_faiss`) or ``"auto"`` (``"exact"``: the fastest measured).
        index: FAISS index kind, ``"flat"`` (exact inner product) or ``"ivf"``
            (approximate); used by the FAISS backend only.
        nprobe: IVF cells probed at least (FAISS ``"ivf"`` only); a search of ``k``
            neighbours probes ``max(nprobe, ceil(16 * k * nlist / N))`` cells. The default
            16 gives >= 0.95 recall of the selected negatives on clustered and isotropic
            random data and MULAN bibtex (``tests/test_sampling.py``; figures in
            :mod:`bbam.sampling_faiss`).
        nlist: IVF cells (FAISS ``"ivf"`` only); ``None`` chooses
            ``round(sqrt(N))``, capped at ``N // 39`` (see :func:`bbam.sampling_faiss.default_nlist`).
        chunk_size: FAISS backend: rows normalised and added to the index at a time,
            and the row blocks of its bookkeeping (the exact backend tiles rows itself).
        faiss_threads: OpenMP threads of CPU FAISS during ``select`` (set, then
            restored; no effect on GPU FAISS); ``None`` leaves FAISS's own setting (``OMP_NUM_THREADS`` /
            ``faiss.omp_set_num_threads``, all cores by default). Default 1: FAISS wheels
            bundle their own OpenMP runtime beside torch's, and as ``select`` alternates
            torch ops and FAISS searches, each runtime's spin-waiting threads steal the
            other's cores; with FAISS's barrier-heavy blocked search this made
            multi-threaded FAISS 3-10x *slower* than single-threaded on the 2-core
            development machine (``bench/sampling.py``: faiss-flat vs faiss-flat-mt;
            see also pytorch/pytorch#98836, facebookresearch/faiss#2499). torch keeps its
            threads either way (the dense route, normalisation, bookkeeping).
        random_share: besides the ``m_k`` hardest, keep each other negative with this
            probability (0, the method's rule: hardest only). The hardest negatives of a
            rare label look like its positives -- with noisy pseudo-labels often hidden
            positives -- and a label trained only on them never sees an easy negative;
            a random share of the rest restores some. Drawn from ``select``'s
            ``generator``.

    ``select(features [N, D], prototypes [K, D], targets [N, K] int8) -> [N, K] bool``:
    True for every positive and for each label's ``m_k`` negatives most cosine-similar
    (``F.normalize`` on both sides) to its prototype; False for unknowns and the other
    negatives. Prototypes of labels that need no search (no positive, ``m_k = 0`` or
    ``m_k = n_neg_k``) are not read, so they may be zero or NaN.

    Ties: exact backend: negatives with equal cosine at a label's boundary go to the
    lower row, whatever the thread count; FAISS backend: by FAISS's result order or
    ``torch.topk``. Exactly ``m_k`` negatives are always selected, and every selected
    negative has cosine ``>=`` every unselected negative of that label (in float32 —
    float64 for float64 features with the exact backend; ``index="ivf"``: only
    approximately).

    Memory of the exact backend: ``O(K * D + tile * K + candidates)`` plus the ``N x K``
    bool output (candidates: the negatives inside the labels' bands, a few percent of
    them). The FAISS backend: the index (``4 * N * D`` bytes) plus bounded search results
    (see :mod:`bbam.sampling_faiss`). Their float32 cosines (different summation orders) may
    order near-ties, within float32 rounding, differently.
    """

    def __init__(self, eta: float = 5.0, backend: str = "auto", index: str = "flat", nprobe: int = 16,
                 nlist: Optional[int] = None, chunk_size: int = 65536, faiss_threads: Optional[int] = 1,
                 random_share: float = 0.0):
        self.eta = _check_eta("NegativeSampler", eta)
        if not (isinstance(random_share, (int, float)) and not isinstance(random_share, bool)
                and 0.0 <= float(random_share) <= 1.0):
            raise ValueError(f"NegativeSampler: 'random_share' must be a number in [0, 1], got {random_share!r}")
        self.random_share = float(random_share)
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
        if faiss_threads is not None and (not isinstance(faiss_threads, int) or isinstance(faiss_threads, bool)
                                          or faiss_threads < 1):
            raise ValueError(f"NegativeSampler: 'faiss_threads' must be None or an int >= 1, got {faiss_threads!r}")
        self.backend, self.index, self.nprobe, self.nlist = backend, index, nprobe, nlist
        self.chunk_size, self.faiss_threads = chunk_size, faiss_threads

    @property
    def resolved_backend(self) -> str:
        """The backend ``select`` uses: ``"auto"`` resolves to ``"exact"`` (see the module
        docstring for the measurements behind that choice)."""
        return "exact" if self.backend == "auto" else self.backend

    def counts(self, targets: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """``(n_pos [K], n_neg [K], m [K])`` int64 (see :func:`negative_sample_counts`)."""
        return negative_sample_counts(targets, self.eta)

    @torch.no_grad()
    def select(self, features: Tensor, prototypes: Tensor, targets: Tensor,
               generator: Optional[torch.Generator] = None) -> Tensor:
        """Sampling mask.

        Args:
            features: ``[N, D]`` floating features of all training samples.
            prototypes: ``[K, D]`` floating label prototypes (see
                :func:`bbam.label_prototypes`).
            targets: ``[N, K]`` int8 (1 positive, 0 negative, -1 unknown; bool, integer
                and float are converted, see :func:`bbam.ops.as_targets`), same device.
            generator: CPU generator of the ``random_share`` draws (ignored when it is 0).

        Returns:
            ``[N, K]`` bool on ``features.device`` (see the class docstring).

        Raises:
            ValueError naming the argument: shapes, dtypes, devices, target values outside
            ``{-1, 0, 1}``; non-finite features or prototypes of labels that need ranking
            (features are read only when some label does).
        """
        targets = self._check_inputs(features, prototypes, targets)
        mask = self._select_hardest(features, prototypes, targets)
        if self.random_share > 0:
            self._add_random_negatives(mask, targets, generator)
        return mask

    def _add_random_negatives(self, mask: Tensor, targets: Tensor, generator: Optional[torch.Generator]) -> None:
        """Keep each unselected negative with probability ``random_share`` (row chunks: no
        ``N x K`` float temporary). Labels that keep all negatives are unaffected."""
        for start in range(0, mask.shape[0], self.chunk_size):
            t, m = targets[start:start + self.chunk_size], mask[start:start + self.chunk_size]
            draw = torch.rand(t.shape, generator=generator).to(m.device) < self.random_share
            m |= (t == 0) & draw

    def _select_hardest(self, features: Tensor, prototypes: Tensor, targets: Tensor) -> Tensor:
        where = "NegativeSampler.select"
        n_pos, n_neg, m = _counts(targets, self.eta, where)
        backend = self.resolved_backend
        if backend == "exact":   # the op checks features and the searched prototypes itself
            with _value_errors(where):
                return self._select_exact(features, prototypes, targets, m)
        if backend != "faiss":  # pragma: no cover - guarded in __init__
            raise AssertionError(backend)
        if features.numel():   # min/max reductions: NaN and +-inf propagate, no [N, D] temporary
            lo, hi = torch.aminmax(features)
            if not bool(torch.isfinite(lo) & torch.isfinite(hi)):
                raise ValueError(f"{where}: 'features' must be finite")
        keep_all = m == n_neg                                 # includes labels with no positive
        search = ((m > 0) & ~keep_all).nonzero().flatten()   # labels with 0 < m_k < n_neg_k
        protos = prototypes.index_select(0, search)
        if search.numel() and not bool(torch.isfinite(protos).all()):
            raise ValueError(f"{where}: 'prototypes' of labels with positives must be finite")
        # positives and the keep_all labels' negatives, in one pass
        out = self._select_exact(features, prototypes, targets, torch.where(keep_all, m, 0))
        select_faiss(features, protos, targets, search, m.index_select(0, search), out,
                     n_pos.index_select(0, search), n_neg.index_select(0, search), index_kind=self.index,
                     nlist=self.nlist, nprobe=self.nprobe, chunk_size=self.chunk_size,
                     faiss_threads=self.faiss_threads)
        return out

    # -- backends -----------------------------------------------------------------------------
    # _select_exact returns the whole mask from the kept counts m [K]; the FAISS backend,
    # bbam.sampling_faiss.select_faiss, fills in the labels that need a search.

    def _select_exact(self, features: Tensor, prototypes: Tensor, targets: Tensor, m: Tensor) -> Tensor:
        """Exact backend: :func:`bbam.ops.negative_select` (one tiled pass over the rows,
        bands placed from a sample of :func:`band_sample_size` rows)."""
        from . import ops
        return ops.negative_select(features, prototypes, targets, m.to(features.device),
                                   band_sample_size(features.shape[0]), _BAND_Z)

    # -- validation -----------------------------------------------------------------------------

    @staticmethod
    def _check_inputs(features: Tensor, prototypes: Tensor, targets: Tensor) -> Tensor:
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
        targets = _check_targets(where, targets, features.shape[0], prototypes.shape[0])
        if prototypes.device != features.device or targets.device != features.device:
            raise ValueError(f"{where}: 'features', 'prototypes' and 'targets' must be on one device, got "
                             f"{features.device}, {prototypes.device}, {targets.device}")
        return targets

    def __repr__(self) -> str:
        return (f"NegativeSampler(random_share={self.random_share}, eta={self.eta}, backend={self.backend!r}, index={self.index!r}, "
                f"nprobe={self.nprobe}, nlist={self.nlist}, chunk_size={self.chunk_size}, "
                f"faiss_threads={self.faiss_threads})")
