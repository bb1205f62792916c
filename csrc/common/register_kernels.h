// Binds every op of common/ops.h to one device's DeviceKernels table. cpu/ and cuda/
// each call register_device_kernels once, so the op list is written only here.
#pragma once

#include <torch/library.h>

#include "common/ops.h"

namespace rollconv {

// Turns `R fn(const DeviceKernels&, Args...)` into `R call(Args...)` for one device.
template <const DeviceKernels& (*Kernels)(), auto Fn>
struct OnDevice;

template <const DeviceKernels& (*Kernels)(), typename R, typename... Args,
          R (*Fn)(const DeviceKernels&, Args...)>
struct OnDevice<Kernels, Fn> {
  static R call(Args... args) { return Fn(Kernels(), args...); }
};

template <const DeviceKernels& (*Kernels)()>
void register_device_kernels(torch::Library& m) {
#define ROLLCONV_IMPL(name) m.impl(#name, TORCH_FN((OnDevice<Kernels, &ops::name>::call)))
  ROLLCONV_IMPL(conv2d_forward);
  ROLLCONV_IMPL(conv2d_backward_input);
  ROLLCONV_IMPL(conv2d_backward_weight);
  ROLLCONV_IMPL(bias_backward);
  ROLLCONV_IMPL(roll_conv2d_forward);
  ROLLCONV_IMPL(roll_conv2d_backward_input);
  ROLLCONV_IMPL(roll_conv2d_backward_weight);
  ROLLCONV_IMPL(max_pool2d_forward);
  ROLLCONV_IMPL(max_pool2d_backward);
  ROLLCONV_IMPL(local_response_norm_forward);
  ROLLCONV_IMPL(local_response_norm_backward);
#undef ROLLCONV_IMPL
}

}  // namespace rollconv
