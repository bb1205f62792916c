// The blocking of the CPU engines, every constant in one table, as BLIS keeps them in one
// cntx_init per architecture and XNNPACK in its gemm-config: the register tiles of each
// ISA's micro-kernels, and the cache blocking, which every ISA shares (sized for an L1 of
// 32 KiB or more and an L2 of 1 MiB or more).
#pragma once

#include <cstdint>

namespace rollconv::cpu {

// The register tiles of one ISA's micro-kernels (cpu/gemm/micro_kernels_impl.h).
struct RegisterTiles {
  int vector_bytes;    // one vector register
  int mr_f32, nv_f32;  // the GEMM micro-kernel's tile: MR rows x NV vectors, float
  int mr_f64, nv_f64;  // the same, double
  int dot_mr, dot_nr;  // the dot-product micro-kernel's tile: MR x NR vector accumulators
};

// One entry per ISA, named as the ISA's namespace (gemm/micro_kernels_<isa>.cpp defines
// ROLLCONV_ISA as that name).
namespace tiles {
// 16-byte vectors, which every x86-64 CPU has (SSE2) and other targets emulate.
constexpr RegisterTiles portable{16, 4, 2, 4, 2, 3, 4};
// 16 ymm registers: 6 x 2 accumulator vectors.
constexpr RegisterTiles avx2{32, 6, 2, 6, 2, 3, 4};
// 32 zmm registers: 8 x 3 accumulator vectors.
constexpr RegisterTiles avx512{64, 8, 3, 8, 3, 4, 6};
}  // namespace tiles

// --- cache blocking (every ISA) ---------------------------------------------------------

// GEMM, depth of one pass: 192 KiB of B micro-panel (KC x NR: KC = 1024 floats at NR = 48), so
// the panel lives in L2, not L1. Deeper passes than an L1-sized panel won on every machine
// measured (README, "Performance"): C tiles are loaded and stored less often, and the
// micro-kernel's 3 vector loads of B per 24 FMAs are served from L2 at full speed.
constexpr int64_t kGemmDepthBytes = 192 * 1024;
// GEMM, A rows of one block: a quarter of a 1 MiB L2, the rest for B panels and C.
constexpr int64_t kGemmRowBlockBytes = 256 * 1024;

// Convolution engine, per-thread budget of packed panels: about L2-sized, so a panel is
// still cached when the next GEMM block reads it again.
constexpr int64_t kPanelBytes = int64_t(1) << 20;
// Convolution engine, dK's image-column lines (the dot-product micro-kernel's NR rows of B):
// within half of L1.
constexpr int64_t kDotLinesBytes = int64_t(24) << 10;

}  // namespace rollconv::cpu
