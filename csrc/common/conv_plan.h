// The block-GEMM plans of the two convolutions, shared by every device and algorithm.
//
// Both are "block GEMMs" over one column matrix (rows: channel x tap, columns: the output
// pixels of a chunk of samples; ColumnLayout in index_math.h), each block a 2-D GEMM on a
// row window of it:
//   conv2d, G groups: block g = output channels [g*Fg, (g+1)*Fg), its own weight rows,
//                     column rows of channels [g*Cg, (g+1)*Cg).
//   roll_conv2d, R rolls of S channels (the shift): output channel r*F + f (roll-major)
//                     reads channel (c + r*S) mod C with weight w[f, c], i.e. column rows
//                     of *virtual* channels [r*S, r*S + C) of a column matrix with
//                     C + (R-1)*S virtual channels (v reads v mod C). Rolling the filter
//                     is a shift of the row window: one im2col serves every roll and the
//                     filter bank is never built. To give small-F layers a GEMM with
//                     enough rows, G consecutive rolls form one block whose weight is a
//                     "roll band" of G copies of w, each S channels further
//                     (G*F x (C+(G-1)*S)*K, zeros elsewhere; see roll_band).
// The passes that run a plan are in conv_gemm.h.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

#include "common/checks.h"
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

namespace ops {

// A convolution's column layout and block plan.
struct ConvSetup {
  ColumnLayout layout;
  BlockPlan plan;
};

// (h, w) of a 4-D tensor.
Pair spatial(const at::Tensor& t);

// conv2d: one block per group. Checks groups against the channels and the window's
// arguments (conv_window).
ConvSetup conv2d_setup(const char* op, int64_t channels, int64_t out_channels,
                       int64_t weight_in_channels, Pair input_hw, Pair kernel, at::IntArrayRef stride,
                       at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups);

// roll_conv2d: blocks of G consecutive rolls. Checks the roll shape (at least one channel,
// shift divides C, rolls in [1, C / shift]) and the window's arguments.
ConvSetup roll_setup(const char* op, int64_t channels, int64_t filters, int64_t weight_channels,
                     Pair input_hw, Pair kernel, at::IntArrayRef stride, at::IntArrayRef padding,
                     at::IntArrayRef dilation, int64_t rolls, int64_t shift);

// The roll band of G rolls: band[g*F + f, (v, tap)] = w[f, v - g*S, tap] for
// 0 <= v - g*S < C, zero elsewhere; rows (g, f) are output channels (r0 + g) * F + f of a
// block at r0.
at::Tensor roll_band(const at::Tensor& weight, const BlockPlan& plan, int64_t shift);

// The adjoint of roll_band: dw[f, (c, tap)] = sum_g dband[g*F + f, (c + g*S, tap)].
at::Tensor fold_roll_band(const at::Tensor& grad_band, int64_t filters, int64_t channels, int64_t shift,
                          Pair kernel);

}  // namespace ops
}  // namespace rollconv
