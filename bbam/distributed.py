"""Globally exact statistics across ``torch.distributed`` ranks.

Each rank holds a shard of the samples. These helpers combine the shards so that
every rank obtains the values one process would compute on all samples:

* :func:`global_prototypes` — all-reduce of per-label feature sums and counts;
* :func:`global_label_angle_stats` — each rank's fused ``(count, mean, M2)``,
  all-gathered and merged in rank order with Chan's formula (:func:`bbam.ops.merge_stats`);
* :func:`gather_rows` — all-gather of variable-length row shards (padding removed),
  for exact global rank selection (CAP thresholds, negative-sampling thresholds)
  and for metrics over a whole evaluation split.

Without an initialised process group (or with one rank) every helper is the
identity / the local computation. Library layer: no Hydra, no I/O.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import Tensor

from .ops import label_angle_stats, merge_stats
from .prototypes import label_prototypes

__all__ = ["world_size", "rank", "is_distributed", "gather_rows", "global_prototypes", "global_label_angle_stats",
           "shard_indices", "broadcast_object", "broadcast_tensor", "gather_in_order", "sum_over_ranks", "barrier",
           "all_ranks"]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def barrier() -> None:
    """Wait for every rank (nothing outside a process group)."""
    if is_distributed():
        dist.barrier()


def all_ranks(flag: bool) -> bool:
    """Whether ``flag`` holds on every rank (``flag`` itself outside a process group)."""
    if not is_distributed():
        return bool(flag)
    on_gpu = dist.get_backend() == "nccl"  # nccl reduces device tensors only
    t = torch.tensor([int(bool(flag))], device=torch.device("cuda", torch.cuda.current_device()) if on_gpu else None)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def sum_over_ranks(value: float, device=None) -> float:
    """The sum of a number over the ranks (one all-reduce in float64); the value itself on one process."""
    if world_size() == 1:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())


def shard_indices(n: int, world: Optional[int] = None, which: Optional[int] = None, device=None) -> Tensor:
    """Rows ``which, which + world, ...`` of ``range(n)``: this rank's shard (interleaved)."""
    world = world_size() if world is None else world
    which = rank() if which is None else which
    return torch.arange(which, n, world, device=device)


def gather_rows(local: Tensor) -> List[Tensor]:
    """All-gather ``[n_r, ...]`` tensors whose first dimension differs across ranks.

    Returns the list of every rank's tensor (rank order), with the padding used for the
    collective removed. Without a process group: ``[local]``.
    """
    if not is_distributed():
        return [local]
    device = local.device
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([local.shape[0]], dtype=torch.long, device=device))
    sizes = [int(s.item()) for s in sizes]
    padded = local.new_zeros((max(sizes), *local.shape[1:]))
    padded[: local.shape[0]] = local
    out = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(out, padded.contiguous())
    return [t[:n] for t, n in zip(out, sizes)]


def gather_in_order(local: Tensor, n: int, out: Optional[Tensor] = None) -> Tensor:
    """The ``[n, ...]`` tensor of every rank's interleaved shard (:func:`shard_indices`)
    ``local``, back in row order, on every rank (written into ``out`` if given, e.g. a
    label-major view). Without a process group: ``local`` (copied into ``out`` if given)."""
    if not is_distributed():
        return local if out is None else out.copy_(local)
    full = local.new_empty((n, *local.shape[1:])) if out is None else out
    for r, rows in enumerate(gather_rows(local)):
        full[shard_indices(n, which=r, device=local.device)] = rows
    return full


def broadcast_tensor(t: Tensor, src: int = 0) -> Tensor:
    """``t`` as rank ``src`` holds it, on every rank (in place; every rank passes a tensor
    of the same shape and dtype). Without a process group: ``t``."""
    if is_distributed():
        dist.broadcast(t, src=src)
    return t


def global_prototypes(features: Tensor, targets: Tensor, *, chunk_size: int = 8192) -> Tuple[Tensor, Tensor]:
    """Label prototypes over all ranks' samples: all-reduce of per-label sums and counts.

    Args:
        features: ``[n_r, D]`` this rank's features.
        targets: ``[n_r, K]`` int8 (1 positive).

    Returns:
        ``(prototypes [K, D], positive counts [K] float64)``, identical on every rank.
    """
    protos, counts = label_prototypes(features, targets, chunk_size=chunk_size)
    sums = protos.double() * counts.unsqueeze(1)
    if is_distributed():
        dist.all_reduce(sums)
        dist.all_reduce(counts)
    return (sums / counts.clamp(min=1).unsqueeze(1)).to(protos.dtype), counts


def global_label_angle_stats(features: Tensor, prototypes: Tensor, targets: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """:func:`bbam.ops.label_angle_stats` over all ranks' samples.

    Each rank runs the fused op on its shard; the ``[2, K]`` ``(count, mean, M2)``
    triples are all-gathered and merged in rank order (Chan), so every rank gets the
    statistics of the union — equal to one pass up to rounding.
    """
    local = label_angle_stats(features, prototypes, targets)
    if not is_distributed():
        return local
    stacked = torch.stack(local)  # [3, 2, K]
    parts = [torch.empty_like(stacked) for _ in range(world_size())]
    dist.all_gather(parts, stacked)
    return merge_stats(*[tuple(p.unbind(0)) for p in parts])


def broadcast_object(obj, src: int = 0):
    """Broadcast a picklable object from ``src`` (identity without a process group)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
