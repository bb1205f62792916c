// Portable micro-kernels: 16-byte vectors, which every x86-64 CPU has (SSE2) and other
// targets emulate, so this file needs no special flags.
#include "cpu/gemm/gemm.h"

#define ROLLCONV_ISA portable
#define ROLLCONV_VECTOR_BYTES 16
#define ROLLCONV_MR_F32 4
#define ROLLCONV_NV_F32 2
#define ROLLCONV_MR_F64 4
#define ROLLCONV_NV_F64 2
#define ROLLCONV_DOT_MR 3
#define ROLLCONV_DOT_NR 4
#include "cpu/gemm/micro_kernel_impl.h"
