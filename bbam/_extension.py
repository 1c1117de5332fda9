"""Loads the compiled extension ``bbam._C`` and checks that it matches the running torch.

Importing ``bbam._C`` runs the C++ ``TORCH_LIBRARY`` registrations (schemas and the
CPU/CUDA kernels). A binary built against another torch (or CUDA) version fails
here with a message that says how to rebuild, instead of crashing later.
"""
from __future__ import annotations

import torch

_REBUILD = "Rebuild bbam against the running torch: pip install --no-build-isolation -e ."


def _base_version(version: str) -> str:
    return version.split("+")[0]


def _load() -> dict[str, str]:
    try:
        from . import _C  # noqa: F401  (registers the ops)
    except ImportError as err:
        raise ImportError(
            f"bbam: could not load the compiled extension bbam._C: {err}\n"
            f"It must be built against the torch that is running (torch {torch.__version__}). {_REBUILD}"
        ) from err
    info = dict(item.split("=", 1) for item in torch.ops.bbam._build_info().split(";"))
    built, running = info.get("torch", "?"), _base_version(torch.__version__)
    if built != running:
        raise ImportError(f"bbam._C was built against torch {built} but torch {running} is running. {_REBUILD}")
    built_cuda = info.get("cuda", "none")
    if built_cuda != "none":
        if torch.version.cuda is None:
            raise ImportError(
                f"bbam._C was built with CUDA {built_cuda} but the running torch {torch.__version__} "
                f"is a CPU-only build. {_REBUILD}"
            )
        if built_cuda.split(".")[0] != torch.version.cuda.split(".")[0]:
            raise ImportError(
                f"bbam._C was built with CUDA {built_cuda} but torch uses CUDA {torch.version.cuda}. {_REBUILD}"
            )
    return info


BUILD_INFO: dict[str, str] = _load()


def with_cuda() -> bool:
    """Whether the CUDA kernels were compiled into ``bbam._C``."""
    return BUILD_INFO.get("cuda", "none") != "none"


def cpu_kernels(select: str | None = None) -> str:
    """The CPU kernel variant in use (``"avx512"``, ``"avx2"`` or ``"default"``); pass a name to switch.

    The variant is chosen at load time: the widest one compiled in that the CPU supports,
    never wider than ATen's own choice (``ATEN_CPU_CAPABILITY``); ``BBAM_CPU_KERNELS=...``
    forces one. Switching is for tests and benchmarks.
    """
    return torch.ops.bbam._cpu_kernels(select)
