// The channel-FFT kernels for AVX2 + FMA (a lane vector is two ymm registers); see
// micro_kernels_avx512.cpp.
#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "cpu/fft/channel_fft.h"

#if defined(__x86_64__)
#include <immintrin.h>  // streaming stores (kernels_impl.h: stream_lanes)
#endif

#define ROLLCONV_NATIVE_VECTOR_BYTES 32
#define ROLLCONV_ISA avx2
#include "cpu/isa_target.h"
ROLLCONV_ISA_TARGET_BEGIN
#include "cpu/fft/kernels_impl.h"
ROLLCONV_ISA_TARGET_END
