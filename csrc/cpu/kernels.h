// Raw-pointer CPU kernels, compiled once per CPU capability (kernels_default.cpp
// with the baseline flags, kernels_avx2.cpp with -mavx2 -mfma -mf16c,
// kernels_avx512.cpp with -mavx512f/bw/vl/dq) and picked at run time. They see no
// at::Tensor: the host code of each op (checks, allocation, threading, GEMMs) lives
// in <op>/<op>_cpu.cpp and hands them pointers.
#pragma once

#include <cstdint>
#include <string>

namespace bbam {
namespace cpu {

enum class DType : int { Float32, Float64, Float16, BFloat16 };

// bbam_loss forward / backward over rows [row_begin, row_end) of a [B, K] problem.
// All pointers are to contiguous row-major data.
struct LossArgs {
  int64_t num_labels = 0;          // K
  const void* cos = nullptr;       // [B, K] input dtype
  const int8_t* targets = nullptr; // [B, K]
  const void* weight = nullptr;    // [B, K] input dtype, or null (all ones)
  const void* coef = nullptr;      // [4, K] opmath: a_neg, a_pos, b_neg, b_pos
  double margin = 0.0;
  double scale = 0.0;
  void* loss = nullptr;            // forward, reduction none: [B, K] opmath, else null
  const void* grad_loss = nullptr; // backward, reduction none: [B, K] opmath, else null
  double grad_scalar = 0.0;        // backward, reduction sum/mean: d total / d element
  void* grad_cos = nullptr;        // backward: [B, K] input dtype. Forward: if set, [B, K] opmath
                                   // d total / d cos (times grad_scalar: 1 sum, 1/(B*K) mean)
};

// angle_transform forward (phi) or backward (grad of cos) over rows.
struct TransformArgs {
  int64_t num_labels = 0;
  const void* cos = nullptr;       // [B, K] input dtype
  const int8_t* targets = nullptr; // [B, K], or null (inference transform everywhere)
  const void* coef = nullptr;      // [6, K] opmath: a_neg, a_pos, a_avg, b_neg, b_pos, b_avg
  const void* grad_phi = nullptr;  // backward only: [B, K] input dtype; null in forward
  void* out = nullptr;             // [B, K] input dtype: phi (forward) or grad of cos (backward)
};

// label_angle_stats: one tile of raw dot products -> per (polarity, label) partials.
struct StatsTileArgs {
  int64_t rows = 0;
  int64_t num_labels = 0;
  void* dots = nullptr;             // [rows, K] opmath: <z_i, p_k / |p_k|>; overwritten
  const void* inv_norm = nullptr;   // [rows] opmath: 1 / max(|z_i|, eps)
  const int8_t* targets = nullptr;  // [rows, K] (row stride K)
  double* tile_sums = nullptr;      // scratch [3, 2, K]
  double* acc = nullptr;            // running [3, 2, K]: count, mean, m2 (Chan-merged)
};

// negative_select: one tile of raw dot products with all K (normalised, zero for the
// columns not ranked) prototypes -> cosines, mask row updates, above-band counts and the
// flat indices of in-band negatives.
struct SelectTileArgs {
  int64_t rows = 0;
  int64_t num_labels = 0;           // K
  void* dots = nullptr;             // [rows, K] opmath: <z_i, p_k / |p_k|>; overwritten with cosines
  const void* inv_norm = nullptr;   // [rows] opmath: 1 / max(|z_i|, eps)
  const int8_t* targets = nullptr;  // [rows, K]
  const bool* keep_all = nullptr;   // [K] labels whose negatives are all kept (init_mask only)
  const bool* ranked = nullptr;     // [K] labels ranked in this scan
  const void* lower = nullptr;      // [K] opmath band
  const void* upper = nullptr;      // [K] opmath band
  bool init_mask = false;           // write whole mask rows, else only ranked columns' negatives
  bool* mask = nullptr;             // [rows, K]
  int32_t* above = nullptr;         // [K] above-band counts, added to (zeroed by the caller)
  uint8_t* scratch = nullptr;       // [K] scratch
  int64_t* band_index = nullptr;    // [rows * K] out: i * K + k of each in-band negative
};

// One table of entry points per CPU capability.
struct KernelTable {
  const char* name;
  // Returns the sum of the rows' losses; sets *bad_target on a value not in {-1, 0, 1}.
  double (*bbam_loss_forward)(DType dtype, const LossArgs& args, int64_t row_begin,
                              int64_t row_end, bool* bad_target);
  void (*bbam_loss_backward)(DType dtype, const LossArgs& args, int64_t row_begin,
                             int64_t row_end);
  void (*angle_transform)(DType dtype, const TransformArgs& args, int64_t row_begin,
                          int64_t row_end, bool* bad_target);
  void (*angle_transform_backward)(DType dtype, const TransformArgs& args, int64_t row_begin,
                                   int64_t row_end);
  void (*label_angle_stats_tile)(bool float64, const StatsTileArgs& args, bool* bad_target);
  // Returns the number of in-band negatives written to args.band_index.
  int64_t (*negative_select_tile)(bool float64, const SelectTileArgs& args);
  // label_counts: adds the negatives / positives / unknowns of rows [n, K] (row stride K)
  // to counts [3, K]; returns false if a target is not in {-1, 0, 1}.
  bool (*count_targets)(const int8_t* targets, int64_t rows, int64_t num_labels, int32_t* counts);
};

// Defined by kernels_default.cpp (always), kernels_avx2.cpp and kernels_avx512.cpp
// (null when the compiler could not target that instruction set, e.g. on aarch64).
const KernelTable* default_kernel_table();
const KernelTable* avx2_kernel_table();
const KernelTable* avx512_kernel_table();

// The kernels for this CPU: the widest variant compiled in, supported by the CPU and
// allowed by ATen's own choice (ATEN_CPU_CAPABILITY=default|avx2 caps it), unless
// BBAM_CPU_KERNELS=default|avx2|avx512 names one.
const KernelTable& kernels();
// Select a variant by name ("default", "avx2", "avx512" or "auto"); returns the one now in use.
std::string set_kernels(const std::string& name);

}  // namespace cpu
}  // namespace bbam
