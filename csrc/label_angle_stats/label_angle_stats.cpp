// Device-independent part of label_angle_stats: the ordered Chan merge of
// block partials (used by the CPU and CUDA implementations).
#include "label_angle_stats.h"

#include "../bbam_math.h"

#include <ATen/ATen.h>

#include <cmath>

namespace bbam {

std::tuple<at::Tensor, at::Tensor, at::Tensor> merge_block_partials(const char* op,
                                                                    const at::Tensor& partials) {
  const at::Tensor p = partials.to(at::kCPU, at::kDouble).contiguous();
  const int64_t blocks = p.size(0), K = p.size(3);
  auto opts = at::TensorOptions().dtype(at::kDouble);
  at::Tensor count = at::zeros({2, K}, opts), mean = at::zeros({2, K}, opts),
             m2 = at::zeros({2, K}, opts);
  double* n = count.data_ptr<double>();
  double* mu = mean.data_ptr<double>();
  double* q = m2.data_ptr<double>();
  const double* src = p.data_ptr<double>();
  for (int64_t b = 0; b < blocks; ++b) {  // fixed order: deterministic
    const double* blk = src + b * 6 * K;
    for (int64_t j = 0; j < 2 * K; ++j) {
      math::chan_merge(n[j], mu[j], q[j], blk[j], blk[2 * K + j], blk[4 * K + j]);
    }
  }
  for (int64_t j = 0; j < 2 * K; ++j) {
    TORCH_CHECK(std::isfinite(mu[j]) && std::isfinite(q[j]), op,
                ": argument 'features' (or 'prototypes') contains NaN or Inf: the angle "
                "statistics of label ", j % K, " are not finite");
  }
  return {count.to(partials.device()), mean.to(partials.device()), m2.to(partials.device())};
}

}  // namespace bbam
