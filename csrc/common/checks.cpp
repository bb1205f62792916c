#include "common/checks.h"

#include <c10/util/Exception.h>
#include <c10/util/safe_numerics.h>

#include <limits>

#include "common/device_primitives.h"

namespace rollconv {

Pair pair_arg(const char* op, const char* name, at::IntArrayRef values) {
  TORCH_CHECK(values.size() == 2 || values.size() == 1, op, ": expected ", name,
              " to be an int or a pair of ints, but got ", values.size(), " values ", values);
  return values.size() == 1 ? Pair{values[0], values[0]} : Pair{values[0], values[1]};
}

void check_input(const char* op, const char* name, const at::Tensor& t, int64_t ndim,
                 const DevicePrimitives& prims) {
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
  TORCH_CHECK(full || (reduced && prims.supports_reduced_precision), op, ": ", name,
              " has dtype ", dtype, ", but ", prims.device_name, " kernels support ",
              prims.supports_reduced_precision ? "float32, float64, float16 and bfloat16"
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

void check_4d_operands(const char* op, const DevicePrimitives& prims, const char* first_name,
                       const at::Tensor& first, const char* second_name, const at::Tensor& second) {
  check_input(op, first_name, first, 4, prims);
  check_input(op, second_name, second, 4, prims);
  check_same_kind(op, second_name, second, first_name, first);
}

namespace {

// a * b + c, or a clear error when it does not fit int64 (stride, dilation and padding
// may be anything a Python int holds; their products must not wrap).
int64_t checked_mul_add(const char* op, const char* what, int64_t a, int64_t b, int64_t c) {
  int64_t product = 0, sum = 0;
  TORCH_CHECK(!c10::mul_overflows(a, b, &product) && !c10::add_overflows(product, c, &sum), op,
              ": the ", what, " overflows int64 (", a, " * ", b, " + ", c, ")");
  return sum;
}

// A window with everything but its output size, after the checks shared by all windows.
Window2d checked_window(const char* op, Pair input, Pair kernel, Pair stride, Pair padding,
                        Pair dilation) {
  TORCH_CHECK(input.h >= 0 && input.w >= 0, op, ": the input's spatial size must be non-negative, but got (",
              input.h, ", ", input.w, ")");
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

// The extent of the dilated kernel, dil * (k - 1) + 1, and of the padded input, in + 2 * pad,
// along one axis; both checked against int64 overflow, so that every index the kernels
// compute (all at most the padded extent plus one stride) fits.
struct Extents {
  int64_t span, padded;
};
Extents axis_extents(const char* op, int64_t in, int64_t kernel, int64_t pad, int64_t dil) {
  return Extents{checked_mul_add(op, "dilated kernel size", dil, kernel - 1, 1),
                 checked_mul_add(op, "padded input size", 2, pad, in)};
}

}  // namespace

Window2d conv_window(const char* op, Pair input, Pair kernel, Pair stride, Pair padding,
                     Pair dilation) {
  Window2d w = checked_window(op, input, kernel, stride, padding, dilation);
  const Extents eh = axis_extents(op, input.h, kernel.h, padding.h, dilation.h);
  const Extents ew = axis_extents(op, input.w, kernel.w, padding.w, dilation.w);
  TORCH_CHECK(eh.padded >= eh.span && ew.padded >= ew.span, op, ": the kernel (", eh.span, " x ",
              ew.span, " after dilation) is larger than the padded input (", eh.padded, " x ",
              ew.padded, ")");
  w.out_h = (eh.padded - eh.span) / stride.h + 1;
  w.out_w = (ew.padded - ew.span) / stride.w + 1;
  return w;
}

namespace {

// torch's pooling_output_shape: floor or ceil division; with ceil_mode the last window
// must start inside the input or its left padding.
int64_t pooled_size(const char* op, int64_t in, int64_t kernel, int64_t stride, int64_t pad,
                    int64_t dil, bool ceil_mode) {
  const Extents e = axis_extents(op, in, kernel, pad, dil);
  const int64_t numerator = checked_mul_add(op, "pooling window", 1, e.padded - e.span,
                                            ceil_mode ? stride - 1 : 0);
  int64_t out = (numerator >= 0 ? numerator / stride : -((-numerator + stride - 1) / stride)) + 1;
  if (ceil_mode && out > 0 && (out - 1) * stride >= in + pad) --out;
  return out;
}

}  // namespace

Window2d pool_window(const char* op, Pair input, Pair kernel, Pair stride, Pair padding,
                     Pair dilation, bool ceil_mode) {
  Window2d w = checked_window(op, input, kernel, stride, padding, dilation);
  TORCH_CHECK(padding.h <= kernel.h / 2 && padding.w <= kernel.w / 2, op,
              ": padding must be at most half of kernel_size, but got padding=(", padding.h, ", ",
              padding.w, ") and kernel_size=(", kernel.h, ", ", kernel.w, ")");
  w.out_h = pooled_size(op, input.h, kernel.h, stride.h, padding.h, dilation.h, ceil_mode);
  w.out_w = pooled_size(op, input.w, kernel.w, stride.w, padding.w, dilation.w, ceil_mode);
  TORCH_CHECK(w.out_h > 0 && w.out_w > 0, op, ": the output would be empty (", w.out_h, " x ",
              w.out_w, ") for input ", input.h, " x ", input.w, "; the pooling window is too large");
  return w;
}

void check_nonempty_images(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.size(0) == 0 || t.size(1) == 0 || (t.size(2) > 0 && t.size(3) > 0), op, ": expected ", name,
              " with non-zero height and width (only a zero batch or zero channels may leave it empty), "
              "but got shape ", t.sizes());
}

void check_numel_fits(const char* op, const char* name, at::IntArrayRef shape) {
  uint64_t numel = 0;
  TORCH_CHECK(!c10::safe_multiplies_u64(shape, &numel) &&
                  numel <= uint64_t(std::numeric_limits<int64_t>::max()),
              op, ": ", name, " of shape ", shape, " has more elements than int64 can count");
}

at::Tensor in_memory_format_of(const at::Tensor& result, std::initializer_list<at::Tensor> operands) {
  for (const at::Tensor& t : operands) {
    if (t.dim() == 4 && t.suggest_memory_format() == at::MemoryFormat::ChannelsLast) {
      return result.contiguous(at::MemoryFormat::ChannelsLast);
    }
  }
  return result;
}

void check_grad_output(const char* op, const at::Tensor& grad_output, int64_t batch,
                       int64_t channels, const Window2d& window) {
  const std::vector<int64_t> expected{batch, channels, window.out_h, window.out_w};
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef(expected), op,
              ": expected grad_output of shape ", at::IntArrayRef(expected), ", but got ",
              grad_output.sizes());
}

}  // namespace rollconv
