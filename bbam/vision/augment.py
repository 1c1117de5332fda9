"""Batched weak and strong image augmentation, every draw per image from one generator.

Pixels are ``[B, 3, H, W]`` floats in ``[0, 1]`` on any device. The draws come from the
CPU ``torch.Generator`` the caller passes (the training pipeline keys it by seed, epoch,
step and rank), so a view is the same on every device and a resumed run sees the views of
an uninterrupted one.

* :func:`weak_augment`: random horizontal flip + random translation of up to
  ``translate`` of the side (reflection padding): FixMatch's weak view; with
  ``translate=0`` it is CAP's flip-and-resize.
* :func:`strong_augment`: the weak view, then RandAugment (Cubuk et al. 2020, the
  FixMatch variant: ``num_ops`` operations drawn per image from :data:`RANDAUGMENT_OPS`,
  each with a random magnitude up to ``magnitude``), then Cutout (one square of side
  ``cutout`` x the image side, filled with a random colour).

Why not kornia's ``RandAugment``: it draws one set of operations per batch, so all images
of a batch get the same two operations; here each image draws its own, and the geometric
operations of a batch share one ``grid_sample``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["RANDAUGMENT_OPS", "weak_augment", "strong_augment", "randaugment", "cutout"]

RANDAUGMENT_OPS = ("identity", "autocontrast", "equalize", "brightness", "color", "contrast", "sharpness",
                   "posterize", "solarize", "rotate", "shear_x", "shear_y", "translate_x", "translate_y")
_GEOMETRIC = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")


def _rand(generator: torch.Generator, *shape: int) -> Tensor:
    return torch.rand(shape, generator=generator)


def _check(x: Tensor) -> None:
    if x.dim() != 4 or x.shape[1] != 3 or not x.is_floating_point():
        raise ValueError(f"image augmentation: 'x' must be float RGB pixels [B, 3, H, W] in [0, 1], "
                         f"got {x.dtype} {tuple(x.shape)}")


def _affine(x: Tensor, theta: Tensor, padding: str) -> Tensor:
    """``x`` warped by per-image affine maps ``theta [B, 2, 3]`` (normalised coordinates)."""
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    if padding == "gray":  # RandAugment's fill: out-of-image pixels become mid-gray
        return F.grid_sample(x - 0.5, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + 0.5
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)


def weak_augment(x: Tensor, generator: torch.Generator, flip: float = 0.5, translate: float = 0.125) -> Tensor:
    """Random horizontal flip (probability ``flip``) and translation by up to ``translate``
    of each side (uniform per image, reflection padding)."""
    _check(x)
    b = x.shape[0]
    if b == 0:  # a rank's empty share of a last partial batch
        return x.clone()
    sign = torch.where(_rand(generator, b) < flip, -1.0, 1.0)
    shift = (_rand(generator, b, 2) * 2 - 1) * (2 * translate)  # normalised coordinates span 2
    if translate == 0:
        flipped = sign.to(x.device) < 0
        return torch.where(flipped.view(-1, 1, 1, 1), x.flip(3), x)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, :, 2] = sign, 1.0, shift
    return _affine(x, theta, "reflection").clamp_(0, 1)


def _gray(x: Tensor) -> Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _blend(a: Tensor, b: Tensor, factor: Tensor) -> Tensor:
    """``b + factor * (a - b)`` per image (PIL's ImageEnhance), clamped to [0, 1]."""
    return (b + factor.view(-1, 1, 1, 1) * (a - b)).clamp(0, 1)


def _equalize(x: Tensor) -> Tensor:
    """Histogram equalisation of each image's channels (256 levels)."""
    b, c, h, w = x.shape
    levels = (x * 255).round().long().clamp_(0, 255).view(b * c, h * w)
    hist = torch.zeros(b * c, 256, device=x.device).scatter_add_(1, levels, torch.ones_like(levels, dtype=torch.float))
    cdf = hist.cumsum(1)
    cdf_min = torch.where(hist > 0, cdf, torch.full_like(cdf, float("inf"))).amin(1, keepdim=True)
    lut = ((cdf - cdf_min) / (cdf[:, -1:] - cdf_min).clamp_min(1)).clamp_(0, 1)
    flat = (cdf[:, -1:] - cdf_min) <= 0  # one level only: left as is
    out = torch.gather(lut, 1, levels)
    return torch.where(flat, x.reshape(b * c, h * w), out).view(b, c, h, w)


def _color_op(name: str, x: Tensor, mag: Tensor, sign: Tensor) -> Tensor:
    """One colour operation on images ``x`` with magnitudes ``mag`` in [0, 1]."""
    factor = 1 + sign * 0.9 * mag  # enhancement factor in [0.1, 1.9]
    if name == "identity":
        return x
    if name == "autocontrast":
        lo, hi = x.amin((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
        return torch.where(hi > lo, (x - lo) / (hi - lo).clamp_min(1e-6), x)
    if name == "equalize":
        return _equalize(x)
    if name == "brightness":
        return _blend(x, torch.zeros_like(x), factor)
    if name == "color":
        return _blend(x, _gray(x).expand_as(x), factor)
    if name == "contrast":
        return _blend(x, _gray(x).mean((1, 2, 3), keepdim=True).expand_as(x), factor)
    if name == "sharpness":
        kernel = torch.tensor([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=x.dtype, device=x.device) / 13
        smooth = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel.expand(3, 1, 3, 3), groups=3)
        return _blend(x, smooth, factor)
    if name == "posterize":  # keep 8 - round(4 * mag) bits
        step = (2.0 ** (4 * mag).round()).view(-1, 1, 1, 1).to(x)
        return torch.floor(x * 255 / step) * step / 255
    if name == "solarize":  # invert pixels above 1 - mag
        return torch.where(x >= (1 - mag).view(-1, 1, 1, 1).to(x), 1 - x, x)
    raise ValueError(f"unknown RandAugment operation {name!r}")


def _geometric_theta(ops: Tensor, mags: Tensor, signs: Tensor) -> Tensor:
    """Per-image affine maps composing the image's geometric operations (rotation up to 30
    degrees, shear up to 0.3, translation up to 0.3 of the side), ``[B, 2, 3]``."""
    b = ops.shape[0]
    theta = torch.eye(3).repeat(b, 1, 1)
    for slot in range(ops.shape[1]):
        v = signs[:, slot] * mags[:, slot]
        m = torch.eye(3).repeat(b, 1, 1)
        name_of = [RANDAUGMENT_OPS[int(i)] for i in ops[:, slot]]
        for i, name in enumerate(name_of):
            if name == "rotate":
                a = math.radians(30) * float(v[i])
                m[i, :2, :2] = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
            elif name == "shear_x":
                m[i, 0, 1] = 0.3 * v[i]
            elif name == "shear_y":
                m[i, 1, 0] = 0.3 * v[i]
            elif name == "translate_x":
                m[i, 0, 2] = 0.6 * v[i]  # 0.3 of the side = 0.6 in normalised coordinates
            elif name == "translate_y":
                m[i, 1, 2] = 0.6 * v[i]
        theta = m @ theta
    return theta[:, :2]


def randaugment(x: Tensor, generator: torch.Generator, num_ops: int = 2, magnitude: float = 1.0) -> Tensor:
    """RandAugment: each image gets ``num_ops`` operations drawn uniformly from
    :data:`RANDAUGMENT_OPS` (with replacement), each with a magnitude drawn uniformly in
    ``[0, magnitude]`` and a random sign where the operation has one. Colour operations run
    on the images that drew them, in draw order; the geometric ones are composed into one
    warp per image (mid-gray fill)."""
    _check(x)
    if not 0.0 <= magnitude <= 1.0:
        raise ValueError(f"randaugment: 'magnitude' must be in [0, 1], got {magnitude}")
    b = x.shape[0]
    if b == 0:
        return x.clone()
    ops = torch.randint(len(RANDAUGMENT_OPS), (b, num_ops), generator=generator)
    mags = _rand(generator, b, num_ops) * magnitude
    signs = torch.where(_rand(generator, b, num_ops) < 0.5, -1.0, 1.0)
    out = x
    for slot in range(num_ops):
        for k, name in enumerate(RANDAUGMENT_OPS):
            if name in _GEOMETRIC or name == "identity":
                continue
            rows = (ops[:, slot] == k).nonzero().flatten()
            if rows.numel():
                dev_rows = rows.to(x.device)
                out = out.index_copy(0, dev_rows, _color_op(name, out.index_select(0, dev_rows),
                                                            mags[rows, slot].to(x.device), signs[rows, slot].to(x.device)))
    geometric = torch.isin(ops, torch.tensor([RANDAUGMENT_OPS.index(n) for n in _GEOMETRIC]))
    rows = geometric.any(1).nonzero().flatten()  # only the images that drew a geometric operation are warped
    if rows.numel():
        keep = geometric[rows]
        theta = _geometric_theta(torch.where(keep, ops[rows], 0), torch.where(keep, mags[rows], 0.0), signs[rows])
        dev_rows = rows.to(x.device)
        out = out.index_copy(0, dev_rows, _affine(out.index_select(0, dev_rows), theta, "gray").clamp_(0, 1))
    return out


def cutout(x: Tensor, generator: torch.Generator, size: float = 0.5) -> Tensor:
    """One square per image, of side ``size`` x the shorter image side, centred uniformly
    (clipped at the borders), filled with a random colour (CAP's CutoutPIL)."""
    _check(x)
    b, _, h, w = x.shape
    side = max(1, int(round(size * min(h, w))))
    cy, cx = (_rand(generator, b) * h).long(), (_rand(generator, b) * w).long()
    colour = _rand(generator, b, 3).to(x.device, x.dtype)
    ys, xs = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
    inside = ((ys >= (cy - side // 2).view(-1, 1, 1)) & (ys < (cy - side // 2 + side).view(-1, 1, 1))
              & (xs >= (cx - side // 2).view(-1, 1, 1)) & (xs < (cx - side // 2 + side).view(-1, 1, 1)))
    return torch.where(inside.unsqueeze(1).to(x.device), colour.view(b, 3, 1, 1), x)


def strong_augment(x: Tensor, generator: torch.Generator, flip: float = 0.5, translate: float = 0.125,
                   num_ops: int = 2, magnitude: float = 1.0, cutout_size: float = 0.5) -> Tensor:
    """The weak view, then :func:`randaugment`, then :func:`cutout` (``cutout_size`` 0: none)."""
    out = randaugment(weak_augment(x, generator, flip, translate), generator, num_ops, magnitude)
    return cutout(out, generator, cutout_size) if cutout_size > 0 else out
