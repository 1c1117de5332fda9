// label_angle_stats CPU kernel for one tile: raw dot products -> angles -> per
// (polarity, label) count / mean / M2, Chan-merged into the caller's running
// accumulators. The tile is the only N-dependent buffer: no N x K matrix exists.
#pragma once

#include "../cpu/kernel_utils.h"

namespace bbam {
namespace cpu {
namespace CPU_CAPABILITY {

template <typename op_t>
bool label_angle_stats_tile_impl(const StatsTileArgs& A) {
  using V = at::vec::Vectorized<op_t>;
  constexpr int64_t L = V::size();
  const int64_t K = A.num_labels;
  op_t* dots = static_cast<op_t*>(A.dots);
  const op_t* inv_norm = static_cast<const op_t*>(A.inv_norm);
  // Tile sums of (angle - pivot): shifting by pi/2 (the middle of [0, pi]) keeps
  // sum-of-squares cancellation small; the tile's M2 is then merged exactly.
  constexpr double kPivot = 1.5707963267948966;
  double* n0 = A.tile_sums;
  double* n1 = n0 + K;
  double* s0 = n0 + 2 * K;
  double* s1 = n0 + 3 * K;
  double* q0 = n0 + 4 * K;
  double* q1 = n0 + 5 * K;
  std::fill(n0, n0 + 6 * K, 0.0);
  bool targets_ok = true;

  for (int64_t i = 0; i < A.rows; ++i) {
    op_t* theta = dots + i * K;
    const int8_t* t = A.targets + i * K;
    const V scale(inv_norm[i]);
    int64_t k = 0;
    for (; k + L <= K; k += L) {
      math::stats_angle<V, op_t>(V::loadu(theta + k) * scale).store(theta + k);
    }
    for (; k < K; ++k) theta[k] = math::stats_angle<op_t, op_t>(theta[k] * inv_norm[i]);
    // Branch-free so the compiler vectorises it (int8 masks, double sums).
    for (k = 0; k < K; ++k) {
      const double x = static_cast<double>(theta[k]) - kPivot;
      const double neg = t[k] == 0 ? 1.0 : 0.0;
      const double pos = t[k] == 1 ? 1.0 : 0.0;
      n0[k] += neg;
      n1[k] += pos;
      s0[k] += neg * x;
      s1[k] += pos * x;
      q0[k] += neg * x * x;
      q1[k] += pos * x * x;
      targets_ok &= math::target_is_valid(t[k]);
    }
  }
  // Tile partials -> (count, mean, M2), merged into the running accumulators.
  double* acc_n = A.acc;
  double* acc_mean = A.acc + 2 * K;
  double* acc_m2 = A.acc + 4 * K;
  for (int64_t s = 0; s < 2; ++s) {
    const double* n = s == 0 ? n0 : n1;
    const double* sum = s == 0 ? s0 : s1;
    const double* sq = s == 0 ? q0 : q1;
    for (int64_t k = 0; k < K; ++k) {
      if (n[k] <= 0.0) continue;
      const double mean = sum[k] / n[k];
      const double m2 = std::max(sq[k] - sum[k] * mean, 0.0);
      const int64_t j = s * K + k;
      math::chan_merge(acc_n[j], acc_mean[j], acc_m2[j], n[k], mean + kPivot, m2);
    }
  }
  return targets_ok;
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace bbam
