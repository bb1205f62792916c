// Thread counts of the CPU engines' OpenMP loops.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

#include "common/index_math.h"  // ceil_div

namespace rollconv {

// Threads for a loop of `items` work items worth `flops` in all: one when the work is too
// small to pay for waking the others, or when already inside a parallel region.
inline int engine_threads(int64_t items, int64_t flops) {
  if (flops < (int64_t(1) << 18) || at::in_parallel_region()) return 1;
  return int(std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), items)));
}

}  // namespace rollconv
