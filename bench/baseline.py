"""The plain floor every results table shows: one-vs-rest logistic regression.

scikit-learn's ``LogisticRegression(solver="liblinear", C=1)`` per label, trained on
exactly the labeled rows the app's run sees (same dataset, split, seed and feature
scaling, through the run's plan (:func:`bbam.app.plan.prepare`): a file dataset's ``train.scaling=auto``
makes the run's choice, e.g. ``tfidf_l2`` for 0/1 word indicators), scored on the run's test split with
the app's own metrics (:func:`bbam.metrics.evaluate`). A label with a single class among
the labeled rows gets the constant score of that class.

Usage::

    python bench/baseline.py data=medical split.lb_ratio=0.1 seed=0   # any app overrides
    python bench/baseline.py outputs/medical/bbam/lb0.1_seed0_...     # the split of a finished run
    python bench/baseline.py data=medical --json                      # one JSON line

Prints the test metrics (percent for mAP / F1, fractions for Hamming loss and one-error).
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, Sequence

import numpy as np
import torch

__all__ = ["logistic_regression_scores", "baseline_metrics", "main"]


def logistic_regression_scores(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                               C: float = 1.0) -> np.ndarray:
    """One-vs-rest logistic regression: ``[M, K]`` positive-class probabilities.

    Args:
        x_train: ``[N, D]`` float features of the labeled rows.
        y_train: ``[N, K]`` 0/1 labels.
        x_test: ``[M, D]`` features to score.
        C: inverse regularisation strength (liblinear).
    """
    from sklearn.linear_model import LogisticRegression

    K = y_train.shape[1]
    scores = np.empty((x_test.shape[0], K), dtype=np.float64)
    for k in range(K):
        yk = y_train[:, k]
        if yk.min() == yk.max():  # one class only: nothing to fit
            scores[:, k] = float(yk[0])
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf = LogisticRegression(solver="liblinear", C=C).fit(x_train, yk)
        scores[:, k] = clf.predict_proba(x_test)[:, 1]
    return scores


def baseline_metrics(cfg, C: float = 1.0) -> Dict[str, Any]:
    """Test metrics of the logistic-regression floor on the split of the app config ``cfg``."""
    from bbam import metrics as M
    from bbam.app.plan import prepare

    plan = prepare(cfg)
    data, splits = plan.data, plan.tensors
    lb, test = splits["labeled"], splits["test"]
    if plan.inputs.reads_pixels:
        raise ValueError("the logistic-regression floor needs feature vectors; this configuration's model reads "
                         "pixels (for photos, the floor is taken on a frozen backbone's features: model.finetune=false)")
    scores = logistic_regression_scores(lb.x.double().numpy(), lb.y.numpy(), test.x.double().numpy(), C=C)
    result = M.evaluate(torch.from_numpy(scores).float(), test.y, threshold=float(cfg.train.threshold))
    return {"dataset": data.name, "method": "logreg", "lb_ratio": float(cfg.split.lb_ratio), "seed": int(cfg.seed),
            "sizes": {k: len(v) for k, v in splits.items()}, "test": result}


def _config(args: Sequence[str]):
    from omegaconf import OmegaConf

    from bbam.train import compose_config

    if args and Path(args[0]).is_dir():
        path = Path(args[0]) / "config.yaml"
        if not path.is_file():
            raise SystemExit(f"baseline: {args[0]} is not a run folder (no config.yaml)")
        cfg = OmegaConf.load(path)
        return OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(args[1:])))
    return compose_config(args)


def main(argv: Sequence[str] | None = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("args", nargs="*", help="a run folder, or app overrides such as data=medical seed=1")
    parser.add_argument("--C", type=float, default=1.0, help="inverse regularisation strength (default 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    ns = parser.parse_args(argv)
    result = baseline_metrics(_config(ns.args), C=ns.C)
    if ns.json:
        print(json.dumps(result))
    else:
        t = result["test"]
        print(f"{result['dataset']} lb {result['lb_ratio']} seed {result['seed']} "
              f"(labeled rows {result['sizes']['labeled']}): logistic regression C={ns.C}")
        for key in ("mAP", "micro_f1", "macro_f1", "hamming_loss", "one_error"):
            print(f"  {key:13s} {t[key]:.4f}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
