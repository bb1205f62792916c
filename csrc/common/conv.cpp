// Convolution as im2col + GEMM, and the rolling convolution on the same engine.
//
// Both are "block GEMMs" over one column matrix per sample:
//   conv2d, G groups:  block g = output channels [g*Fg, (g+1)*Fg), weight rows likewise,
//                      column rows [g*Cg*K, (g+1)*Cg*K)
//   roll_conv2d, R rolls: block r = output channels [r*F, (r+1)*F) (roll-major), every
//                      block uses the same weight (F x C*K), column rows [r*K, r*K + C*K)
//                      of a column matrix with C + R - 1 virtual channels (v reads v % C).
// So the rolled filter bank is never built: each roll is a row window of one im2col.
// The GEMMs go through ATen (bmm), the im2col/col2im primitives through DeviceKernels.
#include <ATen/ATen.h>

#include <cstdlib>

#include "common/checks.h"
#include "common/ops.h"

namespace rollconv::ops {
namespace {

// Upper bound of the column-matrix workspace: the batch is processed in chunks of
// samples whose columns fit, so memory does not grow with N. 64 MiB unless the
// environment variable ROLLCONV_WORKSPACE_MB says otherwise (read at each call).
int64_t workspace_bytes() {
  const char* env = std::getenv("ROLLCONV_WORKSPACE_MB");
  const int64_t mb = env ? std::max<int64_t>(0, std::atoll(env)) : 64;
  return mb << 20;
}

struct BlockPlan {
  int64_t blocks;         // groups, or rolls
  int64_t out_per_block;  // output channels per block
  int64_t weight_step;    // weight-matrix row offset between blocks (0: shared weight)
  int64_t col_step;       // column-matrix row offset between blocks
  int64_t inner;          // GEMM inner size: columns of the weight matrix
  int64_t bias_period;    // bias has this many entries, repeated across the output channels

  int64_t out_channels() const { return blocks * out_per_block; }
  int64_t weight_rows() const { return weight_step == 0 ? out_per_block : blocks * out_per_block; }
};

// Samples per chunk: the column matrix and the GEMM's (out_channels x columns) result
// of one chunk must fit the workspace.
int64_t samples_per_chunk(int64_t batch, const ColumnLayout& layout, int64_t out_channels,
                          const at::Tensor& like) {
  const int64_t per_sample = std::max<int64_t>(
      1, (column_rows(layout) + out_channels) * column_cols(layout) * like.element_size());
  return std::max<int64_t>(1, std::min<int64_t>(batch, workspace_bytes() / per_sample));
}

at::ScalarType accumulate_type(at::ScalarType t) {
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

// (b, C, L) chunk of an NCHW tensor, seen as the GEMM's (C, b * L) layout.
Tensor channels_first(const Tensor& nchw_chunk) {
  return nchw_chunk.reshape({nchw_chunk.size(0), nchw_chunk.size(1), -1}).transpose(0, 1);
}

// Column matrices are (rows, b * L): one 2-D GEMM per block covers the whole chunk.
//   forward:  Y[blk] = W[blk] @ cols[blk rows]                 (out_per_block x b*L)
//   dX:       dcols[blk rows] (+)= W[blk]^T @ dY[blk]
//   dK:       dW[blk] += dY[blk] @ cols[blk rows]^T
// A block's column rows are a row window of the column matrix: a view, never a copy.

// y = W * im2col(x) per block, then bias and ReLU while copying the chunk into y.
Tensor gemm_conv_forward(const DeviceKernels& k, const Tensor& input_, const Tensor& weight_mat,
                         const std::optional<Tensor>& bias, const ColumnLayout& layout,
                         const BlockPlan& plan, bool relu) {
  const Tensor input = input_.contiguous();
  const int64_t batch = input.size(0);
  const int64_t ncols = column_cols(layout);
  const int64_t cout = plan.out_channels();
  Tensor output = at::empty({batch, cout, layout.win.out_h, layout.win.out_w}, input.options());
  if (batch == 0) return output;
  const int64_t chunk = samples_per_chunk(batch, layout, cout, input);
  Tensor cols = at::empty({column_rows(layout), chunk * ncols}, input.options());
  Tensor result = at::empty({cout, chunk * ncols}, input.options());
  for (int64_t n0 = 0; n0 < batch; n0 += chunk) {
    const int64_t b = std::min(chunk, batch - n0);
    Tensor cols_b = cols.narrow(1, 0, b * ncols);
    Tensor result_b = result.narrow(1, 0, b * ncols);
    k.im2col(input.narrow(0, n0, b), cols_b, layout);
    for (int64_t blk = 0; blk < plan.blocks; ++blk) {
      Tensor target = result_b.narrow(0, blk * plan.out_per_block, plan.out_per_block);
      at::mm_out(target, weight_mat.narrow(0, blk * plan.weight_step, plan.out_per_block),
                 cols_b.narrow(0, blk * plan.col_step, plan.inner));
    }
    if (bias.has_value() && bias->defined()) {
      result_b.view({cout / plan.bias_period, plan.bias_period, b * ncols})
          .add_(bias->view({1, plan.bias_period, 1}));
    }
    Tensor out_b = channels_first(output.narrow(0, n0, b));
    Tensor result_3d = result_b.view({cout, b, ncols});
    if (relu) {
      at::clamp_min_out(out_b, result_3d, 0);
    } else {
      out_b.copy_(result_3d);
    }
  }
  return output;
}

// dX = col2im(W^T * dY) per block; rolls share column rows, so their blocks accumulate.
Tensor gemm_conv_backward_input(const DeviceKernels& k, const Tensor& grad_output,
                                const Tensor& weight_mat, const ColumnLayout& layout,
                                const BlockPlan& plan) {
  const int64_t batch = grad_output.size(0);
  const int64_t ncols = column_cols(layout);
  const int64_t cout = plan.out_channels();
  Tensor grad_input = at::empty({batch, layout.channels, layout.win.in_h, layout.win.in_w},
                                grad_output.options());
  if (batch == 0) return grad_input;
  const bool blocks_overlap = plan.blocks > 1 && plan.col_step < plan.inner;
  const int64_t chunk = samples_per_chunk(batch, layout, cout, grad_output);
  Tensor dcols = at::empty({column_rows(layout), chunk * ncols}, grad_output.options());
  Tensor grad_cf = at::empty({cout, chunk, ncols}, grad_output.options());
  for (int64_t n0 = 0; n0 < batch; n0 += chunk) {
    const int64_t b = std::min(chunk, batch - n0);
    Tensor dcols_b = dcols.narrow(1, 0, b * ncols);
    Tensor grad_b = grad_cf.narrow(1, 0, b);
    grad_b.copy_(channels_first(grad_output.narrow(0, n0, b)));
    Tensor grad_2d = grad_b.view({cout, b * ncols});
    if (blocks_overlap) dcols_b.zero_();
    for (int64_t blk = 0; blk < plan.blocks; ++blk) {
      Tensor wt = weight_mat.narrow(0, blk * plan.weight_step, plan.out_per_block).t();
      Tensor g = grad_2d.narrow(0, blk * plan.out_per_block, plan.out_per_block);
      Tensor target = dcols_b.narrow(0, blk * plan.col_step, plan.inner);
      if (blocks_overlap) {
        target.addmm_(wt, g);
      } else {
        at::mm_out(target, wt, g);
      }
    }
    k.col2im(dcols_b, grad_input.narrow(0, n0, b), layout);
  }
  return grad_input;
}

// dW = dY * im2col(x)^T per block, over the batch; rolls share the weight, so their
// blocks fold onto the same rows (dw[f, c] = sum_r dbank[r*F + f, (c + r) mod C]).
// Fixed order; accumulated in float32 for half/bfloat16.
Tensor gemm_conv_backward_weight(const DeviceKernels& k, const Tensor& grad_output,
                                 const Tensor& input_, const ColumnLayout& layout,
                                 const BlockPlan& plan) {
  const Tensor input = input_.contiguous();
  const int64_t batch = input.size(0);
  const int64_t ncols = column_cols(layout);
  const int64_t cout = plan.out_channels();
  const auto acc = accumulate_type(input.scalar_type());
  Tensor grad_weight = at::zeros({plan.weight_rows(), plan.inner}, input.options().dtype(acc));
  if (batch == 0) return grad_weight.to(input.scalar_type());
  const int64_t chunk = samples_per_chunk(batch, layout, cout, input);
  Tensor cols = at::empty({column_rows(layout), chunk * ncols}, input.options());
  Tensor grad_cf = at::empty({cout, chunk, ncols}, input.options());
  for (int64_t n0 = 0; n0 < batch; n0 += chunk) {
    const int64_t b = std::min(chunk, batch - n0);
    Tensor cols_b = cols.narrow(1, 0, b * ncols);
    k.im2col(input.narrow(0, n0, b), cols_b, layout);
    Tensor grad_b = grad_cf.narrow(1, 0, b);
    grad_b.copy_(channels_first(grad_output.narrow(0, n0, b)));
    Tensor grad_2d = grad_b.view({cout, b * ncols});
    for (int64_t blk = 0; blk < plan.blocks; ++blk) {
      Tensor g = grad_2d.narrow(0, blk * plan.out_per_block, plan.out_per_block);
      Tensor c = cols_b.narrow(0, blk * plan.col_step, plan.inner).t();
      Tensor target = grad_weight.narrow(0, blk * plan.weight_step, plan.out_per_block);
      if (acc == input.scalar_type()) {
        target.addmm_(g, c);
      } else {
        target.add_(at::mm(g, c));
      }
    }
  }
  return grad_weight.to(input.scalar_type());
}

int64_t kernel_area(const Window2d& w) { return w.kernel_h * w.kernel_w; }

void check_bias(const char* op, const std::optional<Tensor>& bias, int64_t expected,
                const Tensor& input) {
  if (!bias.has_value() || !bias->defined()) return;
  TORCH_CHECK(bias->dim() == 1 && bias->size(0) == expected, op, ": expected bias of shape (",
              expected, "), but got ", bias->sizes());
  check_same_kind(op, "bias", *bias, "input", input);
}

// --- conv2d -------------------------------------------------------------------------------

struct ConvSetup {
  ColumnLayout layout;
  BlockPlan plan;
};

ConvSetup conv2d_setup(const char* op, int64_t channels, int64_t out_channels,
                       int64_t weight_in_channels, Pair input_hw, Pair kernel, IntArrayRef stride,
                       IntArrayRef padding, IntArrayRef dilation, int64_t groups) {
  TORCH_CHECK(groups > 0, op, ": groups must be positive, but got ", groups);
  TORCH_CHECK(channels % groups == 0, op, ": groups=", groups,
              " must divide the input channels (", channels, ")");
  TORCH_CHECK(out_channels % groups == 0, op, ": groups=", groups,
              " must divide the output channels (weight.shape[0] = ", out_channels, ")");
  TORCH_CHECK(weight_in_channels * groups == channels, op,
              ": expected input with weight.shape[1] * groups = ", weight_in_channels * groups,
              " channels, but got ", channels, " channels");
  ConvSetup s;
  s.layout.win = conv_window(op, input_hw, kernel, pair_arg(op, "stride", stride),
                             pair_arg(op, "padding", padding), pair_arg(op, "dilation", dilation));
  s.layout.channels = channels;
  s.layout.col_channels = channels;
  const int64_t k_in = weight_in_channels * kernel_area(s.layout.win);
  s.plan = BlockPlan{groups, out_channels / groups, out_channels / groups, k_in, k_in, out_channels};
  return s;
}

// --- roll_conv2d --------------------------------------------------------------------------

ConvSetup roll_setup(const char* op, int64_t channels, int64_t filters, int64_t weight_channels,
                     Pair input_hw, Pair kernel, IntArrayRef stride, IntArrayRef padding,
                     IntArrayRef dilation, int64_t rolls) {
  TORCH_CHECK(weight_channels == channels, op, ": expected weight.shape[1] (", weight_channels,
              ") to equal the input channels (", channels, ")");
  TORCH_CHECK(rolls >= 1 && rolls <= channels, op, ": rolls must be in [1, ", channels,
              "] (the input channels), but got ", rolls);
  ConvSetup s;
  s.layout.win = conv_window(op, input_hw, kernel, pair_arg(op, "stride", stride),
                             pair_arg(op, "padding", padding), pair_arg(op, "dilation", dilation));
  s.layout.channels = channels;
  s.layout.col_channels = channels + rolls - 1;
  const int64_t area = kernel_area(s.layout.win);
  s.plan = BlockPlan{rolls, filters, 0, area, channels * area, filters};
  return s;
}

Pair spatial(const Tensor& t) { return Pair{t.size(2), t.size(3)}; }

}  // namespace

Tensor conv2d_forward(const DeviceKernels& k, const Tensor& input, const Tensor& weight,
                      const std::optional<Tensor>& bias, IntArrayRef stride, IntArrayRef padding,
                      IntArrayRef dilation, int64_t groups) {
  constexpr const char* op = "rollconv.conv2d";
  check_input(op, "input", input, 4, k);
  check_input(op, "weight", weight, 4, k);
  check_same_kind(op, "weight", weight, "input", input);
  check_bias(op, bias, weight.size(0), input);
  const ConvSetup s = conv2d_setup(op, input.size(1), weight.size(0), weight.size(1),
                                   spatial(input), spatial(weight), stride, padding, dilation, groups);
  return gemm_conv_forward(k, input, weight.contiguous().view({weight.size(0), -1}), bias,
                           s.layout, s.plan, /*relu=*/false);
}

Tensor conv2d_backward_input(const DeviceKernels& k, const Tensor& grad_output,
                             const Tensor& weight, IntArrayRef input_size, IntArrayRef stride,
                             IntArrayRef padding, IntArrayRef dilation, int64_t groups) {
  constexpr const char* op = "rollconv.conv2d_backward_input";
  check_input(op, "grad_output", grad_output, 4, k);
  check_input(op, "weight", weight, 4, k);
  check_same_kind(op, "weight", weight, "grad_output", grad_output);
  const Pair in = pair_arg(op, "input_size", input_size);
  const ConvSetup s = conv2d_setup(op, weight.size(1) * groups, weight.size(0), weight.size(1), in,
                                   spatial(weight), stride, padding, dilation, groups);
  check_grad_output(op, grad_output, grad_output.size(0), weight.size(0), s.layout.win);
  return gemm_conv_backward_input(k, grad_output, weight.contiguous().view({weight.size(0), -1}),
                                  s.layout, s.plan);
}

Tensor conv2d_backward_weight(const DeviceKernels& k, const Tensor& grad_output,
                              const Tensor& input, IntArrayRef kernel_size, IntArrayRef stride,
                              IntArrayRef padding, IntArrayRef dilation, int64_t groups) {
  constexpr const char* op = "rollconv.conv2d_backward_weight";
  check_input(op, "grad_output", grad_output, 4, k);
  check_input(op, "input", input, 4, k);
  check_same_kind(op, "grad_output", grad_output, "input", input);
  const Pair kernel = pair_arg(op, "kernel_size", kernel_size);
  const int64_t out_channels = grad_output.size(1);
  TORCH_CHECK(groups > 0 && input.size(1) % groups == 0, op, ": groups=", groups,
              " must be positive and divide the input channels (", input.size(1), ")");
  const ConvSetup s = conv2d_setup(op, input.size(1), out_channels, input.size(1) / groups,
                                   spatial(input), kernel, stride, padding, dilation, groups);
  check_grad_output(op, grad_output, input.size(0), out_channels, s.layout.win);
  return gemm_conv_backward_weight(k, grad_output, input, s.layout, s.plan)
      .view({out_channels, input.size(1) / groups, kernel.h, kernel.w});
}

Tensor bias_backward(const DeviceKernels& k, const Tensor& grad_output, int64_t channels) {
  constexpr const char* op = "rollconv.bias_backward";
  check_input(op, "grad_output", grad_output, -2, k);
  TORCH_CHECK(channels > 0 && grad_output.size(1) % channels == 0, op, ": channels=", channels,
              " must be positive and divide grad_output.shape[1] (", grad_output.size(1), ")");
  const auto acc = accumulate_type(grad_output.scalar_type());
  return grad_output.reshape({grad_output.size(0), grad_output.size(1) / channels, channels, -1})
      .sum({0, 1, 3}, /*keepdim=*/false, acc)
      .to(grad_output.scalar_type());
}

Tensor roll_conv2d_forward(const DeviceKernels& k, const Tensor& input, const Tensor& weight,
                           const std::optional<Tensor>& bias, IntArrayRef stride,
                           IntArrayRef padding, IntArrayRef dilation, int64_t rolls, bool relu) {
  constexpr const char* op = "rollconv.roll_conv2d";
  check_input(op, "input", input, 4, k);
  check_input(op, "weight", weight, 4, k);
  check_same_kind(op, "weight", weight, "input", input);
  check_bias(op, bias, weight.size(0), input);
  const ConvSetup s = roll_setup(op, input.size(1), weight.size(0), weight.size(1), spatial(input),
                                 spatial(weight), stride, padding, dilation, rolls);
  return gemm_conv_forward(k, input, weight.contiguous().view({weight.size(0), -1}), bias,
                           s.layout, s.plan, relu);
}

Tensor roll_conv2d_backward_input(const DeviceKernels& k, const Tensor& grad_output,
                                  const Tensor& weight, IntArrayRef input_size,
                                  IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
                                  int64_t rolls) {
  constexpr const char* op = "rollconv.roll_conv2d_backward_input";
  check_input(op, "grad_output", grad_output, 4, k);
  check_input(op, "weight", weight, 4, k);
  check_same_kind(op, "weight", weight, "grad_output", grad_output);
  const ConvSetup s = roll_setup(op, weight.size(1), weight.size(0), weight.size(1),
                                 pair_arg(op, "input_size", input_size), spatial(weight), stride,
                                 padding, dilation, rolls);
  check_grad_output(op, grad_output, grad_output.size(0), s.plan.out_channels(), s.layout.win);
  return gemm_conv_backward_input(k, grad_output, weight.contiguous().view({weight.size(0), -1}),
                                  s.layout, s.plan);
}

Tensor roll_conv2d_backward_weight(const DeviceKernels& k, const Tensor& grad_output,
                                   const Tensor& input, IntArrayRef kernel_size,
                                   IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
                                   int64_t rolls) {
  constexpr const char* op = "rollconv.roll_conv2d_backward_weight";
  check_input(op, "grad_output", grad_output, 4, k);
  check_input(op, "input", input, 4, k);
  check_same_kind(op, "grad_output", grad_output, "input", input);
  TORCH_CHECK(rolls >= 1 && grad_output.size(1) % rolls == 0, op, ": rolls=", rolls,
              " must be positive and divide grad_output.shape[1] (", grad_output.size(1), ")");
  const int64_t filters = grad_output.size(1) / rolls;
  const Pair kernel = pair_arg(op, "kernel_size", kernel_size);
  const ConvSetup s = roll_setup(op, input.size(1), filters, input.size(1), spatial(input), kernel,
                                 stride, padding, dilation, rolls);
  check_grad_output(op, grad_output, input.size(0), s.plan.out_channels(), s.layout.win);
  return gemm_conv_backward_weight(k, grad_output, input, s.layout, s.plan)
      .view({filters, input.size(1), kernel.h, kernel.w});
}

}  // namespace rollconv::ops
