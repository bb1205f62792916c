// The block-GEMM passes of a plan: the device's fused engine, or per chunk of samples
// im2col into a workspace and ATen GEMMs. See conv_gemm.h.
#include "common/conv_gemm.h"

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <algorithm>

#include "common/ops.h"
#include "settings.h"

namespace rollconv::ops {

namespace {

// Samples per chunk: the column matrix and the GEMM's (out_channels x columns) result
// of one chunk must fit the workspace (settings::workspace_bytes), so memory does not grow
// with N.
int64_t samples_per_chunk(int64_t batch, const ColumnLayout& layout, int64_t out_channels,
                          const at::Tensor& like) {
  const int64_t per_sample = std::max<int64_t>(
      1, (column_rows(layout) + out_channels) * column_cols(layout) * like.element_size());
  return std::max<int64_t>(1, std::min<int64_t>(batch, settings::workspace_bytes(like.is_cuda()) / per_sample));
}

// (b, C, L) chunk of an NCHW tensor, seen as the GEMM's (C, b * L) layout (a view).
Tensor channels_first(const Tensor& nchw_chunk) {
  return nchw_chunk.reshape({nchw_chunk.size(0), nchw_chunk.size(1), -1}).transpose(0, 1);
}

Tensor block_weight(const Tensor& weight_mat, const GemmBlock& blk) {
  return weight_mat.narrow(0, blk.weight_row, blk.rows).narrow(1, 0, blk.inner);
}

// The batch loop of every pass. Allocates the workspace once: room for a column matrix
// (rows, chunk * L) and a matrix (out_channels, chunk * L) in GEMM layout, and runs
// body(n0, b, cols, outs) for each chunk of samples [n0, n0 + b) with contiguous
// (rows, b * L) and (out_channels, b * L) views of it: im2col and col2im index the
// column matrix as a dense array, so a short last chunk must not keep the full
// chunk's row stride.
template <typename Body>
void for_each_chunk(int64_t batch, const ColumnLayout& layout, int64_t out_channels,
                    const Tensor& like, const Body& body) {
  if (batch == 0) return;
  const int64_t ncols = column_cols(layout), rows = column_rows(layout);
  const int64_t chunk = samples_per_chunk(batch, layout, out_channels, like);
  Tensor cols = at::empty({rows * chunk * ncols}, like.options());
  Tensor outs = at::empty({out_channels * chunk * ncols}, like.options());
  for (int64_t n0 = 0; n0 < batch; n0 += chunk) {
    const int64_t b = std::min(chunk, batch - n0);
    body(n0, b, cols.narrow(0, 0, rows * b * ncols).view({rows, b * ncols}),
         outs.narrow(0, 0, out_channels * b * ncols).view({out_channels, b * ncols}));
  }
}

}  // namespace

// The device's fused engine (conv_engine.h) when it has one for this dtype and the engines
// are on (settings.h); otherwise the passes below: per chunk of samples, im2col into a
// workspace and ATen GEMMs.
bool uses_conv_engine(const DevicePrimitives& prims, const Tensor& t) {
  return prims.conv_engine != nullptr && settings::engines_enabled() && prims.conv_engine->supports(t.scalar_type());
}

// Per chunk, with column matrices (rows, b * L):
//   forward:  Y[blk] = W[blk] @ cols[blk rows]
//   dX:       dcols[blk rows] (+)= W[blk]^T @ dY[blk]
//   dK:       dW[blk] += dY[blk] @ cols[blk rows]^T
// Every operand is a view (a row window, a column window, a transpose), never a copy.

// y = W * im2col(x) per block, then bias and ReLU while copying the chunk into y.
Tensor gemm_conv_forward(const DevicePrimitives& prims, const Tensor& input_, const Tensor& weight_mat,
                         const std::optional<Tensor>& bias, const ColumnLayout& layout,
                         const BlockPlan& plan, bool relu) {
  const Tensor input = input_.contiguous();
  const int64_t cout = plan.out_channels;
  Tensor output = at::empty({input.size(0), cout, layout.win.out_h, layout.win.out_w}, input.options());
  Tensor bias_rows;  // one entry per output channel
  if (bias.has_value() && bias->defined()) bias_rows = bias_per_channel(*bias, cout);
  if (uses_conv_engine(prims, input)) {
    prims.conv_engine->forward(input, weight_mat.contiguous(), bias_rows, layout, plan, relu, output);
    return output;
  }
  for_each_chunk(input.size(0), layout, cout, input, [&](int64_t n0, int64_t b, Tensor cols, Tensor result) {
    prims.im2col(input.narrow(0, n0, b), cols, layout);
    for (const GemmBlock& blk : plan.blocks) {
      Tensor target = result.narrow(0, blk.out_row, blk.rows);
      const Tensor w_blk = block_weight(weight_mat, blk), cols_blk = cols.narrow(0, blk.col_row, blk.inner);
      // The bias enters the GEMM (beta = 1), so a float16/bfloat16 result is rounded once,
      // after the float32 accumulation, not once more after adding it.
      if (bias_rows.defined()) {
        at::addmm_out(target, bias_rows.narrow(0, blk.out_row, blk.rows).unsqueeze(1), w_blk, cols_blk);
      } else {
        at::mm_out(target, w_blk, cols_blk);
      }
    }
    Tensor out_b = channels_first(output.narrow(0, n0, b));
    Tensor result_3d = result.view(out_b.sizes());
    if (relu) {
      at::clamp_min_out(out_b, result_3d, 0);
    } else {
      out_b.copy_(result_3d);
    }
  });
  return output;
}

// dX = col2im(W^T * dY) per block; blocks that share column rows accumulate.
Tensor gemm_conv_backward_input(const DevicePrimitives& prims, const Tensor& grad_output,
                                const Tensor& weight_mat, const ColumnLayout& layout,
                                const BlockPlan& plan) {
  const int64_t cout = plan.out_channels;
  Tensor grad_input = at::empty({grad_output.size(0), layout.channels, layout.win.in_h, layout.win.in_w},
                                grad_output.options());
  if (uses_conv_engine(prims, grad_output)) {
    prims.conv_engine->backward_input(grad_output.contiguous(), weight_mat.contiguous(), layout, plan, grad_input);
    return grad_input;
  }
  for_each_chunk(grad_output.size(0), layout, cout, grad_output, [&](int64_t n0, int64_t b, Tensor dcols, Tensor grad) {
    grad.view({cout, b, -1}).copy_(channels_first(grad_output.narrow(0, n0, b)));
    if (plan.shared_columns) dcols.zero_();
    for (const GemmBlock& blk : plan.blocks) {
      Tensor wt = block_weight(weight_mat, blk).t();
      Tensor g = grad.narrow(0, blk.out_row, blk.rows);
      Tensor target = dcols.narrow(0, blk.col_row, blk.inner);
      if (plan.shared_columns) {
        target.addmm_(wt, g);
      } else {
        at::mm_out(target, wt, g);
      }
    }
    prims.col2im(dcols, grad_input.narrow(0, n0, b), layout);
  });
  return grad_input;
}

// dW = dY * im2col(x)^T per block, summed over the batch in a fixed order; blocks that
// share weight rows (rolls) accumulate. Float32 accumulation for half/bfloat16.
Tensor gemm_conv_backward_weight(const DevicePrimitives& prims, const Tensor& grad_output,
                                 const Tensor& input_, const ColumnLayout& layout,
                                 const BlockPlan& plan) {
  const Tensor input = input_.contiguous();
  const int64_t cout = plan.out_channels;
  const auto acc = at::toOpMathType(input.scalar_type());
  Tensor grad_weight = at::zeros({plan.weight_rows, plan.weight_cols}, input.options().dtype(acc));
  if (uses_conv_engine(prims, input)) {
    prims.conv_engine->backward_weight(grad_output.contiguous(), input, layout, plan, grad_weight);
    return grad_weight;
  }
  for_each_chunk(input.size(0), layout, cout, input, [&](int64_t n0, int64_t b, Tensor cols, Tensor grad) {
    prims.im2col(input.narrow(0, n0, b), cols, layout);
    grad.view({cout, b, -1}).copy_(channels_first(grad_output.narrow(0, n0, b)));
    for (const GemmBlock& blk : plan.blocks) {
      Tensor g = grad.narrow(0, blk.out_row, blk.rows);
      Tensor c = cols.narrow(0, blk.col_row, blk.inner).t();
      Tensor target = block_weight(grad_weight, blk);
      if (acc == input.scalar_type()) {
        target.addmm_(g, c);
      } else {
        target.add_(at::mm(g, c));
      }
    }
  });
  return grad_weight;
}

}  // namespace rollconv::ops
