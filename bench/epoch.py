"""Whole-epoch benchmark of the training app: where an epoch's time and memory go.

Usage::

    python bench/epoch.py [--sizes 50000x1000,200000x1000] [--features 256] [--epochs 3]
                          [--warmup-epochs 1] [--method bbam] [--device cpu] [--json PATH] [--quick]
                          [--loader tensor|dataloader] [--workers 0] [--set KEY=VALUE ...]

Each size ``NxK`` runs the app's own pieces (``bbam.app.plan.prepare``,
``bbam.app.build.build_engine``, ``SelfTrainingEngine.fit``, the final test evaluation and the angle
diagnostics) on the synthetic dataset with ``N`` samples, ``D = --features`` features
and ``K`` labels, for ``--epochs`` epochs of which ``--warmup-epochs`` are warm-up, in a
fresh child process (so its peak resident memory is its own). Reported per size:

* before training: data generation, splitting (+ scaling);
* per warm-up epoch: optimizer steps (and seconds per step), evaluation, checkpoint;
* per self-training epoch: CAP (scoring the unlabeled set + pseudo-labels), the kNN graph's
  features and its build + label spreading (``--set method.pseudo_labels=graph``), features,
  statistics, sampling, bookkeeping (the logged pseudo-label summaries), optimizer steps,
  evaluation, checkpoint, the epoch's time outside any named phase ("other": batch
  orders, logging), and the ratio of everything that is not an optimizer step (the whole
  epoch minus the steps, plus the checkpoint) to the optimizer steps;
* after training: the test evaluation and the angle diagnostics;
* peak RSS of the child (``ru_maxrss``).

``--loader dataloader --workers W`` runs the same epochs with batches from a
``torch.utils.data.DataLoader`` (``train.loader``), to compare with the tensor path.

Phase times come from the engine's own ``phase_s`` record of each epoch (metrics.jsonl).
Noisy machines: compare ratios within one run; absolute times only on a quiet machine.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
SELF_TRAINING_PHASES = ("cap", "graph_features", "graph", "features", "statistics", "sampling", "bookkeeping",
                        "evaluation", "checkpoint")


def _one(n: int, k: int, ns: argparse.Namespace, queue) -> None:
    """Child process: one size end to end; puts its result dict on ``queue``."""
    import torch

    from bbam.app.diagnostics import run_diagnostics
    from bbam.app.plan import instantiate_data, prepare
    from bbam.app.run import build_engine
    from bbam.train import compose_config

    if ns.threads:
        torch.set_num_threads(ns.threads)
    cfg = compose_config([f"data.num_samples={n}", f"data.num_features={ns.features}", f"data.num_labels={k}",
                          f"train.epochs={ns.epochs}", f"train.warmup_epochs={ns.warmup_epochs}",
                          f"method={ns.method}", "train.progress=false", f"device={ns.device}", "seed=0",
                          f"train.loader={ns.loader}", f"train.num_workers={ns.workers}", *(ns.set or [])])
    out: Dict = {"N": n, "K": k, "D": ns.features, "method": ns.method, "device": ns.device, "set": ns.set or [],
                 "loader": ns.loader, "workers": ns.workers,
                 "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        cfg.out_dir = tmp
        t = time.perf_counter()
        data = instantiate_data(cfg)
        out["data_s"] = time.perf_counter() - t
        t = time.perf_counter()
        plan = prepare(cfg, torch.device(ns.device), data=data)  # the split (seed=0) and the scaling
        out["split_s"] = time.perf_counter() - t
        out["sizes"] = plan.sizes
        engine = build_engine(plan, tmp)
        engine.fit(progress=False)
        out["epochs"] = [{"epoch": r["epoch"], "phase": r["phase"], "time_s": r["time_s"], "phase_s": r["phase_s"]}
                         for r in engine.state.history]
        out["steps"] = {"warmup": engine.steps_per_epoch("warmup"),
                        "self_training": engine.steps_per_epoch("self_training")}
        engine.load_best()
        t = time.perf_counter()
        engine.evaluate("test")
        out["test_evaluation_s"] = time.perf_counter() - t
        t = time.perf_counter()
        run_diagnostics(engine, "test")
        out["diagnostics_s"] = time.perf_counter() - t
    out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB -> GiB
    queue.put(out)


def run_size(n: int, k: int, ns: argparse.Namespace) -> Dict:
    ctx = mp.get_context("spawn")  # a fresh interpreter: its peak RSS is this size's alone
    queue = ctx.Queue()
    proc = ctx.Process(target=_one, args=(n, k, ns, queue))
    t = time.perf_counter()
    proc.start()
    import queue as queue_module

    while True:  # a child that fails (an exception, killed for memory) must not hang the bench
        try:
            result = queue.get(timeout=5)
            break
        except queue_module.Empty:
            if not proc.is_alive():
                raise RuntimeError(f"epoch bench: N={n} K={k}: the child process exited with code {proc.exitcode} "
                                   f"without a result (see its traceback above; -9: killed, e.g. out of memory)")
    proc.join()
    result["wall_s"] = time.perf_counter() - t
    return result


def summarize(r: Dict) -> Dict:
    """Per-size summary: median over the self-training epochs of each phase, and the ratio."""
    warm = [e for e in r["epochs"] if e["phase"] == "warmup"]
    self_tr = [e for e in r["epochs"] if e["phase"] == "self_training"]
    med = lambda rows, key: statistics.median(e["phase_s"].get(key, 0.0) for e in rows) if rows else float("nan")
    s = {"N": r["N"], "K": r["K"], "data_s": r["data_s"], "split_s": r["split_s"],
         "warmup_steps_s": med(warm, "steps"), "warmup_step_ms": 1000 * med(warm, "steps") / r["steps"]["warmup"],
         "test_evaluation_s": r["test_evaluation_s"], "diagnostics_s": r["diagnostics_s"],
         "peak_rss_gib": r["peak_rss_gib"], "wall_s": r["wall_s"]}
    for key in (*SELF_TRAINING_PHASES, "steps"):
        s[f"st_{key}_s"] = med(self_tr, key)
    # the epoch record's time_s covers everything but the checkpoint (written after it)
    unnamed = [e["time_s"] - sum(v for k, v in e["phase_s"].items() if k != "checkpoint") for e in self_tr]
    s["st_other_s"] = statistics.median(unnamed) if self_tr else float("nan")
    ratios = [(e["time_s"] - e["phase_s"]["steps"] + e["phase_s"].get("checkpoint", 0.0)) / e["phase_s"]["steps"]
              for e in self_tr if e["phase_s"].get("steps", 0) > 0]
    s["st_other_over_steps"] = statistics.median(ratios) if ratios else float("nan")
    return s


def table(summaries: List[Dict]) -> str:
    cols = [("N x K", lambda s: f"{s['N']:,} x {s['K']}"), ("data s", "data_s"), ("split s", "split_s"),
            ("warm-up step ms", "warmup_step_ms"), ("CAP s", "st_cap_s"),
            ("graph features s", "st_graph_features_s"), ("graph s", "st_graph_s"), ("features s", "st_features_s"),
            ("statistics s", "st_statistics_s"), ("sampling s", "st_sampling_s"),
            ("bookkeeping s", "st_bookkeeping_s"), ("steps s", "st_steps_s"),
            ("validation s", "st_evaluation_s"), ("checkpoint s", "st_checkpoint_s"), ("other s", "st_other_s"),
            ("(non-step)/steps", "st_other_over_steps"), ("test eval s", "test_evaluation_s"),
            ("diagnostics s", "diagnostics_s"), ("peak RSS GiB", "peak_rss_gib")]
    head = "| " + " | ".join(c for c, _ in cols) + " |\n|" + "---|" * len(cols) + "\n"
    fmt = lambda v: f"{v:.2f}" if isinstance(v, float) else str(v)
    return head + "".join("| " + " | ".join(fmt(get(s)) if callable(get) else fmt(s[get]) for _, get in cols) + " |\n"
                          for s in summaries)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="50000x80,50000x1000,200000x1000", help="comma-separated NxK")
    p.add_argument("--features", type=int, default=256, help="feature dimension D of the synthetic data")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run, warm-up included")
    p.add_argument("--warmup-epochs", type=int, default=1)
    p.add_argument("--method", default="bbam")
    p.add_argument("--device", default="cpu")
    p.add_argument("--loader", default="tensor", help="train.loader: tensor | dataloader")
    p.add_argument("--workers", type=int, default=0, help="train.num_workers (--loader dataloader)")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="an extra config override, e.g. --set method.pseudo_labels=graph (repeatable)")
    p.add_argument("--quick", action="store_true", help="one tiny size: a smoke test")
    p.add_argument("--json", default=None, help="output path (default bench/results/epoch-<device>.json)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    ns = parse_args(argv)
    sizes = ["3000x20"] if ns.quick else ns.sizes.split(",")
    results = []
    for size in sizes:
        n, k = (int(v) for v in size.lower().split("x"))
        print(f"epoch bench: N={n:,} K={k} D={ns.features} ...", file=sys.stderr, flush=True)
        results.append(run_size(n, k, ns))
    summaries = [summarize(r) for r in results]
    path = Path(ns.json or ROOT / "bench" / "results" / f"epoch-{ns.device}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"args": vars(ns), "runs": results, "summary": summaries}, indent=2))
    print(table(summaries))
    print(f"(JSON: {path})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
