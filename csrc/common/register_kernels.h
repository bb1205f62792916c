// Registers every op of common/ops.h as a dispatcher kernel of one device, bound to that
// device's DevicePrimitives table. cpu/ and cuda/ each call register_device_kernels once, so
// the op list is written only here.
#pragma once

#include <optional>
#include <tuple>
#include <type_traits>

#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include "common/ops.h"

namespace rollconv {

// How a device computes float16/bfloat16 convolutions (pooling, LRN and the bias gradient
// always run in the tensors' dtype, accumulating in float32).
enum class ReducedPrecision {
  kNative,     // its own kernels in that dtype, float32 accumulation (CUDA: cuBLAS, cuDNN)
  kInFloat32,  // operands converted to float32 up front, the float32 kernels and engines
               // run, the result is rounded back (CPU: its engines are float32/float64)
};

// Turns `R fn(const DevicePrimitives&, Args...)` into `R call(Args...)` for one device.
template <const DevicePrimitives& (*Primitives)(), auto Fn>
struct OnDevice;

template <const DevicePrimitives& (*Primitives)(), typename R, typename... Args,
          R (*Fn)(const DevicePrimitives&, Args...)>
struct OnDevice<Primitives, Fn> {
  static R call(Args... args) { return Fn(Primitives(), args...); }
};

namespace in_float32 {

// The dtype every defined tensor argument shares, if they share one.
struct SharedDtype {
  std::optional<at::ScalarType> dtype;
  bool mixed = false;

  void add(const at::Tensor& t) {
    if (!t.defined()) return;
    if (!dtype) {
      dtype = t.scalar_type();
    } else if (*dtype != t.scalar_type()) {
      mixed = true;
    }
  }
  void add(const std::optional<at::Tensor>& t) {
    if (t.has_value()) add(*t);
  }
  template <typename T>
  void add(const T&) {}

  bool reduced() const {
    return !mixed && dtype && (*dtype == at::kHalf || *dtype == at::kBFloat16);
  }
};

// A float32 copy in the same memory format (the op applies torch's memory-format rule to
// its operands, and makes them contiguous itself where it needs to).
inline at::Tensor widen(const at::Tensor& t) {
  return t.defined() ? t.to(at::kFloat, /*non_blocking=*/false, /*copy=*/false,
                            at::MemoryFormat::Preserve)
                     : t;
}
inline std::optional<at::Tensor> widen(const std::optional<at::Tensor>& t) {
  return t.has_value() ? std::optional<at::Tensor>(widen(*t)) : t;
}
template <typename T>
const T& widen(const T& arg) {
  return arg;
}

// The result rounded to `dtype` (undefined tensors, the gradients not asked for, stay so).
inline at::Tensor narrow(const at::Tensor& t, at::ScalarType dtype) { return t.defined() ? t.to(dtype) : t; }
template <typename... Ts>
std::tuple<Ts...> narrow(const std::tuple<Ts...>& results, at::ScalarType dtype) {
  return std::apply([&](const auto&... t) { return std::tuple<Ts...>(narrow(t, dtype)...); }, results);
}

}  // namespace in_float32

// OnDevice, with float16/bfloat16 operands computed in float32: when every tensor argument
// has the same reduced dtype, they are converted, the op runs, and its results are rounded
// to that dtype. Anything else (float32, float64, mixed dtypes that the op's checks
// reject) is passed through unchanged.
template <const DevicePrimitives& (*Primitives)(), auto Fn>
struct InFloat32;

template <const DevicePrimitives& (*Primitives)(), typename R, typename... Args,
          R (*Fn)(const DevicePrimitives&, Args...)>
struct InFloat32<Primitives, Fn> {
  static R call(Args... args) {
    in_float32::SharedDtype shared;
    (shared.add(args), ...);
    if (!shared.reduced()) return Fn(Primitives(), args...);
    return in_float32::narrow(Fn(Primitives(), in_float32::widen(args)...), *shared.dtype);
  }
};

template <const DevicePrimitives& (*Primitives)(), ReducedPrecision Reduced = ReducedPrecision::kNative>
void register_device_kernels(torch::Library& m) {
#define ROLLCONV_IMPL(name) m.impl(#name, TORCH_FN((OnDevice<Primitives, &ops::name>::call)))
// The convolutions: their GEMMs and FFTs run in the device's engines or ATen.
#define ROLLCONV_CONV_IMPL(name)                                               \
  if constexpr (Reduced == ReducedPrecision::kInFloat32) {                     \
    m.impl(#name, TORCH_FN((InFloat32<Primitives, &ops::name>::call)));           \
  } else {                                                                     \
    ROLLCONV_IMPL(name);                                                       \
  }
  ROLLCONV_CONV_IMPL(conv2d_forward);
  ROLLCONV_CONV_IMPL(conv2d_backward_input);
  ROLLCONV_CONV_IMPL(conv2d_backward_weight);
  ROLLCONV_CONV_IMPL(roll_conv2d_forward);
  ROLLCONV_CONV_IMPL(roll_conv2d_backward_input);
  ROLLCONV_CONV_IMPL(roll_conv2d_backward_weight);
  ROLLCONV_CONV_IMPL(roll_conv2d_backward);
  ROLLCONV_IMPL(bias_backward);
  ROLLCONV_IMPL(max_pool2d_forward);
  ROLLCONV_IMPL(max_pool2d_backward);
  ROLLCONV_IMPL(local_response_norm_forward);
  ROLLCONV_IMPL(local_response_norm_backward);
#undef ROLLCONV_CONV_IMPL
#undef ROLLCONV_IMPL
}

}  // namespace rollconv
