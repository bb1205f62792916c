// CPU im2col / col2im over a span of output pixels, for one (channel plane, kernel tap):
// the line-at-a-time form of index_math.h's im2col_value / col2im_gather. Used by the
// column-matrix primitives (cpu/primitives.cpp: whole rows) and by the GEMM engine's packing
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

// dst[0, len) = src[0, len) in whole 64/32/16/8-byte moves, the last one overlapping the
// one before, so a short span has no element-by-element tail (the packing's spans are
// mostly shorter than an image line; a vectorized loop with a scalar tail measured slower).
template <typename T>
__attribute__((always_inline)) inline void copy_span(T* __restrict dst, const T* __restrict src, int64_t len) {
  char* d = reinterpret_cast<char*>(dst);
  const char* s = reinterpret_cast<const char*>(src);
  const int64_t bytes = len * int64_t(sizeof(T));
  if (bytes >= 64) {
    for (int64_t q = 0; q + 64 <= bytes; q += 64) __builtin_memcpy(d + q, s + q, 64);
    __builtin_memcpy(d + bytes - 64, s + bytes - 64, 64);
  } else if (bytes >= 32) {
    __builtin_memcpy(d, s, 32);
    __builtin_memcpy(d + bytes - 32, s + bytes - 32, 32);
  } else if (bytes >= 16) {
    __builtin_memcpy(d, s, 16);
    __builtin_memcpy(d + bytes - 16, s + bytes - 16, 16);
  } else if (bytes >= 8) {
    __builtin_memcpy(d, s, 8);
    __builtin_memcpy(d + bytes - 8, s + bytes - 8, 8);
  } else {
    for (int64_t q = 0; q < len; ++q) dst[q] = src[q];
  }
}

// One output line of an im2col row: out[ow] for ow in [a, b) is in[ow * stride] for the
// valid output columns [lo, hi) and zero elsewhere; in == nullptr: the whole line lies in
// the padding. (`in` is the input row already offset to output column 0.) Always inlined:
// the engine's packing calls it per (row, tap), where a call's overhead shows.
template <typename T>
__attribute__((always_inline)) inline void im2col_line(const T* in, int64_t stride, int64_t lo, int64_t hi, int64_t a, int64_t b, T* out) {
  const int64_t v0 = in ? std::clamp(lo, a, b) : b;
  const int64_t v1 = in ? std::clamp(hi, v0, b) : b;
  for (int64_t ow = a; ow < v0; ++ow) out[ow] = T(0);
  if (stride == 1) {
    copy_span(out + v0, in + v0, v1 - v0);
  } else {
    for (int64_t ow = v0; ow < v1; ++ow) out[ow] = in[ow * stride];
  }
  for (int64_t ow = v1; ow < b; ++ow) out[ow] = T(0);
}

// One output line of one kernel tap, as for_each_tap_line gives it: output columns [a, b)
// at span offset `off`; valid output columns [lo, hi) (the tap inside the image); the
// input row at plane offset `offset` (already at output column 0), unless !inside (the
// whole line lies in the vertical padding).
struct TapLine {
  bool inside;
  int64_t offset, lo, hi, a, b, off;
};

// Calls line(TapLine) for each output line crossed by pixels [first, first + count) for
// tap (tap_h, tap_w): the geometry shared by im2col_span and its adjoint.
template <typename Line>
inline void for_each_tap_line(const Window2d& w, int64_t tap_h, int64_t tap_w, int64_t first,
                              int64_t count, const Line& line) {
  int64_t lo, hi;
  valid_outputs(w.in_w, tap_w, w.stride_w, w.pad_w, w.dil_w, w.out_w, &lo, &hi);
  const int64_t x0 = input_coord(0, tap_w, w.stride_w, w.pad_w, w.dil_w);
  for_each_output_line(w, first, count, [&](int64_t oh, int64_t a, int64_t b, int64_t off) {
    const int64_t h = input_coord(oh, tap_h, w.stride_h, w.pad_h, w.dil_h);
    line(TapLine{h >= 0 && h < w.in_h, h * w.in_w + x0, lo, hi, a, b, off});
  });
}

// dst[q] = image value met by tap (tap_h, tap_w) of output pixel first + q (0 in the
// padding), for q < count.
template <typename T>
inline void im2col_span(const T* plane, const Window2d& w, int64_t tap_h, int64_t tap_w,
                        int64_t first, int64_t count, T* dst) {
  for_each_tap_line(w, tap_h, tap_w, first, count, [&](const TapLine& ln) {
    im2col_line(ln.inside ? plane + ln.offset : nullptr, w.stride_w, ln.lo, ln.hi, ln.a, ln.b,
                dst + ln.off - ln.a);
  });
}

// The adjoint: plane[input met by tap of pixel first + q] += src[q], padding skipped.
template <typename T>
inline void col2im_span_add(const T* src, const Window2d& w, int64_t tap_h, int64_t tap_w,
                            int64_t first, int64_t count, T* plane) {
  for_each_tap_line(w, tap_h, tap_w, first, count, [&](const TapLine& ln) {
    if (!ln.inside) return;
    const T* in = src + ln.off - ln.a;  // in[ow] for ow in [a, b)
    T* line = plane + ln.offset;
    const int64_t end = std::min(ln.b, ln.hi);
    for (int64_t ow = std::max(ln.a, ln.lo); ow < end; ++ow) line[ow * w.stride_w] += in[ow];
  });
}

}  // namespace rollconv
