// The rollconv op library: every schema, once. Kernels are registered per device in
// cpu/ and cuda/; autograd and fake (meta) kernels in rollconv/_ops.py.
#include <string>

#include <torch/library.h>

namespace {

// Schemas. Backward passes are ops of their own, so every device implements forward,
// dX (backward_input) and dK (backward_weight) and nothing else. The sizes the backward
// passes take from tensors' shapes (input_size, kernel_size) are SymInt[], so that they
// stay symbolic under torch.compile(dynamic=True) instead of specializing (and
// recompiling) on every image size; the kernels receive them as plain ints.
constexpr const char* kSchemas[] = {
    "conv2d_forward(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
    "int[2] dilation, int groups) -> Tensor",
    "conv2d_backward_input(Tensor grad_output, Tensor weight, SymInt[2] input_size, int[2] stride, "
    "int[2] padding, int[2] dilation, int groups) -> Tensor",
    "conv2d_backward_weight(Tensor grad_output, Tensor input, SymInt[2] kernel_size, int[2] stride, "
    "int[2] padding, int[2] dilation, int groups) -> Tensor",
    "bias_backward(Tensor grad_output, int channels) -> Tensor",
    // shift: input channels the filter moves per roll (divides C, rolls <= C / shift).
    // algorithm: "direct" (rolls as row windows of one im2col), "bank" (expand the bank,
    // call ATen's convolution: oneDNN / cuDNN) or "fft" (block-FFT, rolls == C / shift).
    "roll_conv2d_forward(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
    "int[2] dilation, int rolls, int shift, str algorithm, bool relu) -> Tensor",
    "roll_conv2d_backward_input(Tensor grad_output, Tensor weight, SymInt[2] input_size, "
    "int[2] stride, int[2] padding, int[2] dilation, int rolls, int shift, str algorithm) -> Tensor",
    "roll_conv2d_backward_weight(Tensor grad_output, Tensor input, SymInt[2] kernel_size, "
    "int[2] stride, int[2] padding, int[2] dilation, int rolls, int shift, str algorithm) -> Tensor",
    // All of roll_conv2d's gradients from one op (autograd's choice when several are needed):
    // grad_output masked where output <= 0 (output: the forward's result when it fused ReLU),
    // then (grad_input, grad_weight, grad_bias), each undefined unless output_mask asks for it.
    "roll_conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, Tensor? output, "
    "int[2] stride, int[2] padding, int[2] dilation, int rolls, int shift, str algorithm, "
    "bool[3] output_mask) -> (Tensor, Tensor, Tensor)",
    "max_pool2d_forward(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, "
    "int[2] dilation, bool ceil_mode) -> (Tensor, Tensor)",
    "max_pool2d_backward(Tensor grad_output, Tensor indices, SymInt[2] input_size, "
    "int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation) -> Tensor",
    "local_response_norm_forward(Tensor input, int size, float alpha, float beta, float k) -> Tensor",
    "local_response_norm_backward(Tensor grad_output, Tensor input, int size, float alpha, "
    "float beta, float k) -> Tensor",
};

}  // namespace

TORCH_LIBRARY(rollconv, m) {
  for (const char* schema : kSchemas) m.def(schema);
}

#ifndef ROLLCONV_WITH_CUDA
// A CPU-only build still gets CUDA tensors from users: answer with how to fix it
// rather than the dispatcher's "could not run ... with arguments from the CUDA backend".
namespace {
void cuda_not_built(const c10::OperatorHandle& op, torch::jit::Stack*) {
  TORCH_CHECK(false, op.schema().name(),
              ": rollconv was built without CUDA kernels, so it cannot run on CUDA tensors. "
              "Reinstall it where a CUDA toolkit is found (or set FORCE_CUDA=1 and CUDA_HOME): "
              "pip install --no-build-isolation --force-reinstall .");
}
}  // namespace

TORCH_LIBRARY_IMPL(rollconv, CUDA, m) {
  for (const char* schema : kSchemas) {
    const std::string s(schema);
    m.impl(s.substr(0, s.find('(')).c_str(),
           torch::CppFunction::makeFromBoxedFunction<&cuda_not_built>());
  }
}
#endif

