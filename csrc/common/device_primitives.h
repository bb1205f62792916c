// The per-device primitives. Every op is written once (common/*.cpp) against this
// table; cpu/ and cuda/ each provide one instance. Only these functions differ
// between devices. The convolutions' GEMMs go through the device's fused engine when it
// has one (CPU: cpu/conv_engine.cpp) and through ATen otherwise (cuBLAS on CUDA).
#pragma once

#include <ATen/core/Tensor.h>

#include "common/conv_engine.h"
#include "common/index_math.h"
#include "common/lrn_formulas.h"

namespace rollconv {

struct DevicePrimitives {
  const char* device_name;
  bool supports_reduced_precision;  // float16 / bfloat16 inputs
  const ConvEngine* conv_engine;          // null: im2col + ATen GEMMs (see conv_engine.h)
  const RollFftEngine* roll_fft_engine;  // null: ATen FFTs + the fft_* primitives below

  // images (B, C, H, W) contiguous  ->  cols (column_rows, B * column_cols) contiguous
  void (*im2col)(const at::Tensor& images, const at::Tensor& cols, const ColumnLayout& layout);
  // cols (column_rows, B * column_cols)  ->  images (B, C, H, W), overwritten (a gather)
  void (*col2im)(const at::Tensor& cols, const at::Tensor& images, const ColumnLayout& layout);
  // input (P, H, W) planes -> output and indices (P, out_h, out_w)
  void (*max_pool_forward)(const at::Tensor& input, const at::Tensor& output,
                           const at::Tensor& indices, const Window2d& window);
  // grad_output, indices (P, out_h, out_w) -> grad_input (P, H, W), overwritten
  void (*max_pool_backward)(const at::Tensor& grad_output, const at::Tensor& indices,
                            const at::Tensor& grad_input, const Window2d& window);
  // input (N, C, S) -> output (N, C, S)
  void (*lrn_forward)(const at::Tensor& input, const at::Tensor& output, const LrnParams& params);
  // own and term: (N, C, S) scratch in the accumulation dtype (see lrn_grad_terms)
  void (*lrn_backward)(const at::Tensor& grad_output, const at::Tensor& input,
                       const at::Tensor& own, const at::Tensor& term,
                       const at::Tensor& grad_input, const LrnParams& params);
  // The channel-FFT rolling convolution's per-frequency passes (complex tensors, see
  // fft_sums.h): spectrum X (N, H, W, S, K), taps T (F, kh, kw, S, K), Y / dY
  // (N, oh, ow, F, K), S the shift of a roll.
  void (*fft_forward)(const at::Tensor& spectrum, const at::Tensor& taps, const at::Tensor& out,
                      const Window2d& window);
  void (*fft_backward_input)(const at::Tensor& grad, const at::Tensor& taps,
                             const at::Tensor& grad_spectrum, const Window2d& window);
  void (*fft_backward_weight)(const at::Tensor& spectrum, const at::Tensor& grad,
                              const at::Tensor& grad_taps, const Window2d& window);
};

const DevicePrimitives& cpu_primitives();
const ConvEngine& cpu_conv_engine();
const RollFftEngine& cpu_roll_fft_engine();
// cuda/primitives.cu: in a CUDA build, and in the emulated CUDA build (compiled for the host).
#if defined(ROLLCONV_WITH_CUDA) || defined(ROLLCONV_EMULATE_CUDA)
const DevicePrimitives& cuda_primitives();
#endif

}  // namespace rollconv
