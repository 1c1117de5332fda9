"""Microbenchmark of bbam's fused ops against their eager references (``bbam.reference``).

Usage::

    python bench/ops.py [--device cpu|cuda] [--repeats 7] [--quick] [--json PATH]
                        [--ops loss,transform,stats] [--compile-reference]
                        [--threads N] [--max-case-seconds 120]

For every case the fused op and the reference run in the same process, interleaved
(repeat r times the fused op then the reference, alternating which goes first), after
a warm-up. Each repeat loops enough calls to last at least ~50 ms (2 ms with
``--quick``); the reported time is the median over repeats of the per-call time.

Shared machines: when another process keeps the cores busy, every OpenMP parallel
region can wait a scheduler slice (~4-16 ms), which slows the reference (many small
parallel ATen ops) far more than the fused op and inflates speed-ups by 10x or more.
Each repeat is therefore bracketed by a stall probe (:class:`StallProbe`); only quiet
repeats are used, contended ones are retried, and a case without 3 quiet repeats is
marked ``x!`` (CONTENDED) and gets no acceptance verdict.

Peak memory ("extra" memory of one call, above its inputs, outputs included):

* CUDA: ``torch.cuda.max_memory_allocated()`` minus ``memory_allocated()`` before.
* CPU: two measurements of one call each, both kept in the JSON:
  - ``profiler``: ``torch.profiler.profile(profile_memory=True)``; the running sum of
    the allocation/free events (``nbytes``) of the c10 CPU allocator, in time order,
    and its maximum. Exact for allocations made on the calling thread, but blind to
    allocations made on intra-op (OpenMP) worker threads (checked: with 2 threads it
    sees the per-tile buffers of only the calling thread's half of the tiles; nor does
    ``experimental_config(profile_all_threads=True)`` record memory events) and to
    ``malloc`` outside the c10 allocator (``std::vector`` buffers, MKL scratch).
  - ``rss``: the process's resident high-water mark (``VmHWM``, reset through
    ``/proc/self/clear_refs``) minus the resident size before the call, after
    ``malloc_trim(0)``. Sees every thread and every allocator, but over-counts pages
    that the allocator freed and kept during the call.
  The headline figure is conservative for the fused op: ``max(profiler, rss)`` for
  the fused op (its per-thread tile buffers live on worker threads) and
  ``profiler`` for the reference (whose temporaries are all allocated on the
  calling thread), so the reported memory ratio is an upper bound.

Work: bytes the op must move (inputs read once + outputs written once; forward and
backward counted separately for fwd+bwd) and, for ``label_angle_stats``, the
``2*N*D*K`` FLOPs of its GEMM; the fused op's achieved GB/s and GFLOP/s are compared
with the machine's own copy bandwidth and GEMM rate, measured by this script.

Importable without side effects; only torch, bbam and the standard library.
"""
from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional

import torch

MIB = 2.0**20
ALL_OPS = ("loss", "transform", "stats", "select", "cap", "ranks")
NOISY_SPREAD = 1.5  # a case whose slowest repeat is > 1.5x its fastest is flagged
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}

# ---------------------------------------------------------------------------
# Sizes
# ---------------------------------------------------------------------------
# (B, K, dtype) for bbam_loss and angle_transform; (N, D, K, dtype) for label_angle_stats.
FULL_SIZES = {
    "elementwise": [(256, 80, "fp32"), (256, 1000, "fp32"), (256, 1000, "bf16"), (256, 10000, "fp32")],
    "stats": [(n, 256, k, "fp32") for n in (10_000, 200_000) for k in (20, 80, 1000)],
    "select": [(100_000, 256, 80, "fp32"), (100_000, 256, 1000, "fp32"), (10_000, 256, 80, "fp32")],
    "cap": [(129_600, 1000, "fp32"), (50_000, 80, "fp32")],      # (N_u, K): the 200k x 1000 epoch's unlabeled set
    "ranks": [(16_000, 1000, "fp32"), (40_000, 80, "fp32")],      # (N, K): its validation set
}
QUICK_SIZES = {
    "elementwise": [(16, 8, "fp32"), (16, 64, "fp32"), (16, 64, "bf16")],
    "stats": [(256, 32, 4, "fp32"), (512, 32, 16, "fp32")],
    "select": [(2000, 32, 8, "fp32")],
    "cap": [(3000, 16, "fp32")],
    "ranks": [(500, 24, "fp32")],
}


# ---------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------
class Timer:
    """Wall time of a loop of calls: perf_counter on CPU, CUDA events on CUDA."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def loop(self, fn: Callable[[], Any], iters: int) -> float:
        """Seconds for ``iters`` calls of ``fn`` (results dropped as they come)."""
        self.sync()
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        return time.perf_counter() - t0


class StallProbe:
    """Detects a contended CPU: the time of a tiny multi-threaded (OpenMP) step.

    On a machine shared with another busy process, every OpenMP parallel region can
    wait a scheduler time slice (~4-16 ms) for its threads; that hits the reference
    (many small parallel ATen ops) far harder than the fused op and inflates the
    speed-ups. A small GEMM plus an elementwise op over 256k floats take ~0.03-0.1 ms
    on a quiet machine; a median above ``STALL_MS`` means the repeat next to it was
    disturbed. Irrelevant (0) with one thread or on CUDA.
    """

    def __init__(self, device: torch.device):
        self.enabled = device.type == "cpu"
        if self.enabled:
            self.a, self.b, self.c = torch.randn(512, 32), torch.randn(32, 64), torch.empty(512, 64)
            self.x = torch.rand(1 << 18)
            self.y = torch.empty_like(self.x)

    def __call__(self, calls: int = 5) -> float:
        """Median milliseconds of one probe step (0 when not applicable)."""
        if not self.enabled or torch.get_num_threads() == 1:
            return 0.0
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            torch.mm(self.a, self.b, out=self.c)
            torch.exp(self.x, out=self.y)
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)


STALL_MS = 1.0  # probe median above this: the CPU is contended


def time_interleaved(
    fns: Dict[str, Callable[[], Any]], timer: Timer, repeats: int, min_repeat_s: float, max_case_s: float,
    probe: Optional[StallProbe] = None, retry: bool = True,
) -> Dict[str, Any]:
    """Median per-call seconds of each function, repeats interleaved across functions.

    Warm-up: one untimed call each, one timed call (calibration), then one untimed
    loop of the calibrated length. Repeats are capped (never below 3) so that a case
    stays within ``max_case_s`` seconds; the count used is reported. With a
    ``probe``, each repeat is bracketed by stall probes; a repeat is "quiet" when both
    are below ``STALL_MS``. Contended repeats are retried (up to twice the repeats, and
    within the time budget) and the medians use only the quiet repeats when there are
    at least 3; otherwise all repeats, and the case is flagged ``contended``.

    Returns ``{name: {...timing...}, ..., "_contention": {...}}``.
    """
    names = list(fns)
    for name in names:
        fns[name]()
    first = {name: max(timer.loop(fns[name], 1), 1e-9) for name in names}
    iters = {name: max(1, math.ceil(min_repeat_s / first[name])) for name in names}
    for name in names:
        if iters[name] > 1:
            timer.loop(fns[name], iters[name])
    per_repeat = sum(first[n] * iters[n] for n in names)
    n_rep = max(1, min(repeats, max(3, int(max_case_s // max(per_repeat, 1e-9)))))
    samples: Dict[str, List[float]] = {name: [] for name in names}
    probes: List[float] = []
    quiet: List[bool] = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    t0 = time.perf_counter()
    try:
        r = 0
        while True:
            before = probe() if probe else 0.0
            order = names if r % 2 == 0 else names[::-1]
            for name in order:
                samples[name].append(timer.loop(fns[name], iters[name]) / iters[name])
            after = probe() if probe else 0.0
            probes.append(max(before, after))
            quiet.append(probes[-1] < STALL_MS)
            r += 1
            if sum(quiet) >= n_rep or r >= (2 * n_rep if retry else n_rep):
                break
            if r >= n_rep and time.perf_counter() - t0 > max_case_s:
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    n_quiet = sum(quiet)
    use = [i for i in range(r) if quiet[i]] if n_quiet >= min(3, n_rep) else list(range(r))
    out: Dict[str, Any] = {}
    for name in names:
        used = [samples[name][i] for i in use]
        out[name] = {
            "median_s": statistics.median(used),
            "min_s": min(used),
            "max_s": max(used),
            "samples_s": samples[name],
            "iters_per_repeat": iters[name],
            "repeats": len(used),
        }
    out["_contention"] = {
        "probe_ms": probes,
        "quiet": quiet,
        "attempts": r,
        "quiet_repeats": n_quiet,
        "contended": n_quiet < min(3, n_rep),
    }
    return out


# ---------------------------------------------------------------------------
# Peak memory
# ---------------------------------------------------------------------------
def _libc() -> Optional[ctypes.CDLL]:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _proc_status() -> Dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0]) * 1024
    return out


def rss_peak_bytes(fn: Callable[[], Any]) -> Optional[int]:
    """Resident high-water mark of one call minus the resident size before it (Linux)."""
    libc = _libc()
    try:
        if libc is not None and hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        before = _proc_status()["VmRSS"]
        out = fn()
        peak = _proc_status()["VmHWM"]
        del out
        return max(0, peak - before)
    except OSError:
        return None


def profiler_peak_bytes(fn: Callable[[], Any]) -> int:
    """Peak of the running sum of c10 CPU allocator events during one call (calling thread)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
        del out
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    current = peak = 0
    for e in events:
        current += e.nbytes()
        peak = max(peak, current)
    return peak


def cuda_peak_bytes(fn: Callable[[], Any]) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    del out
    return max(0, peak)


def measure_memory(fn: Callable[[], Any], device: torch.device, conservative: bool) -> Dict[str, Any]:
    """Peak extra bytes of one call. ``conservative``: headline = max of the CPU methods."""
    if device.type == "cuda":
        peak = cuda_peak_bytes(fn)
        return {"peak_bytes": peak, "method": "cuda.max_memory_allocated", "cuda_bytes": peak}
    prof = profiler_peak_bytes(fn)
    rss = rss_peak_bytes(fn)
    if conservative and rss is not None and rss > prof:
        peak, method = rss, "rss_hwm (> profiler)"
    else:
        peak, method = prof, "profiler"
    return {"peak_bytes": peak, "method": method, "profiler_bytes": prof, "rss_bytes": rss}


# ---------------------------------------------------------------------------
# Machine limits (measured here, so GB/s and GFLOP/s can be put in proportion)
# ---------------------------------------------------------------------------
def machine_limits(device: torch.device, timer: Timer, quick: bool, probe: Optional[StallProbe]) -> Dict[str, Any]:
    n = (8 if quick else 256) * 2**20 // 4  # fp32 elements of the copy buffers
    src = torch.rand(n, device=device)
    dst = torch.empty_like(src)
    copy = lambda: dst.copy_(src)  # noqa: E731
    copy_t = time_interleaved({"copy": copy}, timer, 5, 0.05 if not quick else 0.005, 30, probe)
    t_copy = copy_t["copy"]["median_s"]
    m, kdim, k = (512, 64, 128) if quick else (8192, 256, 1024)
    a = torch.randn(m, kdim, device=device)
    b = torch.randn(kdim, k, device=device)
    c = torch.empty(m, k, device=device)
    mm = lambda: torch.mm(a, b, out=c)  # noqa: E731
    fns = {"mm": mm}
    if device.type == "cpu" and hasattr(torch.ops, "mkldnn") and hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        bt = b.t().contiguous()   # oneDNN's matmul, which the CPU ops use for float32 (csrc/cpu/gemm.h)
        fns["onednn"] = lambda: torch.ops.mkldnn._linear_pointwise(a, bt, None, "none", [], "")
    mm_t = time_interleaved(fns, timer, 5, 0.05 if not quick else 0.005, 30, probe)
    t_mm = min(mm_t[name]["median_s"] for name in fns)
    return {
        "copy_GBps": 2 * n * 4 / t_copy / 1e9,
        "copy_bytes": 2 * n * 4,
        "sgemm_GFLOPs": 2 * m * kdim * k / t_mm / 1e9,   # the faster of torch.mm and oneDNN
        "sgemm_by": {name: 2 * m * kdim * k / mm_t[name]["median_s"] / 1e9 for name in fns},
        "sgemm_shape": [m, kdim, k],
        "contended": copy_t["_contention"]["contended"] or mm_t["_contention"]["contended"],
    }


# ---------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------
@dataclass
class Case:
    op: str  # public op name
    mode: str  # "fwd", "fwd+bwd", "fwd (targets=None)"
    dtype: str
    size: str
    fused: Callable[[], Any]
    reference: Callable[[], Any]
    bytes_moved: int
    flops: Optional[int] = None
    elements: Optional[int] = None
    compiled: Optional[Callable[[], Any]] = None
    meta: Dict[str, Any] = field(default_factory=dict)


def _coefficients(K: int, device: torch.device, gen: torch.Generator):
    a = (torch.rand(2, K, generator=gen) + 0.5).to(device)  # a in [0.5, 1.5]
    b = (torch.rand(2, K, generator=gen) * 0.4 - 0.2).to(device)  # b in [-0.2, 0.2]
    return a, b


def _cosines(B: int, K: int, dtype: torch.dtype, device: torch.device, gen: torch.Generator):
    return (torch.rand(B, K, generator=gen) * 2 - 1).to(device=device, dtype=dtype)


def _targets(shape, device: torch.device, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(-1, 2, shape, generator=gen, dtype=torch.int8).to(device)


def loss_cases(sizes, device, gen, compile_ref) -> Iterator[Case]:
    for B, K, dname in sizes:
        yield from _loss_cases(B, K, dname, device, gen, compile_ref)


def _loss_cases(B, K, dname, device, gen, compile_ref) -> Iterator[Case]:
    from bbam import ops, reference

    dtype = DTYPES[dname]
    elt = torch.empty((), dtype=dtype).element_size()
    cos = _cosines(B, K, dtype, device, gen)
    cos_g = cos.clone().requires_grad_(True)
    targets = _targets((B, K), device, gen)
    weight = torch.rand(B, K, generator=gen).to(device=device, dtype=dtype)  # in cos's dtype (no cast)
    coef_a, coef_b = _coefficients(K, device, gen)
    kw = dict(weight=weight, margin=0.4, scale=20.0, reduction="sum")
    n = B * K
    read = n * elt + n * 1 + n * elt + 2 * 2 * K * 4  # cos, targets, weight, coef_a/b
    out_elt = 8 if dtype == torch.float64 else 4
    compiled_fn = torch.compile(reference.bbam_loss) if compile_ref else None

    def fwd(f):
        return None if f is None else (lambda: f(cos, targets, coef_a, coef_b, **kw))

    def fwd_bwd(f):
        return None if f is None else (lambda: torch.autograd.grad(f(cos_g, targets, coef_a, coef_b, **kw), cos_g))

    size = f"B={B} K={K}"
    meta = dict(B=B, K=K, reduction="sum", weight_dtype=dname)
    yield Case("bbam_loss", "fwd", dname, size, fwd(ops.bbam_loss), fwd(reference.bbam_loss),
               read + out_elt, elements=n, compiled=fwd(compiled_fn), meta=meta)
    # backward: reads the scalar grad, cos, targets, weight, coef again; writes grad_cos.
    yield Case("bbam_loss", "fwd+bwd", dname, size, fwd_bwd(ops.bbam_loss), fwd_bwd(reference.bbam_loss),
               (read + out_elt) + (out_elt + read + n * elt), elements=n, compiled=fwd_bwd(compiled_fn),
               meta=meta)


def transform_cases(sizes, device, gen, compile_ref) -> Iterator[Case]:
    for B, K, dname in sizes:
        yield from _transform_cases(B, K, dname, device, gen, compile_ref)


def _transform_cases(B, K, dname, device, gen, compile_ref) -> Iterator[Case]:
    from bbam import ops, reference

    dtype = DTYPES[dname]
    elt = torch.empty((), dtype=dtype).element_size()
    cos = _cosines(B, K, dtype, device, gen)
    cos_g = cos.clone().requires_grad_(True)
    grad_out = torch.randn(B, K, generator=gen).to(device=device, dtype=dtype)
    targets = _targets((B, K), device, gen)
    coef_a, coef_b = _coefficients(K, device, gen)
    n = B * K
    coef_bytes = 2 * 2 * K * 4
    compiled_fn = torch.compile(reference.angle_transform) if compile_ref else None

    def fwd(f, t):
        return None if f is None else (lambda: f(cos, coef_a, coef_b, t))

    def fwd_bwd(f, t):
        return None if f is None else (lambda: torch.autograd.grad(f(cos_g, coef_a, coef_b, t), cos_g, grad_out))

    size = f"B={B} K={K}"
    read_t = n * elt + n * 1 + coef_bytes  # cos, targets, coefficients
    fwd_t = read_t + n * elt  # + phi
    given = dict(B=B, K=K, targets="given")
    yield Case("angle_transform", "fwd", dname, size, fwd(ops.angle_transform, targets),
               fwd(reference.angle_transform, targets), fwd_t, elements=n,
               compiled=fwd(compiled_fn, targets), meta=given)
    # backward: reads grad_out, cos, targets, coef; writes grad_cos.
    yield Case("angle_transform", "fwd+bwd", dname, size, fwd_bwd(ops.angle_transform, targets),
               fwd_bwd(reference.angle_transform, targets), fwd_t + (n * elt + read_t + n * elt),
               elements=n, compiled=fwd_bwd(compiled_fn, targets), meta=given)
    # prediction time: no targets, the averaged (inference) transform.
    yield Case("angle_transform", "fwd inference", dname, size, fwd(ops.angle_transform, None),
               fwd(reference.angle_transform, None), n * elt + coef_bytes + n * elt, elements=n,
               compiled=fwd(compiled_fn, None), meta=dict(B=B, K=K, targets=None))


def stats_cases(sizes, device, gen, compile_ref) -> Iterator[Case]:
    for N, D, K, dname in sizes:
        yield from _stats_cases(N, D, K, dname, device, gen, compile_ref)


def _stats_cases(N, D, K, dname, device, gen, compile_ref) -> Iterator[Case]:
    from bbam import ops, reference

    dtype = DTYPES[dname]
    elt = torch.empty((), dtype=dtype).element_size()
    features = torch.randn(N, D, generator=gen).to(device=device, dtype=dtype)
    prototypes = torch.randn(K, D, generator=gen).to(device=device, dtype=dtype)
    targets = _targets((N, K), device, gen)
    compiled_fn = torch.compile(reference.label_angle_stats) if compile_ref else None

    def call(f):
        return None if f is None else (lambda: f(features, prototypes, targets))

    bytes_moved = N * D * elt + K * D * elt + N * K * 1 + 3 * 2 * K * 8  # features, prototypes, targets, outputs
    yield Case("label_angle_stats", "fwd", dname, f"N={N} D={D} K={K}", call(ops.label_angle_stats),
               call(reference.label_angle_stats), bytes_moved, flops=2 * N * D * K, elements=N * K,
               compiled=call(compiled_fn), meta=dict(N=N, D=D, K=K))


def select_cases(sizes, device, gen, compile_ref) -> Iterator[Case]:
    for N, D, K, dname in sizes:
        yield from _select_cases(N, D, K, dname, device, gen, compile_ref)


def _select_cases(N, D, K, dname, device, gen, compile_ref) -> Iterator[Case]:
    """negative_select with the method's eta = 5 on long-tailed labels (frequencies
    log-spaced 0.2 -> 0.001, 1% unknown), bands sampled as NegativeSampler does."""
    import math

    from bbam import ops, reference
    from bbam.sampling import band_sample_size, negative_sample_counts

    dtype = DTYPES[dname]
    elt = torch.empty((), dtype=dtype).element_size()
    features = torch.randn(N, D, generator=gen).to(device=device, dtype=dtype)
    prototypes = torch.randn(K, D, generator=gen).to(device=device, dtype=dtype)
    freq = torch.logspace(math.log10(0.2), math.log10(0.001), K)
    targets = (torch.rand(N, K, generator=gen) < freq).to(torch.int8)
    targets[torch.rand(N, K, generator=gen) < 0.01] = -1
    targets = targets.to(device)
    m = negative_sample_counts(targets, 5.0)[2]
    size = band_sample_size(N)
    compiled_fn = torch.compile(reference.negative_select) if compile_ref else None

    def call(f, *extra):
        return None if f is None else (lambda: f(features, prototypes, targets, m, *extra))

    bytes_moved = N * D * elt + K * D * elt + N * K * 1 + N * K * 1  # features, prototypes, targets, mask
    yield Case("negative_select", "fwd", dname, f"N={N} D={D} K={K}", call(ops.negative_select, size),
               call(reference.negative_select), bytes_moved, flops=2 * N * D * K, elements=N * K,
               compiled=call(compiled_fn), meta=dict(N=N, D=D, K=K))


def _long_tail(K: int) -> torch.Tensor:
    """Label frequencies log-spaced 0.4 -> 0.002, as float64 (the synthetic data's shape)."""
    import math
    return torch.logspace(math.log10(0.4), math.log10(0.002), K, dtype=torch.float64)


def cap_cases(sizes, device, gen, compile_ref) -> Iterator[Case]:
    """cap_select (the engine's call: targets -1 outside the mask) against the torch path it
    replaces on CPU (topk per label block, then the mask applied): the same result. The
    per-label sort loop of bbam.reference is far slower still and not timed here."""
    from bbam import cap, ops

    if device.type != "cpu":
        print("  cap_select: a CPU kernel (CUDA runs the torch path); skipped on", device, flush=True)
        return
    for N, K, dname in sizes:
        scores = torch.rand(K, N, generator=gen).to(device=device, dtype=DTYPES[dname]).T   # label-major
        counts = cap._selection_counts("bench", scores, _long_tail(K), 1.0, cap.NEG_PER_MAX)

        def fused(s=scores, c=counts):
            return ops.cap_select(s, *c, unknown_outside_mask=True)

        def torch_path(s=scores, c=counts):
            targets, mask = cap._pseudo_labels_by_blocks(s, *c)
            return targets.masked_fill_(mask.logical_not_(), -1)

        elt = torch.empty((), dtype=DTYPES[dname]).element_size()
        yield Case("cap_select", "pseudo-targets", dname, f"N={N} K={K}", fused, torch_path,
                   N * K * elt + N * K, elements=N * K, meta=dict(N=N, K=K))


def rank_cases(sizes, device, gen, compile_ref) -> Iterator[Case]:
    """positive_rank_stats over the labels (AP) and over the samples (LRAP, ranking loss,
    coverage) of one score matrix, against the stable sorts with tie groups it replaces
    on CPU (bbam.metrics' other path): the same counts."""
    from bbam import metrics

    if device.type != "cpu":
        print("  positive_rank_stats: a CPU kernel (CUDA sorts); skipped on", device, flush=True)
        return
    for N, K, dname in sizes:
        scores = torch.rand(N, K, generator=gen).to(device=device, dtype=DTYPES[dname])
        targets = (torch.rand(N, K, generator=gen) < _long_tail(K).float()).to(device)

        def run(f, s=scores, y=targets):
            return lambda: (f(s.T, y.T), f(s, y))

        elt = torch.empty((), dtype=DTYPES[dname]).element_size()
        yield Case("positive_rank_stats", "labels+samples", dname, f"N={N} K={K}", run(metrics._rank_stats_kernel),
                   run(metrics._rank_stats_sorted), 2 * (N * K * elt + N * K), elements=2 * N * K,
                   meta=dict(N=N, K=K))


# ---------------------------------------------------------------------------
# Running and reporting
# ---------------------------------------------------------------------------
def run_case(case: Case, device, timer, args, limits, probe=None) -> Dict[str, Any]:
    if case.compiled is not None:
        torch._dynamo.reset()  # fresh compile cache per case: no recompile-limit fallback to eager
    fns = {"fused": case.fused, "reference": case.reference}
    if case.compiled is not None:
        fns["compiled"] = case.compiled
    times = time_interleaved(fns, timer, args.repeats, args.min_repeat_s, args.max_case_seconds, probe,
                             retry=not args.quick)
    contention = times.pop("_contention")
    memory = {
        "fused": measure_memory(case.fused, device, conservative=True),
        "reference": measure_memory(case.reference, device, conservative=False),
    }
    if case.compiled is not None:
        memory["compiled"] = measure_memory(case.compiled, device, conservative=False)
    t_f, t_r = times["fused"]["median_s"], times["reference"]["median_s"]
    m_f, m_r = memory["fused"]["peak_bytes"], memory["reference"]["peak_bytes"]
    row: Dict[str, Any] = {
        "op": case.op,
        "mode": case.mode,
        "dtype": case.dtype,
        "size": case.size,
        **case.meta,
        "fused_ms": t_f * 1e3,
        "reference_ms": t_r * 1e3,
        "speedup": t_r / t_f,
        "fused_mib": m_f / MIB,
        "reference_mib": m_r / MIB,
        "memory_pct": 100.0 * m_f / m_r if m_r > 0 else None,
        "bytes_moved": case.bytes_moved,
        "flops": case.flops,
        "elements": case.elements,
        "fused_GBps": case.bytes_moved / t_f / 1e9,
        "fused_GFLOPs": case.flops / t_f / 1e9 if case.flops else None,
        "fused_Gelem_per_s": case.elements / t_f / 1e9 if case.elements else None,
        "timing": times,
        "memory": memory,
    }
    # max/min of the repeats: above NOISY_SPREAD the case was disturbed (shared machine, thread stalls)
    row["spread"] = {name: t["max_s"] / t["min_s"] for name, t in times.items()}
    row["noisy"] = any(v > NOISY_SPREAD for v in row["spread"].values())
    row["contention"] = contention
    row["contended"] = contention["contended"]
    if limits:
        row["pct_of_copy_bw"] = 100.0 * row["fused_GBps"] / limits["copy_GBps"]
        if row["fused_GFLOPs"] is not None:
            row["pct_of_sgemm"] = 100.0 * row["fused_GFLOPs"] / limits["sgemm_GFLOPs"]
    if case.compiled is not None:
        t_c = times["compiled"]["median_s"]
        row["compiled_ms"] = t_c * 1e3
        row["speedup_vs_compiled"] = t_c / t_f
        row["compiled_mib"] = memory["compiled"]["peak_bytes"] / MIB
    return row


def _fmt(x: Optional[float], spec: str) -> str:
    return "-" if x is None else format(x, spec)


def format_table(rows: List[Dict[str, Any]], compiled: bool) -> str:
    headers = ["op", "mode", "dtype", "size", "fused ms", "ref ms", "speed-up"]
    if compiled:
        headers += ["compiled ms", "vs compiled"]
    headers += ["fused MiB", "ref MiB", "memory %", "fused GB/s", "GFLOP/s", "% roof"]
    lines = []
    for r in rows:
        roof = r.get("pct_of_sgemm") if r.get("flops") else r.get("pct_of_copy_bw")
        cells = [r["op"], r["mode"], r["dtype"], r["size"], _fmt(r["fused_ms"], ".3f"),
                 _fmt(r["reference_ms"], ".3f"), _fmt(r["speedup"], ".2f") + ("x!" if r["contended"] else "x?" if r["noisy"] else "x ")]
        if compiled:
            cells += [_fmt(r.get("compiled_ms"), ".3f"),
                      _fmt(r.get("speedup_vs_compiled"), ".2f") + ("x" if "speedup_vs_compiled" in r else "")]
        cells += [_fmt(r["fused_mib"], ".3f"), _fmt(r["reference_mib"], ".2f"), _fmt(r["memory_pct"], ".2f"),
                  _fmt(r["fused_GBps"], ".2f"), _fmt(r["fused_GFLOPs"], ".1f"), _fmt(roof, ".1f")]
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) if lines else len(h) for i, h in enumerate(headers)]
    right = set(range(4, len(headers)))

    def fmt_line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [fmt_line(headers), fmt_line(["-" * w for w in widths])]
    out += [fmt_line(c) for c in lines]
    return "\n".join(out)


def acceptance(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The targets of the issue, where the run has the rows that decide them.

    ``met`` is None (no verdict) when the deciding row's timings were contended.
    """
    checks = []
    for r in rows:
        if (r["op"], r["mode"], r["dtype"], r.get("B"), r.get("K")) == ("bbam_loss", "fwd+bwd", "fp32", 256, 1000):
            checks.append({"target": "bbam_loss fwd+bwd >= 4x faster than reference (B=256, K=1000, fp32)",
                           "value": f"{r['speedup']:.2f}x", "met": None if r["contended"] else r["speedup"] >= 4.0})
        if (r["op"], r["dtype"], r.get("N"), r.get("D"), r.get("K")) == ("label_angle_stats", "fp32", 200_000, 256, 80):
            checks.append({"target": "label_angle_stats >= 2x faster than reference (N=200k, D=256, K=80)",
                           "value": f"{r['speedup']:.2f}x", "met": None if r["contended"] else r["speedup"] >= 2.0})
            pct = r["memory_pct"]
            checks.append({"target": "label_angle_stats peak extra memory < 5% of reference's (N=200k, D=256, K=80)",
                           "value": f"{pct:.2f}% ({r['fused_mib']:.2f} / {r['reference_mib']:.1f} MiB)",
                           "met": pct is not None and pct < 5.0})
    return checks


def environment(device: torch.device) -> Dict[str, Any]:
    import bbam
    from bbam import _extension

    env: Dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "bbam": getattr(bbam, "__version__", "?"),
        "bbam_build_info": dict(_extension.BUILD_INFO),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cpu_count": os.cpu_count(),
        "cpu_kernels": _extension.cpu_kernels(),
        "cpu_name": _cpu_name(),
    }
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    else:
        env["device_name"] = env["cpu_name"]
    try:
        env["loadavg_start"] = os.getloadavg()
    except OSError:
        pass
    try:
        env["git_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["git_commit"] = None
    return env


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--repeats", type=int, default=7, help="timed repeats per case (median reported)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, 3 repeats of >= 2 ms: a smoke test")
    p.add_argument("--json", default=None, help="output path (default bench/results/ops-<device>.json)")
    p.add_argument("--ops", default=",".join(ALL_OPS), help="comma-separated subset of loss,transform,stats,select,cap,ranks")
    p.add_argument("--compile-reference", action="store_true", help="also time torch.compile(reference)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    p.add_argument("--max-case-seconds", type=float, default=120.0,
                   help="cap the repeats (never below 3) so one case's timed loop stays within this budget")
    args = p.parse_args(argv)
    ops_ = [o.strip() for o in args.ops.split(",") if o.strip()]
    unknown = sorted(set(ops_) - set(ALL_OPS))
    if unknown:
        p.error(f"--ops: unknown {unknown}; choose from {list(ALL_OPS)}")
    args.ops = ops_
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    if args.quick:
        args.repeats = min(args.repeats, 3)
    args.min_repeat_s = 0.002 if args.quick else 0.05
    if args.json is None:
        args.json = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", f"ops-{args.device}.json")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import bbam  # noqa: F401  (loads the extension)

    if args.threads is not None:
        torch.set_num_threads(args.threads)

    if args.device == "cuda":
        if not torch.cuda.is_available():
            print("bench/ops.py: --device cuda but CUDA is not available", file=sys.stderr)
            return 2
        if not bbam._extension.with_cuda():
            print("bench/ops.py: bbam._C was built without CUDA kernels", file=sys.stderr)
            return 2
    device = torch.device(args.device)
    timer = Timer(device)
    env = environment(device)
    print(f"bbam op benchmark: device={env['device_name']} threads={env['threads']} "
          f"cpu_kernels={env['cpu_kernels']} torch={env['torch']}", flush=True)
    load = env.get("loadavg_start", (0.0,))[0]
    if device.type == "cpu" and load > 0.5:
        print(f"warning: 1-min load average {load:.2f} before the run on {env['cpu_count']} CPUs: another process "
              "is busy; multi-threaded (OpenMP) timings can stall badly. Prefer a quiet machine, or compare "
              "with --threads 1.", flush=True)
    t_start = time.perf_counter()
    probe = StallProbe(device)
    limits = machine_limits(device, timer, args.quick, probe)
    print(f"machine: copy {limits['copy_GBps']:.1f} GB/s (read+write), "
          f"sgemm {limits['sgemm_GFLOPs']:.1f} GFLOP/s {tuple(limits['sgemm_shape'])}"
          + ("  [CONTENDED: not the machine's limits]" if limits["contended"] else ""), flush=True)

    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    gen = torch.Generator().manual_seed(0)
    builders = {  # generators: one case's inputs alive at a time
        "loss": lambda: loss_cases(sizes["elementwise"], device, gen, args.compile_reference),
        "transform": lambda: transform_cases(sizes["elementwise"], device, gen, args.compile_reference),
        "stats": lambda: stats_cases(sizes["stats"], device, gen, args.compile_reference),
        "select": lambda: select_cases(sizes["select"], device, gen, args.compile_reference),
        "cap": lambda: cap_cases(sizes["cap"], device, gen, args.compile_reference),
        "ranks": lambda: rank_cases(sizes["ranks"], device, gen, args.compile_reference),
    }
    rows = []
    for op in args.ops:
        for case in builders[op]():
            t0 = time.perf_counter()
            row = run_case(case, device, timer, args, limits, probe)
            row["case_wall_s"] = time.perf_counter() - t0
            if hasattr(os, "getloadavg"):
                row["loadavg_1min"] = os.getloadavg()[0]  # the machine may be shared: judge noise by it
            rows.append(row)
            c = row["contention"]
            print(f"  {row['op']:<17} {row['mode']:<13} {row['dtype']:<5} {row['size']:<22} "
                  f"fused {row['fused_ms']:9.3f} ms  ref {row['reference_ms']:9.3f} ms  "
                  f"{row['speedup']:6.2f}x  ({row['case_wall_s']:.1f} s, {c['quiet_repeats']}/{c['attempts']} quiet"
                  + (", CONTENDED" if row["contended"] else "") + ")", flush=True)
            del case
            if not args.quick:
                gc.collect()  # a full collection is ~0.1 s with torch loaded

    try:
        env["loadavg_end"] = os.getloadavg()
    except OSError:
        pass
    checks = acceptance(rows)
    result = {
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv) if argv is None else argv,
        "settings": {"threads": args.threads, "repeats": args.repeats, "quick": args.quick, "ops": args.ops,
                     "compile_reference": args.compile_reference, "min_repeat_s": args.min_repeat_s,
                     "max_case_seconds": args.max_case_seconds},
        "environment": env,
        "machine_limits": limits,
        "memory_method": ("cuda.max_memory_allocated - memory_allocated before" if device.type == "cuda" else
                          "fused: max(profiler, rss_hwm); reference/compiled: profiler (see bench/ops.py)"),
        "acceptance": checks,
        "rows": rows,
        "wall_s": time.perf_counter() - t_start,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)

    print()
    print(format_table(rows, args.compile_reference))
    print()
    print("memory: peak extra MiB of one call (inputs excluded, outputs included); "
          + ("CUDA max_memory_allocated." if device.type == "cuda" else
             "fused = max(profiler, RSS high-water), reference = profiler: memory % is an upper bound."))
    if any(r["contended"] for r in rows):
        print(f"x!: CONTENDED case (fewer than 3 repeats with quiet stall probes, < {STALL_MS} ms): another process "
              "was busy, OpenMP regions stalled; the numbers are not trustworthy. Rerun on a quiet machine.")
    if any(r["noisy"] and not r["contended"] for r in rows):
        print(f"x?: noisy case (slowest used repeat > {NOISY_SPREAD}x the fastest, fused or reference).")
    print("% roof: fused GFLOP/s vs this machine's sgemm (stats, select: the faster of torch.mm and oneDNN), "
          "else fused GB/s vs its copy bandwidth.")
    for c in checks:
        verdict = "UNRELIABLE (contended)" if c["met"] is None else "MET" if c["met"] else "NOT MET"
        print(f"{verdict:<8} {c['target']}: {c['value']}")
    print(f"wrote {args.json} ({result['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
