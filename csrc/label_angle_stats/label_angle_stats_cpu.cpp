// label_angle_stats on CPU. Rows are processed in tiles: a GEMM of the tile's
// features with the normalised prototypes (cpu::rows_times_protos: oneDNN for float32),
// then the vectorised kernel turns the tile into angles and per (polarity,
// label) partials. Tiles are grouped into at most 64 groups (a number that does
// not depend on the thread count), each group runs on one thread, and the group
// partials are merged in order with Chan's formula: deterministic, and no N x K
// buffer — extra memory is O(K*D + threads * tile * K + 64 * K).
#include "label_angle_stats.h"

#include "../bbam_math.h"
#include "../cpu/gemm.h"
#include "../cpu/host_utils.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <vector>

namespace bbam {
namespace {

constexpr int64_t kMaxGroups = 64;

int64_t tile_rows(int64_t num_labels) {
  return std::clamp<int64_t>(65536 / std::max<int64_t>(num_labels, 1), 16, 1024);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> label_angle_stats_cpu(const at::Tensor& features,
                                                                     const at::Tensor& prototypes,
                                                                     const at::Tensor& targets) {
  constexpr const char* op = "label_angle_stats";
  check_label_angle_stats_inputs(op, features, prototypes, targets);
  const int64_t N = features.size(0), K = prototypes.size(0);
  const auto opmath = opmath_type(features.scalar_type());
  // p_k / max(|p_k|, eps), [K, D] contiguous.
  const at::Tensor protos = prototypes.to(opmath);
  const at::Tensor protos_hat =
      (protos / at::linalg_vector_norm(protos, 2, {1}, /*keepdim=*/true).clamp_min(math::kNormEps))
          .contiguous();
  const at::Tensor targets_c = targets.contiguous();
  const int64_t rows = tile_rows(K);
  const int64_t num_tiles = cpu::ceil_div(N, rows);
  const int64_t tiles_per_group = cpu::ceil_div(num_tiles, kMaxGroups);
  const int64_t num_groups = cpu::ceil_div(num_tiles, std::max<int64_t>(tiles_per_group, 1));
  at::Tensor partials = at::zeros({num_groups, 3, 2, K}, at::TensorOptions().dtype(at::kDouble));
  const auto& kernels = cpu::kernels();
  std::atomic<bool> bad_target{false};

  at::parallel_for(0, num_groups, 1, [&](int64_t g0, int64_t g1) {
    std::vector<double> tile_sums(6 * K);
    for (int64_t g = g0; g < g1; ++g) {
      for (int64_t t = g * tiles_per_group; t < std::min(num_tiles, (g + 1) * tiles_per_group); ++t) {
        const int64_t r0 = t * rows, n = std::min(rows, N - r0);
        const at::Tensor feat = features.narrow(0, r0, n).to(opmath);
        at::Tensor tile = cpu::rows_times_protos(feat, protos_hat);  // [n, K], overwritten below
        const at::Tensor inv_norm =
            at::linalg_vector_norm(feat, 2, {1}).clamp_min_(math::kNormEps).reciprocal_();
        cpu::StatsTileArgs args;
        args.rows = n;
        args.num_labels = K;
        args.dots = tile.data_ptr();
        args.inv_norm = inv_norm.data_ptr();
        args.targets = targets_c.data_ptr<int8_t>() + r0 * K;
        args.tile_sums = tile_sums.data();
        args.acc = partials.data_ptr<double>() + g * 6 * K;
        bool bad = false;
        kernels.label_angle_stats_tile(opmath == at::kDouble, args, &bad);
        if (bad) bad_target = true;
      }
    }
  });
  if (bad_target) fail_bad_targets(op, "targets");
  return merge_block_partials(op, partials);
}

}  // namespace

TORCH_LIBRARY_IMPL(bbam, CPU, m) { m.impl("label_angle_stats", &label_angle_stats_cpu); }

}  // namespace bbam
