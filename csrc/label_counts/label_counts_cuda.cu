// label_counts on CUDA: one thread per label over a strided share of the rows
// (coalesced: neighbouring threads read neighbouring labels of a row), then one
// integer atomicAdd per (thread, count): integer sums, so the result is exact and
// independent of the launch. Target values are checked with CUDA_KERNEL_ASSERT.
#include "label_counts.h"

#include "../bbam_math.h"
#include "../cuda/cuda_utils.cuh"

#include <ATen/ATen.h>
#include <torch/library.h>

namespace bbam {
namespace {

constexpr int kLabelsPerBlock = 128;

__global__ void label_counts_kernel(const int8_t* __restrict__ targets, int64_t N, int64_t K,
                                    unsigned long long* __restrict__ counts) {
  const int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (k >= K) return;
  unsigned long long n[3] = {0, 0, 0};  // negatives, positives, unknowns
  for (int64_t r = blockIdx.y; r < N; r += gridDim.y) {
    const int8_t t = targets[r * K + k];
    CUDA_KERNEL_ASSERT(math::target_is_valid(t) && "_label_counts: targets must be -1, 0 or 1");
    n[0] += t == 0;
    n[1] += t == 1;
    n[2] += t == -1;
  }
  for (int s = 0; s < 3; ++s) {
    if (n[s]) atomicAdd(counts + s * K + k, n[s]);
  }
}

}  // namespace

at::Tensor count_labels_cuda(const char* op, const at::Tensor& targets) {
  check_label_counts_inputs(op, targets);
  const c10::cuda::CUDAGuard guard(targets.device());
  const at::Tensor t = targets.contiguous();
  const int64_t N = t.size(0), K = t.size(1);
  at::Tensor counts = at::zeros({3, K}, t.options().dtype(at::kLong));
  if (N == 0 || K == 0) return counts;
  const int64_t label_blocks = (K + kLabelsPerBlock - 1) / kLabelsPerBlock;
  const int row_blocks = static_cast<int>(std::clamp<int64_t>(
      (int64_t(cuda::multiprocessor_count(t.get_device())) * 8 + label_blocks - 1) / label_blocks, 1,
      std::min<int64_t>(N, 65535)));
  static_assert(sizeof(unsigned long long) == sizeof(int64_t), "int64 counts");
  label_counts_kernel<<<dim3(label_blocks, row_blocks), kLabelsPerBlock, 0, c10::cuda::getCurrentCUDAStream()>>>(
      t.data_ptr<int8_t>(), N, K, reinterpret_cast<unsigned long long*>(counts.data_ptr<int64_t>()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return counts;
}

namespace {
at::Tensor label_counts_cuda(const at::Tensor& targets) { return count_labels_cuda("_label_counts", targets); }
}  // namespace

TORCH_LIBRARY_IMPL(bbam, CUDA, m) { m.impl("_label_counts", &label_counts_cuda); }

}  // namespace bbam
