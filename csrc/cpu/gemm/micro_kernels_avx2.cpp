// AVX2 + FMA micro-kernels (tiles: cpu/blocking.h). Target set for this file only; runs
// only when cpu::active_isa() says so.
#include "cpu/gemm/gemm.h"

#define ROLLCONV_ISA avx2
#include "cpu/isa_target.h"
ROLLCONV_ISA_TARGET_BEGIN
#include "cpu/gemm/micro_kernels_impl.h"
ROLLCONV_ISA_TARGET_END
