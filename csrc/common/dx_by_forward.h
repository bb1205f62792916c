// A stride-1 convolution's dX as a forward convolution: dX is the forward convolution of
// dY with the flipped, transposed weight and padding dil * (k - 1) - pad, so a device's
// fused engine (whose forward reads a stride-1 convolution's B in place from the padded
// image) runs it instead of a GEMM and a col2im. conv2d's dX and roll_conv2d's
// 'direct' dX (with the expanded bank) take it where use_dx_by_forward says so.
#pragma once

#include <ATen/core/Tensor.h>

#include "common/device_primitives.h"

namespace rollconv::ops {

// Stride 1, padding within the kernel's reach, more than one tap, and an engine for the
// dtype. (With a 1x1 kernel the col2im path, then a plain copy, stays.)
bool use_dx_by_forward(const DevicePrimitives& prims, const at::Tensor& grad_output, const Window2d& w);

// dX of the convolution with `weight` (cout, cin / groups, kh, kw) and window w.
at::Tensor dx_by_forward(const DevicePrimitives& prims, const at::Tensor& grad_output, const at::Tensor& weight,
                         int64_t groups, const Window2d& w, at::IntArrayRef dilation);

}  // namespace rollconv::ops
