// Every rollconv op, written once against the DevicePrimitives table. The schemas are in
// csrc/registration.cpp; common/register_kernels.h binds these to each device.
#pragma once

#include <array>
#include <optional>
#include <tuple>

#include <ATen/core/Tensor.h>

#include "common/device_primitives.h"

namespace rollconv::ops {

using at::IntArrayRef;
using at::Tensor;

// --- convolution by im2col + GEMM (groups as GEMM blocks) -------------------------------
Tensor conv2d_forward(const DevicePrimitives& prims, const Tensor& input, const Tensor& weight,
                      const std::optional<Tensor>& bias, IntArrayRef stride, IntArrayRef padding,
                      IntArrayRef dilation, int64_t groups);
Tensor conv2d_backward_input(const DevicePrimitives& prims, const Tensor& grad_output,
                             const Tensor& weight, IntArrayRef input_size, IntArrayRef stride,
                             IntArrayRef padding, IntArrayRef dilation, int64_t groups);
Tensor conv2d_backward_weight(const DevicePrimitives& prims, const Tensor& grad_output,
                              const Tensor& input, IntArrayRef kernel_size, IntArrayRef stride,
                              IntArrayRef padding, IntArrayRef dilation, int64_t groups);
// Bias gradient: grad_output summed over every dim but 1, whose entries are folded modulo
// `channels` (rolling convolution: R*F output channels share F biases).
Tensor bias_backward(const DevicePrimitives& prims, const Tensor& grad_output, int64_t channels);
// Its forward counterpart: the (period,) bias tiled to one entry per output channel, channel c
// getting bias[c % period] ((out_channels,), contiguous; period divides out_channels).
Tensor bias_per_channel(const Tensor& bias, int64_t out_channels);

// --- rolling-filter convolution (rolls as GEMM blocks over one shared im2col) -----------
// Roll r moves the filter by r * shift input channels (shift divides C; rolls <= C / shift).
// algorithm "direct": the block GEMMs above; "bank": the expanded filter bank through
// ATen's convolution (oneDNN on CPU, cuDNN on CUDA), dK folded back by a gather; "fft":
// rfft over the blocks of `shift` channels, our per-frequency complex passes, irfft
// (rolls == C / shift).
Tensor roll_conv2d_forward(const DevicePrimitives& prims, const Tensor& input, const Tensor& weight,
                           const std::optional<Tensor>& bias, IntArrayRef stride,
                           IntArrayRef padding, IntArrayRef dilation, int64_t rolls, int64_t shift,
                           c10::string_view algorithm, bool relu);
Tensor roll_conv2d_backward_input(const DevicePrimitives& prims, const Tensor& grad_output,
                                  const Tensor& weight, IntArrayRef input_size,
                                  IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
                                  int64_t rolls, int64_t shift, c10::string_view algorithm);
Tensor roll_conv2d_backward_weight(const DevicePrimitives& prims, const Tensor& grad_output,
                                   const Tensor& input, IntArrayRef kernel_size,
                                   IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
                                   int64_t rolls, int64_t shift, c10::string_view algorithm);

// The backward of roll_conv2d when several gradients are needed: grad_output is first masked
// where output <= 0 when the forward fused ReLU (output: its result; nullopt: no ReLU), then
// (grad_input, grad_weight, grad_bias) as the passes above and bias_backward(masked, F)
// compute them, each undefined unless output_mask asks for it. On a device whose fused
// channel-FFT engine serves the configuration, grad_output is read and transformed once for
// all three (roll_fft.h).
std::tuple<Tensor, Tensor, Tensor> roll_conv2d_backward(
    const DevicePrimitives& prims, const Tensor& grad_output, const Tensor& input, const Tensor& weight,
    const std::optional<Tensor>& output, IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
    int64_t rolls, int64_t shift, c10::string_view algorithm, std::array<bool, 3> output_mask);

// --- max pooling -------------------------------------------------------------------------
std::tuple<Tensor, Tensor> max_pool2d_forward(const DevicePrimitives& prims, const Tensor& input,
                                              IntArrayRef kernel_size, IntArrayRef stride,
                                              IntArrayRef padding, IntArrayRef dilation,
                                              bool ceil_mode);
Tensor max_pool2d_backward(const DevicePrimitives& prims, const Tensor& grad_output,
                           const Tensor& indices, IntArrayRef input_size, IntArrayRef kernel_size,
                           IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation);

// --- local response normalization --------------------------------------------------------
Tensor local_response_norm_forward(const DevicePrimitives& prims, const Tensor& input, int64_t size,
                                   double alpha, double beta, double k);
Tensor local_response_norm_backward(const DevicePrimitives& prims, const Tensor& grad_output,
                                    const Tensor& input, int64_t size, double alpha, double beta,
                                    double k);

}  // namespace rollconv::ops
