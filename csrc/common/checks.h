// Input validation and output-shape math shared by every op and device. Each failed
// check raises a c10::Error (RuntimeError in Python) that names the op, the argument
// and what was expected.
#pragma once

#include <ATen/core/Tensor.h>

#include <initializer_list>

#include "common/index_math.h"

namespace rollconv {

struct DevicePrimitives;

struct Pair {
  int64_t h, w;
};

// A 2-element int list argument (the schemas' int[2]).
Pair pair_arg(const char* op, const char* name, at::IntArrayRef values);

// Defined, `ndim` dims (or at least -ndim if negative), a floating dtype the device supports.
void check_input(const char* op, const char* name, const at::Tensor& t, int64_t ndim,
                 const DevicePrimitives& prims);
// Same dtype and device as the reference tensor.
void check_same_kind(const char* op, const char* name, const at::Tensor& t, const char* ref_name,
                     const at::Tensor& ref);

// Two 4-D operands of a convolution pass: each checked as above, the second against the first.
void check_4d_operands(const char* op, const DevicePrimitives& prims, const char* first_name,
                       const at::Tensor& first, const char* second_name, const at::Tensor& second);

// Sliding-window geometry of a convolution; checks stride/dilation > 0, padding >= 0,
// kernel >= 1, that the dilated kernel and the padded input sizes fit int64, and that the
// dilated kernel fits the padded input.
Window2d conv_window(const char* op, Pair input, Pair kernel, Pair stride, Pair padding,
                     Pair dilation);
// Same for max pooling with PyTorch's rules (ceil_mode, padding at most half the kernel).
Window2d pool_window(const char* op, Pair input, Pair kernel, Pair stride, Pair padding,
                     Pair dilation, bool ceil_mode);

// torch's rule for convolution inputs: zero-size images only with a zero batch or zero
// channels (then there is nothing to compute).
void check_nonempty_images(const char* op, const char* name, const at::Tensor& t);

// The product of `shape` fits int64 (before allocating a tensor of that shape).
void check_numel_fits(const char* op, const char* name, at::IntArrayRef shape);

// torch's memory-format rule for convolution, pooling and LRN outputs: channels_last when
// a 4-D operand's strides are channels_last-like (Tensor::suggest_memory_format), else
// contiguous. The kernels compute contiguous results; this restrides one when the rule says so.
at::Tensor in_memory_format_of(const at::Tensor& result, std::initializer_list<at::Tensor> operands);

// grad_output must be (N, channels, out_h, out_w) and match the forward's output.
void check_grad_output(const char* op, const at::Tensor& grad_output, int64_t batch,
                       int64_t channels, const Window2d& window);

}  // namespace rollconv
