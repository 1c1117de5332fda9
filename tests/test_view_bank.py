"""The view bank (``model.views.space=bank``): V weak and V strong augmented views of every
photo through the frozen backbone, computed once and cached, scaled as the run's features,
one of each drawn per row and step; training with it resumes to the identical result."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bbam.app.batches import TensorBatches
from bbam.app.views import ImageViews
from bbam.data import load_image_folder

pytest.importorskip("efficientnet_lite_pytorch", reason="the vision extra is not installed")

from test_image_training import TINY, _run  # noqa: E402
from test_images import write_images  # noqa: E402

SETTINGS = {"name": "efficientnet_lite0", "progress": False, "num_workers": 0, "runtime": "torch"}
WEAK = {"kind": "weak", "copy": 0, "flip": 0.5, "translate": 0.125}
STRONG = {"kind": "strong", "copy": 0, "flip": 0.5, "translate": 0.125, "num_ops": 2, "magnitude": 1.0, "cutout": 0.5}


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("BBAM_CACHE_DIR", str(tmp_path / "cache"))


def test_view_features_are_the_backbone_on_augmented_batches(tmp_path):
    """A view's features are the frozen backbone's features of the decoded batch augmented
    with the generator keyed by the view's copy and the batch's first row; cached apart from
    the plain features and from each other; another copy draws other views."""
    from bbam.vision.augment import strong_augment
    from bbam.vision.backbones import load_backbone
    from bbam.vision.features import image_features, view_features

    rows = load_image_folder(write_images(tmp_path / "imgs", n=10), image_size=32).images
    settings = {**SETTINGS, "batch_size": 4, "cache_dir": str(tmp_path / "c")}
    strong = view_features(rows, settings, STRONG)
    net = load_backbone("efficientnet_lite0")
    pixels = rows[list(range(10))].float() / 255
    for start in (0, 4, 8):  # batches of 4 rows: the draws are keyed by each batch's first row
        g = torch.Generator().manual_seed((0 * 2 + 1) * 1_000_003 + start + 104_729)
        want = net(strong_augment(pixels[start:start + 4], g, 0.5, 0.125, 2, 1.0, 0.5))
        torch.testing.assert_close(strong[start:start + 4], want, atol=1e-5, rtol=1e-5)
    assert torch.equal(view_features(rows, settings, STRONG), strong)  # read back from the cache
    plain = image_features(rows, settings)
    other = view_features(rows, settings, {**STRONG, "copy": 1})
    weak = view_features(rows, settings, WEAK)
    assert not torch.allclose(other, strong) and not torch.allclose(weak, plain)
    files = sorted(p.name for p in (tmp_path / "c").glob("*.npz"))
    assert len(files) == 4 and sum("strong0" in f for f in files) == 1 and sum("weak0" in f for f in files) == 1
    with pytest.raises(ValueError, match=r"'view' must be"):
        view_features(rows, settings, {**WEAK, "num_ops": 2})


def test_bank_rows_draw_one_of_their_own_views(tmp_path):
    """Each row of a batch gets one of its own V kept views, drawn per row from the batch's
    generator (so the same rows, seed, epoch and step give the same views)."""
    views = ImageViews(space="bank", backbone="efficientnet_lite0", bank=3)
    n, d = 7, 5
    bank = {name: torch.arange(3 * n * d, dtype=torch.float32).view(3, n, d) + (1000 if name == "strong" else 0)
            for name in ("weak", "strong")}
    views._bank = bank
    x = torch.zeros(n, d)
    pipe = TensorBatches(x, None, views, ("weak", "strong"))
    plan = [torch.tensor([6, 0, 3]), torch.tensor([1, 2, 4, 5])]
    first = list(pipe(plan, seed=0, epoch=2))
    copies = set()
    for batch in first:
        for name in ("weak", "strong"):
            for r, row in enumerate(batch.idx.tolist()):
                match = [v for v in range(3) if torch.equal(batch.views[name][r], bank[name][v, row])]
                assert len(match) == 1
                copies.add(match[0])
    assert copies == {0, 1, 2}
    again = list(pipe(plan, seed=0, epoch=2))
    assert all(torch.equal(a.views[k], b.views[k]) for a, b in zip(first, again) for k in ("weak", "strong"))
    with pytest.raises(RuntimeError, match="prepare"):
        ImageViews(space="bank", backbone="efficientnet_lite0")("weak", x, torch.Generator(), rows=plan[0])


def test_bank_settings_are_checked():
    with pytest.raises(ValueError, match=r"'model.views.bank' must be >= 1"):
        ImageViews(space="bank", backbone="efficientnet_lite0", bank=0)
    with pytest.raises(ValueError, match=r"'model.views.space' is 'bank' but the model reads pixels"):
        ImageViews(space="bank", backbone="efficientnet_lite0", finetune=True)
    with pytest.raises(ValueError, match=r"'model.views.space' must be auto, images, features or bank"):
        ImageViews(space="banks", backbone="efficientnet_lite0")
    with pytest.raises(RuntimeError, match="rows"):  # bank views are looked up by row, never made from x
        ImageViews(space="bank", backbone="efficientnet_lite0").weak(torch.zeros(2, 1280), torch.Generator())


def test_bank_run_scales_the_views_as_the_features_and_resumes_identically(tmp_path):
    """A fixmatch run on the bank: the bank holds the unlabeled rows' view features scaled
    by the run's scaler; a run stopped after an epoch and resumed ends as the uninterrupted one."""
    from test_train import _compose

    from bbam.app.plan import prepare
    from bbam.vision.features import view_features

    over = ["method=fixmatch", "model.views.space=bank", "model.views.bank=2", "train.scaling=standardize"]
    full, run = _run(tmp_path, "full", *over)
    assert np.isfinite(full["test"]["mAP"])
    stopped, _ = _run(tmp_path, "part", *over, "train.stop_after_epoch=1")
    assert stopped["interrupted"]
    resumed, _ = _run(tmp_path, "resumed", *over, f"train.resume={tmp_path / 'part' / 'checkpoints' / 'last.pt'}")
    assert resumed["test"] == full["test"]

    # the bank a run builds: each copy's view features, scaled, at the unlabeled rows
    from hydra.utils import instantiate

    from bbam.app.config import plain_section

    cfg = _compose(["data=image_folder", f"data.root={tmp_path / 'imgs'}", "data.split_file=split.tsv", *TINY, *over])
    plan = prepare(cfg)
    views = instantiate(plain_section(plan.model["views"]))
    views.prepare(plan)
    rows = plan.splits["unlabeled"]
    assert views.bank_seconds is not None and views._bank["weak"].shape == (2, len(rows), 1280)
    for name, recipes in views.recipes().items():
        for v, recipe in enumerate(recipes):
            raw = view_features(plan.data.images, plan.inputs.backbone, recipe)
            assert torch.equal(views._bank[name][v], plan.scaler.transform(raw)[rows])


def test_bank_needs_a_frozen_image_backbone():
    from bbam.app.inputs import FeatureInputs, ImageInputs

    for inputs in (FeatureInputs(), ImageInputs(32, {"name": "efficientnet_lite0", "finetune": True})):
        with pytest.raises(ValueError, match=r"'model.views.space' is 'bank', which needs image data read through a "
                                             r"frozen backbone"):
            inputs.view_matrix(WEAK)
