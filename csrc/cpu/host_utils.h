// Host-side helpers of the CPU ops (threading, dtype mapping).
#pragma once

#include "kernels.h"

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace bbam {
namespace cpu {

inline DType kernel_dtype(at::ScalarType st) {
  switch (st) {
    case at::kFloat: return DType::Float32;
    case at::kDouble: return DType::Float64;
    case at::kHalf: return DType::Float16;
    case at::kBFloat16: return DType::BFloat16;
    default: TORCH_CHECK(false, "bbam: unsupported dtype ", st);
  }
}

// Rows per parallel chunk: about 32k elements, independent of the thread count
// so that reductions over chunks are deterministic.
inline int64_t rows_per_chunk(int64_t num_labels) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(num_labels, 1));
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace cpu
}  // namespace bbam
