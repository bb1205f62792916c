// Max pooling's rules, shared by the CPU and CUDA primitives (__host__ __device__): the
// window of an output clipped to the input, PyTorch's NaN and tie rules, and the backward as
// a gather.
#pragma once

#include <limits>

#include "common/index_math.h"

namespace rollconv {

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

}  // namespace rollconv
