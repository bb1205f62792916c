// The CPU instruction sets (ISAs) of the engines' vector code, and which one runs: the CPU's
// features, the forced choice (ROLLCONV_GEMM_ISA, force_isa), and the pick of a per-ISA
// table. The GEMM's micro-kernels (gemm/) and the channel FFT's (fft/) both follow
// active_isa().
//
// gemm/ and fft/ each write their micro-kernels once, with GCC vector extensions, in a
// *_impl.h, which a file per ISA, micro_kernels_<isa>.cpp, compiles for that ISA alone
// (#pragma GCC target): the library loads on any x86-64 and runs the code the CPU has.
// (Elsewhere the wider ISAs' files compile to generic vector code that never runs:
// cpu_supports() is false for them.)
// That needs GCC (clang has no __builtin_shuffle, #pragma GCC target or push_options).
#pragma once

#if !defined(__GNUC__) || defined(__clang__)
#error "rollconv's CPU engines need GCC: vector extensions with __builtin_shuffle, #pragma GCC target"
#endif

namespace rollconv::cpu {

enum class Isa : int { kPortable = 0, kAvx2 = 1, kAvx512 = 2 };

const char* isa_name(Isa isa);               // "portable" | "avx2" | "avx512"
bool parse_isa(const char* name, Isa* isa);  // false if the name is none of those
bool cpu_supports(Isa isa);
// The ISA in use: the best the CPU supports, unless ROLLCONV_GEMM_ISA (settings.h) or
// force_isa() asked for another; asking for one the CPU lacks is an error (std::runtime_error).
Isa active_isa();
void force_isa(Isa isa);  // throws std::runtime_error if the CPU does not support it

// The table of `isa` among a per-ISA file pair's tables (one per ISA's file).
template <typename Table>
const Table& pick(Isa isa, const Table& portable, const Table& avx2, const Table& avx512) {
  switch (isa) {
    case Isa::kAvx512: return avx512;
    case Isa::kAvx2: return avx2;
    default: return portable;
  }
}

}  // namespace rollconv::cpu
