"""bbam's custom operators: the public Python entry points, their fake (meta)
kernels and their autograd formulas, registered through ``torch.library``.

The schemas live in ``csrc/ops.cpp`` (``TORCH_LIBRARY(bbam, m)``); the CPU and CUDA
kernels are registered by the compiled extension. Every op is checked against
``bbam.reference`` (the readable eager version) and with ``torch.library.opcheck``.

Targets hold ``1`` (positive), ``0`` (negative), ``-1`` (unknown). The kernels take int8;
every entry point also accepts bool, other integer and floating targets and converts
them with :func:`as_targets` (one extra pass with a value check; int8 is the fast path).
Coefficients ``coef_a``, ``coef_b`` are ``[2, K]``: row 0 negatives, row 1 positives;
the identity is ``a = 1, b = 0``.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import _extension  # noqa: F401  (loads bbam._C: schemas + kernels)

__all__ = ["label_angle_stats", "merge_stats", "bbam_loss", "angle_transform", "negative_select", "cap_select",
           "positive_rank_stats", "as_targets", "REDUCTIONS"]

REDUCTIONS = {"none": 0, "sum": 1, "mean": 2}

Stats = Tuple[Tensor, Tensor, Tensor]


def as_targets(targets: Tensor, where: str = "targets", check_int8: bool = False) -> Tensor:
    """Targets as the int8 the kernels take: ``1`` positive, ``0`` negative, ``-1`` unknown.

    * int8: returned as is (no copy; the kernels check the values in their own pass). With
      ``check_int8`` (for pure-PyTorch consumers, which have no such pass) the values are
      checked here too, in one pass without temporaries, on CPU only (on CUDA the check
      would synchronise every call);
    * bool: ``True`` -> 1, ``False`` -> 0 (no unknowns);
    * other integer and floating dtypes: values must be exactly -1, 0 or 1 (e.g. a float
      ``0/1`` label matrix); anything else (0.5, 2, NaN) raises ``ValueError`` naming
      ``where`` and the first bad value. This check reads the values on the host, so
      pass int8 inside compiled or CUDA-graph-captured code.

    Raises ``TypeError`` for a non-tensor or a complex tensor.
    """
    if not isinstance(targets, Tensor):
        raise TypeError(f"{where}: 'targets' must be a torch.Tensor, got {type(targets).__name__}")
    if targets.dtype == torch.int8:
        if check_int8 and not targets.is_cuda and targets.numel():
            low, high = (int(v) for v in torch.aminmax(targets))
            if low < -1 or high > 1:
                raise ValueError(f"{where}: 'targets' must hold only -1 (unknown), 0 (negative) or 1 (positive); "
                                 f"found {low if low < -1 else high} (dtype {targets.dtype})")
        return targets
    if targets.dtype == torch.bool:
        return targets.to(torch.int8)
    if targets.is_complex():
        raise TypeError(f"{where}: 'targets' must be int8, bool, integer or floating, got {targets.dtype}")
    valid = (targets == 0) | (targets == 1)
    if targets.dtype.is_signed:  # an unsigned -1 would wrap (uint8: 255 == -1)
        valid |= targets == -1
    if targets.numel() and not bool(valid.all()):
        bad = targets[~valid][0].item()
        raise ValueError(f"{where}: 'targets' must hold only -1 (unknown), 0 (negative) or 1 (positive); "
                         f"found {bad!r} (dtype {targets.dtype})")
    return targets.to(torch.int8)


def _opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------------------
# label_angle_stats
# ---------------------------------------------------------------------------
def label_angle_stats(features: Tensor, prototypes: Tensor, targets: Tensor) -> Stats:
    """Per-label Gaussian statistics of the angles between samples and label prototypes.

    Fused and tiled over ``N``: the ``N x K`` angle matrix is never materialised.

    Args:
        features: ``[N, D]`` float (fp32/fp64/fp16/bf16) sample features ``z_i`` (raw,
            not necessarily normalised).
        prototypes: ``[K, D]`` float label prototypes ``p_k``.
        targets: ``[N, K]`` int8 (or convertible, see :func:`as_targets`), ``1`` positive,
            ``0`` negative, ``-1`` ignored.

    Returns:
        ``(count, mean, m2)``, each ``[2, K]`` float64 on the features' device: for
        polarity ``s`` (row 0 = negatives, row 1 = positives) and label ``k``, the
        number of samples with ``targets[:, k] == s``, the mean of their angles
        ``beta_ik = acos(clamp(<z_i/|z_i|, p_k/|p_k|>, -1, 1))`` (normalisation as
        ``F.normalize``, eps 1e-12) and the sum of squared deviations from that
        mean (M2; unbiased variance = ``m2 / max(count - 1, 1)``). An empty group has
        count 0, mean 0, m2 0. Chunks of samples combine exactly with
        :func:`merge_stats`. No gradient flows (statistics are buffers).

    Raises:
        RuntimeError naming the argument on bad shapes, dtypes, devices, target values
        outside ``{-1, 0, 1}``, or NaN/Inf features.
    """
    targets = as_targets(targets, "label_angle_stats")
    return torch.ops.bbam.label_angle_stats.default(features.detach(), prototypes.detach(), targets)


@torch.library.register_fake("bbam::label_angle_stats")
def _label_angle_stats_fake(features, prototypes, targets):
    torch._check(features.dim() == 2, lambda: "label_angle_stats: 'features' must be 2-D [N, D]")
    torch._check(prototypes.dim() == 2, lambda: "label_angle_stats: 'prototypes' must be 2-D [K, D]")
    torch._check(targets.dim() == 2, lambda: "label_angle_stats: 'targets' must be 2-D [N, K]")
    K = prototypes.shape[0]
    return tuple(features.new_empty((2, K), dtype=torch.float64) for _ in range(3))


def merge_stats(*parts: Sequence[Tensor]) -> Stats:
    """Merge ``(count, mean, m2)`` statistics of disjoint sample sets (Chan et al.).

    Args:
        *parts: any number of ``(count, mean, m2)`` triples of equal shape (e.g. the
            ``[2, K]`` outputs of :func:`label_angle_stats` on chunks or ranks).

    Returns:
        ``(count, mean, m2)`` of the union, equal (up to rounding) to one pass over
        all samples. Empty groups (count 0) are neutral.
    """
    if not parts:
        raise ValueError("merge_stats: expected at least one (count, mean, m2) triple")
    count, mean, m2 = (t.to(torch.float64) for t in parts[0])
    for i, part in enumerate(parts[1:], start=1):
        if len(part) != 3:
            raise ValueError(f"merge_stats: part {i} must be a (count, mean, m2) triple, got {len(part)} items")
        n_b, mean_b, m2_b = (t.to(torch.float64) for t in part)
        n = count + n_b
        safe_n = torch.where(n > 0, n, torch.ones_like(n))
        delta = mean_b - mean
        mean = mean + delta * (n_b / safe_n)
        m2 = m2 + m2_b + delta * delta * (count * n_b / safe_n)
        count = n
    return count, mean, m2


# ---------------------------------------------------------------------------
# bbam_loss
# ---------------------------------------------------------------------------
def _reduction_code(reduction: str) -> int:
    try:
        return REDUCTIONS[reduction]
    except KeyError:
        raise ValueError(f"bbam_loss: argument 'reduction' must be one of {list(REDUCTIONS)}, got {reduction!r}") from None


def bbam_loss(
    cos: Tensor,
    targets: Tensor,
    coef_a: Tensor,
    coef_b: Tensor,
    *,
    weight: Optional[Tensor] = None,
    margin: float = 0.4,
    scale: float = 20.0,
    reduction: str = "sum",
) -> Tensor:
    """Balanced Binary Angular Margin loss (BAM loss when the coefficients are the identity).

    Per element, with ``y = targets`` and ``a, b`` the coefficients of the element's
    polarity (row ``y`` of ``coef_a``/``coef_b``)::

        theta  = acos(clamp(cos, -1 + eps, 1 - eps))        (eps 1e-7 fp32, 1e-12 fp64)
        phi    = cos(a * theta + b)        (exactly ``cos`` where a == 1 and b == 0)
        logit  = scale * (phi - y * margin)
        loss   = weight * BCEWithLogits(logit, y)      (stable softplus form)

    Elements with ``y == -1`` contribute 0 (and get 0 gradient).

    Args:
        cos: ``[B, K]`` cosines between features and classifier weights; fp32, fp64,
            fp16 or bf16. The only input that receives a gradient:
            ``dL/dcos = w * (sigmoid(logit) - y) * scale * a * sin(theta') / sin(theta)``,
            finite at ``|cos| = 1``.
        targets: ``[B, K]`` int8 in ``{-1, 0, 1}`` (or convertible, see :func:`as_targets`).
        coef_a, coef_b: ``[2, K]`` float, row 0 negatives, row 1 positives (no gradient).
        weight: optional ``[B, K]`` element weights in ``[0, 1]`` (negative sampling x
            pseudo-label confidence; bool accepted); no gradient.
        margin: angular margin ``m`` (0.4 images, 0.2 text).
        scale: logit scale ``s`` (the method: 20 images, 10 text).
        reduction: ``"sum"`` (the method's), ``"mean"`` (sum / (B*K), like torch's
            losses) or ``"none"`` (``[B, K]``).

    Returns:
        The loss in the accumulation type: float32 for fp32/fp16/bf16 ``cos``
        (AMP-safe: a sum over many elements never overflows fp16), float64 for fp64.
    """
    targets = as_targets(targets, "bbam_loss")
    args = (cos, targets, coef_a.detach(), coef_b.detach(), None if weight is None else weight.detach(),
            float(margin), float(scale), _reduction_code(reduction))
    if torch.is_grad_enabled() and cos.requires_grad:
        # Training: one pass computes the loss and d loss / d cos; backward is a multiply.
        loss, _ = torch.ops.bbam._bbam_loss_with_grad.default(*args)
        return loss
    return torch.ops.bbam.bbam_loss.default(*args)


@torch.library.register_fake("bbam::bbam_loss")
def _bbam_loss_fake(cos, targets, coef_a, coef_b, weight, margin, scale, reduction):
    torch._check(cos.dim() == 2, lambda: "bbam_loss: 'cos' must be 2-D [B, K]")
    torch._check(targets.shape == cos.shape, lambda: "bbam_loss: 'targets' must have the shape of 'cos'")
    opmath = _opmath(cos.dtype)
    if reduction == 0:
        return cos.new_empty(cos.shape, dtype=opmath)
    return cos.new_empty((), dtype=opmath)


@torch.library.register_fake("bbam::_bbam_loss_with_grad")
def _bbam_loss_with_grad_fake(cos, targets, coef_a, coef_b, weight, margin, scale, reduction):
    return (_bbam_loss_fake(cos, targets, coef_a, coef_b, weight, margin, scale, reduction),
            cos.new_empty(cos.shape, dtype=_opmath(cos.dtype)))


def _bbam_loss_with_grad_setup_context(ctx, inputs, output):
    _, grad_cos = output
    ctx.save_for_backward(grad_cos)
    ctx.mark_non_differentiable(grad_cos)
    ctx.cos_dtype = inputs[0].dtype


def _bbam_loss_with_grad_backward(ctx, grad_loss, _unused):
    # d total / d cos from the forward pass, in opmath (already / (B*K) for mean): the
    # upstream factor (e.g. a GradScaler's 2**16) is applied before rounding to fp16/bf16.
    (dloss_dcos,) = ctx.saved_tensors
    grad_cos = None
    if ctx.needs_input_grad[0]:
        grad_cos = (grad_loss.to(dloss_dcos.dtype) * dloss_dcos).to(ctx.cos_dtype)
    return grad_cos, None, None, None, None, None, None, None


torch.library.register_autograd("bbam::_bbam_loss_with_grad", _bbam_loss_with_grad_backward,
                                setup_context=_bbam_loss_with_grad_setup_context)


@torch.library.register_fake("bbam::bbam_loss_backward")
def _bbam_loss_backward_fake(grad, cos, targets, coef_a, coef_b, weight, margin, scale, reduction):
    return cos.new_empty(cos.shape)


def _bbam_loss_setup_context(ctx, inputs, output):
    cos, targets, coef_a, coef_b, weight, margin, scale, reduction = inputs
    ctx.save_for_backward(cos, targets, coef_a, coef_b, weight)
    ctx.margin, ctx.scale, ctx.reduction = margin, scale, reduction


def _bbam_loss_backward(ctx, grad):
    cos, targets, coef_a, coef_b, weight = ctx.saved_tensors
    grad_cos = None
    if ctx.needs_input_grad[0]:
        grad_cos = torch.ops.bbam.bbam_loss_backward.default(
            grad, cos, targets, coef_a, coef_b, weight, ctx.margin, ctx.scale, ctx.reduction
        )
    # No gradient to targets, coefficients (buffers) or weights (masks).
    return grad_cos, None, None, None, None, None, None, None


torch.library.register_autograd("bbam::bbam_loss", _bbam_loss_backward, setup_context=_bbam_loss_setup_context)


# ---------------------------------------------------------------------------
# angle_transform
# ---------------------------------------------------------------------------
def angle_transform(cos: Tensor, coef_a: Tensor, coef_b: Tensor, targets: Optional[Tensor] = None) -> Tensor:
    """BBAM angle transformation ``phi = cos(a * acos(cos) + b)``.

    Args:
        cos: ``[B, K]`` cosines (fp32/fp64/fp16/bf16); differentiable.
        coef_a, coef_b: ``[2, K]`` coefficients, row 0 negatives, row 1 positives.
        targets: optional ``[B, K]`` int8. ``1`` uses the positive row, ``0`` the
            negative row, ``-1`` (and ``targets=None``, i.e. prediction time) the
            inference transform: the average of both,
            ``theta' = 1/2 (a0 theta + b0) + 1/2 (a1 theta + b1)``.

    Returns:
        ``[B, K]`` ``phi`` in ``cos``'s dtype. Where the selected coefficients are the
        identity (a = 1, b = 0) ``phi == cos`` exactly. The angle path clamps ``cos``
        to ``[-1 + eps, 1 - eps]`` so values and gradients stay finite at ``|cos| = 1``.
    """
    if targets is not None:
        targets = as_targets(targets, "angle_transform")
    return torch.ops.bbam.angle_transform.default(cos, coef_a.detach(), coef_b.detach(), targets)


@torch.library.register_fake("bbam::angle_transform")
def _angle_transform_fake(cos, coef_a, coef_b, targets):
    torch._check(cos.dim() == 2, lambda: "angle_transform: 'cos' must be 2-D [B, K]")
    return cos.new_empty(cos.shape)


@torch.library.register_fake("bbam::angle_transform_backward")
def _angle_transform_backward_fake(grad, cos, coef_a, coef_b, targets):
    return cos.new_empty(cos.shape)


def _angle_transform_setup_context(ctx, inputs, output):
    cos, coef_a, coef_b, targets = inputs
    ctx.save_for_backward(cos, coef_a, coef_b, targets)


def _angle_transform_backward(ctx, grad):
    cos, coef_a, coef_b, targets = ctx.saved_tensors
    grad_cos = None
    if ctx.needs_input_grad[0]:
        grad_cos = torch.ops.bbam.angle_transform_backward.default(grad, cos, coef_a, coef_b, targets)
    return grad_cos, None, None, None


torch.library.register_autograd(
    "bbam::angle_transform", _angle_transform_backward, setup_context=_angle_transform_setup_context
)


# ---------------------------------------------------------------------------
# negative_select
# ---------------------------------------------------------------------------
def negative_select(features: Tensor, prototypes: Tensor, targets: Tensor, num_kept: Tensor,
                    sample_size: int = 0, band_z: float = 5.0) -> Tensor:
    """Prototype negative sampling mask (docs/METHOD.md), exact; the engine of
    :class:`bbam.sampling.NegativeSampler`'s ``"exact"`` backend.

    Args:
        features: ``[N, D]`` float (fp32/fp64/fp16/bf16) sample features ``z_i`` (raw).
        prototypes: ``[K, D]`` float label prototypes ``p_k`` (any norm). Rows of labels
            that need no ranking (``num_kept[k]`` 0 or all negatives) are not read.
        targets: ``[N, K]`` int8 (or convertible, see :func:`as_targets`), ``1`` positive,
            ``0`` negative, ``-1`` unknown.
        num_kept: ``[K]`` int64, negatives to keep per label, ``0 <= num_kept[k] <=``
            the label's negative count.
        sample_size: rows sampled (seeded, with replacement) to place each label's band
            of candidate cosines; ``0``: no sample (every negative is a candidate). Only
            the speed depends on it, never the result.
        band_z: band half-width in binomial standard deviations of the sampled rank
            (``>= 0``). Only the speed depends on it: a label whose threshold falls
            outside its band is scanned again.

    Returns:
        ``[N, K]`` bool: every positive, and for each label ``k`` its ``num_kept[k]``
        negatives with the largest cosine ``<z_i / max(|z_i|, eps), p_k / max(|p_k|, eps)>``
        (eps 1e-12, computed in float32, float64 for float64 features); ties broken
        towards the lower row, whatever the thread count. Unknowns are never selected.
        No ``N x K`` score matrix is materialised. No gradient.

    Raises:
        RuntimeError naming the argument on bad shapes, dtypes, devices, target values
        outside ``{-1, 0, 1}``, ``num_kept`` out of range, non-finite features or
        (searched labels') prototypes.
    """
    targets = as_targets(targets, "negative_select")
    return torch.ops.bbam.negative_select.default(features.detach(), prototypes.detach(), targets, num_kept,
                                                  int(sample_size), float(band_z))


@torch.library.register_fake("bbam::negative_select")
def _negative_select_fake(features, prototypes, targets, num_kept, sample_size, band_z):
    torch._check(features.dim() == 2, lambda: "negative_select: 'features' must be 2-D [N, D]")
    torch._check(targets.dim() == 2, lambda: "negative_select: 'targets' must be 2-D [N, K]")
    return features.new_empty((features.shape[0], targets.shape[1]), dtype=torch.bool)


@torch.library.register_fake("bbam::_label_counts")
def _label_counts_fake(targets):
    torch._check(targets.dim() == 2, lambda: "_label_counts: 'targets' must be 2-D [N, K]")
    return targets.new_empty((3, targets.shape[1]), dtype=torch.int64)


# ---------------------------------------------------------------------------
# cap_select (CPU kernel)
# ---------------------------------------------------------------------------
def cap_select(scores: Tensor, ranks: Tensor, pos_keep: Tensor, not_neg: Tensor,
               unknown_outside_mask: bool = False) -> Tuple[Tensor, Tensor, Tensor]:
    """CAP pseudo-labels, confidence mask and thresholds by per-label selection (the CPU
    engine of :mod:`bbam.cap`; CPU tensors only).

    Args:
        scores: ``[N, K]`` float32 / float64 scores, no NaN. Label-major storage (the
            transpose of a contiguous ``[K, N]`` tensor) is read without a copy.
        ranks: ``[K]`` int64 in ``[0, N]``: the (1-based) rank of each label's threshold.
        pos_keep: ``[K]`` int64 in ``[0, ranks[k]]``: pseudo-positives are kept when among
            the first ``pos_keep[k]`` of their label.
        not_neg: ``[K]`` int64 in ``[0, N]``: pseudo-negatives are kept when NOT among the
            first ``not_neg[k]``.
        unknown_outside_mask: return the targets the loss trains on: ``-1`` where the mask
            is False, and an empty ``[0, K]`` mask (half the output memory).

    "First" is the stable descending order of a label's scores: larger first, the lower
    row first among equal scores.

    Returns:
        ``(targets [N, K] int8, mask [N, K] bool, thresholds [K] dtype of scores)``:
        ``thresholds[k]`` is the score of rank ``ranks[k]`` (``+inf`` when 0),
        ``targets = (scores >= thresholds) & (ranks > 0)``, and ``mask`` the confident
        entries as above. Exact (no sort); the same result for any thread count.

    Raises:
        ValueError for NaN scores or tensors not on the CPU; RuntimeError naming the
        argument on bad shapes, dtypes or ranges.
    """
    _check_cpu("cap_select", scores=scores, ranks=ranks, pos_keep=pos_keep, not_neg=not_neg)
    return torch.ops.bbam.cap_select.default(scores.detach(), ranks, pos_keep, not_neg, bool(unknown_outside_mask))


def _check_cpu(op: str, **tensors: Tensor) -> None:
    """The CPU-only kernels: a clear error instead of the dispatcher's missing-backend one."""
    for name, t in tensors.items():
        if isinstance(t, Tensor) and t.device.type != "cpu":
            raise ValueError(f"{op}: argument '{name}' must be a CPU tensor (a CPU kernel; on other devices "
                             f"bbam.cap and bbam.metrics use their torch paths), got device {t.device}")


@torch.library.register_fake("bbam::cap_select")
def _cap_select_fake(scores, ranks, pos_keep, not_neg, unknown_outside_mask):
    torch._check(scores.dim() == 2, lambda: "cap_select: 'scores' must be 2-D [N, K]")
    n, k = scores.shape
    return (scores.new_empty((n, k), dtype=torch.int8),
            scores.new_empty((0 if unknown_outside_mask else n, k), dtype=torch.bool), scores.new_empty((k,)))


# ---------------------------------------------------------------------------
# positive_rank_stats (CPU kernel)
# ---------------------------------------------------------------------------
def positive_rank_stats(scores: Tensor, targets: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per row, summaries of the ranks of its positive entries: the sufficient statistics
    of average precision (rows = labels) and of LRAP, ranking loss and coverage (rows =
    samples). The CPU engine of :mod:`bbam.metrics`; CPU tensors only.

    Args:
        scores: ``[L, M]`` float32 / float64, no NaN (label-major rows: pass ``s.T``).
        targets: ``[L, M]`` bool, True = positive.

    For a positive ``j`` of row ``i``: ``rank_j`` = entries of the row scored ``>=`` it
    (ties count against it), ``pos_rank_j`` = positives of the row scored ``>=`` it.

    Returns:
        ``(precision_sum [L] float64, misordered [L] int64, deepest [L] int64,
        positives [L] int64)``: ``sum_j pos_rank_j / rank_j``, ``sum_j (rank_j -
        pos_rank_j)`` (negatives scored ``>=`` a positive), ``max_j rank_j`` (0 without
        positives) and the number of positives. ``O(M log P)`` per row, no sort of the
        row; the same result for any thread count.

    Raises:
        ValueError for NaN scores or tensors not on the CPU; RuntimeError naming the
        argument on bad shapes or dtypes.
    """
    _check_cpu("positive_rank_stats", scores=scores, targets=targets)
    return torch.ops.bbam.positive_rank_stats.default(scores.detach(), targets.detach())


@torch.library.register_fake("bbam::positive_rank_stats")
def _positive_rank_stats_fake(scores, targets):
    torch._check(scores.dim() == 2, lambda: "positive_rank_stats: 'scores' must be 2-D [L, M]")
    n = scores.shape[0]
    return (scores.new_empty((n,), dtype=torch.float64), scores.new_empty((n,), dtype=torch.int64),
            scores.new_empty((n,), dtype=torch.int64), scores.new_empty((n,), dtype=torch.int64))
