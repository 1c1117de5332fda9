// CPU kernels for AVX2 + FMA: the build compiles this file alone with
// -mavx2 -mfma -mf16c (setup.py / CMakeLists.txt), so at::vec::Vectorized uses 256-bit
// lanes and Sleef's vectorised acos/cos/sin/exp/log1p. Selected at run time
// only on CPUs that support it (csrc/cpu/dispatch.cpp).
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#include "kernels_impl.h"

const bbam::cpu::KernelTable* bbam::cpu::avx2_kernel_table() { return &AVX2::kTable; }
#else
#include "kernels.h"

const bbam::cpu::KernelTable* bbam::cpu::avx2_kernel_table() { return nullptr; }
#endif
