// The block-GEMM plan of a convolution (shared by every device) and the interface of a
// device's fused convolution engine: im2col fused into the GEMM's packing, so no column
// matrix is built. The CPU has one (cpu/conv_engine.cpp); a device without one (CUDA)
// leaves DeviceKernels::engine null and conv.cpp runs im2col + ATen GEMMs instead.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

#include "common/index_math.h"

namespace rollconv {

// One GEMM of a convolution: output rows [out_row, out_row + rows) = weight-matrix rows
// [weight_row, + rows), columns [0, inner), times column-matrix rows [col_row, + inner)
// (rows of the ColumnLayout: virtual channel x tap).
struct GemmBlock {
  int64_t out_row, rows, weight_row, col_row, inner;
};

struct BlockPlan {
  std::vector<GemmBlock> blocks;
  int64_t out_channels;
  int64_t bias_period;  // the bias has this many entries, repeated over the channels
  int64_t weight_rows, weight_cols;  // shape of the GEMM weight matrix
  bool shared_columns;  // blocks read overlapping column rows (rolls): dX accumulates
};

// The three passes, on contiguous tensors of one dtype (float32 / float64, see supports):
//   forward:         output (N, out_channels, oh, ow) = relu?(W * im2col(input) + bias_rows)
//                    bias_rows: undefined, or one entry per output channel;
//   backward_input:  grad_input (N, C, H, W) = col2im(W^T * grad_output);
//   backward_weight: grad_weight (weight_rows, weight_cols) += grad_output * im2col(input)^T.
// weight_mat is (weight_rows, weight_cols). Deterministic: the same inputs and thread count
// give bitwise the same result.
struct ConvEngine {
  bool (*supports)(at::ScalarType dtype);
  void (*forward)(const at::Tensor& input, const at::Tensor& weight_mat, const at::Tensor& bias_rows,
                  const ColumnLayout& layout, const BlockPlan& plan, bool relu, const at::Tensor& output);
  void (*backward_input)(const at::Tensor& grad_output, const at::Tensor& weight_mat,
                         const ColumnLayout& layout, const BlockPlan& plan, const at::Tensor& grad_input);
  void (*backward_weight)(const at::Tensor& grad_output, const at::Tensor& input,
                          const ColumnLayout& layout, const BlockPlan& plan, const at::Tensor& grad_weight);
};

}  // namespace rollconv
