"""Multi-label datasets: container, synthetic generator, file loaders, splits.

Application layer: imports only the standard library,
``numpy`` and ``torch``; no Hydra.

Public API
----------
* :class:`MultiLabelData` -- validated container (``X`` float32 ``[N, D]``,
  ``Y`` int8 ``[N, K]`` in {0, 1}, names, optional official split).
* :func:`make_synthetic` -- deterministic long-tailed synthetic benchmark
  (the default dataset; needs no files).
* :func:`load_npz`, :func:`load_arff`, :func:`load_arff_pair`,
  :func:`load_libsvm`, :func:`load_dataset` -- readers.  Every error names the
  file (and, for text formats, the line).
* :func:`save_npz` -- write the ``.npz`` layout that :func:`load_npz` reads.
* :func:`iterative_stratification` -- Sechidis et al. (2011) multi-label
  stratified partition with exact fold sizes.
* :func:`split_indices` -- labeled / unlabeled / validation / test split of
  one run (one labeled split per seed).
"""

from __future__ import annotations

import math
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

__all__ = [
    "DatasetFormatError",
    "MultiLabelData",
    "make_synthetic",
    "load_npz",
    "save_npz",
    "load_arff",
    "load_arff_pair",
    "load_libsvm",
    "load_dataset",
    "iterative_stratification",
    "split_indices",
    "default_data_dirs",
]

# --------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------
class DatasetFormatError(ValueError):
    """A data file is unreadable or malformed.

    The message always names the file and, where one applies, the 1-based
    line number; both are also available as attributes ``path`` / ``line``.
    """

    def __init__(self, path: Any, message: str, line: int | None = None):
        self.path = str(path)
        self.line = line
        where = f"{self.path}" if line is None else f"{self.path}, line {line}"
        super().__init__(f"{where}: {message}")


def _text_lines(path: Path):
    """Yield (1-based line number, decoded line); errors name file and line."""
    try:
        fh = open(path, "rb")
    except OSError as e:
        raise DatasetFormatError(path, f"cannot open ({e.strerror or e})") from e
    with fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DatasetFormatError(path, f"not UTF-8 text ({e.reason} at byte {e.start})", lineno) from None
            if lineno == 1 and text.startswith("\ufeff"):
                text = text[1:]
            yield lineno, text


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(2, f"dataset file not found: {path}", str(path))
    if path.is_dir():
        raise IsADirectoryError(21, f"expected a file, got a directory: {path}", str(path))


# --------------------------------------------------------------------------
# container
# --------------------------------------------------------------------------
def _as_tensor(value: Any, what: str, where: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, np.ndarray):
        if value.dtype == object or value.dtype.kind in "USV":
            raise TypeError(f"{where}: {what} must be numeric, got numpy dtype {value.dtype}")
        return torch.from_numpy(np.ascontiguousarray(value))
    raise TypeError(f"{where}: {what} must be a torch.Tensor or numpy array, got {type(value).__name__}")


def _as_index(value: Any, what: str, n: int, where: str) -> torch.Tensor | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple, range)):
        value = np.asarray(list(value), dtype=np.int64)
    t = _as_tensor(value, what, where)
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"{where}: {what} must hold integer indices, got {t.dtype}")
    if t.dim() > 1:
        raise ValueError(f"{where}: {what} must be 1-D, got shape {tuple(t.shape)}")
    t = t.to(torch.long).reshape(-1)
    if t.numel():
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= n:
            raise ValueError(f"{where}: {what} has indices outside [0, {n}) (min {lo}, max {hi})")
        if torch.unique(t).numel() != t.numel():
            raise ValueError(f"{where}: {what} contains duplicate indices")
    return t.contiguous()


def _names(value: Any, count: int, prefix: str, what: str, where: str) -> list[str]:
    if value is None:
        return [f"{prefix}{i}" for i in range(count)]
    if isinstance(value, np.ndarray):
        value = value.tolist()
    names = [str(v) for v in value]
    if len(names) != count:
        raise ValueError(f"{where}: {what} has {len(names)} entries, expected {count}")
    return names


@dataclass(repr=False, eq=False)
class MultiLabelData:
    """A multi-label dataset held in memory.

    Attributes:
        X: float32 features ``[N, D]`` (finite).
        Y: int8 labels ``[N, K]`` with values in {0, 1}.
        label_names: ``K`` names (``label_<k>`` when not given).
        feature_names: ``D`` names (``f<j>`` when not given).
        train_idx, test_idx: the source's official split (LongTensor of row
            indices, disjoint) or ``None``.
        name: short dataset name (e.g. ``"emotions"``).
        source: where it was read from (a path), used in error messages.

    ``__post_init__`` validates and normalises: numpy arrays are accepted and
    converted; ``X`` of any real dtype becomes float32; ``Y`` of any
    real/bool dtype becomes int8 after checking that every value is 0 or 1.
    Errors name ``source`` (or ``name``).
    """

    X: torch.Tensor
    Y: torch.Tensor
    label_names: list[str] | None = None
    feature_names: list[str] | None = None
    train_idx: torch.Tensor | None = None
    test_idx: torch.Tensor | None = None
    name: str = "dataset"
    source: str | None = None

    def __post_init__(self) -> None:
        where = f"dataset {self.name!r}" + (f" ({self.source})" if self.source else "")
        X = _as_tensor(self.X, "X", where)
        Y = _as_tensor(self.Y, "Y", where)
        if X.dim() != 2:
            raise ValueError(f"{where}: X must be 2-D [N, D], got shape {tuple(X.shape)}")
        if Y.dim() != 2:
            raise ValueError(f"{where}: Y must be 2-D [N, K], got shape {tuple(Y.shape)}")
        if X.shape[0] != Y.shape[0]:
            raise ValueError(f"{where}: X has {X.shape[0]} rows but Y has {Y.shape[0]}")
        if X.dtype.is_complex or X.dtype == torch.bool:
            raise TypeError(f"{where}: X must be real-valued, got {X.dtype}")
        if Y.dtype.is_complex:
            raise TypeError(f"{where}: Y must be real-valued, got {Y.dtype}")
        if X.dtype == torch.bfloat16:
            X = X.float()
        X = X.to(torch.float32).contiguous()
        Xn = X.numpy()  # checks in numpy: much faster than torch for these reductions
        if not np.isfinite(Xn).all():
            bad = ~np.isfinite(Xn)
            r, c = (int(v) for v in np.argwhere(bad)[0])
            raise ValueError(
                f"{where}: X contains {int(bad.sum())} NaN/Inf value(s), first at row {r}, column {c}"
            )
        Yn = Y.numpy() if Y.dtype != torch.bfloat16 else Y.float().numpy()
        if Yn.dtype == np.bool_:
            Yn = Yn.view(np.int8)
        if Yn.size:
            badY = (Yn != 0) & (Yn != 1)
            if badY.any():
                r, c = (int(v) for v in np.argwhere(badY)[0])
                raise ValueError(
                    f"{where}: labels must be 0 or 1; found {Yn[r, c].item()!r} at row {r}, label column {c}"
                )
        Y = Y.to(torch.int8).contiguous()
        n, d = X.shape
        k = Y.shape[1]
        self.X, self.Y = X, Y
        self.label_names = _names(self.label_names, k, "label_", "label_names", where)
        self.feature_names = _names(self.feature_names, d, "f", "feature_names", where)
        self.train_idx = _as_index(self.train_idx, "train_idx", n, where)
        self.test_idx = _as_index(self.test_idx, "test_idx", n, where)
        if self.train_idx is not None and self.test_idx is not None and self.train_idx.numel() and self.test_idx.numel():
            if bool(torch.isin(self.train_idx, self.test_idx).any()):
                raise ValueError(f"{where}: train_idx and test_idx overlap")

    # ---- shape helpers -------------------------------------------------
    @property
    def num_samples(self) -> int:
        return int(self.X.shape[0])

    @property
    def num_features(self) -> int:
        return int(self.X.shape[1])

    @property
    def num_labels(self) -> int:
        return int(self.Y.shape[1])

    def label_frequencies(self) -> torch.Tensor:
        """Fraction of positive samples per label, float64 ``[K]``."""
        if self.num_samples == 0:
            return torch.zeros(self.num_labels, dtype=torch.float64)
        return self.Y.to(torch.float64).mean(0)

    def subset(self, index: Any, name: str | None = None) -> "MultiLabelData":
        """Rows ``index`` as a new dataset (no official split)."""
        idx = _as_index(index, "index", self.num_samples, f"dataset {self.name!r}")
        return MultiLabelData(
            self.X[idx], self.Y[idx], list(self.label_names), list(self.feature_names),
            name=name or self.name, source=self.source,
        )

    def __repr__(self) -> str:
        split = ""
        if self.train_idx is not None or self.test_idx is not None:
            ntr = 0 if self.train_idx is None else self.train_idx.numel()
            nte = 0 if self.test_idx is None else self.test_idx.numel()
            split = f", split={ntr}/{nte}"
        card = float(self.Y.sum()) / max(self.num_samples, 1)
        return (
            f"MultiLabelData(name={self.name!r}, N={self.num_samples}, D={self.num_features}, "
            f"K={self.num_labels}, cardinality={card:.3f}{split})"
        )


# --------------------------------------------------------------------------
# synthetic data
# --------------------------------------------------------------------------
def make_synthetic(
    num_samples: int = 6000,
    num_features: int = 64,
    num_labels: int = 20,
    seed: int = 0,
    *,
    num_topics: int = 5,
    latent_dim: int = 16,
    hidden_dim: int = 128,
    max_freq: float = 0.4,
    min_freq: float | None = None,
    min_positives: int = 5,
    secondary_topic_prob: float = 0.3,
    topic_sep: float = 3.0,
    label_sep: float = 4.0,
    latent_noise: float = 0.7,
    feature_noise: float = 0.3,
    name: str = "synthetic",
) -> MultiLabelData:
    r"""Synthetic long-tailed multi-label data with cluster structure.

    Deterministic given ``seed`` (numpy ``default_rng``); ~0.1 s at the
    default size.  No official split (``train_idx``/``test_idx`` are None).

    Generative process (``N`` samples, ``T`` topics, ``K`` labels)::

        1. Topics.  Prior pi_t ∝ 1/(t+1).  Each sample draws a primary topic
           t1 ~ Cat(pi) and, with probability ``secondary_topic_prob``, a
           second topic t2 ~ Cat(pi) (t2 != t1).  A[i] in {0,1}^T marks them.
        2. Label frequencies (long tail).  Target f_k = max_freq * (k+1)^-alpha,
           alpha chosen so that f_{K-1} = min_freq (default max(0.01, 30/N)):
           label 0 is the most frequent, the last ones are rare.
        3. Labels driven by topics (co-occurrence).  Label k belongs to topic
           t(k) = k mod T (moved to the most prevalent topic when that topic
           is too rare for f_k).  Among the samples whose A[i, t(k)] = 1 it is
           positive for the m_k = round(f_k N) (at least ``min_positives``)
           samples with the largest sub-topic score  <u_k, g_i> + 0.5 e_ik,
           where g_i ~ N(0, I_4) is a per-sample style latent and u_k a
           random unit vector.  Labels of one topic therefore co-occur (and
           labels with similar u_k nest/overlap); multi-topic samples link
           labels across topics.
        4. Latent code (class-conditional, clustered).
              z_i = topic_sep * sum_t A[i,t] m_t + label_sep * sum_k Y[i,k] d_k
                    + latent_noise * eps_i,        eps_i ~ N(0, I_r)
           with random unit directions m_t, d_k in R^r (r = latent_dim): each
           label set is a Gaussian cluster, and a label's positives are
           shifted away from its negatives (low-density gaps -> unlabeled
           data reveal the clusters, the cluster assumption of SSL).
        5. Features: a random 2-layer tanh network (nonlinear manifold) plus
           noise,  x_i = W2 tanh(W1 z_i / sqrt(r) + b1) / sqrt(H)
                         + feature_noise * xi_i,   then standardised per feature.

    Every label has at least ``min(min_positives, #samples of its topic)``
    positives; at the default size the rarest label has 60 (1%), label 0
    has 2400 (40%), cardinality ~1.1, ~20% of samples have no label.

    Why unlabeled data help (checked with scikit-learn proxies at the
    default size, 5% labeled via :func:`split_indices`, test mAP): logistic
    regression on the labeled part ~75, on all training labels ~90;
    self-training it with class-aware thresholds, or adding k-means cluster
    memberships learned on all training features, ~77.
    """
    n, d, k, t_count = int(num_samples), int(num_features), int(num_labels), int(num_topics)
    if n < 1 or d < 1 or k < 1 or t_count < 1:
        raise ValueError(
            "make_synthetic: num_samples, num_features, num_labels and num_topics must be >= 1, "
            f"got {num_samples}, {num_features}, {num_labels}, {num_topics}"
        )
    if not 0.0 < max_freq < 1.0:
        raise ValueError(f"make_synthetic: max_freq must be in (0, 1), got {max_freq}")
    if not 0.0 <= secondary_topic_prob <= 1.0:
        raise ValueError(f"make_synthetic: secondary_topic_prob must be in [0, 1], got {secondary_topic_prob}")
    rng = np.random.default_rng(seed)
    r, g_dim = int(latent_dim), 4

    # 1. topics
    prior = 1.0 / np.arange(1, t_count + 1)
    prior /= prior.sum()
    A = np.zeros((n, t_count), dtype=bool)
    t1 = rng.choice(t_count, size=n, p=prior)
    A[np.arange(n), t1] = True
    if t_count > 1:
        t2 = rng.choice(t_count, size=n, p=prior)
        extra = (rng.random(n) < secondary_topic_prob) & (t2 != t1)
        A[np.flatnonzero(extra), t2[extra]] = True
    topic_count = A.sum(0)

    # 2. target frequencies
    if min_freq is None:
        min_freq = max(0.01, 30.0 / n)
    min_freq = min(float(min_freq), max_freq)
    alpha = 0.0 if k == 1 else math.log(max_freq / min_freq) / math.log(k)
    freq = max_freq * np.arange(1, k + 1, dtype=np.float64) ** (-alpha)

    # 3. labels
    g = rng.standard_normal((n, g_dim))
    U = rng.standard_normal((k, g_dim))
    U /= np.linalg.norm(U, axis=1, keepdims=True)
    jitter = 0.5 * rng.standard_normal((n, k))
    order_topics = np.argsort(-topic_count, kind="stable")
    Y = np.zeros((n, k), dtype=np.int8)
    for lab in range(k):
        topic = lab % t_count
        if freq[lab] * n > 0.9 * topic_count[topic]:
            topic = int(order_topics[0])
        members = np.flatnonzero(A[:, topic])
        if members.size == 0:
            continue
        m = int(round(freq[lab] * n))
        m = min(max(m, min_positives, 1), max(1, int(0.9 * members.size)))
        score = g[members] @ U[lab] + jitter[members, lab]
        top = members[np.argsort(-score, kind="stable")[:m]]
        Y[top, lab] = 1

    # 4. latent code
    M = rng.standard_normal((t_count, r))
    M /= np.linalg.norm(M, axis=1, keepdims=True)
    Dl = rng.standard_normal((k, r))
    Dl /= np.linalg.norm(Dl, axis=1, keepdims=True)
    Z = topic_sep * (A @ M) + label_sep * (Y.astype(np.float64) @ Dl) + latent_noise * rng.standard_normal((n, r))

    # 5. features
    h = int(hidden_dim)
    W1 = rng.standard_normal((r, h))
    b1 = 0.5 * rng.standard_normal(h)
    W2 = rng.standard_normal((h, d))
    X = np.tanh(Z @ W1 / math.sqrt(r) + b1) @ W2 / math.sqrt(h)
    X += feature_noise * rng.standard_normal((n, d))
    X -= X.mean(0)
    X /= np.maximum(X.std(0), 1e-12)

    return MultiLabelData(
        torch.from_numpy(X.astype(np.float32)),
        torch.from_numpy(Y),
        [f"label_{i:02d}" for i in range(k)],
        [f"x{j}" for j in range(d)],
        name=name,
        source=f"make_synthetic(seed={seed})",
    )


# --------------------------------------------------------------------------
# .npz
# --------------------------------------------------------------------------
def _first_bad_label(Y: np.ndarray) -> tuple[int, int, Any] | None:
    bad = (Y != 0) & (Y != 1)
    if not bad.any():
        return None
    r, c = np.argwhere(bad)[0]
    return int(r), int(c), Y[r, c].item()


def load_npz(path: str | os.PathLike[str], name: str | None = None) -> MultiLabelData:
    """Read the ``.npz`` layout of ``shared/data`` (see its README).

    Keys: ``X`` ``[N, D]`` (any real dtype, stored float32), ``Y`` ``[N, K]``
    0/1, optional ``train_idx``/``test_idx`` (int), ``label_names``,
    ``feature_names`` (unicode arrays).  Extra keys are ignored.  Loaded
    without pickle.
    """
    p = Path(path)
    _check_exists(p)
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {key: z[key] for key in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DatasetFormatError(p, f"not a readable .npz archive ({e})") from e
    for key in ("X", "Y"):
        if key not in arrays:
            raise DatasetFormatError(p, f"missing required key {key!r} (found {sorted(arrays)})")
    X, Y = arrays["X"], arrays["Y"]
    if X.ndim != 2 or Y.ndim != 2:
        raise DatasetFormatError(p, f"X and Y must be 2-D, got shapes {X.shape} and {Y.shape}")
    if X.dtype.kind not in "fiub":
        raise DatasetFormatError(p, f"X must be numeric, got dtype {X.dtype}")
    if Y.dtype.kind not in "fiub":
        raise DatasetFormatError(p, f"Y must be numeric, got dtype {Y.dtype}")
    bad = _first_bad_label(Y)
    if bad is not None:
        raise DatasetFormatError(p, f"labels must be 0 or 1; found {bad[2]!r} at row {bad[0]}, label column {bad[1]}")
    idx = {}
    for key in ("train_idx", "test_idx"):
        if key in arrays:
            a = arrays[key]
            if a.dtype.kind not in "iu":
                raise DatasetFormatError(p, f"{key} must be integer, got dtype {a.dtype}")
            idx[key] = torch.from_numpy(a.astype(np.int64).reshape(-1))
    try:
        return MultiLabelData(
            torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)),
            torch.from_numpy(np.ascontiguousarray(Y, dtype=np.int8)),
            arrays.get("label_names"),
            arrays.get("feature_names"),
            idx.get("train_idx"),
            idx.get("test_idx"),
            name=name or p.stem,
            source=str(p),
        )
    except (ValueError, TypeError) as e:
        raise DatasetFormatError(p, str(e)) from e


def save_npz(data: MultiLabelData, path: str | os.PathLike[str]) -> Path:
    """Write ``data`` in the layout :func:`load_npz` reads (uncompressed)."""
    p = Path(path)
    arrays: dict[str, np.ndarray] = {
        "X": data.X.numpy(),
        "Y": data.Y.numpy(),
        "label_names": np.array(data.label_names, dtype=str),
        "feature_names": np.array(data.feature_names, dtype=str),
    }
    if data.train_idx is not None:
        arrays["train_idx"] = data.train_idx.numpy()
    if data.test_idx is not None:
        arrays["test_idx"] = data.test_idx.numpy()
    with open(p, "wb") as f:
        np.savez(f, **arrays)
    return p


# --------------------------------------------------------------------------
# ARFF (MULAN / MEKA)
# --------------------------------------------------------------------------
_TRUE_WORDS = {"1", "yes", "y", "true", "t"}
_FALSE_WORDS = {"0", "no", "n", "false", "f"}


def _read_quoted(s: str, pos: int) -> tuple[str, int]:
    """Read a quoted token starting at ``s[pos]`` (a quote); return (text, end)."""
    q = s[pos]
    out = []
    i = pos + 1
    while i < len(s):
        ch = s[i]
        if ch == "\\" and i + 1 < len(s):
            nxt = s[i + 1]
            out.append({"n": "\n", "t": "\t", "r": "\r"}.get(nxt, nxt))
            i += 2
            continue
        if ch == q:
            return "".join(out), i + 1
        out.append(ch)
        i += 1
    raise ValueError(f"unterminated quote in {s!r}")


def _split_values(s: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside quotes; quoted tokens are unquoted, others stripped."""
    if "'" not in s and '"' not in s:
        return [tok.strip() for tok in s.split(sep)]
    out: list[str] = []
    i, n = 0, len(s)
    while True:
        while i < n and s[i] in " \t":
            i += 1
        if i < n and s[i] in "'\"":
            tok, i = _read_quoted(s, i)
            while i < n and s[i] in " \t":
                i += 1
            if i < n and s[i] != sep:
                raise ValueError(f"unexpected text after quoted value in {s!r}")
        else:
            j = s.find(sep, i)
            j = n if j < 0 else j
            tok = s[i:j].strip()
            i = j
        out.append(tok)
        if i >= n:
            return out
        i += 1  # skip separator


def _parse_name(rest: str) -> tuple[str, str]:
    """Split ``rest`` into a (possibly quoted) name and the remainder."""
    rest = rest.strip()
    if not rest:
        raise ValueError("missing name")
    if rest[0] in "'\"":
        name, end = _read_quoted(rest, 0)
        return name, rest[end:].strip()
    m = re.match(r"(\S+)\s*(.*)$", rest, re.S)
    assert m is not None
    return m.group(1), m.group(2).strip()


class _Attr:
    __slots__ = ("name", "kind", "values", "lookup", "numeric_values", "default")

    def __init__(self, name: str, kind: str, values: list[str] | None = None):
        self.name = name
        self.kind = kind  # "numeric" | "nominal"
        self.values = values
        self.lookup: dict[str, float] | None = None
        self.numeric_values = False  # nominal whose values are all plain numbers
        self.default = 0.0  # value of an entry omitted from a sparse row
        if kind == "nominal":
            assert values is not None
            floats = []
            for v in values:
                try:
                    floats.append(float(v))
                except ValueError:
                    floats = None  # type: ignore[assignment]
                    break
            if floats is not None:
                self.numeric_values = True
                self.lookup = dict(zip(values, floats))
            else:
                low = [v.lower() for v in values]
                if len(values) == 2 and all(v in _TRUE_WORDS | _FALSE_WORDS for v in low) and (
                    (low[0] in _TRUE_WORDS) != (low[1] in _TRUE_WORDS)
                ):
                    self.lookup = {v: (1.0 if lv in _TRUE_WORDS else 0.0) for v, lv in zip(values, low)}
                else:
                    self.lookup = {v: float(i) for i, v in enumerate(values)}
            self.default = self.lookup[values[0]] if values else 0.0


def _parse_attribute(rest: str) -> _Attr:
    name, typ = _parse_name(rest)
    low = typ.lower()
    if low in ("numeric", "real", "integer"):
        return _Attr(name, "numeric")
    if typ.startswith("{"):
        if not typ.rstrip().endswith("}"):
            raise ValueError(f"nominal attribute {name!r}: missing closing '}}' in {typ!r}")
        body = typ.strip()[1:-1]
        values = [v for v in _split_values(body)] if body.strip() else []
        if not values:
            raise ValueError(f"nominal attribute {name!r} declares no values")
        return _Attr(name, "nominal", values)
    if low.startswith("string") or low.startswith("date") or low.startswith("relational"):
        raise ValueError(
            f"attribute {name!r} has type {typ.split()[0]!r}; only numeric and nominal attributes are supported"
        )
    raise ValueError(f"attribute {name!r} has unknown type {typ!r}")


def _read_mulan_xml(xml_path: Path) -> list[str]:
    import xml.etree.ElementTree as ET  # stdlib, imported lazily

    try:
        root = ET.parse(xml_path).getroot()
    except (ET.ParseError, OSError) as e:
        raise DatasetFormatError(xml_path, f"not a readable MULAN XML label header ({e})") from e
    names = [el.get("name") for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "label"]
    names = [n for n in names if n is not None]
    if not names:
        raise DatasetFormatError(xml_path, "MULAN XML header lists no <label name=...> elements")
    return names


_SPLIT_SUFFIX = re.compile(r"[-_.](train|training|trn|test|testing|tst|val|valid)$", re.I)


def _find_xml(arff: Path) -> Path | None:
    stem = arff.stem
    cands = [arff.with_name(stem + ".xml")]
    base = _SPLIT_SUFFIX.sub("", stem)
    if base != stem:
        cands.append(arff.with_name(base + ".xml"))
    for c in cands:
        if c.is_file():
            return c
    return None


def _meka_num_labels(relation: str) -> int | None:
    m = re.search(r"(?:^|[\s:])-C\s+(-?\d+)", relation)
    return int(m.group(1)) if m else None


def _parse_arff(path: Path) -> tuple[str, list[_Attr], np.ndarray, np.ndarray]:
    """Return (relation, attributes, values [N, A] float64, line numbers [N])."""
    _check_exists(path)
    relation: str | None = None
    attrs: list[_Attr] = []
    dense_rows: list[tuple[int, np.ndarray]] = []
    sp_rows: list[int] = []
    sp_cols: list[int] = []
    sp_vals: list[float] = []
    lines_of_rows: list[int] = []
    in_data = False
    all_float = False
    n_attr = 0
    lineno = 0

    def fail(msg: str) -> DatasetFormatError:
        return DatasetFormatError(path, msg, lineno)

    def convert(j: int, tok: str) -> float:
        a = attrs[j]
        if tok == "?":
            raise fail(f"missing value '?' for attribute {a.name!r} (missing values are not supported)")
        if a.kind == "numeric":
            try:
                return float(tok)
            except ValueError:
                raise fail(f"attribute {a.name!r}: {tok!r} is not a number") from None
        assert a.lookup is not None
        v = a.lookup.get(tok)
        if v is None and a.numeric_values:  # '1.0' for {0,1}: same as the fast path
            try:
                v = float(tok)
            except ValueError:
                v = None
            if v not in a.lookup.values():
                v = None
        if v is None:
            raise fail(f"attribute {a.name!r}: value {tok!r} is not one of {a.values}")
        return v

    for lineno, raw in _text_lines(path):
        line = raw.strip()
        if not line or line[0] == "%":
            continue
        if not in_data:
            if line[0] != "@":
                raise fail(f"expected an @relation/@attribute/@data declaration, got {line[:60]!r}")
            m = re.match(r"(@\S+)\s*(.*)$", line, re.S)
            assert m is not None
            kw, rest = m.group(1).lower(), m.group(2)
            if kw == "@relation":
                try:
                    relation, _ = _parse_name(rest)
                except ValueError as e:
                    raise fail(f"bad @relation: {e}") from None
            elif kw == "@attribute":
                try:
                    attrs.append(_parse_attribute(rest))
                except ValueError as e:
                    raise fail(f"bad @attribute: {e}") from None
            elif kw == "@data":
                if not attrs:
                    raise fail("@data before any @attribute")
                in_data = True
                n_attr = len(attrs)
                all_float = all(a.kind == "numeric" or a.numeric_values for a in attrs)
            else:
                raise fail(f"unsupported declaration {kw!r}")
            continue
        # ---- data rows
        row = len(lines_of_rows)
        if line[0] == "{":
            close = line.find("}")
            if close < 0:
                raise fail("sparse row without closing '}'")
            tail = line[close + 1 :].strip()
            if tail and not (tail.startswith(",") and tail[1:].strip().startswith("{")):
                raise fail(f"unexpected text after sparse row: {tail[:40]!r}")
            body = line[1:close].strip()
            if body and all_float and "'" not in body and '"' not in body:
                # fast path: plain numbers (membership of nominal
                # values is checked after parsing, per column)
                pairs = [e.split() for e in body.split(",")]
                if all(len(q) == 2 for q in pairs):
                    try:
                        js = [int(q[0]) for q in pairs]
                        vs = [float(q[1]) for q in pairs]
                    except ValueError:
                        js = []
                    if js and min(js) >= 0 and max(js) < n_attr:
                        sp_rows.extend([row] * len(js))
                        sp_cols.extend(js)
                        sp_vals.extend(vs)
                        lines_of_rows.append(lineno)
                        continue
            if body:  # general path, precise errors
                try:
                    entries = _split_values(body)
                except ValueError as e:
                    raise fail(str(e)) from None
                for ent in entries:
                    parts = ent.split(None, 1)
                    if len(parts) != 2:
                        raise fail(f"sparse entry {ent!r} is not 'index value'")
                    try:
                        j = int(parts[0])
                    except ValueError:
                        raise fail(f"sparse entry {ent!r}: index is not an integer") from None
                    if not 0 <= j < n_attr:
                        raise fail(f"sparse index {j} outside [0, {n_attr})")
                    tok = parts[1].strip()
                    if tok[:1] in ("'", '"'):
                        try:
                            tok, _ = _read_quoted(tok, 0)
                        except ValueError as e:
                            raise fail(str(e)) from None
                    sp_rows.append(row)
                    sp_cols.append(j)
                    sp_vals.append(convert(j, tok))
            lines_of_rows.append(lineno)
            continue
        # dense row (drop an instance weight ",{w}")
        if line.endswith("}"):
            br = line.rfind(",{")
            if br >= 0:
                line = line[:br]
        try:
            toks = _split_values(line)
        except ValueError as e:
            raise fail(str(e)) from None
        if len(toks) != n_attr:
            raise fail(f"expected {n_attr} comma-separated values, got {len(toks)}")
        vals = None
        if all_float:
            try:
                vals = [float(t) for t in toks]
            except ValueError:
                vals = None
        if vals is None:
            vals = [convert(j, t) for j, t in enumerate(toks)]
        dense_rows.append((row, np.array(vals, dtype=np.float64)))
        lines_of_rows.append(lineno)
    if not in_data:
        raise DatasetFormatError(path, "no @data section (not an ARFF file?)", None)
    n = len(lines_of_rows)
    M = np.empty((n, n_attr), dtype=np.float64)
    M[:] = np.array([a.default for a in attrs], dtype=np.float64)
    if dense_rows:
        rows = np.fromiter((r for r, _ in dense_rows), dtype=np.int64, count=len(dense_rows))
        M[rows] = np.stack([v for _, v in dense_rows])
    if sp_rows:
        M[np.asarray(sp_rows), np.asarray(sp_cols)] = np.asarray(sp_vals)
    lines = np.asarray(lines_of_rows, dtype=np.int64)
    # nominal attributes parsed through the float fast path: check membership
    groups: dict[tuple[float, ...], list[int]] = {}
    for j, a in enumerate(attrs):
        if a.kind == "nominal" and a.numeric_values:
            groups.setdefault(tuple(sorted(set(a.lookup.values()))), []).append(j)  # type: ignore[union-attr]
    for allowed, cols in groups.items():
        sub = M[:, cols]
        bad = ~np.isin(sub, np.array(allowed, dtype=np.float64))
        if bad.any():
            i, c = (int(v) for v in np.argwhere(bad)[0])
            a = attrs[cols[c]]
            raise DatasetFormatError(
                path, f"attribute {a.name!r}: value {M[i, cols[c]]:g} is not one of {a.values}", int(lines[i])
            )
    bad_rows = ~np.isfinite(M).all(1)
    if bad_rows.any():
        i = int(np.flatnonzero(bad_rows)[0])
        j = int(np.flatnonzero(~np.isfinite(M[i]))[0])
        raise DatasetFormatError(path, f"attribute {attrs[j].name!r}: non-finite value {M[i, j]!r}", int(lines[i]))
    return relation or path.stem, attrs, M, lines


def _label_columns(
    path: Path, relation: str, attrs: list[_Attr], num_labels: int | None, xml_path: Any
) -> list[int]:
    names = [a.name for a in attrs]
    xml = Path(xml_path) if xml_path is not None else None
    if xml is not None:
        _check_exists(xml)
    elif num_labels is None:
        xml = _find_xml(path)
    if xml is not None:
        label_set = _read_mulan_xml(xml)
        pos = {nm: j for j, nm in enumerate(names)}
        missing = [nm for nm in label_set if nm not in pos]
        if missing:
            raise DatasetFormatError(
                xml, f"{len(missing)} label(s) of the XML header are not attributes of {path}: {missing[:5]}"
            )
        cols = sorted(pos[nm] for nm in set(label_set))  # ARFF column order
        if num_labels is not None and len(cols) != num_labels:
            raise DatasetFormatError(xml, f"lists {len(cols)} labels but num_labels={num_labels}")
        return cols
    if num_labels is not None:
        if isinstance(num_labels, bool) or not isinstance(num_labels, (int, np.integer)) or not 0 < num_labels < len(attrs):
            raise ValueError(f"num_labels must be an int in [1, {len(attrs) - 1}] for {path}, got {num_labels!r}")
        return list(range(len(attrs) - int(num_labels), len(attrs)))
    c = _meka_num_labels(relation)
    if c is not None:
        if c == 0 or abs(c) >= len(attrs):
            raise DatasetFormatError(path, f"MEKA header '-C {c}' is invalid for {len(attrs)} attributes")
        return list(range(c)) if c > 0 else list(range(len(attrs) + c, len(attrs)))
    raise DatasetFormatError(
        path,
        "cannot tell which attributes are labels: no MULAN .xml header next to the file, "
        "no MEKA '-C L' option in @relation; pass num_labels= or xml_path=",
    )


def load_arff(
    path: str | os.PathLike[str],
    num_labels: int | None = None,
    xml_path: str | os.PathLike[str] | None = None,
    name: str | None = None,
) -> MultiLabelData:
    """Read a MULAN or MEKA multi-label ARFF file (own parser, no liac-arff).

    Which attributes are labels, in order of precedence:

    1. ``xml_path`` given: the labels named in that MULAN XML header.
    2. ``num_labels`` given (and no ``xml_path``): the last ``num_labels``
       attributes (MULAN convention).
    3. A MULAN header found next to the file: ``<stem>.xml``, or
       ``<base>.xml`` with a ``-train``/``-test`` (etc.) suffix removed.
    4. A MEKA header ``@relation 'name: -C L ...'``: the first ``L``
       attributes when ``L > 0``, the last ``-L`` when ``L < 0``.

    Label columns keep the ARFF attribute order (not the XML order); all
    other attributes are features, in ARFF order.

    Supported: ``%`` comments, case-insensitive keywords, quoted names and
    values (``'...'``/``"..."``), numeric/real/integer and nominal
    attributes, dense rows and sparse rows ``{index value, ...}`` (0-based
    indices; omitted entries take 0 for numeric attributes and the first
    declared value for nominal ones, i.e. 0 for ``{0,1}``), instance weights
    ``,{w}`` (ignored).  Nominal values that are numbers map to that number,
    yes/no-style pairs to 1/0, others to their declaration index.  Label
    values must be 0 or 1.  Missing values ``?`` and string/date/relational
    attributes are rejected with the file and line.
    """
    p = Path(path)
    relation, attrs, M, lines = _parse_arff(p)
    cols = _label_columns(p, relation, attrs, num_labels, xml_path)
    colset = set(cols)
    feat = [j for j in range(len(attrs)) if j not in colset]
    Yf = M[:, cols]
    bad = (Yf != 0) & (Yf != 1)
    if bad.any():
        i, c = (int(v) for v in np.argwhere(bad)[0])
        raise DatasetFormatError(
            p, f"label attribute {attrs[cols[c]].name!r} has value {Yf[i, c]:g}; labels must be 0 or 1", int(lines[i])
        )
    return MultiLabelData(
        torch.from_numpy(M[:, feat].astype(np.float32)),
        torch.from_numpy(Yf.astype(np.int8)),
        [attrs[j].name for j in cols],
        [attrs[j].name for j in feat],
        name=name or p.stem,
        source=str(p),
    )


def load_arff_pair(
    train_path: str | os.PathLike[str],
    test_path: str | os.PathLike[str],
    num_labels: int | None = None,
    xml_path: str | os.PathLike[str] | None = None,
    name: str | None = None,
) -> MultiLabelData:
    """Stack an official train/test ARFF pair: rows = train block, then test
    block; ``train_idx``/``test_idx`` record the split (the ``shared/data``
    ``.npz`` layout).  Attribute and label names of both files must agree."""
    tr = load_arff(train_path, num_labels=num_labels, xml_path=xml_path)
    te = load_arff(test_path, num_labels=num_labels, xml_path=xml_path)
    if tr.feature_names != te.feature_names or tr.label_names != te.label_names:
        raise DatasetFormatError(test_path, f"attributes differ from those of {train_path}")
    n_tr, n_te = tr.num_samples, te.num_samples
    base = _SPLIT_SUFFIX.sub("", Path(train_path).stem)
    return MultiLabelData(
        torch.cat([tr.X, te.X]),
        torch.cat([tr.Y, te.Y]),
        tr.label_names,
        tr.feature_names,
        torch.arange(n_tr),
        torch.arange(n_tr, n_tr + n_te),
        name=name or base,
        source=f"{train_path} + {test_path}",
    )


# --------------------------------------------------------------------------
# LIBSVM (multi-label)
# --------------------------------------------------------------------------
_XC_HEADER = re.compile(r"^\d+\s+\d+\s+\d+$")


def load_libsvm(
    path: str | os.PathLike[str],
    num_features: int | None = None,
    num_labels: int | None = None,
    name: str | None = None,
) -> MultiLabelData:
    """Read multi-label LIBSVM text: one sample per line,
    ``l1,l2,... idx:val idx:val ...``.

    Labels are 0-based integers separated by commas; the label list may be
    empty (the line then starts with a feature, or with whitespace).
    Feature indices are 1-based (column ``idx - 1`` of the dense ``X``);
    absent features are 0.  ``#`` starts a comment; blank lines are skipped.
    An Extreme-Classification header line ``N D K`` (three integers) is
    accepted as the first line and supplies ``num_features``/``num_labels``
    when those are not given (and ``N`` is checked).  ``num_features`` /
    ``num_labels`` default to the largest index seen; indices beyond given
    values are errors naming the line.
    """
    p = Path(path)
    _check_exists(p)
    for arg, v in (("num_features", num_features), ("num_labels", num_labels)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0):
            raise ValueError(f"{arg} must be a non-negative int for {p}, got {v!r}")
    rows_f: list[int] = []
    cols_f: list[int] = []
    vals_f: list[float] = []
    rows_l: list[int] = []
    cols_l: list[int] = []
    header: tuple[int, int, int] | None = None
    n = 0
    lineno = 0
    seen_content = False

    def fail(msg: str) -> DatasetFormatError:
        return DatasetFormatError(p, msg, lineno)

    for lineno, raw in _text_lines(p):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if not seen_content:
            seen_content = True
            if _XC_HEADER.match(line):
                header = tuple(int(v) for v in line.split())  # type: ignore[assignment]
                continue
        toks = line.split()
        start = 0
        if ":" not in toks[0]:
            start = 1
            for lab in toks[0].split(","):
                if lab == "":
                    continue
                try:
                    li = int(lab)
                except ValueError:
                    raise fail(f"label {lab!r} is not an integer") from None
                if li < 0:
                    raise fail(f"label {li} is negative (labels are 0-based)")
                if num_labels is not None and li >= num_labels:
                    raise fail(f"label {li} outside [0, {num_labels})")
                rows_l.append(n)
                cols_l.append(li)
        for tok in toks[start:]:
            idx, sep, val = tok.partition(":")
            if not sep:
                raise fail(f"feature {tok!r} is not 'index:value'")
            try:
                j = int(idx)
                v = float(val)
            except ValueError:
                raise fail(f"feature {tok!r} is not 'index:value' with an integer index and a number") from None
            if j < 1:
                raise fail(f"feature index {j} < 1 (indices are 1-based)")
            if num_features is not None and j > num_features:
                raise fail(f"feature index {j} > num_features={num_features}")
            if not math.isfinite(v):
                raise fail(f"feature {tok!r} is not finite")
            rows_f.append(n)
            cols_f.append(j - 1)
            vals_f.append(v)
        n += 1
    if header is not None:
        if header[0] != n:
            raise DatasetFormatError(p, f"header says {header[0]} samples but the file has {n}")
        num_features = header[1] if num_features is None else num_features
        num_labels = header[2] if num_labels is None else num_labels
        if cols_f and max(cols_f) >= num_features:
            raise DatasetFormatError(p, f"feature index {max(cols_f) + 1} > {num_features} (header)")
        if cols_l and max(cols_l) >= num_labels:
            raise DatasetFormatError(p, f"label {max(cols_l)} outside [0, {num_labels}) (header)")
    d = num_features if num_features is not None else (max(cols_f) + 1 if cols_f else 0)
    k = num_labels if num_labels is not None else (max(cols_l) + 1 if cols_l else 0)
    X = np.zeros((n, d), dtype=np.float32)
    if rows_f:
        X[np.asarray(rows_f), np.asarray(cols_f)] = np.asarray(vals_f, dtype=np.float64).astype(np.float32)
    Y = np.zeros((n, k), dtype=np.int8)
    if rows_l:
        Y[np.asarray(rows_l), np.asarray(cols_l)] = 1
    return MultiLabelData(
        torch.from_numpy(X),
        torch.from_numpy(Y),
        [str(i) for i in range(k)],
        [str(j + 1) for j in range(d)],
        name=name or p.stem,
        source=str(p),
    )


# --------------------------------------------------------------------------
# dispatch
# --------------------------------------------------------------------------
def default_data_dirs() -> list[Path]:
    """Directories searched for dataset names, in order: ``$BBAM_DATA_DIR``
    (``os.pathsep``-separated), ``<repo>/../shared/data``, ``./data``."""
    dirs: list[Path] = []
    env = os.environ.get("BBAM_DATA_DIR")
    if env:
        dirs += [Path(s) for s in env.split(os.pathsep) if s]
    dirs.append(Path(__file__).resolve().parents[3] / "shared" / "data")
    dirs.append(Path.cwd() / "data")
    return dirs


_LIBSVM_EXT = (".svm", ".libsvm", ".txt")


def _load_dir(d: Path, **kw: Any) -> MultiLabelData | None:
    npz = d / f"{d.name}.npz"
    if npz.is_file():
        return load_npz(npz)
    for tr_suffix, te_suffix in (("-train", "-test"), ("_train", "_test"), ("-training", "-test"), ("_training", "_test")):
        tr, te = d / f"{d.name}{tr_suffix}.arff", d / f"{d.name}{te_suffix}.arff"
        if tr.is_file() and te.is_file():
            return load_arff_pair(tr, te, **kw)
    arff = d / f"{d.name}.arff"
    if arff.is_file():
        return load_arff(arff, **kw)
    return None


def load_dataset(path_or_name: str | os.PathLike[str], **kw: Any) -> MultiLabelData:
    """Load a dataset by file path, directory or name.

    * ``"synthetic"`` -> :func:`make_synthetic` (``**kw`` passed on).
    * ``*.npz`` -> :func:`load_npz`; ``*.arff`` -> :func:`load_arff`;
      ``*.svm``/``*.libsvm``/``*.txt`` -> :func:`load_libsvm` (``**kw``
      passed on).
    * a directory ``<dir>/<name>``: ``<name>.npz``, else the pair
      ``<name>-train.arff``/``<name>-test.arff``, else ``<name>.arff``.
    * a bare name (e.g. ``"emotions"``): looked up as ``<root>/<name>/`` or
      ``<root>/<name>.npz`` in ``kw.pop("data_dir")`` if given, else in
      :func:`default_data_dirs`.
    """
    data_dir = kw.pop("data_dir", None)
    if isinstance(path_or_name, str) and path_or_name.lower() == "synthetic":
        return make_synthetic(**kw)
    p = Path(path_or_name)
    suffix = p.suffix.lower()
    if suffix == ".npz":
        return load_npz(p, **kw)
    if suffix == ".arff":
        return load_arff(p, **kw)
    if suffix in _LIBSVM_EXT:
        return load_libsvm(p, **kw)
    if p.is_dir():
        out = _load_dir(p, **kw)
        if out is None:
            raise FileNotFoundError(2, f"no {p.name}.npz, {p.name}-train/-test.arff or {p.name}.arff in directory {p}", str(p))
        return out
    if p.exists():
        raise DatasetFormatError(p, f"unsupported file extension {p.suffix!r} (expected .npz, .arff, .svm, .libsvm or .txt)")
    if suffix or len(p.parts) > 1:
        raise FileNotFoundError(2, f"dataset file not found: {p}", str(p))
    roots = [Path(data_dir)] if data_dir is not None else default_data_dirs()
    tried = []
    for root in roots:
        d = root / str(path_or_name)
        if d.is_dir():
            out = _load_dir(d, **kw)
            if out is not None:
                return out
        tried.append(str(d) + "/")
        f = root / f"{path_or_name}.npz"
        if f.is_file():
            return load_npz(f)
        tried.append(str(f))
    raise FileNotFoundError(2, f"dataset {str(path_or_name)!r} not found; looked in: {', '.join(tried)}", str(path_or_name))


# --------------------------------------------------------------------------
# iterative stratification
# --------------------------------------------------------------------------
def _fold_sizes(n: int, proportions: Sequence[float]) -> np.ndarray:
    props = np.asarray([float(x) for x in proportions], dtype=np.float64)
    if props.ndim != 1 or props.size == 0:
        raise ValueError("proportions must be a non-empty sequence of numbers")
    if not np.isfinite(props).all() or (props < 0).any():
        raise ValueError(f"proportions must be finite and >= 0, got {list(proportions)}")
    if abs(props.sum() - 1.0) > 1e-6:
        raise ValueError(f"proportions must sum to 1, got {props.sum():.6g}")
    exact = props / props.sum() * n
    sizes = np.floor(exact).astype(np.int64)
    rem = n - int(sizes.sum())
    if rem > 0:  # largest remainder, ties by fold order
        order = np.argsort(-(exact - sizes), kind="stable")
        sizes[order[:rem]] += 1
    return sizes


def _stratify(Y: np.ndarray, sizes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Fold id per row; Sechidis et al. 2011 with hard fold capacities."""
    n, k = Y.shape
    f = int(sizes.size)
    assign = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return assign
    order = rng.permutation(n)
    Yo = Y[order]
    counts = Yo.sum(0).astype(np.int64)
    # desired[j][l] scaled by n (exact integers): sizes_j * |D^l| - n * assigned_j^l
    desired = [[int(sizes[j]) * int(counts[l]) for l in range(k)] for j in range(f)]
    capacity = [int(s) for s in sizes]
    remaining = counts.copy()
    members = [order[np.flatnonzero(Yo[:, l])].tolist() for l in range(k)]
    labels_of: dict[int, list[int]] = {}
    rows, cols = np.nonzero(Y)
    for r_, c_ in zip(rows.tolist(), cols.tolist()):
        labels_of.setdefault(r_, []).append(c_)
    while True:
        live = np.flatnonzero(remaining > 0)
        if live.size == 0:
            break
        rmin = remaining[live].min()
        ties = live[remaining[live] == rmin]
        lab = int(ties[rng.integers(ties.size)]) if ties.size > 1 else int(ties[0])
        for i in members[lab]:
            if assign[i] >= 0:
                continue
            best: list[int] = []
            best_key: tuple[int, int] | None = None
            for j in range(f):
                if capacity[j] <= 0:
                    continue
                key = (desired[j][lab], capacity[j])
                if best_key is None or key > best_key:
                    best_key, best = key, [j]
                elif key == best_key:
                    best.append(j)
            j = best[0] if len(best) == 1 else best[int(rng.integers(len(best)))]
            assign[i] = j
            capacity[j] -= 1
            dj = desired[j]
            for l2 in labels_of[i]:
                dj[l2] -= n
                remaining[l2] -= 1
    rest = order[assign[order] < 0]
    if rest.size:
        fill = np.repeat(np.arange(f), np.maximum(np.asarray(capacity), 0))
        assert fill.size == rest.size
        assign[rest] = fill[rng.permutation(fill.size)]
    return assign


def _labels_numpy(Y: Any) -> np.ndarray:
    if isinstance(Y, MultiLabelData):
        Y = Y.Y
    if isinstance(Y, torch.Tensor):
        Y = Y.detach().cpu().numpy()
    Y = np.asarray(Y)
    if Y.ndim != 2:
        raise ValueError(f"Y must be 2-D [N, K], got shape {Y.shape}")
    return Y == 1


def iterative_stratification(
    Y: torch.Tensor | np.ndarray, proportions: Sequence[float], seed: int = 0
) -> list[torch.Tensor]:
    """Iterative stratification for multi-label data (Sechidis, Tsoumakas &
    Vlahavas, ECML-PKDD 2011, Algorithm 1).

    Repeatedly takes the label with the fewest not-yet-assigned positive
    samples (ties at random) and deals each of those samples to the fold that
    most lacks positives of that label (ties: the fold lacking the most
    samples, then at random); samples with no positive label fill the
    remaining places at random.  Unlike the paper, fold sizes are hard
    capacities -- ``round(N * p_j)`` by largest remainder, summing to
    ``N`` -- so sizes match the proportions exactly.  Only ``Y == 1`` counts
    as positive.  Deterministic given ``seed``.

    Returns one sorted LongTensor of row indices per fold.
    """
    Yb = _labels_numpy(Y)
    sizes = _fold_sizes(Yb.shape[0], proportions)
    assign = _stratify(Yb, sizes, np.random.default_rng(seed))
    return [torch.from_numpy(np.flatnonzero(assign == j).astype(np.int64)) for j in range(sizes.size)]


def _check_ratio(name: str, value: Any, low_open: bool, high_closed: bool) -> float:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    v = float(value) if ok else float("nan")
    lo_ok = v > 0 if low_open else v >= 0
    hi_ok = v <= 1 if high_closed else v < 1
    if not (ok and math.isfinite(v) and lo_ok and hi_ok):
        interval = ("(" if low_open else "[") + "0, 1" + ("]" if high_closed else ")")
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
    return v


def _sub_seed(seed: int, stage: int) -> int:
    return int(np.random.SeedSequence([int(seed), stage]).generate_state(1)[0])


def split_indices(
    data: MultiLabelData,
    lb_ratio: float,
    val_ratio: float = 0.1,
    test_ratio: float = 0.2,
    seed: int = 0,
    min_val_size: int = 0,
    max_val_ratio: float = 0.5,
) -> dict[str, torch.Tensor]:
    """Split one run's samples into ``labeled``/``unlabeled``/``val``/``test``.

    * test: the official ``data.test_idx`` when present (``test_ratio`` is
      then ignored), else an iterative-stratified ``test_ratio`` share;
    * the rest is the training pool (with an official split: every sample
      not in ``test_idx``);
    * val: an iterative-stratified share of the pool (model selection never
      looks at the test set) of ``max(val_ratio * pool, min_val_size)`` samples,
      at most ``max_val_ratio * pool``: a validation split of a few dozen rows
      ranks checkpoints by noise, so small pools give it a larger share;
    * labeled: an iterative-stratified ``lb_ratio`` share of what remains
      (at least one sample); unlabeled: the remainder (its labels are not for
      the learner).

    All stages are drawn from ``seed`` (one labeled split per seed).  Returns
    sorted, disjoint LongTensors that together cover ``range(N)``.
    """
    lb = _check_ratio("lb_ratio", lb_ratio, low_open=True, high_closed=True)
    vr = _check_ratio("val_ratio", val_ratio, low_open=False, high_closed=False)
    tr = _check_ratio("test_ratio", test_ratio, low_open=False, high_closed=False)
    Yb = _labels_numpy(data.Y)
    n = Yb.shape[0]
    if data.test_idx is not None:
        test = np.sort(data.test_idx.numpy())
        pool = np.setdiff1d(np.arange(n), test)
    else:
        a = _stratify(Yb, _fold_sizes(n, [1.0 - tr, tr]), np.random.default_rng(_sub_seed(seed, 0)))
        test, pool = np.flatnonzero(a == 1), np.flatnonzero(a == 0)
    if pool.size == 0:
        raise ValueError(f"dataset {data.name!r}: no training samples left after the test split")
    if min_val_size < 0:
        raise ValueError(f"min_val_size must be >= 0, got {min_val_size}")
    mvr = _check_ratio("max_val_ratio", max_val_ratio, low_open=False, high_closed=False)
    if vr > 0:  # never below val_ratio; min_val_size raises it up to max_val_ratio
        vr = max(vr, min(min_val_size / pool.size, mvr))
    a = _stratify(Yb[pool], _fold_sizes(pool.size, [1.0 - vr, vr]), np.random.default_rng(_sub_seed(seed, 1)))
    val, rest = pool[a == 1], pool[a == 0]
    if rest.size == 0:
        raise ValueError(f"dataset {data.name!r}: no training samples left after the validation split (val_ratio={vr})")
    n_lab = max(1, int(np.floor(lb * rest.size + 0.5)))
    sizes = np.array([n_lab, rest.size - n_lab], dtype=np.int64)
    a = _stratify(Yb[rest], sizes, np.random.default_rng(_sub_seed(seed, 2)))
    labeled, unlabeled = rest[a == 0], rest[a == 1]
    t = lambda v: torch.from_numpy(np.sort(v).astype(np.int64))  # noqa: E731
    return {"labeled": t(labeled), "unlabeled": t(unlabeled), "val": t(val), "test": t(test)}
