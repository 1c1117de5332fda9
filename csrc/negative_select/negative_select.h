// negative_select: the prototype negative sampling mask (DESIGN.md §1), exact.
//
// Schema (csrc/ops.cpp):
//   negative_select(Tensor features, Tensor prototypes, Tensor targets, Tensor num_kept,
//                   int sample_size, float band_z) -> Tensor mask
//   features [N, D] floating; prototypes [K, D] floating; targets [N, K] int8;
//   num_kept [K] int64 with 0 <= num_kept[k] <= (negatives of label k);
//   mask [N, K] bool: every positive, and for each label k the num_kept[k] negatives
//   with the largest cosine <z_i / max(|z_i|, eps), p_k / max(|p_k|, eps)> (ties: the
//   lower row first). A label with num_kept = its negative count keeps them all without
//   reading its prototype; num_kept = 0 keeps none. Unknowns (-1) are never selected.
//
// Algorithm (CPU; the CUDA version ranks running top-m buffers instead, same result):
//   1. Band placement: `sample_size` rows (seeded, with replacement) are scored; for each
//      searched label the m-th largest negative cosine should sit near rank f * n_a of
//      its n_a sample negatives (f = num_kept / negatives); the band [lower, upper] is
//      the sample's cosines band_z binomial standard deviations (+2 ranks) either side.
//      sample_size = 0 (or a sample that would not pay off): the band is everything.
//   2. One tiled pass over all rows (GEMM of a tile with the normalised prototypes, then
//      math::band_class per (row, label) negative): above the band -> selected; inside
//      -> candidate (score, row); below -> not selected. No N x K score matrix.
//   3. Per label, the top (num_kept - above) candidates by (score desc, row asc).
//   4. A label whose m-th score fell outside its band is scanned again with that side
//      of the band opened (then it cannot fail).
// The result does not depend on the sample, band_z or the thread count: only the work.
#pragma once

#include "../checks.h"

#include <algorithm>
#include <cmath>

namespace bbam {

inline void check_negative_select_inputs(const char* op, const at::Tensor& features,
                                         const at::Tensor& prototypes, const at::Tensor& targets,
                                         const at::Tensor& num_kept, int64_t sample_size, double band_z) {
  check_features_prototypes_targets(op, features, prototypes, targets);
  const int64_t K = prototypes.size(0);
  check_dim(op, "num_kept", num_kept, 1);
  check_shape(op, "num_kept", num_kept, {K}, "[K] (K = prototypes.size(0))");
  BBAM_CHECK_ARG(num_kept.scalar_type() == at::kLong, op, "num_kept", "must be int64, got ",
                 num_kept.scalar_type());
  check_same_device(op, "num_kept", num_kept, "features", features);
  BBAM_CHECK_ARG(sample_size >= 0, op, "sample_size", "must be >= 0, got ", sample_size);
  BBAM_CHECK_ARG(band_z >= 0.0, op, "band_z", "must be >= 0 (and not NaN), got ", band_z);
}

// num_kept[k] must lie in [0, negatives of k]; counts: [3, K] (negatives, positives,
// unknowns) on the CPU, num_kept on the CPU.
inline void check_num_kept(const char* op, const at::Tensor& num_kept_cpu, const at::Tensor& counts_cpu) {
  const int64_t K = num_kept_cpu.numel();
  const int64_t* m = num_kept_cpu.data_ptr<int64_t>();
  const int64_t* n_neg = counts_cpu.data_ptr<int64_t>();
  for (int64_t k = 0; k < K; ++k) {
    BBAM_CHECK_ARG(m[k] >= 0 && m[k] <= n_neg[k], op, "num_kept",
                   "must lie in [0, negatives of the label]; label ", k, " has ", n_neg[k],
                   " negatives, got ", m[k]);
  }
}

// Ranks, in decreasing order among a label's n sample negatives, of its band's ends
// (step 1): the threshold should sit near rank f * n (f = num_kept / negatives), with
// binomial standard deviation sqrt(n f (1 - f)); the band reaches band_z of them plus 2
// ranks either side. upper = the value at rank `hi` if 0 <= hi < n (else +inf), lower =
// the value at rank `lo` if 0 <= lo < n (else -inf). Shared by the CPU and CUDA code.
struct BandRanks {
  int64_t hi, lo;
};
inline BandRanks band_ranks(int64_t num_kept, int64_t negatives, int64_t n, double band_z) {
  constexpr double kSlack = 2.0;
  const double f = static_cast<double>(num_kept) / static_cast<double>(negatives);
  const double rank = f * n, spread = band_z * std::sqrt(n * f * (1.0 - f)) + kSlack;
  // clamped to [-1, n]: both ends outside [0, n) mean "no bound on that side"
  auto clamp = [n](double r) { return static_cast<int64_t>(std::min(std::max(r, -1.0), double(n))); };
  return {clamp(std::floor(rank - spread)), clamp(std::ceil(rank + spread))};
}

// Row r of the band sample (with replacement): splitmix64 of (seed, r), the same on
// every device and thread count.
inline int64_t band_sample_row(uint64_t r, int64_t N) {
  uint64_t z = r + 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<int64_t>(z % static_cast<uint64_t>(N));
}

}  // namespace bbam
