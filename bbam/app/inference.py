"""Model outputs of a whole split, batch by batch, into preallocated buffers (application layer).

:func:`predict` runs a model over ``x`` and keeps the parts asked for: scores (the
method's :meth:`~bbam.app.methods.Method.scores`, the one place outputs become scores),
features ``z`` and raw outputs. :func:`predict_global` does the same under
``torch.distributed``: each rank computes its shard, gathered back into row order.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from bbam import distributed as D

__all__ = ["PARTS", "predict", "predict_global"]

PARTS = ("scores", "features", "outputs")  # what predict can return


@torch.no_grad()
def predict(model, method, x: Tensor, *, amp: bool = False, batch_size: int = 1024,
            keep: Sequence[str] = PARTS, label_major: bool = False,
            features_out: Optional[Tensor] = None) -> Tuple[Optional[Tensor], ...]:
    """``(scores [N, K] in [0, 1], features [N, D], raw outputs [N, K])`` of ``model`` (eval mode).

    Only the parts named in ``keep`` are kept (the others are None): each is one
    preallocated ``[N, *]`` float32 tensor filled batch by batch. ``label_major``: the
    scores are stored label by label (a transposed view: per-label work such as CAP reads
    each label's scores contiguously). ``features_out``: a ``[N, D]`` float32 tensor the
    features are written into (e.g. a slice of a larger buffer) instead of a new one.
    ``amp``: bf16 autocast (CUDA runs with ``train.amp``)."""
    unknown = set(keep) - set(PARTS)
    if unknown:
        raise ValueError(f"predict: 'keep' must name parts among {PARTS}, got {sorted(unknown)}")
    model = model.eval()
    n, K = x.shape[0], model.head.weight.shape[0]
    scores = None
    if "scores" in keep:
        scores = torch.empty((K, n), device=x.device).T if label_major else torch.empty((n, K), device=x.device)
    outs = torch.empty((n, K), device=x.device) if "outputs" in keep else None
    dim = model.classifier_weight.shape[1]  # feature dimension D
    feats = None
    if features_out is not None and ("features" not in keep or features_out.shape != (n, dim)
                                     or features_out.dtype != torch.float32 or features_out.device != x.device):
        raise ValueError(f"predict: 'features_out' must be a [{n}, {dim}] float32 tensor on {x.device}, with "
                         f"'features' in keep; got {tuple(features_out.shape)} {features_out.dtype} on "
                         f"{features_out.device}, keep={tuple(keep)}")
    if "features" in keep:
        feats = torch.empty((n, dim), device=x.device) if features_out is None else features_out
    features_only = scores is None and outs is None  # the classifier head is not needed
    for i in range(0, n, batch_size):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            if features_only:
                z, out = model.encoder(x[i:i + batch_size]), None
            else:
                z, out = model(x[i:i + batch_size])
        if feats is not None:
            feats[i:i + batch_size] = z.float()
        if out is None:
            continue
        out = out.float()
        if outs is not None:
            outs[i:i + batch_size] = out
        if scores is not None:
            scores[i:i + batch_size] = method.scores(out)
    return scores, feats, outs


@torch.no_grad()
def predict_global(model, method, x: Tensor, *, amp: bool = False, keep: Sequence[str] = PARTS,
                   label_major: bool = False) -> Tuple[Optional[Tensor], ...]:
    """:func:`predict` on all rows of ``x``, each rank computing its shard (rows
    ``rank, rank + world, ...``), gathered back into row order on every rank."""
    if D.world_size() == 1:
        return predict(model, method, x, amp=amp, keep=keep, label_major=label_major)
    n = x.shape[0]
    local = predict(model, method, x[D.shard_indices(n, device=x.device)], amp=amp, keep=keep)
    outs = []
    for name, part in zip(PARTS, local):
        if part is None:
            outs.append(None)
            continue
        if name == "scores" and label_major:  # [N, K] view of label-major storage, as on one rank
            full = part.new_empty((part.shape[1], n)).T
        else:
            full = part.new_empty((n, *part.shape[1:]))
        for r, rows in enumerate(D.gather_rows(part)):
            full[D.shard_indices(n, which=r, device=x.device)] = rows
        outs.append(full)
    return tuple(outs)
