"""Images: decoding per batch, the image-folder reader and split file, augmentation, the
pretrained backbones and their feature cache, the pipelines, training and prediction."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from bbam.data import DatasetFormatError, ImageDecodeError, ImageRows, load_image_folder
from bbam.data.image_rows import decode_image
from bbam.vision import augment

efficientnet = pytest.importorskip("efficientnet_lite_pytorch", reason="the vision extra is not installed "
                                   "(pip install torch==2.13.0 -e '.[vision]')")


def write_images(root, n=40, size=20, seed=0, split=False):
    """``n`` PNG photos of two colour labels (red, blue) with ``labels.tsv`` (and ``split.tsv``)."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines, splits = [], []
    for i in range(n):
        red, blue = bool(rng.random() < 0.5), bool(rng.random() < 0.4)
        img = np.zeros((size, size + 4, 3), dtype=np.uint8)
        img[..., 0] = 200 if red else 20
        img[..., 2] = 200 if blue else 20
        img += rng.integers(0, 30, img.shape, dtype=np.uint8)
        (root / "sub").mkdir(exist_ok=True)
        Image.fromarray(img).save(root / "sub" / f"img{i}.png")
        lines.append(f"sub/img{i}.png\t" + ",".join(n for n, on in (("red", red), ("blue", blue)) if on))
        splits.append(f"sub/img{i}.png\t{'test' if i % 4 == 0 else 'train'}")
    (root / "labels.tsv").write_text("# path<TAB>labels\n" + "\n".join(lines) + "\n")
    if split:
        (root / "split.tsv").write_text("\n".join(splits) + "\n")
    return root


def miml_photos(shared_data_dir, tmp_path, n: int, image_size: int):
    """The first ``n`` MIML photos of the shared data as a dataset (skips without them)."""
    root = shared_data_dir / "miml"
    if not (root / "labels.tsv").is_file():
        pytest.skip(f"{root} not found")
    lines = (root / "labels.tsv").read_text().splitlines()[:n]
    (tmp_path / "labels.tsv").write_text("\n".join(f"{root / l.split(chr(9))[0]}\t{l.split(chr(9))[1]}"
                                                   for l in lines) + "\n")
    return load_image_folder(root, labels_file=str(tmp_path / "labels.tsv"), image_size=image_size)


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("BBAM_CACHE_DIR", str(tmp_path / "cache"))


# --------------------------------------------------------------------------- decoding, reading
def test_decode_and_lazy_rows(tmp_path):
    write_images(tmp_path, n=6)
    data = load_image_folder(tmp_path, image_size=16)
    assert data.X.shape == (6, 0) and data.label_names == ["blue", "red"]
    rows = data.images
    assert isinstance(rows, ImageRows) and rows.image_size == 16 and len(rows) == 6
    assert rows[0].dtype == torch.uint8 and rows[0].shape == (3, 16, 16)
    batch = rows[torch.tensor([4, 1])]
    assert batch.shape == (2, 3, 16, 16) and torch.equal(batch[1], rows[1])
    sub = rows.subset(torch.tensor([5, 2]))
    assert isinstance(sub, ImageRows) and torch.equal(sub[0], rows[5]) and torch.equal(rows[2:4][0], rows[2])
    red = data.Y[:, 1].bool()
    pixels = rows[list(range(6))].float()
    assert pixels[red, 0].mean() > pixels[~red, 0].mean() + 100
    assert len(pickle.dumps(rows)) < 2000  # paths only: a worker gets no pixels, memory does not grow with N


def test_missing_and_corrupt_images_name_the_file(tmp_path):
    write_images(tmp_path, n=4)
    (tmp_path / "labels.tsv").write_text("sub/img0.png\tred\nsub/nope.png\tblue\n")
    with pytest.raises(DatasetFormatError, match=r"labels.tsv, line 2: image .*nope.png not found"):
        load_image_folder(tmp_path)
    (tmp_path / "sub" / "img1.png").write_bytes(b"not an image")
    with pytest.raises(ImageDecodeError, match=r"image .*img1.png: cannot decode"):
        decode_image(tmp_path / "sub" / "img1.png", 8)
    with pytest.raises(ImageDecodeError, match=r"img9.png: file not found"):
        decode_image(tmp_path / "sub" / "img9.png", 8)


def test_split_file(tmp_path):
    write_images(tmp_path, n=12, split=True)
    data = load_image_folder(tmp_path, split_file="split.tsv", image_size=8)
    assert data.test_idx.tolist() == [0, 4, 8] and len(data.train_idx) == 9
    lines = (tmp_path / "split.tsv").read_text().splitlines()
    for bad, message in [(lines[:-1], r"1 image\(s\) of the label file have no split"),
                         (lines + ["sub/other.png\ttrain"], r"line 13: image 'sub/other.png' is not in the label file"),
                         ([lines[0].replace("test", "val")] + lines[1:], r"line 1: expected .* got split 'val'"),
                         (lines + lines[:1], r"line 13: image 'sub/img0.png' is listed twice")]:
        (tmp_path / "bad.tsv").write_text("\n".join(bad) + "\n")
        with pytest.raises(DatasetFormatError, match=r"bad.tsv.*" + message):
            load_image_folder(tmp_path, split_file="bad.tsv", image_size=8)


# --------------------------------------------------------------------------- augmentation
def _pixels(b=8, size=24, seed=0):
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_augmentation_is_reproducible_per_image_and_in_range():
    x = _pixels()
    for fn in (augment.weak_augment, augment.strong_augment):
        a, b = fn(x, torch.Generator().manual_seed(3)), fn(x, torch.Generator().manual_seed(3))
        assert torch.equal(a, b) and a.shape == x.shape and float(a.min()) >= 0 and float(a.max()) <= 1
        c = fn(x, torch.Generator().manual_seed(4))
        assert not torch.equal(a, c)
    # weak without translation: each image flipped or not, nothing else
    weak = augment.weak_augment(x, torch.Generator().manual_seed(0), translate=0.0)
    for i in range(len(x)):
        assert torch.equal(weak[i], x[i]) or torch.equal(weak[i], x[i].flip(2))
    assert not all(torch.equal(weak[i], x[i]) for i in range(len(x)))


def test_randaugment_draws_operations_per_image():
    x = _pixels(b=64)
    g = torch.Generator().manual_seed(0)
    ops = torch.randint(len(augment.RANDAUGMENT_OPS), (64, 2), generator=g)  # the draws randaugment makes first
    assert len({tuple(r) for r in ops.tolist()}) > 20
    out = augment.randaugment(x, torch.Generator().manual_seed(0))
    changed = (out - x).abs().flatten(1).amax(1) > 1e-6
    identity = (ops == augment.RANDAUGMENT_OPS.index("identity")).all(1)
    assert not changed[identity].any() and changed[~identity].float().mean() > 0.8


def test_each_operation_and_cutout():
    x = _pixels(b=4)
    mag, sign = torch.full((4,), 0.8), torch.ones(4)
    for name in augment.RANDAUGMENT_OPS:
        if name in ("identity", "rotate", "shear_x", "shear_y", "translate_x", "translate_y"):
            continue
        out = augment._color_op(name, x, mag, sign)
        assert out.shape == x.shape and torch.isfinite(out).all() and float(out.min()) >= 0 and float(out.max()) <= 1
        assert not torch.equal(out, x), name
    solar = augment._color_op("solarize", x, torch.full((4,), 0.5), sign)
    assert torch.allclose(solar, torch.where(x >= 0.5, 1 - x, x))
    flat = torch.full((1, 3, 8, 8), 0.3)
    assert torch.equal(augment._equalize(flat), flat)  # one level: unchanged
    cut = augment.cutout(torch.zeros(16, 3, 32, 32) - 1, torch.Generator().manual_seed(0), size=0.5)
    share = (cut >= 0).all(1).float().mean((1, 2))
    assert share.max() <= 0.25 + 1e-6 and share.min() > 0.0625  # a 16 x 16 square, clipped at the borders


# --------------------------------------------------------------------------- backbones
@pytest.mark.parametrize("name", ["efficientnet_lite0", "mobilenet_v2"])
def test_backbones_load_their_weights_and_give_features(name):
    from bbam.vision.backbones import load_backbone, weights_path

    try:
        weights_path(name)
    except ImportError as err:
        pytest.skip(str(err))
    net = load_backbone(name)
    assert not any(p.requires_grad for p in net.parameters()) and not net.training
    x = _pixels(b=3, size=64)
    with torch.no_grad():
        f = net(x)
        assert f.shape == (3, 1280) and torch.isfinite(f).all() and float(f.min()) >= 0  # pooled ReLU6
        assert torch.allclose(net(x[:1]), f[:1], atol=1e-4)  # eval mode: rows independent
    with pytest.raises(ValueError, match=r"'x' must be RGB pixels \[B, 3, H, W\]"):
        net(torch.rand(2, 64))
    with pytest.raises(ValueError, match="unknown image backbone 'resnet'"):
        load_backbone("resnet")


def test_mobilenet_v2_has_torchvision_names():
    from bbam.vision.backbones import MobileNetV2

    names = set(MobileNetV2().state_dict())
    assert {"features.0.0.weight", "features.1.conv.0.0.weight", "features.1.conv.2.weight",
            "features.2.conv.1.0.weight", "features.2.conv.3.running_var", "features.18.1.weight",
            "classifier.1.bias"} <= names
    assert sum(p.numel() for p in MobileNetV2().parameters()) == 3504872  # torchvision's mobilenet_v2


def test_pretrained_features_separate_real_photos(shared_data_dir, tmp_path):
    """Frozen EfficientNet-Lite0 features of 160 MIML photos at 128 px: a logistic
    regression on 100 of them ranks the other 60 far above chance for every label."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score

    from bbam.vision.features import image_features

    data = miml_photos(shared_data_dir, tmp_path, 160, image_size=128)
    X = image_features(data.images, {"name": "efficientnet_lite0", "progress": False, "num_workers": 0}).numpy()
    Y = data.Y.numpy()
    for k in range(Y.shape[1]):
        if Y[:100, k].min() == Y[:100, k].max() or Y[100:, k].sum() == 0:
            continue
        p = LogisticRegression(max_iter=2000).fit(X[:100], Y[:100, k]).predict_proba(X[100:])[:, 1]
        assert average_precision_score(Y[100:, k], p) > Y[100:, k].mean() + 0.3, data.label_names[k]


def test_feature_cache(tmp_path, monkeypatch):
    import bbam.vision.features as F

    write_images(tmp_path / "imgs", n=5)
    settings = {"name": "efficientnet_lite0", "progress": False, "num_workers": 0, "cache_dir": str(tmp_path / "c")}

    def load_features(image_size=32, backbone=settings):
        return F.image_features(load_image_folder(tmp_path / "imgs", image_size=image_size).images, backbone)

    first = load_features()
    assert first.shape == (5, 1280) and len(list((tmp_path / "c").glob("efficientnet_lite0-32px-*.npz"))) == 1
    calls = []
    real = F.frozen_image_encoder
    monkeypatch.setattr(F, "frozen_image_encoder", lambda *a, **k: calls.append(a) or real(*a, **k))
    again = load_features()
    assert torch.equal(again, first) and not calls  # read from the cache
    load_features(image_size=40)
    assert len(calls) == 1  # another size: computed
    from PIL import Image

    Image.fromarray(np.zeros((20, 24, 3), dtype=np.uint8)).save(tmp_path / "imgs" / "sub" / "img2.png")
    changed = load_features()
    assert len(calls) == 2 and torch.equal(changed[[0, 1, 3, 4]], first[[0, 1, 3, 4]])
    assert not torch.equal(changed[2], first[2])
    with pytest.raises(ValueError, match=r"unknown settings \['colour'\]"):
        load_features(backbone={**settings, "colour": 1})
    (tmp_path / "imgs" / "sub" / "img3.png").write_bytes(b"broken")
    with pytest.raises(ImageDecodeError, match=r"img3.png: cannot decode"):
        load_features(backbone={**settings, "num_workers": 2})


def test_decoding_edge_cases(tmp_path):
    from PIL import Image

    deep = (np.arange(16 * 16, dtype=np.uint16).reshape(16, 16) * 200)  # 16-bit gray, 0..51000
    Image.fromarray(deep).save(tmp_path / "deep.png")
    px = decode_image(tmp_path / "deep.png", 16)
    assert px.dtype == torch.uint8 and int(px.min()) == 0 and int(px.max()) == 255 and len(px.unique()) > 100
    tall = np.zeros((40, 20, 3), dtype=np.uint8)
    tall[:10] = 255  # white on top
    img = Image.fromarray(tall)
    exif = img.getexif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise: the white band ends up on the right
    img.save(tmp_path / "rotated.jpg", exif=exif)
    px = decode_image(tmp_path / "rotated.jpg", 20).float()
    assert px[:, :, -5:].mean() > 200 and px[:, :, :5].mean() < 50
    x = torch.rand(0, 3, 8, 8)
    assert augment.weak_augment(x, torch.Generator()).shape == x.shape  # a rank's empty share of a batch
    assert augment.strong_augment(x, torch.Generator()).shape == x.shape
    with pytest.raises(TypeError, match="boolean mask"):
        ImageRows([str(tmp_path / "deep.png")], 8)[torch.tensor([True])]


def test_label_file_comments_and_duplicates(tmp_path):
    write_images(tmp_path, n=3)
    (tmp_path / "sub" / "img0.png").rename(tmp_path / "sub" / "a #1.png")
    (tmp_path / "labels.tsv").write_text("# a comment\nsub/a #1.png\tred\n  # another\nsub/img1.png\tblue\n")
    data = load_image_folder(tmp_path, image_size=8)
    assert data.images.files[0].endswith("a #1.png") and len(data.images) == 2
    (tmp_path / "labels.tsv").write_text("sub/img1.png\tred\nsub/img2.png\tblue\nsub/img1.png\tblue\n")
    with pytest.raises(DatasetFormatError, match=r"line 3: image 'sub/img1.png' is listed twice \(first on line 1\)"):
        load_image_folder(tmp_path, image_size=8)
