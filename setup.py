"""Build of bbam's C++/CUDA extension ``bbam._C``.

Install with the already-installed torch (never let pip build against another)::

    pip install torch==2.13.0            # or your CUDA build of torch
    pip install --no-build-isolation -e ".[dev]"

Switches (environment variables):

* ``BBAM_FORCE_CUDA=1`` — build the CUDA kernels even when no GPU is visible
  (e.g. on a build machine); fails loudly if CUDA cannot be built.
* ``BBAM_FORCE_CPU=1`` — CPU only, even when torch has CUDA and nvcc is found.
* otherwise CUDA is built when torch is a CUDA build and ``nvcc`` is found.
* ``TORCH_CUDA_ARCH_LIST`` — CUDA architectures (default ``8.0;9.0+PTX``).
* ``MAX_JOBS`` — parallel compile jobs (ninja).
* ``BBAM_CLEAN_BUILD=1`` — compile everything afresh in a temporary folder; by default
  object files are kept in ``build/`` and a repeated install recompiles only what changed.
"""
import glob
import os
import platform
import shutil
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

try:
    import torch
    from torch.utils import cpp_extension
except ImportError:  # pragma: no cover - the message is the point
    sys.exit(
        "bbam: torch must be installed before building bbam, and the build must see it:\n"
        "  pip install torch==2.13.0   (or your CUDA build of torch)\n"
        "  pip install --no-build-isolation -e .\n"
        "(without --no-build-isolation pip builds in an empty environment: 'No module named torch')."
    )

ROOT = os.path.dirname(os.path.abspath(__file__))
CSRC = os.path.join("csrc")
# Compiled separately with their instruction-set flags, selected at run time (csrc/cpu/dispatch.cpp).
AVX2_SOURCES = [os.path.join(CSRC, "cpu", "kernels_avx2.cpp")]
AVX512_SOURCES = [os.path.join(CSRC, "cpu", "kernels_avx512.cpp")]
AVX2_FLAGS = ["-mavx2", "-mfma", "-mf16c"]
AVX512_FLAGS = AVX2_FLAGS + ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq"]


def env_flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def want_cuda():
    if env_flag("BBAM_FORCE_CPU"):
        return False
    forced = env_flag("BBAM_FORCE_CUDA")
    has_nvcc = cpp_extension.CUDA_HOME is not None and shutil.which(
        os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc")) is not None
    if forced:
        problems = []
        if torch.version.cuda is None:
            problems.append(f"torch {torch.__version__} is a CPU-only build (install a CUDA build of torch)")
        if not has_nvcc:
            problems.append("nvcc was not found (set CUDA_HOME)")
        if problems:
            sys.exit("bbam: BBAM_FORCE_CUDA=1 but CUDA cannot be built: " + "; ".join(problems))
        return True
    return torch.version.cuda is not None and has_nvcc


def x86_64():
    return platform.machine().lower() in ("x86_64", "amd64")


def make_extension(with_cuda):
    sources = sorted(glob.glob(os.path.join(CSRC, "**", "*.cpp"), recursive=True))
    sources = [s for s in sources if s not in AVX2_SOURCES + AVX512_SOURCES]
    cxx = ["-O3", "-std=c++20", "-fopenmp", "-Wall", "-Wno-unknown-pragmas", "-Wno-psabi"]
    nvcc = ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-lineinfo"]
    macros = []
    if with_cuda:
        sources += sorted(glob.glob(os.path.join(CSRC, "**", "*.cu"), recursive=True))
        macros.append(("BBAM_WITH_CUDA", None))
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
        ext_cls = cpp_extension.CUDAExtension
        extra = {"cxx": cxx, "nvcc": nvcc}
    else:
        ext_cls = cpp_extension.CppExtension
        extra = {"cxx": cxx}
    ext = ext_cls(
        name="bbam._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, CSRC)],
        define_macros=macros,
        extra_compile_args=extra,
        extra_link_args=["-fopenmp"],
        py_limited_api=False,
    )
    # Sources compiled with extra flags by BuildExtensionWithCpuVariants.
    ext.bbam_variant_sources = ([(AVX2_FLAGS, AVX2_SOURCES), (AVX512_FLAGS, AVX512_SOURCES)] if x86_64()
                                else [([], AVX2_SOURCES + AVX512_SOURCES)])
    print(f"bbam: building {'CPU + CUDA' if with_cuda else 'CPU only'} "
          f"(torch {torch.__version__}, CUDA {torch.version.cuda})", file=sys.stderr)
    return ext


def persistent_build_dir(with_cuda):
    """``build/<python>-<torch>-<cpu|cuda>``: object files kept between installs, so that
    ``pip install -e .`` run again recompiles only what changed (ninja compares each
    object with its sources, headers and compile command). pip's editable install would
    otherwise compile into a fresh temporary folder every time. ``BBAM_CLEAN_BUILD=1``
    restores that (a build from scratch in a temporary folder)."""
    tag = f"py{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__}-{'cuda' if with_cuda else 'cpu'}"
    return os.path.join(ROOT, "build", tag.replace("+", "_"))


class BuildExtensionWithCpuVariants(cpp_extension.BuildExtension):
    """BuildExtension that also compiles per-CPU-capability sources with their own flags,
    into a persistent build folder (see :func:`persistent_build_dir`)."""

    def finalize_options(self):
        super().finalize_options()
        if not env_flag("BBAM_CLEAN_BUILD"):
            self.build_temp = persistent_build_dir(WITH_CUDA)

    def build_extension(self, ext):
        # one ninja run per flag set (torch writes one build.ninja per output folder, so each
        # variant gets its own folder). Measured: ~5 s each against ~40-60 s for each source
        # that includes torch/extension.h, so they are not worth overlapping with the rest.
        for flags, srcs in getattr(ext, "bbam_variant_sources", []):
            args = dict(ext.extra_compile_args) if isinstance(ext.extra_compile_args, dict) else {
                "cxx": list(ext.extra_compile_args)}
            args["cxx"] = list(args.get("cxx", [])) + flags
            variant_dir = os.path.join(self.build_temp, "variant-" + os.path.splitext(os.path.basename(srcs[0]))[0])
            objects = self.compiler.compile(
                srcs, output_dir=variant_dir, macros=ext.define_macros,
                include_dirs=ext.include_dirs, debug=self.debug, extra_postargs=args,
                depends=ext.depends)
            ext.extra_objects = list(ext.extra_objects or []) + objects
        super().build_extension(ext)


class BuildPyWithConfigs(build_py):
    """Ship the top-level Hydra configs/ inside the package (bbam/configs)."""

    def run(self):
        super().run()
        src = os.path.join(ROOT, "configs")
        if os.path.isdir(src) and not self.editable_mode:
            dst = os.path.join(self.build_lib, "bbam", "configs")
            shutil.copytree(src, dst, dirs_exist_ok=True)


WITH_CUDA = want_cuda()
setup(
    ext_modules=[make_extension(WITH_CUDA)],
    cmdclass={"build_ext": BuildExtensionWithCpuVariants.with_options(use_ninja=True),
              "build_py": BuildPyWithConfigs},
)
