// roll_conv2d's combined backward: the input, weight and bias gradients from one op, for
// autograd when several are needed. The separate passes (conv.cpp) each read grad_output,
// and with a fused ReLU autograd first writes a masked copy of it; here grad_output is
// masked as it is read, and on a device whose fused channel-FFT engine serves the
// configuration (CPU, shift 1) it is transformed once for all three gradients (the engine's
// backward). Elsewhere the op masks grad_output once and runs the separate passes on it.
#include <ATen/ATen.h>

#include "common/checks.h"
#include "common/ops.h"

namespace rollconv::ops {
namespace {

constexpr const char* kOp = "rollconv.roll_conv2d_backward";

Tensor masked_grad(const Tensor& grad_output, const std::optional<Tensor>& output) {
  return output.has_value() && output->defined() ? at::threshold_backward(grad_output, *output, 0) : grad_output;
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor> roll_conv2d_backward(
    const DeviceKernels& k, const Tensor& grad_output, const Tensor& input, const Tensor& weight,
    const std::optional<Tensor>& output, IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
    int64_t rolls, int64_t shift, c10::string_view algorithm, std::array<bool, 3> output_mask) {
  check_4d_operands(kOp, k, "input", input, "weight", weight);
  check_4d_operands(kOp, k, "grad_output", grad_output, "input", input);
  check_nonempty_images(kOp, "input", input);
  const Window2d w = detail::roll_window(kOp, input, weight, stride, padding, dilation, rolls, shift);
  const int64_t batch = input.size(0), channels = input.size(1), filters = weight.size(0);
  check_grad_output(kOp, grad_output, batch, rolls * filters, w);
  const bool relu = output.has_value() && output->defined();
  if (relu) {
    check_same_kind(kOp, "output", *output, "grad_output", grad_output);
    TORCH_CHECK(output->sizes() == grad_output.sizes(), kOp, ": expected output of the shape of grad_output ",
                grad_output.sizes(), ", but got ", output->sizes());
  }
  const auto [want_dx, want_dk, want_db] = output_mask;
  const bool fused = detail::roll_runs_fused_fft(kOp, k, grad_output, algorithm, rolls, shift, channels, w);
  Tensor grad_input, grad_weight, grad_bias;
  if (fused && batch > 0 && filters > 0 && (want_dx || want_dk)) {
    const Tensor taps = detail::roll_fft_taps(weight);
    if (want_dx) grad_input = at::empty({batch, channels, w.in_h, w.in_w}, grad_output.options());
    const Tensor grad_taps = want_dk ? at::empty_like(taps) : Tensor();
    if (want_db) grad_bias = at::empty({filters}, grad_output.options());
    k.roll_fft_engine->backward(grad_output.contiguous(), relu ? output->contiguous() : Tensor(),
                                input.contiguous(), taps, w, grad_input, grad_taps, grad_bias);
    if (want_dk) grad_weight = detail::roll_fft_weight_from_taps(grad_taps, channels);
  } else {
    // Masked once (one pass), contiguous once for the passes that each read it.
    const Tensor grad = masked_grad(grad_output, output).contiguous();
    if (want_dx) {
      grad_input = roll_conv2d_backward_input(k, grad, weight, {w.in_h, w.in_w}, stride, padding, dilation, rolls,
                                              shift, algorithm);
    }
    if (want_dk) {
      grad_weight = roll_conv2d_backward_weight(k, grad, input, {w.kernel_h, w.kernel_w}, stride, padding,
                                                dilation, rolls, shift, algorithm);
    }
    if (want_db) grad_bias = bias_backward(k, grad, filters);
  }
  // The separate passes' memory-format rule, on this op's operands.
  if (want_dx) grad_input = in_memory_format_of(grad_input, {grad_output, weight});
  if (want_dk) grad_weight = in_memory_format_of(grad_weight, {grad_output, input});
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace rollconv::ops
