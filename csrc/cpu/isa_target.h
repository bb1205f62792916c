// The GCC target of each CPU ISA (cpu/isa.h), written once for the per-ISA files of gemm/
// and fft/. Such a file defines ROLLCONV_ISA (portable, avx2 or avx512), includes this
// header after every library header it needs, and compiles its *_impl.h between
// ROLLCONV_ISA_TARGET_BEGIN and ROLLCONV_ISA_TARGET_END: that code alone is built for the
// ISA, so the library still loads on any x86-64 and runs it only when cpu::active_isa()
// says so. Macros only: a library header included after the target would compile its
// inline functions for that target.
#pragma once

#if !defined(ROLLCONV_ISA)
#error "cpu/isa_target.h belongs to the per-ISA files: define ROLLCONV_ISA first"
#endif

#define ROLLCONV_TARGET_portable
#if defined(__x86_64__)
#define ROLLCONV_TARGET_avx2 _Pragma("GCC target(\"avx2,fma\")")
#define ROLLCONV_TARGET_avx512 _Pragma("GCC target(\"avx512f,avx512vl,avx512dq,avx2,fma\")")
#else  // no such ISA here: generic vector code that never runs (cpu_supports() is false)
#define ROLLCONV_TARGET_avx2
#define ROLLCONV_TARGET_avx512
#endif
#define ROLLCONV_TARGET_CAT_(prefix, isa) prefix##isa
#define ROLLCONV_TARGET_OF_(isa) ROLLCONV_TARGET_CAT_(ROLLCONV_TARGET_, isa)

#define ROLLCONV_ISA_TARGET_BEGIN _Pragma("GCC push_options") ROLLCONV_TARGET_OF_(ROLLCONV_ISA)
#define ROLLCONV_ISA_TARGET_END _Pragma("GCC pop_options")
