"""The FAISS backend of :class:`bbam.sampling.NegativeSampler` (``backend="faiss"``).

One FAISS inner-product index over the L2-normalised float32 features, built once per
``select`` call and shared by all labels; each searched label queries its normalised
prototype. ``index="flat"`` (``IndexFlatIP``) is exact; ``index="ivf"`` (``IndexIVFFlat``,
inner product) is approximate. GPU FAISS is used when the features are on CUDA and
``faiss.StandardGpuResources`` exists.

In brief (details in :func:`select_faiss`):

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

__all__ = ["select_faiss", "default_nlist", "FaissIndex", "faiss_threads_set"]

# Constants of the backend (see the module docstring). Tests monkeypatch some of them.
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


class FaissIndex:
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
def faiss_threads_set(faiss: Any, n: Optional[int]) -> Iterator[None]:
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


def select_faiss(features: Tensor, protos: Tensor, targets: Tensor, labels: Tensor, m: Tensor, out: Tensor,
                 n_pos: Tensor, n_neg: Tensor, *, index_kind: str, nlist: Optional[int], nprobe: int,
                 chunk_size: int, faiss_threads: Optional[int]) -> None:
    """Select the kept negatives of the searched labels into ``out``.

    Args:
        features: ``[N, D]`` floating, finite; targets: ``[N, K]`` int8 (1 / 0 / -1).
        protos: ``[A, D]`` finite prototypes (not normalised) of the searched labels
            ``labels [A]`` int64 (those with ``0 < m_k < n_neg_k``); ``m``, ``n_pos``,
            ``n_neg``: ``[A]`` their kept / positive / negative counts.
        out: ``[N, K]`` bool mask, updated: ``out[i, labels[j]] = True`` for the ``m[j]``
            selected negatives ``i`` of each label.
        index_kind: ``"flat"`` (exact inner product) or ``"ivf"`` (approximate, with
            ``nlist`` cells, at least ``nprobe`` probed); chunk_size: rows per block;
            faiss_threads: CPU FAISS's OpenMP threads for the call (None: unchanged).

    Per label ``j``:

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
    4. Exact torch route (:func:`_select_dense`) for labels whose ``k`` exceeds
       ``max(1024, N / 8)`` (IVF: ``N / 64``; FAISS's scan and heap selection are
       slower there than a dense ``topk``) or the GPU limit ``2048``, first or after
       widening, and for IVF labels whose probed cells ran out (results padded with
       ``-1``) before ``q`` negatives were found. With ``index_kind="flat"`` a widened
       search reaching ``k = N`` always succeeds.
    """
    faiss = _import_faiss()
    if faiss is None:
        raise ImportError("NegativeSampler(backend='faiss') needs the 'faiss' package "
                          "(pip install faiss-cpu or faiss-gpu); backend='auto' falls back to 'exact'")
    with faiss_threads_set(faiss, faiss_threads):
        _select(faiss, features, protos, targets, labels, m, out, n_pos, n_neg, index_kind, nlist, nprobe, chunk_size)


def _select(faiss: Any, features: Tensor, protos: Tensor, targets: Tensor, labels: Tensor, m: Tensor, out: Tensor,
            n_pos: Tensor, n_neg: Tensor, index_kind: str, nlist: Optional[int], nprobe: int, chunk_size: int) -> None:
    """:func:`select_faiss` with ``faiss`` imported and its threads set."""
    N = targets.shape[0]
    device = out.device
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
        for s in range(0, N, chunk_size):
            blk = out[s:s + chunk_size]
            blk[:, far_labels] |= targets[s:s + chunk_size][:, far_labels] == 0

    dense_limit = max(_DENSE_MIN_K, int(N * _DENSE_FRACTION))
    if index_kind == "ivf":   # IVF probing over ~1/4 of the cells is slower than the dense route
        dense_limit = max(_DENSE_MIN_K, min(dense_limit, int(N * _IVF_MAX_PROBED / _IVF_POOL)))
    gpu_limit = _max_search_k(_use_faiss_gpu(faiss, features.device))

    def too_big(k: int) -> bool:
        return k > dense_limit or (gpu_limit is not None and k > gpu_limit)

    exact: List[int] = [j for j in range(A) if too_big(k_l[j])]
    pending: List[int] = [j for j in range(A) if not too_big(k_l[j])]
    index = FaissIndex(faiss, features, index_kind, nlist, chunk_size) if pending else None
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
            ids = index.search(queries.index_select(0, bi), kb, nprobe).to(device)
            found, exhausted = _take_results(ids, targets, labels[bi], q[bi], far[bi], out)
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
        _select_dense(features, queries.index_select(0, ei), targets, labels[ei], q[ei], far[ei], out, chunk_size,
                      normalized=xb)
    del xb, index

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

def _select_dense(features: Tensor, queries: Tensor, targets: Tensor, labels: Tensor, q: Tensor,
                  far: Tensor, out: Tensor, chunk_size: int, normalized: Optional[Tensor] = None) -> None:
    """Exact route of the FAISS backend: float32 similarities of ``queries [A, D]``
    (normalised, negated for far labels) with all rows, in label blocks of
    ``A_g * N <= 2**25``; non-negatives masked; ``topk(q_j)`` per label.
    ``normalized``: the normalised rows ``[N, D]`` if at hand (CPU flat index storage)."""
    N, D = features.shape
    device = features.device
    queries = queries.to(device)
    g = max(1, _DENSE_BUDGET // max(N, 1))
    rows = _block_rows(D, chunk_size)
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
