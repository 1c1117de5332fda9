"""Run reports: ``report.md`` with the metrics, what balancing does and a per-label table,
PNG plots (learning curves, VDFD per label for both angle families, angle histograms)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .atomic import atomic_write_text

__all__ = ["write_report", "metrics_table", "scaling_line", "PAPER_METRICS", "UNITS"]

# The paper's five metrics, then the rest (name in results -> column title, higher is better?)
PAPER_METRICS = [("micro_f1", "Micro-F1", True), ("macro_f1", "Macro-F1", True), ("mAP", "mAP", True),
                 ("hamming_loss", "Hamming loss", False), ("one_error", "One-error", False)]
OTHER_METRICS = [("coverage", "Coverage", False), ("ranking_loss", "Ranking loss", False), ("lrap", "LRAP", True),
                 ("vca", "VCA", False), ("vdfd", "VDFD (classifier angles)", False),
                 ("vdfd_balanced", "VDFD after balancing (classifier angles)", False)]
# key -> (factor to the shown value, unit). mAP is stored x100 already; F1 and LRAP as
# fractions (bbam.metrics.evaluate): all four are shown in percent, as in collect.py.
UNITS: Dict[str, Tuple[float, str]] = {
    "micro_f1": (100, "%"), "macro_f1": (100, "%"), "mAP": (1, "%"), "lrap": (100, "%"),
    "hamming_loss": (1, "fraction of label slots (0–1)"), "one_error": (1, "fraction of samples (0–1)"),
    "coverage": (1, "labels"), "ranking_loss": (1, "fraction of label pairs (0–1)"),
    "vca": (1, "variance of per-label accuracies in 0–1"), "vdfd": (1, "rad²"), "vdfd_balanced": (1, "rad²")}
FAMILY_TITLES = {"prototype": "to label prototypes", "classifier": "to classifier weights"}


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def _pct(v: Any) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def _shown(key: str, v: Any) -> Tuple[str, str]:
    """(value as shown, unit) of a test metric."""
    factor, unit = UNITS.get(key, (1, ""))
    if unit == "%":
        return _pct(None if v is None else v * factor), unit
    return _fmt(v), unit


def _undefined(v: Any) -> bool:
    return v is None or (isinstance(v, float) and not math.isfinite(v))


def _metric_keys(test: Dict[str, Any]) -> List[Tuple[str, str, bool]]:
    """The rows of the test metrics table: the VDFD rows only where the run measured them
    (VDFD: the angular methods; after balancing: the methods that balance)."""
    return [m for m in PAPER_METRICS + OTHER_METRICS if not m[0].startswith("vdfd") or m[0] in test]


def metrics_table(result: Dict[str, Any]) -> str:
    """A plain-text table of a run's test metrics, with units."""
    rows = [(title, *_shown(key, result["test"].get(key))) for key, title, _ in _metric_keys(result["test"])]
    width, vwidth = max(len(t) for t, _, _ in rows), max(len(v) for _, v, _ in rows)
    head = (f"{result['method']} on {result['dataset']} (lb_ratio {result['lb_ratio']}, seed {result['seed']}), "
            "test set:")
    return "\n".join([head] + [f"  {t:<{width}}  {v:>{vwidth}}  {u}" for t, v, u in rows])


def _nan(values: List[Optional[float]]) -> List[float]:
    return [math.nan if v is None else v for v in values]


def _learning_curves(plt, path: Path, history: List[Dict[str, Any]]) -> None:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    epochs = [r["epoch"] for r in history]
    ax1.plot(epochs, [r["train_loss"] for r in history], marker=".", label="training loss")
    ax1.set(xlabel="epoch", ylabel="training loss (mean per step, log scale)", yscale="log", title="training loss")
    ax2.plot(epochs, [r["val_mAP"] for r in history], marker=".", label="val mAP")
    ax2.plot(epochs, [100 * r["val_micro_f1"] for r in history], marker=".", label="val micro-F1")
    ax2.set(xlabel="epoch", ylabel="validation score (%)", title="validation")
    # the warm-up / self-training boundary: pseudo-labels and balancing start there
    start = next((r["epoch"] for r in history if r.get("phase") == "self_training"), None)
    for ax in (ax1, ax2):
        if start is not None:
            ax.axvspan(min(epochs) - 0.5, start - 0.5, color="0.9", zorder=0, label="warm-up (labeled only)")
            ax.axvline(start - 0.5, color="0.4", linestyle="--", label="self-training starts")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _vdfd_plot(plt, path: Path, diag: Dict[str, Any], balances: bool = True) -> None:
    names, K = diag["label_names"], len(diag["label_names"])
    fig, axes = plt.subplots(2, 1, figsize=(min(max(8, 0.3 * K), 40), 7), sharex=True)
    xs = list(range(K))
    for ax, family in zip(axes, ("prototype", "classifier")):
        fam = diag[family]
        if balances:
            ax.bar([x - 0.2 for x in xs], _nan(fam["vdfd"]), width=0.4, label="before balancing")
            ax.bar([x + 0.2 for x in xs], _nan(fam.get("vdfd_after", fam["vdfd"])), width=0.4,
                   label="after balancing")
            ax.legend(fontsize=8)
        else:  # no transform: VDFD as measured
            ax.bar(xs, _nan(fam["vdfd"]), width=0.6)
        fitted = " — statistics taken here" if balances and diag.get("stats_angles") == family else ""
        ax.set(ylabel="VDFD (rad²)", title=f"angles {FAMILY_TITLES[family]}{fitted}")
    axes[-1].set_xticks(xs, names, rotation=90, fontsize=7 if K > 30 else 9)
    axes[-1].set_xlabel("label")
    fig.suptitle(f"VDFD = |var(angles of positives) − var(angles of negatives)| per label, {diag['split']} set")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _histograms(plt, path: Path, diag: Dict[str, Any], balances: bool = True) -> None:
    names, c = diag["label_names"], diag["classifier"]
    # the labels with the largest VDFD (before balancing): where the transform has most to do
    order = sorted(range(len(names)), key=lambda k: -(c["vdfd"][k] if c["vdfd"][k] is not None else -1))
    shown = sorted(order[:6])
    rows = ((0, "", " (before balancing)"), (1, "_after", " (after balancing)")) if balances else ((0, "", ""),)
    fig, axes = plt.subplots(len(rows), len(shown), figsize=(3 * len(shown), 2.75 * len(rows) + 0.5),
                             squeeze=False, sharex=True)
    bins = len(c["hist_pos"][0])
    centers = [(i + 0.5) * 180 / bins for i in range(bins)]
    for j, k in enumerate(shown):
        for row, suffix, when in rows:
            ax = axes[row][j]
            for key, label in ((f"hist_neg{suffix}", "negatives"), (f"hist_pos{suffix}", "positives")):
                counts = c[key][k]
                total = max(sum(counts), 1)
                ax.plot(centers, [v / total for v in counts], label=label)
            ax.set_title(f"{names[k]}{when}", fontsize=10)
            ax.tick_params(labelsize=9)
    for row in axes:
        row[0].set_ylabel("share of samples per bin", fontsize=9)
    axes[0][0].legend(fontsize=9)
    fig.supxlabel("angle to the classifier weight (degrees)", fontsize=10)
    fig.suptitle(f"angle distributions of the {len(shown)} labels with the largest VDFD ({diag['split']} set)",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plots(out_dir: Path, history: List[Dict[str, Any]], diag: Dict[str, Any], balances: bool = True) -> List[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    if history:
        _learning_curves(plt, out_dir / "learning_curves.png", history)
        files.append("learning_curves.png")
    if "classifier" in diag:  # the method reported angle families (the angular methods)
        _vdfd_plot(plt, out_dir / "vdfd_per_label.png", diag, balances)
        _histograms(plt, out_dir / "angle_histograms.png", diag, balances)
        files += ["vdfd_per_label.png", "angle_histograms.png"]
    return files


_VDFD_DEFINITION = ("VDFD is, per label, |variance of the angles of its positive samples − variance of the angles "
                    "of its negative samples| (rad², lower = the two angle distributions are equally spread).")
_VCA_DEFINITION = ("VCA is the variance over labels of the per-label accuracy (accuracies as fractions 0–1; "
                   "lower = labels are served more evenly).")


def _shown_number(v: Any) -> Optional[float]:
    """``v`` as the report prints it (``_fmt``), read back: the comparison a reader can check
    on the table (None when undefined)."""
    if _undefined(v):
        return None
    return float(_fmt(float(v)))


def _change_clauses(diag: Dict[str, Any]) -> Tuple[List[str], List[str]]:
    """What the mean-VDFD table shows, family by family: ``(clauses, undefined)`` where each
    clause says how balancing moved the family's test-set mean VDFD, with the numbers, and
    ``undefined`` lists the families without a value. The direction is read from the numbers
    as printed, so the words never disagree with the table."""
    verbs: List[Tuple[str, str, str]] = []  # (verb, family title, "before → after")
    undefined = []
    for family in ("prototype", "classifier"):
        before, after = diag.get(f"mean_vdfd_{family}"), diag.get(f"mean_vdfd_{family}_after")
        b, a = _shown_number(before), _shown_number(after)
        if b is None or a is None:
            undefined.append(FAMILY_TITLES[family])
            continue
        verb = "lowered" if a < b else "raised" if a > b else "left unchanged"
        verbs.append((verb, FAMILY_TITLES[family], f"{_fmt(float(before))} → {_fmt(float(after))}"))
    clauses = []
    for i, (verb, title, numbers) in enumerate(verbs):
        obj = "mean VDFD" if i == 0 else "it"
        if verb == "left unchanged":
            clauses.append(f"left {obj} unchanged for the angles {title} ({numbers})")
        elif i > 0 and verb == verbs[0][0]:
            clauses.append(f"also {verb} {obj} for the angles {title} ({numbers})")
        else:
            clauses.append(f"{verb} {obj} for the angles {title} ({numbers})")
    return clauses, undefined


def _test_set_sentence(diag: Dict[str, Any]) -> str:
    """E.g. "On the test set (table below) balancing lowered mean VDFD for the angles to label
    prototypes (0.031 → 0.012) and raised it for the angles to classifier weights (0.0251 → 0.035)."."""
    split = diag.get("split", "test")
    clauses, undefined = _change_clauses(diag)
    text = ""
    if clauses:
        text = f"On the {split} set (table below) balancing " + " and ".join(clauses) + "."
    if undefined:
        which = " and ".join(f"the angles {t}" for t in undefined)
        text += (" " if text else "") + (f"Mean VDFD on the {split} set is undefined for {which} (no label has "
                                         "enough positive and negative samples there).")
    return text


def _balancing_section(diag: Dict[str, Any], result: Dict[str, Any], balances: Optional[bool] = None) -> List[str]:
    """"What balancing does": what the transform equalises and what the test-set table of
    mean VDFD per angle family (before / after the transform) shows. For a method that does
    not balance (``diag["stats_angles"] == "none"``): VDFD alone, and a line saying so."""
    fitted = str(diag.get("stats_angles", "prototype"))
    if balances is None:
        balances = fitted != "none"
    K = len(diag["label_names"])
    split = diag.get("split", "test")
    source = (f"angles of the {diag.get('features_from', 'ema')} model's features, prototypes from the "
              f"{diag.get('prototype_source', '?')}")
    if not balances:
        lines = ["", "## Angle balance (VDFD) and VCA", "", f"{_VDFD_DEFINITION} {_VCA_DEFINITION}", "",
                 f"This method ({result.get('method', '?')}) does not balance: it has no balancing transform, "
                 "so VDFD is shown as measured.",
                 "", f"Mean VDFD over labels on the {split} set (rad²; {source}):", "",
                 "| angles | VDFD (rad²) |", "|---|---|"]
        for family in ("prototype", "classifier"):
            lines.append(f"| {FAMILY_TITLES[family]} | {_fmt(diag.get(f'mean_vdfd_{family}'))} |")
        lines += ["", f"VCA on the test set: {_fmt(result['test'].get('vca'))} (variance of accuracies in 0–1)."]
        return lines
    measured = FAMILY_TITLES.get(fitted, fitted)
    lines = ["", "## What balancing does", "", f"{_VDFD_DEFINITION} {_VCA_DEFINITION}", "",
             "BBAM's transform θ' = a·θ + b rescales, per label, the angles of each polarity to the classifier "
             "weights (the angles the loss uses). Its coefficients are chosen to equalise the two polarities' "
             "variances of the angles its statistics were measured on: the training samples' angles "
             f"{measured} (labeled and pseudo-labeled; `method.stats_angles={fitted}`), averaged by EMA over "
             "epochs. The test samples, and the other family of angles, are not what the coefficients were "
             f"fitted on, so their VDFD after balancing can be lower or higher. {diag.get('balanced_labels', '?')} "
             f"of {K} labels have non-identity coefficients (a warm-up checkpoint has none)."]
    sentence = _test_set_sentence(diag)
    if sentence:
        lines += ["", sentence]
    lines += ["", f"Mean VDFD over labels on the {split} set (rad²; {source}):", "",
              "| angles | before balancing | after balancing |", "|---|---|---|"]
    for family in ("prototype", "classifier"):
        mark = " (statistics taken here)" if family == fitted else ""
        lines.append(f"| {FAMILY_TITLES[family]}{mark} | {_fmt(diag.get(f'mean_vdfd_{family}'))} | "
                     f"{_fmt(diag.get(f'mean_vdfd_{family}_after'))} |")
    lines += ["", f"VCA on the test set: {_fmt(result['test'].get('vca'))} (variance of accuracies in 0–1)."]
    return lines


def _per_label_section(diag: Dict[str, Any], balances: bool = True) -> List[str]:
    p, coef = diag["per_label"], diag.get("coefficients")
    if "classifier" not in diag:  # a method without angles: the per-label metrics alone
        lines = ["", f"## Per label ({diag.get('split', 'test')} set)", "", "AP, F1 and accuracy in %.", "",
                 "| label | positives | AP (%) | F1 (%) | accuracy (%) |", "|---|---|---|---|---|"]
        return lines + ["| " + " | ".join([str(name), str(p["positives"][k]), _pct(p["ap"][k]), _pct(p["f1"][k]),
                                           _pct(p["accuracy"][k])]) + " |" for k, name in enumerate(diag["label_names"])]
    fams = {f: diag.get(f, {}) for f in ("prototype", "classifier")}
    if balances:
        about = ("VDFD in rad² before → after balancing, for the angles to the prototypes and to the classifier "
                 "weights; a neg / a pos: the transform's slope for the label's negatives / positives "
                 "(θ' = a·θ + b; > 1 spreads that polarity's angles, < 1 narrows them, 1 = untouched).")
        columns, extra = " a neg | a pos |", "---|---|"
    else:
        about = ("VDFD in rad² for the angles to the prototypes and to the classifier weights (the method does "
                 "not balance).")
        columns, extra = "", ""
    lines = ["", f"## Per label ({diag.get('split', 'test')} set)", "",
             f"AP, F1 and accuracy in %; {about} Variances are in `diagnostics.json`.", "",
             "| label | positives | AP (%) | F1 (%) | accuracy (%) | VDFD prototype (rad²) | "
             f"VDFD classifier (rad²) |{columns}", f"|---|---|---|---|---|---|---|{extra}"]
    for k, name in enumerate(diag["label_names"]):
        if balances:
            vd = [f"{_fmt(f['vdfd'][k])} → {_fmt(f.get('vdfd_after', f['vdfd'])[k])}" if f else "—"
                  for f in fams.values()]
            slopes = [_fmt(coef["a"][0][k]), _fmt(coef["a"][1][k])]
        else:
            vd, slopes = [_fmt(f["vdfd"][k]) if f else "—" for f in fams.values()], []
        lines.append("| " + " | ".join([str(name), str(p["positives"][k]), _pct(p["ap"][k]), _pct(p["f1"][k]),
                                        _pct(p["accuracy"][k]), *vd, *slopes]) + " |")
    return lines


def _selection(result: Dict[str, Any], select_from: str = "self_training") -> str:
    """Which epochs competed for the selected model (a self-training method's model comes
    from its own phase unless ``train.select_from: any``: the warm-up epochs, plotted too,
    did not compete)."""
    phase = result.get("selected_phase")
    start = result.get("self_training_started_from_epoch")
    text = f"selected epoch {result['best_epoch']}: validation mAP {result['best_val_mAP']:.2f} %"
    if phase == "self_training" and select_from != "any":
        text += (" (best within the self-training phase, whose model the method is; the warm-up epochs "
                 "did not compete" + (f", self-training started from warm-up epoch {start}" if start is not None
                                      else "") + ")")
    elif phase in ("self_training", "warmup"):
        text += " (best over every epoch, warm-up included: train.select_from=any)"
    return text


def _select_from(out_dir: Path) -> str:
    try:
        from omegaconf import OmegaConf

        return str(OmegaConf.select(OmegaConf.load(out_dir / "config.yaml"), "train.select_from",
                                    default="self_training"))
    except Exception:  # a folder without config.yaml (e.g. written by hand): the default rule
        return "self_training"


def scaling_line(choice: Dict[str, Any], traits: Dict[str, bool]) -> str:
    """How the inputs were scaled and, for an angular method (``traits["angular"]``: a
    cosine head), the margin / scale, and why (the plan's record:
    :func:`bbam.app.preprocess.resolve_scaling`)."""
    from .preprocess import describe_choice

    return describe_choice(choice, with_margin=bool(traits["angular"]))


def early_stop_line(stop: Dict[str, Any]) -> str:
    """The line a run that ``train.patience`` ended prints, logs and reports."""
    return (f"stopped early after {stop['after_epochs']} of {stop['max_epochs']} epochs: no better validation mAP "
            f"for {stop['patience']} epochs (train.patience)")


def _early_stop_lines(result: Dict[str, Any]) -> List[str]:
    stop = result.get("stopped_early")
    return ["", f"The run {early_stop_line(stop)}."] if stop else []


def write_report(out_dir: Path) -> Path:
    """Write ``report.md`` (and the plots) from a run folder's files."""
    out_dir = Path(out_dir)
    result = json.loads((out_dir / "final_metrics.json").read_text())
    diag_path = out_dir / "diagnostics.json"
    diag = json.loads(diag_path.read_text()) if diag_path.exists() else {}
    history = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    traits = result["method_traits"]  # the method's own (Method.traits)
    balances = traits["balances"]
    plots = _plots(out_dir, history, diag, balances)
    lines = [f"# {result['method']} on {result['dataset']}", "",
             f"lb_ratio {result['lb_ratio']}, seed {result['seed']}; splits {result['sizes']}; "
             f"{result['epochs_run']} epochs run; {_selection(result, _select_from(out_dir))}.",
             *_early_stop_lines(result),
             "", f"Inputs: {scaling_line(result['scaling'], traits)}.", "", "## Test metrics (selected checkpoint, evaluated once)",
             "", "| metric | value | unit |", "|---|---|---|"]
    lines += ["| {} | {} | {} |".format(title, *_shown(key, result["test"].get(key)))
              for key, title, _ in _metric_keys(result["test"])]
    if "classifier" in diag:  # the method reported angle families
        lines += _balancing_section(diag, result, balances)
    if diag:
        lines += _per_label_section(diag, balances)
    if plots:
        lines += ["", "## Plots", ""] + [f"![{name}]({name})" for name in plots]
    path = out_dir / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
