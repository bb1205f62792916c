// roll_conv2d's algorithm 'bank': the filter bank cat([roll(w, r * shift, dim=1) for r])
// expanded by one gather inside the op, ATen's convolution run on it (oneDNN on CPU, cuDNN
// on CUDA), and the bank's weight gradient folded back onto w.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "common/checks.h"
#include "common/index_math.h"

namespace rollconv::ops {

// bank[r*F + f, c] = w[f, (c - r*S) mod C] (torch.cat of torch.roll(w, r*S, dims=1)), one gather.
at::Tensor expand_bank(const at::Tensor& weight, int64_t rolls, int64_t shift);

// The adjoint: dw[f, c] = sum_r dbank[r*F + f, (c + r*S) mod C], summed over r in order
// (float32 accumulation for half/bfloat16).
at::Tensor fold_bank(const at::Tensor& grad_bank, int64_t rolls, int64_t shift);

// The three passes (validated arguments; window w of the convolution).
at::Tensor roll_bank_forward(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                             at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                             int64_t rolls, int64_t shift, bool relu);
at::Tensor roll_bank_backward_input(const at::Tensor& grad_output, const at::Tensor& weight, const Window2d& w,
                                    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                    int64_t rolls, int64_t shift);
at::Tensor roll_bank_backward_weight(const at::Tensor& grad_output, const at::Tensor& input, Pair kernel,
                                     at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                     int64_t rolls, int64_t shift);

}  // namespace rollconv::ops
