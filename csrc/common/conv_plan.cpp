// The block plans of conv2d (a block per group) and roll_conv2d (a block per band of rolls),
// and the roll band with its adjoint. See conv_plan.h.
#include "common/conv_plan.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "common/ops.h"

namespace rollconv::ops {
namespace {

int64_t kernel_area(const Window2d& w) { return w.kernel_h * w.kernel_w; }

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

}  // namespace

Pair spatial(const Tensor& t) { return Pair{t.size(2), t.size(3)}; }

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

Tensor fold_roll_band(const Tensor& grad_band, int64_t filters, int64_t channels, int64_t shift, Pair kernel) {
  const int64_t area = kernel.h * kernel.w;
  const int64_t group = grad_band.size(0) / filters;
  Tensor dw = grad_band.narrow(0, 0, filters).narrow(1, 0, channels * area).clone();
  for (int64_t g = 1; g < group; ++g) {
    dw.add_(grad_band.narrow(0, g * filters, filters).narrow(1, g * shift * area, channels * area));
  }
  return dw.view({filters, channels, kernel.h, kernel.w});
}

}  // namespace rollconv::ops
