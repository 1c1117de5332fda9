// label_angle_stats on CUDA. Rows are processed in tiles: cuBLAS multiplies the
// tile's features by the normalised prototypes into a [tile, K] buffer (the only
// N-dependent buffer: no N x K matrix exists), then an epilogue kernel turns the tile
// into angles and per (polarity, label) partials of row blocks, and a merge kernel
// folds them, in a fixed order, into running accumulators with Chan's formula.
// The launch shapes depend only on the sizes and the device, so results are bitwise
// reproducible on a device. Extra memory: O(K*D + tile*K + row_blocks*K).
#include "label_angle_stats.h"

#include "../bbam_math.h"
#include "../cuda/cuda_utils.cuh"

#include <ATen/ATen.h>
#include <torch/library.h>

namespace bbam {
namespace {

constexpr int kLabelsPerBlock = 128;
constexpr double kPivot = 1.5707963267948966;  // pi/2: sums of (angle - pivot) cancel less

// One thread per label k, looping over the rows blockIdx.y, +gridDim.y, ... of the tile.
// Writes partials[blockIdx.y] = (count [2,K], mean [2,K], m2 [2,K]).
template <typename op_t>
__global__ void stats_tile_kernel(const op_t* __restrict__ dots, const op_t* __restrict__ inv_norm,
                                  const int8_t* __restrict__ targets, int64_t rows, int64_t K,
                                  double* __restrict__ partials) {
  const int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (k >= K) return;
  double n[2] = {0.0, 0.0}, sum[2] = {0.0, 0.0}, sq[2] = {0.0, 0.0};
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const int8_t t = targets[r * K + k];  // coalesced: neighbouring threads read neighbouring labels
    CUDA_KERNEL_ASSERT(math::target_is_valid(t) && "label_angle_stats: targets must be -1, 0 or 1");
    if (t < 0) continue;
    const double x = static_cast<double>(math::stats_angle<op_t, op_t>(dots[r * K + k] * inv_norm[r])) - kPivot;
    n[t] += 1.0;
    sum[t] += x;
    sq[t] += x * x;
  }
  double* out = partials + blockIdx.y * 6 * K;
  for (int s = 0; s < 2; ++s) {
    const double mean = n[s] > 0 ? sum[s] / n[s] : 0.0;
    out[s * K + k] = n[s];
    out[2 * K + s * K + k] = n[s] > 0 ? mean + kPivot : 0.0;
    out[4 * K + s * K + k] = n[s] > 0 ? fmax(sq[s] - sum[s] * mean, 0.0) : 0.0;
  }
}

// One thread per (polarity, label): fold the row-block partials into acc, in order.
__global__ void merge_partials_kernel(const double* __restrict__ partials, int blocks, int64_t K,
                                      double* __restrict__ acc) {
  const int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (j >= 2 * K) return;
  double n = acc[j], mean = acc[2 * K + j], m2 = acc[4 * K + j];
  for (int b = 0; b < blocks; ++b) {
    const double* p = partials + b * 6 * K;
    math::chan_merge(n, mean, m2, p[j], p[2 * K + j], p[4 * K + j]);
  }
  acc[j] = n;
  acc[2 * K + j] = mean;
  acc[4 * K + j] = m2;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> label_angle_stats_cuda(const at::Tensor& features,
                                                                      const at::Tensor& prototypes,
                                                                      const at::Tensor& targets) {
  constexpr const char* op = "label_angle_stats";
  check_label_angle_stats_inputs(op, features, prototypes, targets);
  const c10::cuda::CUDAGuard guard(features.device());
  const int64_t N = features.size(0), K = prototypes.size(0);
  const auto opmath = opmath_type(features.scalar_type());
  const at::Tensor protos = prototypes.to(opmath);
  const at::Tensor protos_hat_t =
      (protos / at::linalg_vector_norm(protos, 2, {1}, /*keepdim=*/true).clamp_min(math::kNormEps)).t();
  const at::Tensor targets_c = targets.contiguous();
  const auto f64 = features.options().dtype(at::kDouble);
  at::Tensor acc = at::zeros({3, 2, K}, f64);
  if (N == 0 || K == 0) return merge_block_partials(op, acc.unsqueeze(0));

  const int64_t rows = std::clamp<int64_t>((int64_t(1) << 26) / K, 1024, N);  // tile <= 256 MiB (fp32)
  const int device = features.get_device();
  const int64_t label_blocks = (K + kLabelsPerBlock - 1) / kLabelsPerBlock;
  const int row_blocks = static_cast<int>(std::clamp<int64_t>(
      (int64_t(cuda::multiprocessor_count(device)) * 8 + label_blocks - 1) / label_blocks, 1, 1024));
  at::Tensor partials = at::empty({row_blocks, 3, 2, K}, f64);
  at::Tensor dots = at::empty({rows, K}, protos.options());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  for (int64_t r0 = 0; r0 < N; r0 += rows) {
    const int64_t n = std::min(rows, N - r0);
    const at::Tensor feat = features.narrow(0, r0, n).to(opmath);
    at::Tensor tile = dots.narrow(0, 0, n);
    at::mm_out(tile, feat, protos_hat_t);  // cuBLAS
    const at::Tensor inv_norm = at::linalg_vector_norm(feat, 2, {1}).clamp_min_(math::kNormEps).reciprocal_();
    const int blocks_y = static_cast<int>(std::min<int64_t>(row_blocks, n));
    AT_DISPATCH_FLOATING_TYPES(tile.scalar_type(), "label_angle_stats_cuda", [&] {
      stats_tile_kernel<scalar_t><<<dim3(label_blocks, blocks_y), kLabelsPerBlock, 0, stream>>>(
          tile.data_ptr<scalar_t>(), inv_norm.data_ptr<scalar_t>(), targets_c.data_ptr<int8_t>() + r0 * K, n, K,
          partials.data_ptr<double>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    merge_partials_kernel<<<(2 * K + cuda::kThreads - 1) / cuda::kThreads, cuda::kThreads, 0, stream>>>(
        partials.data_ptr<double>(), blocks_y, K, acc.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return merge_block_partials(op, acc.unsqueeze(0));
}

}  // namespace

TORCH_LIBRARY_IMPL(bbam, CUDA, m) { m.impl("label_angle_stats", &label_angle_stats_cuda); }

}  // namespace bbam
