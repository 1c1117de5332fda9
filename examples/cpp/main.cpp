// A C++ consumer of libbbam_ops: no Python, no bbam headers. Linking the library runs its
// TORCH_LIBRARY registrations; the ops are then looked up by name in the dispatcher,
// exactly as torch.ops.bbam.* does from Python.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>

int main() {
  auto& dispatcher = c10::Dispatcher::singleton();

  // bbam_loss(Tensor cos, Tensor targets, Tensor coef_a, Tensor coef_b, Tensor? weight,
  //           float margin, float scale, int reduction) -> Tensor
  auto bbam_loss =
      dispatcher.findSchemaOrThrow("bbam::bbam_loss", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            const at::Tensor&, const std::optional<at::Tensor>&, double, double,
                            int64_t)>();
  auto build_info =
      dispatcher.findSchemaOrThrow("bbam::_build_info", "").typed<std::string()>();
  auto cpu_kernels = dispatcher.findSchemaOrThrow("bbam::_cpu_kernels", "")
                         .typed<std::string(std::optional<std::string>)>();

  // Two samples, three labels; targets 1 positive, 0 negative, -1 unknown (ignored).
  const float cos_values[] = {0.9f, -0.2f, 0.1f, 0.3f, 0.8f, -0.5f};
  const int8_t target_values[] = {1, 0, -1, 0, 1, 0};
  const at::Tensor cos = at::tensor(at::ArrayRef<float>(cos_values, 6)).view({2, 3});
  const at::Tensor targets = at::tensor(at::ArrayRef<int8_t>(target_values, 6)).view({2, 3});
  // Identity angle transform (a = 1, b = 0): the BBAM loss reduces to the BAM loss.
  const at::Tensor coef_a = at::ones({2, 3});
  const at::Tensor coef_b = at::zeros({2, 3});
  const double margin = 0.4, scale = 20.0;
  const int64_t reduction_sum = 1;

  const at::Tensor loss = bbam_loss.call(cos, targets, coef_a, coef_b, std::nullopt, margin,
                                         scale, reduction_sum);
  const double value = loss.item<double>();

  // The same by hand: sum of BCE-with-logits of s * (c - y m) over the known entries.
  double expected = 0.0;
  for (int i = 0; i < 6; ++i) {
    const int y = target_values[i];
    if (y < 0) continue;
    const double logit = scale * (cos_values[i] - y * margin);
    expected += std::max(logit, 0.0) + std::log1p(std::exp(-std::abs(logit))) - y * logit;
  }

  std::printf("bbam build: %s\n", build_info.call().c_str());
  std::printf("cpu kernels: %s\n", cpu_kernels.call(std::nullopt).c_str());
  std::printf("bbam_loss = %.6f (expected %.6f)\n", value, expected);
  if (!(std::abs(value - expected) <= 1e-4 * std::max(1.0, std::abs(expected)))) {
    std::fprintf(stderr, "bbam_example: loss mismatch\n");
    return 1;
  }
  return 0;
}
