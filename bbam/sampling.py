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
  searched label queries its normalised prototype (see :meth:`NegativeSampler._select_faiss`).
  ``index="flat"`` (``IndexFlatIP``) is exact; ``index="ivf"`` (``IndexIVFFlat``,
  inner product) is approximate. GPU FAISS is used when the features are on CUDA and
  ``faiss.StandardGpuResources`` exists. On the development CPU it was 6-10x slower than
  ``"exact"`` (FAISS's k-selection heaps cost more than one band pass when ``k`` is
  thousands); it stays for FAISS-based pipelines and the approximate IVF index.
* ``"auto"``: ``"exact"`` (the fastest measured everywhere; GPU timings are still to be
  taken).

FAISS backend in brief (details in :meth:`NegativeSampler._select_faiss`):

* **Direction.** A label needs its ``m_k`` nearest negatives; when ``m_k > n_neg_k / 2``
  it is cheaper to find the ``n_neg_k - m_k`` *farthest* negatives (search with
  ``-p_k``) and keep every other negative. Either way ``q_k = min(m_k, n_neg_k - m_k)``
  negatives are searched for.
* **Widening.** A search asks for ``k`` neighbours, ``k`` estimated so that ``q_k``
  negatives survive removing positives and unknowns; labels short of ``q_k`` negatives
  are searched again with ``k`` at least doubled. Labels of similar ``k`` share one
  ``search`` call.
* **Dense route.** When ``k`` is a large fraction of ``N`` a FAISS search is a full scan
  plus heap/reservoir selection, slower than a dense ``topk``: labels with
  ``k > max(1024, N / 8)`` (IVF: ``k > max(1024, N / 64)``, where ``16 k`` probed vectors
  would be over a quarter of the data), labels over the GPU limit ``k <= 2048``, labels
  whose widened ``k`` crosses these limits, and IVF labels whose probed cells ran out
  are selected exactly with torch (blocks of ``[labels, N]`` float32 similarities,
  ``topk`` per label). With a long tail of label frequencies and ``eta = 5`` most labels
  take this route; FAISS serves the rare ones.
* **IVF.** ``nlist`` defaults to ``round(sqrt(N))`` capped so that every cell has
  >= 39 points (:func:`default_nlist`; k-means on a seeded sample of <= ``64 * nlist``
  rows, FAISS's 10 iterations). A search of ``k`` neighbours probes
  ``max(nprobe, ceil(16 * k * nlist / N))`` cells (at most ``nlist``): ``nprobe``
  (default 16) is the floor for small ``k``, the second term keeps the probed pool at
  ~16x ``k``. Recall of the selected negatives (``|IVF ∩ exact| / |exact|`` over the
  searched labels) with these defaults, eta 1 / 5: clustered random data 0.998+ / 1.000,
  isotropic Gaussian data 0.98 / 1.000, MULAN bibtex 0.994 / 0.9999, enron, medical,
  reuters21578, scene, yeast >= 0.995 (``tests/test_sampling.py``). A 4x pool gave
  0.92 on bibtex and 0.60 on isotropic data at eta 1. ``4 * sqrt(N)`` cells (FAISS's
  usual advice) cost ~10x more k-means time here (176 s at N = 1M on 2 cores) for
  an index rebuilt every epoch.
* **Threads.** CPU FAISS runs single-threaded by default (``faiss_threads=1``: its
  OpenMP runtime and torch's fight over the cores otherwise); torch keeps its threads.
  See :class:`NegativeSampler`.
* **Ties / precision.** Similarities are float32 inner products of normalised vectors
  (BLAS in FAISS, torch in the dense route); negatives tied at a label's boundary are
  broken arbitrarily (by FAISS's result order or ``torch.topk``). Exactly ``m_k``
  negatives are always selected. With ``index="flat"`` every selected negative has
  float32 similarity ``>=`` every unselected one (the exact backend works in float64
  for float64 inputs, so near-ties within float32 rounding may resolve differently).
* **Memory.** ``4 * N * D`` bytes for the index (flat: the index storage doubles as the
  normalised features of the dense route; IVF: plus ``8 * N`` of ids and the centroids),
  plus the ``N x K`` bool output, plus per search call ``A x k`` results bounded by
  ``2**23`` entries (~0.2 GB with their temporaries; one label with a larger ``k`` goes
  alone), plus dense blocks of <= ``2**25`` float32 similarities (128 MiB) with their
  ``[N, A_g]`` target slices. Measured at N = 1M, D = 256, K = 1000: see
  ``bench/sampling.py`` (< 4 GiB extra including the 1 GB output).
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .ops import as_targets

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
_IVF_POOL = 16              # probe enough cells to hold ~ this many times k vectors
_IVF_MAX_PROBED = 0.25      # IVF searches probing more than this share of the data go dense
_IVF_SEED = 0               # seed of the training sample
_BLOCK_BYTES = 16 << 20     # normalised row blocks of the FAISS backend (<= glibc's mmap threshold cap)


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


# -- FAISS helpers -----------------------------------------------------------------------------

_faiss_cache: List[Any] = []


def _import_faiss() -> Any:
    """The ``faiss`` module, or ``None`` when it is not importable (checked once)."""
    if not _faiss_cache:
        try:
            import faiss  # noqa: F401
        except ImportError:
            faiss = None
        _faiss_cache.append(faiss)
    return _faiss_cache[0]


def _use_faiss_gpu(faiss: Any, device: torch.device) -> bool:
    """Whether the FAISS index lives on the GPU: CUDA features and a GPU build of FAISS."""
    return device.type == "cuda" and hasattr(faiss, "StandardGpuResources")


def _max_search_k(gpu: bool) -> Optional[int]:
    """Largest ``k`` (and ``nprobe``) one search may use: FAISS's GPU limit, none on CPU."""
    return _GPU_MAX_K if gpu else None


def _index_to_gpu(faiss: Any, index: Any, device: torch.device) -> Tuple[Any, Any]:
    """``(gpu_index, resources)``: the (empty, trained) CPU ``index`` moved to ``device``;
    rows and queries are then passed as CUDA tensors (``faiss.contrib.torch_utils``)."""
    import faiss.contrib.torch_utils  # noqa: F401
    res = faiss.StandardGpuResources()
    dev = device.index if device.index is not None else torch.cuda.current_device()
    return faiss.index_cpu_to_gpu(res, dev, index), res


def default_nlist(n: int) -> int:
    """Default IVF cell count for ``n`` vectors: ``round(sqrt(n))``, capped so that every
    cell gets >= 39 points on average (and >= 1)."""
    return max(1, min(int(round(math.sqrt(n))), n // _IVF_MIN_PER_LIST))


def _block_rows(D: int, chunk: int) -> int:
    """Rows per normalised block: ``chunk``, at most ``_BLOCK_BYTES`` of float32 (blocks
    that small are recycled by the allocator instead of page-faulted afresh each time)."""
    return max(1, min(chunk, _BLOCK_BYTES // (4 * max(D, 1))))


def _normalized(x: Tensor, device: torch.device) -> Tensor:
    """Row-normalised float32 copy of ``x`` on ``device`` (float64 inputs normalised in float64)."""
    hi = torch.float64 if x.dtype == torch.float64 else torch.float32
    return F.normalize(x.to(device=device, dtype=hi), dim=1).to(torch.float32).contiguous()


class _FaissIndex:
    """Inner-product FAISS index over the L2-normalised float32 rows of ``features``.

    Built once per ``select`` call: flat (``IndexFlatIP``) or IVF (``IndexIVFFlat``,
    ``METRIC_INNER_PRODUCT``, k-means on a seeded sample). On GPU the (empty, trained)
    CPU index is moved with ``index_cpu_to_gpu``, rows are added from CUDA tensors and
    searches run on torch's current stream (``faiss.contrib.torch_utils``).
    """

    def __init__(self, faiss: Any, features: Tensor, kind: str, nlist: Optional[int], chunk: int):
        N, D = features.shape
        self.faiss, self.N = faiss, N
        self.gpu = _use_faiss_gpu(faiss, features.device)
        self.max_k = _max_search_k(self.gpu)
        self._res: Any = None   # GPU resources when the index is really on a GPU
        if kind == "flat":
            self.nlist: Optional[int] = None
            index = faiss.IndexFlatIP(D)
        else:
            self.nlist = min(default_nlist(N) if nlist is None else nlist, N)
            self._quantizer = faiss.IndexFlatIP(D)
            index = faiss.IndexIVFFlat(self._quantizer, D, self.nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.min_points_per_centroid = 1   # nlist is clamped above; no warnings
            n_train = min(N, _IVF_TRAIN_PER_LIST * self.nlist)
            gen = torch.Generator().manual_seed(_IVF_SEED)
            rows = torch.randperm(N, generator=gen)[:n_train].sort().values if n_train < N else None
            sample = features if rows is None else features.index_select(0, rows.to(features.device))
            index.train(_normalized(sample, torch.device("cpu")).numpy())
        if self.gpu:
            index, self._res = _index_to_gpu(faiss, index, features.device)
        self.index = index
        self.device = features.device if self._res is not None else torch.device("cpu")
        cpu_flat = kind == "flat" and self._res is None
        if cpu_flat:
            index.codes.resize(4 * N * D)      # reserve once: adds then never reallocate
            index.codes.resize(0)
        rows = _block_rows(D, chunk)
        for s in range(0, N, rows):
            self._add(_normalized(features[s:s + rows], self.device))
        # normalised rows [N, D] at hand: a CPU flat index's own storage (no copy)
        self.xb: Optional[Tensor] = None
        if cpu_flat and N:
            self.xb = torch.from_numpy(faiss.rev_swig_ptr(index.get_xb(), N * D).reshape(N, D))

    @contextlib.contextmanager
    def _stream(self) -> Iterator[None]:
        if self._res is None:
            yield
            return
        from faiss.contrib import torch_utils
        if hasattr(torch_utils, "using_stream"):
            with torch_utils.using_stream(self._res):
                yield
        else:  # pragma: no cover - old FAISS: default stream, synchronise around calls
            torch.cuda.synchronize()
            yield

    def _add(self, x: Tensor) -> None:
        with self._stream():
            self.index.add(x if self._res is not None else x.numpy())

    def nprobe_for(self, k: int, nprobe: int) -> int:
        """Cells probed for a search of ``k``: ``nprobe``, raised so that the probed cells
        hold about ``_IVF_POOL * k`` vectors, at most ``nlist`` (and the GPU limit)."""
        assert self.nlist is not None
        p = max(nprobe, math.ceil(_IVF_POOL * k * self.nlist / max(self.N, 1)))
        p = min(p, self.nlist)
        return p if self.max_k is None else min(p, self.max_k)

    def search(self, queries: Tensor, k: int, nprobe: int) -> Tensor:
        """Ids ``[A, k]`` (int64, ``-1`` where fewer than ``k`` vectors were reached) of the
        largest inner products with ``queries [A, D]`` (float32), best first."""
        q = queries.to(self.device, torch.float32).contiguous()
        if self.nlist is not None:
            p = self.nprobe_for(k, nprobe)
            if hasattr(self.index, "setNumProbes"):  # pragma: no cover - older GPU indexes
                self.index.setNumProbes(p)
            else:
                self.index.nprobe = p
        if self._res is not None:
            with self._stream():
                _, ids = self.index.search(q, k)
            return ids
        with _blas_for_all_batches(self.faiss):
            _, ids = self.index.search(q.numpy(), k)
        return torch.from_numpy(ids)


@contextlib.contextmanager
def _faiss_threads(faiss: Any, n: Optional[int]) -> Iterator[None]:
    """FAISS's OpenMP thread count set to ``n`` for the block, then restored (``None``: unchanged)."""
    if n is None or faiss is None or not hasattr(faiss, "omp_set_num_threads"):
        yield
        return
    old = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(old)


@contextlib.contextmanager
def _blas_for_all_batches(faiss: Any) -> Iterator[None]:
    """Flat CPU search through BLAS whatever the batch size.

    FAISS scans with one SIMD pass over the database *per query* when
    ``n_queries * D < distance_compute_blas_threshold`` (128000: under 500 queries at
    D=256), which is memory-bound and ~7x slower here than its BLAS blocks for tens of
    queries. The threshold is a process global: set to 0 for the call, then restored.
    """
    cvar = getattr(faiss, "cvar", None)
    if cvar is None or not hasattr(cvar, "distance_compute_blas_threshold"):  # pragma: no cover
        yield
        return
    old = cvar.distance_compute_blas_threshold
    cvar.distance_compute_blas_threshold = 0
    try:
        yield
    finally:
        cvar.distance_compute_blas_threshold = old


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
            ``"faiss"`` (FAISS index, exact torch fallback for some labels; see the module
            docstring) or ``"auto"`` (``"exact"``: the fastest measured).
        index: FAISS index kind, ``"flat"`` (exact inner product) or ``"ivf"``
            (approximate); used by the FAISS backend only.
        nprobe: IVF cells probed at least (FAISS ``"ivf"`` only); a search of ``k``
            neighbours probes ``max(nprobe, ceil(16 * k * nlist / N))`` cells. The default
            16 gives >= 0.95 recall of the selected negatives on clustered and isotropic
            random data and MULAN bibtex (``tests/test_sampling.py``; figures in the
            module docstring).
        nlist: IVF cells (FAISS ``"ivf"`` only); ``None`` chooses
            ``round(sqrt(N))``, capped at ``N // 39`` (see :func:`default_nlist`).
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
    (see the module docstring). Their float32 cosines (different summation orders) may
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
        with _faiss_threads(_import_faiss(), self.faiss_threads):
            self._select_faiss(features, protos, targets, search, m.index_select(0, search), out,
                               n_pos=n_pos.index_select(0, search), n_neg=n_neg.index_select(0, search))
        return out

    # -- backends -----------------------------------------------------------------------------
    # _select_exact returns the whole mask from the kept counts m [K]. _select_faiss gets the
    # labels to search (``labels [A]`` int64, with ``0 < m_k < n_neg_k``), their prototypes
    # ``[A, D]`` (finite, not normalised) and kept counts ``m [A]``, and sets
    # ``out[i, labels[j]] = True`` for the ``m[j]`` selected negatives ``i`` of each label.

    def _select_exact(self, features: Tensor, prototypes: Tensor, targets: Tensor, m: Tensor) -> Tensor:
        """Exact backend: :func:`bbam.ops.negative_select` (one tiled pass over the rows,
        bands placed from a sample of :func:`band_sample_size` rows)."""
        from . import ops
        return ops.negative_select(features, prototypes, targets, m.to(features.device),
                                   band_sample_size(features.shape[0]), _BAND_Z)

    def _select_faiss(self, features: Tensor, protos: Tensor, targets: Tensor, labels: Tensor, m: Tensor,
                      out: Tensor, n_pos: Optional[Tensor] = None, n_neg: Optional[Tensor] = None) -> None:
        """FAISS backend (``index="flat"`` exact inner product, ``"ivf"`` approximate with
        ``nlist`` / ``nprobe``) — same contract as :meth:`_select_exact`.

        Per label ``j`` (``n_pos``, ``n_neg``: its counts; computed when not given):

        1. Direction: ``far = n_neg - m < m``. Near labels search ``p_j`` for their
           ``q = m`` most similar negatives; far labels search ``-p_j`` for the
           ``q = n_neg - m`` least similar ones, and keep every other negative.
        2. First ``k``: ``q`` plus the non-negatives expected ahead of the ``q``-th
           negative — near: all ``n_pos`` (positives surround their mean, the prototype)
           plus ``q * n_unk / n_neg`` unknowns; far: ``q * (n_pos + n_unk) / n_neg`` —
           times 1.05, plus 8, at most ``N``.
        3. Labels are sorted by ``k`` and searched in batches (``k`` within 2x of each
           other, ``A * k <= 2**23``) with the batch's largest ``k``. A label whose results
           hold ``>= q`` negatives takes the first ``q``; one short of them is searched
           again with ``k`` doubled, or ``k * 1.1 * q / found`` if larger (``<= N``).
        4. Exact torch route (:meth:`_select_dense`) for labels whose ``k`` exceeds
           ``max(1024, N / 8)`` (IVF: ``N / 64``; FAISS's scan and heap selection are
           slower there than a dense ``topk``) or the GPU limit ``2048``, first or after
           widening, and for IVF labels whose probed cells ran out (results padded with
           ``-1``) before ``q`` negatives were found. With ``index="flat"`` a widened
           search reaching ``k = N`` always succeeds.
        """
        faiss = _import_faiss()
        if faiss is None:
            raise ImportError("NegativeSampler(backend='faiss') needs the 'faiss' package "
                              "(pip install faiss-cpu or faiss-gpu); backend='auto' falls back to 'exact'")
        N = targets.shape[0]
        device = out.device
        if n_pos is None or n_neg is None:
            n_pos_all, n_neg_all, _ = _counts(targets, self.eta)
            n_pos, n_neg = n_pos_all.index_select(0, labels), n_neg_all.index_select(0, labels)
        m_l: List[int] = m.tolist()
        pos_l: List[int] = n_pos.tolist()
        neg_l: List[int] = n_neg.tolist()
        A = len(m_l)
        far_l = [neg_l[j] - m_l[j] < m_l[j] for j in range(A)]
        q_l = [neg_l[j] - m_l[j] if far_l[j] else m_l[j] for j in range(A)]
        k_l: List[int] = []
        for j in range(A):
            unk = N - pos_l[j] - neg_l[j]
            extra = (unk + pos_l[j]) * q_l[j] / neg_l[j] if far_l[j] else pos_l[j] + unk * q_l[j] / neg_l[j]
            k_l.append(min(N, math.ceil(1.05 * (q_l[j] + extra)) + 8))

        far = torch.tensor(far_l, dtype=torch.bool, device=device)
        q = torch.tensor(q_l, dtype=torch.int64, device=device)
        labels = labels.to(device)
        pn = F.normalize(protos.to(torch.float64 if protos.dtype == torch.float64 else torch.float32), dim=1)
        queries = torch.where(far.unsqueeze(1), -pn, pn).to(torch.float32)   # [A, D]: largest = wanted
        if any(far_l):   # far labels: keep every negative, then unselect the q farthest
            far_labels = labels[far]
            for s in range(0, N, self.chunk_size):
                blk = out[s:s + self.chunk_size]
                blk[:, far_labels] |= targets[s:s + self.chunk_size][:, far_labels] == 0

        dense_limit = max(_DENSE_MIN_K, int(N * _DENSE_FRACTION))
        if self.index == "ivf":   # IVF probing over ~1/4 of the cells is slower than the dense route
            dense_limit = max(_DENSE_MIN_K, min(dense_limit, int(N * _IVF_MAX_PROBED / _IVF_POOL)))
        gpu_limit = _max_search_k(_use_faiss_gpu(faiss, features.device))

        def too_big(k: int) -> bool:
            return k > dense_limit or (gpu_limit is not None and k > gpu_limit)

        exact: List[int] = [j for j in range(A) if too_big(k_l[j])]
        pending: List[int] = [j for j in range(A) if not too_big(k_l[j])]
        index = _FaissIndex(faiss, features, self.index, self.nlist, self.chunk_size) if pending else None
        xb = index.xb if index is not None and features.device.type == "cpu" else None
        while pending:
            pending.sort(key=lambda j: k_l[j])
            retry: List[int] = []
            start = 0
            while start < len(pending):
                k0 = k_l[pending[start]]
                stop = start + 1
                while (stop < len(pending) and k_l[pending[stop]] <= 2 * k0
                       and (stop - start + 1) * k_l[pending[stop]] <= _RESULT_BUDGET):
                    stop += 1
                batch = pending[start:stop]
                kb = k_l[batch[-1]]
                bi = torch.tensor(batch, dtype=torch.int64, device=device)
                ids = index.search(queries.index_select(0, bi), kb, self.nprobe).to(device)
                found, exhausted = self._take_results(ids, targets, labels[bi], q[bi], far[bi], out)
                for j, c, ex in zip(batch, found.tolist(), exhausted.tolist()):
                    if c >= q_l[j]:
                        continue
                    k_new = min(N, max(2 * kb, math.ceil(1.1 * kb * q_l[j] / c) if c else 0))
                    if ex or kb >= N or too_big(k_new):
                        exact.append(j)
                    else:
                        k_l[j] = k_new
                        retry.append(j)
                start = stop
            pending = retry
        if exact:
            ei = torch.tensor(sorted(exact), dtype=torch.int64, device=device)
            self._select_dense(features, queries.index_select(0, ei), targets, labels[ei], q[ei], far[ei], out,
                               normalized=xb)
        del xb, index

    @staticmethod
    def _take_results(ids: Tensor, targets: Tensor, labels: Tensor, q: Tensor, far: Tensor,
                      out: Tensor) -> Tuple[Tensor, Tensor]:
        """Apply one search batch: labels whose ids ``[A, k]`` hold ``>= q`` negatives take
        the first ``q`` (near: select; far: unselect). Returns negatives found ``[A]`` and
        whether the results were padded with ``-1`` (IVF cells exhausted) ``[A]``."""
        valid = ids >= 0
        lab = labels.unsqueeze(1).expand_as(ids)
        isneg = valid & (targets[ids.clamp(min=0), lab] == 0)
        cnt = isneg.to(torch.int32).cumsum(1, dtype=torch.int32)
        found = cnt[:, -1]
        done = found >= q
        take = isneg & (cnt <= q.unsqueeze(1)) & done.unsqueeze(1)
        f = far.unsqueeze(1).expand_as(ids)
        near_t, far_t = take & ~f, take & f
        out[ids[near_t], lab[near_t]] = True
        out[ids[far_t], lab[far_t]] = False
        return found, ~valid.all(1)

    def _select_dense(self, features: Tensor, queries: Tensor, targets: Tensor, labels: Tensor, q: Tensor,
                      far: Tensor, out: Tensor, normalized: Optional[Tensor] = None) -> None:
        """Exact route of the FAISS backend: float32 similarities of ``queries [A, D]``
        (normalised, negated for far labels) with all rows, in label blocks of
        ``A_g * N <= 2**25``; non-negatives masked; ``topk(q_j)`` per label.
        ``normalized``: the normalised rows ``[N, D]`` if at hand (CPU flat index storage)."""
        N, D = features.shape
        device = features.device
        queries = queries.to(device)
        g = max(1, _DENSE_BUDGET // max(N, 1))
        rows = _block_rows(D, self.chunk_size)
        inv_norm: Optional[Tensor] = None
        for a in range(0, labels.numel(), g):
            qg, lg = queries[a:a + g], labels[a:a + g]
            sims = torch.empty(qg.shape[0], N, dtype=torch.float32, device=device)
            if normalized is not None:
                torch.mm(qg, normalized.T, out=sims)
            else:   # raw rows, then scale columns by 1 / max(|x_i|, eps) (= F.normalize)
                if inv_norm is None:
                    inv_norm = torch.cat([torch.linalg.vector_norm(features[s:s + rows], dim=1)
                                          for s in range(0, N, rows)]).clamp_(min=1e-12).reciprocal_()
                    inv_norm = inv_norm.to(torch.float32)
                if features.dtype == torch.float32:
                    torch.mm(qg, features.T, out=sims)
                else:
                    for s in range(0, N, rows):
                        sims[:, s:s + rows] = qg @ features[s:s + rows].to(torch.float32).T
                sims.mul_(inv_norm)
            sims.masked_fill_((targets.index_select(1, lg.to(targets.device)) != 0).T.to(device),
                              float("-inf"))
            for i, (lab, qi, fi) in enumerate(zip(lg.tolist(), q[a:a + g].tolist(), far[a:a + g].tolist())):
                idx = torch.topk(sims[i], qi, sorted=False).indices.to(out.device)
                out[idx, lab] = not fi

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
