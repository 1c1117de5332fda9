"""Benchmark of the negative sampler (:class:`bbam.sampling.NegativeSampler`) against the
naive method of the research code.

Usage::

    python bench/sampling.py                       # full CPU run (~10-15 minutes)
    python bench/sampling.py --quick               # smoke test, small sizes, seconds
    python bench/sampling.py --sizes 100000x80 --methods faiss-flat,naive --repeats 5
    python bench/sampling.py --json /tmp/sampling.json --cache /tmp/bbam-bench-sampling

Methods (all select every positive and each label's ``m_k = min(floor(eta * n_pos_k),
n_neg_k)`` negatives most cosine-similar to its prototype, eta = 5):

* ``faiss-flat``: ``NegativeSampler(backend="faiss", index="flat")`` (exact; FAISS
  single-threaded, the default ``faiss_threads=1``; torch keeps its threads).
* ``faiss-flat-mt``: the same with ``faiss_threads=None`` (FAISS's own OpenMP threads,
  all cores): shows the cost of two OpenMP runtimes fighting over the cores. Not run at
  N >= 1M by default (``--big-methods``).
* ``faiss-ivf``: ``NegativeSampler(backend="faiss", index="ivf")`` (approximate; default
  ``nlist`` / ``nprobe``).
* ``exact``: ``NegativeSampler(backend="exact")``, also what ``backend="auto"`` runs:
  the fused op ``bbam.ops.negative_select`` (sampled bands + one tiled pass).
* ``naive``: the research code's method in torch float32: the full ``N x K`` cosine
  matrix, non-negatives set to ``-inf``, a full sort of every label column
  (``torch.sort(dim=0)``), then each label's first ``m_k`` rows. Needs ``N * K * 18``
  bytes (matrix 4, sorted values 4, int64 order 8, mask 1, output 1); skipped above
  ``--max-naive-gib`` (10), reported as "needs N×K: X GiB".
* ``naive-research``: the research code verbatim (``scipy.spatial.distance.cdist(...,
  'cosine')`` in float64, ``np.sort(axis=0)``, threshold ``>=`` the ``m_k``-th value),
  for reference (one timed call); needs ``N * K * 27`` bytes, same cap.

Data (seeded, generated once per size and cached as ``.npy`` under ``--cache``):
features ``[N, D]`` float32 from a Gaussian mixture (1024 centres, unit noise);
prototypes ``[K, D]`` = a random centre + 0.5 noise each; targets ``[N, K]`` int8 with a
long tail of label frequencies, log-spaced from 0.2 down to 0.001, and 1% unknowns (-1).

Each (method, size) runs in a fresh subprocess (``--worker``): it loads the cached data,
does a small warm-up call (imports, thread pools), then ``repeats`` timed calls. Time:
median of the repeats (all kept in the JSON). Peak extra memory of a call: the kernel's
resident high-water mark reset before the call (``/proc/self/clear_refs`` <- 5), then
``VmHWM`` after it minus ``VmRSS`` before it (after ``gc`` and ``malloc_trim``); it includes
the ``N x K`` bool output and every thread's and allocator's memory; the maximum over the
repeats is reported. Each worker also writes its mask (bit-packed) so that the parent
reports agreement with the exact backend: recall = |selected ∩ exact| / |exact| over the
negatives of the labels that needed a search, and whether the masks are identical.

The machine may be shared: the JSON records the load average around every case; compare
numbers only within one run.
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
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
GIB = 2.0**30
ETA = 5.0
ALL_METHODS = ("exact", "faiss-flat", "faiss-flat-mt", "faiss-ivf", "naive", "naive-research")
BIG_METHODS = "exact,faiss-flat,faiss-ivf,naive,naive-research"   # default for N >= 1M
DEFAULT_SIZES = "100000x80,100000x1000,1000000x80,1000000x1000"
NAIVE_BYTES = {"naive": 18, "naive-research": 27}   # per N x K entry


# -- data -------------------------------------------------------------------------------------

def label_frequencies(K: int) -> np.ndarray:
    return np.logspace(math.log10(0.2), math.log10(0.001), K)


def _paths(cache: Path, N: int, D: int, K: int) -> Dict[str, Path]:
    return {"features": cache / f"features-{N}x{D}.npy", "prototypes": cache / f"prototypes-{K}x{D}.npy",
            "targets": cache / f"targets-{N}x{K}.npy"}


def make_data(cache: Path, N: int, D: int, K: int, seed: int = 0) -> Dict[str, Path]:
    """Generate (once) and cache the benchmark inputs; returns their paths."""
    cache.mkdir(parents=True, exist_ok=True)
    paths = _paths(cache, N, D, K)
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(1024, D, generator=gen)
    if not paths["features"].exists():
        feats = np.lib.format.open_memmap(paths["features"].with_suffix(".tmp.npy"), mode="w+",
                                          dtype=np.float32, shape=(N, D))
        g = torch.Generator().manual_seed(seed + 1)
        for s in range(0, N, 65536):
            n = min(N, s + 65536) - s
            c = torch.randint(0, 1024, (n,), generator=g)
            feats[s:s + n] = (centres[c] + torch.randn(n, D, generator=g)).numpy()
        feats.flush()
        del feats
        paths["features"].with_suffix(".tmp.npy").rename(paths["features"])
    if not paths["prototypes"].exists():
        g = torch.Generator().manual_seed(seed + 2)
        protos = centres[torch.randint(0, 1024, (K,), generator=g)] + 0.5 * torch.randn(K, D, generator=g)
        np.save(paths["prototypes"], protos.numpy())
    if not paths["targets"].exists():
        tg = np.lib.format.open_memmap(paths["targets"].with_suffix(".tmp.npy"), mode="w+",
                                       dtype=np.int8, shape=(N, K))
        freq = torch.from_numpy(label_frequencies(K)).float()
        g = torch.Generator().manual_seed(seed + 3)
        rows = max(1, (1 << 24) // K)
        for s in range(0, N, rows):
            n = min(N, s + rows) - s
            t = (torch.rand(n, K, generator=g) < freq).to(torch.int8)
            t[torch.rand(n, K, generator=g) < 0.01] = -1
            tg[s:s + n] = t.numpy()
        tg.flush()
        del tg
        paths["targets"].with_suffix(".tmp.npy").rename(paths["targets"])
    return paths


# -- methods ----------------------------------------------------------------------------------

def naive(features: torch.Tensor, prototypes: torch.Tensor, targets: torch.Tensor, eta: float) -> torch.Tensor:
    """Research-code method, torch float32: full cosine matrix, full sort of every column."""
    from bbam.sampling import negative_sample_counts
    _, _, m = negative_sample_counts(targets, eta)
    sims = F.normalize(features, dim=1) @ F.normalize(prototypes, dim=1).T        # [N, K]
    sims.masked_fill_(targets != 0, float("-inf"))
    order = torch.sort(sims, dim=0, descending=True).indices                       # [N, K]
    out = targets == 1
    for k, mk in enumerate(m.tolist()):
        out[order[:mk, k], k] = True
    return out


def naive_research(features: torch.Tensor, prototypes: torch.Tensor, targets: torch.Tensor,
                   eta: float) -> torch.Tensor:
    """The research code's ``negative_sampling`` (scipy cdist float64, np.sort, threshold)."""
    from scipy.spatial.distance import cdist
    t = targets.numpy()
    cos_sim = 1.0 - cdist(features.numpy(), prototypes.numpy(), "cosine")
    cos_sim[t != 0] = -1
    num_pos = np.sum(t == 1, axis=0)
    num_neg = np.sum(t == 0, axis=0)
    num_neg_sam = np.minimum(eta * num_pos, num_neg)
    sorted_cos_sim = -np.sort(-cos_sim, axis=0)
    thre = sorted_cos_sim[[int(x) - 1 for x in num_neg_sam], range(cos_sim.shape[1])]
    mask = cos_sim >= thre
    mask[t == 1] = True
    return torch.from_numpy(mask)


def method_fn(name: str) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    from bbam.sampling import NegativeSampler
    if name == "faiss-flat":
        return NegativeSampler(eta=ETA, backend="faiss", index="flat").select
    if name == "faiss-flat-mt":
        return NegativeSampler(eta=ETA, backend="faiss", index="flat", faiss_threads=None).select
    if name == "faiss-ivf":
        return NegativeSampler(eta=ETA, backend="faiss", index="ivf").select
    if name == "exact":
        return NegativeSampler(eta=ETA, backend="exact").select
    if name == "naive":
        return lambda f, p, t: naive(f, p, t, ETA)
    if name == "naive-research":
        return lambda f, p, t: naive_research(f, p, t, ETA)
    raise ValueError(name)


# -- worker (one method, one size, fresh process) ---------------------------------------------

def _vm(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024.0
    raise KeyError(key)


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # pragma: no cover
        pass


def worker(args: argparse.Namespace) -> None:
    paths = _paths(Path(args.cache), args.n, args.dim, args.k)
    features = torch.from_numpy(np.load(paths["features"]))
    prototypes = torch.from_numpy(np.load(paths["prototypes"]))
    targets = torch.from_numpy(np.load(paths["targets"]))
    fn = method_fn(args.method)
    fn(features[:2000].clone(), prototypes, targets[:2000].clone())   # warm-up: imports, pools
    times: List[float] = []
    peaks: List[float] = []
    out = None
    for r in range(args.repeats):
        out = None
        _trim()
        rss0 = _vm("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        t0 = time.perf_counter()
        out = fn(features, prototypes, targets)
        times.append(time.perf_counter() - t0)
        peaks.append(_vm("VmHWM") - rss0)
    assert out is not None
    if args.mask_out:
        np.save(args.mask_out, np.packbits(out.numpy(), axis=None))
    print("RESULT " + json.dumps({"times_s": times, "peak_extra_bytes": peaks, "threads": torch.get_num_threads()}))


# -- parent -----------------------------------------------------------------------------------

def _fmt_bytes(b: float) -> str:
    return f"{b / GIB:.2f} GiB" if b >= 0.1 * GIB else f"{b / 2**20:.0f} MiB"


def agreement(mask: np.ndarray, ref: np.ndarray, targets: np.ndarray) -> Dict[str, Any]:
    """Recall of the selected negatives against a reference, over searched labels."""
    from bbam.sampling import negative_sample_counts
    _, n_neg, m = negative_sample_counts(torch.from_numpy(targets), ETA)
    searched = ((m > 0) & (m < n_neg)).numpy()
    inter = tot = 0
    rows = max(1, (1 << 24) // targets.shape[1])
    for s in range(0, targets.shape[0], rows):
        neg = (targets[s:s + rows] == 0) & searched
        r = ref[s:s + rows] & neg
        inter += int((mask[s:s + rows] & r).sum())
        tot += int(r.sum())
    return {"recall": inter / tot if tot else 1.0, "identical": bool(np.array_equal(mask, ref))}


def _unpack(path: Path, shape: Tuple[int, int]) -> np.ndarray:
    return np.unpackbits(np.load(path), count=shape[0] * shape[1]).reshape(shape).astype(bool)


def run_case(args: argparse.Namespace, method: str, N: int, K: int, repeats: int, mask_path: Path) -> Dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--method", method, "--n", str(N),
           "--k", str(K), "--dim", str(args.dim), "--repeats", str(repeats), "--cache", str(args.cache),
           "--mask-out", str(mask_path)]
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    row: Dict[str, Any] = {"method": method, "N": N, "K": K, "D": args.dim, "repeats": repeats,
                           "loadavg_start": load0, "loadavg_end": os.getloadavg(), "worker_wall_s": wall}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        row["error"] = (proc.stderr or proc.stdout)[-2000:]
        return row
    res = json.loads(lines[-1][len("RESULT "):])
    row.update(res)
    row["time_s"] = statistics.median(res["times_s"])
    row["peak_extra_gib"] = max(res["peak_extra_bytes"]) / GIB
    return row


def environment() -> Dict[str, Any]:
    import bbam
    env: Dict[str, Any] = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                           "torch": torch.__version__, "python": platform.python_version(),
                           "platform": platform.platform(), "bbam": getattr(bbam, "__version__", "?"),
                           "threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    try:
        import faiss
        env["faiss"] = faiss.__version__
        env["faiss_threads"] = faiss.omp_get_max_threads()
    except ImportError:
        env["faiss"] = None
    try:
        env["mem_total_gib"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    except (ValueError, OSError):  # pragma: no cover
        pass
    try:
        env["cpu_name"] = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):  # pragma: no cover
        pass
    try:
        env["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                           cwd=ROOT).stdout.strip()
    except OSError:  # pragma: no cover
        pass
    return env


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default=None, help=f"NxK list (default {DEFAULT_SIZES})")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--methods", default=",".join(ALL_METHODS))
    p.add_argument("--big-methods", default=BIG_METHODS, help="methods for sizes with N >= 1M")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per case with N < 1M")
    p.add_argument("--big-repeats", type=int, default=1, help="timed calls per case with N >= 1M")
    p.add_argument("--max-naive-gib", type=float, default=10.0)
    p.add_argument("--cache", default="/tmp/bbam-bench-sampling")
    p.add_argument("--json", default=str(ROOT / "bench" / "results" / "sampling-cpu.json"))
    p.add_argument("--quick", action="store_true", help="small sizes (20000x80, 20000x300), 2 repeats")
    # worker mode (internal)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--k", type=int, help=argparse.SUPPRESS)
    p.add_argument("--mask-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0

    sizes_s = args.sizes or ("20000x80,20000x300" if args.quick else DEFAULT_SIZES)
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in sizes_s.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    big_methods = [m for m in args.big_methods.split(",") if m in methods]
    for m in methods:
        if m not in ALL_METHODS:
            p.error(f"unknown method {m!r}; choose from {ALL_METHODS}")
    if args.quick:
        args.repeats = args.big_repeats = 2
    cache = Path(args.cache)
    t_start = time.perf_counter()
    env = environment()
    env["loadavg_start"] = os.getloadavg()
    rows: List[Dict[str, Any]] = []
    for N, K in sizes:
        t0 = time.perf_counter()
        paths = make_data(cache, N, args.dim, K)
        print(f"# data N={N} K={K} D={args.dim}: {time.perf_counter() - t0:.1f}s", flush=True)
        masks: Dict[str, Path] = {}
        case_rows: List[Dict[str, Any]] = []
        for method in (big_methods if N >= 1_000_000 else methods):
            need = NAIVE_BYTES.get(method, 0) * N * K
            if need and need > args.max_naive_gib * GIB:
                row = {"method": method, "N": N, "K": K, "D": args.dim,
                       "skipped": f"needs N×K: {need / GIB:.1f} GiB (> {args.max_naive_gib:g} GiB)"}
            else:
                mask_path = cache / f"mask-{method}-{N}x{K}.npy"
                reps = args.big_repeats if N >= 1_000_000 else args.repeats
                if method == "naive-research":
                    reps = 1   # single-threaded scipy/numpy, for reference only: one call
                row = run_case(args, method, N, K, reps, mask_path)
                if "error" not in row:
                    masks[method] = mask_path
            case_rows.append(row)
            msg = row.get("skipped") or row.get("error", "")[-300:] or \
                f"{row['time_s']:.3f}s  peak {_fmt_bytes(row['peak_extra_gib'] * GIB)}"
            print(f"  {method:15s} N={N} K={K}: {msg}", flush=True)
        # agreement with the exact backend (else faiss-flat), speed-up over naive
        ref_name = "exact" if "exact" in masks else ("faiss-flat" if "faiss-flat" in masks else None)
        if ref_name is not None:
            targets = np.load(paths["targets"])
            ref = _unpack(masks[ref_name], (N, K))
            for row in case_rows:
                if row["method"] in masks and row["method"] != "naive-research":  # its threshold keeps ties
                    row["agreement_vs"] = ref_name
                    row.update(agreement(_unpack(masks[row["method"]], (N, K)), ref, np.asarray(targets)))
            del ref
        base = {r["method"]: r for r in case_rows}.get("naive")
        for row in case_rows:
            if base and "time_s" in base and "time_s" in row:
                row["speedup_vs_naive"] = base["time_s"] / row["time_s"]
        for mp in masks.values():
            mp.unlink(missing_ok=True)
        rows.extend(case_rows)

    env["loadavg_end"] = os.getloadavg()
    wall = time.perf_counter() - t_start
    # table
    hdr = f"{'N':>8} {'K':>5} {'method':15} {'time (s)':>9} {'reps':>4} {'peak extra':>11} {'vs naive':>9} {'recall':>7}  note"
    print("\n" + hdr + "\n" + "-" * len(hdr))
    for r in rows:
        if "time_s" in r:
            sp = f"{r['speedup_vs_naive']:.1f}x" if "speedup_vs_naive" in r else "-"
            rc = f"{r['recall']:.4f}" if "recall" in r else "-"
            note = "identical to exact" if r.get("identical") and r["method"] != "exact" else ""
            print(f"{r['N']:>8} {r['K']:>5} {r['method']:15} {r['time_s']:>9.3f} {len(r['times_s']):>4} "
                  f"{_fmt_bytes(r['peak_extra_gib'] * GIB):>11} {sp:>9} {rc:>7}  {note}")
        else:
            print(f"{r['N']:>8} {r['K']:>5} {r['method']:15} {'-':>9} {'-':>4} {'-':>11} {'-':>9} {'-':>7}  "
                  f"{r.get('skipped') or 'ERROR: ' + r.get('error', '')[-200:]}")
    acceptance = {}
    for r in rows:   # issue 5's targets, for every sampler (not the naive baselines)
        sampler = not r["method"].startswith("naive")
        if sampler and r["N"] == 100_000 and r["K"] == 80 and "speedup_vs_naive" in r:
            acceptance[f"{r['method']} >= 10x naive at N=100k K=80"] = {
                "speedup": r["speedup_vs_naive"], "met": r["speedup_vs_naive"] >= 10}
        if sampler and r["N"] == 1_000_000 and r["K"] == 1000 and "peak_extra_gib" in r:
            acceptance[f"{r['method']} N=1M K=1000 < 4 GiB extra"] = {
                "peak_extra_gib": r["peak_extra_gib"], "met": r["peak_extra_gib"] < 4}
    for k, v in acceptance.items():
        print(f"acceptance: {k}: {'MET' if v['met'] else 'NOT MET'} ({v})")
    print(f"\nwall {wall:.0f}s")
    if args.json:
        out = {"command": " ".join([Path(sys.executable).name] + [os.path.relpath(__file__, ROOT)] + sys.argv[1:]),
               "settings": {"sizes": sizes_s, "dim": args.dim, "methods": methods, "eta": ETA,
                            "repeats": args.repeats, "big_repeats": args.big_repeats,
                            "max_naive_gib": args.max_naive_gib,
                            "label_frequencies": "logspace(0.2 -> 0.001) over K, 1% unknown"},
               "memory_method": "VmHWM (reset via /proc/self/clear_refs=5) minus VmRSS before the call, "
                                "fresh subprocess per (method, size); includes the N x K bool output",
               "environment": env, "acceptance": acceptance, "rows": rows, "wall_s": wall}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
