// Helpers for the per-capability CPU kernels (included only by kernels_*.cpp,
// after CPU_CAPABILITY is defined).
#pragma once

#define BBAM_CPU_VECTORIZED 1
#include "../bbam_math.h"
#include "kernels.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <type_traits>
#include <vector>

namespace bbam {
namespace cpu {
namespace CPU_CAPABILITY {

template <typename scalar_t>
using opmath_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// Calls f(scalar_t{}) with the C++ type of `dtype`.
template <typename F>
decltype(auto) dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::Float64: return f(double{});
    case DType::Float16: return f(c10::Half{});
    case DType::BFloat16: return f(c10::BFloat16{});
    case DType::Float32:
    default: return f(float{});
  }
}

// A row of the input dtype as opmath values: the row itself when the types
// agree, else converted into `buf` (fp16/bf16 -> fp32).
template <typename scalar_t>
const opmath_t<scalar_t>* row_as_opmath(const scalar_t* row, int64_t n,
                                        std::vector<opmath_t<scalar_t>>& buf) {
  if constexpr (std::is_same_v<scalar_t, opmath_t<scalar_t>>) {
    return row;
  } else {
    buf.resize(n);
    for (int64_t k = 0; k < n; ++k) buf[k] = static_cast<float>(row[k]);
    return buf.data();
  }
}

// int8 targets of a row as opmath values (-1, 0, 1); returns whether all were valid.
template <typename T>
bool targets_as_opmath(const int8_t* row, int64_t n, T* out) {
  bool ok = true;
  for (int64_t k = 0; k < n; ++k) {
    out[k] = static_cast<T>(row[k]);
    ok &= math::target_is_valid(row[k]);
  }
  return ok;
}

// Store opmath values into a row of the input dtype.
template <typename scalar_t>
void store_row(const opmath_t<scalar_t>* src, int64_t n, scalar_t* dst) {
  if constexpr (std::is_same_v<scalar_t, opmath_t<scalar_t>>) {
    if (src != dst) std::copy(src, src + n, dst);
  } else {
    for (int64_t k = 0; k < n; ++k) dst[k] = static_cast<scalar_t>(src[k]);
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace bbam
