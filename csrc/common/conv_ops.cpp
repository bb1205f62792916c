// The convolution ops' entry points (common/ops.h): argument validation, the sizes with
// nothing to compute, and the choice among the algorithms, each in its own file:
//   conv_plan.h      the block-GEMM plans (groups, bands of rolls) and the roll band;
//   conv_gemm.h      the block-GEMM passes: the device's engine, or im2col + ATen GEMMs
//                    (conv2d, and roll_conv2d's 'direct');
//   dx_by_forward.h  a stride-1 dX as a forward convolution;
//   roll_bank.h      roll_conv2d's 'bank' (the expanded bank through ATen's convolution);
//   roll_fft.h       roll_conv2d's 'fft' (the block-FFT over the channels).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <c10/util/accumulate.h>

#include <algorithm>
#include <vector>

#include "common/checks.h"
#include "common/conv_gemm.h"
#include "common/conv_plan.h"
#include "common/dx_by_forward.h"
#include "common/ops.h"
#include "common/roll_bank.h"
#include "common/roll_fft.h"

namespace rollconv::ops {
namespace {

void check_bias(const char* op, const std::optional<Tensor>& bias, int64_t expected,
                const Tensor& input) {
  if (!bias.has_value() || !bias->defined()) return;
  TORCH_CHECK(bias->dim() == 1 && bias->size(0) == expected, op, ": expected bias of shape (",
              expected, "), but got ", bias->sizes());
  check_same_kind(op, "bias", *bias, "input", input);
}

// roll_conv2d's algorithm argument; 'fft' needs a block-circulant bank.
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

Tensor conv2d_forward(const DevicePrimitives& prims, const Tensor& input, const Tensor& weight,
                      const std::optional<Tensor>& bias, IntArrayRef stride, IntArrayRef padding,
                      IntArrayRef dilation, int64_t groups) {
  constexpr const char* op = "rollconv.conv2d";
  check_4d_operands(op, prims, "input", input, "weight", weight);
  check_nonempty_images(op, "input", input);
  check_bias(op, bias, weight.size(0), input);
  const ConvSetup s = conv2d_setup(op, input.size(1), weight.size(0), weight.size(1),
                                   spatial(input), spatial(weight), stride, padding, dilation, groups);
  check_output_fits(op, input.size(0), weight.size(0), s.layout.win);
  Tensor out = nothing_to_sum(input.size(0), input.size(1), weight.size(0))
                   ? bias_only_output(input, input.size(0), weight.size(0), s.layout.win, bias,
                                      weight.size(0), /*relu=*/false)
                   : gemm_conv_forward(prims, input, weight.contiguous().view({weight.size(0), -1}), bias,
                                       s.layout, s.plan, /*relu=*/false);
  return in_memory_format_of(out, {input, weight});
}

Tensor conv2d_backward_input(const DevicePrimitives& prims, const Tensor& grad_output,
                             const Tensor& weight, IntArrayRef input_size, IntArrayRef stride,
                             IntArrayRef padding, IntArrayRef dilation, int64_t groups) {
  constexpr const char* op = "rollconv.conv2d_backward_input";
  check_4d_operands(op, prims, "grad_output", grad_output, "weight", weight);
  check_nonempty_images(op, "grad_output", grad_output);
  const Pair in = pair_arg(op, "input_size", input_size);
  const ConvSetup s = conv2d_setup(op, weight.size(1) * groups, weight.size(0), weight.size(1), in,
                                   spatial(weight), stride, padding, dilation, groups);
  check_grad_output(op, grad_output, grad_output.size(0), weight.size(0), s.layout.win);
  check_numel_fits(op, "grad_input", {grad_output.size(0), s.layout.channels, in.h, in.w});
  Tensor grad_input;
  if (nothing_to_sum(grad_output.size(0), s.layout.channels, weight.size(0))) {
    grad_input = at::zeros({grad_output.size(0), s.layout.channels, in.h, in.w}, grad_output.options());
  } else if (use_dx_by_forward(prims, grad_output, s.layout.win)) {
    grad_input = dx_by_forward(prims, grad_output, weight, groups, s.layout.win, dilation);
  } else {
    grad_input = gemm_conv_backward_input(prims, grad_output, weight.contiguous().view({weight.size(0), -1}),
                                          s.layout, s.plan);
  }
  return in_memory_format_of(grad_input, {grad_output, weight});
}

Tensor conv2d_backward_weight(const DevicePrimitives& prims, const Tensor& grad_output,
                              const Tensor& input, IntArrayRef kernel_size, IntArrayRef stride,
                              IntArrayRef padding, IntArrayRef dilation, int64_t groups) {
  constexpr const char* op = "rollconv.conv2d_backward_weight";
  check_4d_operands(op, prims, "grad_output", grad_output, "input", input);
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
          : gemm_conv_backward_weight(prims, grad_output, input, s.layout, s.plan).view(shape).to(input.scalar_type());
  return in_memory_format_of(grad_weight, {grad_output, input});
}

// (expand and one copy: Tensor::repeat runs several small ATen ops, ~tens of us per call.)
Tensor bias_per_channel(const Tensor& bias, int64_t out_channels) {
  const int64_t period = bias.size(0), copies = period == 0 ? 0 : out_channels / period;  // (no filters: empty)
  return bias.view({1, period}).expand({copies, period}).contiguous().view({out_channels});
}

Tensor bias_backward(const DevicePrimitives& prims, const Tensor& grad_output, int64_t channels) {
  constexpr const char* op = "rollconv.bias_backward";
  check_input(op, "grad_output", grad_output, -2, prims);
  const int64_t total = grad_output.size(1);
  TORCH_CHECK(channels >= 0 && (channels == 0 ? total == 0 : total % channels == 0), op,
              ": channels=", channels, " must be non-negative and divide grad_output.shape[1] (",
              total, ")");
  const auto acc = at::toOpMathType(grad_output.scalar_type());
  if (channels == 0) return at::zeros({0}, grad_output.options());
  // Explicit sizes (no -1): a zero batch or zero pixels leaves -1 ambiguous.
  const int64_t pixels = c10::multiply_integers(grad_output.sizes().slice(2));
  return grad_output.reshape({grad_output.size(0), total / channels, channels, pixels})
      .sum({0, 1, 3}, /*keepdim=*/false, acc)
      .to(grad_output.scalar_type());
}

Tensor roll_conv2d_forward(const DevicePrimitives& prims, const Tensor& input, const Tensor& weight,
                           const std::optional<Tensor>& bias, IntArrayRef stride,
                           IntArrayRef padding, IntArrayRef dilation, int64_t rolls, int64_t shift,
                           c10::string_view algorithm, bool relu) {
  constexpr const char* op = "rollconv.roll_conv2d";
  check_4d_operands(op, prims, "input", input, "weight", weight);
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
    out = roll_fft_forward(prims, input, weight, bias, shift, s.layout.win, relu);
  } else if (alg == RollAlgorithm::kBank) {
    out = roll_bank_forward(input, weight, bias, stride, padding, dilation, rolls, shift, relu);
  } else {
    out = gemm_conv_forward(prims, input, roll_band(weight, s.plan, shift), bias, s.layout, s.plan, relu);
  }
  return in_memory_format_of(out, {input, weight});
}

Tensor roll_conv2d_backward_input(const DevicePrimitives& prims, const Tensor& grad_output,
                                  const Tensor& weight, IntArrayRef input_size,
                                  IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
                                  int64_t rolls, int64_t shift, c10::string_view algorithm) {
  constexpr const char* op = "rollconv.roll_conv2d_backward_input";
  check_4d_operands(op, prims, "grad_output", grad_output, "weight", weight);
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
    grad_input = roll_fft_backward_input(prims, grad_output, weight, shift, w);
  } else if (alg == RollAlgorithm::kBank) {
    grad_input = roll_bank_backward_input(grad_output, weight, w, stride, padding, dilation, rolls, shift);
  } else if (use_dx_by_forward(prims, grad_output, w)) {  // the bank's dX, as conv2d's
    grad_input = dx_by_forward(prims, grad_output, expand_bank(weight, rolls, shift), 1, w, dilation);
  } else {
    grad_input = gemm_conv_backward_input(prims, grad_output, roll_band(weight, s.plan, shift), s.layout, s.plan);
  }
  return in_memory_format_of(grad_input, {grad_output, weight});
}

Tensor roll_conv2d_backward_weight(const DevicePrimitives& prims, const Tensor& grad_output,
                                   const Tensor& input, IntArrayRef kernel_size,
                                   IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
                                   int64_t rolls, int64_t shift, c10::string_view algorithm) {
  constexpr const char* op = "rollconv.roll_conv2d_backward_weight";
  check_4d_operands(op, prims, "grad_output", grad_output, "input", input);
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
    grad_weight = roll_fft_backward_weight(prims, grad_output, input, kernel, shift, s.layout.win);
  } else if (alg == RollAlgorithm::kBank) {
    grad_weight = roll_bank_backward_weight(grad_output, input, kernel, stride, padding, dilation, rolls, shift);
  } else {
    const Tensor grad_band = gemm_conv_backward_weight(prims, grad_output, input, s.layout, s.plan);
    grad_weight = fold_roll_band(grad_band, filters, input.size(1), shift, kernel).to(input.scalar_type());
  }
  return in_memory_format_of(grad_weight, {grad_output, input});
}

namespace {

// Samples per chunk of the separate passes of roll_conv2d_backward with ReLU: its mask is
// applied a chunk at a time (about kMaskedChunkBytes of grad_output, at least one sample,
// at most kMaxMaskedChunks chunks of equal size), so that the masked copy of grad_output
// never exists whole, next to the saved output the mask reads (the filter-bank method's
// autograd holds both whole: this keeps the op's peak memory below it). Only from
// kMaskedChunkMinBytes on: each chunk runs the passes' set-up again, which measured 5-20%
// slower on a 3 MiB grad_output (the demo's) and no slower on 8 MiB; the cap on the chunks
// bounds that set-up on large tensors. float32/float64 only: dK and db add up the chunks
// in the op's dtype. CPU only: on CUDA each chunk's launches and cuDNN calls made the
// float32 backward 1.6-3.5x slower (H200, bench/gpu_check_h200.md), for memory a GPU has.
constexpr int64_t kMaskedChunkBytes = int64_t(2) << 20;
constexpr int64_t kMaskedChunkMinBytes = int64_t(8) << 20;
constexpr int64_t kMaxMaskedChunks = 8;
int64_t masked_chunk_samples(const Tensor& grad_output, bool relu) {
  const int64_t batch = grad_output.size(0);
  const bool wide = grad_output.scalar_type() == at::kFloat || grad_output.scalar_type() == at::kDouble;
  const int64_t bytes = grad_output.numel() * int64_t(grad_output.element_size());
  if (!relu || !wide || !grad_output.is_cpu() || batch <= 1 || bytes < kMaskedChunkMinBytes) return batch;
  const int64_t chunks = std::min({batch, ceil_div(bytes, kMaskedChunkBytes), kMaxMaskedChunks});
  return ceil_div(batch, chunks);
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor> roll_conv2d_backward(
    const DevicePrimitives& prims, const Tensor& grad_output, const Tensor& input, const Tensor& weight,
    const std::optional<Tensor>& output, IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
    int64_t rolls, int64_t shift, c10::string_view algorithm, std::array<bool, 3> output_mask) {
  constexpr const char* op = "rollconv.roll_conv2d_backward";
  check_4d_operands(op, prims, "input", input, "weight", weight);
  check_4d_operands(op, prims, "grad_output", grad_output, "input", input);
  check_nonempty_images(op, "input", input);
  const ConvSetup s = roll_setup(op, input.size(1), weight.size(0), weight.size(1), spatial(input),
                                 spatial(weight), stride, padding, dilation, rolls, shift);
  const Window2d& w = s.layout.win;
  const int64_t batch = input.size(0), channels = input.size(1), filters = weight.size(0);
  check_grad_output(op, grad_output, batch, s.plan.out_channels, w);
  const bool relu = output.has_value() && output->defined();
  if (relu) {
    check_same_kind(op, "output", *output, "grad_output", grad_output);
    TORCH_CHECK(output->sizes() == grad_output.sizes(), op, ": expected output of the shape of grad_output ",
                grad_output.sizes(), ", but got ", output->sizes());
  }
  const RollAlgorithm alg = roll_algorithm(op, algorithm, rolls, shift, channels);
  const auto [want_dx, want_dk, want_db] = output_mask;
  Tensor grad_input, grad_weight, grad_bias;
  // grad_output read (and on the 'fft' path transformed) once for all the gradients where
  // the device's fused engine serves the configuration; else masked once, then the passes.
  const bool fused = alg == RollAlgorithm::kFft && !nothing_to_sum(batch, channels, filters) &&
                     (want_dx || want_dk) &&
                     roll_fft_backward_fused(prims, grad_output, output, input, weight, shift, w, output_mask,
                                             grad_input, grad_weight, grad_bias);
  if (!fused) {
    // The separate passes on the masked grad_output of samples [n0, n0 + nb).
    const auto passes = [&](int64_t n0, int64_t nb, Tensor& dx, Tensor& dk, Tensor& db) {
      const Tensor dy = grad_output.narrow(0, n0, nb);
      const Tensor grad = (relu ? at::threshold_backward(dy, output->narrow(0, n0, nb), 0) : dy).contiguous();
      if (want_dx) {
        dx = roll_conv2d_backward_input(prims, grad, weight, {w.in_h, w.in_w}, stride, padding, dilation, rolls,
                                        shift, algorithm);
      }
      if (want_dk) {
        dk = roll_conv2d_backward_weight(prims, grad, input.narrow(0, n0, nb), {w.kernel_h, w.kernel_w}, stride,
                                         padding, dilation, rolls, shift, algorithm);
      }
      if (want_db) db = bias_backward(prims, grad, filters);
    };
    const int64_t chunk = masked_chunk_samples(grad_output, relu);
    if (chunk >= batch) {
      passes(0, batch, grad_input, grad_weight, grad_bias);
    } else {
      // A chunk's dX fills its rows of grad_input; dK and db add up the chunks in order.
      for (int64_t n0 = 0; n0 < batch; n0 += chunk) {
        Tensor dx, dk, db;
        passes(n0, std::min(chunk, batch - n0), dx, dk, db);
        if (want_dx) {
          if (!grad_input.defined()) grad_input = at::empty({batch, channels, w.in_h, w.in_w}, dx.options());
          grad_input.narrow(0, n0, dx.size(0)).copy_(dx);
        }
        if (want_dk) grad_weight = grad_weight.defined() ? grad_weight.add_(dk) : dk;
        if (want_db) grad_bias = grad_bias.defined() ? grad_bias.add_(db) : db;
      }
    }
  }
  // The separate passes' memory-format rule, on this op's operands.
  if (want_dx) grad_input = in_memory_format_of(grad_input, {grad_output, weight});
  if (want_dk) grad_weight = in_memory_format_of(grad_weight, {grad_output, input});
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace rollconv::ops
