// label_counts: per-label numbers of negatives, positives and unknowns of a target
// matrix, in one pass that also validates the target values.
// Schema (csrc/ops.cpp):
//   _label_counts(Tensor targets) -> Tensor     [3, K] int64: row 0 negatives (0),
//                                               row 1 positives (1), row 2 unknowns (-1)
#pragma once

#include "../checks.h"

namespace bbam {

inline void check_label_counts_inputs(const char* op, const at::Tensor& targets) {
  check_dim(op, "targets", targets, 2);
  check_targets_dtype(op, "targets", targets);
}

// The CPU counting pass (also used by negative_select): [3, K] int64 on the CPU.
at::Tensor count_labels_cpu(const char* op, const at::Tensor& targets);
// The CUDA counting pass (label_counts_cuda.cu; CUDA builds only): [3, K] int64 on the device.
at::Tensor count_labels_cuda(const char* op, const at::Tensor& targets);

}  // namespace bbam
