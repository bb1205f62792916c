#include "common/checks.h"

#include <c10/util/Exception.h>

namespace rollconv {

Pair pair_arg(const char* op, const char* name, at::IntArrayRef values) {
  TORCH_CHECK(values.size() == 2 || values.size() == 1, op, ": expected ", name,
              " to be an int or a pair of ints, but got ", values.size(), " values ", values);
  return values.size() == 1 ? Pair{values[0], values[0]} : Pair{values[0], values[1]};
}

void check_input(const char* op, const char* name, const at::Tensor& t, int64_t ndim,
                 const DeviceKernels& kernels) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is undefined");
  if (ndim >= 0) {
    TORCH_CHECK(t.dim() == ndim, op, ": expected ", name, " to have ", ndim,
                " dimensions, but got a tensor of shape ", t.sizes());
  } else {
    TORCH_CHECK(t.dim() >= -ndim, op, ": expected ", name, " to have at least ", -ndim,
                " dimensions, but got a tensor of shape ", t.sizes());
  }
  const auto dtype = t.scalar_type();
  const bool full = dtype == at::kFloat || dtype == at::kDouble;
  const bool reduced = dtype == at::kHalf || dtype == at::kBFloat16;
  TORCH_CHECK(full || (reduced && kernels.supports_reduced_precision), op, ": ", name,
              " has dtype ", dtype, ", but ", kernels.device_name, " kernels support ",
              kernels.supports_reduced_precision ? "float32, float64, float16 and bfloat16"
                                                 : "float32 and float64");
}

void check_same_kind(const char* op, const char* name, const at::Tensor& t, const char* ref_name,
                     const at::Tensor& ref) {
  TORCH_CHECK(t.device() == ref.device(), op, ": expected ", name, " on the same device as ",
              ref_name, " (", ref.device(), "), but it is on ", t.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": expected ", name,
              " to have the same dtype as ", ref_name, " (", ref.scalar_type(), "), but got ",
              t.scalar_type());
}

void check_4d_operands(const char* op, const DeviceKernels& kernels, const char* first_name,
                       const at::Tensor& first, const char* second_name, const at::Tensor& second) {
  check_input(op, first_name, first, 4, kernels);
  check_input(op, second_name, second, 4, kernels);
  check_same_kind(op, second_name, second, first_name, first);
}

namespace {

// A window with everything but its output size, after the checks shared by all windows.
Window2d checked_window(const char* op, Pair input, Pair kernel, Pair stride, Pair padding,
                        Pair dilation) {
  TORCH_CHECK(kernel.h > 0 && kernel.w > 0, op, ": kernel_size must be positive, but got (",
              kernel.h, ", ", kernel.w, ")");
  TORCH_CHECK(stride.h > 0 && stride.w > 0, op, ": stride must be positive, but got (", stride.h,
              ", ", stride.w, ")");
  TORCH_CHECK(dilation.h > 0 && dilation.w > 0, op, ": dilation must be positive, but got (",
              dilation.h, ", ", dilation.w, ")");
  TORCH_CHECK(padding.h >= 0 && padding.w >= 0, op, ": padding must be non-negative, but got (",
              padding.h, ", ", padding.w, ")");
  Window2d w{};
  w.in_h = input.h;
  w.in_w = input.w;
  w.kernel_h = kernel.h;
  w.kernel_w = kernel.w;
  w.stride_h = stride.h;
  w.stride_w = stride.w;
  w.pad_h = padding.h;
  w.pad_w = padding.w;
  w.dil_h = dilation.h;
  w.dil_w = dilation.w;
  return w;
}

}  // namespace

Window2d conv_window(const char* op, Pair input, Pair kernel, Pair stride, Pair padding,
                     Pair dilation) {
  Window2d w = checked_window(op, input, kernel, stride, padding, dilation);
  const int64_t span_h = dilation.h * (kernel.h - 1) + 1;
  const int64_t span_w = dilation.w * (kernel.w - 1) + 1;
  TORCH_CHECK(input.h + 2 * padding.h >= span_h && input.w + 2 * padding.w >= span_w, op,
              ": the kernel (", span_h, " x ", span_w, " after dilation) is larger than the padded input (",
              input.h + 2 * padding.h, " x ", input.w + 2 * padding.w, ")");
  w.out_h = (input.h + 2 * padding.h - span_h) / stride.h + 1;
  w.out_w = (input.w + 2 * padding.w - span_w) / stride.w + 1;
  return w;
}

namespace {

// torch's pooling_output_shape: floor or ceil division; with ceil_mode the last window
// must start inside the input or its left padding.
int64_t pooled_size(int64_t in, int64_t kernel, int64_t stride, int64_t pad, int64_t dil,
                    bool ceil_mode) {
  const int64_t numerator = in + 2 * pad - dil * (kernel - 1) - 1 + (ceil_mode ? stride - 1 : 0);
  int64_t out = (numerator >= 0 ? numerator / stride : -((-numerator + stride - 1) / stride)) + 1;
  if (ceil_mode && (out - 1) * stride >= in + pad) --out;
  return out;
}

}  // namespace

Window2d pool_window(const char* op, Pair input, Pair kernel, Pair stride, Pair padding,
                     Pair dilation, bool ceil_mode) {
  Window2d w = checked_window(op, input, kernel, stride, padding, dilation);
  TORCH_CHECK(padding.h <= kernel.h / 2 && padding.w <= kernel.w / 2, op,
              ": padding must be at most half of kernel_size, but got padding=(", padding.h, ", ",
              padding.w, ") and kernel_size=(", kernel.h, ", ", kernel.w, ")");
  w.out_h = pooled_size(input.h, kernel.h, stride.h, padding.h, dilation.h, ceil_mode);
  w.out_w = pooled_size(input.w, kernel.w, stride.w, padding.w, dilation.w, ceil_mode);
  TORCH_CHECK(w.out_h > 0 && w.out_w > 0, op, ": the output would be empty (", w.out_h, " x ",
              w.out_w, ") for input ", input.h, " x ", input.w, "; the pooling window is too large");
  return w;
}

void check_grad_output(const char* op, const at::Tensor& grad_output, int64_t batch,
                       int64_t channels, const Window2d& window) {
  const std::vector<int64_t> expected{batch, channels, window.out_h, window.out_w};
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef(expected), op,
              ": expected grad_output of shape ", at::IntArrayRef(expected), ", but got ",
              grad_output.sizes());
}

}  // namespace rollconv
