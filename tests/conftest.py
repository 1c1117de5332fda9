from pathlib import Path

import pytest
import torch

import bbam


def _shared_data_dir() -> Path:
    """The first of the app's data folders that holds a named set (``$BBAM_DATA_DIR`` or
    ``~/.cache/bbam/data``, where ``python -m bbam.data.fetch`` puts them; a ``shared/data``
    folder beside the checkout), else the first folder (named by the skip reason)."""
    from bbam.data.fetch import SOURCES
    from bbam.data.lookup import default_data_dirs

    dirs = default_data_dirs()
    for folder in dirs:
        if any((folder / output).exists() for src in SOURCES.values() for output in src.outputs):
            return folder
    return dirs[0]


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    path = _shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"real datasets not found at {path}: python -m bbam.data.fetch --all downloads them there")
    return path


def _variants():
    names = ["default"]
    for name in ("avx2", "avx512"):
        try:
            bbam._extension.cpu_kernels(name)
            names.append(name)
        except RuntimeError:
            pass
    bbam._extension.cpu_kernels("auto")
    return names


CPU_KERNEL_VARIANTS = _variants()


@pytest.fixture(params=CPU_KERNEL_VARIANTS)
def cpu_kernels(request):
    """Run a test once per CPU kernel variant compiled in and supported here (default, avx2, avx512)."""
    bbam._extension.cpu_kernels(request.param)
    yield request.param
    bbam._extension.cpu_kernels("auto")


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and bbam._extension.with_cuda() else [])


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
