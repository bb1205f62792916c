// The channel-FFT kernels for AVX-512 (a lane vector is one zmm register). The target is
// set for this file only and after every header, so the library still loads on CPUs
// without AVX-512: this code runs only when cpu::active_isa() says so.
#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "cpu/fft/channel_fft.h"

#if defined(__x86_64__)
#include <immintrin.h>  // streaming stores (kernels_impl.h: stream_lanes)
#endif

#define ROLLCONV_NATIVE_VECTOR_BYTES 64
#define ROLLCONV_ISA avx512
#include "cpu/isa_target.h"
ROLLCONV_ISA_TARGET_BEGIN
#include "cpu/fft/kernels_impl.h"
ROLLCONV_ISA_TARGET_END
