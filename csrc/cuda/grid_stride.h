// The launch configuration and the grid-stride loop of every CUDA primitive, shared by
// the CUDA launch (cuda/launch.h) and its host emulation (cuda/host_emulation.h), so
// that the emulated build runs the same grid and the same per-thread index sequence.
#pragma once

#include <algorithm>
#include <cstdint>

#if defined(__CUDACC__)
#define RC_DEVICE __device__ __forceinline__
#else
#define RC_DEVICE inline
#endif

namespace rollconv {

// A 1-D grid: grid_size blocks of block_size threads.
struct LaunchConfig {
  int64_t grid_size;
  int64_t block_size;
};

constexpr int64_t kBlockSize = 256;
// Beyond this many blocks the threads loop (stride grid_size * block_size) instead of
// launching more blocks: 2^24 threads fill any current GPU many times over.
constexpr int64_t kMaxGridSize = int64_t(1) << 16;

// The grid for n > 0 elements, one element per thread until the grid is capped.
inline LaunchConfig grid_stride_config(int64_t n) {
  return {std::min((n + kBlockSize - 1) / kBlockSize, kMaxGridSize), kBlockSize};
}

// Thread thread_idx of block block_idx in a grid of grid_dim blocks of block_dim threads:
// body(i) for i = block_idx * block_dim + thread_idx, then every grid_dim * block_dim.
template <typename Body>
RC_DEVICE void grid_stride_loop(int64_t n, int64_t block_idx, int64_t block_dim, int64_t grid_dim,
                                int64_t thread_idx, const Body& body) {
  const int64_t step = block_dim * grid_dim;
  for (int64_t i = block_idx * block_dim + thread_idx; i < n; i += step) body(i);
}

}  // namespace rollconv
