// label_counts on CPU: rows split into at most 64 fixed chunks (independent of the
// thread count), each counted with int32 column counters by the vectorised kernel
// (cpu::KernelTable::count_targets), then summed into int64 in chunk order.
#include "label_counts.h"

#include "../cpu/host_utils.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <vector>

namespace bbam {
namespace {
constexpr int64_t kMaxChunks = 64;
}  // namespace

at::Tensor count_labels_cpu(const char* op, const at::Tensor& targets) {
  check_label_counts_inputs(op, targets);
  const at::Tensor t = targets.contiguous();
  const int64_t N = t.size(0), K = t.size(1);
  at::Tensor counts = at::zeros({3, K}, at::TensorOptions().dtype(at::kLong));
  if (N == 0 || K == 0) return counts;
  // int32 counters cannot overflow: a chunk has < 2^31 rows.
  const int64_t rows = std::min<int64_t>(std::max<int64_t>(cpu::ceil_div(N, kMaxChunks), 1), int64_t(1) << 30);
  const int64_t num_chunks = cpu::ceil_div(N, rows);
  std::vector<int32_t> partial(num_chunks * 3 * K, 0);
  std::atomic<bool> bad_target{false};
  const int8_t* src = t.data_ptr<int8_t>();
  const auto& kernels = cpu::kernels();
  at::parallel_for(0, num_chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t r0 = c * rows, n = std::min(N, (c + 1) * rows) - r0;
      if (!kernels.count_targets(src + r0 * K, n, K, partial.data() + c * 3 * K)) bad_target = true;
    }
  });
  if (bad_target) fail_bad_targets(op, "targets");
  int64_t* out = counts.data_ptr<int64_t>();
  for (int64_t c = 0; c < num_chunks; ++c) {
    const int32_t* p = partial.data() + c * 3 * K;
    for (int64_t j = 0; j < 3 * K; ++j) out[j] += p[j];
  }
  return counts;
}

namespace {
at::Tensor label_counts_cpu(const at::Tensor& targets) { return count_labels_cpu("_label_counts", targets); }
}  // namespace

TORCH_LIBRARY_IMPL(bbam, CPU, m) { m.impl("_label_counts", &label_counts_cpu); }

}  // namespace bbam
