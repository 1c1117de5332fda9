// bbam_loss: the (B)BAM loss and its gradient w.r.t. the cosines.
// Schema (csrc/ops.cpp):
//   bbam_loss(Tensor cos, Tensor targets, Tensor coef_a, Tensor coef_b, Tensor? weight,
//             float margin, float scale, int reduction) -> Tensor
//   bbam_loss_backward(Tensor grad, <same arguments>) -> Tensor grad_cos
#pragma once

#include "../checks.h"

namespace bbam {

// Checks shared by the CPU and CUDA implementations; returns the reduction.
inline Reduction check_bbam_loss_inputs(const char* op, const at::Tensor& cos,
                                        const at::Tensor& targets, const at::Tensor& coef_a,
                                        const at::Tensor& coef_b,
                                        const std::optional<at::Tensor>& weight, double margin,
                                        double scale, int64_t reduction) {
  check_dim(op, "cos", cos, 2);
  check_floating(op, "cos", cos);
  const int64_t B = cos.size(0), K = cos.size(1);
  check_dim(op, "targets", targets, 2);
  check_shape(op, "targets", targets, {B, K}, "[B, K] like cos");
  check_targets_dtype(op, "targets", targets);
  check_same_device(op, "targets", targets, "cos", cos);
  check_coefficients(op, coef_a, coef_b, K, cos, "cos");
  if (weight.has_value() && weight->defined()) {
    check_dim(op, "weight", *weight, 2);
    check_shape(op, "weight", *weight, {B, K}, "[B, K] like cos");
    const auto st = weight->scalar_type();
    BBAM_CHECK_ARG(at::isFloatingType(st) || st == at::kBool, op, "weight",
                   "must be a floating or bool tensor, got ", st);
    check_same_device(op, "weight", *weight, "cos", cos);
  }
  BBAM_CHECK_ARG(std::isfinite(margin), op, "margin", "must be finite, got ", margin);
  BBAM_CHECK_ARG(std::isfinite(scale) && scale > 0, op, "scale", "must be finite and > 0, got ",
                 scale);
  return check_reduction(op, reduction);
}

}  // namespace bbam
