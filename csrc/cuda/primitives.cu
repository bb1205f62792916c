// CUDA primitives: one grid-stride loop per primitive, one thread per output element,
// calling the same math as the CPU loops (common/index_math.h and beside it). Gathers only,
// no atomics, so results are deterministic. Launched on the current stream (cuda/launch.h;
// the emulated CUDA build runs the same launches on the host).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/util/complex.h>

#include "common/device_primitives.h"
#include "common/fft_sums.h"
#include "common/lrn_formulas.h"
#include "common/max_pool_rules.h"
#include "cuda/launch.h"

namespace rollconv {
namespace {

#define ROLLCONV_DISPATCH(type, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, type, name, __VA_ARGS__)

void im2col_cuda(const at::Tensor& images, const at::Tensor& cols, const ColumnLayout& L) {
  const int64_t batch = images.size(0), ncols = column_cols(L);
  const int64_t image_numel = L.channels * L.win.in_h * L.win.in_w;
  ROLLCONV_DISPATCH(images.scalar_type(), "rollconv_im2col_cuda", [&] {
    const scalar_t* x = images.const_data_ptr<scalar_t>();
    scalar_t* out = cols.data_ptr<scalar_t>();
    launch(images, cols.numel(), [=] __device__(int64_t i) {
      const int64_t col = i % ncols;
      const int64_t b = (i / ncols) % batch;
      const int64_t row = i / (ncols * batch);
      out[i] = im2col_value(x + b * image_numel, L.win, column_row_source(L, row),
                            col / L.win.out_w, col % L.win.out_w);
    });
  });
}

void col2im_cuda(const at::Tensor& cols, const at::Tensor& images, const ColumnLayout& L) {
  const int64_t ncols = column_cols(L), row_stride = images.size(0) * ncols;
  const int64_t w_ = L.win.in_w, h_ = L.win.in_h, c_ = L.channels;
  ROLLCONV_DISPATCH(cols.scalar_type(), "rollconv_col2im_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* src = cols.const_data_ptr<scalar_t>();
    scalar_t* x = images.data_ptr<scalar_t>();
    launch(images, images.numel(), [=] __device__(int64_t i) {
      const int64_t w = i % w_;
      const int64_t h = (i / w_) % h_;
      const int64_t c = (i / (w_ * h_)) % c_;
      const int64_t b = i / (w_ * h_ * c_);
      x[i] = static_cast<scalar_t>(
          col2im_gather<scalar_t, acc_t>(src + b * ncols, row_stride, L, c, h, w));
    });
  });
}

void max_pool_forward_cuda(const at::Tensor& input, const at::Tensor& output,
                           const at::Tensor& indices, const Window2d& w) {
  ROLLCONV_DISPATCH(input.scalar_type(), "rollconv_max_pool_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x = input.const_data_ptr<scalar_t>();
    scalar_t* y = output.data_ptr<scalar_t>();
    int64_t* idx = indices.data_ptr<int64_t>();
    launch(input, output.numel(), [=] __device__(int64_t i) {
      const int64_t ow = i % w.out_w;
      const int64_t oh = (i / w.out_w) % w.out_h;
      const int64_t p = i / (w.out_w * w.out_h);
      max_pool_window<scalar_t, acc_t>(x + p * w.in_h * w.in_w, w, oh, ow, y + i, idx + i);
    });
  });
}

void max_pool_backward_cuda(const at::Tensor& grad_output, const at::Tensor& indices,
                            const at::Tensor& grad_input, const Window2d& w) {
  const int64_t out_plane = w.out_h * w.out_w;
  ROLLCONV_DISPATCH(grad_output.scalar_type(), "rollconv_max_pool_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gy = grad_output.const_data_ptr<scalar_t>();
    const int64_t* idx = indices.const_data_ptr<int64_t>();
    scalar_t* gx = grad_input.data_ptr<scalar_t>();
    launch(grad_input, grad_input.numel(), [=] __device__(int64_t i) {
      const int64_t x = i % w.in_w;
      const int64_t h = (i / w.in_w) % w.in_h;
      const int64_t p = i / (w.in_w * w.in_h);
      gx[i] = static_cast<scalar_t>(
          max_pool_gather<scalar_t, acc_t>(gy + p * out_plane, idx + p * out_plane, w, h, x));
    });
  });
}

// LRN: element i of an (N, C, S) tensor is channel c of the column starting at `column`.
struct LrnIndex {
  int64_t s_, c_;
  __device__ int64_t channel(int64_t i) const { return (i / s_) % c_; }
  __device__ int64_t column(int64_t i) const { return (i / (s_ * c_)) * c_ * s_ + i % s_; }
};

void lrn_forward_cuda(const at::Tensor& input, const at::Tensor& output, const LrnParams& p) {
  const int64_t s = input.size(2);
  const LrnIndex at_{s, p.channels};
  ROLLCONV_DISPATCH(input.scalar_type(), "rollconv_lrn_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x = input.const_data_ptr<scalar_t>();
    scalar_t* y = output.data_ptr<scalar_t>();
    launch(input, input.numel(), [=] __device__(int64_t i) {
      y[i] = static_cast<scalar_t>(lrn_value<scalar_t, acc_t>(x + at_.column(i), s, p, at_.channel(i)));
    });
  });
}

void lrn_backward_cuda(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& own,
                       const at::Tensor& term, const at::Tensor& grad_input, const LrnParams& p) {
  const int64_t s = input.size(2);
  const LrnIndex at_{s, p.channels};
  ROLLCONV_DISPATCH(input.scalar_type(), "rollconv_lrn_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x = input.const_data_ptr<scalar_t>();
    const scalar_t* gy = grad_output.const_data_ptr<scalar_t>();
    acc_t* own_ = own.data_ptr<acc_t>();
    acc_t* term_ = term.data_ptr<acc_t>();
    scalar_t* gx = grad_input.data_ptr<scalar_t>();
    launch(input, input.numel(), [=] __device__(int64_t i) {
      const int64_t col = at_.column(i);
      lrn_grad_terms<scalar_t, acc_t>(gy + col, x + col, s, p, at_.channel(i), own_ + i, term_ + i);
    });
    launch(input, input.numel(), [=] __device__(int64_t i) {
      const int64_t col = at_.column(i);
      gx[i] = static_cast<scalar_t>(
          lrn_grad_combine<scalar_t, acc_t>(own_ + col, term_ + col, x + col, s, p, at_.channel(i)));
    });
  });
}

// Channel-FFT per-frequency passes, one thread per output element (frequency fastest).
// Spectrum X (N, H, W, S, K), taps T (F, kh, kw, S, K), Y / dY (N, oh, ow, F, K).
void fft_forward_cuda(const at::Tensor& spectrum, const at::Tensor& taps, const at::Tensor& out,
                      const Window2d& w) {
  const int64_t filters = taps.size(0), inputs = taps.size(3), freqs = taps.size(4);
  const int64_t kk = w.kernel_h * w.kernel_w, in_size = w.in_h * w.in_w * inputs * freqs;
  AT_DISPATCH_COMPLEX_TYPES(spectrum.scalar_type(), "rollconv_fft_forward_cuda", [&] {
    const scalar_t* x = spectrum.const_data_ptr<scalar_t>();
    const scalar_t* t = taps.const_data_ptr<scalar_t>();
    scalar_t* y = out.data_ptr<scalar_t>();
    launch(spectrum, out.numel(), [=] __device__(int64_t i) {
      const int64_t k = i % freqs, f = (i / freqs) % filters;
      const int64_t pixel = i / (freqs * filters);  // (n * out_h + oh) * out_w + ow
      const int64_t ow = pixel % w.out_w, oh = (pixel / w.out_w) % w.out_h, n = pixel / (w.out_w * w.out_h);
      fft_forward_span(y + i, x + n * in_size + k, t + f * kk * inputs * freqs + k, inputs, freqs, 1, w, oh, ow);
    });
  });
}

void fft_backward_input_cuda(const at::Tensor& grad, const at::Tensor& taps,
                             const at::Tensor& grad_spectrum, const Window2d& w) {
  const int64_t filters = taps.size(0), inputs = taps.size(3), freqs = taps.size(4);
  AT_DISPATCH_COMPLEX_TYPES(grad.scalar_type(), "rollconv_fft_backward_input_cuda", [&] {
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    const scalar_t* t = taps.const_data_ptr<scalar_t>();
    scalar_t* dst = grad_spectrum.data_ptr<scalar_t>();
    launch(grad, grad_spectrum.numel(), [=] __device__(int64_t i) {
      const int64_t k = i % freqs, s = (i / freqs) % inputs, pixel = i / (freqs * inputs);
      const int64_t x = pixel % w.in_w, h = (pixel / w.in_w) % w.in_h, n = pixel / (w.in_w * w.in_h);
      fft_input_grad_span(dst + i, g + n * w.out_h * w.out_w * filters * freqs + k, t + s * freqs + k, filters,
                          inputs, freqs, 1, w, h, x);
    });
  });
}

void fft_backward_weight_cuda(const at::Tensor& spectrum, const at::Tensor& grad,
                              const at::Tensor& grad_taps, const Window2d& w) {
  const int64_t batch = spectrum.size(0), filters = grad_taps.size(0);
  const int64_t inputs = grad_taps.size(3), freqs = grad_taps.size(4), kk = w.kernel_h * w.kernel_w;
  AT_DISPATCH_COMPLEX_TYPES(spectrum.scalar_type(), "rollconv_fft_backward_weight_cuda", [&] {
    const scalar_t* x = spectrum.const_data_ptr<scalar_t>();
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    scalar_t* dst = grad_taps.data_ptr<scalar_t>();
    launch(spectrum, grad_taps.numel(), [=] __device__(int64_t i) {
      const int64_t k = i % freqs, s = (i / freqs) % inputs, tap = (i / (freqs * inputs)) % kk;
      const int64_t f = i / (freqs * inputs * kk);
      fft_weight_grad_span(dst + i, x + s * freqs + k, g + f * freqs + k, batch, filters, inputs, freqs, 1, w,
                           tap / w.kernel_w, tap % w.kernel_w);
    });
  });
}

}  // namespace

const DevicePrimitives& cuda_primitives() {
  static const DevicePrimitives primitives{
      "CUDA",
      /*supports_reduced_precision=*/true,
      /*conv_engine=*/nullptr,  // convolutions: im2col + cuBLAS through ATen
      /*roll_fft_engine=*/nullptr,  // channel FFTs through cuFFT (ATen) + the fft_* primitives
      im2col_cuda,
      col2im_cuda,
      max_pool_forward_cuda,
      max_pool_backward_cuda,
      lrn_forward_cuda,
      lrn_backward_cuda,
      fft_forward_cuda,
      fft_backward_input_cuda,
      fft_backward_weight_cuda,
  };
  return primitives;
}

}  // namespace rollconv
