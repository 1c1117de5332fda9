"""Models of the training app: an encoder (MLP for feature vectors, or a pluggable
backbone) followed by a cosine (BBAM/BAM) or linear (BCE/ASL) classifier, and an
exponential moving average (EMA) copy of the weights."""
from __future__ import annotations

import copy
from typing import Any, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LinearEncoder", "MLPEncoder", "BackboneEncoder", "TextEncoder", "CosineClassifier", "LinearClassifier", "MultiLabelModel", "ModelEMA", "parameter_groups",
           "build_optimizer"]


class MLPEncoder(nn.Module):
    """Feature-vector encoder: ``in_dim -> hidden... -> out_dim`` (Linear, LayerNorm, ReLU, Dropout)."""

    def __init__(self, in_dim: int, hidden: Sequence[int] = (256,), out_dim: int = 128, dropout: float = 0.1):
        super().__init__()
        layers, prev = [], in_dim
        for width in hidden:
            layers += [nn.Linear(prev, width), nn.LayerNorm(width), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            prev = width
        layers += [nn.Linear(prev, out_dim)]
        self.net = nn.Sequential(*layers)
        self.out_dim = out_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class LinearEncoder(nn.Module):
    """The features as they are (``out_dim=None``) or one linear map ``in_dim -> out_dim``.

    With the linear head and the BCE loss this is a linear logistic model, the same
    model family as the one-vs-rest logistic-regression floor of ``bench/baseline.py``.
    """

    def __init__(self, in_dim: int, out_dim: Optional[int] = None):
        super().__init__()
        self.proj = nn.Identity() if out_dim is None else nn.Linear(in_dim, out_dim)
        self.out_dim = in_dim if out_dim is None else out_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class BackboneEncoder(nn.Module):
    """Wraps any module mapping inputs to ``[B, D]`` features (an image or text backbone).

    ``backbone`` is built by Hydra from its ``_target_`` (e.g. a torchvision ResNet
    with its ``fc`` replaced by ``nn.Identity``); ``out_dim`` is its feature size.
    """

    def __init__(self, backbone: nn.Module, out_dim: int, in_dim: Optional[int] = None):
        super().__init__()  # in_dim (the data's width, passed by the app) is not needed here
        self.backbone, self.out_dim = backbone, out_dim

    def forward(self, x):
        return self.backbone(x)


class CosineClassifier(nn.Module):
    """``c_ik = <z_i / |z_i|, w_k / |w_k|>`` (``F.normalize`` semantics, eps 1e-12)."""

    def __init__(self, in_dim: int, num_labels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_labels, in_dim))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, z: Tensor) -> Tensor:
        return F.normalize(z, dim=1) @ F.normalize(self.weight, dim=1).T


class LinearClassifier(nn.Linear):
    """Plain logits ``z W^T + b`` (for the BCE / ASL baselines)."""


class MultiLabelModel(nn.Module):
    """Encoder + classifier. ``forward(x)`` returns ``(features z [B, D], outputs [B, K])``:
    cosines for a :class:`CosineClassifier`, logits for a :class:`LinearClassifier`.

    Args:
        encoder: a module with ``out_dim`` (the feature width ``D``).
        head: the classifier on the features, e.g. the method's
            ``method.make_head(encoder.out_dim, K)`` (:mod:`bbam.app.methods`).
    """

    def __init__(self, encoder: nn.Module, head: nn.Module):
        super().__init__()
        self.encoder, self.head = encoder, head

    @property
    def classifier_weight(self) -> Tensor:
        return self.head.weight

    def forward(self, x):
        z = self.encoder(x)
        return z, self.head(z)


class ModelEMA(nn.Module):
    """EMA of a model's weights (buffers copied), used for pseudo-labelling and evaluation.

    ``decay_t = min(decay, (1 + t) / (10 + t))`` after ``t`` updates: the usual warm-up
    of the decay, without which a 0.9997 EMA of a short run would still be mostly
    its random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9997):
        super().__init__()
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.register_buffer("updates", torch.tensor(0, dtype=torch.long))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        t = float(self.updates)
        d = min(self.decay, (1 + t) / (10 + t))
        for ema_p, p in zip(self.module.parameters(), model.parameters()):
            ema_p.lerp_(p.detach(), 1 - d)
        for ema_b, b in zip(self.module.buffers(), model.buffers()):
            ema_b.copy_(b)

    def forward(self, x):
        return self.module(x)


class TextEncoder(nn.Module):
    """Token ids ``[B, L]`` (0 = padding, stored as floats) -> mean word embedding -> MLP.

    A light text encoder for :func:`bbam.data.load_text_jsonl`; a pretrained text
    backbone (e.g. BERT) plugs in through :class:`BackboneEncoder` instead.
    """

    def __init__(self, in_dim: int, vocab_size: int = 20000, embed_dim: int = 128, out_dim: int = 128,
                 dropout: float = 0.1):
        super().__init__()
        self.embed = nn.EmbeddingBag(vocab_size, embed_dim, mode="mean", padding_idx=0)
        self.mlp = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                 nn.Linear(embed_dim, out_dim))
        self.vocab_size, self.out_dim = vocab_size, out_dim

    def forward(self, x: Tensor) -> Tensor:
        ids = x.long()
        # A clear error for ids past the vocabulary, on CPU only: on CUDA the check would
        # synchronise every step (the embedding's device assert catches it there).
        if not ids.is_cuda and ids.numel() and int(ids.max()) >= self.vocab_size:
            raise ValueError(f"TextEncoder: token id {int(ids.max())} >= vocab_size {self.vocab_size} "
                             f"(set model.encoder.vocab_size to the data's vocab_size)")
        return self.mlp(self.embed(ids))


def parameter_groups(model: MultiLabelModel):
    """The optimizer's parameter groups: the model's parameters as one group, unless its
    encoder names parameters with their own learning-rate factor (``lr_scale_groups()``:
    ``[(parameters, factor), ...]``, e.g. a pretrained backbone's lower learning rate);
    each group then carries ``lr_scale``, which the engine's schedule multiplies in."""
    groups = getattr(model.encoder, "lr_scale_groups", None)
    if groups is None:
        return list(model.parameters())
    out, seen = [], set()
    for params, factor in groups():
        params = [p for p in params if p.requires_grad]
        seen.update(id(p) for p in params)
        out.append({"params": params, "lr_scale": float(factor)})
    out.append({"params": [p for p in model.parameters() if id(p) not in seen], "lr_scale": 1.0})
    return [g for g in out if g["params"]]


OPTIMIZERS = ("adamw", "sgd")


def build_optimizer(model: MultiLabelModel, train: Mapping[str, Any], section: Optional[Mapping[str, Any]],
                    labeled_x: Optional[Tensor]) -> Tuple[torch.optim.Optimizer, float]:
    """The run's optimizer over :func:`parameter_groups` and its peak learning rate.

    Args:
        model: the model to train.
        train: the ``train`` section (``lr``, ``weight_decay``).
        section: the model's own ``model.optimizer`` (``{"name", "lr"}``), or None: AdamW at
            ``train.lr`` (every model but the linear one).
        labeled_x: ``[N, D]`` labeled feature rows (``sgd`` only; None for tokens or pixels).

    ``name: sgd`` is momentum SGD (the OneCycle schedule cycles its momentum as it cycles
    AdamW's beta1) with the peak step ``lr / mean_i |x_i|^2``: the logistic loss's curvature
    along a row is ``|x_i|^2 / 4``, so one ``lr`` suits unit-length tf-idf rows and
    standardized ones alike. Why not AdamW for a linear model: its per-coordinate steps move
    a word seen in one labeled row as far as a common one, and a linear model on sparse
    indicators then memorises the rare words (measured in the app on bibtex at 10 % labels:
    5 mAP with AdamW, 25 with SGD, 23 for the logistic-regression floor on the same rows).
    The step rule is derived for a linear head; the probe never offers this model to the
    cosine-head methods (:mod:`bbam.app.probe`).
    """
    groups = parameter_groups(model)
    weight_decay = float(train["weight_decay"])
    if section is None:
        return torch.optim.AdamW(groups, lr=float(train["lr"]), weight_decay=weight_decay), float(train["lr"])
    unknown = sorted(set(section) - {"name", "lr"})
    if unknown:
        raise ValueError(f"config key 'model.optimizer' takes 'name' and 'lr'; unknown key(s) "
                         f"{', '.join('model.optimizer.' + k for k in unknown)}")
    name, lr = section.get("name"), section.get("lr")
    if name not in OPTIMIZERS:
        raise ValueError(f"config key 'model.optimizer.name' must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
    number = isinstance(lr, (int, float)) and not isinstance(lr, bool)
    if name == "adamw":
        if lr is not None and not (number and lr > 0):
            raise ValueError(f"config key 'model.optimizer.lr' must be a number > 0 (or null: train.lr), got {lr!r}")
        peak = float(train["lr"]) if lr is None else float(lr)
        return torch.optim.AdamW(groups, lr=peak, weight_decay=weight_decay), peak
    if not (number and lr > 0):
        raise ValueError(f"config key 'model.optimizer.lr' must be a number > 0 (the step times the labeled rows' "
                         f"mean squared norm), got {lr!r}")
    if labeled_x is None or not torch.is_floating_point(labeled_x) or labeled_x.dim() != 2:
        raise ValueError("model.optimizer.name=sgd scales its step by the labeled rows' norm and needs feature-vector "
                         "inputs ([N, D] floats); this model reads tokens or pixels: use model.optimizer=null (AdamW)")
    mean_sq_norm = sum(float(chunk.double().pow(2).sum()) for chunk in labeled_x.split(4096)) / max(1, len(labeled_x))
    if not mean_sq_norm > 0:
        raise ValueError("model.optimizer.name=sgd: the labeled rows are all zero (no norm to scale the step by)")
    peak = float(lr) / mean_sq_norm
    # momentum > 0 so that the OneCycle schedule cycles it (0.95 -> 0.85 -> 0.95), as AdamW's beta1
    return torch.optim.SGD(groups, lr=peak, momentum=0.9, weight_decay=weight_decay), peak
