// CPU im2col / col2im over a span of output pixels, for one (channel plane, kernel tap):
// the line-at-a-time form of index_math.h's im2col_value / col2im_gather. Used by the
// column-matrix primitives (cpu/kernels.cpp: whole rows) and by the GEMM engine's packing
// (cpu/conv_engine.cpp: strips of a row), so the zero/copy split is written once.
#pragma once

#include <algorithm>

#include "common/index_math.h"

namespace rollconv {

// Calls line(oh, ow_begin, ow_end, dst_offset) for each output row crossed by the pixels
// [first, first + count) (pixel p = oh * out_w + ow), in order.
template <typename Line>
inline void for_each_output_line(const Window2d& w, int64_t first, int64_t count, const Line& line) {
  int64_t p = first;
  const int64_t end = first + count;
  while (p < end) {
    const int64_t oh = p / w.out_w, ow = p - oh * w.out_w;
    const int64_t ow_end = std::min(w.out_w, ow + (end - p));
    line(oh, ow, ow_end, p - first);
    p += ow_end - ow;
  }
}

// dst[q] = image value met by tap (tap_h, tap_w) of output pixel first + q (0 in the
// padding), for q < count.
template <typename T>
inline void im2col_span(const T* plane, const Window2d& w, int64_t tap_h, int64_t tap_w,
                        int64_t first, int64_t count, T* dst) {
  int64_t lo, hi;
  valid_outputs(w.in_w, tap_w, w.stride_w, w.pad_w, w.dil_w, w.out_w, &lo, &hi);
  const int64_t x0 = input_coord(0, tap_w, w.stride_w, w.pad_w, w.dil_w);
  for_each_output_line(w, first, count, [&](int64_t oh, int64_t a, int64_t b, int64_t off) {
    T* out = dst + off - a;  // out[ow] for ow in [a, b)
    const int64_t h = input_coord(oh, tap_h, w.stride_h, w.pad_h, w.dil_h);
    if (h < 0 || h >= w.in_h) {
      std::fill(out + a, out + b, T(0));
      return;
    }
    const int64_t v0 = std::min(std::max(a, lo), b), v1 = std::max(v0, std::min(b, hi));
    const T* line = plane + h * w.in_w + x0;
    std::fill(out + a, out + v0, T(0));
    if (w.stride_w == 1) {
      std::copy(line + v0, line + v1, out + v0);
    } else {
      for (int64_t ow = v0; ow < v1; ++ow) out[ow] = line[ow * w.stride_w];
    }
    std::fill(out + v1, out + b, T(0));
  });
}

// The adjoint: plane[input met by tap of pixel first + q] += src[q], padding skipped.
template <typename T>
inline void col2im_span_add(const T* src, const Window2d& w, int64_t tap_h, int64_t tap_w,
                            int64_t first, int64_t count, T* plane) {
  int64_t lo, hi;
  valid_outputs(w.in_w, tap_w, w.stride_w, w.pad_w, w.dil_w, w.out_w, &lo, &hi);
  const int64_t x0 = input_coord(0, tap_w, w.stride_w, w.pad_w, w.dil_w);
  for_each_output_line(w, first, count, [&](int64_t oh, int64_t a, int64_t b, int64_t off) {
    const int64_t h = input_coord(oh, tap_h, w.stride_h, w.pad_h, w.dil_h);
    if (h < 0 || h >= w.in_h) return;
    const T* in = src + off - a;
    T* line = plane + h * w.in_w + x0;
    const int64_t v1 = std::min(b, hi);
    for (int64_t ow = std::max(a, lo); ow < v1; ++ow) line[ow * w.stride_w] += in[ow];
  });
}

}  // namespace rollconv
