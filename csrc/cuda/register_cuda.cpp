// CUDA registration, compiled by the host compiler: the primitives are in primitives.cu.
#include "common/device_primitives.h"
#include "common/register_kernels.h"

TORCH_LIBRARY_IMPL(rollconv, CUDA, m) {
  rollconv::register_device_kernels<&rollconv::cuda_primitives>(m);
}
