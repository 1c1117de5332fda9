"""Report the environment bbam runs in, for bug reports: ``python -m bbam.collect_env``.

Prints torch and its CUDA / cuDNN, the GPUs, Python, the OS, how the compiled
extension ``bbam._C`` was built (torch and CUDA it was built against, OpenMP, the CPU
kernel variants compiled in, the compiler), the CPU kernel variant in use, ATen's CPU
capability, threads, ``nvcc`` and the versions of bbam's main dependencies.

Every entry is collected on its own: a missing or broken piece shows up as a value
(``None``, ``not found``, ``error: ...``) instead of stopping the report.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
from typing import Any, Callable

# Importable module -> distribution names to ask for its version (first found wins).
_PACKAGES = {
    "numpy": ("numpy",),
    "faiss": ("faiss-cpu", "faiss-gpu", "faiss-gpu-cu12", "faiss-gpu-cu11", "faiss"),
    "hydra": ("hydra-core",),
    "omegaconf": ("omegaconf",),
}

# Environment variables that change what bbam / ATen pick at run time.
_ENV_VARS = ("BBAM_CPU_KERNELS", "ATEN_CPU_CAPABILITY", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
             "CUDA_VISIBLE_DEVICES", "TORCH_CUDA_ARCH_LIST")


def _safe(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as err:  # noqa: BLE001 - a report must not die on one entry
        return f"error: {type(err).__name__}: {err}"


def _package_version(module: str, distributions: tuple[str, ...]) -> str | None:
    """Version of an importable package, or None when it is not installed."""
    try:
        if importlib.util.find_spec(module) is None:
            return None
    except (ImportError, ValueError):
        return None
    for dist in distributions:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    mod = importlib.import_module(module)
    return str(getattr(mod, "__version__", "unknown version"))


def _nvcc() -> str | None:
    path = shutil.which("nvcc")
    if path is None:
        return None
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as err:
        return f"{path} (error: {err})"
    match = re.search(r"release ([\d.]+), V([\w.\-]+)", out)
    version = match.group(2) if match else (out.strip().splitlines() or ["unknown version"])[-1]
    return f"{version} ({path})"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _os() -> str:
    text = platform.platform()
    try:
        release = platform.freedesktop_os_release()
        text += f" ({release.get('PRETTY_NAME', release.get('NAME', ''))})"
    except (OSError, AttributeError):
        pass
    return text


def _gpus(torch) -> str:
    if not torch.cuda.is_available():
        return "none"
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    caps = [".".join(map(str, torch.cuda.get_device_capability(i))) for i in range(len(names))]
    return "; ".join(f"{i}: {n} (sm {c})" for i, (n, c) in enumerate(zip(names, caps)))


def _cudnn(torch) -> str | None:
    if not torch.backends.cudnn.is_available():
        return None
    return str(torch.backends.cudnn.version())


def collect_env() -> dict[str, Any]:
    """The environment as an ordered ``{name: value}`` dict (values are str, int or None)."""
    env: dict[str, Any] = {}
    try:
        import torch
    except ImportError as err:
        env["torch"] = f"not importable: {err}"
        torch = None

    if torch is not None:
        env["torch"] = torch.__version__
        env["torch CUDA"] = torch.version.cuda
        env["torch HIP"] = getattr(torch.version, "hip", None)
        env["cuDNN"] = _safe(lambda: _cudnn(torch))
        env["GPUs"] = _safe(lambda: _gpus(torch))
    env["Python"] = sys.version.replace("\n", " ")
    env["OS"] = _safe(_os)
    env["CPU"] = _safe(_cpu_model)

    # The compiled extension: importing bbam._extension loads bbam._C and checks it.
    ext = None
    try:
        from bbam import _extension as ext
    except Exception as err:  # noqa: BLE001 - report why, do not fail
        env["bbam._C"] = f"failed to load: {type(err).__name__}: {err}"
    if ext is not None:
        info = ext.BUILD_INFO
        env["bbam"] = _safe(lambda: importlib.import_module("bbam").__version__)
        env["compiler"] = info.get("compiler")
        env["bbam._C built with torch"] = info.get("torch")
        env["bbam._C built with CUDA"] = info.get("cuda", "none")
        env["bbam._C OpenMP"] = info.get("openmp")
        env["bbam._C CPU kernels compiled"] = info.get("cpu_kernels")
        env["bbam CPU kernels in use"] = _safe(ext.cpu_kernels)

    if torch is not None:
        env["ATen CPU capability"] = _safe(torch.backends.cpu.get_cpu_capability)
        env["threads (intra-op)"] = _safe(torch.get_num_threads)
        env["threads (inter-op)"] = _safe(torch.get_num_interop_threads)
    env["CPU count"] = os.cpu_count()
    env["nvcc"] = _safe(_nvcc) or "not found"
    for module, dists in _PACKAGES.items():
        env[module] = _safe(lambda: _package_version(module, dists)) or "not installed"
    for var in _ENV_VARS:
        if var in os.environ:
            env[f"${var}"] = os.environ[var]
    return env


def format_env(env: dict[str, Any]) -> str:
    """``key: value`` lines with the values aligned."""
    width = max((len(k) for k in env), default=0) + 1
    return "\n".join(f"{key + ':':<{width}} {value}" for key, value in env.items())


def main() -> None:
    print(format_env(collect_env()))


if __name__ == "__main__":
    main()
