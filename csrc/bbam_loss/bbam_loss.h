// bbam_loss: the (B)BAM loss and its gradient w.r.t. the cosines.
// Schema (csrc/ops.cpp):
//   bbam_loss(Tensor cos, Tensor targets, Tensor coef_a, Tensor coef_b, Tensor? weight,
//             float margin, float scale, int reduction) -> Tensor
//   bbam_loss_backward(Tensor grad, <same arguments>) -> Tensor grad_cos
#pragma once

#include "../checks.h"

#include <ATen/ops/cat.h>

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

// Kernel-ready inputs, shared by the CPU and CUDA host code: contiguous cos / targets,
// weight in cos's dtype (or undefined), coefficients as one [4, K] opmath table
// (a_neg, a_pos, b_neg, b_pos).
struct LossInputs {
  at::Tensor cos, targets, weight, coef;
};

inline LossInputs prepare_loss_inputs(const at::Tensor& cos, const at::Tensor& targets, const at::Tensor& coef_a,
                                      const at::Tensor& coef_b, const std::optional<at::Tensor>& weight) {
  LossInputs p;
  p.cos = cos.contiguous();
  p.targets = targets.contiguous();
  if (weight.has_value() && weight->defined()) p.weight = weight->to(cos.scalar_type()).contiguous();
  p.coef = at::cat({coef_a, coef_b}).to(opmath_type(cos.scalar_type())).contiguous();
  return p;
}

}  // namespace bbam
