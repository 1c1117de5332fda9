// positive_rank_stats: per row, summaries of the ranks of its positive entries -- the
// sufficient statistics of average precision (rows = labels of a label-major matrix)
// and of the example-based ranking metrics (rows = samples): bbam/metrics.py.
//
// Schema (csrc/ops.cpp):
//   positive_rank_stats(Tensor scores, Tensor targets)
//       -> (Tensor precision_sum, Tensor misordered, Tensor deepest, Tensor positives)
//   scores [L, M] float32 / float64 (any strides), no NaN; targets [L, M] bool.
//   For row i with positive set P_i = {j : targets[i, j]} and, for j in P_i,
//     rank_j     = #{l : scores[i, l] >= scores[i, j]}          (ties count against j)
//     pos_rank_j = #{l in P_i : scores[i, l] >= scores[i, j]}
//   precision_sum [L] float64 = sum_j pos_rank_j / rank_j   (AP, LRAP numerators)
//   misordered    [L] int64   = sum_j (rank_j - pos_rank_j)  (negatives scored >= a positive)
//   deepest       [L] int64   = max_j rank_j, 0 without positives (coverage error)
//   positives     [L] int64   = |P_i|
//
// Algorithm (CPU): per row, the positives' scores are sorted (descending); every score
// of the row finds by binary search how many positives it reaches (>=), a histogram of
// those counts is summed into each positive's rank. O(M log |P|) per row, no sort of
// the row; temporaries O(M) per thread, plus one contiguous copy of inputs that are not
// row-major (callers pass bounded blocks); rows are independent (any thread count, same
// result).
#pragma once

#include "../checks.h"

namespace bbam {

inline void check_positive_rank_stats_inputs(const char* op, const at::Tensor& scores, const at::Tensor& targets) {
  check_dim(op, "scores", scores, 2);
  const auto st = scores.scalar_type();
  BBAM_CHECK_ARG(st == at::kFloat || st == at::kDouble, op, "scores", "must be float32 or float64, got ", st);
  check_dim(op, "targets", targets, 2);
  check_shape(op, "targets", targets, scores.sizes().vec(), "[L, M] like scores");
  BBAM_CHECK_ARG(targets.scalar_type() == at::kBool, op, "targets", "must be bool, got ", targets.scalar_type());
  check_same_device(op, "targets", targets, "scores", scores);
}

}  // namespace bbam
