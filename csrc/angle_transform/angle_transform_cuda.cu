// angle_transform on CUDA: elementwise phi = cos(a theta + b) per target (or the
// averaged inference transform) and its backward; 16-byte vectorised accesses.
#include "angle_transform.h"

#include "../bbam_math.h"
#include "../cuda/cuda_utils.cuh"

#include <ATen/ATen.h>
#include <torch/library.h>

namespace bbam {
namespace {

using cuda::Pack;

// grad_phi == nullptr: out = phi; else out = grad_phi * dphi/dcos.
template <typename scalar_t, int VEC>
__global__ void angle_transform_kernel(const scalar_t* __restrict__ cos, const int8_t* __restrict__ targets,
                                       const at::opmath_type<scalar_t>* __restrict__ coef,
                                       const scalar_t* __restrict__ grad_phi, int64_t numel, int64_t K,
                                       scalar_t* __restrict__ out) {
  using op_t = at::opmath_type<scalar_t>;
  const int64_t packs = numel / VEC;
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < packs; p += int64_t(gridDim.x) * blockDim.x) {
    const auto c = reinterpret_cast<const Pack<scalar_t, VEC>*>(cos)[p];
    Pack<int8_t, VEC> t;
    if (targets != nullptr) {
      t = reinterpret_cast<const Pack<int8_t, VEC>*>(targets)[p];
    } else {
#pragma unroll
      for (int j = 0; j < VEC; ++j) t.v[j] = -1;  // no targets: inference transform
    }
    Pack<scalar_t, VEC> g;
    if (grad_phi != nullptr) g = reinterpret_cast<const Pack<scalar_t, VEC>*>(grad_phi)[p];
    Pack<scalar_t, VEC> o;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const int64_t k = (p * VEC + j) % K;
      CUDA_KERNEL_ASSERT(math::target_is_valid(t.v[j]) && "angle_transform: targets must be -1, 0 or 1");
      const op_t y = static_cast<op_t>(t.v[j]);
      const op_t a = math::coef_by_target(y, coef[k], coef[K + k], coef[2 * K + k]);
      const op_t b = math::coef_by_target(y, coef[3 * K + k], coef[4 * K + k], coef[5 * K + k]);
      op_t phi, dphi;
      math::transform_cos<op_t, op_t>(static_cast<op_t>(c.v[j]), a, b, &phi, grad_phi != nullptr ? &dphi : nullptr);
      o.v[j] = static_cast<scalar_t>(grad_phi != nullptr ? static_cast<op_t>(g.v[j]) * dphi : phi);
    }
    reinterpret_cast<Pack<scalar_t, VEC>*>(out)[p] = o;
  }
}

at::Tensor run(const char* op, const at::Tensor* grad, const at::Tensor& cos, const at::Tensor& coef_a,
               const at::Tensor& coef_b, const std::optional<at::Tensor>& targets) {
  check_angle_transform_inputs(op, cos, coef_a, coef_b, targets);
  const c10::cuda::CUDAGuard guard(cos.device());
  const int64_t B = cos.size(0), K = cos.size(1), numel = B * K;
  const at::Tensor cos_c = cos.contiguous();
  const at::Tensor coef = transform_coef_table(coef_a, coef_b, opmath_type(cos.scalar_type()));
  at::Tensor targets_c, grad_c;
  if (targets.has_value() && targets->defined()) targets_c = targets->contiguous();
  if (grad != nullptr) {
    check_shape(op, "grad", *grad, {B, K}, "[B, K] like cos");
    grad_c = grad->to(cos.scalar_type()).contiguous();
  }
  at::Tensor out = at::empty({B, K}, cos_c.options());
  if (numel == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, cos.scalar_type(), "angle_transform_cuda", [&] {
    using op_t = at::opmath_type<scalar_t>;
    const int8_t* t = targets_c.defined() ? targets_c.data_ptr<int8_t>() : nullptr;
    const scalar_t* g = grad_c.defined() ? grad_c.data_ptr<scalar_t>() : nullptr;
    BBAM_LAUNCH_VEC(angle_transform_kernel, cuda::grid_for(numel, cos.get_device(), 4), numel,
                    (std::initializer_list<const void*>{cos_c.data_ptr(), t, g, out.data_ptr()}),
                    cos_c.data_ptr<scalar_t>(), t, coef.data_ptr<op_t>(), g, numel, K, out.data_ptr<scalar_t>());
  });
  return out;
}

at::Tensor angle_transform_cuda(const at::Tensor& cos, const at::Tensor& coef_a, const at::Tensor& coef_b,
                                const std::optional<at::Tensor>& targets) {
  return run("angle_transform", nullptr, cos, coef_a, coef_b, targets);
}

at::Tensor angle_transform_backward_cuda(const at::Tensor& grad, const at::Tensor& cos, const at::Tensor& coef_a,
                                         const at::Tensor& coef_b, const std::optional<at::Tensor>& targets) {
  return run("angle_transform_backward", &grad, cos, coef_a, coef_b, targets);
}

}  // namespace

TORCH_LIBRARY_IMPL(bbam, CUDA, m) {
  m.impl("angle_transform", &angle_transform_cuda);
  m.impl("angle_transform_backward", &angle_transform_backward_cuda);
}

}  // namespace bbam
