"""Collect finished runs into one comparison table (mean ± std over seeds).

    python -m bbam.app.collect multirun/ outputs/ [--metrics mAP,micro_f1,...] [--out table.md]

Every folder below the given paths that holds a ``final_metrics.json`` is one run;
runs are grouped by (dataset, lb_ratio, method) and each metric is reported as
mean ± standard deviation over the group's seeds (n = number of seeds).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, Iterable, List, Sequence

__all__ = ["find_runs", "comparison_table", "main", "DEFAULT_METRICS"]

# The paper's five metrics plus VDFD; F1 / mAP shown in percent.
DEFAULT_METRICS = ["micro_f1", "macro_f1", "mAP", "hamming_loss", "one_error", "vdfd"]
_PERCENT = {"micro_f1", "macro_f1", "lrap"}
_TITLES = {"micro_f1": "Micro-F1", "macro_f1": "Macro-F1", "mAP": "mAP", "hamming_loss": "Hamming",
           "one_error": "One-error", "vdfd": "VDFD", "coverage": "Coverage", "ranking_loss": "Rank loss",
           "lrap": "LRAP", "vca": "VCA", "vdfd_balanced": "VDFD bal.",
           "vdfd_prototype": "VDFD proto", "vdfd_prototype_balanced": "VDFD proto bal."}


def find_runs(paths: Iterable[Path]) -> List[Dict]:
    runs = []
    for root in paths:
        root = Path(root)
        if not root.exists():
            raise FileNotFoundError(f"collect: path {root} does not exist")
        files = [root] if root.name == "final_metrics.json" else sorted(root.rglob("final_metrics.json"))
        for f in files:
            runs.append(json.loads(f.read_text()) | {"path": str(f.parent)})
    return runs


def _cell(values: Sequence[float], metric: str) -> str:
    vals = [v * 100 if metric in _PERCENT else v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return "—"
    digits = 2 if metric in _PERCENT or metric == "mAP" else 4
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{statistics.mean(vals):.{digits}f} ± {statistics.stdev(vals):.{digits}f}"


def comparison_table(runs: List[Dict], metrics: Sequence[str] = DEFAULT_METRICS) -> str:
    """Markdown table: one row per (dataset, lb_ratio, method), mean ± std over seeds."""
    groups: Dict[tuple, List[Dict]] = defaultdict(list)
    for r in runs:
        groups[(r["dataset"], float(r["lb_ratio"]), r["method"])].append(r)
    head = ["dataset", "lb_ratio", "method", "n"] + [_TITLES.get(m, m) for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (dataset, ratio, method), rs in sorted(groups.items()):
        cells = [_cell([r["test"].get(m) for r in rs], m) for m in metrics]
        lines.append("| " + " | ".join([dataset, f"{ratio:g}", method, str(len(rs))] + cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, help="run folders or sweep folders")
    parser.add_argument("--metrics", default=",".join(DEFAULT_METRICS), help="comma-separated metric keys")
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this file")
    args = parser.parse_args(argv)
    missing = [str(path) for path in args.paths if not Path(path).exists()]
    if missing:  # one line, as the other commands (a sweep writes multirun/ only when it runs)
        parser.error(f"no such folder: {', '.join(missing)}")
    runs = find_runs(args.paths)
    if not runs:
        print(f"collect: no final_metrics.json under {', '.join(map(str, args.paths))}", file=sys.stderr)
        return 1
    table = comparison_table(runs, [m.strip() for m in args.metrics.split(",") if m.strip()])
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
