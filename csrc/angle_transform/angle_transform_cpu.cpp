// angle_transform on CPU: checks, allocation and threading; the per-row work
// is in angle_transform_cpu_kernel.h.
#include "angle_transform.h"

#include "../cpu/host_utils.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>

namespace bbam {
namespace {

// Shared by forward (grad == nullptr) and backward.
at::Tensor run(const char* op, const at::Tensor* grad, const at::Tensor& cos,
               const at::Tensor& coef_a, const at::Tensor& coef_b,
               const std::optional<at::Tensor>& targets) {
  check_angle_transform_inputs(op, cos, coef_a, coef_b, targets);
  const int64_t B = cos.size(0), K = cos.size(1);
  const at::Tensor cos_c = cos.contiguous();
  const at::Tensor coef = transform_coef_table(coef_a, coef_b, opmath_type(cos.scalar_type()));
  at::Tensor targets_c, grad_c;
  cpu::TransformArgs args;
  args.num_labels = K;
  args.cos = cos_c.data_ptr();
  args.coef = coef.data_ptr();
  if (targets.has_value() && targets->defined()) {
    targets_c = targets->contiguous();
    args.targets = targets_c.data_ptr<int8_t>();
  }
  if (grad != nullptr) {
    check_shape(op, "grad", *grad, {B, K}, "[B, K] like cos");
    grad_c = grad->to(cos.scalar_type()).contiguous();
    args.grad_phi = grad_c.data_ptr();
  }
  at::Tensor out = at::empty({B, K}, cos_c.options());
  args.out = out.data_ptr();
  const auto& kernels = cpu::kernels();
  const auto dtype = cpu::kernel_dtype(cos.scalar_type());
  std::atomic<bool> bad_target{false};
  at::parallel_for(0, B, cpu::rows_per_chunk(K), [&](int64_t r0, int64_t r1) {
    if (grad != nullptr) {
      kernels.angle_transform_backward(dtype, args, r0, r1);
    } else {
      bool bad = false;
      kernels.angle_transform(dtype, args, r0, r1, &bad);
      if (bad) bad_target = true;
    }
  });
  if (bad_target) fail_bad_targets(op, "targets");
  return out;
}

at::Tensor angle_transform_cpu(const at::Tensor& cos, const at::Tensor& coef_a,
                               const at::Tensor& coef_b, const std::optional<at::Tensor>& targets) {
  return run("angle_transform", nullptr, cos, coef_a, coef_b, targets);
}

at::Tensor angle_transform_backward_cpu(const at::Tensor& grad, const at::Tensor& cos,
                                        const at::Tensor& coef_a, const at::Tensor& coef_b,
                                        const std::optional<at::Tensor>& targets) {
  return run("angle_transform_backward", &grad, cos, coef_a, coef_b, targets);
}

}  // namespace

TORCH_LIBRARY_IMPL(bbam, CPU, m) {
  m.impl("angle_transform", &angle_transform_cpu);
  m.impl("angle_transform_backward", &angle_transform_backward_cpu);
}

}  // namespace bbam
