// roll_conv2d's algorithm 'bank'. See roll_bank.h.
#include "common/roll_bank.h"

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include "common/ops.h"

namespace rollconv::ops {
namespace {

// index[r, c] = (c + shift * r) mod C, for r < R.
Tensor roll_index(int64_t rolls, int64_t channels, int64_t shift, const Tensor& like) {
  const auto opts = like.options().dtype(at::kLong);
  Tensor r = at::arange(rolls, opts).view({rolls, 1});
  Tensor c = at::arange(channels, opts).view({1, channels});
  return (c + shift * r).remainder(channels);
}

// An uninitialized tensor for the ATen calls that read a tensor only for its shape. (Not
// a stride-0 expanded view: that steers convolution_backward away from oneDNN.)
Tensor shape_only(const Tensor& like, at::IntArrayRef shape) {
  return at::empty(shape, like.options());
}

}  // namespace

Tensor expand_bank(const Tensor& weight, int64_t rolls, int64_t shift) {
  const int64_t filters = weight.size(0), channels = weight.size(1);
  const Tensor index = roll_index(rolls, channels, -shift, weight).flatten();
  return weight.index_select(1, index)
      .view({filters, rolls, channels, weight.size(2), weight.size(3)})
      .transpose(0, 1)
      .reshape({rolls * filters, channels, weight.size(2), weight.size(3)});
}

Tensor fold_bank(const Tensor& grad_bank, int64_t rolls, int64_t shift) {
  const int64_t channels = grad_bank.size(1), filters = grad_bank.size(0) / rolls;
  const int64_t area = grad_bank.size(2) * grad_bank.size(3);
  const Tensor index = roll_index(rolls, channels, shift, grad_bank)
                           .view({rolls, 1, channels, 1})
                           .expand({rolls, filters, channels, area});
  return grad_bank.reshape({rolls, filters, channels, area})
      .gather(2, index)
      .sum(0, /*keepdim=*/false, at::toOpMathType(grad_bank.scalar_type()))
      .to(grad_bank.scalar_type())
      .view({filters, channels, grad_bank.size(2), grad_bank.size(3)});
}

Tensor roll_bank_forward(const Tensor& input, const Tensor& weight, const std::optional<Tensor>& bias,
                         IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation, int64_t rolls, int64_t shift,
                         bool relu) {
  const std::optional<Tensor> bank_bias = bias.has_value() && bias->defined()
                                              ? std::optional<Tensor>(bias_per_channel(*bias, rolls * bias->size(0)))
                                              : std::nullopt;
  Tensor out = at::convolution(input, expand_bank(weight, rolls, shift), bank_bias, stride, padding, dilation, false,
                               {0, 0}, 1);
  if (relu) out.relu_();
  return out;
}

Tensor roll_bank_backward_input(const Tensor& grad_output, const Tensor& weight, const Window2d& w,
                                IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation, int64_t rolls,
                                int64_t shift) {
  const Tensor input_shape = shape_only(grad_output, {grad_output.size(0), weight.size(1), w.in_h, w.in_w});
  return std::get<0>(at::convolution_backward(grad_output.contiguous(), input_shape, expand_bank(weight, rolls, shift),
                                              std::nullopt, stride, padding, dilation, false, {0, 0}, 1,
                                              {true, false, false}));
}

Tensor roll_bank_backward_weight(const Tensor& grad_output, const Tensor& input, Pair kernel, IntArrayRef stride,
                                 IntArrayRef padding, IntArrayRef dilation, int64_t rolls, int64_t shift) {
  const Tensor bank_shape = shape_only(input, {grad_output.size(1), input.size(1), kernel.h, kernel.w});
  const Tensor grad_bank = std::get<1>(at::convolution_backward(
      grad_output.contiguous(), input, bank_shape, std::nullopt, stride, padding, dilation, false,
      {0, 0}, 1, {false, true, false}));
  return fold_bank(grad_bank, rolls, shift);
}

}  // namespace rollconv::ops
