// The channel-FFT kernels with the compiler's default ISA (SSE2 on x86-64): they run on
// any CPU.
#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "cpu/fft/channel_fft.h"

#if defined(__x86_64__)
#include <immintrin.h>  // streaming stores (kernels_impl.h: stream_lanes)
#endif

#define ROLLCONV_NATIVE_VECTOR_BYTES 16
#define ROLLCONV_ISA portable
#include "cpu/isa_target.h"
ROLLCONV_ISA_TARGET_BEGIN
#include "cpu/fft/kernels_impl.h"
ROLLCONV_ISA_TARGET_END
