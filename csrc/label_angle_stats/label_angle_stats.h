// label_angle_stats: fused label angles + segmented per (polarity, label)
// count / mean / M2 over the samples, with no N x K buffer.
// Schema (csrc/ops.cpp):
//   label_angle_stats(Tensor features, Tensor prototypes, Tensor targets)
//       -> (Tensor count, Tensor mean, Tensor m2)     each [2, K] float64
#pragma once

#include "../checks.h"

namespace bbam {

inline void check_label_angle_stats_inputs(const char* op, const at::Tensor& features,
                                           const at::Tensor& prototypes,
                                           const at::Tensor& targets) {
  check_features_prototypes_targets(op, features, prototypes, targets);
}

// Merge per-block partials [blocks, 3, 2, K] (count, mean, m2) in order with
// Chan's formula; also checks for NaN/Inf. Shared by the CPU and CUDA paths.
std::tuple<at::Tensor, at::Tensor, at::Tensor> merge_block_partials(const char* op,
                                                                    const at::Tensor& partials);

}  // namespace bbam
