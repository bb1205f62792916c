// Convolution as im2col + GEMM, and the rolling convolution on the same engine.
//
// Both are "block GEMMs" over one column matrix (rows: channel x tap, columns: the output
// pixels of a chunk of samples), each block a 2-D GEMM on a row window of it:
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
// The GEMMs run in the device's fused engine (CPU: cpu/conv_engine.cpp, im2col fused into
// the GEMM's packing) or, without one (CUDA), through ATen (cuBLAS) with im2col/col2im from
// DeviceKernels. That is roll_conv2d's algorithm "direct"; further down are "bank" (the
// expanded bank through ATen's convolution) and "fft" (the channel-Fourier domain).
#include <ATen/ATen.h>

#include <c10/util/accumulate.h>

#include <cstdlib>
#include <vector>

#include "common/checks.h"
#include "common/ops.h"

namespace rollconv::ops {
namespace {

// Upper bound of the column-matrix workspace: the batch is processed in chunks of
// samples whose columns fit, so memory does not grow with N. 16 MiB unless the
// environment variable ROLLCONV_WORKSPACE_MB says otherwise (read at each call).
// Small on purpose: glibc serves blocks under its (adaptive, <= 32 MiB) mmap threshold
// from the heap and reuses them, while each larger block is a fresh mmap whose page
// faults cost as much as the im2col itself (measured: 16 ms of a 24 ms forward).
int64_t workspace_bytes() {
  const char* env = std::getenv("ROLLCONV_WORKSPACE_MB");
  const int64_t mb = env ? std::max<int64_t>(0, std::atoll(env)) : 16;
  return mb << 20;
}

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

// The device's fused engine (conv_engine.h) when it has one for this dtype; otherwise
// the passes below: per chunk of samples, im2col into a workspace and ATen GEMMs.
bool uses_engine(const DeviceKernels& k, const Tensor& t) {
  return k.engine != nullptr && k.engine->supports(t.scalar_type());
}

bool uses_fft_engine(const DeviceKernels& k, const Tensor& t, const Window2d& w) {
  return k.roll_fft_engine != nullptr && k.roll_fft_engine->supports(t.scalar_type()) &&
         k.roll_fft_engine->fits(w, t.scalar_type());
}

// Per chunk, with column matrices (rows, b * L):
//   forward:  Y[blk] = W[blk] @ cols[blk rows]
//   dX:       dcols[blk rows] (+)= W[blk]^T @ dY[blk]
//   dK:       dW[blk] += dY[blk] @ cols[blk rows]^T
// Every operand is a view (a row window, a column window, a transpose), never a copy.

// y = W * im2col(x) per block, then bias and ReLU while copying the chunk into y.
Tensor gemm_conv_forward(const DeviceKernels& k, const Tensor& input_, const Tensor& weight_mat,
                         const std::optional<Tensor>& bias, const ColumnLayout& layout,
                         const BlockPlan& plan, bool relu) {
  const Tensor input = input_.contiguous();
  const int64_t cout = plan.out_channels;
  Tensor output = at::empty({input.size(0), cout, layout.win.out_h, layout.win.out_w}, input.options());
  Tensor bias_rows;  // one entry per output channel
  if (bias.has_value() && bias->defined()) bias_rows = bias->repeat({cout / plan.bias_period}).contiguous();
  if (uses_engine(k, input)) {
    k.engine->forward(input, weight_mat.contiguous(), bias_rows, layout, plan, relu, output);
    return output;
  }
  for_each_chunk(input.size(0), layout, cout, input, [&](int64_t n0, int64_t b, Tensor cols, Tensor result) {
    k.im2col(input.narrow(0, n0, b), cols, layout);
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
Tensor gemm_conv_backward_input(const DeviceKernels& k, const Tensor& grad_output,
                                const Tensor& weight_mat, const ColumnLayout& layout,
                                const BlockPlan& plan) {
  const int64_t cout = plan.out_channels;
  Tensor grad_input = at::empty({grad_output.size(0), layout.channels, layout.win.in_h, layout.win.in_w},
                                grad_output.options());
  if (uses_engine(k, grad_output)) {
    k.engine->backward_input(grad_output.contiguous(), weight_mat.contiguous(), layout, plan, grad_input);
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
    k.col2im(dcols, grad_input.narrow(0, n0, b), layout);
  });
  return grad_input;
}

// dW = dY * im2col(x)^T per block, summed over the batch in a fixed order; blocks that
// share weight rows (rolls) accumulate. Float32 accumulation for half/bfloat16.
Tensor gemm_conv_backward_weight(const DeviceKernels& k, const Tensor& grad_output,
                                 const Tensor& input_, const ColumnLayout& layout,
                                 const BlockPlan& plan) {
  const Tensor input = input_.contiguous();
  const int64_t cout = plan.out_channels;
  const auto acc = accumulate_type(input.scalar_type());
  Tensor grad_weight = at::zeros({plan.weight_rows, plan.weight_cols}, input.options().dtype(acc));
  if (uses_engine(k, input)) {
    k.engine->backward_weight(grad_output.contiguous(), input, layout, plan, grad_weight);
    return grad_weight;
  }
  for_each_chunk(input.size(0), layout, cout, input, [&](int64_t n0, int64_t b, Tensor cols, Tensor grad) {
    k.im2col(input.narrow(0, n0, b), cols, layout);
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

int64_t kernel_area(const Window2d& w) { return w.kernel_h * w.kernel_w; }

void check_bias(const char* op, const std::optional<Tensor>& bias, int64_t expected,
                const Tensor& input) {
  if (!bias.has_value() || !bias->defined()) return;
  TORCH_CHECK(bias->dim() == 1 && bias->size(0) == expected, op, ": expected bias of shape (",
              expected, "), but got ", bias->sizes());
  check_same_kind(op, "bias", *bias, "input", input);
}

struct ConvSetup {
  ColumnLayout layout;
  BlockPlan plan;
};

// --- conv2d: one block per group ------------------------------------------------------------

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
  const int64_t per_group = out_channels / groups;
  for (int64_t g = 0; g < groups; ++g) {
    s.plan.blocks.push_back(GemmBlock{g * per_group, per_group, g * per_group, g * k_in, k_in});
  }
  s.plan.out_channels = out_channels;
  s.plan.bias_period = out_channels;
  s.plan.weight_rows = out_channels;
  s.plan.weight_cols = k_in;
  s.plan.shared_columns = false;
  return s;
}

// --- roll_conv2d: blocks of G consecutive rolls ------------------------------------------------

// Rolls per GEMM: enough to give it about 64 rows, at most C/(4S) so that the band's zero
// corners ((G - 1) * S extra channels per row) add at most a quarter to the work.
int64_t rolls_per_gemm(int64_t filters, int64_t channels, int64_t rolls, int64_t shift) {
  const int64_t wanted = ceil_div(64, std::max<int64_t>(1, filters));
  return std::max<int64_t>(1, std::min({wanted, channels / (4 * shift), rolls}));
}

// At least one channel; shift (S) must divide the channels; rolls may be 1 .. C / S.
void check_roll_shape(const char* op, int64_t channels, int64_t rolls, int64_t shift) {
  TORCH_CHECK(channels > 0, op, ": the rolling convolution needs at least one input channel");
  TORCH_CHECK(shift >= 1 && channels % shift == 0, op, ": shift must be a positive divisor of the input channels (",
              channels, "), but got shift=", shift);
  TORCH_CHECK(rolls >= 1 && rolls <= channels / shift, op, ": rolls must be in [1, ", channels / shift,
              "] (the input channels / shift = ", channels, " / ", shift, "), but got ", rolls);
}

ConvSetup roll_setup(const char* op, int64_t channels, int64_t filters, int64_t weight_channels,
                     Pair input_hw, Pair kernel, IntArrayRef stride, IntArrayRef padding,
                     IntArrayRef dilation, int64_t rolls, int64_t shift) {
  TORCH_CHECK(weight_channels == channels, op, ": expected weight.shape[1] (", weight_channels,
              ") to equal the input channels (", channels, ")");
  check_roll_shape(op, channels, rolls, shift);
  ConvSetup s;
  s.layout.win = conv_window(op, input_hw, kernel, pair_arg(op, "stride", stride),
                             pair_arg(op, "padding", padding), pair_arg(op, "dilation", dilation));
  s.layout.channels = channels;
  s.layout.col_channels = channels + (rolls - 1) * shift;
  const int64_t area = kernel_area(s.layout.win);
  const int64_t group = rolls_per_gemm(filters, channels, rolls, shift);
  for (int64_t r0 = 0; r0 < rolls; r0 += group) {
    const int64_t g = std::min(group, rolls - r0);
    s.plan.blocks.push_back(
        GemmBlock{r0 * filters, g * filters, 0, r0 * shift * area, (channels + (g - 1) * shift) * area});
  }
  s.plan.out_channels = rolls * filters;
  s.plan.bias_period = filters;
  s.plan.weight_rows = group * filters;
  s.plan.weight_cols = (channels + (group - 1) * shift) * area;
  s.plan.shared_columns = rolls > 1;
  return s;
}

// The roll band of G rolls: band[g*F + f, (v, tap)] = w[f, v - g*S, tap] for
// 0 <= v - g*S < C, zero elsewhere; rows (g, f) are output channels (r0 + g) * F + f of a
// block at r0.
Tensor roll_band(const Tensor& weight, const BlockPlan& plan, int64_t shift) {
  const int64_t filters = weight.size(0);
  const Tensor w = weight.contiguous().view({filters, -1});
  const int64_t group = plan.weight_rows / filters;
  const int64_t area = weight.size(2) * weight.size(3);
  if (group == 1) return w;
  Tensor band = at::zeros({plan.weight_rows, plan.weight_cols}, weight.options());
  for (int64_t g = 0; g < group; ++g) {
    band.narrow(0, g * filters, filters).narrow(1, g * shift * area, w.size(1)).copy_(w);
  }
  return band;
}

// The adjoint of roll_band: dw[f, (c, tap)] = sum_g dband[g*F + f, (c + g*S, tap)].
Tensor fold_roll_band(const Tensor& grad_band, int64_t filters, int64_t channels, int64_t shift, Pair kernel) {
  const int64_t area = kernel.h * kernel.w;
  const int64_t group = grad_band.size(0) / filters;
  Tensor dw = grad_band.narrow(0, 0, filters).narrow(1, 0, channels * area).clone();
  for (int64_t g = 1; g < group; ++g) {
    dw.add_(grad_band.narrow(0, g * filters, filters).narrow(1, g * shift * area, channels * area));
  }
  return dw.view({filters, channels, kernel.h, kernel.w});
}

Pair spatial(const Tensor& t) { return Pair{t.size(2), t.size(3)}; }

// --- roll_conv2d, algorithm "bank": the seed's method inside one op ------------------------

enum class RollAlgorithm { kDirect, kBank, kFft };

RollAlgorithm roll_algorithm(const char* op, c10::string_view name, int64_t rolls, int64_t shift,
                             int64_t channels) {
  TORCH_CHECK(name == "direct" || name == "bank" || name == "fft", op,
              ": algorithm must be 'direct', 'bank' or 'fft', but got '", name, "'");
  if (name == "direct") return RollAlgorithm::kDirect;
  if (name == "bank") return RollAlgorithm::kBank;
  TORCH_CHECK(rolls * shift == channels, op, ": algorithm 'fft' needs rolls == C / shift (", channels, " / ",
              shift, " = ", channels / shift, ": the bank must be block-circulant), but got rolls=", rolls);
  return RollAlgorithm::kFft;
}

// index[r, c] = (c + shift * r) mod C, for r < R.
Tensor roll_index(int64_t rolls, int64_t channels, int64_t shift, const Tensor& like) {
  const auto opts = like.options().dtype(at::kLong);
  Tensor r = at::arange(rolls, opts).view({rolls, 1});
  Tensor c = at::arange(channels, opts).view({1, channels});
  return (c + shift * r).remainder(channels);
}

// bank[r*F + f, c] = w[f, (c - r*S) mod C] (torch.cat of torch.roll(w, r*S, dims=1)), one gather.
Tensor expand_bank(const Tensor& weight, int64_t rolls, int64_t shift) {
  const int64_t filters = weight.size(0), channels = weight.size(1);
  const Tensor index = roll_index(rolls, channels, -shift, weight).flatten();
  return weight.index_select(1, index)
      .view({filters, rolls, channels, weight.size(2), weight.size(3)})
      .transpose(0, 1)
      .reshape({rolls * filters, channels, weight.size(2), weight.size(3)});
}

// The adjoint: dw[f, c] = sum_r dbank[r*F + f, (c + r*S) mod C], summed over r in order
// (float32 accumulation for half/bfloat16).
Tensor fold_bank(const Tensor& grad_bank, int64_t rolls, int64_t shift) {
  const int64_t channels = grad_bank.size(1), filters = grad_bank.size(0) / rolls;
  const int64_t area = grad_bank.size(2) * grad_bank.size(3);
  const Tensor index = roll_index(rolls, channels, shift, grad_bank)
                           .view({rolls, 1, channels, 1})
                           .expand({rolls, filters, channels, area});
  return grad_bank.reshape({rolls, filters, channels, area})
      .gather(2, index)
      .sum(0, /*keepdim=*/false, accumulate_type(grad_bank.scalar_type()))
      .to(grad_bank.scalar_type())
      .view({filters, channels, grad_bank.size(2), grad_bank.size(3)});
}

// --- roll_conv2d, algorithm "fft": the channel-Fourier domain ------------------------------
// With rolls of S channels the bank is block-circulant: channel c = g*S + s, and a roll
// moves the G = C / S blocks g. A real FFT over the block index turns it into G/2 + 1
// independent S-input, F-output complex convolutions (index_math.h; S = 1: the plain
// channel FFT). A device with a fused engine (CPU: cpu/roll_fft_engine.cpp, S = 1) runs each
// direction in one call; otherwise (CUDA, and the CPU for S > 1) the transforms go through
// ATen (cuFFT / pocketfft) around our per-frequency passes.

// The transforms run in float32 for float16/bfloat16 operands: ATen's FFTs have no
// bfloat16 and take float16 only for power-of-two lengths (cuFFT). Such operands reach
// these functions on CUDA; the CPU converts every convolution's operands up front.
bool reduced(const Tensor& t) { return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16; }
Tensor as_float(const Tensor& t) { return t.to(at::kFloat); }

// rfft over the block index of dim 1, moved last after the position inside the block
// (contiguous, so the transforms need no gathers): (A, C, ...) real -> (A, ..., S, K) complex.
Tensor block_rfft(const Tensor& t, int64_t shift) {
  std::vector<int64_t> blocks{t.size(0), t.size(1) / shift, shift};
  std::vector<int64_t> order{0};
  for (int64_t d = 2; d < t.dim(); ++d) {
    blocks.push_back(t.size(d));
    order.push_back(d + 1);
  }
  order.push_back(2);
  order.push_back(1);
  return at::fft_rfft(t.reshape(blocks).permute(order).contiguous(), std::nullopt, -1);
}

// The inverse for dX and dK: (A, P, Q, S, K) complex -> (A, G, S, P, Q) real (a view), whose
// dims 1 and 2 are channel g*S + s.
Tensor block_irfft(const Tensor& spectrum, int64_t blocks) {
  return at::fft_irfft(spectrum, blocks, -1).permute({0, 4, 3, 1, 2});
}

// The transforms' temporaries of one sample (real copy, spectrum, result spectrum, result),
// in real elements; the batch goes through in chunks that fit a quarter of the workspace
// (4 MiB by default: measured as fast as 16 MiB, and it keeps the peak memory below the
// seed method's at C = 64 and 256), so peak memory does not grow with N.
int64_t fft_samples_per_chunk(int64_t batch, int64_t channels, int64_t shift, int64_t filters,
                              const Window2d& w, const Tensor& like) {
  const int64_t blocks = channels / shift, freqs = blocks / 2 + 1;
  const int64_t in_px = w.in_h * w.in_w, out_px = w.out_h * w.out_w;
  const int64_t per_sample = like.element_size() *
      (in_px * (channels + 2 * shift * freqs) + out_px * filters * (blocks + 2 * freqs));
  return std::max<int64_t>(1, std::min<int64_t>(batch, workspace_bytes() / 4 / std::max<int64_t>(1, per_sample)));
}

// Chunk of dY (b, R, F, oh, ow) -> rfft over the rolls: (b, oh, ow, F, K).
Tensor rolls_rfft(const Tensor& grad_chunk, int64_t rolls, int64_t filters, const Window2d& w) {
  return at::fft_rfft(grad_chunk.reshape({grad_chunk.size(0), rolls, filters, w.out_h, w.out_w})
                          .permute({0, 3, 4, 2, 1})
                          .contiguous(),
                      std::nullopt, -1);
}

// The fused engine serves S = 1 only (its kernels sum over one input per frequency).
bool fft_engine_for(const DeviceKernels& k, const Tensor& t, int64_t shift, const Window2d& w) {
  return shift == 1 && uses_fft_engine(k, t, w);
}

Tensor fft_forward(const DeviceKernels& k, const Tensor& input, const Tensor& weight,
                   const std::optional<Tensor>& bias, int64_t shift, const Window2d& w, bool relu) {
  if (reduced(input)) {
    const std::optional<Tensor> b = bias.has_value() && bias->defined() ? std::optional<Tensor>(as_float(*bias)) : bias;
    return fft_forward(k, as_float(input), as_float(weight), b, shift, w, relu).to(input.scalar_type());
  }
  const int64_t batch = input.size(0), channels = input.size(1), filters = weight.size(0);
  const int64_t rolls = channels / shift;
  Tensor out = at::empty({batch, rolls * filters, w.out_h, w.out_w}, input.options());
  const Tensor taps = block_rfft(weight, shift);  // (F, kh, kw, S, K)
  if (fft_engine_for(k, input, shift, w)) {
    const Tensor b = bias.has_value() && bias->defined() ? bias->contiguous() : Tensor();
    k.roll_fft_engine->forward(input.contiguous(), taps.squeeze(3), b, w, relu, out);
    return out;
  }
  const int64_t chunk = fft_samples_per_chunk(batch, channels, shift, filters, w, input);
  for (int64_t n0 = 0; n0 < batch; n0 += chunk) {
    const int64_t b = std::min(chunk, batch - n0);
    const Tensor spectrum = block_rfft(input.narrow(0, n0, b), shift);  // (b, H, W, S, K)
    Tensor out_spectrum = at::empty({b, w.out_h, w.out_w, filters, taps.size(4)}, spectrum.options());
    k.fft_forward(spectrum, taps, out_spectrum, w);
    // A bias shared by all rolls is a constant over the roll axis: R * b at frequency 0.
    if (bias.has_value() && bias->defined()) {
      out_spectrum.select(4, 0).add_(bias->to(out_spectrum.scalar_type()) * static_cast<double>(rolls));
    }
    // irfft gives the rolls (b, oh, ow, F, R); one pass writes them roll-major, with ReLU.
    const Tensor rolled = at::fft_irfft(out_spectrum, rolls, -1).permute({0, 4, 3, 1, 2});
    Tensor out_view = out.narrow(0, n0, b).view({b, rolls, filters, w.out_h, w.out_w});
    if (relu) {
      at::clamp_min_out(out_view, rolled, 0);
    } else {
      out_view.copy_(rolled);
    }
  }
  return out;
}

Tensor fft_backward_input(const DeviceKernels& k, const Tensor& grad_output, const Tensor& weight,
                          int64_t shift, const Window2d& w) {
  if (reduced(grad_output)) {
    return fft_backward_input(k, as_float(grad_output), as_float(weight), shift, w).to(grad_output.scalar_type());
  }
  const int64_t batch = grad_output.size(0), channels = weight.size(1), filters = weight.size(0);
  const int64_t rolls = channels / shift;
  Tensor grad_input = at::empty({batch, channels, w.in_h, w.in_w}, grad_output.options());
  const Tensor taps = block_rfft(weight, shift);
  if (fft_engine_for(k, grad_output, shift, w)) {
    k.roll_fft_engine->backward_input(grad_output.contiguous(), taps.squeeze(3), w, grad_input);
    return grad_input;
  }
  const int64_t chunk = fft_samples_per_chunk(batch, channels, shift, filters, w, grad_output);
  for (int64_t n0 = 0; n0 < batch; n0 += chunk) {
    const int64_t b = std::min(chunk, batch - n0);
    const Tensor grad_spectrum = rolls_rfft(grad_output.narrow(0, n0, b), rolls, filters, w);
    Tensor input_spectrum = at::empty({b, w.in_h, w.in_w, shift, taps.size(4)}, grad_spectrum.options());
    k.fft_backward_input(grad_spectrum, taps, input_spectrum, w);
    grad_input.narrow(0, n0, b).view({b, rolls, shift, w.in_h, w.in_w}).copy_(block_irfft(input_spectrum, rolls));
  }
  return grad_input;
}

Tensor fft_backward_weight(const DeviceKernels& k, const Tensor& grad_output, const Tensor& input,
                           Pair kernel, int64_t shift, const Window2d& w) {
  if (reduced(input)) {
    return fft_backward_weight(k, as_float(grad_output), as_float(input), kernel, shift, w).to(input.scalar_type());
  }
  const int64_t batch = input.size(0), channels = input.size(1);
  const int64_t rolls = channels / shift, filters = grad_output.size(1) / rolls;
  const int64_t freqs = rolls / 2 + 1;
  Tensor grad_taps = at::zeros({filters, kernel.h, kernel.w, shift, freqs},
                               input.options().dtype(c10::toComplexType(input.scalar_type())));
  if (fft_engine_for(k, input, shift, w)) {
    k.roll_fft_engine->backward_weight(grad_output.contiguous(), input.contiguous(), w, grad_taps.squeeze(3));
  } else {
    Tensor chunk_taps = at::empty_like(grad_taps);
    const int64_t chunk = fft_samples_per_chunk(batch, channels, shift, filters, w, input);
    for (int64_t n0 = 0; n0 < batch; n0 += chunk) {  // chunks summed in order: deterministic
      const int64_t b = std::min(chunk, batch - n0);
      k.fft_backward_weight(block_rfft(input.narrow(0, n0, b), shift),
                            rolls_rfft(grad_output.narrow(0, n0, b), rolls, filters, w), chunk_taps, w);
      grad_taps.add_(chunk_taps);
    }
  }
  return block_irfft(grad_taps, rolls).reshape({filters, channels, kernel.h, kernel.w}).contiguous();
}

// Stride 1: dX is the forward convolution of dY with the flipped, transposed weight and
// padding dil * (k - 1) - pad, so the engine's forward (which reads a stride-1
// convolution's B in place from the padded image) runs it instead of a GEMM and a col2im:
// measured 6-10% faster on 3x3 layers with 64-256 channels and 1.3x on 5x5 16 -> 32.
// With a 1x1 kernel the col2im path (then a plain copy) stays.
bool dx_as_forward(const DeviceKernels& k, const Tensor& grad_output, const Window2d& w) {
  const int64_t reach_h = w.dil_h * (w.kernel_h - 1), reach_w = w.dil_w * (w.kernel_w - 1);
  return uses_engine(k, grad_output) && w.stride_h == 1 && w.stride_w == 1 && w.pad_h <= reach_h &&
         w.pad_w <= reach_w && reach_h + reach_w > 0;
}

// weight: (cout, cin / groups, kh, kw) of the convolution whose dX this is (window w).
Tensor dx_by_forward(const DeviceKernels& k, const Tensor& grad_output, const Tensor& weight, int64_t groups,
                     const Window2d& w, IntArrayRef dilation) {
  const int64_t cout = weight.size(0), cin_g = weight.size(1);
  const Tensor flipped = weight.view({groups, cout / groups, cin_g, w.kernel_h, w.kernel_w})
                             .transpose(1, 2)
                             .flip({3, 4})
                             .reshape({groups * cin_g, cout / groups, w.kernel_h, w.kernel_w})
                             .contiguous();
  const int64_t pad[2] = {w.dil_h * (w.kernel_h - 1) - w.pad_h, w.dil_w * (w.kernel_w - 1) - w.pad_w};
  const int64_t one[2] = {1, 1};
  const ConvSetup t = conv2d_setup("rollconv.conv2d_backward_input", cout, groups * cin_g, cout / groups,
                                   spatial(grad_output), spatial(weight), one, pad, dilation, groups);
  return gemm_conv_forward(k, grad_output, flipped.view({groups * cin_g, -1}), std::nullopt, t.layout, t.plan,
                           /*relu=*/false);
}

// An uninitialized tensor for the ATen calls that read a tensor only for its shape. (Not
// a stride-0 expanded view: that steers convolution_backward away from oneDNN.)
Tensor shape_only(const Tensor& like, at::IntArrayRef shape) {
  return at::empty(shape, like.options());
}

// --- sizes with nothing to compute ------------------------------------------------------
// A zero batch, zero input channels or zero output channels leave nothing for a GEMM, an
// FFT or a library convolution to do (and they divide by these sizes), so the entry points
// answer directly. With zero input channels the sum over channels is empty: the forward is
// the bias broadcast over the pixels (through ReLU), dW is zero. (torch.nn.functional.conv2d
// instead returns zero output channels there, contradicting the weight's shape.)
bool nothing_to_sum(int64_t batch, int64_t in_channels, int64_t out_channels) {
  return batch == 0 || in_channels == 0 || out_channels == 0;
}

// (N, out_channels, oh, ow): bias[c % bias_period] (or zero), through ReLU.
Tensor bias_only_output(const Tensor& like, int64_t batch, int64_t out_channels, const Window2d& w,
                        const std::optional<Tensor>& bias, int64_t bias_period, bool relu) {
  Tensor out = at::zeros({batch, out_channels, w.out_h, w.out_w}, like.options());
  if (bias.has_value() && bias->defined() && out.numel() > 0) {
    out.view({batch, out_channels / bias_period, bias_period, -1}).add_(bias->view({1, 1, bias_period, 1}));
    if (relu) out.relu_();
  }
  return out;
}

void check_output_fits(const char* op, int64_t batch, int64_t channels, const Window2d& w) {
  check_numel_fits(op, "the output", {batch, channels, w.out_h, w.out_w});
}

}  // namespace

Tensor conv2d_forward(const DeviceKernels& k, const Tensor& input, const Tensor& weight,
                      const std::optional<Tensor>& bias, IntArrayRef stride, IntArrayRef padding,
                      IntArrayRef dilation, int64_t groups) {
  constexpr const char* op = "rollconv.conv2d";
  check_4d_operands(op, k, "input", input, "weight", weight);
  check_nonempty_images(op, "input", input);
  check_bias(op, bias, weight.size(0), input);
  const ConvSetup s = conv2d_setup(op, input.size(1), weight.size(0), weight.size(1),
                                   spatial(input), spatial(weight), stride, padding, dilation, groups);
  check_output_fits(op, input.size(0), weight.size(0), s.layout.win);
  Tensor out = nothing_to_sum(input.size(0), input.size(1), weight.size(0))
                   ? bias_only_output(input, input.size(0), weight.size(0), s.layout.win, bias,
                                      weight.size(0), /*relu=*/false)
                   : gemm_conv_forward(k, input, weight.contiguous().view({weight.size(0), -1}), bias,
                                       s.layout, s.plan, /*relu=*/false);
  return in_memory_format_of(out, {input, weight});
}

Tensor conv2d_backward_input(const DeviceKernels& k, const Tensor& grad_output,
                             const Tensor& weight, IntArrayRef input_size, IntArrayRef stride,
                             IntArrayRef padding, IntArrayRef dilation, int64_t groups) {
  constexpr const char* op = "rollconv.conv2d_backward_input";
  check_4d_operands(op, k, "grad_output", grad_output, "weight", weight);
  check_nonempty_images(op, "grad_output", grad_output);
  const Pair in = pair_arg(op, "input_size", input_size);
  const ConvSetup s = conv2d_setup(op, weight.size(1) * groups, weight.size(0), weight.size(1), in,
                                   spatial(weight), stride, padding, dilation, groups);
  check_grad_output(op, grad_output, grad_output.size(0), weight.size(0), s.layout.win);
  check_numel_fits(op, "grad_input", {grad_output.size(0), s.layout.channels, in.h, in.w});
  Tensor grad_input;
  if (nothing_to_sum(grad_output.size(0), s.layout.channels, weight.size(0))) {
    grad_input = at::zeros({grad_output.size(0), s.layout.channels, in.h, in.w}, grad_output.options());
  } else if (dx_as_forward(k, grad_output, s.layout.win)) {
    grad_input = dx_by_forward(k, grad_output, weight, groups, s.layout.win, dilation);
  } else {
    grad_input = gemm_conv_backward_input(k, grad_output, weight.contiguous().view({weight.size(0), -1}),
                                          s.layout, s.plan);
  }
  return in_memory_format_of(grad_input, {grad_output, weight});
}

Tensor conv2d_backward_weight(const DeviceKernels& k, const Tensor& grad_output,
                              const Tensor& input, IntArrayRef kernel_size, IntArrayRef stride,
                              IntArrayRef padding, IntArrayRef dilation, int64_t groups) {
  constexpr const char* op = "rollconv.conv2d_backward_weight";
  check_4d_operands(op, k, "grad_output", grad_output, "input", input);
  const Pair kernel = pair_arg(op, "kernel_size", kernel_size);
  const int64_t out_channels = grad_output.size(1);
  TORCH_CHECK(groups > 0 && input.size(1) % groups == 0, op, ": groups=", groups,
              " must be positive and divide the input channels (", input.size(1), ")");
  const ConvSetup s = conv2d_setup(op, input.size(1), out_channels, input.size(1) / groups,
                                   spatial(input), kernel, stride, padding, dilation, groups);
  check_grad_output(op, grad_output, input.size(0), out_channels, s.layout.win);
  const std::vector<int64_t> shape{out_channels, input.size(1) / groups, kernel.h, kernel.w};
  check_numel_fits(op, "grad_weight", shape);
  Tensor grad_weight =
      nothing_to_sum(input.size(0), input.size(1), out_channels)
          ? at::zeros(shape, input.options())
          : gemm_conv_backward_weight(k, grad_output, input, s.layout, s.plan).view(shape).to(input.scalar_type());
  return in_memory_format_of(grad_weight, {grad_output, input});
}

Tensor bias_backward(const DeviceKernels& k, const Tensor& grad_output, int64_t channels) {
  constexpr const char* op = "rollconv.bias_backward";
  check_input(op, "grad_output", grad_output, -2, k);
  const int64_t total = grad_output.size(1);
  TORCH_CHECK(channels >= 0 && (channels == 0 ? total == 0 : total % channels == 0), op,
              ": channels=", channels, " must be non-negative and divide grad_output.shape[1] (",
              total, ")");
  const auto acc = accumulate_type(grad_output.scalar_type());
  if (channels == 0) return at::zeros({0}, grad_output.options());
  // Explicit sizes (no -1): a zero batch or zero pixels leaves -1 ambiguous.
  const int64_t pixels = c10::multiply_integers(grad_output.sizes().slice(2));
  return grad_output.reshape({grad_output.size(0), total / channels, channels, pixels})
      .sum({0, 1, 3}, /*keepdim=*/false, acc)
      .to(grad_output.scalar_type());
}

Tensor roll_conv2d_forward(const DeviceKernels& k, const Tensor& input, const Tensor& weight,
                           const std::optional<Tensor>& bias, IntArrayRef stride,
                           IntArrayRef padding, IntArrayRef dilation, int64_t rolls, int64_t shift,
                           c10::string_view algorithm, bool relu) {
  constexpr const char* op = "rollconv.roll_conv2d";
  check_4d_operands(op, k, "input", input, "weight", weight);
  check_nonempty_images(op, "input", input);
  check_bias(op, bias, weight.size(0), input);
  const ConvSetup s = roll_setup(op, input.size(1), weight.size(0), weight.size(1), spatial(input),
                                 spatial(weight), stride, padding, dilation, rolls, shift);
  const RollAlgorithm alg = roll_algorithm(op, algorithm, rolls, shift, input.size(1));
  check_output_fits(op, input.size(0), s.plan.out_channels, s.layout.win);
  Tensor out;
  if (nothing_to_sum(input.size(0), input.size(1), weight.size(0))) {
    out = bias_only_output(input, input.size(0), s.plan.out_channels, s.layout.win, bias, weight.size(0), relu);
  } else if (alg == RollAlgorithm::kFft) {
    out = fft_forward(k, input, weight, bias, shift, s.layout.win, relu);
  } else if (alg == RollAlgorithm::kBank) {
    const std::optional<Tensor> bank_bias =
        bias.has_value() && bias->defined() ? std::optional<Tensor>(bias->repeat({rolls})) : std::nullopt;
    out = at::convolution(input, expand_bank(weight, rolls, shift), bank_bias, stride, padding, dilation, false,
                          {0, 0}, 1);
    if (relu) out.relu_();
  } else {
    out = gemm_conv_forward(k, input, roll_band(weight, s.plan, shift), bias, s.layout, s.plan, relu);
  }
  return in_memory_format_of(out, {input, weight});
}

Tensor roll_conv2d_backward_input(const DeviceKernels& k, const Tensor& grad_output,
                                  const Tensor& weight, IntArrayRef input_size,
                                  IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
                                  int64_t rolls, int64_t shift, c10::string_view algorithm) {
  constexpr const char* op = "rollconv.roll_conv2d_backward_input";
  check_4d_operands(op, k, "grad_output", grad_output, "weight", weight);
  const ConvSetup s = roll_setup(op, weight.size(1), weight.size(0), weight.size(1),
                                 pair_arg(op, "input_size", input_size), spatial(weight), stride,
                                 padding, dilation, rolls, shift);
  check_grad_output(op, grad_output, grad_output.size(0), s.plan.out_channels, s.layout.win);
  const RollAlgorithm alg = roll_algorithm(op, algorithm, rolls, shift, weight.size(1));
  const Window2d& w = s.layout.win;
  check_numel_fits(op, "grad_input", {grad_output.size(0), weight.size(1), w.in_h, w.in_w});
  Tensor grad_input;
  if (nothing_to_sum(grad_output.size(0), weight.size(1), weight.size(0))) {
    grad_input = at::zeros({grad_output.size(0), weight.size(1), w.in_h, w.in_w}, grad_output.options());
  } else if (alg == RollAlgorithm::kFft) {
    grad_input = fft_backward_input(k, grad_output, weight, shift, w);
  } else if (alg == RollAlgorithm::kBank) {
    const Tensor input_shape = shape_only(grad_output, {grad_output.size(0), weight.size(1), w.in_h, w.in_w});
    grad_input = std::get<0>(at::convolution_backward(grad_output.contiguous(), input_shape,
                                                      expand_bank(weight, rolls, shift), std::nullopt, stride,
                                                      padding, dilation, false, {0, 0}, 1,
                                                      {true, false, false}));
  } else if (dx_as_forward(k, grad_output, w)) {  // the bank's dX, as conv2d's
    grad_input = dx_by_forward(k, grad_output, expand_bank(weight, rolls, shift), 1, w, dilation);
  } else {
    grad_input = gemm_conv_backward_input(k, grad_output, roll_band(weight, s.plan, shift), s.layout, s.plan);
  }
  return in_memory_format_of(grad_input, {grad_output, weight});
}

Tensor roll_conv2d_backward_weight(const DeviceKernels& k, const Tensor& grad_output,
                                   const Tensor& input, IntArrayRef kernel_size,
                                   IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
                                   int64_t rolls, int64_t shift, c10::string_view algorithm) {
  constexpr const char* op = "rollconv.roll_conv2d_backward_weight";
  check_4d_operands(op, k, "grad_output", grad_output, "input", input);
  TORCH_CHECK(rolls >= 1 && grad_output.size(1) % rolls == 0, op, ": rolls=", rolls,
              " must be positive and divide grad_output.shape[1] (", grad_output.size(1), ")");
  const int64_t filters = grad_output.size(1) / rolls;
  const Pair kernel = pair_arg(op, "kernel_size", kernel_size);
  const ConvSetup s = roll_setup(op, input.size(1), filters, input.size(1), spatial(input), kernel,
                                 stride, padding, dilation, rolls, shift);
  check_grad_output(op, grad_output, input.size(0), s.plan.out_channels, s.layout.win);
  const RollAlgorithm alg = roll_algorithm(op, algorithm, rolls, shift, input.size(1));
  const std::vector<int64_t> shape{filters, input.size(1), kernel.h, kernel.w};
  check_numel_fits(op, "grad_weight", shape);
  Tensor grad_weight;
  if (nothing_to_sum(input.size(0), input.size(1), filters)) {
    grad_weight = at::zeros(shape, input.options());
  } else if (alg == RollAlgorithm::kFft) {
    grad_weight = fft_backward_weight(k, grad_output, input, kernel, shift, s.layout.win);
  } else if (alg == RollAlgorithm::kBank) {
    const Tensor bank_shape = shape_only(input, {grad_output.size(1), input.size(1), kernel.h, kernel.w});
    const Tensor grad_bank = std::get<1>(at::convolution_backward(
        grad_output.contiguous(), input, bank_shape, std::nullopt, stride, padding, dilation, false,
        {0, 0}, 1, {false, true, false}));
    grad_weight = fold_bank(grad_bank, rolls, shift);
  } else {
    const Tensor grad_band = gemm_conv_backward_weight(k, grad_output, input, s.layout, s.plan);
    grad_weight = fold_roll_band(grad_band, filters, input.size(1), shift, kernel).to(input.scalar_type());
  }
  return in_memory_format_of(grad_weight, {grad_output, input});
}

}  // namespace rollconv::ops
