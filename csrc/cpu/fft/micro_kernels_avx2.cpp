// The channel-FFT kernels for AVX2 + FMA (a lane vector is two ymm registers); see
// micro_kernels_avx512.cpp.
#include <algorithm>
#include <cstdint>
#include <utility>

#include "cpu/fft/channel_fft.h"

#if defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif
#define ROLLCONV_ISA avx2
#include "cpu/fft/kernels_impl.h"
#if defined(__x86_64__)
#pragma GCC pop_options
#endif
