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
  check_dim(op, "features", features, 2);
  check_floating(op, "features", features);
  check_dim(op, "prototypes", prototypes, 2);
  check_floating(op, "prototypes", prototypes);
  const int64_t N = features.size(0), D = features.size(1), K = prototypes.size(0);
  BBAM_CHECK_ARG(prototypes.size(1) == D, op, "prototypes",
                 "must have shape [K, D] with D = features.size(1) = ", D, ", got ",
                 shape_str(prototypes));
  check_same_device(op, "prototypes", prototypes, "features", features);
  check_dim(op, "targets", targets, 2);
  check_shape(op, "targets", targets, {N, K}, "[N, K] (N = features.size(0), K = prototypes.size(0))");
  check_targets_dtype(op, "targets", targets);
  check_same_device(op, "targets", targets, "features", features);
}

// Merge per-block partials [blocks, 3, 2, K] (count, mean, m2) in order with
// Chan's formula; also checks for NaN/Inf. Shared by the CPU and CUDA paths.
std::tuple<at::Tensor, at::Tensor, at::Tensor> merge_block_partials(const char* op,
                                                                    const at::Tensor& partials);

}  // namespace bbam
