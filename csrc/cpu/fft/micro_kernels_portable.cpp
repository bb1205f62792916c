// The channel-FFT kernels with the compiler's default ISA (SSE2 on x86-64): they run on
// any CPU.
#include <algorithm>
#include <cstdint>
#include <utility>

#include "cpu/fft/channel_fft.h"

#define ROLLCONV_ISA portable
#include "cpu/fft/kernels_impl.h"
