// positive_rank_stats on CPU (contract and algorithm in positive_ranks.h). On CUDA,
// bbam.metrics ranks with torch.sort instead (fast there); this kernel exists because on
// CPU those sorts were most of an evaluation's time (measured in bench/epoch.py).
#include "positive_ranks.h"

#include "../cpu/host_utils.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <tuple>
#include <vector>

namespace bbam {
namespace {

constexpr const char* kOp = "positive_rank_stats";

// #{j : p[j] > x} for p sorted in descending order: a binary search without branches
// (conditional moves), as the comparisons are unpredictable.
template <typename scalar_t>
inline int64_t count_greater(const scalar_t* p, int64_t n, scalar_t x) {
  const scalar_t* base = p;
  while (n > 1) {
    const int64_t half = n / 2;
    base = base[half] > x ? base + half : base;  // p[0, half) > x as well
    n -= half;
  }
  return (base - p) + (*base > x);
}

template <typename scalar_t>
void rank_rows(const at::Tensor& scores, const at::Tensor& targets, at::Tensor& precision_sum, at::Tensor& misordered,
               at::Tensor& deepest, at::Tensor& positives) {
  const int64_t L = scores.size(0), M = scores.size(1);
  const scalar_t* s = scores.data_ptr<scalar_t>();
  const bool* t = targets.data_ptr<bool>();
  double* prec = precision_sum.data_ptr<double>();
  int64_t* mis = misordered.data_ptr<int64_t>();
  int64_t* deep = deepest.data_ptr<int64_t>();
  int64_t* npos = positives.data_ptr<int64_t>();
  std::atomic<bool> nan_found{false};
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(M, 1));
  at::parallel_for(0, L, grain, [&](int64_t r0, int64_t r1) {
    std::vector<scalar_t> pos;   // the row's positive scores, descending
    std::vector<int64_t> hist;   // hist[q]: the row scores >= exactly the positives pos[q..P)
    const auto desc = std::greater<scalar_t>();
    for (int64_t r = r0; r < r1; ++r) {
      const scalar_t* row = s + r * M;
      const bool* y = t + r * M;
      pos.clear();
      int64_t nans = 0;
      for (int64_t j = 0; j < M; ++j) {
        nans += row[j] != row[j];
        if (y[j]) pos.push_back(row[j]);
      }
      if (nans) {
        nan_found = true;
        continue;
      }
      const int64_t P = static_cast<int64_t>(pos.size());
      npos[r] = P;
      prec[r] = 0.0;
      mis[r] = 0;
      deep[r] = 0;
      if (P == 0) continue;
      std::sort(pos.begin(), pos.end(), desc);
      // A score x is >= exactly the positives pos[q..P) with q = #{positives > x}: it adds
      // one to the rank of each of them, so rank_j = sum of hist[0..j].
      hist.assign(P + 1, 0);  // hist[P]: scores below every positive (unused)
      const scalar_t* p = pos.data();
      const scalar_t lowest = p[P - 1];
      for (int64_t j = 0; j < M; ++j) {
        const scalar_t x = row[j];
        if (x < lowest) continue;  // reaches no positive
        ++hist[count_greater(p, P, x)];
      }
      int64_t rank = 0, bad = 0;
      double sum = 0.0;
      for (int64_t j = 0; j < P; ++j) {
        rank += hist[j];
        // positives scored >= pos[j]: up to the last one equal to it
        const int64_t pos_rank = std::upper_bound(pos.begin() + j, pos.end(), pos[j], desc) - pos.begin();
        sum += static_cast<double>(pos_rank) / static_cast<double>(rank);
        bad += rank - pos_rank;
      }
      prec[r] = sum;
      mis[r] = bad;
      deep[r] = rank;  // the lowest positive's rank is the largest
    }
  });
  TORCH_CHECK_VALUE(!nan_found, kOp, ": argument 'scores' must not contain NaN");  // Python ValueError
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> positive_rank_stats_cpu(const at::Tensor& scores,
                                                                                  const at::Tensor& targets) {
  check_positive_rank_stats_inputs(kOp, scores, targets);
  const int64_t L = scores.size(0);
  const auto opts = scores.options();
  at::Tensor precision_sum = at::zeros({L}, opts.dtype(at::kDouble));
  at::Tensor misordered = at::zeros({L}, opts.dtype(at::kLong));
  at::Tensor deepest = at::zeros({L}, opts.dtype(at::kLong));
  at::Tensor positives = at::zeros({L}, opts.dtype(at::kLong));
  if (L == 0 || scores.size(1) == 0) return {precision_sum, misordered, deepest, positives};
  const at::Tensor s = scores.contiguous(), t = targets.contiguous();
  if (s.scalar_type() == at::kDouble) {
    rank_rows<double>(s, t, precision_sum, misordered, deepest, positives);
  } else {
    rank_rows<float>(s, t, precision_sum, misordered, deepest, positives);
  }
  return {precision_sum, misordered, deepest, positives};
}

}  // namespace

TORCH_LIBRARY_IMPL(bbam, CPU, m) { m.impl("positive_rank_stats", &positive_rank_stats_cpu); }

}  // namespace bbam
