// angle_transform CPU kernels: phi = cos(a theta + b) per target (or the averaged
// inference transform) and its backward, vectorised along the labels.
#pragma once

#include "../cpu/kernel_utils.h"

namespace bbam {
namespace cpu {
namespace CPU_CAPABILITY {

// backward == false: out = phi; backward == true: out = grad_phi * dphi/dcos.
template <typename scalar_t, bool backward>
bool angle_transform_impl(const TransformArgs& A, int64_t row_begin, int64_t row_end) {
  using op_t = opmath_t<scalar_t>;
  using V = at::vec::Vectorized<op_t>;
  constexpr int64_t L = V::size();
  const int64_t K = A.num_labels;
  const op_t* coef = static_cast<const op_t*>(A.coef);
  const op_t *a_neg = coef, *a_pos = coef + K, *a_avg = coef + 2 * K;
  const op_t *b_neg = coef + 3 * K, *b_pos = coef + 4 * K, *b_avg = coef + 5 * K;
  std::vector<op_t> cos_buf, grad_buf, out_buf(K), y_buf(K, op_t(-1));  // no targets: -1 -> average
  bool targets_ok = true;

  for (int64_t r = row_begin; r < row_end; ++r) {
    const op_t* c = row_as_opmath(static_cast<const scalar_t*>(A.cos) + r * K, K, cos_buf);
    const op_t* gp = nullptr;
    if constexpr (backward) {
      gp = row_as_opmath(static_cast<const scalar_t*>(A.grad_phi) + r * K, K, grad_buf);
    }
    if (A.targets != nullptr) targets_ok &= targets_as_opmath(A.targets + r * K, K, y_buf.data());
    const op_t* y = y_buf.data();
    scalar_t* dst = static_cast<scalar_t*>(A.out) + r * K;
    op_t* out = std::is_same_v<scalar_t, op_t> ? reinterpret_cast<op_t*>(dst) : out_buf.data();

    int64_t k = 0;
    for (; k + L <= K; k += L) {
      const V yv = V::loadu(y + k);
      const V av = math::coef_by_target(yv, V::loadu(a_neg + k), V::loadu(a_pos + k), V::loadu(a_avg + k));
      const V bv = math::coef_by_target(yv, V::loadu(b_neg + k), V::loadu(b_pos + k), V::loadu(b_avg + k));
      V phi, dphi;
      math::transform_cos<V, op_t>(V::loadu(c + k), av, bv, &phi, backward ? &dphi : nullptr);
      if constexpr (backward) {
        (V::loadu(gp + k) * dphi).store(out + k);
      } else {
        phi.store(out + k);
      }
    }
    for (; k < K; ++k) {
      const op_t av = math::coef_by_target(y[k], a_neg[k], a_pos[k], a_avg[k]);
      const op_t bv = math::coef_by_target(y[k], b_neg[k], b_pos[k], b_avg[k]);
      op_t phi, dphi;
      math::transform_cos<op_t, op_t>(c[k], av, bv, &phi, backward ? &dphi : nullptr);
      if constexpr (backward) {
        out[k] = gp[k] * dphi;
      } else {
        out[k] = phi;
      }
    }
    store_row<scalar_t>(out, K, dst);
  }
  return targets_ok;
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace bbam
