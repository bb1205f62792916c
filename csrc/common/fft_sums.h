// The channel-FFT rolling convolution's per-frequency sums, shared by the CPU and CUDA
// primitives (__host__ __device__), around which the composed 'fft' path (common/roll_fft.cpp)
// runs ATen's FFTs.
#pragma once

#include "common/index_math.h"

namespace rollconv {

// Input channel c = g * S + s (block g < G = C / S, position s < S inside the block, S the
// shift of a roll). Rolling by S channels rolls the blocks, so the bank is block-circulant:
// with an FFT over the block index g, X = rfft_g(x) (N, H, W, S, K) and taps
// T = rfft_g(w) (F, kh, kw, S, K), K = G/2 + 1, every frequency k is an S-input, F-output
// complex convolution (the convolution theorem for a circulant matrix, applied per block;
// README, "Choosing the rolling-convolution algorithm"; S = 1 is the plain channel FFT):
//   forward  Y[n, p, f, k]     = sum_{s, t} X[n, in(p, t), s, k] conj(T[f, t, s, k])   Y: (N, oh, ow, F, K)
//   dX       G[n, q, s, k]     = sum_{f, (t, p) covering q} dY[n, p, f, k] T[f, t, s, k]
//   dK       dT[f, t, s, k]    = sum_{n, p} X[n, in(p, t), s, k] conj(dY[n, p, f, k])
// Frequencies are the fastest axis. Each function computes `span` consecutive frequencies
// of one output element into dst[0, span): the CPU calls it with span = K (the inner
// frequency loop vectorizes), a CUDA thread with span = 1 and pointers offset to its
// frequency (consecutive threads read consecutive addresses). Z is c10::complex<float|double>.

template <typename Z>
RC_HD Z conj_of(const Z& z) {
  return Z(z.real(), -z.imag());
}

// Y[n, oh, ow, f, k..k+span): `spectrum` at X[n, 0, 0, 0, k], `taps` at T[f, 0, 0, 0, k].
template <typename Z>
RC_HD void fft_forward_span(Z* dst, const Z* spectrum, const Z* taps, int64_t inputs, int64_t freqs,
                            int64_t span, const Window2d& w, int64_t oh, int64_t ow) {
  for (int64_t k = 0; k < span; ++k) dst[k] = Z(0, 0);
  for (int64_t i = 0; i < w.kernel_h; ++i) {
    const int64_t h = input_coord(oh, i, w.stride_h, w.pad_h, w.dil_h);
    if (h < 0 || h >= w.in_h) continue;
    for (int64_t j = 0; j < w.kernel_w; ++j) {
      const int64_t x = input_coord(ow, j, w.stride_w, w.pad_w, w.dil_w);
      if (x < 0 || x >= w.in_w) continue;
      const Z* xs = spectrum + (h * w.in_w + x) * inputs * freqs;
      const Z* t = taps + (i * w.kernel_w + j) * inputs * freqs;
      for (int64_t s = 0; s < inputs; ++s) {
        for (int64_t k = 0; k < span; ++k) dst[k] += xs[s * freqs + k] * conj_of(t[s * freqs + k]);
      }
    }
  }
}

// G[n, h, x, s, k..k+span): `grad` at dY[n, 0, 0, 0, k], `taps` at T[0, 0, 0, s, k].
template <typename Z>
RC_HD void fft_input_grad_span(Z* dst, const Z* grad, const Z* taps, int64_t filters, int64_t inputs,
                               int64_t freqs, int64_t span, const Window2d& w, int64_t h, int64_t x) {
  for (int64_t k = 0; k < span; ++k) dst[k] = Z(0, 0);
  const int64_t kk = w.kernel_h * w.kernel_w;
  for_each_covering_tap(w, h, x, [&](int64_t i, int64_t j, int64_t oh, int64_t ow) {
    for (int64_t f = 0; f < filters; ++f) {
      const Z* g = grad + ((oh * w.out_w + ow) * filters + f) * freqs;
      const Z* t = taps + (f * kk + i * w.kernel_w + j) * inputs * freqs;
      for (int64_t k = 0; k < span; ++k) dst[k] += g[k] * t[k];
    }
  });
}

// dT[f, i, j, s, k..k+span): `spectrum` at X[0, 0, 0, s, k], `grad` at dY[0, 0, 0, f, k];
// summed over samples and pixels in a fixed order.
template <typename Z>
RC_HD void fft_weight_grad_span(Z* dst, const Z* spectrum, const Z* grad, int64_t batch,
                                int64_t filters, int64_t inputs, int64_t freqs, int64_t span,
                                const Window2d& w, int64_t i, int64_t j) {
  for (int64_t k = 0; k < span; ++k) dst[k] = Z(0, 0);
  int64_t ow_lo, ow_hi;
  valid_outputs(w.in_w, j, w.stride_w, w.pad_w, w.dil_w, w.out_w, &ow_lo, &ow_hi);
  for (int64_t n = 0; n < batch; ++n) {
    for (int64_t oh = 0; oh < w.out_h; ++oh) {
      const int64_t h = input_coord(oh, i, w.stride_h, w.pad_h, w.dil_h);
      if (h < 0 || h >= w.in_h) continue;
      for (int64_t ow = ow_lo; ow < ow_hi; ++ow) {
        const int64_t x = input_coord(ow, j, w.stride_w, w.pad_w, w.dil_w);
        const Z* xs = spectrum + ((n * w.in_h + h) * w.in_w + x) * inputs * freqs;
        const Z* g = grad + ((n * w.out_h + oh) * w.out_w + ow) * filters * freqs;
        for (int64_t k = 0; k < span; ++k) dst[k] += xs[k] * conj_of(g[k]);
      }
    }
  }
}

}  // namespace rollconv
