// CPU kernels built with the baseline compiler flags (any x86-64 / aarch64 CPU).
#define CPU_CAPABILITY DEFAULT
#include "kernels_impl.h"

const bbam::cpu::KernelTable* bbam::cpu::default_kernel_table() { return &DEFAULT::kTable; }
