// The library's run-time switches. See settings.h.
#include "settings.h"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstdlib>
#include <cstring>
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

// The defaults. The CPU's is small on purpose: glibc serves blocks under its (adaptive,
// <= 32 MiB) mmap threshold from the heap and reuses them, while each larger block is a
// fresh mmap whose page faults cost as much as the im2col itself. CUDA's caching allocator
// has no such cost, and there each chunk's launches are what costs: on an H200, 128 MiB
// made 'direct' fwd+bwd 1.6-2.8x and conv2d 1.1-1.8x faster than 16 MiB (N = 32; 1 GiB
// gained at most 25% more; bench/gpu_check_h200.md).
constexpr int64_t kCpuWorkspaceBytes = int64_t(16) << 20;
constexpr int64_t kCudaWorkspaceBytes = int64_t(128) << 20;

// ROLLCONV_WORKSPACE_MB's text: a whole number of MiB (digits, blanks around them allowed)
// up to kMaxWorkspaceMb; -1 for anything else (then each device's default is used).
int64_t parse_workspace_mb(const char* text) {
  const char* p = text;
  while (std::isspace(static_cast<unsigned char>(*p))) ++p;
  int64_t mb = 0;
  bool digits = false;
  for (; std::isdigit(static_cast<unsigned char>(*p)); ++p, digits = true) {
    if (mb > (kMaxWorkspaceMb - (*p - '0')) / 10) return -1;
    mb = mb * 10 + (*p - '0');
  }
  while (std::isspace(static_cast<unsigned char>(*p))) ++p;
  return digits && *p == '\0' ? mb : -1;
}

// ROLLCONV_WORKSPACE_MB in bytes; -1 (each device's default) if unset or not understood.
int64_t workspace_from_environment() {
  const char* env = std::getenv("ROLLCONV_WORKSPACE_MB");
  const int64_t mb = env ? parse_workspace_mb(env) : -1;
  return mb < 0 ? -1 : mb << 20;
}

// Whether ROLLCONV_WORKSPACE_MB holds text that is not a whole number of MiB (blank: not).
bool workspace_environment_rejected_at_load() {
  const char* env = std::getenv("ROLLCONV_WORKSPACE_MB");
  if (env == nullptr || parse_workspace_mb(env) >= 0) return false;
  return std::any_of(env, env + std::strlen(env), [](char c) { return !std::isspace(static_cast<unsigned char>(c)); });
}

std::string gemm_isa_environment() {
  const char* env = std::getenv("ROLLCONV_GEMM_ISA");
  return env != nullptr ? env : "";
}

struct Switches {
  std::atomic<bool> engines{engines_from_environment()};
  std::atomic<int64_t> workspace_bytes{workspace_from_environment()};
  const bool workspace_rejected{workspace_environment_rejected_at_load()};
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

int64_t workspace_setting() { return switches().workspace_bytes.load(std::memory_order_relaxed); }
void set_workspace_setting(int64_t bytes_or_default) {
  switches().workspace_bytes.store(std::max<int64_t>(-1, bytes_or_default));
}
int64_t workspace_bytes(bool cuda) {
  const int64_t set = workspace_setting();
  return set >= 0 ? set : cuda ? kCudaWorkspaceBytes : kCpuWorkspaceBytes;
}

bool workspace_environment_rejected() { return switches().workspace_rejected; }

const std::string& gemm_isa_from_environment() { return switches().gemm_isa; }

}  // namespace rollconv::settings
