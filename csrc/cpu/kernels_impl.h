// Definitions of the KernelTable entry points for one CPU capability. Included once
// by each of kernels_default.cpp, kernels_avx2.cpp and kernels_avx512.cpp, which
// define CPU_CAPABILITY (and are compiled with their own flags) first.
#pragma once

#include "../angle_transform/angle_transform_cpu_kernel.h"
#include "../bbam_loss/bbam_loss_cpu_kernel.h"
#include "../label_angle_stats/label_angle_stats_cpu_kernel.h"
#include "../negative_select/negative_select_cpu_kernel.h"

namespace bbam {
namespace cpu {
namespace CPU_CAPABILITY {

double bbam_loss_forward(DType dtype, const LossArgs& args, int64_t row_begin, int64_t row_end,
                         bool* bad_target) {
  return dispatch_dtype(dtype, [&](auto tag) {
    return bbam_loss_forward_impl<decltype(tag)>(args, row_begin, row_end, bad_target);
  });
}

void bbam_loss_backward(DType dtype, const LossArgs& args, int64_t row_begin, int64_t row_end) {
  dispatch_dtype(dtype, [&](auto tag) {
    bbam_loss_backward_impl<decltype(tag)>(args, row_begin, row_end);
  });
}

void angle_transform(DType dtype, const TransformArgs& args, int64_t row_begin, int64_t row_end,
                     bool* bad_target) {
  const bool ok = dispatch_dtype(dtype, [&](auto tag) {
    return angle_transform_impl<decltype(tag), false>(args, row_begin, row_end);
  });
  if (!ok) *bad_target = true;
}

void angle_transform_backward(DType dtype, const TransformArgs& args, int64_t row_begin,
                              int64_t row_end) {
  dispatch_dtype(dtype, [&](auto tag) {
    return angle_transform_impl<decltype(tag), true>(args, row_begin, row_end);
  });
}

void label_angle_stats_tile(bool float64, const StatsTileArgs& args, bool* bad_target) {
  const bool ok = float64 ? label_angle_stats_tile_impl<double>(args)
                          : label_angle_stats_tile_impl<float>(args);
  if (!ok) *bad_target = true;
}

int64_t negative_select_tile(bool float64, const SelectTileArgs& args) {
  if (float64) {
    return args.init_mask ? negative_select_tile_impl<double, true>(args) : negative_select_tile_impl<double, false>(args);
  }
  return args.init_mask ? negative_select_tile_impl<float, true>(args) : negative_select_tile_impl<float, false>(args);
}

// One row: branch-free over K with byte flags and restrict pointers, so it vectorises.
inline uint8_t count_row(const int8_t* __restrict__ t, int64_t K, int32_t* __restrict__ neg,
                         int32_t* __restrict__ pos, int32_t* __restrict__ unk) {
  uint8_t bad = 0;
  for (int64_t k = 0; k < K; ++k) {
    const int8_t v = t[k];
    neg[k] += v == 0;
    pos[k] += v == 1;
    unk[k] += v == -1;
    bad |= static_cast<uint8_t>(!math::target_is_valid(v));
  }
  return bad;
}

bool count_targets(const int8_t* targets, int64_t rows, int64_t num_labels, int32_t* counts) {
  uint8_t bad = 0;
  for (int64_t i = 0; i < rows; ++i) {
    bad |= count_row(targets + i * num_labels, num_labels, counts, counts + num_labels, counts + 2 * num_labels);
  }
  return bad == 0;
}

#if defined(CPU_CAPABILITY_AVX512)
constexpr const char* kName = "avx512";
#elif defined(CPU_CAPABILITY_AVX2)
constexpr const char* kName = "avx2";
#else
constexpr const char* kName = "default";
#endif
const KernelTable kTable = {
    kName, &bbam_loss_forward, &bbam_loss_backward, &angle_transform,
    &angle_transform_backward, &label_angle_stats_tile, &negative_select_tile, &count_targets};

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace bbam
