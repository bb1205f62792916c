// The launch arithmetic of the CUDA kernels (cuda/grid_stride.h), run through the host
// emulation of the launch (cuda/host_emulation.h): every index in [0, n) is visited
// exactly once, with one element per thread below the grid cap and the grid-stride loop
// wrapping above it (n > kMaxGridSize * kBlockSize), which the op tests' small tensors
// never reach.
#include <ATen/ATen.h>

#include <atomic>
#include <cstdio>
#include <memory>
#include <string>

#include "expect.h"

#include "cuda/host_emulation.h"

using namespace rollconv;
using rollconv_test::expect;
using rollconv_test::failures;

namespace {

void test_every_index_once(int64_t n) {
  const std::string name = "n=" + std::to_string(n);
  const LaunchConfig grid = grid_stride_config(n);
  const int64_t threads = grid.grid_size * grid.block_size;
  expect(grid.block_size == kBlockSize && grid.grid_size >= 1 && grid.grid_size <= kMaxGridSize,
         name + ": grid within the limits");
  expect(threads >= n || grid.grid_size == kMaxGridSize, name + ": one element per thread below the cap");
  expect(threads - grid.block_size < n, name + ": no block without work");

  std::unique_ptr<std::atomic<uint8_t>[]> visits(new std::atomic<uint8_t>[n]);
  for (int64_t i = 0; i < n; ++i) visits[i].store(0, std::memory_order_relaxed);
  std::atomic<int64_t> out_of_range{0};
  auto* v = visits.get();
  launch(at::empty({0}), n, [=, &out_of_range](int64_t i) {
    if (i < 0 || i >= n) {
      out_of_range.fetch_add(1);
    } else {
      v[i].fetch_add(1, std::memory_order_relaxed);
    }
  });
  int64_t wrong = 0;
  for (int64_t i = 0; i < n; ++i) wrong += v[i].load(std::memory_order_relaxed) != 1;
  expect(out_of_range.load() == 0 && wrong == 0,
         name + ": every index once (" + std::to_string(wrong) + " not, " +
             std::to_string(out_of_range.load()) + " out of range)");
}

}  // namespace

int main() {
  const int64_t cap = kMaxGridSize * kBlockSize;  // elements covered without wrapping
  for (int64_t n : {int64_t(1), kBlockSize - 1, kBlockSize, kBlockSize + 1, int64_t(100003), cap - 1, cap,
                    cap + 1, 2 * cap + kBlockSize + 7}) {
    test_every_index_once(n);
  }
  std::printf("%s: %d failure(s)\n", failures ? "FAILED" : "passed", failures);
  return failures ? 1 : 0;
}
