"""Our ARFF and LIBSVM readers against the libraries' (correctness and speed).

Usage::

    python bench/parsers.py                      # every ARFF file of the shared data + written files
    python bench/parsers.py --repeats 7 --json /tmp/parsers.json

ARFF: :func:`bbam.data.load_arff` against scikit-learn's vendored liac-arff
(``sklearn.externals._arff``) followed by what liac-arff does not do: the nominal values as
numbers (the rules of :func:`bbam.data.load_arff`), the label attributes (MULAN ``.xml``
header, MEKA ``-C``) and the :class:`bbam.data.MultiLabelData` checks. liac-arff decodes
sparse files as COO (its fastest form for them) and dense files as lists; its decoding
alone is reported too. Files: every ``*.arff`` under the data folder (the real MULAN
files), plus ARFF files written here from the ``.npz`` of the larger sets (sparse rows
where most values are 0).

LIBSVM: :func:`bbam.data.load_libsvm` against ``sklearn.datasets.load_svmlight_file(...,
multilabel=True, zero_based=False)`` followed by the label matrix and our checks
(integer, non-negative labels; finite features). The shared data hold no LIBSVM file:
files are written here (``l1,l2 idx:value ...``, 1-based, float32 values to 9 significant
digits) from the ``.npz`` of real sets. ``load_libsvm`` now reads through that same call
(this shows its overhead); the pure-Python reader it replaced (commit 61d007b) took
250 / 95 / 233 / 266 ms on scene / yeast / bibtex / reuters21578 where the library took
144 / 60 / 112 / 126 ms, the same X and Y.

Every reader runs ``--repeats`` times per file in this process, alternating readers;
the median is reported. "equal": X, Y, label and feature names identical between the
readers and X, Y equal to the ``.npz`` rows.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bbam.data import MultiLabelData, load_arff, load_libsvm
from bbam.data.arff import _Attr, _label_columns

DATA = Path(os.environ.get("BBAM_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")


def liac_load_arff(path: Path) -> MultiLabelData:
    """liac-arff's decoding, then our nominal mapping, label choice and checks."""
    from sklearn.externals import _arff as arff

    text = path.read_text(encoding="utf-8")
    try:
        obj = arff.loads(text, return_type=arff.COO)
        sparse = True
    except arff.BadLayout:  # a dense row: COO takes sparse rows only
        obj = arff.loads(text, return_type=arff.DENSE)
        sparse = False
    attrs = [_Attr(name, "nominal", list(kind)) if isinstance(kind, list) else _Attr(name, "numeric")
             for name, kind in obj["attributes"]]
    lookups = [a.lookup for a in attrs]
    # nominal values that are all numbers (MULAN's {0,1}): one C-level float() per value
    numeric = all(a.kind == "numeric" or a.numeric_values for a in attrs)
    if sparse:
        values, rows, cols = obj["data"]
        n = max(rows) + 1 if rows else 0
        M = np.tile(np.array([a.default for a in attrs]), (n, 1))
        vals = (np.array(values, dtype=object).astype(np.float64) if numeric
                else [v if lookups[c] is None else lookups[c][v] for v, c in zip(values, cols)])
        M[np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)] = vals
    elif numeric:
        M = np.array(obj["data"], dtype=object).astype(np.float64)
    else:
        M = np.array([[v if lk is None else lk[v] for v, lk in zip(row, lookups)] for row in obj["data"]],
                     dtype=np.float64)
    cols = _label_columns(path, obj["relation"], attrs, None, None)
    feat = [j for j in range(len(attrs)) if j not in set(cols)]
    return MultiLabelData(M[:, feat].astype(np.float32), M[:, cols].astype(np.int8),
                          [attrs[j].name for j in cols], [attrs[j].name for j in feat],
                          name=path.stem, source=str(path))


def liac_decode_only(path: Path) -> None:
    from sklearn.externals import _arff as arff

    text = path.read_text(encoding="utf-8")
    try:
        arff.loads(text, return_type=arff.COO)
    except arff.BadLayout:
        arff.loads(text, return_type=arff.DENSE)


def sklearn_load_libsvm(path: Path, num_features: int, num_labels: int) -> MultiLabelData:
    """load_svmlight_file, then the dense label matrix and our checks."""
    from sklearn.datasets import load_svmlight_file

    X, y = load_svmlight_file(str(path), n_features=num_features, multilabel=True, zero_based=False,
                              dtype=np.float32)
    counts = np.fromiter((len(t) for t in y), dtype=np.int64, count=len(y))
    flat = np.fromiter((v for t in y for v in t), dtype=np.float64, count=int(counts.sum()))
    labels = flat.astype(np.int64)
    if (labels != flat).any() or (labels < 0).any() or (labels >= num_labels).any() or not np.isfinite(X.data).all():
        raise ValueError(f"{path}: bad labels or features")
    Y = np.zeros((len(y), num_labels), dtype=np.int8)
    Y[np.repeat(np.arange(len(y)), counts), labels] = 1
    return MultiLabelData(X.toarray(), Y, [str(i) for i in range(Y.shape[1])],
                          [str(j + 1) for j in range(X.shape[1])], name=path.stem, source=str(path))


def write_libsvm(z, path: Path) -> None:
    X, Y = z["X"], z["Y"]
    with open(path, "w") as fh:
        for x, y in zip(X, Y):
            idx = np.flatnonzero(x)
            feats = " ".join(f"{j + 1}:{float(x[j]):.9g}" for j in idx)
            fh.write(",".join(map(str, np.flatnonzero(y))) + " " + feats + "\n")


def _arff_name(name: str) -> str:
    return "'" + name.replace("\\", "\\\\").replace("'", "\\'") + "'"


def write_arff(z, path: Path, sparse: bool) -> None:
    """``z``'s rows as a MULAN ARFF file (features then labels; ``path.with_suffix('.xml')``)."""
    X, Y = z["X"], z["Y"]
    feats, labels = z["feature_names"].tolist(), z["label_names"].tolist()
    feats = [f"{f}_" if f in set(labels) else f for f in feats]  # reuters: words that are topics too
    with open(path, "w") as fh:
        fh.write(f"@relation {path.stem}\n\n")
        for f in feats:
            fh.write(f"@attribute {_arff_name(f)} numeric\n")
        for lab in labels:
            fh.write(f"@attribute {_arff_name(lab)} {{0,1}}\n")
        fh.write("\n@data\n")
        d = X.shape[1]
        for x, y in zip(X, Y):
            if sparse:
                row = [f"{j} {float(x[j]):.9g}" for j in np.flatnonzero(x)]
                row += [f"{d + k} 1" for k in np.flatnonzero(y)]
                fh.write("{" + ",".join(row) + "}\n")
            else:
                fh.write(",".join(f"{float(v):.9g}" for v in x) + "," + ",".join(map(str, y)) + "\n")
    xml = "".join(f'<label name="{lab}"></label>' for lab in labels)
    path.with_suffix(".xml").write_text(f'<labels xmlns="http://mulan.sourceforge.net/labels">{xml}</labels>')


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def _same(a: MultiLabelData, b: MultiLabelData) -> bool:
    return (a.X.shape == b.X.shape and a.Y.shape == b.Y.shape and bool((a.X == b.X).all())
            and bool((a.Y == b.Y).all()) and a.label_names == b.label_names and a.feature_names == b.feature_names)


def _rows_of_npz(path: Path, z) -> slice | np.ndarray:
    if "-train" in path.name:
        return z["train_idx"]
    if "-test" in path.name:
        return z["test_idx"]
    return slice(None)


def compare(cases, repeats):
    """``cases``: (path, npz arrays, our reader, the library's, the library's decoding or None)."""
    out = []
    for path, z, ours, theirs, extra in cases:
        a, b = ours(path), theirs(path)  # warm-up, and the results compared
        rows = _rows_of_npz(path, z)
        equal = _same(a, b) and np.array_equal(a.X.numpy(), z["X"][rows]) and np.array_equal(a.Y.numpy(), z["Y"][rows])
        t_ours, t_lib, t_extra = [], [], []
        for _ in range(repeats):  # alternate, so a load spike hits both
            t_ours.append(_median_ms(lambda: ours(path), 1))
            t_lib.append(_median_ms(lambda: theirs(path), 1))
            if extra is not None:
                t_extra.append(_median_ms(lambda: extra(path), 1))
        row = {"file": path.name, "rows": a.num_samples, "attributes": a.num_features + a.num_labels,
               "ours_ms": statistics.median(t_ours), "library_ms": statistics.median(t_lib),
               "library_decode_only_ms": statistics.median(t_extra) if t_extra else None, "equal": bool(equal)}
        out.append(row)
        decode = "" if extra is None else f"  (decode only {row['library_decode_only_ms']:8.1f})"
        print(f"{row['file']:28s} {row['rows']:6d} x {row['attributes']:5d}  ours {row['ours_ms']:8.1f} ms  "
              f"library {row['library_ms']:8.1f} ms{decode}  equal {'yes' if equal else 'NO'}", flush=True)
    return out


def run(tmp: Path, repeats: int) -> dict:
    """Both comparisons; the written files go to ``tmp``."""
    arff_cases = []
    for path in sorted(DATA.glob("*/*.arff")):
        arff_cases.append((path, np.load(path.parent / f"{path.parent.name}.npz"), load_arff, liac_load_arff,
                           liac_decode_only))
    for name, sparse in (("scene", False), ("bibtex", True), ("reuters21578", True)):
        z = np.load(DATA / name / f"{name}.npz")
        write_arff(z, tmp / f"{name}-written.arff", sparse)
        arff_cases.append((tmp / f"{name}-written.arff", z, load_arff, liac_load_arff, liac_decode_only))
    print("ARFF: ours = bbam.data.load_arff; library = liac-arff (sklearn.externals._arff) + our label/XML logic")
    result = {"arff": compare(arff_cases, repeats)}
    svm_cases = []
    for name in ("scene", "yeast", "bibtex", "reuters21578"):
        z = np.load(DATA / name / f"{name}.npz")
        write_libsvm(z, tmp / f"{name}.svm")
        d, k = z["X"].shape[1], z["Y"].shape[1]
        svm_cases.append((tmp / f"{name}.svm", z, lambda p, d=d, k=k: load_libsvm(p, num_features=d, num_labels=k),
                          lambda p, d=d, k=k: sklearn_load_libsvm(p, d, k), None))
    print("LIBSVM: ours = bbam.data.load_libsvm; library = sklearn load_svmlight_file + label matrix and checks")
    result["libsvm"] = compare(svm_cases, repeats)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path)
    ns = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bbam-parsers-") as folder:
        result = run(Path(folder), ns.repeats)
    if ns.json:
        ns.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
