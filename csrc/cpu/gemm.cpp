#include "gemm.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/Context.h>

#include <optional>
#include <string>

namespace bbam {
namespace cpu {
namespace {

// The oneDNN linear op, if this torch registers it (looked up once).
const std::optional<c10::OperatorHandle>& onednn_linear() {
  static const std::optional<c10::OperatorHandle> handle = []() -> std::optional<c10::OperatorHandle> {
    if (!at::hasMKLDNN()) return std::nullopt;
    return c10::Dispatcher::singleton().findSchema({"mkldnn::_linear_pointwise", ""});
  }();
  return handle;
}

}  // namespace

at::Tensor rows_times_protos(const at::Tensor& rows, const at::Tensor& protos) {
  const auto& linear = onednn_linear();
  if (linear && rows.scalar_type() == at::kFloat && protos.scalar_type() == at::kFloat && rows.size(0) > 0 &&
      protos.size(0) > 0 && rows.size(1) > 0) {
    // mkldnn::_linear_pointwise(Tensor X, Tensor W, Tensor? B, str attr, Scalar?[] scalars,
    //                           str? algorithm) -> Tensor: X @ W^T
    torch::jit::Stack stack{rows.contiguous(), protos, c10::IValue(), std::string("none"),
                            c10::List<std::optional<at::Scalar>>(), c10::IValue()};
    linear->callBoxed(&stack);
    return stack.back().toTensor();
  }
  return at::mm(rows, protos.t());
}

}  // namespace cpu
}  // namespace bbam
