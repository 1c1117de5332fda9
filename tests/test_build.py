"""Build and environment checks: collect_env, BUILD_INFO, the version guard of
bbam/_extension.py, the run-time CPU kernel choice, and (opt-in) the CMake build.

The CMake test compiles the whole library (minutes); run it with
``BBAM_TEST_CMAKE=1 python -m pytest tests/test_build.py``.
"""
from __future__ import annotations

import math
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bbam
from bbam import _extension
from bbam.collect_env import collect_env, format_env

REPO = Path(__file__).resolve().parents[1]


def _base(version: str) -> str:
    return version.split("+")[0]


# ---------------------------------------------------------------------------
# collect_env
# ---------------------------------------------------------------------------
def test_collect_env_cli_mentions_torch_version():
    proc = subprocess.run([sys.executable, "-m", "bbam.collect_env"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert torch.__version__ in proc.stdout
    lines = dict(line.split(":", 1) for line in proc.stdout.splitlines() if ":" in line)
    assert lines["bbam._C built with torch"].strip() == _base(torch.__version__)
    assert lines["compiler"].strip() == bbam.BUILD_INFO["compiler"]


def test_collect_env_dict():
    env = collect_env()
    assert env["torch"] == torch.__version__
    assert env["torch CUDA"] == torch.version.cuda
    assert env["bbam._C built with torch"] == _extension.BUILD_INFO["torch"]
    assert env["bbam._C built with CUDA"] == _extension.BUILD_INFO.get("cuda", "none")
    assert env["bbam CPU kernels in use"] == _extension.cpu_kernels()
    assert env["ATen CPU capability"] == torch.backends.cpu.get_cpu_capability()
    assert env["threads (intra-op)"] == torch.get_num_threads()
    for key in ("cuDNN", "GPUs", "Python", "OS", "compiler", "bbam._C OpenMP",
                "bbam._C CPU kernels compiled", "nvcc", "numpy", "faiss", "hydra", "omegaconf"):
        assert key in env, key
    if torch.cuda.is_available():
        assert torch.cuda.get_device_name(0) in env["GPUs"]
    else:
        assert env["GPUs"] == "none"
    if shutil.which("nvcc") is None:
        assert env["nvcc"] == "not found"
    else:
        assert shutil.which("nvcc") in env["nvcc"]
    # Aligned "key: value" lines.
    lines = format_env(env).splitlines()
    assert len(lines) == len(env)
    starts = {len(line) - len(line.split(":", 1)[1].lstrip()) for line in lines if line.split(":", 1)[1].strip()}
    assert len(starts) == 1, starts


# ---------------------------------------------------------------------------
# BUILD_INFO and the version guard
# ---------------------------------------------------------------------------
def test_build_info_matches_running_torch():
    info = _extension.BUILD_INFO
    assert bbam.BUILD_INFO is info
    assert info["torch"] == _base(torch.__version__)
    if torch.version.cuda is None:
        assert info["cuda"] == "none"
        assert not _extension.with_cuda()
    elif info["cuda"] != "none":
        assert info["cuda"].split(".")[0] == torch.version.cuda.split(".")[0]
    assert info["openmp"] != "none"  # built with -fopenmp
    variants = info["cpu_kernels"].split(",")
    assert "default" in variants
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert "avx2" in variants
    assert info["compiler"]
    # Loading again gives the same facts.
    assert _extension._load() == info


def _fake_build_info(monkeypatch, **overrides):
    info = dict(_extension.BUILD_INFO, **overrides)
    text = ";".join(f"{k}={v}" for k, v in info.items())
    monkeypatch.setattr(torch.ops.bbam, "_build_info", lambda: text)


def test_version_guard_torch_mismatch_running(monkeypatch):
    built = _extension.BUILD_INFO["torch"]
    monkeypatch.setattr(torch, "__version__", "1.13.1+cu117")
    with pytest.raises(ImportError) as err:
        _extension._load()
    message = str(err.value)
    assert f"built against torch {built} but torch 1.13.1 is running" in message
    assert "pip install --no-build-isolation" in message


def test_version_guard_torch_mismatch_built(monkeypatch):
    _fake_build_info(monkeypatch, torch="2.0.1")
    with pytest.raises(ImportError, match=r"built against torch 2\.0\.1 but torch .* is running.*Rebuild"):
        _extension._load()


def test_version_guard_cuda_build_on_cpu_torch(monkeypatch):
    _fake_build_info(monkeypatch, cuda="12.4")
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(ImportError, match=r"built with CUDA 12\.4 but the running torch .* CPU-only build"):
        _extension._load()


def test_version_guard_cuda_major_mismatch(monkeypatch):
    _fake_build_info(monkeypatch, cuda="11.8")
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    with pytest.raises(ImportError, match=r"built with CUDA 11\.8 but torch uses CUDA 12\.4"):
        _extension._load()


def test_version_guard_same_cuda_major_is_accepted(monkeypatch):
    _fake_build_info(monkeypatch, cuda="12.1")
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    assert _extension._load()["cuda"] == "12.1"


def test_unloadable_extension_gives_clear_import_error(monkeypatch):
    monkeypatch.delattr(bbam, "_C", raising=False)
    monkeypatch.setitem(sys.modules, "bbam._C", None)
    with pytest.raises(ImportError, match=r"(?s)could not load the compiled extension bbam\._C.*Rebuild"):
        _extension._load()


def test_guard_passes_again_after_patches():
    assert _extension._load() == _extension.BUILD_INFO


# ---------------------------------------------------------------------------
# CPU kernel variants
# ---------------------------------------------------------------------------
def _cpu_flags() -> set:
    try:
        return set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return set()


def _cpu_has_avx2() -> bool:
    return {"avx2", "fma", "f16c"} <= _cpu_flags()


def _cpu_has_avx512() -> bool:
    return _cpu_has_avx2() and {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= _cpu_flags()


def _expected_auto() -> str:
    """The variant 'auto' must pick: the widest compiled + supported, capped by ATen's choice."""
    aten = torch.backends.cpu.get_cpu_capability().lower()
    compiled = _extension.BUILD_INFO["cpu_kernels"].split(",")
    if aten == "avx512" and "avx512" in compiled and _cpu_has_avx512():
        return "avx512"
    if aten in ("avx2", "avx512") and "avx2" in compiled and _cpu_has_avx2():
        return "avx2"
    return "default"


def _small_loss() -> float:
    cos = torch.tensor([[0.9, -0.2, 0.1], [0.3, 0.8, -0.5]])
    targets = torch.tensor([[1, 0, -1], [0, 1, 0]], dtype=torch.int8)
    loss = torch.ops.bbam.bbam_loss(cos, targets, torch.ones(2, 3), torch.zeros(2, 3), None, 0.4, 20.0, 1)
    return loss.item()


def _small_loss_by_hand() -> float:
    total = 0.0
    for c, y in [(0.9, 1), (-0.2, 0), (0.3, 0), (0.8, 1), (-0.5, 0)]:
        logit = 20.0 * (c - y * 0.4)
        total += max(logit, 0.0) + math.log1p(math.exp(-abs(logit))) - y * logit
    return total


@pytest.fixture
def restore_cpu_kernels():
    yield
    _extension.cpu_kernels("auto")


def test_cpu_kernels_default_selectable(restore_cpu_kernels):
    assert _extension.cpu_kernels("default") == "default"
    assert _extension.cpu_kernels() == "default"
    assert _small_loss() == pytest.approx(_small_loss_by_hand(), rel=1e-5)
    assert _extension.cpu_kernels("auto") == _expected_auto()


@pytest.mark.skipif(not _cpu_has_avx2(), reason="CPU without AVX2 + FMA + F16C")
def test_cpu_kernels_avx2_selectable(restore_cpu_kernels):
    if "avx2" not in _extension.BUILD_INFO["cpu_kernels"].split(","):
        pytest.skip("AVX2 kernels not compiled into this build")
    assert _extension.cpu_kernels("avx2") == "avx2"
    assert _extension.cpu_kernels() == "avx2"
    assert _small_loss() == pytest.approx(_small_loss_by_hand(), rel=1e-5)
    _extension.cpu_kernels("default")
    assert _extension.cpu_kernels("AVX2") == "avx2"  # case-insensitive


def test_cpu_kernels_auto_restores(restore_cpu_kernels):
    before = _extension.cpu_kernels()
    _extension.cpu_kernels("default")
    restored = _extension.cpu_kernels("auto")
    assert _extension.cpu_kernels() == restored
    if "BBAM_CPU_KERNELS" not in os.environ:
        assert restored == before
    assert restored == _expected_auto()


@pytest.mark.skipif(not _cpu_has_avx512(), reason="CPU without AVX-512 F/BW/VL/DQ")
def test_cpu_kernels_avx512_selectable(restore_cpu_kernels):
    if "avx512" not in _extension.BUILD_INFO["cpu_kernels"].split(","):
        pytest.skip("AVX-512 kernels not compiled into this build")
    assert _extension.cpu_kernels("avx512") == "avx512"
    assert _small_loss() == pytest.approx(_small_loss_by_hand(), rel=1e-5)


def _expected_with_cap(cap: str) -> str:
    """'auto' under ATEN_CPU_CAPABILITY=cap: the widest compiled + supported, not above cap."""
    compiled = _extension.BUILD_INFO["cpu_kernels"].split(",")
    if cap == "avx2" and "avx2" in compiled and _cpu_has_avx2():
        return "avx2"
    return "default"


@pytest.mark.parametrize("cap", ["default", "avx2"])
def test_aten_capability_caps_the_variant(cap):
    code = "import bbam._extension as e; print(e.cpu_kernels())"
    env = {k: v for k, v in os.environ.items() if k != "BBAM_CPU_KERNELS"}
    env["ATEN_CPU_CAPABILITY"] = cap
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == _expected_with_cap(cap)


def test_cpu_kernels_unknown_name(restore_cpu_kernels):
    with pytest.raises(RuntimeError, match="unknown CPU kernel variant 'sse9'"):
        _extension.cpu_kernels("sse9")


def test_cpu_kernels_env_var_at_load():
    code = "import bbam._extension as e; print(e.cpu_kernels())"
    env = dict(os.environ, BBAM_CPU_KERNELS="default")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "default"


# ---------------------------------------------------------------------------
# CMake build of libbbam_ops (opt-in: minutes)
# ---------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("BBAM_TEST_CMAKE") != "1",
                    reason="CMake build of libbbam_ops takes minutes; set BBAM_TEST_CMAKE=1")
def test_cmake_build(tmp_path):
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.fail("BBAM_TEST_CMAKE=1 but cmake is not on PATH")
    build = tmp_path / "build"
    configure = [cmake, "-S", str(REPO), "-B", str(build),
                 f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
                 "-DBBAM_BUILD_EXAMPLES=ON"]
    if shutil.which("ninja"):
        configure += ["-G", "Ninja"]
    proc = subprocess.run(configure, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    if torch.version.cuda is None:
        assert "BBAM_WITH_CUDA: OFF" in proc.stdout

    jobs = str(os.cpu_count() or 2)
    proc = subprocess.run([cmake, "--build", str(build), "--target", "bbam_ops", "-j", jobs],
                          capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-20000:] + proc.stderr[-20000:]
    libs = sorted(build.glob("libbbam_ops.so*")) + sorted(build.glob("libbbam_ops*.dylib"))
    assert libs, sorted(p.name for p in build.iterdir())
    lib = libs[0]
    if shutil.which("nm") and lib.suffix != ".dylib":
        symbols = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True, text=True).stdout
        assert "PyInit__C" not in symbols  # BBAM_NO_PYTHON
    if shutil.which("readelf"):
        dynamic = subprocess.run(["readelf", "-d", str(lib)], capture_output=True, text=True).stdout
        assert "libpython" not in dynamic and "libtorch_python" not in dynamic

    # The C++ consumer: runs bbam_loss through the dispatcher (no Python).
    proc = subprocess.run([cmake, "--build", str(build), "--target", "bbam_example", "-j", jobs],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-20000:] + proc.stderr[-20000:]
    run = subprocess.run([str(build / "examples" / "cpp" / "bbam_example")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    match = re.search(r"bbam_loss = ([\d.]+)", run.stdout)
    assert match, run.stdout
    assert float(match.group(1)) == pytest.approx(_small_loss_by_hand(), rel=1e-5)
    assert f"torch={_base(torch.__version__)}" in run.stdout
