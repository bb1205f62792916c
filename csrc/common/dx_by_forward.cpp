// A stride-1 convolution's dX as a forward convolution. See dx_by_forward.h.
#include "common/dx_by_forward.h"

#include <ATen/ATen.h>

#include "common/conv_gemm.h"
#include "common/conv_plan.h"
#include "common/ops.h"

namespace rollconv::ops {

// Where the device's engine runs the forward (it reads the image in place at stride 1) and
// the forward's padding, reach - pad, is not negative: there it beats the GEMM and col2im
// (README, "Performance").
bool use_dx_by_forward(const DevicePrimitives& prims, const Tensor& grad_output, const Window2d& w) {
  const int64_t reach_h = w.dil_h * (w.kernel_h - 1), reach_w = w.dil_w * (w.kernel_w - 1);
  return uses_conv_engine(prims, grad_output) && w.stride_h == 1 && w.stride_w == 1 && w.pad_h <= reach_h &&
         w.pad_w <= reach_w && reach_h + reach_w > 0;
}

Tensor dx_by_forward(const DevicePrimitives& prims, const Tensor& grad_output, const Tensor& weight, int64_t groups,
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
  return gemm_conv_forward(prims, grad_output, flipped.view({groups * cin_g, -1}), std::nullopt, t.layout, t.plan,
                           /*relu=*/false);
}

}  // namespace rollconv::ops
