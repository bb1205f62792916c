// AVX-512 micro-kernels (tiles: cpu/blocking.h). The target is set for this file only, so
// the library still loads and runs on CPUs without AVX-512: this code runs only when
// cpu::active_isa() says so.
#include "cpu/gemm/gemm.h"

#if defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512dq,avx2,fma")
#endif
#define ROLLCONV_ISA avx512
#include "cpu/gemm/micro_kernels_impl.h"
#if defined(__x86_64__)
#pragma GCC pop_options
#endif
