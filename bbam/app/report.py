"""Run reports: ``report.md`` with the metrics and a per-label table, PNG plots
(learning curves, per-label angle histograms before/after balancing, VDFD per label)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List

from .atomic import atomic_write_text

__all__ = ["write_report", "metrics_table", "PAPER_METRICS"]

# The paper's five metrics, then the rest (name in results -> column title, higher is better?)
PAPER_METRICS = [("micro_f1", "Micro-F1", True), ("macro_f1", "Macro-F1", True), ("mAP", "mAP", True),
                 ("hamming_loss", "Hamming loss", False), ("one_error", "One-error", False)]
OTHER_METRICS = [("coverage", "Coverage", False), ("ranking_loss", "Ranking loss", False), ("lrap", "LRAP", True),
                 ("vca", "VCA", False), ("vdfd", "VDFD", False), ("vdfd_balanced", "VDFD (balanced)", False)]


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def metrics_table(result: Dict[str, Any]) -> str:
    """A plain-text table of a run's test metrics."""
    rows = [(title, result["test"].get(key)) for key, title, _ in PAPER_METRICS + OTHER_METRICS]
    width = max(len(t) for t, _ in rows)
    head = f"{result['method']} on {result['dataset']} (lb_ratio {result['lb_ratio']}, seed {result['seed']}), test set:"
    return "\n".join([head] + [f"  {t:<{width}}  {_fmt(v)}" for t, v in rows])


def _plots(out_dir: Path, history: List[Dict[str, Any]], diag: Dict[str, Any]) -> List[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    if history:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
        epochs = [r["epoch"] for r in history]
        ax1.plot(epochs, [r["train_loss"] for r in history])
        ax1.set(xlabel="epoch", ylabel="train loss", yscale="log", title="training loss")
        ax2.plot(epochs, [r["val_mAP"] for r in history], label="val mAP")
        ax2.plot(epochs, [100 * r["val_micro_f1"] for r in history], label="val micro-F1 ×100")
        ax2.set(xlabel="epoch", title="validation")
        ax2.legend()
        fig.tight_layout()
        fig.savefig(out_dir / "learning_curves.png", dpi=100)
        plt.close(fig)
        files.append("learning_curves.png")
    if diag:
        names = diag["label_names"]
        c = diag["classifier"]
        K = len(names)
        fig, ax = plt.subplots(figsize=(max(6, 0.35 * K), 3.5))
        xs = range(K)
        ax.bar([x - 0.2 for x in xs], c["vdfd"], width=0.4, label="before balancing")
        ax.bar([x + 0.2 for x in xs], c["vdfd_after"], width=0.4, label="after balancing")
        ax.set_xticks(list(xs), names, rotation=90, fontsize=7)
        ax.set(ylabel="|var pos − var neg|", title="VDFD per label (test angles to classifier weights)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / "vdfd_per_label.png", dpi=100)
        plt.close(fig)
        files.append("vdfd_per_label.png")
        shown = list(range(min(K, 8)))
        fig, axes = plt.subplots(2, len(shown), figsize=(2.2 * len(shown), 4.5), squeeze=False)
        bins = len(c["hist_pos"][0])
        centers = [(i + 0.5) * 180 / bins for i in range(bins)]
        for j, k in enumerate(shown):
            for row, suffix, title in ((0, "", "before"), (1, "_after", "after")):
                ax = axes[row][j]
                for key, label in ((f"hist_neg{suffix}", "neg"), (f"hist_pos{suffix}", "pos")):
                    counts = c[key][k]
                    total = max(sum(counts), 1)
                    ax.plot(centers, [v / total for v in counts], label=label)
                ax.set_title(f"{names[k]} ({title})", fontsize=7)
                ax.tick_params(labelsize=6)
        axes[0][0].legend(fontsize=6)
        fig.supxlabel("angle to classifier weight (degrees)", fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / "angle_histograms.png", dpi=100)
        plt.close(fig)
        files.append("angle_histograms.png")
    return files


def write_report(out_dir: Path) -> Path:
    """Write ``report.md`` (and the plots) from a run folder's files."""
    out_dir = Path(out_dir)
    result = json.loads((out_dir / "final_metrics.json").read_text())
    diag_path = out_dir / "diagnostics.json"
    diag = json.loads(diag_path.read_text()) if diag_path.exists() else {}
    history = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    plots = _plots(out_dir, history, diag)
    lines = [f"# {result['method']} on {result['dataset']}", "",
             f"lb_ratio {result['lb_ratio']}, seed {result['seed']}; splits {result['sizes']}; "
             f"best validation mAP {result['best_val_mAP']:.2f} at epoch {result['best_epoch']} "
             f"({result['epochs_run']} epochs run).", "", "## Test metrics (selected checkpoint, evaluated once)", "",
             "| metric | value |", "|---|---|"]
    lines += [f"| {title} | {_fmt(result['test'].get(key))} |" for key, title, _ in PAPER_METRICS + OTHER_METRICS]
    if diag:
        c, p = diag["classifier"], diag["per_label"]
        lines += ["", "## Per label (test set)", "",
                  "| label | positives | AP | F1 | accuracy | var neg | var pos | VDFD | VDFD balanced | a neg | a pos |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for k, name in enumerate(diag["label_names"]):
            lines.append("| " + " | ".join([
                str(name), str(p["positives"][k]), _fmt(p["ap"][k]), _fmt(p["f1"][k]), _fmt(p["accuracy"][k]),
                _fmt(c["var"][0][k]), _fmt(c["var"][1][k]), _fmt(c["vdfd"][k]), _fmt(c["vdfd_after"][k]),
                _fmt(diag["coefficients"]["a"][0][k]), _fmt(diag["coefficients"]["a"][1][k])]) + " |")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{name}]({name})" for name in plots]
    path = out_dir / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
