"""Smoke test of the whole-epoch benchmark (bench/epoch.py --quick): it runs, writes its
JSON and reports every phase; the numbers themselves are measured there, never asserted."""
import json
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
