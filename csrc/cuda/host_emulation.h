// Host emulation of the CUDA launch, for the emulated CUDA build (ROLLCONV_EMULATE_CUDA):
// primitives.cu compiled by the host compiler, its kernels run on CPU tensors.
//
// - launch() computes the grid the CUDA launch computes (grid_stride_config) and runs
//   every thread's grid-stride loop (grid_stride_loop) in turn, blocks spread over
//   torch's CPU threads: the same indices, covered the same way, as on a GPU.
// - __device__, __global__ and __host__ mark nothing: the kernels' lambdas and the
//   index math become host code.
// - There is no device guard, stream or launch check: the work runs synchronously, as if
//   every launch were followed by a stream synchronization.
#pragma once

#if defined(__CUDACC__)
#error "cuda/host_emulation.h is for the host compiler; nvcc builds the real launch (cuda/launch.h)"
#endif

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "cuda/grid_stride.h"

#define __device__
#define __global__
#define __host__

namespace rollconv {

template <typename Body>
void launch(const at::Tensor& like, int64_t n, Body body) {
  if (n <= 0) return;
  TORCH_INTERNAL_ASSERT(like.is_cpu(), "the emulated CUDA kernels run on CPU tensors, got ", like.device());
  const LaunchConfig grid = grid_stride_config(n);
  at::parallel_for(0, grid.grid_size, 1, [&](int64_t first_block, int64_t last_block) {
    for (int64_t block = first_block; block < last_block; ++block) {
      for (int64_t thread = 0; thread < grid.block_size; ++thread) {
        grid_stride_loop(n, block, grid.block_size, grid.grid_size, thread, body);
      }
    }
  });
}

}  // namespace rollconv
