"""Model outputs of a whole split, batch by batch, into preallocated buffers (application layer).

:func:`model_outputs` runs a model over ``x`` and keeps the parts asked for: scores (the
method's :meth:`~bbam.app.methods.Method.scores`, the one place outputs become scores),
features ``z`` and raw outputs. :func:`model_outputs_global` does the same under
``torch.distributed``: each rank computes its shard, gathered back into row order.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from bbam import distributed as D

from .inputs import row_batches, take_rows

__all__ = ["PARTS", "model_outputs", "model_outputs_global"]

PARTS = ("scores", "features", "outputs")  # what model_outputs can return


@torch.no_grad()
def model_outputs(model, method, x: Tensor, *, amp: bool = False, batch_size: int = 1024,
            keep: Sequence[str] = PARTS, label_major: bool = False,
            features_out: Optional[Tensor] = None, num_workers: int = 0) -> Tuple[Optional[Tensor], ...]:
    """``(scores [N, K] in [0, 1], features [N, D], raw outputs [N, K])`` of ``model`` (eval mode).

    Only the parts named in ``keep`` are kept (the others are None): each is one
    preallocated ``[N, *]`` float32 tensor filled batch by batch. ``label_major``: the
    scores are stored label by label (a transposed view: per-label work such as CAP reads
    each label's scores contiguously). ``features_out``: a ``[N, D]`` float32 tensor the
    features are written into (e.g. a slice of a larger buffer) instead of a new one.
    ``amp``: bf16 autocast (CUDA runs with ``train.amp``). ``x`` may be image rows
    (:class:`~bbam.data.image_rows.ImageRows`): decoded per batch by ``num_workers`` workers;
    the outputs are then on the model's device."""
    unknown = set(keep) - set(PARTS)
    if unknown:
        raise ValueError(f"model_outputs: 'keep' must name parts among {PARTS}, got {sorted(unknown)}")
    model = model.eval()
    n, K = len(x), model.head.weight.shape[0]
    device = model.head.weight.device  # tensor rows are on it; image rows are decoded onto it
    scores = None
    if "scores" in keep:
        scores = torch.empty((K, n), device=device).T if label_major else torch.empty((n, K), device=device)
    outs = torch.empty((n, K), device=device) if "outputs" in keep else None
    dim = model.classifier_weight.shape[1]  # feature dimension D
    feats = None
    if features_out is not None and ("features" not in keep or features_out.shape != (n, dim)
                                     or features_out.dtype != torch.float32 or features_out.device != device):
        raise ValueError(f"model_outputs: 'features_out' must be a [{n}, {dim}] float32 tensor on {device}, with "
                         f"'features' in keep; got {tuple(features_out.shape)} {features_out.dtype} on "
                         f"{features_out.device}, keep={tuple(keep)}")
    if "features" in keep:
        feats = torch.empty((n, dim), device=device) if features_out is None else features_out
    features_only = scores is None and outs is None  # the classifier head is not needed
    for i, xb in row_batches(x, batch_size, device, num_workers):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            if features_only:
                z, out = model.encoder(xb), None
            else:
                z, out = model(xb)
        if feats is not None:
            feats[i:i + len(xb)] = z.float()
        if out is None:
            continue
        out = out.float()
        if outs is not None:
            outs[i:i + len(xb)] = out
        if scores is not None:
            scores[i:i + len(xb)] = method.scores(out)
    return scores, feats, outs


@torch.no_grad()
def model_outputs_global(model, method, x: Tensor, *, amp: bool = False, keep: Sequence[str] = PARTS,
                   label_major: bool = False, num_workers: int = 0) -> Tuple[Optional[Tensor], ...]:
    """:func:`model_outputs` on all rows of ``x``, each rank computing its shard (rows
    ``rank, rank + world, ...``), gathered back into row order on every rank."""
    if D.world_size() == 1:
        return model_outputs(model, method, x, amp=amp, keep=keep, label_major=label_major, num_workers=num_workers)
    n = len(x)
    shard = D.shard_indices(n)  # CPU indices select rows of a tensor on any device, or image rows
    local = model_outputs(model, method, take_rows(x, shard), amp=amp, keep=keep, num_workers=num_workers)
    outs = []
    for name, part in zip(PARTS, local):
        if part is None:
            outs.append(None)
        elif name == "scores" and label_major:  # [N, K] view of label-major storage, as on one rank
            outs.append(D.gather_in_order(part, n, out=part.new_empty((part.shape[1], n)).T))
        else:
            outs.append(D.gather_in_order(part, n))
    return tuple(outs)
