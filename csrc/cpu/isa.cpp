// The CPU's ISAs: detection (the CPU's features) and the one in use. See isa.h.
#include "cpu/isa.h"

#include <atomic>
#include <cstring>
#include <stdexcept>
#include <string>

#include "settings.h"

namespace rollconv::cpu {

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "portable";
  }
}

bool parse_isa(const char* name, Isa* isa) {
  for (Isa candidate : {Isa::kPortable, Isa::kAvx2, Isa::kAvx512}) {
    if (std::strcmp(name, isa_name(candidate)) == 0) {
      *isa = candidate;
      return true;
    }
  }
  return false;
}

bool cpu_supports(Isa isa) {
#if defined(__x86_64__)
  __builtin_cpu_init();
  switch (isa) {
    case Isa::kAvx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma");
    case Isa::kAvx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    default: return true;
  }
#else
  return isa == Isa::kPortable;
#endif
}

namespace {

Isa best_isa() {
  for (Isa isa : {Isa::kAvx512, Isa::kAvx2}) {
    if (cpu_supports(isa)) return isa;
  }
  return Isa::kPortable;
}

// ROLLCONV_GEMM_ISA's choice (settings.h), or the best the CPU has.
Isa initial_isa() {
  const std::string& env = settings::gemm_isa_from_environment();
  if (env.empty()) return best_isa();
  Isa isa;
  if (!parse_isa(env.c_str(), &isa)) {
    throw std::runtime_error("ROLLCONV_GEMM_ISA must be portable, avx2 or avx512, not '" + env + "'");
  }
  if (!cpu_supports(isa)) {
    throw std::runtime_error("ROLLCONV_GEMM_ISA=" + env + ": this CPU does not support it");
  }
  return isa;
}

std::atomic<int>& isa_setting() {
  static std::atomic<int> setting{static_cast<int>(initial_isa())};
  return setting;
}

}  // namespace

Isa active_isa() { return static_cast<Isa>(isa_setting().load(std::memory_order_relaxed)); }

void force_isa(Isa isa) {
  if (!cpu_supports(isa)) throw std::runtime_error(std::string("this CPU does not support ") + isa_name(isa));
  isa_setting().store(static_cast<int>(isa));
}

}  // namespace rollconv::cpu
