// Index math shared by the CPU (OpenMP) and CUDA primitives: sliding windows, the column
// matrix (im2col, col2im as a gather). The op-specific math beside it, written the same way:
// max_pool_rules.h, lrn_formulas.h, fft_sums.h.
//
// Everything here is __host__ __device__ and free of ATen, so the .cu files can
// include it cheaply. A CPU primitive hoists the per-row helpers out of its inner loop;
// a CUDA primitive calls the same helpers once per element. The math lives only here.
#pragma once

#include <cstdint>

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

}  // namespace rollconv
