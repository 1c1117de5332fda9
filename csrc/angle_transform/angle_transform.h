// angle_transform: phi = cos(a_{y,k} acos(c) + b_{y,k}) per target, or the
// averaged (inference) transform for unknown targets / no targets.
// Schema (csrc/ops.cpp):
//   angle_transform(Tensor cos, Tensor coef_a, Tensor coef_b, Tensor? targets) -> Tensor
//   angle_transform_backward(Tensor grad, Tensor cos, Tensor coef_a, Tensor coef_b,
//                            Tensor? targets) -> Tensor grad_cos
#pragma once

#include "../checks.h"

#include <ATen/ops/cat.h>

namespace bbam {

inline void check_angle_transform_inputs(const char* op, const at::Tensor& cos,
                                         const at::Tensor& coef_a, const at::Tensor& coef_b,
                                         const std::optional<at::Tensor>& targets) {
  check_dim(op, "cos", cos, 2);
  check_floating(op, "cos", cos);
  const int64_t B = cos.size(0), K = cos.size(1);
  check_coefficients(op, coef_a, coef_b, K, cos, "cos");
  if (targets.has_value() && targets->defined()) {
    check_dim(op, "targets", *targets, 2);
    check_shape(op, "targets", *targets, {B, K}, "[B, K] like cos");
    check_targets_dtype(op, "targets", *targets);
    check_same_device(op, "targets", *targets, "cos", cos);
  }
}

// [6, K] opmath coefficient table: a_neg, a_pos, a_avg, b_neg, b_pos, b_avg.
inline at::Tensor transform_coef_table(const at::Tensor& coef_a, const at::Tensor& coef_b,
                                       at::ScalarType opmath) {
  const auto a = coef_a.to(opmath), b = coef_b.to(opmath);
  return at::cat({a, a.mean(0, /*keepdim=*/true), b, b.mean(0, /*keepdim=*/true)}).contiguous();
}

}  // namespace bbam
