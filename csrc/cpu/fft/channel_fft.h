// The channel-axis FFT of the CPU's fused channel-FFT rolling convolution
// (cpu/roll_fft_engine.cpp): real transforms along the channel (or roll) axis of NCHW
// tensors, with the pixels as the vector lanes.
//
// A transform of length n maps n real rows (src[c * step + p], c < n) to the half spectrum
// k < n/2 + 1, stored as planes: re at spectrum[2k * plane + p], im at [(2k + 1) * plane + p].
// Pixels go through in groups of 2 * lanes: one complex FFT of vectors transforms two real
// signals at once (the first `lanes` pixels as the real part, the next as the imaginary
// part), so every butterfly is a few full-width vector operations with scalar twiddles,
// for any n (Stockham stages of radix 8, 4, 2, 3, 5 and a plain DFT for other primes).
//
// The hot loops (transforms and the per-frequency convolution sums) are written once in
// kernels_impl.h and compiled per ISA like the GEMM's micro-kernels; cpu::active_isa()
// (cpu/isa.h) picks the table for both.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common/index_math.h"

namespace rollconv::channel_fft {

// Bytes of one lane vector: 16 float or 8 double pixels per half group, whatever the ISA
// (AVX2 and SSE2 split it into 2 and 4 registers), so every ISA pairs the same pixels and
// sums in the same order, except where a kernel follows the registers it has: the radix-8
// stages with AVX-512's 32, and dK's 3x3 sums, which sum one native vector of pixels per
// lane (results then differ in the last bits between ISAs).
constexpr int kLaneBytes = 64;
// Groups the general analysis and synthesis transform together: each row or spectrum plane
// is read and written in runs of this many groups.
constexpr int64_t kStagedGroups = 4;
template <typename T>
constexpr int64_t group_pixels() {
  return 2 * kLaneBytes / int64_t(sizeof(T));
}

// Prefetches the `count` elements after [block, block + count): the same rows' block of
// the thread's next work item (a thread's items are consecutive pixel ranges). An item
// reads one row per channel or roll, far apart: more streams than the hardware
// prefetchers follow. A prefetch past the end of the array is harmless: it never faults.
template <typename T>
inline void prefetch_next_block(const T* block, int64_t count) {
  constexpr int64_t kLine = 64 / int64_t(sizeof(T));  // elements per cache line
  for (int64_t q = 0; q < count; q += kLine) __builtin_prefetch(block + count + q);
}

// The radices with a butterfly written out (kernels_impl.h); others are a plain DFT.
inline bool has_butterfly(int64_t radix) { return radix <= 5 || radix == 8; }

struct Stage {
  int64_t radix, span;  // span: the product of the radices of the stages before
  int64_t twiddles;     // offset of this stage's twiddles [j mod span][r] (re, im pairs)
  int64_t roots;        // no butterfly: offset of exp(-2 pi i q / radix), q < radix
};

// Whether frequency k of a real transform over n = 2 (freqs - 1) + (even ? 0 : 1) points is
// real: k = 0, and k = n / 2 when n is even.
inline bool real_frequency(int64_t k, int64_t freqs, bool even) { return k == 0 || (even && k == freqs - 1); }

// A complex FFT of length n (forward sign: exp(-2 pi i k c / n)), as Stockham stages, of
// radices up to widest_radix (8 or 4) for n's power of two.
template <typename T>
struct Plan {
  Plan(int64_t n, int64_t widest_radix);
  int64_t n;
  std::vector<Stage> stages;
  std::vector<T> table;  // twiddles and roots (re, im pairs)
  int64_t max_radix = 1;
  int64_t freqs() const { return n / 2 + 1; }
  bool even() const { return n % 2 == 0; }  // frequency n / 2 exists and is real
  bool real_frequency(int64_t k) const { return channel_fft::real_frequency(k, freqs(), even()); }
  // Scratch elements (T) one transform call needs: the groups staged at once, a ping-pong
  // buffer and a DFT temporary.
  int64_t scratch_size() const { return ((kStagedGroups + 1) * n + max_radix) * group_pixels<T>(); }
};

// One ISA's micro-kernels (kernels_impl.h): the transforms, and the per-frequency
// convolution sums over a sample for the frequencies [0, freqs), where
//   spectrum planes of one sample: X [freqs][2][in_h * in_w], dY [filters][freqs][2][out px],
//   taps: complex (re, im) [filters][kh * kw][freqs], already scaled by 1 / n,
//   tile: scratch of tile_size() elements,
//   even: n is even. At the real frequencies (0, and n / 2 when n is even: the spectra and
//   the taps are real there) the sums compute and write real parts only; the imaginary
//   planes of out and acc there are left as they are (synthesize does not read them).
template <typename T>
struct MicroKernels {
  // spectrum[., p] for pixels p < count of the n real rows src[c * step + p].
  void (*analyze)(const Plan<T>& plan, const T* src, int64_t step, int64_t count, T* spectrum,
                  int64_t plane, T* scratch);
  // dst[r * step + p] = relu?(n * irfft(spectrum[., p])[r] + bias) for p < count (the taps
  // carry the 1 / n). stream: by non-temporal stores (for a large output not read back soon),
  // where dst and step are whole cache lines and the path gains from them (not n = 4 or 16);
  // fenced before the call returns.
  void (*synthesize)(const Plan<T>& plan, const T* spectrum, int64_t plane, int64_t count, T* dst,
                     int64_t step, T bias, bool relu, bool stream, T* scratch);
  // out [filters][freqs][2][(oh1 - oh0) * out_w] = sum over taps of X(tap-shifted) *
  // conj(taps[f]) for the output rows [oh0, oh1).
  void (*forward_rows)(const Window2d& w, int64_t freqs, bool even, int64_t filters, const T* spectrum,
                       const T* taps, int64_t oh0, int64_t oh1, T* tile, T* out);
  // out [freqs][2][(h1 - h0) * in_w] = sum over filters and covering taps of dY * taps, for
  // the input rows [h0, h1).
  void (*input_grad_rows)(const Window2d& w, int64_t freqs, bool even, int64_t filters, const T* grad,
                          const T* taps, int64_t h0, int64_t h1, T* tile, T* out);
  // acc[f * acc_step + t * freqs] (complex, per tap t) += sum over pixels of X(tap-shifted)
  // * conj(dY of filter f), at frequency k, for one sample and the filters f < filters
  // (dY's planes of filter f at grad + f * grad_step).
  void (*weight_grad_freq)(const Window2d& w, int64_t freqs, bool even, int64_t k, int64_t filters, const T* spectrum,
                           const T* grad, int64_t grad_step, T* tile, T* acc, int64_t acc_step);
  // analyze of src zeroed where mask[c * step + p] <= 0 (ReLU's derivative, as
  // threshold_backward(src, mask, 0)).
  void (*analyze_masked)(const Plan<T>& plan, const T* src, const T* mask, int64_t step, int64_t count,
                         T* spectrum, int64_t plane, T* scratch);
  // The widest power-of-two radix whose butterfly the ISA's registers hold (a plan's
  // widest_radix): 8 complex vectors take 16 registers, AVX-512 has 32, AVX2 and SSE2 16.
  int64_t widest_radix;
};

// Scratch elements the per-frequency sums need for blocks of up to `rows` rows: zero-padded
// copies of the planes they read, rows rounded up to whole lane chunks. Count is the
// arithmetic type: double where the geometry may be extreme (see fits_tiles).
template <typename T, typename Count = int64_t>
Count tile_size(const Window2d& w, int64_t rows) {
  const int64_t lanes = kLaneBytes / int64_t(sizeof(T));
  const Count out_cols = Count(ceil_div(w.out_w, lanes) * lanes), in_cols = Count(ceil_div(w.in_w, lanes) * lanes);
  const auto span = [](int64_t kernel, int64_t dil) { return Count(kernel - 1) * Count(dil); };
  const auto input_tile = [&](Count out_rows) {  // forward, dK: X under out_rows output rows
    return ((out_rows - 1) * Count(w.stride_h) + span(w.kernel_h, w.dil_h) + 1) *
           ((out_cols - 1) * Count(w.stride_w) + span(w.kernel_w, w.dil_w) + 1);
  };
  const Count forward = input_tile(Count(rows));
  const Count input_grad = (Count(rows) + span(w.kernel_h, w.dil_h)) * (in_cols + span(w.kernel_w, w.dil_w));
  const Count weight_grad = input_tile(Count(w.out_h)) + Count(w.out_h) * out_cols;
  return 2 * std::max({forward, input_grad, weight_grad});
}

// Whether the tiles of a window stay within a small multiple of its input and output planes
// (plus 1 MiB): they grow with the stride and the dilation, which the input does not bound.
template <typename T>
bool fits_tiles(const Window2d& w) {
  const int64_t lanes = kLaneBytes / int64_t(sizeof(T));
  const double planes = double(w.in_h) * double(w.in_w) + double(w.out_h) * double(ceil_div(w.out_w, lanes) * lanes);
  return tile_size<T, double>(w, 1) <= 8 * planes + double((int64_t(1) << 20) / int64_t(sizeof(T)));
}

template <typename T>
const MicroKernels<T>& micro_kernels();  // the active ISA's (cpu::active_isa())

}  // namespace rollconv::channel_fft
