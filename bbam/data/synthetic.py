"""The synthetic benchmark: :func:`make_synthetic`, deterministic long-tailed multi-label
data with cluster structure (the default dataset; needs no files)."""

from __future__ import annotations

import math

import numpy as np
import torch

from .container import MultiLabelData

__all__ = ["make_synthetic"]

# Elements of an (N, K) or (N, features) float64 block held at once: large datasets are
# generated in row chunks (the same random stream; the default size fits in one chunk).
_CHUNK_ELEMENTS = 1 << 24


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

    # 3. labels: each label's top-m sub-topic scores among its topic's members
    g = rng.standard_normal((n, g_dim))
    U = rng.standard_normal((k, g_dim))
    U /= np.linalg.norm(U, axis=1, keepdims=True)
    order_topics = np.argsort(-topic_count, kind="stable")
    label_topic = np.array([lab % t_count for lab in range(k)])
    too_rare = freq * n > 0.9 * topic_count[label_topic]
    label_topic[too_rare] = int(order_topics[0])
    jitter = _member_jitter(rng, A, label_topic, chunk_rows=max(1, _CHUNK_ELEMENTS // k))
    Y = np.zeros((n, k), dtype=np.int8)
    topic_members = {t: np.flatnonzero(A[:, t]) for t in np.unique(label_topic)}  # once per topic, not label
    topic_styles = {t: g[rows] for t, rows in topic_members.items()}
    for lab in range(k):
        members = topic_members[label_topic[lab]]
        if members.size == 0:
            continue
        m = int(round(freq[lab] * n))
        m = min(max(m, min_positives, 1), max(1, int(0.9 * members.size)))
        score = topic_styles[label_topic[lab]] @ U[lab] + jitter[lab]
        Y[members[_top_m(score, m)], lab] = 1

    # 4. latent code (row chunks: no [N, K] float64 copy of Y)
    M = rng.standard_normal((t_count, r))
    M /= np.linalg.norm(M, axis=1, keepdims=True)
    Dl = rng.standard_normal((k, r))
    Dl /= np.linalg.norm(Dl, axis=1, keepdims=True)
    chunk = max(1, _CHUNK_ELEMENTS // max(k, 1))
    Z = topic_sep * (A @ M) + np.concatenate(
        [label_sep * (Y[i:i + chunk].astype(np.float64) @ Dl) for i in range(0, n, chunk)])
    Z += latent_noise * rng.standard_normal((n, r))

    # 5. features
    h = int(hidden_dim)
    W1 = rng.standard_normal((r, h))
    b1 = 0.5 * rng.standard_normal(h)
    W2 = rng.standard_normal((h, d))
    chunk = max(1, _CHUNK_ELEMENTS // max(h, d))
    X = np.concatenate([np.tanh(Z[i:i + chunk] @ W1 / math.sqrt(r) + b1) @ W2 / math.sqrt(h)
                        for i in range(0, n, chunk)])
    del Z
    for i in range(0, n, chunk):  # the same normals as one (n, d) draw, without its copy
        X[i:i + chunk] += feature_noise * rng.standard_normal((min(chunk, n - i), d))
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


def _member_jitter(rng: np.random.Generator, A: np.ndarray, label_topic: np.ndarray,
                   chunk_rows: int) -> list[np.ndarray]:
    """Per label ``lab``, the noise ``0.5 * e[members, lab]`` of ``e ~ N(0, 1)^{N x K}`` at the rows
    of its topic's members (``A[:, label_topic[lab]]``), drawn in row chunks: the same normals
    as one ``(N, K)`` draw, holding only the members' entries instead of all ``N x K``."""
    n, k = A.shape[0], len(label_topic)
    parts: list[list[np.ndarray]] = [[] for _ in range(k)]
    topics = [(topic, np.flatnonzero(label_topic == topic)) for topic in np.unique(label_topic)]
    buffer = np.empty((min(chunk_rows, n), k))
    for start in range(0, n, chunk_rows):
        e = buffer[:min(chunk_rows, n - start)]
        rng.standard_normal(out=e)  # the same normals as a fresh (rows, k) draw, without the allocation
        block = A[start:start + chunk_rows]
        for topic, labels in topics:
            taken = 0.5 * e[np.ix_(np.flatnonzero(block[:, topic]), labels)]  # only the members' entries
            for j, lab in enumerate(labels):
                parts[lab].append(taken[:, j])
    return [np.concatenate(p) if p else np.zeros(0) for p in parts]


def _top_m(score: np.ndarray, m: int) -> np.ndarray:
    """Positions of the ``m`` largest scores, ties to the lower position: the set of
    ``np.argsort(-score, kind="stable")[:m]``, by selection (``np.partition``) instead of a sort."""
    if m <= 0:
        return np.zeros(0, dtype=np.int64)
    if m >= score.size:
        return np.arange(score.size)
    kth = np.partition(score, score.size - m)[score.size - m]  # the m-th largest value
    above = np.flatnonzero(score > kth)
    ties = np.flatnonzero(score == kth)[: m - above.size]
    return np.sort(np.concatenate([above, ties]))
