// bbam_loss CPU kernels (one pass forward, one pass backward), vectorised along
// the labels with at::vec::Vectorized. Included by csrc/cpu/kernels_*.cpp once per
// CPU capability; the math is in csrc/bbam_math.h.
#pragma once

#include "../cpu/kernel_utils.h"

namespace bbam {
namespace cpu {
namespace CPU_CAPABILITY {

template <typename scalar_t>
double bbam_loss_forward_impl(const LossArgs& A, int64_t row_begin, int64_t row_end,
                              bool* bad_target) {
  using op_t = opmath_t<scalar_t>;
  using V = at::vec::Vectorized<op_t>;
  constexpr int64_t L = V::size();
  const int64_t K = A.num_labels;
  const op_t* coef = static_cast<const op_t*>(A.coef);
  const op_t *a_neg = coef, *a_pos = coef + K, *b_neg = coef + 2 * K, *b_pos = coef + 3 * K;
  const op_t margin = static_cast<op_t>(A.margin), scale = static_cast<op_t>(A.scale);
  const V v_margin(margin), v_scale(scale), v_zero(op_t(0)), v_one(op_t(1));
  std::vector<op_t> cos_buf, weight_buf, y_buf(K);

  const bool with_grad = A.grad_cos != nullptr;
  const op_t grad_scale = static_cast<op_t>(A.grad_scalar);
  const V v_grad_scale(grad_scale);

  double total = 0.0;
  bool targets_ok = true;
  for (int64_t r = row_begin; r < row_end; ++r) {
    const op_t* c = row_as_opmath(static_cast<const scalar_t*>(A.cos) + r * K, K, cos_buf);
    const op_t* w = A.weight == nullptr
                        ? nullptr
                        : row_as_opmath(static_cast<const scalar_t*>(A.weight) + r * K, K, weight_buf);
    targets_ok &= targets_as_opmath(A.targets + r * K, K, y_buf.data());
    const op_t* y = y_buf.data();
    op_t* out = A.loss == nullptr ? nullptr : static_cast<op_t*>(A.loss) + r * K;
    // d total / d cos stays in opmath: fp16 would flush the small (mean-scaled) values
    op_t* grad = with_grad ? static_cast<op_t*>(A.grad_cos) + r * K : nullptr;

    V acc(op_t(0));
    int64_t k = 0;
    for (; k + L <= K; k += L) {
      const V yv = V::loadu(y + k);
      const V pos = yv == v_one;
      const V av = V::blendv(V::loadu(a_neg + k), V::loadu(a_pos + k), pos);
      const V bv = V::blendv(V::loadu(b_neg + k), V::loadu(b_pos + k), pos);
      const V wv = w == nullptr ? v_one : V::loadu(w + k);
      V l;
      if (with_grad) {
        V g;
        math::bbam_loss_element_and_grad<V, op_t>(V::loadu(c + k), yv, yv >= v_zero, av, bv, wv, v_margin,
                                                  v_scale, &l, &g);
        (g * v_grad_scale).store(grad + k);
      } else {
        l = math::bbam_loss_element<V, op_t>(V::loadu(c + k), yv, yv >= v_zero, av, bv, wv, v_margin, v_scale);
      }
      if (out != nullptr) l.store(out + k);
      acc = acc + l;
    }
    op_t lanes[L];
    acc.store(lanes);
    double row_sum = 0.0;
    for (int64_t j = 0; j < L; ++j) row_sum += lanes[j];
    for (; k < K; ++k) {  // tail: the same formulas on scalars
      const bool pos = y[k] == op_t(1);
      const op_t av = pos ? a_pos[k] : a_neg[k], bv = pos ? b_pos[k] : b_neg[k];
      const op_t wv = w == nullptr ? op_t(1) : w[k];
      op_t l;
      if (with_grad) {
        op_t g;
        math::bbam_loss_element_and_grad<op_t, op_t>(c[k], y[k], y[k] >= op_t(0), av, bv, wv, margin, scale, &l, &g);
        grad[k] = g * grad_scale;
      } else {
        l = math::bbam_loss_element<op_t, op_t>(c[k], y[k], y[k] >= op_t(0), av, bv, wv, margin, scale);
      }
      if (out != nullptr) out[k] = l;
      row_sum += l;
    }
    total += row_sum;
  }
  if (!targets_ok) *bad_target = true;
  return total;
}

template <typename scalar_t>
void bbam_loss_backward_impl(const LossArgs& A, int64_t row_begin, int64_t row_end) {
  using op_t = opmath_t<scalar_t>;
  using V = at::vec::Vectorized<op_t>;
  constexpr int64_t L = V::size();
  const int64_t K = A.num_labels;
  const op_t* coef = static_cast<const op_t*>(A.coef);
  const op_t *a_neg = coef, *a_pos = coef + K, *b_neg = coef + 2 * K, *b_pos = coef + 3 * K;
  const op_t margin = static_cast<op_t>(A.margin), scale = static_cast<op_t>(A.scale);
  const op_t grad_scalar = static_cast<op_t>(A.grad_scalar);
  const V v_margin(margin), v_scale(scale), v_zero(op_t(0)), v_one(op_t(1)), v_grad(grad_scalar);
  std::vector<op_t> cos_buf, weight_buf, y_buf(K), out_buf(K);

  for (int64_t r = row_begin; r < row_end; ++r) {
    const op_t* c = row_as_opmath(static_cast<const scalar_t*>(A.cos) + r * K, K, cos_buf);
    const op_t* w = A.weight == nullptr
                        ? nullptr
                        : row_as_opmath(static_cast<const scalar_t*>(A.weight) + r * K, K, weight_buf);
    targets_as_opmath(A.targets + r * K, K, y_buf.data());  // validated in forward
    const op_t* y = y_buf.data();
    const op_t* g = A.grad_loss == nullptr ? nullptr : static_cast<const op_t*>(A.grad_loss) + r * K;
    scalar_t* dst = static_cast<scalar_t*>(A.grad_cos) + r * K;
    op_t* out = std::is_same_v<scalar_t, op_t> ? reinterpret_cast<op_t*>(dst) : out_buf.data();

    int64_t k = 0;
    for (; k + L <= K; k += L) {
      const V yv = V::loadu(y + k);
      const V pos = yv == v_one;
      const V av = V::blendv(V::loadu(a_neg + k), V::loadu(a_pos + k), pos);
      const V bv = V::blendv(V::loadu(b_neg + k), V::loadu(b_pos + k), pos);
      const V wv = w == nullptr ? v_one : V::loadu(w + k);
      const V gv = g == nullptr ? v_grad : V::loadu(g + k);
      math::bbam_loss_element_grad<V, op_t>(gv, V::loadu(c + k), yv, yv >= v_zero, av, bv, wv,
                                            v_margin, v_scale)
          .store(out + k);
    }
    for (; k < K; ++k) {
      const bool pos = y[k] == op_t(1);
      out[k] = math::bbam_loss_element_grad<op_t, op_t>(
          g == nullptr ? grad_scalar : g[k], c[k], y[k], y[k] >= op_t(0),
          pos ? a_pos[k] : a_neg[k], pos ? b_pos[k] : b_neg[k], w == nullptr ? op_t(1) : w[k],
          margin, scale);
    }
    store_row<scalar_t>(out, K, dst);
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace bbam
