// CPU primitives: OpenMP loops around the math shared with CUDA (common/index_math.h,
// max_pool_rules.h, lrn_formulas.h, fft_sums.h).
// (The loops are templates outside the AT_DISPATCH macros: a pragma cannot sit inside a
// macro argument.)
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <omp.h>

#include <algorithm>
#include <type_traits>
#include <utility>
#include <vector>

#include <c10/util/complex.h>

#include "common/device_primitives.h"
#include "common/fft_sums.h"
#include "common/lrn_formulas.h"
#include "common/max_pool_rules.h"
#include "common/register_kernels.h"
#include "cpu/im2col_span.h"
#include "cpu/parallel.h"

namespace rollconv {
namespace {

// Threads for an OpenMP region: torch's setting (torch.set_num_threads), one thread for
// small work so tiny layers do not pay the fork/join.
int threads_for(int64_t work) {
  return work < (int64_t(1) << 14) || at::in_parallel_region() ? 1 : at::get_num_threads();
}

// im2col: each (row, sample) line of the column matrix is one im2col_span (the CUDA
// kernel evaluates im2col_value per element instead).
template <typename T>
void im2col_loops(const T* x, T* out, int64_t batch, const ColumnLayout& L) {
  const Window2d& w = L.win;
  const int64_t rows = column_rows(L), ncols = column_cols(L);
  const int64_t plane = w.in_h * w.in_w;
#pragma omp parallel for collapse(2) num_threads(threads_for(batch * rows * ncols))
  for (int64_t row = 0; row < rows; ++row) {
    for (int64_t b = 0; b < batch; ++b) {
      const RowSource src = column_row_source(L, row);
      im2col_span(x + (b * L.channels + src.channel) * plane, w, src.tap_h, src.tap_w, 0, ncols,
                  out + (row * batch + b) * ncols);
    }
  }
}

// col2im: each thread owns whole (sample, channel) planes and adds the column rows of
// that channel into them in a fixed order, so the result is deterministic (the CUDA
// kernel gathers per element with col2im_gather instead; the C++ tests check both agree).
template <typename T>
void col2im_loops(const T* cols, T* x, int64_t batch, const ColumnLayout& L) {
  const Window2d& w = L.win;
  const int64_t ncols = column_cols(L), row_stride = batch * ncols;
  const int64_t kk = w.kernel_h * w.kernel_w;
#pragma omp parallel for collapse(2) num_threads(threads_for(batch * column_rows(L) * ncols))
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t c = 0; c < L.channels; ++c) {
      T* plane = x + (b * L.channels + c) * w.in_h * w.in_w;
      std::fill(plane, plane + w.in_h * w.in_w, T(0));
      for (int64_t v = c; v < L.col_channels; v += L.channels) {
        for (int64_t tap = 0; tap < kk; ++tap) {
          col2im_span_add(cols + (v * kk + tap) * row_stride + b * ncols, w, tap / w.kernel_w,
                          tap % w.kernel_w, 0, ncols, plane);
        }
      }
    }
  }
}

// bfloat16 loops compare and sum in Acc (at::opmath_type: float), as on CUDA.
template <typename T, typename Acc>
void max_pool_forward_loops(const T* x, T* y, int64_t* idx, int64_t planes, const Window2d& w) {
  // A window visits at most the input's extent along each axis, however large the kernel.
  const int64_t taps = std::min(w.kernel_h, w.in_h) * std::min(w.kernel_w, w.in_w);
#pragma omp parallel for num_threads(threads_for(planes * w.out_h * w.out_w * taps))
  for (int64_t p = 0; p < planes; ++p) {
    for (int64_t oh = 0; oh < w.out_h; ++oh) {
      for (int64_t ow = 0; ow < w.out_w; ++ow) {
        const int64_t o = (p * w.out_h + oh) * w.out_w + ow;
        max_pool_window<T, Acc>(x + p * w.in_h * w.in_w, w, oh, ow, y + o, idx + o);
      }
    }
  }
}

// Max-pool backward: each thread owns whole planes and adds every window's gradient at
// its argmax, in output order (deterministic; the CUDA kernel gathers per input element
// with max_pool_gather instead, and the C++ tests check that both agree). Overlapping
// windows add into one element, so a bfloat16 plane is summed in a per-thread Acc plane
// and rounded once. An index outside the plane (indices not made by max_pool2d_forward
// for this input size) is skipped and reported: returns false.
// An index outside the input plane addresses no input element and gets no gradient: that
// is a window lying entirely in padding (its max is -inf and torch's index points past
// the plane), as CUDA's gather, which matches positions, leaves it.
template <typename T, typename Acc>
void max_pool_backward_loops(const T* gy, const int64_t* idx, T* gx, int64_t planes, const Window2d& w) {
  constexpr bool in_place = std::is_same_v<T, Acc>;
  const int64_t out_plane = w.out_h * w.out_w, in_plane = w.in_h * w.in_w;
  const auto scratch_plane = [&] { return std::vector<Acc>(in_place ? 0 : in_plane); };
  parallel_with_state(threads_for(planes * (in_plane + out_plane)), scratch_plane, [&](std::vector<Acc>& scratch) {
#pragma omp for
    for (int64_t p = 0; p < planes; ++p) {
      Acc* sums;
      if constexpr (in_place) {
        sums = gx + p * in_plane;
      } else {
        sums = scratch.data();
      }
      std::fill(sums, sums + in_plane, Acc(0));
      for (int64_t o = 0; o < out_plane; ++o) {
        const int64_t i = idx[p * out_plane + o];
        if (i >= 0 && i < in_plane) sums[i] += static_cast<Acc>(gy[p * out_plane + o]);
      }
      if constexpr (!in_place) std::copy(sums, sums + in_plane, gx + p * in_plane);
    }
  });
}

// LRN: body(column, c, element) for every element (n, c, s) of an (N, C, S) tensor,
// where column = n * C * S + s is the offset of its channel column.
template <typename Body>
void for_each_lrn_element(int64_t n, int64_t c, int64_t s, int64_t work_per_element, const Body& body) {
#pragma omp parallel for collapse(2) num_threads(threads_for(n * c * s * work_per_element))
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t ch = 0; ch < c; ++ch) {
      for (int64_t j = 0; j < s; ++j) body(i * c * s + j, ch, (i * c + ch) * s + j);
    }
  }
}

// Channel-FFT per-frequency passes: one output element (all K frequencies) per
// iteration, the sums in fft_sums.h's fft_*_span. S = `inputs` (the shift of a roll).
template <typename Z>
void fft_forward_loops(const Z* spectrum, const Z* taps, Z* out, int64_t batch, int64_t filters,
                       int64_t inputs, int64_t freqs, const Window2d& w) {
  const int64_t kk = w.kernel_h * w.kernel_w, in_size = w.in_h * w.in_w * inputs * freqs;
#pragma omp parallel for collapse(2) num_threads(threads_for(batch * w.out_h * w.out_w * filters * inputs * freqs * kk))
  for (int64_t n = 0; n < batch; ++n) {
    for (int64_t oh = 0; oh < w.out_h; ++oh) {
      for (int64_t ow = 0; ow < w.out_w; ++ow) {
        for (int64_t f = 0; f < filters; ++f) {
          fft_forward_span(out + (((n * w.out_h + oh) * w.out_w + ow) * filters + f) * freqs,
                           spectrum + n * in_size, taps + f * kk * inputs * freqs, inputs, freqs, freqs,
                           w, oh, ow);
        }
      }
    }
  }
}

template <typename Z>
void fft_backward_input_loops(const Z* grad, const Z* taps, Z* grad_spectrum, int64_t batch,
                              int64_t filters, int64_t inputs, int64_t freqs, const Window2d& w) {
  const int64_t out_size = w.out_h * w.out_w * filters * freqs;
#pragma omp parallel for collapse(2) num_threads(threads_for(batch * w.in_h * w.in_w * filters * inputs * freqs * w.kernel_h * w.kernel_w))
  for (int64_t n = 0; n < batch; ++n) {
    for (int64_t h = 0; h < w.in_h; ++h) {
      for (int64_t x = 0; x < w.in_w; ++x) {
        for (int64_t s = 0; s < inputs; ++s) {
          fft_input_grad_span(grad_spectrum + (((n * w.in_h + h) * w.in_w + x) * inputs + s) * freqs,
                              grad + n * out_size, taps + s * freqs, filters, inputs, freqs, freqs, w, h, x);
        }
      }
    }
  }
}

template <typename Z>
void fft_backward_weight_loops(const Z* spectrum, const Z* grad, Z* grad_taps, int64_t batch,
                               int64_t filters, int64_t inputs, int64_t freqs, const Window2d& w) {
  const int64_t kk = w.kernel_h * w.kernel_w;
#pragma omp parallel for collapse(3) num_threads(threads_for(batch * w.out_h * w.out_w * filters * inputs * freqs * kk))
  for (int64_t f = 0; f < filters; ++f) {
    for (int64_t tap = 0; tap < kk; ++tap) {
      for (int64_t s = 0; s < inputs; ++s) {
        fft_weight_grad_span(grad_taps + ((f * kk + tap) * inputs + s) * freqs, spectrum + s * freqs,
                             grad + f * freqs, batch, filters, inputs, freqs, freqs, w, tap / w.kernel_w,
                             tap % w.kernel_w);
      }
    }
  }
}

// Spectrum X (N, H, W, S, K), taps T (F, kh, kw, S, K), Y / dY (N, oh, ow, F, K).
void fft_forward_cpu(const at::Tensor& spectrum, const at::Tensor& taps, const at::Tensor& out,
                     const Window2d& w) {
  AT_DISPATCH_COMPLEX_TYPES(spectrum.scalar_type(), "rollconv_fft_forward_cpu", [&] {
    fft_forward_loops(spectrum.const_data_ptr<scalar_t>(), taps.const_data_ptr<scalar_t>(),
                      out.data_ptr<scalar_t>(), spectrum.size(0), taps.size(0), taps.size(3), taps.size(4), w);
  });
}

void fft_backward_input_cpu(const at::Tensor& grad, const at::Tensor& taps,
                            const at::Tensor& grad_spectrum, const Window2d& w) {
  AT_DISPATCH_COMPLEX_TYPES(grad.scalar_type(), "rollconv_fft_backward_input_cpu", [&] {
    fft_backward_input_loops(grad.const_data_ptr<scalar_t>(), taps.const_data_ptr<scalar_t>(),
                             grad_spectrum.data_ptr<scalar_t>(), grad.size(0), taps.size(0),
                             taps.size(3), taps.size(4), w);
  });
}

void fft_backward_weight_cpu(const at::Tensor& spectrum, const at::Tensor& grad,
                             const at::Tensor& grad_taps, const Window2d& w) {
  AT_DISPATCH_COMPLEX_TYPES(spectrum.scalar_type(), "rollconv_fft_backward_weight_cpu", [&] {
    fft_backward_weight_loops(spectrum.const_data_ptr<scalar_t>(), grad.const_data_ptr<scalar_t>(),
                              grad_taps.data_ptr<scalar_t>(), spectrum.size(0), grad_taps.size(0),
                              grad_taps.size(3), grad_taps.size(4), w);
  });
}

void im2col_cpu(const at::Tensor& images, const at::Tensor& cols, const ColumnLayout& L) {
  AT_DISPATCH_FLOATING_TYPES(images.scalar_type(), "rollconv_im2col_cpu", [&] {
    im2col_loops(images.const_data_ptr<scalar_t>(), cols.data_ptr<scalar_t>(), images.size(0), L);
  });
}

void col2im_cpu(const at::Tensor& cols, const at::Tensor& images, const ColumnLayout& L) {
  AT_DISPATCH_FLOATING_TYPES(cols.scalar_type(), "rollconv_col2im_cpu", [&] {
    col2im_loops(cols.const_data_ptr<scalar_t>(), images.data_ptr<scalar_t>(), images.size(0), L);
  });
}

// Pooling and LRN read and write bfloat16 directly (these passes are memory-bound, so no
// converted copies), with float32 arithmetic; the convolutions get float32 operands
// (register_kernels.h).
#define ROLLCONV_DISPATCH_CPU(type, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, type, name, __VA_ARGS__)

// float16 goes through float32 copies instead: c10::Half converts in software in this
// library (built without -mf16c, so that it loads on any x86-64), which made these loops
// slower than float32, while ATen's conversions use F16C when the CPU has it.
class Float32Copies {
 public:
  at::Tensor read(const at::Tensor& t) { return t.to(at::kFloat); }
  at::Tensor write(const at::Tensor& t) {
    written_.emplace_back(t, at::empty(t.sizes(), t.options().dtype(at::kFloat)));
    return written_.back().second;
  }
  void copy_back() {
    for (auto& [half, single] : written_) half.copy_(single);
  }

 private:
  std::vector<std::pair<at::Tensor, at::Tensor>> written_;
};

void max_pool_forward_cpu(const at::Tensor& input, const at::Tensor& output,
                          const at::Tensor& indices, const Window2d& w) {
  if (input.scalar_type() == at::kHalf) {
    Float32Copies f;
    max_pool_forward_cpu(f.read(input), f.write(output), indices, w);
    return f.copy_back();
  }
  ROLLCONV_DISPATCH_CPU(input.scalar_type(), "rollconv_max_pool_cpu", [&] {
    max_pool_forward_loops<scalar_t, at::opmath_type<scalar_t>>(
        input.const_data_ptr<scalar_t>(), output.data_ptr<scalar_t>(), indices.data_ptr<int64_t>(),
        input.size(0), w);
  });
}

void max_pool_backward_cpu(const at::Tensor& grad_output, const at::Tensor& indices,
                           const at::Tensor& grad_input, const Window2d& w) {
  if (grad_output.scalar_type() == at::kHalf) {
    Float32Copies f;
    max_pool_backward_cpu(f.read(grad_output), indices, f.write(grad_input), w);
    return f.copy_back();
  }
  ROLLCONV_DISPATCH_CPU(grad_output.scalar_type(), "rollconv_max_pool_backward_cpu", [&] {
    max_pool_backward_loops<scalar_t, at::opmath_type<scalar_t>>(
        grad_output.const_data_ptr<scalar_t>(), indices.const_data_ptr<int64_t>(),
        grad_input.data_ptr<scalar_t>(), grad_input.size(0), w);
  });
}

void lrn_forward_cpu(const at::Tensor& input, const at::Tensor& output, const LrnParams& p) {
  if (input.scalar_type() == at::kHalf) {
    Float32Copies f;
    lrn_forward_cpu(f.read(input), f.write(output), p);
    return f.copy_back();
  }
  const int64_t n = input.size(0), s = input.size(2);
  ROLLCONV_DISPATCH_CPU(input.scalar_type(), "rollconv_lrn_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x = input.const_data_ptr<scalar_t>();
    scalar_t* y = output.data_ptr<scalar_t>();
    for_each_lrn_element(n, p.channels, s, p.size, [&](int64_t column, int64_t c, int64_t e) {
      y[e] = static_cast<scalar_t>(lrn_value<scalar_t, acc_t>(x + column, s, p, c));
    });
  });
}

void lrn_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& own,
                      const at::Tensor& term, const at::Tensor& grad_input, const LrnParams& p) {
  if (input.scalar_type() == at::kHalf) {
    Float32Copies f;
    lrn_backward_cpu(f.read(grad_output), f.read(input), own, term, f.write(grad_input), p);
    return f.copy_back();
  }
  const int64_t n = input.size(0), s = input.size(2);
  ROLLCONV_DISPATCH_CPU(input.scalar_type(), "rollconv_lrn_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x = input.const_data_ptr<scalar_t>();
    const scalar_t* gy = grad_output.const_data_ptr<scalar_t>();
    acc_t* own_ = own.data_ptr<acc_t>();
    acc_t* term_ = term.data_ptr<acc_t>();
    scalar_t* gx = grad_input.data_ptr<scalar_t>();
    for_each_lrn_element(n, p.channels, s, p.size, [&](int64_t column, int64_t c, int64_t e) {
      lrn_grad_terms<scalar_t, acc_t>(gy + column, x + column, s, p, c, own_ + e, term_ + e);
    });
    for_each_lrn_element(n, p.channels, s, p.size, [&](int64_t column, int64_t c, int64_t e) {
      gx[e] = static_cast<scalar_t>(lrn_grad_combine<scalar_t, acc_t>(own_ + column, term_ + column, x + column, s, p, c));
    });
  });
}

}  // namespace

const DevicePrimitives& cpu_primitives() {
  static const DevicePrimitives primitives{
      "CPU",
      /*supports_reduced_precision=*/true,
      &cpu_conv_engine(),
      &cpu_roll_fft_engine(),
      im2col_cpu,
      col2im_cpu,
      max_pool_forward_cpu,
      max_pool_backward_cpu,
      lrn_forward_cpu,
      lrn_backward_cpu,
      fft_forward_cpu,
      fft_backward_input_cpu,
      fft_backward_weight_cpu,
  };
  return primitives;
}

}  // namespace rollconv

TORCH_LIBRARY_IMPL(rollconv, CPU, m) {
  // The engines are float32/float64: float16/bfloat16 convolutions run them in float32.
  rollconv::register_device_kernels<&rollconv::cpu_primitives, rollconv::ReducedPrecision::kInFloat32>(m);
}
