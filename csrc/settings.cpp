// The library's run-time switches. See settings.h.
#include "settings.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <strings.h>  // strcasecmp (POSIX)

namespace rollconv::settings {
namespace {

// ROLLCONV_CPU_ENGINE=0 (or false, off, no, in any case) turns the engines off; anything else (or unset)
// leaves them on.
bool engines_from_environment() {
  const char* env = std::getenv("ROLLCONV_CPU_ENGINE");
  if (env == nullptr) return true;
  for (const char* off : {"0", "false", "off", "no"}) {
    if (strcasecmp(env, off) == 0) return false;
  }
  return true;
}

// 16 MiB unless ROLLCONV_WORKSPACE_MB says otherwise. Small on purpose: glibc serves blocks
// under its (adaptive, <= 32 MiB) mmap threshold from the heap and reuses them, while each
// larger block is a fresh mmap whose page faults cost as much as the im2col itself.
int64_t workspace_from_environment() {
  const char* env = std::getenv("ROLLCONV_WORKSPACE_MB");
  const int64_t mb = env ? std::max<int64_t>(0, std::atoll(env)) : 16;
  return mb << 20;
}

std::string gemm_isa_environment() {
  const char* env = std::getenv("ROLLCONV_GEMM_ISA");
  return env != nullptr ? env : "";
}

struct Switches {
  std::atomic<bool> engines{engines_from_environment()};
  std::atomic<int64_t> workspace_bytes{workspace_from_environment()};
  const std::string gemm_isa{gemm_isa_environment()};
};

Switches& switches() {
  static Switches s;
  return s;
}

// Read when the library loads, not at first use (by then a test or the user's code may have
// changed the environment, and the switches are then set through rollconv._C).
[[maybe_unused]] const bool kReadAtLoad = (switches(), true);

}  // namespace

bool engines_enabled() { return switches().engines.load(std::memory_order_relaxed); }
void set_engines_enabled(bool enabled) { switches().engines.store(enabled); }

int64_t workspace_bytes() { return switches().workspace_bytes.load(std::memory_order_relaxed); }
void set_workspace_bytes(int64_t bytes) { switches().workspace_bytes.store(std::max<int64_t>(0, bytes)); }

const std::string& gemm_isa_from_environment() { return switches().gemm_isa; }

}  // namespace rollconv::settings
