"""Fake (meta) kernels and autograd formulas of the torch.ops.rollconv ops.

The fake kernels give output shapes (symbolic sizes included) for torch.compile and
torch.export; validation lives in the C++ kernels. Every backward is built from the
ops themselves, so double backward works: the derivatives of the dX and dK passes are
again a forward, a dX or a dK pass (LRN's double backward: see below).
"""
import torch

ops = torch.ops.rollconv


def _conv_out(size, kernel, stride, padding, dilation):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _conv_out_hw(in_hw, kernel_hw, stride, padding, dilation):
    return [_conv_out(in_hw[i], kernel_hw[i], stride[i], padding[i], dilation[i]) for i in (0, 1)]


# --- fake kernels ---------------------------------------------------------------------


def _same_device(op, **tensors):
    """The check the device kernels make, for fake tensors (and mixed real/meta inputs)."""
    named = [(k, t) for k, t in tensors.items() if t is not None]
    first_name, first = named[0]
    for name, t in named[1:]:
        torch._check(
            t.device == first.device,
            lambda: f"{op}: expected {name} on the same device as {first_name} ({first.device}), but it is on {t.device}",
        )


@torch.library.register_fake("rollconv::conv2d_forward")
def _(input, weight, bias, stride, padding, dilation, groups):
    _same_device("rollconv.conv2d", input=input, weight=weight, bias=bias)
    torch._check(input.dim() == 4 and weight.dim() == 4, lambda: "rollconv.conv2d: expected 4-D input and weight")
    h, w = _conv_out_hw(input.shape[2:], weight.shape[2:], stride, padding, dilation)
    return input.new_empty((input.shape[0], weight.shape[0], h, w))


@torch.library.register_fake("rollconv::conv2d_backward_input")
def _(grad_output, weight, input_size, stride, padding, dilation, groups):
    return grad_output.new_empty((grad_output.shape[0], weight.shape[1] * groups, *input_size))


@torch.library.register_fake("rollconv::conv2d_backward_weight")
def _(grad_output, input, kernel_size, stride, padding, dilation, groups):
    return input.new_empty((grad_output.shape[1], input.shape[1] // groups, *kernel_size))


@torch.library.register_fake("rollconv::bias_backward")
def _(grad_output, channels):
    return grad_output.new_empty((channels,))


@torch.library.register_fake("rollconv::roll_conv2d_forward")
def _(input, weight, bias, stride, padding, dilation, rolls, shift, algorithm, relu):
    _same_device("rollconv.roll_conv2d", input=input, weight=weight, bias=bias)
    torch._check(input.dim() == 4 and weight.dim() == 4, lambda: "rollconv.roll_conv2d: expected 4-D input and weight")
    h, w = _conv_out_hw(input.shape[2:], weight.shape[2:], stride, padding, dilation)
    return input.new_empty((input.shape[0], rolls * weight.shape[0], h, w))


@torch.library.register_fake("rollconv::roll_conv2d_backward_input")
def _(grad_output, weight, input_size, stride, padding, dilation, rolls, shift, algorithm):
    return grad_output.new_empty((grad_output.shape[0], weight.shape[1], *input_size))


@torch.library.register_fake("rollconv::roll_conv2d_backward_weight")
def _(grad_output, input, kernel_size, stride, padding, dilation, rolls, shift, algorithm):
    return input.new_empty((grad_output.shape[1] // rolls, input.shape[1], *kernel_size))


def _pool_out(size, kernel, stride, padding, dilation, ceil_mode):
    numerator = size + 2 * padding - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)
    out = numerator // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out = out - 1
    return out


@torch.library.register_fake("rollconv::max_pool2d_forward")
def _(input, kernel_size, stride, padding, dilation, ceil_mode):
    h, w = (_pool_out(input.shape[2 + i], kernel_size[i], stride[i], padding[i], dilation[i], ceil_mode) for i in (0, 1))
    shape = (input.shape[0], input.shape[1], h, w)
    return input.new_empty(shape), input.new_empty(shape, dtype=torch.int64)


@torch.library.register_fake("rollconv::max_pool2d_backward")
def _(grad_output, indices, input_size, kernel_size, stride, padding, dilation):
    return grad_output.new_empty((grad_output.shape[0], grad_output.shape[1], *input_size))


@torch.library.register_fake("rollconv::local_response_norm_forward")
def _(input, size, alpha, beta, k):
    return torch.empty_like(input, memory_format=torch.contiguous_format)


@torch.library.register_fake("rollconv::local_response_norm_backward")
def _(grad_output, input, size, alpha, beta, k):
    return torch.empty_like(input, memory_format=torch.contiguous_format)


# --- autograd -------------------------------------------------------------------------
# conv2d and roll_conv2d share their calculus. Each is bilinear in (input, weight), so
# with the geometry fixed (stride, padding, dilation, and groups or rolls):
#   y  = fwd(x, w) + b           dx = dX(dy, w)    dw = dK(dy, x)    db = bias_backward(dy)
#   dX(g, w): d/dg -> fwd(gg, w)      d/dw -> dK(g, gg)
#   dK(g, x): d/dg -> fwd(x, gg)      d/dx -> dX(g, gg)
# so every derivative of every pass is again a pass, and double backward works.
# roll_conv2d's fused ReLU masks dy with the saved output first.


def _register_gemm_conv_autograd(fwd, dx, dk, relu_flag=False):
    def forward_setup(ctx, inputs, output):
        input, weight = inputs[:2]
        relu = relu_flag and inputs[-1]
        ctx.save_for_backward(input, weight, output if relu else None)
        # stride, padding, dilation, groups | rolls, shift, algorithm: the passes' trailing arguments
        ctx.geometry = tuple(inputs[3:-1] if relu_flag else inputs[3:])

    def forward_backward(ctx, grad):
        input, weight, output = ctx.saved_tensors
        if output is not None:  # ReLU's own backward (differentiable, one pass)
            grad = torch.ops.aten.threshold_backward(grad, output, 0)
        # Once for both passes (each would copy it): y.sum().backward() gives an expanded dy.
        grad = grad.contiguous()
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_input = dx(grad, weight, list(input.shape[2:]), *ctx.geometry)
        if ctx.needs_input_grad[1]:
            grad_weight = dk(grad, input, list(weight.shape[2:]), *ctx.geometry)
        if ctx.needs_input_grad[2]:
            grad_bias = ops.bias_backward(grad, weight.shape[0])
        return (grad_input, grad_weight, grad_bias) + (None,) * (len(ctx.needs_input_grad) - 3)

    def pass_setup(ctx, inputs, output):
        grad_output, other = inputs[:2]
        ctx.save_for_backward(grad_output, other)
        ctx.geometry = tuple(inputs[3:])

    def forward_of(ctx, x, w):
        return fwd(x, w, None, *ctx.geometry, *((False,) if relu_flag else ()))

    def dx_backward(ctx, gg):  # dX(g, w)
        grad_output, weight = ctx.saved_tensors
        d_grad = forward_of(ctx, gg, weight) if ctx.needs_input_grad[0] else None
        d_weight = dk(grad_output, gg, list(weight.shape[2:]), *ctx.geometry) if ctx.needs_input_grad[1] else None
        return (d_grad, d_weight) + (None,) * (len(ctx.needs_input_grad) - 2)

    def dk_backward(ctx, gg):  # dK(g, x)
        grad_output, input = ctx.saved_tensors
        d_grad = forward_of(ctx, input, gg) if ctx.needs_input_grad[0] else None
        d_input = dx(grad_output, gg, list(input.shape[2:]), *ctx.geometry) if ctx.needs_input_grad[1] else None
        return (d_grad, d_input) + (None,) * (len(ctx.needs_input_grad) - 2)

    for op, backward, setup in ((fwd, forward_backward, forward_setup), (dx, dx_backward, pass_setup), (dk, dk_backward, pass_setup)):
        torch.library.register_autograd(op.default, backward, setup_context=setup)


_register_gemm_conv_autograd(ops.conv2d_forward, ops.conv2d_backward_input, ops.conv2d_backward_weight)
_register_gemm_conv_autograd(
    ops.roll_conv2d_forward, ops.roll_conv2d_backward_input, ops.roll_conv2d_backward_weight, relu_flag=True
)


# bias_backward is linear: its adjoint broadcasts gg back over grad_output's shape.


def _bias_backward_setup(ctx, inputs, output):
    grad_output, channels = inputs
    ctx.shape = grad_output.shape


def _bias_backward_backward(ctx, gg):
    shape = ctx.shape
    folds = shape[1] // gg.shape[0]
    per_channel = gg.repeat(folds).view(1, shape[1], *([1] * (len(shape) - 2)))
    return per_channel.expand(shape), None


# max pooling: the backward routes the gradient to the saved argmax; its own adjoint
# gathers gg at those indices.


def _max_pool_setup(ctx, inputs, output):
    input, kernel_size, stride, padding, dilation, ceil_mode = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(output[1])
    ctx.args = (list(input.shape[2:]), kernel_size, stride, padding, dilation)


def _max_pool_backward(ctx, grad, _grad_indices):
    (indices,) = ctx.saved_tensors
    return ops.max_pool2d_backward(grad, indices, *ctx.args), None, None, None, None, None


def _max_pool_backward_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])


def _max_pool_backward_backward(ctx, gg):
    (indices,) = ctx.saved_tensors
    picked = gg.flatten(2).gather(2, indices.flatten(2)).view(indices.shape)
    return picked, None, None, None, None, None, None


# local response normalization: the analytic backward kernel; its own derivative (double
# backward) differentiates the same formula written in torch ops.


def _lrn_setup(ctx, inputs, output):
    input, size, alpha, beta, k = inputs
    ctx.save_for_backward(input)
    ctx.args = (size, alpha, beta, k)


def _lrn_backward(ctx, grad):
    (input,) = ctx.saved_tensors
    return ops.local_response_norm_backward(grad, input, *ctx.args), None, None, None, None


def _channel_window_sum(t, before, after):
    """sum_{j = c - before}^{c + after} t[:, j] (zero outside [0, C)) for t of shape (N, C, S)."""
    channels = t.shape[1]
    padded = torch.nn.functional.pad(t, (0, 0, before, after))
    return sum(padded[:, o : o + channels] for o in range(before + after + 1))


def _lrn_backward_expression(grad_output, input, size, alpha, beta, k):
    """The analytic LRN backward (the kernel's formula, index_math.h) in torch ops: used only
    to differentiate it once more (double backward)."""
    x = input.reshape(input.shape[0], input.shape[1], -1)
    g = grad_output.reshape(x.shape)
    d = k + alpha / size * _channel_window_sum(x * x, size // 2, (size - 1) // 2)
    own = g * d.pow(-beta)
    cross = _channel_window_sum(own * x / d, (size - 1) // 2, size // 2)
    return (own - 2 * alpha * beta / size * x * cross).reshape(input.shape)


def _lrn_backward_setup(ctx, inputs, output):
    grad_output, input, size, alpha, beta, k = inputs
    ctx.save_for_backward(grad_output, input)
    ctx.args = (size, alpha, beta, k)


def _lrn_double_backward(ctx, gg):
    grad_output, input = ctx.saved_tensors
    _, vjp = torch.func.vjp(lambda g, x: _lrn_backward_expression(g, x, *ctx.args), grad_output, input)
    d_grad, d_input = vjp(gg)
    return d_grad, d_input, None, None, None, None


_AUTOGRAD = {
    "bias_backward": (_bias_backward_backward, _bias_backward_setup),
    "max_pool2d_forward": (_max_pool_backward, _max_pool_setup),
    "max_pool2d_backward": (_max_pool_backward_backward, _max_pool_backward_setup),
    "local_response_norm_forward": (_lrn_backward, _lrn_setup),
    "local_response_norm_backward": (_lrn_double_backward, _lrn_backward_setup),
}

for _name, (_backward, _setup) in _AUTOGRAD.items():
    torch.library.register_autograd(f"rollconv::{_name}", _backward, setup_context=_setup)

#: Every op of the library, for tests (opcheck) and docs.
OP_NAMES = sorted(
    list(_AUTOGRAD)
    + [f"{kind}_{part}" for kind in ("conv2d", "roll_conv2d") for part in ("forward", "backward_input", "backward_weight")]
)
