// AVX-512 micro-kernels (32 zmm registers: 8 x 3 accumulator vectors). The target is set
// for this file only, so the library still loads and runs on CPUs without AVX-512: this
// code runs only when the CPU reports AVX-512F (see gemm.cpp).
#include "cpu/gemm/gemm.h"

#if defined(__x86_64__)

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512dq,avx2,fma")
#define ROLLCONV_ISA avx512
#define ROLLCONV_VECTOR_BYTES 64
#define ROLLCONV_MR_F32 8
#define ROLLCONV_NV_F32 3
#define ROLLCONV_MR_F64 8
#define ROLLCONV_NV_F64 3
#define ROLLCONV_DOT_MR 4
#define ROLLCONV_DOT_NR 6
#include "cpu/gemm/micro_kernel_impl.h"
#pragma GCC pop_options
#endif  // __x86_64__
