// AVX2 + FMA micro-kernels (16 ymm registers: 6 x 2 accumulator vectors). Target set for
// this file only; runs only when the CPU reports AVX2 and FMA (see gemm.cpp).
#include "cpu/gemm/gemm.h"

#if defined(__x86_64__)

#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define ROLLCONV_ISA avx2
#define ROLLCONV_VECTOR_BYTES 32
#define ROLLCONV_MR_F32 6
#define ROLLCONV_NV_F32 2
#define ROLLCONV_MR_F64 6
#define ROLLCONV_NV_F64 2
#define ROLLCONV_DOT_MR 3
#define ROLLCONV_DOT_NR 4
#include "cpu/gemm/micro_kernel_impl.h"
#pragma GCC pop_options
#endif  // __x86_64__
