"""Images through the app: the per-batch pipeline, image views, training with a frozen or
fine-tuned backbone (and a CNN from scratch), resume, and prediction from image runs."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bbam.app.batches import LoaderBatches, TensorBatches, make_pipeline
from bbam.app.views import ImageViews
from bbam.data import ImageDecodeError, load_image_folder
from bbam.vision.features import image_features

pytest.importorskip("efficientnet_lite_pytorch", reason="the vision extra is not installed")

from test_images import write_images  # noqa: E402

TINY = ["data.image_size=32", "train.epochs=3", "train.warmup_epochs=1", "train.batch_size=8",
        "train.unlabeled_batch_size=16", "train.min_steps_per_epoch=2", "train.progress=false",
        "model.encoder.hidden=[32]", "model.encoder.out_dim=16", "model.backbone.num_workers=0"]
CNN = [o for o in TINY if not o.startswith(("model.encoder.hidden", "model.backbone"))]


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("BBAM_CACHE_DIR", str(tmp_path / "cache"))


def _run(tmp_path, name, *overrides, base=TINY):
    from test_train import _compose

    from bbam.train import train

    root = tmp_path / "imgs"
    if not root.exists():
        write_images(root, n=48, split=True)
    cfg = _compose(["data=image_folder", f"data.root={root}", "data.split_file=split.tsv", *base, *overrides])
    cfg.out_dir = str(tmp_path / name)
    return train(cfg), tmp_path / name


# --------------------------------------------------------------------------- pipelines
def test_images_stream_through_workers_as_the_decoded_tensor(tmp_path):
    data = load_image_folder(write_images(tmp_path / "imgs", n=20), image_size=16)
    rows, y = data.images, data.Y
    decoded = rows[list(range(len(rows)))].float() / 255
    views = ImageViews(space="images")
    plan = [torch.tensor([3, 1, 7]), torch.tensor([0, 19, 5, 2])]
    reference = list(TensorBatches(decoded, y, views, ("weak", "strong"))(plan, seed=0, epoch=1))
    for workers in (0, 2):
        pipe = make_pipeline("tensor", rows, y, views, ("weak", "strong"), num_workers=workers)
        assert isinstance(pipe, LoaderBatches)  # images are always decoded per batch
        for got, ref in zip(pipe(plan, seed=0, epoch=1), reference):
            assert torch.equal(got.idx, ref.idx) and torch.equal(got.y, ref.y)
            assert got.x.dtype == torch.float32 and torch.equal(got.x, ref.x)
            for name in ("weak", "strong"):
                assert torch.equal(got.views[name], ref.views[name])


def test_a_corrupt_image_in_a_worker_is_one_clear_error(tmp_path):
    root = write_images(tmp_path / "imgs", n=8)
    data = load_image_folder(root, image_size=16)
    (root / "sub" / "img5.png").write_bytes(b"garbage")
    pipe = make_pipeline("dataloader", data.images, data.Y, num_workers=2)
    with pytest.raises(ImageDecodeError, match=r"^image .*img5.png: cannot decode"):
        list(pipe([torch.arange(8)], seed=0, epoch=0))


def test_frozen_backbone_views_are_features_of_augmented_images(tmp_path):
    settings = {"name": "efficientnet_lite0", "progress": False, "num_workers": 0}
    data = load_image_folder(write_images(tmp_path / "imgs", n=6), image_size=32)
    views = ImageViews(space="images", backbone="efficientnet_lite0")
    assert views.needs_images and ImageViews(backbone="efficientnet_lite0").space == "features"
    pipe = make_pipeline("tensor", image_features(data.images, settings), None, views, ("weak",), images=data.images)
    (batch,) = list(pipe([torch.arange(6)], seed=0, epoch=0))
    assert batch.x.shape == (6, 1280) and batch.views["weak"].shape == (6, 1280)
    cos = torch.nn.functional.cosine_similarity(batch.views["weak"], batch.x)
    assert cos.min() > 0.7  # a flipped / shifted image keeps most of its features
    with pytest.raises(ValueError, match="'model.views.space' is 'features' but the model reads pixels"):
        ImageViews(space="features", backbone="efficientnet_lite0", finetune=True)


# --------------------------------------------------------------------------- training and prediction
def test_frozen_backbone_run_and_prediction(tmp_path):
    from bbam.app.predict import Predictor
    from bbam.predict import predict_file

    result, run = _run(tmp_path, "frozen", "method=bbam")
    assert np.isfinite(result["test"]["mAP"])
    inputs = json.loads((run / "inputs.json").read_text())
    assert inputs["kind"] == "images" and inputs["backbone"]["name"] == "efficientnet_lite0"
    # the run's own test images, predicted from files, give the run's test scores
    root = tmp_path / "imgs"
    test_lines = [line for line in (root / "split.tsv").read_text().splitlines() if line.endswith("test")]
    (root / "test_list.tsv").write_text("\n".join(line.split("\t")[0] for line in test_lines) + "\n")
    out = predict_file(str(run), str(root / "test_list.tsv"), str(tmp_path / "pred"))
    from bbam import metrics as M

    labels = load_image_folder(root, split_file="split.tsv", image_size=32)
    y_test = labels.Y[labels.test_idx]
    assert M.evaluate(torch.from_numpy(out["scores"]), y_test)["mAP"] == pytest.approx(result["test"]["mAP"], abs=1e-4)
    rows = list(csv.reader(open(tmp_path / "pred" / "predictions.csv")))
    assert rows[0] == ["index", "file", "labels"] and rows[1][1].endswith("img0.png") and len(rows) == 13
    folder = predict_file(str(run), str(root / "sub"), str(tmp_path / "pred2"))  # a folder: every image, sorted
    assert folder["scores"].shape == (48, 2)
    predictor = Predictor.from_run(run)
    with pytest.raises(ValueError, match=r"argument 'data': folder .*empty holds no image files"):
        (tmp_path / "empty").mkdir()
        predictor.read(tmp_path / "empty")


def test_image_space_views_with_a_frozen_backbone_train(tmp_path):
    result, _ = _run(tmp_path, "fm", "method=fixmatch", "model.views.space=images")
    assert np.isfinite(result["test"]["mAP"])


def test_finetuned_run_resumes_to_the_same_result_and_predicts(tmp_path):
    common = ["method=fixmatch", "model.finetune=true", "train.num_workers=2"]
    full, run = _run(tmp_path, "full", *common)
    part, _ = _run(tmp_path, "part", *common, "train.stop_after_epoch=1")
    assert part["interrupted"]
    resumed, _ = _run(tmp_path, "resumed", *common, f"train.resume={tmp_path / 'part' / 'checkpoints' / 'last.pt'}")
    assert resumed["best_epoch"] == full["best_epoch"]
    for key, value in full["test"].items():
        assert resumed["test"][key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    groups = ckpt["optimizer"]["param_groups"]
    assert [g["lr_scale"] for g in groups] == [0.1, 1.0]  # the backbone's lower learning rate
    assert groups[0]["max_lr"] == pytest.approx(0.1 * groups[1]["max_lr"])
    from bbam.predict import predict_file

    out = predict_file(str(run), str(tmp_path / "imgs" / "labels.tsv"), str(tmp_path / "pred"))
    assert out["scores"].shape == (48, 2) and np.isfinite(out["scores"]).all()


def test_cnn_from_scratch_on_pixels_with_caps_two_views(tmp_path):
    result, run = _run(tmp_path, "cnn", "model=image_cnn", "method=cap", "model.encoder.out_dim=16",
                       "method.unlabeled_views=[weak,strong]", base=CNN)
    assert np.isfinite(result["test"]["mAP"])
    assert json.loads((run / "inputs.json").read_text())["backbone"] is None


def test_a_batch_of_one_photo_trains_with_running_batch_norm_statistics():
    from bbam.app.image_models import PretrainedImageEncoder

    enc = PretrainedImageEncoder(0, finetune=True, hidden=[8], out_dim=4).train()
    enc(torch.rand(1, 3, 32, 32)).sum().backward()  # batch norm cannot take batch statistics of one photo
    assert enc.backbone.training and enc.backbone.net.net._bn0.weight.grad is not None
    assert {id(p) for p in enc.lr_scale_groups()[0][0]} == {id(p) for p in enc.backbone.parameters()}
    with pytest.raises(ValueError, match=r"inputs must be RGB pixels \[B, 3, S, S\]"):
        enc(torch.rand(2, 1280))
    with pytest.raises(ValueError, match="in_dim 7 is not the 1280 features"):
        PretrainedImageEncoder(7)


def test_an_unreadable_photo_stops_the_app_with_one_line(tmp_path):
    import subprocess
    import sys

    root = write_images(tmp_path / "imgs", n=12)
    (root / "sub" / "img3.png").write_bytes(b"garbage")
    proc = subprocess.run([sys.executable, "-m", "bbam.train", "data=image_folder", f"data.root={root}",
                           "data.image_size=32", "train.progress=false", f"hydra.run.dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, cwd=tmp_path,
                          env={**__import__("os").environ, "BBAM_CACHE_DIR": str(tmp_path / "cache"),
                               "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("bbam.train: error: image ")
    assert "img3.png: cannot decode" in proc.stderr and "Traceback" not in proc.stderr


def test_mobilenet_v2_model_config(tmp_path):
    from bbam.vision.backbones import weights_path

    try:
        weights_path("mobilenet_v2")
    except ImportError as err:
        pytest.skip(str(err))
    result, run = _run(tmp_path, "mnv2", "model=mobilenet_v2", "method=supervised")
    assert np.isfinite(result["test"]["mAP"])
    assert json.loads((run / "inputs.json").read_text())["backbone"]["name"] == "mobilenet_v2"


def test_frozen_image_views_refuse_scaled_features(tmp_path):
    with pytest.raises(ValueError, match="model.views.space=images .* use train.scaling=none"):
        _run(tmp_path, "scaled", "method=fixmatch", "model.views.space=images", "train.scaling=standardize")


def test_frozen_batchnorm_statistics_when_fine_tuning():
    from bbam.app.image_models import PretrainedImageEncoder

    enc = PretrainedImageEncoder(0, finetune=True, hidden=[8], out_dim=4, freeze_batchnorm=True).train()
    bn = enc.backbone.net.net._bn0
    before = bn.running_mean.clone()
    enc(torch.rand(4, 3, 32, 32)).sum().backward()
    assert not bn.training and torch.equal(bn.running_mean, before) and bn.weight.grad is not None
    assert enc.training and enc.head.training  # the rest trains as usual
    enc(torch.rand(1, 3, 32, 32))  # the batch-of-one path restores the same modes
    assert not bn.training and enc.backbone.net.training

