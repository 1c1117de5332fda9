// negative_select CPU kernel for one tile: raw dot products -> cosines, then per
// (row, label) the band classification (math::band_class) of the ranked labels'
// negatives. Written branch-free over the K columns so that it vectorises; in-band
// entries (a few percent) are flagged in a scratch row and listed afterwards.
#pragma once

#include "../cpu/kernel_utils.h"

#include <cstring>

namespace bbam {
namespace cpu {
namespace CPU_CAPABILITY {

// One row over its K columns: cosines, mask, above-band counts and in-band flags.
// Flags as bytes (not bool) and restrict pointers in a function of their own: GCC
// vectorises the loop only in this form (64-byte vectors with AVX-512).
template <typename op_t, bool kInitMask>
uint8_t select_row(int64_t K, op_t scale, op_t* __restrict__ d, const int8_t* __restrict__ t,
                   uint8_t* __restrict__ m, const uint8_t* __restrict__ ranked,
                   const uint8_t* __restrict__ keep_all, const op_t* __restrict__ lower,
                   const op_t* __restrict__ upper, int32_t* __restrict__ above,
                   uint8_t* __restrict__ in_band) {
  uint8_t any = 0;
  for (int64_t k = 0; k < K; ++k) {
    const op_t s = d[k] * scale;
    d[k] = s;
    // math::band_class, spelled branch-free: above (s > upper), in band (lower <= s <= upper).
    const uint8_t neg = t[k] == 0;
    const uint8_t searched = neg & ranked[k];
    const uint8_t gt = s > upper[k];
    const uint8_t ge = s >= lower[k];
    const uint8_t is_above = searched & gt;
    const uint8_t is_in = searched & ge & static_cast<uint8_t>(gt ^ 1);
    if constexpr (kInitMask) {
      m[k] = static_cast<uint8_t>(t[k] == 1) | (neg & keep_all[k]) | is_above;
    } else {
      m[k] = searched ? is_above : m[k];
    }
    above[k] += is_above;
    in_band[k] = is_in;
    any |= is_in;
  }
  return any;
}

template <typename op_t, bool kInitMask>
int64_t negative_select_tile_impl(const SelectTileArgs& A) {
  const int64_t K = A.num_labels;
  const op_t* inv_norm = static_cast<const op_t*>(A.inv_norm);
  const auto* ranked = reinterpret_cast<const uint8_t*>(A.ranked);
  const auto* keep_all = reinterpret_cast<const uint8_t*>(A.keep_all);
  const op_t* lower = static_cast<const op_t*>(A.lower);
  const op_t* upper = static_cast<const op_t*>(A.upper);
  uint8_t* in_band = A.scratch;
  int64_t count = 0;
  for (int64_t i = 0; i < A.rows; ++i) {
    const uint8_t any = select_row<op_t, kInitMask>(
        K, inv_norm[i], static_cast<op_t*>(A.dots) + i * K, A.targets + i * K,
        reinterpret_cast<uint8_t*>(A.mask) + i * K, ranked, keep_all, lower, upper, A.above, in_band);
    if (!any) continue;
    // List the flagged columns, skipping 8 clear flags at a time.
    const int64_t base = i * K;
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
      uint64_t word;
      std::memcpy(&word, in_band + k, 8);
      if (word == 0) continue;
      for (int64_t j = k; j < k + 8; ++j) {
        if (in_band[j]) A.band_index[count++] = base + j;
      }
    }
    for (; k < K; ++k) {
      if (in_band[k]) A.band_index[count++] = base + k;
    }
  }
  return count;
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace bbam
