// Run-time choice of the CPU kernel variant.
#include "kernels.h"

#include <ATen/Context.h>
#include <ATen/Version.h>
#include <c10/util/Exception.h>

#include <atomic>
#include <cstdlib>
#include <string>

namespace bbam {
namespace cpu {
namespace {

bool cpu_has_avx2() {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}

bool cpu_has_avx512() {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  return cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#else
  return false;
#endif
}

std::string lower(std::string s) {
  for (auto& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return s;
}

const KernelTable* choose(const std::string& name) {
  const KernelTable* avx2 = avx2_kernel_table();
  const KernelTable* avx512 = avx512_kernel_table();
  if (name == "default") return default_kernel_table();
  if (name == "avx2") {
    TORCH_CHECK(avx2 != nullptr, "bbam: AVX2 CPU kernels were not built into this binary");
    TORCH_CHECK(cpu_has_avx2(), "bbam: this CPU does not support AVX2 + FMA + F16C");
    return avx2;
  }
  if (name == "avx512") {
    TORCH_CHECK(avx512 != nullptr, "bbam: AVX-512 CPU kernels were not built into this binary");
    TORCH_CHECK(cpu_has_avx512(), "bbam: this CPU does not support AVX-512 F/BW/VL/DQ");
    return avx512;
  }
  TORCH_CHECK(name == "auto", "bbam: unknown CPU kernel variant '", name,
              "' (expected 'auto', 'default', 'avx2' or 'avx512')");
  // Never wider than ATen's own choice (ATEN_CPU_CAPABILITY=default|avx2 caps both).
  const std::string aten = lower(at::get_cpu_capability());
  if (aten == "avx512" && avx512 != nullptr && cpu_has_avx512()) return avx512;
  if ((aten == "avx2" || aten == "avx512") && avx2 != nullptr && cpu_has_avx2()) return avx2;
  return default_kernel_table();
}

std::atomic<const KernelTable*>& current() {
  static std::atomic<const KernelTable*> table{[] {
    const char* env = std::getenv("BBAM_CPU_KERNELS");
    return choose(env != nullptr ? lower(env) : std::string("auto"));
  }()};
  return table;
}

}  // namespace

const KernelTable& kernels() { return *current().load(std::memory_order_relaxed); }

std::string set_kernels(const std::string& name) {
  current().store(choose(lower(name)));
  return kernels().name;
}

}  // namespace cpu
}  // namespace bbam
