// Every rollconv op, written once against the DeviceKernels table. The schemas are in
// csrc/registration.cpp; common/register_kernels.h binds these to each device.
#pragma once

#include <array>
#include <optional>
#include <tuple>

#include <ATen/core/Tensor.h>

#include "common/device_kernels.h"

namespace rollconv::ops {

using at::IntArrayRef;
using at::Tensor;

// --- convolution by im2col + GEMM (groups as GEMM blocks) -------------------------------
Tensor conv2d_forward(const DeviceKernels& k, const Tensor& input, const Tensor& weight,
                      const std::optional<Tensor>& bias, IntArrayRef stride, IntArrayRef padding,
                      IntArrayRef dilation, int64_t groups);
Tensor conv2d_backward_input(const DeviceKernels& k, const Tensor& grad_output,
                             const Tensor& weight, IntArrayRef input_size, IntArrayRef stride,
                             IntArrayRef padding, IntArrayRef dilation, int64_t groups);
Tensor conv2d_backward_weight(const DeviceKernels& k, const Tensor& grad_output,
                              const Tensor& input, IntArrayRef kernel_size, IntArrayRef stride,
                              IntArrayRef padding, IntArrayRef dilation, int64_t groups);
// Bias gradient: grad_output summed over every dim but 1, whose entries are folded modulo
// `channels` (rolling convolution: R*F output channels share F biases).
Tensor bias_backward(const DeviceKernels& k, const Tensor& grad_output, int64_t channels);

// --- rolling-filter convolution (rolls as GEMM blocks over one shared im2col) -----------
// Roll r moves the filter by r * shift input channels (shift divides C; rolls <= C / shift).
// algorithm "direct": the block GEMMs above; "bank": the expanded filter bank through
// ATen's convolution (oneDNN on CPU, cuDNN on CUDA), dK folded back by a gather; "fft":
// rfft over the blocks of `shift` channels, our per-frequency complex passes, irfft
// (rolls == C / shift).
Tensor roll_conv2d_forward(const DeviceKernels& k, const Tensor& input, const Tensor& weight,
                           const std::optional<Tensor>& bias, IntArrayRef stride,
                           IntArrayRef padding, IntArrayRef dilation, int64_t rolls, int64_t shift,
                           c10::string_view algorithm, bool relu);
Tensor roll_conv2d_backward_input(const DeviceKernels& k, const Tensor& grad_output,
                                  const Tensor& weight, IntArrayRef input_size,
                                  IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
                                  int64_t rolls, int64_t shift, c10::string_view algorithm);
Tensor roll_conv2d_backward_weight(const DeviceKernels& k, const Tensor& grad_output,
                                   const Tensor& input, IntArrayRef kernel_size,
                                   IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
                                   int64_t rolls, int64_t shift, c10::string_view algorithm);

// The backward of roll_conv2d when several gradients are needed (common/roll_backward.cpp):
// grad_output is first masked where output <= 0 when the forward fused ReLU (output: its
// result; nullopt: no ReLU), then (grad_input, grad_weight, grad_bias) as the passes above and
// bias_backward(masked, F) compute them, each undefined unless output_mask asks for it. On a
// device whose fused channel-FFT engine serves the configuration, grad_output is read and
// transformed once for all three.
std::tuple<Tensor, Tensor, Tensor> roll_conv2d_backward(
    const DeviceKernels& k, const Tensor& grad_output, const Tensor& input, const Tensor& weight,
    const std::optional<Tensor>& output, IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
    int64_t rolls, int64_t shift, c10::string_view algorithm, std::array<bool, 3> output_mask);

namespace detail {  // shared by the rolling convolution's op bodies
// The window of roll_conv2d(input, weight) with this geometry, checked as the forward checks it.
Window2d roll_window(const char* op, const Tensor& input, const Tensor& weight, IntArrayRef stride,
                    IntArrayRef padding, IntArrayRef dilation, int64_t rolls, int64_t shift);
// Whether `algorithm` (checked) runs on the device's fused channel-FFT engine for operands like t.
bool roll_runs_fused_fft(const char* op, const DeviceKernels& k, const Tensor& t, c10::string_view algorithm,
                         int64_t rolls, int64_t shift, int64_t channels, const Window2d& w);
// The fused engine's taps: the weight's rfft over its channels, (F, kh, kw, C/2 + 1) complex.
Tensor roll_fft_taps(const Tensor& weight);
// dK (F, C, kh, kw) from the spectrum the fused engine accumulates, (F, kh, kw, C/2 + 1).
Tensor roll_fft_weight_from_taps(const Tensor& grad_taps, int64_t channels);
}  // namespace detail

// --- max pooling -------------------------------------------------------------------------
std::tuple<Tensor, Tensor> max_pool2d_forward(const DeviceKernels& k, const Tensor& input,
                                              IntArrayRef kernel_size, IntArrayRef stride,
                                              IntArrayRef padding, IntArrayRef dilation,
                                              bool ceil_mode);
Tensor max_pool2d_backward(const DeviceKernels& k, const Tensor& grad_output,
                           const Tensor& indices, IntArrayRef input_size, IntArrayRef kernel_size,
                           IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation);

// --- local response normalization --------------------------------------------------------
Tensor local_response_norm_forward(const DeviceKernels& k, const Tensor& input, int64_t size,
                                   double alpha, double beta, double k_);
Tensor local_response_norm_backward(const DeviceKernels& k, const Tensor& grad_output,
                                    const Tensor& input, int64_t size, double alpha, double beta,
                                    double k_);

}  // namespace rollconv::ops
