"""How far a method's test mAP moves when its frozen features move by rounding amounts.

Two runtimes compute a frozen backbone's features equal to about 1e-6 (``bench/images.py``);
whether a method's result is "unchanged" by the runtime depends on how much the method
itself turns such a change into another training trajectory. This study runs the app on a
set's features (for photos, a frozen backbone's, e.g. computed by ``model.encoder.runtime=torch``)
as they are and with Gaussian noise of standard deviation ``--noise`` added to every feature
of every split (``--draws`` independent draws, the same draw for every method, ratio and
seed), and writes one JSON line per run (``draw``: 0 unperturbed, 1.. perturbed)::

    python bench/sensitivity.py --data miml --methods fixmatch,softmatch,supervised --lb 0.1,0.2 \\
        --seeds 0,1,2 --draws 2 --noise 7.8e-7 --out sensitivity.jsonl -- model.encoder.runtime=torch
    python bench/sensitivity.py --summary sensitivity.jsonl

The summary gives, per method and labeled ratio, the mean test mAP over seeds for each
thread count (``--threads``; 1 by default, as ``bench/study.py``'s runs) and draw, and the
largest distance of any of them from the one-thread unperturbed mean: the thread count
changes the order of float sums, another perturbation of the same size. 7.8e-7 is the
standard deviation of the difference between MIML's EfficientNet-Lite0 features from eager
PyTorch and from ONNX Runtime (largest difference 1.6e-5).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]


def run(ns) -> None:
    import torch

    from bbam.app import inputs as I
    from bbam.train import compose_config, train

    torch.set_num_threads(int(ns.threads))  # the thread count changes float sums' order: part of a run's identity
    draw_now = {"draw": 0}

    def perturbing(real):
        def matrix(self, data):  # every split's features come from the set's one matrix
            x = real(self, data)
            if draw_now["draw"] == 0 or not self.feature_rows:  # token ids and pixels stay as they are
                return x
            g = torch.Generator().manual_seed(1_000 + draw_now["draw"])
            return x + float(ns.noise) * torch.randn(x.shape, generator=g, dtype=x.dtype)
        return matrix

    for kind in (I.Inputs, I.ImageInputs):  # feature rows, and a frozen backbone's features
        kind.matrix = perturbing(kind.matrix)
    out = Path(ns.out)
    for lb in ns.lb.split(","):
        for seed in ns.seeds.split(","):
            for method in ns.methods.split(","):
                for draw in range(int(ns.draws) + 1):
                    draw_now["draw"] = draw
                    overrides = [f"data={ns.data}", f"split.lb_ratio={lb}", f"seed={seed}", f"method={method}",
                                 "train.progress=false", *ns.overrides]
                    cfg = compose_config(overrides)
                    with tempfile.TemporaryDirectory(prefix="bbam-sensitivity-") as tmp:
                        cfg.out_dir = tmp
                        result = train(cfg)
                    row = {"dataset": ns.data, "method": method, "lb_ratio": float(lb), "seed": int(seed),
                           "draw": draw, "noise": float(ns.noise) if draw else 0.0, "threads": int(ns.threads),
                           "test": {"mAP": float(result["test"]["mAP"])}, "overrides": overrides}
                    with open(out, "a") as fh:
                        fh.write(json.dumps(row) + "\n")
                    print(f"{method} lb {lb} seed {seed} draw {draw}: mAP {row['test']['mAP']:.2f}", flush=True)


def summary(files: List[str]) -> str:
    rows = [json.loads(line) for f in files for line in open(f) if line.strip()]
    cells: Dict[tuple, Dict[tuple, List[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        cells[r["method"], r["lb_ratio"]][r.get("threads", 1), r["draw"]].append(r["test"]["mAP"])
    columns = sorted({(r.get("threads", 1), r["draw"]) for r in rows})
    reference = columns[0]  # the fewest threads, unperturbed

    def name(col):
        threads, draw = col
        return f"{threads} thread{'s' if threads > 1 else ''}, " + ("unperturbed" if draw == 0 else f"noise draw {draw}")

    out = ["| method | labels | " + " | ".join(name(c) for c in columns) + " | largest move of the mean |",
           "|---|---|" + "---|" * len(columns) + "---|"]
    for (method, lb), by_col in sorted(cells.items()):
        means = {c: statistics.mean(v) for c, v in by_col.items()}
        moves = [abs(means[c] - means[reference]) for c in means if c != reference and reference in means]
        move = f"{max(moves):.2f}" if moves else "—"
        out.append(f"| {method} | {lb:g} | " + " | ".join(f"{means[c]:.2f}" if c in means else "—" for c in columns)
                   + f" | {move} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="miml")
    p.add_argument("--methods", default="fixmatch,softmatch,supervised")
    p.add_argument("--lb", default="0.1,0.2")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--draws", type=int, default=2, help="perturbed draws per run (besides the unperturbed one)")
    p.add_argument("--noise", type=float, default=7.8e-7, help="std of the Gaussian noise added to every feature")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (1: as bench/study.py's runs)")
    p.add_argument("--out", help="JSON lines to append to")
    p.add_argument("--summary", nargs="+", metavar="FILE", help="tabulate these result files instead")
    p.add_argument("overrides", nargs="*", help="app overrides for every run (after --)")
    ns = p.parse_args(argv)
    if ns.summary:
        sys.stdout.write(summary(ns.summary))
        return
    if not ns.out:
        p.error("--out is required to run")
    run(ns)


if __name__ == "__main__":
    main()
