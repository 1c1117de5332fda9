// The one place where bbam's operator schemas are defined (pytorch/extension-cpp
// style). Backends register implementations with TORCH_LIBRARY_IMPL in
// <op>/<op>_cpu.cpp and <op>/<op>_cuda.cu; fake kernels and autograd are
// registered from Python (bbam/ops.py).
#include "cpu/kernels.h"

#if !defined(BBAM_NO_PYTHON)
#include <Python.h>
#endif
#if defined(BBAM_WITH_CUDA)
#include <cuda.h>
#endif
#include <torch/library.h>
#include <torch/version.h>

#include <string>

namespace bbam {
namespace {

// Build facts read by bbam/_extension.py at import (version checks, collect_env).
std::string build_info() {
  std::string info = "torch=" TORCH_VERSION;
#if defined(BBAM_WITH_CUDA)
  info += ";cuda=" + std::to_string(CUDA_VERSION / 1000) + "." + std::to_string(CUDA_VERSION / 10 % 100);
#else
  info += ";cuda=none";
#endif
#if defined(_OPENMP)
  info += ";openmp=" + std::to_string(_OPENMP);
#else
  info += ";openmp=none";
#endif
  info += std::string(";cpu_kernels=default") + (cpu::avx2_kernel_table() ? ",avx2" : "") +
          (cpu::avx512_kernel_table() ? ",avx512" : "");
#if defined(__clang__)
  info += ";compiler=clang " __clang_version__;
#elif defined(__GNUC__)
  info += ";compiler=gcc " __VERSION__;
#endif
  return info;
}

std::string cpu_kernels(std::optional<std::string> select) {
  if (select.has_value()) return cpu::set_kernels(*select);
  return cpu::kernels().name;
}

}  // namespace

TORCH_LIBRARY(bbam, m) {
  m.def("label_angle_stats(Tensor features, Tensor prototypes, Tensor targets) "
        "-> (Tensor count, Tensor mean, Tensor m2)");
  m.def("bbam_loss(Tensor cos, Tensor targets, Tensor coef_a, Tensor coef_b, Tensor? weight, "
        "float margin, float scale, int reduction) -> Tensor");
  // Training path: the loss and d loss / d cos (float32, float64 for float64 cos) in one
  // pass (backward = one multiply).
  m.def("_bbam_loss_with_grad(Tensor cos, Tensor targets, Tensor coef_a, Tensor coef_b, Tensor? weight, "
        "float margin, float scale, int reduction) -> (Tensor loss, Tensor grad_cos)");
  m.def("bbam_loss_backward(Tensor grad, Tensor cos, Tensor targets, Tensor coef_a, "
        "Tensor coef_b, Tensor? weight, float margin, float scale, int reduction) -> Tensor");
  m.def("angle_transform(Tensor cos, Tensor coef_a, Tensor coef_b, Tensor? targets) -> Tensor");
  m.def("angle_transform_backward(Tensor grad, Tensor cos, Tensor coef_a, Tensor coef_b, "
        "Tensor? targets) -> Tensor");
  // Per-label counts of negatives, positives and unknowns ([3, K] int64), validating targets.
  m.def("_label_counts(Tensor targets) -> Tensor");
  // Prototype negative sampling mask (bbam.sampling.NegativeSampler, exact backend):
  // every positive and, per label, its num_kept[k] negatives most cosine-similar to
  // prototypes[k]; sample_size rows place each label's band (0: no sample).
  m.def("negative_select(Tensor features, Tensor prototypes, Tensor targets, Tensor num_kept, "
        "int sample_size, float band_z) -> Tensor");
  // CAP pseudo-labels (bbam.cap, CPU kernel): per-label order statistics by selection;
  // targets [N, K] int8, confidence mask [N, K] bool, thresholds [K]; unknown_outside_mask:
  // targets -1 outside the mask, and an empty [0, K] mask.
  m.def("cap_select(Tensor scores, Tensor ranks, Tensor pos_keep, Tensor not_neg, bool unknown_outside_mask) "
        "-> (Tensor targets, Tensor mask, Tensor thresholds)");
  // Per row, the ranks of its positive entries summed for the ranking metrics (bbam.metrics,
  // CPU kernel): sum of precisions, mis-ordered pairs, deepest rank, number of positives.
  m.def("positive_rank_stats(Tensor scores, Tensor targets) "
        "-> (Tensor precision_sum, Tensor misordered, Tensor deepest, Tensor positives)");
  // Introspection (no tensors): build facts, and the CPU kernel variant in use
  // ("default", "avx2" or "avx512"; pass a name to switch, e.g. to test each).
  m.def("_build_info() -> str", &build_info);
  m.def("_cpu_kernels(str? select=None) -> str", &cpu_kernels);
}

}  // namespace bbam

// An empty Python module: importing bbam._C loads the library, which runs the
// registrations above (no pybind11, no Python-version-specific symbols).
// The CMake build (libbbam_ops for C++ consumers) defines BBAM_NO_PYTHON.
#if !defined(BBAM_NO_PYTHON)
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
#endif  // !defined(BBAM_NO_PYTHON)
