// The emulated CUDA build (setup.py with ROLLCONV_EMULATE_CUDA=1): cuda/primitives.cu compiled
// by the host compiler, its launches emulated on the host (cuda/launch.h ->
// cuda/host_emulation.h), and its primitives table registered for CPU tensors. The CPU
// primitives (cpu/primitives.cpp) are left out of this build, so every op on a CPU tensor runs
// CUDA's code path: CUDA's primitives, no CPU engine, ATen GEMMs and FFTs, float16 and
// bfloat16 with float32 accumulation.
#if !defined(ROLLCONV_EMULATE_CUDA)
#error "csrc/emulated_cuda/ belongs to the emulated CUDA build only (ROLLCONV_EMULATE_CUDA=1)"
#endif

#include "cuda/primitives.cu"

#include "common/register_kernels.h"

TORCH_LIBRARY_IMPL(rollconv, CPU, m) {
  rollconv::register_device_kernels<&rollconv::cuda_primitives>(m);
}
