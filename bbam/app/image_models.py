"""Image encoders of the app: a pretrained backbone (frozen features or fine-tuned) with a
head, and a small CNN trained from scratch. Inputs come from the image kind of inputs
(:class:`bbam.app.inputs.ImageInputs`): frozen backbone features ``[B, dim]`` (computed
once by :func:`bbam.vision.features.image_features`), or pixels ``[B, 3, S, S]`` float in
``[0, 1]`` decoded per batch. The backbone is any registered one
(:func:`bbam.vision.backbones.get_backbone_spec`); fine-tuning loads a fresh trainable
instance (:func:`bbam.vision.backbones.load_backbone`), never the frozen shared one."""
from __future__ import annotations

from typing import Optional, Sequence

from torch import Tensor, nn

from bbam.vision.backbones import get_backbone_spec, list_backbones, load_backbone
from bbam.runtimes import check_runtime

from .models import MLPEncoder

__all__ = ["PretrainedImageEncoder", "ImageEncoder"]


def _check_pixels(x: Tensor, who: str) -> None:
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"{who}: inputs must be RGB pixels [B, 3, S, S] (an image dataset whose model reads "
                         f"pixels: model.finetune=true or model=image_cnn), got shape {tuple(x.shape)}")


class PretrainedImageEncoder(nn.Module):
    """``model=efficientnet_lite0`` / ``mobilenet_v2``: a pretrained backbone and a head.

    Args:
        in_dim: the data's width: the backbone's feature size (frozen) or 0 (fine-tuning).
        backbone: a registered backbone (:func:`bbam.vision.backbones.list_backbones`).
        finetune: False: ``x`` holds the frozen backbone's features ``[B, dim]`` (computed
            once, cached) and only the head trains; True: ``x`` holds pixels
            ``[B, 3, S, S]`` and the backbone trains too (batch norm included).
        hidden, out_dim, dropout: the head, an MLP ``dim -> hidden... -> out_dim``
            (``hidden=[]`` and ``out_dim=None``: the backbone features as they are).
        backbone_lr_scale: fine-tuning: the backbone's learning rate relative to
            ``train.lr`` (pretrained weights take smaller steps than the new head).
        freeze_batchnorm: fine-tuning: the backbone's batch norms keep their ImageNet
            running statistics (eval mode; their scale and shift still train) instead of
            re-estimating them from each training batch (measured far better on MIML with
            batches of 16 labeled photos: ``docs/RESULTS.md``).
        runtime: where the frozen backbone's feature passes run (``auto`` | ``torch`` |
            ``onnx``, :mod:`bbam.runtimes`); the configs hand it to the data's feature
            pass as ``model.backbone.runtime``. Checked here; fine-tuning trains in torch.
    """

    def __init__(self, in_dim: int, backbone: str = "efficientnet_lite0", finetune: bool = False,
                 hidden: Sequence[int] = (512,), out_dim: Optional[int] = 256, dropout: float = 0.1,
                 backbone_lr_scale: float = 0.1, freeze_batchnorm: bool = True, runtime: str = "auto"):
        super().__init__()
        self.runtime = check_runtime(runtime, "model.encoder.runtime")
        self.freeze_batchnorm = bool(freeze_batchnorm)
        try:
            dim = get_backbone_spec(backbone).dim
        except ValueError:
            raise ValueError(f"config key 'model.encoder.backbone' must be one of {', '.join(list_backbones())}, "
                             f"got {backbone!r}") from None
        self.finetune, self.backbone_lr_scale = bool(finetune), float(backbone_lr_scale)
        if self.finetune:
            self.backbone = load_backbone(backbone, trainable=True)
        else:
            self.backbone = None
            if in_dim != dim:
                raise ValueError(f"PretrainedImageEncoder: in_dim {in_dim} is not the {dim} features of {backbone!r}: "
                                 f"use it with an image dataset (data=image_folder, voc, coco) and the same "
                                 f"model.finetune as the data's")
        if out_dim is None and not list(hidden):
            self.head, self.out_dim = nn.Identity(), dim
        elif out_dim is None:
            raise ValueError("PretrainedImageEncoder: 'out_dim' must be an int when 'hidden' is not empty, got None")
        else:
            self.head, self.out_dim = MLPEncoder(dim, list(hidden), int(out_dim), dropout), int(out_dim)

    def train(self, mode: bool = True) -> "PretrainedImageEncoder":
        super().train(mode)
        if mode and self.freeze_batchnorm and self.backbone is not None:
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def lr_scale_groups(self):
        """The backbone's parameters with ``backbone_lr_scale`` (see :func:`bbam.app.models.parameter_groups`)."""
        return [(list(self.backbone.parameters()), self.backbone_lr_scale)] if self.backbone is not None else []

    def forward(self, x: Tensor) -> Tensor:
        if self.backbone is None:
            return self.head(x)
        _check_pixels(x, "PretrainedImageEncoder")
        if self.training and x.shape[0] == 1:  # one photo has no batch statistics: batch norm uses its running ones
            self.backbone.eval()
            try:
                return self.head(self.backbone(x))
            finally:
                self.train()
        return self.head(self.backbone(x))


class ImageEncoder(nn.Module):
    """``model=image_cnn``: a small CNN trained from scratch on pixels ``[B, 3, S, S]``
    (two 3x3 conv layers, max and average pooling), then a linear map to ``out_dim``.
    ``in_dim`` (0 for pixel data) is not used."""

    def __init__(self, in_dim: int = 0, channels: int = 32, backbone_dim: int = 64, out_dim: int = 128):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, channels, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(channels, backbone_dim, 3, padding=1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1),
            nn.Flatten())
        self.proj, self.out_dim = nn.Linear(backbone_dim, out_dim), out_dim

    def forward(self, x: Tensor) -> Tensor:
        _check_pixels(x, "ImageEncoder")
        return self.proj(self.backbone(x))
