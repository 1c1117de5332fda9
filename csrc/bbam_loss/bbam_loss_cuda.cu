// bbam_loss on CUDA: one pass forward (per-element loss + block sums reduced with
// warp shuffles), one pass backward; 16-byte vectorised loads; fp32 accumulation
// (fp64 for fp64); the math is csrc/bbam_math.h, shared with the CPU kernels.
#include "bbam_loss.h"

#include "../bbam_math.h"
#include "../cuda/cuda_utils.cuh"

#include <ATen/ATen.h>
#include <torch/library.h>

namespace bbam {
namespace {

using cuda::Pack;

template <typename scalar_t, int VEC>
__global__ void bbam_loss_forward_kernel(const scalar_t* __restrict__ cos, const int8_t* __restrict__ targets,
                                         const scalar_t* __restrict__ weight,
                                         const at::opmath_type<scalar_t>* __restrict__ coef, int64_t numel,
                                         int64_t K, at::opmath_type<scalar_t> margin,
                                         at::opmath_type<scalar_t> scale, at::opmath_type<scalar_t>* __restrict__ loss,
                                         at::opmath_type<scalar_t>* __restrict__ block_sums,
                                         at::opmath_type<scalar_t>* __restrict__ grad_cos,
                                         at::opmath_type<scalar_t> grad_scale) {
  using op_t = at::opmath_type<scalar_t>;
  op_t acc = op_t(0);
  const int64_t packs = numel / VEC;
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < packs; p += int64_t(gridDim.x) * blockDim.x) {
    const auto c = reinterpret_cast<const Pack<scalar_t, VEC>*>(cos)[p];
    const auto t = reinterpret_cast<const Pack<int8_t, VEC>*>(targets)[p];
    Pack<scalar_t, VEC> w;
    if (weight != nullptr) w = reinterpret_cast<const Pack<scalar_t, VEC>*>(weight)[p];
    Pack<op_t, VEC> out;
    Pack<op_t, VEC> grad;  // opmath: fp16 would flush the small (mean-scaled) values
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const int64_t k = (p * VEC + j) % K;
      const int8_t tj = t.v[j];
      CUDA_KERNEL_ASSERT(math::target_is_valid(tj) && "bbam_loss: targets must be -1, 0 or 1");
      const bool pos = tj == 1;
      const op_t cj = static_cast<op_t>(c.v[j]), yj = static_cast<op_t>(tj);
      const op_t a = coef[(pos ? K : 0) + k], b = coef[(pos ? 3 * K : 2 * K) + k];
      const op_t wj = weight != nullptr ? static_cast<op_t>(w.v[j]) : op_t(1);
      if (grad_cos != nullptr) {
        op_t g;
        math::bbam_loss_element_and_grad<op_t, op_t>(cj, yj, tj >= 0, a, b, wj, margin, scale, &out.v[j], &g);
        grad.v[j] = g * grad_scale;
      } else {
        out.v[j] = math::bbam_loss_element<op_t, op_t>(cj, yj, tj >= 0, a, b, wj, margin, scale);
      }
      acc += out.v[j];
    }
    if (loss != nullptr) reinterpret_cast<Pack<op_t, VEC>*>(loss)[p] = out;
    if (grad_cos != nullptr) reinterpret_cast<Pack<op_t, VEC>*>(grad_cos)[p] = grad;
  }
  acc = cuda::block_sum(acc);
  if (threadIdx.x == 0) block_sums[blockIdx.x] = acc;
}

template <typename scalar_t, int VEC>
__global__ void bbam_loss_backward_kernel(const at::opmath_type<scalar_t>* __restrict__ grad_loss,
                                          const at::opmath_type<scalar_t>* __restrict__ grad_scalar_ptr,
                                          at::opmath_type<scalar_t> grad_multiplier, const scalar_t* __restrict__ cos,
                                          const int8_t* __restrict__ targets, const scalar_t* __restrict__ weight,
                                          const at::opmath_type<scalar_t>* __restrict__ coef, int64_t numel, int64_t K,
                                          at::opmath_type<scalar_t> margin, at::opmath_type<scalar_t> scale,
                                          scalar_t* __restrict__ grad_cos) {
  using op_t = at::opmath_type<scalar_t>;
  // sum / mean: d loss / d element = upstream scalar (read on the device: no host sync) x 1 or 1/numel
  const op_t grad_scalar = grad_scalar_ptr != nullptr ? *grad_scalar_ptr * grad_multiplier : op_t(0);
  const int64_t packs = numel / VEC;
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < packs; p += int64_t(gridDim.x) * blockDim.x) {
    const auto c = reinterpret_cast<const Pack<scalar_t, VEC>*>(cos)[p];
    const auto t = reinterpret_cast<const Pack<int8_t, VEC>*>(targets)[p];
    Pack<scalar_t, VEC> w;
    if (weight != nullptr) w = reinterpret_cast<const Pack<scalar_t, VEC>*>(weight)[p];
    Pack<op_t, VEC> g;
    if (grad_loss != nullptr) g = reinterpret_cast<const Pack<op_t, VEC>*>(grad_loss)[p];
    Pack<scalar_t, VEC> out;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const int64_t k = (p * VEC + j) % K;
      const int8_t tj = t.v[j];
      const bool pos = tj == 1;
      out.v[j] = static_cast<scalar_t>(math::bbam_loss_element_grad<op_t, op_t>(
          grad_loss != nullptr ? g.v[j] : grad_scalar, static_cast<op_t>(c.v[j]), static_cast<op_t>(tj), tj >= 0,
          coef[(pos ? K : 0) + k], coef[(pos ? 3 * K : 2 * K) + k],
          weight != nullptr ? static_cast<op_t>(w.v[j]) : op_t(1), margin, scale));
    }
    reinterpret_cast<Pack<scalar_t, VEC>*>(grad_cos)[p] = out;
  }
}

std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& cos, const at::Tensor& targets, const at::Tensor& coef_a,
                                           const at::Tensor& coef_b, const std::optional<at::Tensor>& weight,
                                           double margin, double scale, int64_t reduction, bool with_grad) {
  constexpr const char* op = "bbam_loss";
  const Reduction red = check_bbam_loss_inputs(op, cos, targets, coef_a, coef_b, weight, margin, scale, reduction);
  const c10::cuda::CUDAGuard guard(cos.device());
  const int64_t B = cos.size(0), K = cos.size(1), numel = B * K;
  const auto opmath = opmath_type(cos.scalar_type());
  const LossInputs p = prepare_loss_inputs(cos, targets, coef_a, coef_b, weight);
  at::Tensor loss_none = red == Reduction::None ? at::empty({B, K}, cos.options().dtype(opmath)) : at::Tensor();
  at::Tensor grad_cos = with_grad ? at::empty({B, K}, cos.options().dtype(opmath)) : at::Tensor();
  const double grad_scale = red == Reduction::Mean ? 1.0 / static_cast<double>(std::max<int64_t>(numel, 1)) : 1.0;
  // Grid fixed by the size and the device (not by timing): the block sums, and so the
  // total, are bitwise reproducible on a device.
  const int64_t grid = cuda::grid_for(numel, cos.get_device(), 4);
  at::Tensor block_sums = at::zeros({grid}, cos.options().dtype(opmath));
  if (numel > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, cos.scalar_type(), "bbam_loss_cuda", [&] {
      using op_t = at::opmath_type<scalar_t>;
      const scalar_t* w = p.weight.defined() ? p.weight.data_ptr<scalar_t>() : nullptr;
      op_t* out = loss_none.defined() ? loss_none.data_ptr<op_t>() : nullptr;
      op_t* g = with_grad ? grad_cos.data_ptr<op_t>() : nullptr;
      BBAM_LAUNCH_VEC(bbam_loss_forward_kernel, grid, numel,
                      (std::initializer_list<const void*>{p.cos.data_ptr(), p.targets.data_ptr(), w, out, g}),
                      p.cos.data_ptr<scalar_t>(), p.targets.data_ptr<int8_t>(), w, p.coef.data_ptr<op_t>(), numel, K,
                      static_cast<op_t>(margin), static_cast<op_t>(scale), out, block_sums.data_ptr<op_t>(), g,
                      static_cast<op_t>(grad_scale));
    });
  }
  if (red == Reduction::None) return {loss_none, grad_cos};
  at::Tensor total = block_sums.sum(at::kDouble);
  if (red == Reduction::Mean) total = total / static_cast<double>(numel);
  return {total.to(opmath), grad_cos};
}

at::Tensor bbam_loss_cuda(const at::Tensor& cos, const at::Tensor& targets, const at::Tensor& coef_a,
                          const at::Tensor& coef_b, const std::optional<at::Tensor>& weight, double margin,
                          double scale, int64_t reduction) {
  return std::get<0>(forward(cos, targets, coef_a, coef_b, weight, margin, scale, reduction, false));
}

std::tuple<at::Tensor, at::Tensor> bbam_loss_with_grad_cuda(const at::Tensor& cos, const at::Tensor& targets,
                                                            const at::Tensor& coef_a, const at::Tensor& coef_b,
                                                            const std::optional<at::Tensor>& weight, double margin,
                                                            double scale, int64_t reduction) {
  return forward(cos, targets, coef_a, coef_b, weight, margin, scale, reduction, true);
}

at::Tensor bbam_loss_backward_cuda(const at::Tensor& grad, const at::Tensor& cos, const at::Tensor& targets,
                                   const at::Tensor& coef_a, const at::Tensor& coef_b,
                                   const std::optional<at::Tensor>& weight, double margin, double scale,
                                   int64_t reduction) {
  constexpr const char* op = "bbam_loss_backward";
  const Reduction red = check_bbam_loss_inputs(op, cos, targets, coef_a, coef_b, weight, margin, scale, reduction);
  const c10::cuda::CUDAGuard guard(cos.device());
  const int64_t B = cos.size(0), K = cos.size(1), numel = B * K;
  const auto opmath = opmath_type(cos.scalar_type());
  const LossInputs p = prepare_loss_inputs(cos, targets, coef_a, coef_b, weight);
  at::Tensor grad_c, grad_scalar;
  double grad_multiplier = 1.0;
  if (red == Reduction::None) {
    check_shape(op, "grad", grad, {B, K}, "[B, K] like cos");
    grad_c = grad.to(opmath).contiguous();
  } else {
    BBAM_CHECK_ARG(grad.numel() == 1, op, "grad", "must hold one value for reduction sum/mean, got ", shape_str(grad));
    grad_scalar = grad.to(opmath).reshape({1}).contiguous();
    if (red == Reduction::Mean) grad_multiplier = 1.0 / static_cast<double>(std::max<int64_t>(numel, 1));
  }
  at::Tensor grad_cos = at::empty({B, K}, p.cos.options());
  if (numel > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, cos.scalar_type(), "bbam_loss_backward_cuda", [&] {
      using op_t = at::opmath_type<scalar_t>;
      const scalar_t* w = p.weight.defined() ? p.weight.data_ptr<scalar_t>() : nullptr;
      const op_t* g = grad_c.defined() ? grad_c.data_ptr<op_t>() : nullptr;
      BBAM_LAUNCH_VEC(bbam_loss_backward_kernel, cuda::grid_for(numel, cos.get_device(), 4), numel,
                      (std::initializer_list<const void*>{p.cos.data_ptr(), p.targets.data_ptr(), w, g,
                                                          grad_cos.data_ptr()}),
                      g, grad_scalar.defined() ? grad_scalar.data_ptr<op_t>() : nullptr,
                      static_cast<op_t>(grad_multiplier), p.cos.data_ptr<scalar_t>(), p.targets.data_ptr<int8_t>(), w,
                      p.coef.data_ptr<op_t>(), numel, K, static_cast<op_t>(margin), static_cast<op_t>(scale),
                      grad_cos.data_ptr<scalar_t>());
    });
  }
  return grad_cos;
}

}  // namespace

TORCH_LIBRARY_IMPL(bbam, CUDA, m) {
  m.impl("bbam_loss", &bbam_loss_cuda);
  m.impl("_bbam_loss_with_grad", &bbam_loss_with_grad_cuda);
  m.impl("bbam_loss_backward", &bbam_loss_backward_cuda);
}

}  // namespace bbam
