// The interfaces of a device's fused engines:
//   ConvEngine: im2col fused into the GEMM's packing, so no column matrix is built;
//   RollFftEngine: the channel-FFT rolling convolution in one pass per direction.
// The CPU has both (cpu/conv_engine.cpp, cpu/roll_fft_engine.cpp); a device without one
// (CUDA) leaves its DevicePrimitives pointer null, and the ops compose ATen calls and the
// device's primitives instead (conv_gemm.cpp, roll_fft.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include "common/conv_plan.h"
#include "common/index_math.h"

namespace rollconv {

// The three passes, on contiguous tensors of one dtype (float32 / float64, see supports):
//   forward:         output (N, out_channels, oh, ow) = relu?(W * im2col(input) + bias_rows)
//                    bias_rows: undefined, or one entry per output channel;
//   backward_input:  grad_input (N, C, H, W) = col2im(W^T * grad_output);
//   backward_weight: grad_weight (weight_rows, weight_cols) += grad_output * im2col(input)^T.
// weight_mat is (weight_rows, weight_cols). Deterministic: the same inputs and thread count
// give bitwise the same result.
struct ConvEngine {
  // The dtypes it computes. (Whether the engines run at all is settings::engines_enabled.)
  bool (*supports)(at::ScalarType dtype);
  void (*forward)(const at::Tensor& input, const at::Tensor& weight_mat, const at::Tensor& bias_rows,
                  const ColumnLayout& layout, const BlockPlan& plan, bool relu, const at::Tensor& output);
  void (*backward_input)(const at::Tensor& grad_output, const at::Tensor& weight_mat,
                         const ColumnLayout& layout, const BlockPlan& plan, const at::Tensor& grad_input);
  void (*backward_weight)(const at::Tensor& grad_output, const at::Tensor& input,
                          const ColumnLayout& layout, const BlockPlan& plan, const at::Tensor& grad_weight);
};

// The channel-FFT rolling convolution (rolls == C, fft_sums.h), fused: the channel
// transforms, the per-frequency sums and the inverse transforms run tile by tile, so the
// spectra never make a full pass through memory in their own layout. On contiguous tensors
// of one dtype (float32 / float64, see supports); weight (F, C, kh, kw) (the engine
// transforms it over its channels itself).
//   forward:         output (N, C*F, oh, ow) = relu?(roll_conv2d(input) + bias[f])
//                    (bias: undefined, or (F,));
//   backward_input:  grad_input (N, C, H, W), overwritten;
//   backward_weight: grad_weight (F, C, kh, kw), overwritten.
// Deterministic: the sums have a fixed order, whatever the thread count.
struct RollFftEngine {
  bool (*supports)(at::ScalarType dtype);  // as ConvEngine's
  // Whether its extra memory for this window stays bounded by the input and output sizes
  // (its zero-padded tiles grow with the stride and dilation; where they would not fit,
  // the composed path runs instead, whose memory does not).
  bool (*fits)(const Window2d& window, at::ScalarType dtype);
  void (*forward)(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias,
                  const Window2d& window, bool relu, const at::Tensor& output);
  void (*backward_input)(const at::Tensor& grad_output, const at::Tensor& weight,
                         const Window2d& window, const at::Tensor& grad_input);
  void (*backward_weight)(const at::Tensor& grad_output, const at::Tensor& input,
                          const Window2d& window, const at::Tensor& grad_weight);
  // The whole backward from one transform of grad_output: grad_output masked where
  // output <= 0 (ReLU's derivative; output undefined: no mask), then grad_input (as
  // backward_input), grad_weight (as backward_weight) and grad_bias (F,) (the sum of the
  // masked grad_output over the batch, the rolls and the pixels); each undefined when not
  // wanted. grad_input and grad_weight equal those of the separate passes on the masked
  // grad_output bitwise. grad_output may have any strides (the other operands are contiguous).
  void (*backward)(const at::Tensor& grad_output, const at::Tensor& output, const at::Tensor& input,
                   const at::Tensor& weight, const Window2d& window, const at::Tensor& grad_input,
                   const at::Tensor& grad_weight, const at::Tensor& grad_bias);
};

}  // namespace rollconv
