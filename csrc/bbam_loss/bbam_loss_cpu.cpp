// bbam_loss on CPU: checks, allocation and threading; the per-row work is in
// bbam_loss_cpu_kernel.h (vectorised, one variant per CPU capability).
#include "bbam_loss.h"

#include "../cpu/host_utils.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <vector>

namespace bbam {
namespace {

struct PreparedLoss : LossInputs {
  cpu::LossArgs args;
};

PreparedLoss prepare(const at::Tensor& cos, const at::Tensor& targets, const at::Tensor& coef_a,
                     const at::Tensor& coef_b, const std::optional<at::Tensor>& weight,
                     double margin, double scale) {
  PreparedLoss p{prepare_loss_inputs(cos, targets, coef_a, coef_b, weight), {}};
  p.args.num_labels = cos.size(1);
  p.args.cos = p.cos.data_ptr();
  p.args.targets = p.targets.data_ptr<int8_t>();
  p.args.weight = p.weight.defined() ? p.weight.data_ptr() : nullptr;
  p.args.coef = p.coef.data_ptr();
  p.args.margin = margin;
  p.args.scale = scale;
  return p;
}

// One pass: the loss and, when with_grad, d total / d cos (the training path).
std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& cos, const at::Tensor& targets,
                                           const at::Tensor& coef_a, const at::Tensor& coef_b,
                                           const std::optional<at::Tensor>& weight, double margin, double scale,
                                           int64_t reduction, bool with_grad) {
  constexpr const char* op = "bbam_loss";
  const Reduction red =
      check_bbam_loss_inputs(op, cos, targets, coef_a, coef_b, weight, margin, scale, reduction);
  const int64_t B = cos.size(0), K = cos.size(1);
  const auto opmath = opmath_type(cos.scalar_type());
  PreparedLoss p = prepare(cos, targets, coef_a, coef_b, weight, margin, scale);
  at::Tensor loss_none, grad_cos;
  if (red == Reduction::None) {
    loss_none = at::empty({B, K}, cos.options().dtype(opmath));
    p.args.loss = loss_none.data_ptr();
  }
  if (with_grad) {
    grad_cos = at::empty({B, K}, cos.options().dtype(opmath));  // opmath: see the kernel
    p.args.grad_cos = grad_cos.data_ptr();
    p.args.grad_scalar = red == Reduction::Mean ? 1.0 / static_cast<double>(std::max<int64_t>(B * K, 1)) : 1.0;
  }
  const auto& kernels = cpu::kernels();
  const auto dtype = cpu::kernel_dtype(cos.scalar_type());
  const int64_t chunk = cpu::rows_per_chunk(K);
  const int64_t num_chunks = cpu::ceil_div(B, chunk);
  std::vector<double> partial(num_chunks, 0.0);
  std::atomic<bool> bad_target{false};
  at::parallel_for(0, num_chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      bool bad = false;
      partial[c] = kernels.bbam_loss_forward(dtype, p.args, c * chunk, std::min(B, (c + 1) * chunk), &bad);
      if (bad) bad_target = true;
    }
  });
  if (bad_target) fail_bad_targets(op, "targets");
  if (red == Reduction::None) return {loss_none, grad_cos};
  double total = 0.0;  // chunk partials summed in a fixed order: deterministic
  for (double v : partial) total += v;
  if (red == Reduction::Mean) total /= static_cast<double>(B * K);
  return {at::scalar_tensor(total, cos.options().dtype(opmath)), grad_cos};
}

at::Tensor bbam_loss_cpu(const at::Tensor& cos, const at::Tensor& targets, const at::Tensor& coef_a,
                         const at::Tensor& coef_b, const std::optional<at::Tensor>& weight,
                         double margin, double scale, int64_t reduction) {
  return std::get<0>(forward(cos, targets, coef_a, coef_b, weight, margin, scale, reduction, false));
}

std::tuple<at::Tensor, at::Tensor> bbam_loss_with_grad_cpu(const at::Tensor& cos, const at::Tensor& targets,
                                                           const at::Tensor& coef_a, const at::Tensor& coef_b,
                                                           const std::optional<at::Tensor>& weight, double margin,
                                                           double scale, int64_t reduction) {
  return forward(cos, targets, coef_a, coef_b, weight, margin, scale, reduction, true);
}

at::Tensor bbam_loss_backward_cpu(const at::Tensor& grad, const at::Tensor& cos,
                                  const at::Tensor& targets, const at::Tensor& coef_a,
                                  const at::Tensor& coef_b, const std::optional<at::Tensor>& weight,
                                  double margin, double scale, int64_t reduction) {
  constexpr const char* op = "bbam_loss_backward";
  const Reduction red =
      check_bbam_loss_inputs(op, cos, targets, coef_a, coef_b, weight, margin, scale, reduction);
  const int64_t B = cos.size(0), K = cos.size(1);
  const auto opmath = opmath_type(cos.scalar_type());
  PreparedLoss p = prepare(cos, targets, coef_a, coef_b, weight, margin, scale);
  at::Tensor grad_c;
  if (red == Reduction::None) {
    check_shape(op, "grad", grad, {B, K}, "[B, K] like cos");
    grad_c = grad.to(opmath).contiguous();
    p.args.grad_loss = grad_c.data_ptr();
  } else {
    BBAM_CHECK_ARG(grad.numel() == 1, op, "grad", "must hold one value for reduction sum/mean, got ",
                   shape_str(grad));
    double g = grad.item<double>();
    if (red == Reduction::Mean) g /= static_cast<double>(std::max<int64_t>(B * K, 1));
    p.args.grad_scalar = g;
  }
  at::Tensor grad_cos = at::empty({B, K}, p.cos.options());
  p.args.grad_cos = grad_cos.data_ptr();
  const auto& kernels = cpu::kernels();
  const auto dtype = cpu::kernel_dtype(cos.scalar_type());
  at::parallel_for(0, B, cpu::rows_per_chunk(K), [&](int64_t r0, int64_t r1) {
    kernels.bbam_loss_backward(dtype, p.args, r0, r1);
  });
  return grad_cos;
}

}  // namespace

TORCH_LIBRARY_IMPL(bbam, CPU, m) {
  m.impl("bbam_loss", &bbam_loss_cpu);
  m.impl("_bbam_loss_with_grad", &bbam_loss_with_grad_cpu);
  m.impl("bbam_loss_backward", &bbam_loss_backward_cpu);
}

}  // namespace bbam
