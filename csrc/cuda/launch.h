// launch(like, n, body): run body(i) for every i in [0, n) as a grid-stride kernel.
//
// nvcc: a real launch on the current CUDA stream of like's device, with a device guard
// and a launch check. The emulated CUDA build (ROLLCONV_EMULATE_CUDA, host compiler):
// the same grid and loop run on the host (cuda/host_emulation.h), so that primitives.cu's
// kernel bodies execute in CI without a GPU.
#pragma once

#if defined(ROLLCONV_EMULATE_CUDA)
#include "cuda/host_emulation.h"
#else
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "cuda/grid_stride.h"

namespace rollconv {

template <typename Body>
__global__ void for_each_index(int64_t n, Body body) {
  grid_stride_loop(n, blockIdx.x, blockDim.x, gridDim.x, threadIdx.x, body);
}

template <typename Body>
void launch(const at::Tensor& like, int64_t n, Body body) {
  if (n <= 0) return;
  const c10::cuda::CUDAGuard guard(like.device());
  const LaunchConfig grid = grid_stride_config(n);
  for_each_index<<<grid.grid_size, grid.block_size, 0, c10::cuda::getCurrentCUDAStream()>>>(n, body);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace rollconv
#endif
