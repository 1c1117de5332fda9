"""Run a grid of the app's configurations (plus the logistic-regression floor) and tabulate it.

Every run is ``bbam.train.train(cfg)`` in a worker process (no Hydra start-up per run);
each finished run appends one JSON line to the results file, so an interrupted study
continues where it stopped (runs already in the file are skipped).

    python bench/study.py run --datasets emotions,medical --lb 0.1 --seeds 0,1,2 \\
        --methods logreg,supervised,cap,bam,bbam,bbam_cls --jobs 2 --out study.jsonl [-- key=value ...]
    python bench/study.py table study.jsonl [--out table.md]
    python bench/study.py summary study.jsonl [--metric mAP] [--pair bbam:bam ...]
    python bench/study.py probe auto.jsonl --floor study.jsonl

A ``--datasets`` entry is a dataset config's name or a path to a user's own file
(``.npz`` / ``.arff`` / LIBSVM: ``data=npz|arff|libsvm`` with their ``auto`` scaling).
``--variant NAME=override,override`` adds an extra row (a method with overrides), e.g.
``--variant bbam-noneg=method=bbam,method.sampling=null``. The table gives each
(dataset, lb) the mean ± std over seeds per method (mAP, F1 in percent), and paired
per-seed comparisons (mean difference ± std, wins / ties / losses on mAP).
"""
from __future__ import annotations

import argparse
import json
import re
import math
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

PAIRS = [("bbam", "bam"), ("bbam", "cap"), ("bbam_cls", "bbam"), ("cap", "supervised"), ("supervised", "logreg")]
METRICS = [("mAP", "mAP", 1.0), ("micro_f1", "Micro-F1", 100.0), ("macro_f1", "Macro-F1", 100.0),
           ("hamming_loss", "Hamming", 1.0), ("one_error", "One-error", 1.0)]


def _job(name: str, overrides: List[str]) -> Dict:
    import torch

    torch.set_num_threads(1)  # one run per core
    from bbam.train import compose_config, train

    cfg = compose_config(overrides + ["train.progress=false"])
    t0 = time.perf_counter()
    if name == "logreg":
        from baseline import baseline_metrics

        result = baseline_metrics(cfg)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            cfg.out_dir = tmp
            result = train(cfg)
            diag = json.loads((Path(tmp) / "diagnostics.json").read_text())
            result["diagnostics"] = {k: v for k, v in diag.items() if k.startswith("mean_")}
    result["row"] = name
    result["overrides"] = overrides
    result["wall_s"] = time.perf_counter() - t0
    return result


def _key(row: str, overrides: Sequence[str]) -> str:
    return row + "|" + " ".join(overrides)


def _data_overrides(data: str) -> List[str]:
    """``--datasets`` entry -> app overrides: a dataset config's name (``medical``), or a
    path to a file dataset (``.npz``, ``.arff``, LIBSVM), run as a user's own file with
    ``data=npz|arff|libsvm`` and its ``train.scaling=auto`` defaults."""
    suffix = Path(data).suffix.lower()
    if suffix == ".npz":
        return ["data=npz", f"data.path={data}"]
    if suffix == ".arff":
        return ["data=arff", f"data.path={data}"]
    if suffix in (".svm", ".libsvm", ".txt"):
        return ["data=libsvm", f"data.path={data}"]
    return [f"data={data}"]


def run(ns) -> None:
    rows: List[Tuple[str, List[str]]] = []
    for m in filter(None, ns.methods.split(",")):  # --methods "" : only the --variant rows
        rows.append((m, [] if m == "logreg" else [f"method={m}"]))
    for v in ns.variant or []:
        name, _, ovs = v.partition("=")
        rows.append((name, re.split(r",(?![^\[]*\])", ovs)))  # commas inside [...] belong to a list value
    out = Path(ns.out)
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            done.add(_key(r["row"], r["overrides"]))
    jobs = []
    for data in ns.datasets.split(","):
        for lb in ns.lb.split(","):
            for seed in ns.seeds.split(","):
                for name, ovs in rows:
                    overrides = [*_data_overrides(data), f"split.lb_ratio={lb}", f"seed={seed}", *ovs,
                                 *ns.overrides]
                    if _key(name, overrides) not in done:
                        jobs.append((name, overrides))
    print(f"study: {len(jobs)} runs to do ({len(done)} already in {out})", file=sys.stderr)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=ns.jobs) as pool, open(out, "a") as fh:
        futures = {pool.submit(_job, name, ovs): (name, ovs) for name, ovs in jobs}
        for i, fut in enumerate(as_completed(futures), 1):
            name, ovs = futures[fut]
            try:
                r = fut.result()
            except Exception as err:  # a failed run is reported, the study goes on
                print(f"FAILED {name} {' '.join(ovs)}: {type(err).__name__}: {err}", file=sys.stderr)
                continue
            fh.write(json.dumps(r) + "\n")
            fh.flush()
            print(f"[{i}/{len(jobs)} {time.perf_counter() - t0:.0f}s] {name} {' '.join(ovs)}: "
                  f"mAP {r['test']['mAP']:.2f} ({r['wall_s']:.1f}s)", file=sys.stderr)


def _mean_std(vals: List[float]) -> str:
    vals = [v for v in vals if v is not None and not math.isnan(v)]
    if not vals:
        return "—"
    if len(vals) == 1:
        return f"{vals[0]:.2f}"
    return f"{statistics.mean(vals):.2f} ± {statistics.stdev(vals):.2f}"


def table(ns) -> str:
    runs = [json.loads(line) for p in ns.files for line in Path(p).read_text().splitlines() if line.strip()]
    groups: Dict[Tuple[str, float], Dict[str, Dict[int, Dict]]] = defaultdict(lambda: defaultdict(dict))
    order: List[str] = []
    for r in runs:
        groups[(r["dataset"], r["lb_ratio"])][r["row"]][r["seed"]] = r
        if r["row"] not in order:
            order.append(r["row"])
    preferred = ["logreg", "supervised", "cap", "bam", "bbam", "bbam_cls"]
    order = [m for m in preferred if m in order] + [m for m in order if m not in preferred]
    lines = []
    for (dataset, lb), by_row in sorted(groups.items()):
        lines.append(f"\n### {dataset}, labeled ratio {lb}\n")
        head = "| method | n | " + " | ".join(title for _, title, _ in METRICS) + \
            " | VDFD proto before / after | VDFD classifier before / after |"
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        for row in order:
            if row not in by_row:
                continue
            rs = list(by_row[row].values())
            cells = [_mean_std([r["test"][k] * s for r in rs]) for k, _, s in METRICS]
            d = [r.get("diagnostics", {}) for r in rs]
            vd = []
            for fam in ("prototype", "classifier"):
                b = [x.get(f"mean_vdfd_{fam}") for x in d]
                a = [x.get(f"mean_vdfd_{fam}_after") for x in d]
                vd.append("—" if not any(v is not None for v in b) else
                          f"{statistics.mean(v for v in b if v is not None):.4f} / "
                          f"{statistics.mean(v for v in a if v is not None):.4f}")
            lines.append(f"| {row} | {len(rs)} | " + " | ".join(cells) + f" | {vd[0]} | {vd[1]} |")
        pair_lines = []
        for a, b in PAIRS + [tuple(p.split(":")) for p in (ns.pair or [])]:
            if a in by_row and b in by_row:
                seeds = sorted(set(by_row[a]) & set(by_row[b]))
                diffs = [by_row[a][s]["test"]["mAP"] - by_row[b][s]["test"]["mAP"] for s in seeds]
                if not diffs:
                    continue
                w = sum(d > 0.05 for d in diffs)
                l_ = sum(d < -0.05 for d in diffs)
                sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
                pair_lines.append(f"{a} − {b}: {statistics.mean(diffs):+.2f} ± {sd:.2f} mAP "
                                  f"(wins/ties/losses {w}/{len(diffs) - w - l_}/{l_})")
        if pair_lines:
            lines.append("\nPaired by seed: " + "; ".join(pair_lines) + ".")
    text = "\n".join(lines) + "\n"
    if ns.out:
        Path(ns.out).write_text(text)
    return text


def _load(files) -> List[Dict]:
    return [json.loads(line) for p in files for line in Path(p).read_text().splitlines() if line.strip()]


def _by(runs, *keys):
    out: Dict = defaultdict(list)
    for r in runs:
        out[tuple(r[k] for k in keys)].append(r)
    return out


def summary(ns) -> str:
    """Compact tables: mAP per dataset x method for each labeled ratio, paired comparisons,
    and mean VDFD per method (both angle families, before / after the transform)."""
    runs = _load(ns.files)
    rows = [r for r in ["logreg", "supervised", "cap", "bam", "bbam", "bbam_cls"] if any(x["row"] == r for x in runs)]
    rows += sorted({x["row"] for x in runs} - set(rows))
    datasets = list(dict.fromkeys(x["dataset"] for x in runs))
    cell = _by(runs, "dataset", "lb_ratio", "row")
    out = []
    metric = ns.metric
    scale = dict((k, s) for k, _, s in METRICS).get(metric, 1.0)

    def value(r):  # val_mAP: the selected epoch's validation mAP (what defaults are chosen on)
        return r.get("best_val_mAP") if metric == "val_mAP" else r["test"][metric] * scale  # logreg: no val

    for lb in sorted({x["lb_ratio"] for x in runs}):
        out.append(f"\n**{metric}, labeled ratio {lb}** (mean ± std over seeds)\n")
        out.append("| method | " + " | ".join(datasets) + " |")
        out.append("|---" * (len(datasets) + 1) + "|")
        for row in rows:
            vals = [_mean_std([value(r) for r in cell.get((d, lb, row), [])]) for d in datasets]
            if any(v != "—" for v in vals):
                out.append(f"| {row} | " + " | ".join(vals) + " |")
    pairs = [tuple(p.split(":")) for p in ns.pair] if ns.pair else PAIRS
    out.append(f"\n**Paired by seed ({metric})**: mean difference ± std over seeds; wins / ties / losses "
               "(|difference| <= 0.05 is a tie)\n")
    lbs = sorted({x["lb_ratio"] for x in runs})
    out.append("| comparison | labeled ratio | " + " | ".join(datasets) + " | all cells |")
    out.append("|---" * (len(datasets) + 3) + "|")
    for a, b in pairs:
        for lb in lbs:
            cells, every = [], []
            for d in datasets:
                A = {r["seed"]: value(r) for r in cell.get((d, lb, a), []) if value(r) is not None}
                B = {r["seed"]: value(r) for r in cell.get((d, lb, b), []) if value(r) is not None}
                diffs = [A[s] - B[s] for s in sorted(set(A) & set(B))]
                every += diffs
                if not diffs:
                    cells.append("—")
                    continue
                w, l_ = sum(x > 0.05 for x in diffs), sum(x < -0.05 for x in diffs)
                sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
                cells.append(f"{statistics.mean(diffs):+.2f} ± {sd:.2f} ({w}/{len(diffs) - w - l_}/{l_})")
            if every:
                w, l_ = sum(x > 0.05 for x in every), sum(x < -0.05 for x in every)
                out.append(f"| {a} − {b} | {lb} | " + " | ".join(cells) +
                           f" | {statistics.mean(every):+.2f} ({w}/{len(every) - w - l_}/{l_}) |")
    if any("diagnostics" in r for r in runs):
        out.append("\n**Mean VDFD on the test split** (rad², mean over datasets, labeled ratios and seeds): "
                   "before → after the transform\n")
        out.append("| method | prototype angles | classifier angles |")
        out.append("|---|---|---|")
        for row in rows:
            d = [r["diagnostics"] for r in runs if r["row"] == row and "diagnostics" in r]
            if not d:
                continue
            fam = []
            for f in ("prototype", "classifier"):
                b = [x[f"mean_vdfd_{f}"] for x in d if x.get(f"mean_vdfd_{f}") is not None]
                a = [x[f"mean_vdfd_{f}_after"] for x in d if x.get(f"mean_vdfd_{f}_after") is not None]
                fam.append(f"{statistics.mean(b):.4f} → {statistics.mean(a):.4f}" if b and a else "—")
            out.append(f"| {row} | {fam[0]} | {fam[1]} |")
    return "\n".join(out) + "\n"


def probe_table(ns) -> str:
    """The validation probe against the test set: per dataset and seed, the candidate the
    ``auto`` run chose (its ``scaling.probe`` record) and the test mAP of every candidate
    trained as a fixed configuration (rows named ``<scaling>_<model>``, e.g. ``std_mlp``),
    with the floor (``logreg`` rows of ``--floor`` files, same labeled rows)."""
    runs = _load(ns.files)
    floor = {(r["dataset"], r["lb_ratio"], r["seed"]): r["test"]["mAP"] for r in _load(ns.floor or [])
             if r["row"] == "logreg"}
    short = {"standardize": "std", "tfidf_l2": "tfidf"}
    cell = _by(runs, "dataset", "lb_ratio", "seed")
    out = ["| dataset | seed | chosen (validation) | test mAP of each candidate | chosen = test-best | "
           "auto − floor |", "|---|---|---|---|---|---|"]
    hits = total = 0
    margins = defaultdict(list)
    for (dataset, lb, seed), rs in sorted(cell.items()):
        auto = [r for r in rs if r["row"] == "supervised" and r["scaling"].get("probe")]
        if not auto:
            continue
        probe = auto[0]["scaling"]["probe"]
        chosen = f"{short.get(probe['scaling'], probe['scaling'])}_{probe['model']}"  # e.g. a given scaling
        fixed = {r["row"]: r["test"]["mAP"] for r in rs if r["row"] != "supervised"}
        best = max(fixed, key=fixed.get) if fixed else None
        hit = best is not None and fixed.get(chosen) is not None and fixed[chosen] >= fixed[best] - 0.05
        hits, total = hits + hit, total + 1
        f = floor.get((dataset, lb, seed))
        margin = auto[0]["test"]["mAP"] - f if f is not None else None
        if margin is not None:
            margins[dataset].append(margin)
        cands = ", ".join(f"{k} {v:.2f}" for k, v in sorted(fixed.items()))
        out.append(f"| {dataset} | {seed} | {chosen} | {cands} | {'yes' if hit else 'no'} | "
                   f"{'—' if margin is None else f'{margin:+.2f}'} |")
    out.append(f"\nThe probe picked a test-best candidate (within 0.05 mAP) in {hits} of {total} cells.")
    if margins:
        out.append("Mean (auto − floor) per dataset: " + "; ".join(f"{d} {statistics.mean(v):+.2f}"
                                                               for d, v in margins.items()) + ".")
    return "\n".join(out) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run a grid")
    r.add_argument("--datasets", required=True)
    r.add_argument("--lb", default="0.1")
    r.add_argument("--seeds", default="0,1,2")
    r.add_argument("--methods", default="logreg,supervised,cap,bam,bbam,bbam_cls")
    r.add_argument("--variant", action="append", help="NAME=override,override (an extra row)")
    r.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2)))
    r.add_argument("--out", required=True)
    r.add_argument("overrides", nargs="*", help="app overrides applied to every run (after --)")
    t = sub.add_parser("table", help="tabulate result files")
    t.add_argument("files", nargs="+")
    t.add_argument("--pair", action="append", help="extra paired comparison A:B")
    t.add_argument("--out")
    m = sub.add_parser("summary", help="compact tables across datasets")
    m.add_argument("files", nargs="+")
    m.add_argument("--metric", default="mAP", choices=[k for k, _, _ in METRICS] + ["val_mAP"],
                   help="a test metric, or val_mAP (the selected epoch's validation mAP)")
    m.add_argument("--pair", action="append", help="paired comparison A:B (default: the standard pairs)")
    q = sub.add_parser("probe", help="the validation probe (auto rows) against the test set")
    q.add_argument("files", nargs="+")
    q.add_argument("--floor", action="append", help="result files holding logreg rows (the floor)")
    ns = parser.parse_args(argv)
    if ns.cmd == "run":
        run(ns)
    elif ns.cmd == "summary":
        print(summary(ns))
    elif ns.cmd == "probe":
        print(probe_table(ns))
    else:
        print(table(ns))


if __name__ == "__main__":
    main()
