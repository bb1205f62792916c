// AVX-512 micro-kernels (tiles: cpu/blocking.h). The target is set for this file only, so
// the library still loads and runs on CPUs without AVX-512: this code runs only when
// cpu::active_isa() says so.
#include "cpu/gemm/gemm.h"

#define ROLLCONV_ISA avx512
#include "cpu/isa_target.h"
ROLLCONV_ISA_TARGET_BEGIN
#include "cpu/gemm/micro_kernels_impl.h"
ROLLCONV_ISA_TARGET_END
