// Portable micro-kernels (tiles: cpu/blocking.h): 16-byte vectors, which every x86-64 CPU has
// (SSE2) and other targets emulate, so this file needs no special flags.
#include "cpu/gemm/gemm.h"

#define ROLLCONV_ISA portable
#include "cpu/isa_target.h"
ROLLCONV_ISA_TARGET_BEGIN
#include "cpu/gemm/micro_kernels_impl.h"
ROLLCONV_ISA_TARGET_END
