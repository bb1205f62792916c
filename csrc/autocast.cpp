// Autocast kernels of every rollconv op (AutocastCPU and AutocastCUDA), following the policy
// torch applies to its own ops under torch.autocast (ATen's autocast_mode.cpp; torchvision's
// csrc/ops/autocast/ registers its ops the same way):
//   - the convolutions (conv2d and roll_conv2d, each pass; conv_transpose2d is conv2d's dX
//     pass) cast their floating operands, float64 excepted, to the autocast dtype of the
//     device (torch.get_autocast_dtype), as aten::conv2d's lower_precision_fp policy does;
//   - pooling, LRN and the bias gradient run in the dtype they receive (torch's pooling is
//     on no autocast list either).
// Each kernel then calls the op with the autocast key excluded, so that nothing inside it
// (the 'bank' algorithm's at::convolution, ATen reductions) is cast again: a kernel returns
// what its fake kernel (rollconv/_ops.py) says for the operands it was given.
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

namespace rollconv {
namespace {

enum class Policy {
  kLowerPrecision,  // floating operands (not float64) cast to the autocast dtype
  kAsReceived,      // run in the dtype received
};

struct OpPolicy {
  const char* op;
  Policy policy;
};

constexpr OpPolicy kPolicies[] = {
    {"conv2d_forward", Policy::kLowerPrecision},
    {"conv2d_backward_input", Policy::kLowerPrecision},
    {"conv2d_backward_weight", Policy::kLowerPrecision},
    {"roll_conv2d_forward", Policy::kLowerPrecision},
    {"roll_conv2d_backward_input", Policy::kLowerPrecision},
    {"roll_conv2d_backward_weight", Policy::kLowerPrecision},
    {"roll_conv2d_backward", Policy::kLowerPrecision},
    {"bias_backward", Policy::kAsReceived},
    {"max_pool2d_forward", Policy::kAsReceived},
    {"max_pool2d_backward", Policy::kAsReceived},
    {"local_response_norm_forward", Policy::kAsReceived},
    {"local_response_norm_backward", Policy::kAsReceived},
};

// Boxed, so that one kernel serves every schema: the op's arguments are the last
// `arguments().size()` entries of the stack; Tensor and Tensor? arguments are cast with
// at::autocast::cached_cast (which skips float64, integer and other devices' tensors and
// reuses the cast of a leaf parameter within one autocast region, as torch's ops do).
template <c10::DeviceType Device, Policy P>
void autocast_kernel(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(
      at::autocast::get_autocast_dispatch_key_from_device_type(Device));
  if constexpr (P == Policy::kLowerPrecision) {
    const at::ScalarType dtype = at::autocast::get_lower_precision_fp_from_device_type(Device);
    const auto arguments = static_cast<std::ptrdiff_t>(op.schema().arguments().size());
    for (auto it = stack->end() - arguments; it != stack->end(); ++it) {
      if (it->isTensor()) *it = at::autocast::cached_cast(dtype, it->toTensor(), Device);
    }
  }
  op.callBoxed(stack);
}

template <c10::DeviceType Device>
void register_autocast_kernels(torch::Library& m) {
  for (const OpPolicy& p : kPolicies) {
    m.impl(p.op, p.policy == Policy::kLowerPrecision
                     ? torch::CppFunction::makeFromBoxedFunction<&autocast_kernel<Device, Policy::kLowerPrecision>>()
                     : torch::CppFunction::makeFromBoxedFunction<&autocast_kernel<Device, Policy::kAsReceived>>());
  }
}

}  // namespace
}  // namespace rollconv

TORCH_LIBRARY_IMPL(rollconv, AutocastCPU, m) {
  rollconv::register_autocast_kernels<c10::DeviceType::CPU>(m);
}

TORCH_LIBRARY_IMPL(rollconv, AutocastCUDA, m) {
  rollconv::register_autocast_kernels<c10::DeviceType::CUDA>(m);
}
