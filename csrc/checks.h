// Input checks shared by the CPU and CUDA host code. Every message names the op,
// the offending argument and what was expected (flash-attention's CHECK_SHAPE style).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/irange.h>

#include <optional>
#include <string>
#include <vector>

namespace bbam {

// BBAM_CHECK_ARG(cond, "op", "arg", "what was expected and got", ...)
#define BBAM_CHECK_ARG(cond, op, arg, ...) \
  TORCH_CHECK((cond), op, ": argument '", arg, "' ", __VA_ARGS__)

inline std::string shape_str(const at::Tensor& t) { return c10::str(t.sizes()); }

inline void check_dim(const char* op, const char* arg, const at::Tensor& t, int64_t dim) {
  BBAM_CHECK_ARG(t.defined(), op, arg, "must be a defined tensor");
  BBAM_CHECK_ARG(t.dim() == dim, op, arg, "must be ", dim, "-D, got shape ", shape_str(t));
}

inline void check_shape(const char* op, const char* arg, const at::Tensor& t,
                        std::vector<int64_t> expected, const char* expected_desc) {
  BBAM_CHECK_ARG(t.sizes().vec() == expected, op, arg, "must have shape ", expected_desc, " = ",
                 c10::IntArrayRef(expected), ", got ", shape_str(t));
}

inline void check_floating(const char* op, const char* arg, const at::Tensor& t) {
  const auto st = t.scalar_type();
  BBAM_CHECK_ARG(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16,
                 op, arg, "must be float32, float64, float16 or bfloat16, got ", st);
}

inline void check_targets_dtype(const char* op, const char* arg, const at::Tensor& t) {
  BBAM_CHECK_ARG(t.scalar_type() == at::kChar, op, arg,
                 "must be int8 with values in {-1 unknown, 0 negative, 1 positive}, got ",
                 t.scalar_type());
}

inline void check_same_device(const char* op, const char* arg, const at::Tensor& t,
                              const char* ref_arg, const at::Tensor& ref) {
  BBAM_CHECK_ARG(t.device() == ref.device(), op, arg, "must be on the same device as '", ref_arg,
                 "' (", ref.device(), "), got ", t.device());
}

// features [N, D] and prototypes [K, D] floating, targets [N, K] int8, one device:
// the inputs of the ops that relate samples to label prototypes.
inline void check_features_prototypes_targets(const char* op, const at::Tensor& features,
                                              const at::Tensor& prototypes, const at::Tensor& targets) {
  check_dim(op, "features", features, 2);
  check_floating(op, "features", features);
  check_dim(op, "prototypes", prototypes, 2);
  check_floating(op, "prototypes", prototypes);
  const int64_t N = features.size(0), D = features.size(1), K = prototypes.size(0);
  BBAM_CHECK_ARG(prototypes.size(1) == D, op, "prototypes",
                 "must have shape [K, D] with D = features.size(1) = ", D, ", got ",
                 shape_str(prototypes));
  check_same_device(op, "prototypes", prototypes, "features", features);
  check_dim(op, "targets", targets, 2);
  check_shape(op, "targets", targets, {N, K}, "[N, K] (N = features.size(0), K = prototypes.size(0))");
  check_targets_dtype(op, "targets", targets);
  check_same_device(op, "targets", targets, "features", features);
}

// Raised after a kernel saw a target outside {-1, 0, 1} (checked inside the fused pass).
[[noreturn]] inline void fail_bad_targets(const char* op, const char* arg) {
  TORCH_CHECK(false, op, ": argument '", arg,
              "' must only contain -1 (unknown), 0 (negative) or 1 (positive); found another value");
}

// Coefficients a, b: [2, K] floating, row 0 negatives, row 1 positives.
inline void check_coefficients(const char* op, const at::Tensor& coef_a, const at::Tensor& coef_b,
                               int64_t num_labels, const at::Tensor& ref, const char* ref_arg) {
  for (auto [arg, t] : {std::pair<const char*, const at::Tensor&>{"coef_a", coef_a},
                        std::pair<const char*, const at::Tensor&>{"coef_b", coef_b}}) {
    check_dim(op, arg, t, 2);
    check_shape(op, arg, t, {2, num_labels}, "[2, K]");
    check_floating(op, arg, t);
    check_same_device(op, arg, t, ref_arg, ref);
  }
}

// Reduction codes of bbam_loss (match bbam/ops.py).
enum class Reduction : int64_t { None = 0, Sum = 1, Mean = 2 };

inline Reduction check_reduction(const char* op, int64_t reduction) {
  BBAM_CHECK_ARG(reduction >= 0 && reduction <= 2, op, "reduction",
                 "must be 0 (none), 1 (sum) or 2 (mean), got ", reduction);
  return static_cast<Reduction>(reduction);
}

// The accumulation / output type of the losses: float64 for float64 input, else float32.
inline at::ScalarType opmath_type(at::ScalarType st) {
  return st == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace bbam
