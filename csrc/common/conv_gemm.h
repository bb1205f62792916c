// The block-GEMM passes of a plan (conv_plan.h): the device's fused convolution engine when
// it serves the dtype, otherwise per chunk of samples im2col into a workspace and ATen GEMMs
// (at::mm: cuBLAS on CUDA). conv2d runs them with its groups' plan, roll_conv2d's
// algorithm 'direct' with the roll band's.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "common/conv_plan.h"
#include "common/device_primitives.h"

namespace rollconv::ops {

// Whether the device's fused convolution engine runs for tensors like t.
bool uses_conv_engine(const DevicePrimitives& prims, const at::Tensor& t);

// y = relu?(W * im2col(x) + bias) per block: (N, plan.out_channels, oh, ow), contiguous.
// weight_mat: (plan.weight_rows, plan.weight_cols); bias: (plan.bias_period,) or none.
at::Tensor gemm_conv_forward(const DevicePrimitives& prims, const at::Tensor& input, const at::Tensor& weight_mat,
                             const std::optional<at::Tensor>& bias, const ColumnLayout& layout,
                             const BlockPlan& plan, bool relu);

// dX = col2im(W^T * dY) per block; blocks that share column rows accumulate.
at::Tensor gemm_conv_backward_input(const DevicePrimitives& prims, const at::Tensor& grad_output,
                                    const at::Tensor& weight_mat, const ColumnLayout& layout,
                                    const BlockPlan& plan);

// dW = dY * im2col(x)^T per block, summed over the batch in a fixed order; blocks that
// share weight rows (rolls) accumulate. (plan.weight_rows, plan.weight_cols), in the
// accumulation dtype (float32 for float16/bfloat16).
at::Tensor gemm_conv_backward_weight(const DevicePrimitives& prims, const at::Tensor& grad_output,
                                     const at::Tensor& input, const ColumnLayout& layout,
                                     const BlockPlan& plan);

}  // namespace rollconv::ops
