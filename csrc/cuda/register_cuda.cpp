// CUDA registration, compiled by the host compiler: the kernels are in kernels.cu.
#include "common/device_kernels.h"
#include "common/register_kernels.h"

TORCH_LIBRARY_IMPL(rollconv, CUDA, m) {
  rollconv::register_device_kernels<&rollconv::cuda_kernels>(m);
}
