// Max pooling and local response normalization: validation and shapes here, the
// per-element math in max_pool_rules.h and lrn_formulas.h, the loops in cpu/ and cuda/.
#include <ATen/ATen.h>
#include <c10/util/accumulate.h>

#include "common/checks.h"
#include "common/ops.h"

namespace rollconv::ops {

std::tuple<Tensor, Tensor> max_pool2d_forward(const DevicePrimitives& prims, const Tensor& input_,
                                              IntArrayRef kernel_size, IntArrayRef stride,
                                              IntArrayRef padding, IntArrayRef dilation,
                                              bool ceil_mode) {
  constexpr const char* op = "rollconv.max_pool2d";
  check_input(op, "input", input_, 4, prims);
  TORCH_CHECK(input_.size(1) > 0 && input_.size(2) > 0 && input_.size(3) > 0, op,
              ": expected an input with non-zero channels, height and width (only the batch may be "
              "empty), but got shape ", input_.sizes());
  const Window2d w = pool_window(op, Pair{input_.size(2), input_.size(3)},
                                 pair_arg(op, "kernel_size", kernel_size),
                                 pair_arg(op, "stride", stride), pair_arg(op, "padding", padding),
                                 pair_arg(op, "dilation", dilation), ceil_mode);
  const Tensor input = input_.contiguous();
  const int64_t n = input.size(0), c = input.size(1);
  Tensor output = at::empty({n, c, w.out_h, w.out_w}, input.options());
  Tensor indices = at::empty({n, c, w.out_h, w.out_w}, input.options().dtype(at::kLong));
  if (output.numel() > 0) {
    prims.max_pool_forward(input.view({n * c, w.in_h, w.in_w}), output.view({n * c, w.out_h, w.out_w}),
                       indices.view({n * c, w.out_h, w.out_w}), w);
  }
  return {in_memory_format_of(output, {input_}), in_memory_format_of(indices, {input_})};
}

Tensor max_pool2d_backward(const DevicePrimitives& prims, const Tensor& grad_output_,
                           const Tensor& indices_, IntArrayRef input_size, IntArrayRef kernel_size,
                           IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation) {
  constexpr const char* op = "rollconv.max_pool2d_backward";
  check_input(op, "grad_output", grad_output_, 4, prims);
  TORCH_CHECK(indices_.dim() == 4 && indices_.scalar_type() == at::kLong &&
                  indices_.sizes() == grad_output_.sizes() &&
                  indices_.device() == grad_output_.device(),
              op, ": expected int64 indices of shape ", grad_output_.sizes(), " on ",
              grad_output_.device(), ", but got ", indices_.scalar_type(), " ", indices_.sizes(),
              " on ", indices_.device());
  const Pair in = pair_arg(op, "input_size", input_size);
  // The windows' geometry, with the output size taken from grad_output (the larger
  // ceil_mode size only serves the validation).
  Window2d w = pool_window(op, in, pair_arg(op, "kernel_size", kernel_size),
                           pair_arg(op, "stride", stride), pair_arg(op, "padding", padding),
                           pair_arg(op, "dilation", dilation), /*ceil_mode=*/true);
  w.out_h = grad_output_.size(2);
  w.out_w = grad_output_.size(3);
  const Tensor grad_output = grad_output_.contiguous();
  const Tensor indices = indices_.contiguous();
  const int64_t n = grad_output.size(0), c = grad_output.size(1);
  Tensor grad_input = at::empty({n, c, in.h, in.w}, grad_output.options());
  if (grad_input.numel() > 0) {
    prims.max_pool_backward(grad_output.view({n * c, w.out_h, w.out_w}),
                        indices.view({n * c, w.out_h, w.out_w}), grad_input.view({n * c, in.h, in.w}),
                        w);
  }
  return in_memory_format_of(grad_input, {grad_output_});
}

namespace {

LrnParams lrn_params(const char* op, const Tensor& input, int64_t size, double alpha, double beta,
                     double k) {
  TORCH_CHECK(size > 0, op, ": size must be positive, but got ", size);
  return LrnParams{input.size(1), size, alpha, beta, k};
}

// (N, C, *) viewed as (N, C, S) (S spelled out: with a zero size, -1 would be ambiguous).
Tensor as_ncs(const Tensor& t) {
  return t.contiguous().view({t.size(0), t.size(1), c10::multiply_integers(t.sizes().slice(2))});
}

}  // namespace

Tensor local_response_norm_forward(const DevicePrimitives& prims, const Tensor& input, int64_t size,
                                   double alpha, double beta, double k) {
  constexpr const char* op = "rollconv.local_response_norm";
  check_input(op, "input", input, -3, prims);
  const LrnParams p = lrn_params(op, input, size, alpha, beta, k);
  const Tensor x = as_ncs(input);
  Tensor output = at::empty_like(x);
  if (x.numel() > 0) prims.lrn_forward(x, output, p);
  return in_memory_format_of(output.view(input.sizes()), {input});
}

Tensor local_response_norm_backward(const DevicePrimitives& prims, const Tensor& grad_output,
                                    const Tensor& input, int64_t size, double alpha, double beta,
                                    double k) {
  constexpr const char* op = "rollconv.local_response_norm_backward";
  check_input(op, "input", input, -3, prims);
  check_input(op, "grad_output", grad_output, -3, prims);
  check_same_kind(op, "grad_output", grad_output, "input", input);
  TORCH_CHECK(grad_output.sizes() == input.sizes(), op, ": expected grad_output of shape ",
              input.sizes(), ", but got ", grad_output.sizes());
  const LrnParams p = lrn_params(op, input, size, alpha, beta, k);
  const Tensor x = as_ncs(input);
  Tensor grad_input = at::empty_like(x);
  if (x.numel() > 0) {
    const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    Tensor own = at::empty(x.sizes(), x.options().dtype(acc));
    Tensor term = at::empty(x.sizes(), x.options().dtype(acc));
    prims.lrn_backward(as_ncs(grad_output), x, own, term, grad_input, p);
  }
  return in_memory_format_of(grad_input.view(input.sizes()), {input});
}

}  // namespace rollconv::ops
