// cap_select: CAP pseudo-labels, their confidence mask and thresholds (DESIGN.md §1,
// bbam/cap.py), by per-label selection.
//
// Schema (csrc/ops.cpp):
//   cap_select(Tensor scores, Tensor ranks, Tensor pos_keep, Tensor not_neg,
//              bool unknown_outside_mask) -> (Tensor targets, Tensor mask, Tensor thresholds)
//   scores [N, K] float32 / float64 (any strides; label-major storage, a transposed
//          [K, N] tensor, is read without a copy), no NaN;
//   ranks, pos_keep, not_neg [K] int64 in [0, N] with pos_keep <= ranks;
//   targets [N, K] int8: 1 where ranks[k] > 0 and scores[i, k] >= thresholds[k], else 0;
//   mask [N, K] bool: a pseudo-positive is kept when it is among the first pos_keep[k]
//          of label k in the stable descending order (larger score first, the lower row
//          first among ties); a pseudo-negative when it is NOT among the first not_neg[k];
//   thresholds [K] (dtype of scores): the score of rank ranks[k] (1-based) in that order,
//          +inf where ranks[k] == 0;
//   unknown_outside_mask: targets hold -1 where the mask is False (the targets the loss
//          trains on) and mask is empty, [0, K]: half the output bytes.
//
// Algorithm (CPU): per label, the candidates are the scores at or above a bound placed
// from a strided sample of 1024 of them (all scores when the bound proves too high), and
// the values at the (up to three) ranks come from nested std::nth_element calls among
// them (deepest first, then within the prefix it leaves), so no column is sorted; "among
// the first m" is "above the m-th value, or equal to it and among the first m - #above
// equal ones in row order", one
// counting pass over the candidates and one writing pass. Labels are processed in blocks
// of at most 64 whose outputs are transposed into the row-major [N, K] results.
// Temporaries: N values and 64 x N (x 2 with the mask) bytes per thread, plus a [K, N]
// copy of the scores when they are not stored label-major. The result is exact: it does
// not depend on the sample, the blocking or the thread count.
#pragma once

#include "../checks.h"

namespace bbam {

inline void check_cap_select_inputs(const char* op, const at::Tensor& scores, const at::Tensor& ranks,
                                    const at::Tensor& pos_keep, const at::Tensor& not_neg) {
  check_dim(op, "scores", scores, 2);
  const auto st = scores.scalar_type();
  BBAM_CHECK_ARG(st == at::kFloat || st == at::kDouble, op, "scores", "must be float32 or float64, got ", st);
  const int64_t K = scores.size(1);
  for (auto [arg, t] : {std::pair<const char*, const at::Tensor&>{"ranks", ranks},
                        std::pair<const char*, const at::Tensor&>{"pos_keep", pos_keep},
                        std::pair<const char*, const at::Tensor&>{"not_neg", not_neg}}) {
    check_dim(op, arg, t, 1);
    check_shape(op, arg, t, {K}, "[K] (K = scores.size(1))");
    BBAM_CHECK_ARG(t.scalar_type() == at::kLong, op, arg, "must be int64, got ", t.scalar_type());
    check_same_device(op, arg, t, "scores", scores);
  }
}

}  // namespace bbam
