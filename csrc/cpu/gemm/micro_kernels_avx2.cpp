// AVX2 + FMA micro-kernels (tiles: cpu/blocking.h). Target set for this file only; runs
// only when cpu::active_isa() says so.
#include "cpu/gemm/gemm.h"

#if defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif
#define ROLLCONV_ISA avx2
#include "cpu/gemm/micro_kernels_impl.h"
#if defined(__x86_64__)
#pragma GCC pop_options
#endif
