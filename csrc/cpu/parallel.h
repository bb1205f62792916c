// Thread counts and parallel regions of the CPU engines' OpenMP loops.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <exception>
#include <optional>
#include <type_traits>

#include "common/index_math.h"  // ceil_div

namespace rollconv {

// Threads for a loop of `items` work items worth `flops` in all: one when the work is too
// small to pay for waking the others, or when already inside a parallel region.
inline int engine_threads(int64_t items, int64_t flops) {
  if (flops < (int64_t(1) << 18) || at::in_parallel_region()) return 1;
  return int(std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), items)));
}

// An OpenMP parallel region whose threads each own a `State` (their scratch buffers), made by
// make_state() before any worksharing loop of body(state). An exception must not leave an
// OpenMP region (the runtime aborts the process), and a thread that left early would
// deadlock the others at the next barrier: so every thread first builds its state, then all
// meet at a barrier, and only if every state was built does any thread run the body. A
// failure (an allocation too large for the machine) is rethrown on the calling thread,
// where the dispatcher turns it into a Python exception. The body itself must not throw.
template <typename MakeState, typename Body>
void parallel_with_state(int threads, const MakeState& make_state, const Body& body) {
  using State = std::invoke_result_t<const MakeState&>;
  std::exception_ptr failure;
#pragma omp parallel num_threads(threads)
  {
    std::optional<State> state;
    try {
      state.emplace(make_state());
    } catch (...) {
#pragma omp critical(rollconv_parallel_failure)
      if (!failure) failure = std::current_exception();
    }
#pragma omp barrier
    if (!failure) body(*state);
  }
  if (failure) std::rethrow_exception(failure);
}

}  // namespace rollconv
