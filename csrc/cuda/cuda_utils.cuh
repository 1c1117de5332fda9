// Shared helpers of the CUDA kernels: launch configuration, 16-byte packs,
// warp/block reductions. Per-element math is in csrc/bbam_math.h.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/macros/Macros.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

namespace bbam {
namespace cuda {

constexpr int kThreads = 256;

inline int multiprocessor_count(int device) {
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return std::max(sms, 1);
}

// Blocks for a grid-stride loop over `work` items: enough to fill the device, no more.
inline int64_t grid_for(int64_t work, int device, int per_thread = 1) {
  const int64_t needed = (work + int64_t(kThreads) * per_thread - 1) / (int64_t(kThreads) * per_thread);
  return std::max<int64_t>(1, std::min<int64_t>(needed, int64_t(multiprocessor_count(device)) * 8));
}

// N consecutive values loaded / stored with one 16-byte (or narrower) access.
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// Elements per 16-byte access for this dtype, if the length and every pointer allow it
// (32-byte alignment: fp32 packs of fp16 data span 32 bytes).
template <typename scalar_t>
int vector_width(int64_t numel, std::initializer_list<const void*> ptrs) {
  constexpr int width = 16 / sizeof(scalar_t);
  if (numel % width != 0) return 1;
  for (const void* p : ptrs) {
    if (p != nullptr && reinterpret_cast<uintptr_t>(p) % 32 != 0) return 1;
  }
  return width;
}

// Sum over a block with warp shuffles; the result is valid in thread 0.
template <typename T>
__device__ __forceinline__ T block_sum(T value) {
  __shared__ T warp_sums[kThreads / 32];
  for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_down_sync(0xffffffffu, value, offset);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_sums[warp] = value;
  __syncthreads();
  value = threadIdx.x < blockDim.x / 32 ? warp_sums[lane] : T(0);
  if (warp == 0) {
    for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_down_sync(0xffffffffu, value, offset);
  }
  return value;
}

}  // namespace cuda
}  // namespace bbam

// Launches KERNEL<scalar_t, VEC> on the current stream, with VEC = 16 bytes of
// scalar_t when the length and pointers allow it, else 1; checks the launch.
#define BBAM_LAUNCH_VEC(KERNEL, GRID, NUMEL, PTRS, ...)                               \
  do {                                                                              \
    const auto bbam_stream = c10::cuda::getCurrentCUDAStream();                     \
    if (bbam::cuda::vector_width<scalar_t>(NUMEL, PTRS) > 1) {                      \
      constexpr int kVec = 16 / sizeof(scalar_t);                                   \
      KERNEL<scalar_t, kVec><<<GRID, bbam::cuda::kThreads, 0, bbam_stream>>>(__VA_ARGS__); \
    } else {                                                                        \
      KERNEL<scalar_t, 1><<<GRID, bbam::cuda::kThreads, 0, bbam_stream>>>(__VA_ARGS__);    \
    }                                                                               \
    C10_CUDA_KERNEL_LAUNCH_CHECK();                                                 \
  } while (0)
