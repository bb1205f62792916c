// Local response normalization's formulas, forward and backward, shared by the CPU and
// CUDA primitives (__host__ __device__).
#pragma once

#include <cmath>

#include "common/index_math.h"

namespace rollconv {

// pow for the accumulation types (float, double) on host and device alike.
RC_HD float acc_pow(float a, float b) { return powf(a, b); }
RC_HD double acc_pow(double a, double b) { return pow(a, b); }

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

}  // namespace rollconv
