// The channel-FFT kernels for AVX-512 (a lane vector is one zmm register). The target is
// set for this file only and after every header, so the library still loads on CPUs
// without AVX-512: this code runs only when cpu::active_isa() says so.
#include <algorithm>
#include <cstdint>
#include <utility>

#include "cpu/fft/channel_fft.h"

#if defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512dq,avx2,fma")
#endif
#define ROLLCONV_ISA avx512
#include "cpu/fft/kernels_impl.h"
#if defined(__x86_64__)
#pragma GCC pop_options
#endif
