// Index math shared by the CPU (OpenMP) and CUDA kernels.
//
// Everything here is __host__ __device__ and free of ATen, so the .cu files can
// include it cheaply. A CPU kernel hoists the per-row helpers out of its inner loop;
// a CUDA kernel calls the same helpers once per element. The math lives only here.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#if defined(__CUDACC__)
#define RC_HD __host__ __device__ __forceinline__
#else
#define RC_HD inline
#endif

namespace rollconv {

// One 2-D sliding window (convolution or pooling) over an in_h x in_w plane.
struct Window2d {
  int64_t in_h, in_w, out_h, out_w;
  int64_t kernel_h, kernel_w;
  int64_t stride_h, stride_w;
  int64_t pad_h, pad_w;
  int64_t dil_h, dil_w;
};

// The column matrix: rows are (virtual channel v, tap i, tap j), columns are output
// pixels, sample after sample (column b * out_h * out_w + p), so that one GEMM covers a
// whole chunk of the batch. Virtual channel v reads image channel v % channels; a plain
// convolution has col_channels == channels, a rolling convolution with R rolls of S
// channels each has col_channels == channels + (R - 1) * S so that roll r is the
// contiguous row window that starts at v = r * S (rolling the filter == shifting which
// rows it meets).
struct ColumnLayout {
  Window2d win;
  int64_t channels;
  int64_t col_channels;
};

RC_HD int64_t column_rows(const ColumnLayout& L) {
  return L.col_channels * L.win.kernel_h * L.win.kernel_w;
}
RC_HD int64_t column_cols(const ColumnLayout& L) { return L.win.out_h * L.win.out_w; }

RC_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Input coordinate met by output position `out` at kernel tap `tap`.
RC_HD int64_t input_coord(int64_t out, int64_t tap, int64_t stride, int64_t pad, int64_t dil) {
  return out * stride - pad + tap * dil;
}

// Inverse of input_coord: does tap `tap` of some output position land on input `in`?
// If so, store that output position in *out. Used by every gather-style backward.
RC_HD bool window_hit(int64_t in, int64_t tap, int64_t stride, int64_t pad, int64_t dil,
                      int64_t out_size, int64_t* out) {
  const int64_t shifted = in + pad - tap * dil;
  if (shifted < 0) return false;
  int64_t o = shifted;
  if (stride != 1) {
    if (shifted % stride != 0) return false;
    o = shifted / stride;
  }
  if (o >= out_size) return false;
  *out = o;
  return true;
}

// The output positions o in [0, out_size) whose tap lands inside [0, in_size), as the
// half-open range [*lo, *hi): lets a CPU loop split a line into zeros and a strided copy.
RC_HD void valid_outputs(int64_t in_size, int64_t tap, int64_t stride, int64_t pad, int64_t dil,
                         int64_t out_size, int64_t* lo, int64_t* hi) {
  const int64_t offset = tap * dil - pad;  // input = o * stride + offset
  int64_t first = offset >= 0 ? 0 : (-offset + stride - 1) / stride;
  int64_t last = in_size - offset <= 0 ? 0 : (in_size - offset + stride - 1) / stride;
  last = last < out_size ? last : out_size;
  *lo = first < last ? first : last;
  *hi = last;
}

// The taps [*lo, *hi) that can land on input `in` from some output in [0, out_size):
// those with in + pad - (out_size - 1) * stride <= tap * dil <= in + pad. Bounds the work of a
// gather by the output's reach rather than the kernel (a pooling kernel may be far larger
// than the input).
RC_HD void covering_taps(int64_t in, int64_t kernel, int64_t stride, int64_t pad, int64_t dil,
                         int64_t out_size, int64_t* lo, int64_t* hi) {
  const int64_t top = in + pad;
  const int64_t bottom = top - (out_size - 1) * stride;
  int64_t first = bottom <= 0 ? 0 : (bottom + dil - 1) / dil;
  int64_t last = top < 0 ? 0 : top / dil + 1;
  last = last < kernel ? last : kernel;
  *lo = first < last ? first : last;
  *hi = last;
}

// Calls visit(i, j, oh, ow) for each kernel tap (i, j) of each output window (oh, ow)
// that covers input (h, x), in a fixed order: the skeleton of every gather backward.
template <typename Visit>
RC_HD void for_each_covering_tap(const Window2d& w, int64_t h, int64_t x, Visit&& visit) {
  int64_t i0, i1, j0, j1;
  covering_taps(h, w.kernel_h, w.stride_h, w.pad_h, w.dil_h, w.out_h, &i0, &i1);
  covering_taps(x, w.kernel_w, w.stride_w, w.pad_w, w.dil_w, w.out_w, &j0, &j1);
  for (int64_t i = i0; i < i1; ++i) {
    int64_t oh;
    if (!window_hit(h, i, w.stride_h, w.pad_h, w.dil_h, w.out_h, &oh)) continue;
    for (int64_t j = j0; j < j1; ++j) {
      int64_t ow;
      if (!window_hit(x, j, w.stride_w, w.pad_w, w.dil_w, w.out_w, &ow)) continue;
      visit(i, j, oh, ow);
    }
  }
}

// Which image channel and kernel taps a column-matrix row reads.
struct RowSource {
  int64_t channel, tap_h, tap_w;
};

RC_HD RowSource column_row_source(const ColumnLayout& L, int64_t row) {
  const int64_t kk = L.win.kernel_h * L.win.kernel_w;
  const int64_t v = row / kk;
  const int64_t tap = row - v * kk;
  return RowSource{v % L.channels, tap / L.win.kernel_w, tap % L.win.kernel_w};
}

// im2col: the value of column-matrix entry (row -> src, output pixel oh, ow).
template <typename T>
RC_HD T im2col_value(const T* image, const Window2d& w, const RowSource& src, int64_t oh,
                     int64_t ow) {
  const int64_t h = input_coord(oh, src.tap_h, w.stride_h, w.pad_h, w.dil_h);
  const int64_t x = input_coord(ow, src.tap_w, w.stride_w, w.pad_w, w.dil_w);
  if (h < 0 || h >= w.in_h || x < 0 || x >= w.in_w) return T(0);
  return image[(src.channel * w.in_h + h) * w.in_w + x];
}

// col2im as a gather: the sum of every column entry that im2col copied from image
// element (c, h, x). `cols` points at the sample's first column, rows are `row_stride`
// apart. Fixed summation order, so the result is deterministic.
template <typename T, typename Acc>
RC_HD Acc col2im_gather(const T* cols, int64_t row_stride, const ColumnLayout& L, int64_t c,
                        int64_t h, int64_t x) {
  const Window2d& w = L.win;
  Acc sum = Acc(0);
  for (int64_t v = c; v < L.col_channels; v += L.channels) {
    for_each_covering_tap(w, h, x, [&](int64_t i, int64_t j, int64_t oh, int64_t ow) {
      const int64_t row = (v * w.kernel_h + i) * w.kernel_w + j;
      sum += static_cast<Acc>(cols[row * row_stride + oh * w.out_w + ow]);
    });
  }
  return sum;
}

// pow for the accumulation types (float, double) on host and device alike.
RC_HD float acc_pow(float a, float b) { return powf(a, b); }
RC_HD double acc_pow(double a, double b) { return pow(a, b); }

template <typename T>
RC_HD bool is_nan(T v) {
  return v != v;
}

// The first input coordinate of a pooling window at or after 0, and the end of the window
// clipped to the input: [*first, *end) stepping by dil (arithmetic, not a loop over the
// padding: a window may start far outside the input).
RC_HD void pool_window_span(int64_t out, int64_t kernel, int64_t stride, int64_t pad, int64_t dil,
                            int64_t in_size, int64_t* first, int64_t* end) {
  const int64_t start = out * stride - pad;
  *first = start >= 0 ? start : start + ((-start + dil - 1) / dil) * dil;
  const int64_t stop = start + (kernel - 1) * dil + 1;
  *end = stop < in_size ? stop : in_size;
}

// Max pooling over one window of a plane, with PyTorch's rules: padding acts as -inf,
// the first maximum wins ties, and a NaN wins (the last NaN seen). The index is the
// flat h * in_w + x position inside the plane.
template <typename T, typename Acc>
RC_HD void max_pool_window(const T* plane, const Window2d& w, int64_t oh, int64_t ow, T* max_out,
                           int64_t* index_out) {
  int64_t h0, h1, x0, x1;
  pool_window_span(oh, w.kernel_h, w.stride_h, w.pad_h, w.dil_h, w.in_h, &h0, &h1);
  pool_window_span(ow, w.kernel_w, w.stride_w, w.pad_w, w.dil_w, w.in_w, &x0, &x1);
  int64_t best_index = h0 * w.in_w + x0;
  Acc best = -std::numeric_limits<Acc>::infinity();
  for (int64_t h = h0; h < h1; h += w.dil_h) {
    for (int64_t x = x0; x < x1; x += w.dil_w) {
      const Acc v = static_cast<Acc>(plane[h * w.in_w + x]);
      if (v > best || is_nan(v)) {
        best = v;
        best_index = h * w.in_w + x;
      }
    }
  }
  *max_out = static_cast<T>(best);
  *index_out = best_index;
}

// Max pooling backward as a gather: the gradient reaching input (h, x) of one plane is
// the sum over the windows that contain it and chose it as their maximum.
template <typename T, typename Acc>
RC_HD Acc max_pool_gather(const T* grad_plane, const int64_t* index_plane, const Window2d& w,
                          int64_t h, int64_t x) {
  const int64_t flat = h * w.in_w + x;
  Acc sum = Acc(0);
  for_each_covering_tap(w, h, x, [&](int64_t, int64_t, int64_t oh, int64_t ow) {
    const int64_t o = oh * w.out_w + ow;
    if (index_plane[o] == flat) sum += static_cast<Acc>(grad_plane[o]);
  });
  return sum;
}

// Local response normalization across channels, with torch.nn.functional semantics:
//   D_c = k + alpha / size * sum_{j = c - size/2}^{c + (size-1)/2} x_j^2   (clipped to [0, C))
//   y_c = x_c * D_c^-beta
// The input is viewed as (N, C, S); `column` points at (n, 0, s) and `step` == S.
struct LrnParams {
  int64_t channels, size;
  double alpha, beta, k;
};

// Channels [before, after] around c, clipped to [0, C): [*lo, *hi].
RC_HD void lrn_span(const LrnParams& p, int64_t c, int64_t before, int64_t after, int64_t* lo,
                    int64_t* hi) {
  *lo = c - before < 0 ? 0 : c - before;
  *hi = c + after >= p.channels ? p.channels - 1 : c + after;
}

template <typename T, typename Acc>
RC_HD Acc lrn_denominator(const T* column, int64_t step, const LrnParams& p, int64_t c) {
  int64_t lo, hi;
  lrn_span(p, c, p.size / 2, (p.size - 1) / 2, &lo, &hi);  // the window of c
  Acc sum = Acc(0);
  for (int64_t j = lo; j <= hi; ++j) {
    const Acc v = static_cast<Acc>(column[j * step]);
    sum += v * v;
  }
  return static_cast<Acc>(p.k) + static_cast<Acc>(p.alpha) / static_cast<Acc>(p.size) * sum;
}

template <typename T, typename Acc>
RC_HD Acc lrn_value(const T* column, int64_t step, const LrnParams& p, int64_t c) {
  const Acc d = lrn_denominator<T, Acc>(column, step, p, c);
  return static_cast<Acc>(column[c * step]) * acc_pow(d, -static_cast<Acc>(p.beta));
}

// Backward, in two element-wise passes (O(size) work per element):
//   dL/dx_j = g_j D_j^-beta - (2 alpha beta / size) x_j sum_{c : j in window(c)} t_c,
//   t_c = g_c x_c D_c^(-beta-1),   and j in window(c)  <=>  j - (size-1)/2 <= c <= j + size/2.
// Pass 1 stores own_c = g_c D_c^-beta and t_c; pass 2 combines them.
template <typename T, typename Acc>
RC_HD void lrn_grad_terms(const T* grad_column, const T* column, int64_t step, const LrnParams& p,
                          int64_t c, Acc* own, Acc* t) {
  const Acc beta = static_cast<Acc>(p.beta);
  const Acc d = lrn_denominator<T, Acc>(column, step, p, c);
  const Acc scaled = static_cast<Acc>(grad_column[c * step]) * acc_pow(d, -beta);
  *own = scaled;
  *t = scaled * static_cast<Acc>(column[c * step]) / d;
}

template <typename T, typename Acc>
RC_HD Acc lrn_grad_combine(const Acc* own_column, const Acc* t_column, const T* column,
                           int64_t step, const LrnParams& p, int64_t j) {
  int64_t lo, hi;
  lrn_span(p, j, (p.size - 1) / 2, p.size / 2, &lo, &hi);  // the channels whose window holds j
  Acc cross = Acc(0);
  for (int64_t c = lo; c <= hi; ++c) cross += t_column[c * step];
  const Acc scale = Acc(2) * static_cast<Acc>(p.alpha) * static_cast<Acc>(p.beta) /
                    static_cast<Acc>(p.size);
  return own_column[j * step] - scale * static_cast<Acc>(column[j * step]) * cross;
}

// --- the channel-FFT rolling convolution ----------------------------------------------------
// Input channel c = g * S + s (block g < G = C / S, position s < S inside the block, S the
// shift of a roll). Rolling by S channels rolls the blocks, so the bank is block-circulant:
// with an FFT over the block index g, X = rfft_g(x) (N, H, W, S, K) and taps
// T = rfft_g(w) (F, kh, kw, S, K), K = G/2 + 1, every frequency k is an S-input, F-output
// complex convolution (DESIGN.md; S = 1 is the plain channel FFT):
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
