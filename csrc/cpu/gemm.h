// The row-tile GEMM of the CPU ops: out[n, K] = rows[n, D] @ protos[K, D]^T.
#pragma once

#include <ATen/core/Tensor.h>

namespace bbam {
namespace cpu {

// float32 goes through oneDNN's matmul (mkldnn::_linear_pointwise) when torch was built
// with it: its AVX-512 kernels ran this product 2-2.6x faster than the BLAS behind
// at::mm on the development machine (bench/ops.py, bench/sampling.py), with the same
// float32 accuracy. Other dtypes, or a torch without oneDNN, use at::mm. `protos` must
// be contiguous; call from inside at::parallel_for for one thread per tile.
at::Tensor rows_times_protos(const at::Tensor& rows, const at::Tensor& protos);

}  // namespace cpu
}  // namespace bbam
