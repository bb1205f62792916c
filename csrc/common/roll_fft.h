// roll_conv2d's algorithm 'fft' (rolls == C / shift): the channel-Fourier domain.
// With rolls of S channels the bank is block-circulant: channel c = g*S + s, and a roll
// moves the G = C / S blocks g. A real FFT over the block index turns it into G/2 + 1
// independent S-input, F-output complex convolutions (fft_sums.h; S = 1: the plain
// channel FFT). A device with a fused engine (CPU: cpu/roll_fft_engine.cpp, S = 1) runs each
// direction in one call; otherwise (CUDA, and the CPU for S > 1) the transforms go through
// ATen (cuFFT / pocketfft) around the device's per-frequency primitives.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <optional>

#include "common/checks.h"
#include "common/device_primitives.h"

namespace rollconv::ops {

// The three passes (validated arguments; window w of the convolution, rolls = C / shift).
at::Tensor roll_fft_forward(const DevicePrimitives& prims, const at::Tensor& input, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, int64_t shift, const Window2d& w, bool relu);
at::Tensor roll_fft_backward_input(const DevicePrimitives& prims, const at::Tensor& grad_output, const at::Tensor& weight,
                                   int64_t shift, const Window2d& w);
at::Tensor roll_fft_backward_weight(const DevicePrimitives& prims, const at::Tensor& grad_output, const at::Tensor& input,
                                    Pair kernel, int64_t shift, const Window2d& w);
// The whole backward in one call of the device's fused engine (RollFftEngine::backward:
// grad_output masked where output <= 0 as it is read, transformed once), when that engine
// serves these operands: sets the gradients output_mask asks for (grad_input, grad_weight,
// grad_bias) and returns true. Returns false, and sets nothing, where it does not (no fused
// engine, shift > 1, the engine off, too large a window).
bool roll_fft_backward_fused(const DevicePrimitives& prims, const at::Tensor& grad_output,
                             const std::optional<at::Tensor>& output, const at::Tensor& input,
                             const at::Tensor& weight, int64_t shift, const Window2d& w,
                             std::array<bool, 3> output_mask, at::Tensor& grad_input, at::Tensor& grad_weight,
                             at::Tensor& grad_bias);

}  // namespace rollconv::ops
