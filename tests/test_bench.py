"""Smoke test of the whole-epoch benchmark (bench/epoch.py --quick): it runs, writes its
JSON and reports every phase; the numbers themselves are measured there, never asserted."""
import json
import os
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_epoch_bench_quick(tmp_path):
    out = tmp_path / "epoch.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "epoch.py"), "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    (summary,) = result["summary"]
    for key in ("data_s", "split_s", "st_cap_s", "st_features_s", "st_statistics_s", "st_sampling_s",
                "st_bookkeeping_s", "st_steps_s", "st_evaluation_s", "st_other_s", "st_other_over_steps",
                "peak_rss_gib"):
        assert math.isfinite(summary[key]), key
    assert summary["st_steps_s"] > 0 and summary["peak_rss_gib"] > 0
    assert "(non-step)/steps" in proc.stdout


def test_images_bench_quick(tmp_path):
    """bench/images.py --quick on a folder of generated photos: every figure is reported."""
    import pytest

    pytest.importorskip("efficientnet_lite_pytorch", reason="the vision extra is not installed")
    from test_images import write_images

    root = write_images(tmp_path / "imgs", n=130, size=40)
    out = tmp_path / "images.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "images.py"), "--quick", "--root", str(root),
                           "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    (size,) = result["sizes"]
    for key in ("decode_w0_img_s", "decode_w1_img_s", "decode_w2_img_s", "decode_views_w2_img_s", "weak_img_s",
                "strong_img_s", "frozen_img_s", "frozen_nchw_img_s", "frozen_gflop_per_img", "frozen_gflop_s", "finetune_step_img_s",
                "finetune_gflop_s", "feature_views_batch_s", "image_views_batch_s", "image_over_feature_views"):
        assert math.isfinite(size[key]) and size[key] > 0, key
    assert [r["rows"] for r in result["rss"]] == [64, 128] and all(r["peak_rss_mib"] > 0 for r in result["rss"])
    assert "peak RSS" in proc.stdout


def test_images_bench_runtimes_quick(tmp_path):
    """bench/images.py --quick --runtimes: both runtimes' photos/s, GFLOP/s and share of the
    peak, decoding alone, the bank's passes (and the texts' rates when the text extra is there)."""
    import pytest

    pytest.importorskip("efficientnet_lite_pytorch", reason="the vision extra is not installed")
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    from test_images import write_images

    root = write_images(tmp_path / "imgs", n=70, size=40)
    out = tmp_path / "runtimes.json"
    env = {**os.environ, "BBAM_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "images.py"), "--quick", "--runtimes", "--root",
                           str(root), "--json", str(out)], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (r,) = json.loads(out.read_text())["runtimes"]
    for key in ("torch_cold_img_s", "onnx_cold_img_s", "onnx_over_torch_cold", "decode_only_img_s",
                "torch_forward_img_s", "onnx_forward_img_s", "torch_gflop_s", "onnx_gflop_s", "torch_peak_fraction",
                "onnx_peak_fraction", "bank_weak_img_s", "bank_strong_img_s", "bank_v4_s_per_1000_photos"):
        assert math.isfinite(r[key]) and r[key] > 0, key
    assert "cold features torch" in proc.stdout


def test_sensitivity_bench_runs_and_tabulates(tmp_path):
    """bench/sensitivity.py on a tiny synthetic set: an unperturbed and a perturbed run per
    cell, one JSON line each, and the summary's table."""
    out = tmp_path / "s.jsonl"
    tiny = ["data.num_samples=200", "data.num_labels=4", "data.num_features=8", "model.encoder.hidden=[8]",
            "model.encoder.out_dim=4", "train.epochs=2", "train.min_steps_per_epoch=2"]
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "sensitivity.py"), "--data", "synthetic",
                           "--methods", "supervised", "--lb", "0.2", "--seeds", "0", "--draws", "1",
                           "--noise", "1e-3", "--out", str(out), "--", *tiny],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["draw"] for r in rows] == [0, 1] and rows[1]["noise"] == 1e-3
    assert all(math.isfinite(r["test"]["mAP"]) for r in rows)
    table = subprocess.run([sys.executable, str(ROOT / "bench" / "sensitivity.py"), "--summary", str(out)],
                           capture_output=True, text=True, timeout=120).stdout
    assert "| supervised | 0.2 |" in table and "largest move of the mean" in table
