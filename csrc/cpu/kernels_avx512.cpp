// CPU kernels for AVX-512 (F, BW, VL, DQ) + FMA: the build compiles this file alone
// with -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mf16c (setup.py /
// CMakeLists.txt), so at::vec::Vectorized uses 512-bit lanes and Sleef's 16-lane
// functions. Selected at run time only on CPUs that support it (csrc/cpu/dispatch.cpp).
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__) && \
    defined(__FMA__) && defined(__F16C__)
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#include "kernels_impl.h"

const bbam::cpu::KernelTable* bbam::cpu::avx512_kernel_table() { return &AVX512::kTable; }
#else
#include "kernels.h"

const bbam::cpu::KernelTable* bbam::cpu::avx512_kernel_table() { return nullptr; }
#endif
