"""Fake (meta) kernels, derivatives and batching rules of the torch.ops.rollconv ops.

The fake kernels give output shapes (symbolic sizes included) for torch.compile and
torch.export; validation lives in the C++ kernels. Every op has a backward (reverse
mode), a jvp (forward mode) and a vmap rule (rollconv/_batching.py), registered by
rollconv/_autograd.py so that autograd, forward AD and every torch.func transform work.
Every derivative is built from the ops themselves (or torch ops), so derivatives of
any order work: the derivatives of the dX and dK passes are again a forward, a dX or a
dK pass (LRN's and max pooling's: see below).
"""
import math

import torch
from torch._prims_common import suggest_memory_format

from . import _batching
from ._autograd import register_derivatives

ops = torch.ops.rollconv


def _conv_out(size, kernel, stride, padding, dilation):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _conv_out_hw(in_hw, kernel_hw, stride, padding, dilation):
    return [_conv_out(in_hw[i], kernel_hw[i], stride[i], padding[i], dilation[i]) for i in (0, 1)]


# --- fake kernels ---------------------------------------------------------------------


def _empty_like_rule(like, shape, *operands, dtype=None):
    """An empty tensor of `shape` in the memory format the kernels give (checks.h's
    in_memory_format_of): channels_last when a 4-D operand's strides are channels_last-like."""
    channels_last = any(
        t.dim() == 4 and suggest_memory_format(t) == torch.channels_last for t in operands
    )
    fmt = torch.channels_last if channels_last and len(shape) == 4 else torch.contiguous_format
    return torch.empty(shape, dtype=dtype or like.dtype, device=like.device, memory_format=fmt)


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
    return _empty_like_rule(input, (input.shape[0], weight.shape[0], h, w), input, weight)


@torch.library.register_fake("rollconv::conv2d_backward_input")
def _(grad_output, weight, input_size, stride, padding, dilation, groups):
    return _empty_like_rule(grad_output, (grad_output.shape[0], weight.shape[1] * groups, *input_size), grad_output, weight)


@torch.library.register_fake("rollconv::conv2d_backward_weight")
def _(grad_output, input, kernel_size, stride, padding, dilation, groups):
    return _empty_like_rule(input, (grad_output.shape[1], input.shape[1] // groups, *kernel_size), grad_output, input)


@torch.library.register_fake("rollconv::bias_backward")
def _(grad_output, channels):
    return grad_output.new_empty((channels,))


@torch.library.register_fake("rollconv::roll_conv2d_forward")
def _(input, weight, bias, stride, padding, dilation, rolls, shift, algorithm, relu):
    _same_device("rollconv.roll_conv2d", input=input, weight=weight, bias=bias)
    torch._check(input.dim() == 4 and weight.dim() == 4, lambda: "rollconv.roll_conv2d: expected 4-D input and weight")
    h, w = _conv_out_hw(input.shape[2:], weight.shape[2:], stride, padding, dilation)
    return _empty_like_rule(input, (input.shape[0], rolls * weight.shape[0], h, w), input, weight)


@torch.library.register_fake("rollconv::roll_conv2d_backward_input")
def _(grad_output, weight, input_size, stride, padding, dilation, rolls, shift, algorithm):
    return _empty_like_rule(grad_output, (grad_output.shape[0], weight.shape[1], *input_size), grad_output, weight)


@torch.library.register_fake("rollconv::roll_conv2d_backward_weight")
def _(grad_output, input, kernel_size, stride, padding, dilation, rolls, shift, algorithm):
    return _empty_like_rule(input, (grad_output.shape[1] // rolls, input.shape[1], *kernel_size), grad_output, input)


@torch.library.register_fake("rollconv::roll_conv2d_backward")
def _(grad_output, input, weight, output, stride, padding, dilation, rolls, shift, algorithm, output_mask):
    _same_device("rollconv.roll_conv2d_backward", grad_output=grad_output, input=input, weight=weight, output=output)
    grad_input = _empty_like_rule(grad_output, input.shape, grad_output, weight) if output_mask[0] else None
    grad_weight = _empty_like_rule(input, weight.shape, grad_output, input) if output_mask[1] else None
    grad_bias = grad_output.new_empty((weight.shape[0],)) if output_mask[2] else None
    return grad_input, grad_weight, grad_bias


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
    return _empty_like_rule(input, shape, input), _empty_like_rule(input, shape, input, dtype=torch.int64)


@torch.library.register_fake("rollconv::max_pool2d_backward")
def _(grad_output, indices, input_size, kernel_size, stride, padding, dilation):
    return _empty_like_rule(grad_output, (grad_output.shape[0], grad_output.shape[1], *input_size), grad_output)


@torch.library.register_fake("rollconv::local_response_norm_forward")
def _(input, size, alpha, beta, k):
    return _empty_like_rule(input, input.shape, input)


@torch.library.register_fake("rollconv::local_response_norm_backward")
def _(grad_output, input, size, alpha, beta, k):
    return _empty_like_rule(input, input.shape, input)


# --- derivatives ----------------------------------------------------------------------
# conv2d and roll_conv2d share their calculus. Each is bilinear in (input, weight), so
# with the geometry fixed (stride, padding, dilation, and groups or rolls):
#   y  = fwd(x, w) + b           dx = dX(dy, w)    dw = dK(dy, x)    db = bias_backward(dy)
#   dX(g, w): d/dg -> fwd(gg, w)      d/dw -> dK(g, gg)
#   dK(g, x): d/dg -> fwd(x, gg)      d/dx -> dX(g, gg)
# so every derivative of every pass is again a pass, and double backward works. Forward
# mode follows from bilinearity too: the tangent of fwd(x, w) + b is
# fwd(tx, w) + fwd(x, tw) + tb, of dX(g, w) is dX(tg, w) + dX(g, tw), of dK(g, x) is
# dK(tg, x) + dK(g, tx). roll_conv2d's fused ReLU masks dy (backward) and the tangent
# (forward mode) with the output: threshold_backward(t, y, 0), ReLU's derivative.


def _sum(terms):
    """The sum of the terms that are not None (None if all are)."""
    present = [t for t in terms if t is not None]
    return sum(present[1:], present[0]) if present else None


def uses_combined_backward(needs_input_grad):
    """Whether roll_conv2d's backward runs as one op (roll_conv2d_backward): when at least two
    of the input, weight and bias gradients are needed. (One gradient runs its own pass.)"""
    return sum(bool(n) for n in needs_input_grad[:3]) >= 2


def _argument_names(op):
    """An op's argument names, in its schema's order (read once: the schema is rebuilt per access)."""
    return [argument.name for argument in op.default._schema.arguments]


def _register_gemm_conv(fwd, dx, dk):
    fwd, dx, dk = (getattr(ops, name) for name in (fwd, dx, dk))
    # The geometry every pass shares: stride, padding, dilation and groups (conv2d), or
    # rolls, shift and algorithm (roll_conv2d): the dX pass's arguments after its operands.
    geometry_names = [name for name in _argument_names(dx) if name not in ("grad_output", "weight", "input_size")]
    fwd_names = _argument_names(fwd)
    fused_relu = "relu" in fwd_names

    def forward_setup(ctx, inputs, output):
        args = dict(zip(fwd_names, inputs))
        saved = (args["input"], args["weight"], output if args.get("relu") else None)
        ctx.save_for_backward(*saved)
        ctx.save_for_forward(*saved)
        ctx.geometry = {name: args[name] for name in geometry_names}
        ctx.output_shape = output.shape

    def forward_backward(ctx, grad):
        input, weight, output = ctx.saved_tensors
        needs = ctx.needs_input_grad
        if fused_relu and uses_combined_backward(needs):  # roll_conv2d
            # dY read once (masked by ReLU's derivative as it is read) for all the gradients
            grads = ops.roll_conv2d_backward(grad, input, weight, output, **ctx.geometry, output_mask=list(needs[:3]))
            return tuple(grads) + (None,) * (len(needs) - 3)
        if output is not None:  # ReLU's own backward (differentiable, one pass)
            grad = torch.ops.aten.threshold_backward(grad, output, 0)
        # Once for both passes (each would copy it): y.sum().backward() gives an expanded dy.
        grad = grad.contiguous()
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_input = dx(grad, weight, list(input.shape[2:]), **ctx.geometry)
        if ctx.needs_input_grad[1]:
            grad_weight = dk(grad, input, list(weight.shape[2:]), **ctx.geometry)
        if ctx.needs_input_grad[2]:
            grad_bias = ops.bias_backward(grad, weight.shape[0])
        return (grad_input, grad_weight, grad_bias) + (None,) * (len(ctx.needs_input_grad) - 3)

    def forward_of(ctx, x, w):
        return fwd(x, w, None, **ctx.geometry, **({"relu": False} if fused_relu else {}))

    def forward_jvp(ctx, t_input, t_weight, t_bias, *_):
        input, weight, output = ctx.saved_tensors
        t_output = _sum([
            None if t_input is None else forward_of(ctx, t_input, weight),
            None if t_weight is None else forward_of(ctx, input, t_weight),
        ])
        if t_bias is not None:  # roll_conv2d's bias is shared by the rolls: channel r*F + f gets b[f]
            per_channel = t_bias.repeat(ctx.output_shape[1] // t_bias.shape[0])
            t_output = _sum([t_output, per_channel.view(1, -1, 1, 1).expand(ctx.output_shape)])
        if output is not None:
            t_output = torch.ops.aten.threshold_backward(t_output, output, 0)
        return t_output

    def pass_setup_of(op, other_name, size_name):  # dX: (weight, input_size); dK: (input, kernel_size)
        names = _argument_names(op)

        def setup(ctx, inputs, output):
            args = dict(zip(names, inputs))
            ctx.save_for_backward(args["grad_output"], args[other_name])
            ctx.save_for_forward(args["grad_output"], args[other_name])
            ctx.size = list(args[size_name])
            ctx.geometry = {name: args[name] for name in geometry_names}

        return setup

    def dx_backward(ctx, gg):  # dX(g, w)
        grad_output, weight = ctx.saved_tensors
        d_grad = forward_of(ctx, gg, weight) if ctx.needs_input_grad[0] else None
        d_weight = dk(grad_output, gg, list(weight.shape[2:]), **ctx.geometry) if ctx.needs_input_grad[1] else None
        return (d_grad, d_weight) + (None,) * (len(ctx.needs_input_grad) - 2)

    def dk_backward(ctx, gg):  # dK(g, x)
        grad_output, input = ctx.saved_tensors
        d_grad = forward_of(ctx, input, gg) if ctx.needs_input_grad[0] else None
        d_input = dx(grad_output, gg, list(input.shape[2:]), **ctx.geometry) if ctx.needs_input_grad[1] else None
        return (d_grad, d_input) + (None,) * (len(ctx.needs_input_grad) - 2)

    def bilinear_jvp(op):  # the tangent of op(g, other, size, *geometry), bilinear in (g, other)
        def jvp(ctx, t_grad, t_other, *_):
            grad_output, other = ctx.saved_tensors
            return _sum([
                None if t_grad is None else op(t_grad, other, ctx.size, **ctx.geometry),
                None if t_other is None else op(grad_output, t_other, ctx.size, **ctx.geometry),
            ])

        return jvp

    for op, setup, backward, jvp in (
        (fwd, forward_setup, forward_backward, forward_jvp),
        (dx, pass_setup_of(dx, "weight", "input_size"), dx_backward, bilinear_jvp(dx)),
        (dk, pass_setup_of(dk, "input", "kernel_size"), dk_backward, bilinear_jvp(dk)),
    ):
        name = op.default._opname
        register_derivatives(name, setup_context=setup, backward=backward, jvp=jvp, vmap=getattr(_batching, name))


_register_gemm_conv("conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight")
_register_gemm_conv("roll_conv2d_forward", "roll_conv2d_backward_input", "roll_conv2d_backward_weight")


# roll_conv2d_backward(g, x, w, y, ...) = (dX(m, w), dK(m, x), bias_backward(m)) with the
# masked gradient m = threshold_backward(g, y, 0) (m = g without y), each where output_mask
# asks. Its derivatives are those of the three passes (above) through m, whose derivative
# in g is the same mask and in y is zero (ReLU's derivative is piecewise constant):
#   backward (gg_x, gg_w, gg_b): d_g = mask(fwd(gg_x, w) + fwd(x, gg_w) + gg_b per channel),
#                                d_x = dX(m, gg_w), d_w = dK(m, gg_x), d_y = None;
#   jvp: t_m = mask(t_g); (dX(t_m, w) + dX(m, t_w), dK(t_m, x) + dK(m, t_x), bias_backward(t_m)).


def _masked(grad, output):
    return grad if output is None else torch.ops.aten.threshold_backward(grad, output, 0)


def _roll_backward_setup(ctx, inputs, outputs):
    grad_output, input, weight, output = inputs[:4]
    saved = (grad_output, input, weight, output)
    ctx.save_for_backward(*saved)
    ctx.save_for_forward(*saved)
    ctx.geometry = tuple(inputs[4:10])  # stride, padding, dilation, rolls, shift, algorithm
    ctx.output_mask = list(inputs[10])


def _roll_backward_backward(ctx, gg_input, gg_weight, gg_bias):
    grad_output, input, weight, output = ctx.saved_tensors
    mask, geometry = ctx.output_mask, ctx.geometry
    gg_input, gg_weight, gg_bias = (g if m else None for g, m in zip((gg_input, gg_weight, gg_bias), mask))
    masked = _masked(grad_output, output)
    d_grad = d_input = d_weight = None
    if ctx.needs_input_grad[0]:
        terms = [
            None if gg_input is None else ops.roll_conv2d_forward(gg_input, weight, None, *geometry, False),
            None if gg_weight is None else ops.roll_conv2d_forward(input, gg_weight, None, *geometry, False),
        ]
        if gg_bias is not None:  # channel r*F + f gets gg_b[f]
            per_channel = gg_bias.repeat(grad_output.shape[1] // gg_bias.shape[0])
            terms.append(per_channel.view(1, -1, 1, 1).expand(grad_output.shape))
        d_masked = _sum(terms)
        d_grad = None if d_masked is None else _masked(d_masked, output)
    if ctx.needs_input_grad[1] and gg_weight is not None:
        d_input = ops.roll_conv2d_backward_input(masked, gg_weight, list(input.shape[2:]), *geometry)
    if ctx.needs_input_grad[2] and gg_input is not None:
        d_weight = ops.roll_conv2d_backward_weight(masked, gg_input, list(weight.shape[2:]), *geometry)
    return (d_grad, d_input, d_weight) + (None,) * 8


def _roll_backward_jvp(ctx, t_grad, t_input, t_weight, *_):
    grad_output, input, weight, output = ctx.saved_tensors
    mask, geometry = ctx.output_mask, ctx.geometry
    masked = _masked(grad_output, output)
    t_masked = None if t_grad is None else _masked(t_grad, output)
    t_grad_input = t_grad_weight = t_grad_bias = None
    if mask[0]:
        t_grad_input = _sum([
            None if t_masked is None else ops.roll_conv2d_backward_input(t_masked, weight, list(input.shape[2:]), *geometry),
            None if t_weight is None else ops.roll_conv2d_backward_input(masked, t_weight, list(input.shape[2:]), *geometry),
        ])
    if mask[1]:
        t_grad_weight = _sum([
            None if t_masked is None else ops.roll_conv2d_backward_weight(t_masked, input, list(weight.shape[2:]), *geometry),
            None if t_input is None else ops.roll_conv2d_backward_weight(masked, t_input, list(weight.shape[2:]), *geometry),
        ])
    if mask[2] and t_masked is not None:
        t_grad_bias = ops.bias_backward(t_masked, weight.shape[0])
    return t_grad_input, t_grad_weight, t_grad_bias


register_derivatives("roll_conv2d_backward", setup_context=_roll_backward_setup, backward=_roll_backward_backward,
                     jvp=_roll_backward_jvp, vmap=_batching.roll_conv2d_backward)


# bias_backward is linear: its tangent is itself applied to the tangent, and its adjoint
# broadcasts gg back over grad_output's shape.


def _bias_backward_setup(ctx, inputs, output):
    grad_output, channels = inputs
    ctx.shape = grad_output.shape
    ctx.channels = channels


def _bias_backward_backward(ctx, gg):
    shape = ctx.shape
    folds = shape[1] // gg.shape[0]
    per_channel = gg.repeat(folds).view(1, shape[1], *([1] * (len(shape) - 2)))
    return per_channel.expand(shape), None


def _bias_backward_jvp(ctx, t_grad, _):
    return ops.bias_backward(t_grad, ctx.channels)


# max pooling: the output is the input gathered at the argmax, so its tangent is the
# tangent gathered there; the backward routes the gradient to the saved argmax and is
# linear in it (its adjoint and its tangent: the same gather, the same routing).


def _flat_spatial(t):
    """(N, C, *) -> (N, C, S); reshape, not flatten, which gradcheck's (legacy) vmap of
    forward-mode derivatives cannot batch."""
    return t.reshape(t.shape[0], t.shape[1], math.prod(t.shape[2:]))


def _gather_at(t, indices):
    """t[n, c].flatten()[indices[n, c]]: t of shape (N, C, H, W), flat argmax indices."""
    return _flat_spatial(t).gather(2, _flat_spatial(indices)).view(indices.shape)


def _max_pool_setup(ctx, inputs, output):
    input, kernel_size, stride, padding, dilation, ceil_mode = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(output[1])
    ctx.save_for_forward(output[1])
    ctx.args = (list(input.shape[2:]), kernel_size, stride, padding, dilation)


def _max_pool_backward(ctx, grad, _grad_indices):
    (indices,) = ctx.saved_tensors
    return ops.max_pool2d_backward(grad, indices, *ctx.args), None, None, None, None, None


def _max_pool_jvp(ctx, t_input, *_):
    (indices,) = ctx.saved_tensors
    return _gather_at(t_input, indices), None


def _max_pool_backward_setup(ctx, inputs, output):
    grad_output, indices, *geometry = inputs  # input_size, kernel_size, stride, padding, dilation
    ctx.save_for_backward(indices)
    ctx.save_for_forward(indices)
    ctx.args = tuple(geometry)


def _max_pool_backward_backward(ctx, gg):
    (indices,) = ctx.saved_tensors
    return _gather_at(gg, indices), None, None, None, None, None, None


def _max_pool_backward_jvp(ctx, t_grad, *_):
    (indices,) = ctx.saved_tensors
    return ops.max_pool2d_backward(t_grad, indices, *ctx.args)


# local response normalization (torch.nn.functional.local_response_norm's definition):
#   y_c = x_c d_c^-beta,   d_c = k + alpha/size sum_{j in W(c)} x_j^2,
#   W(c) = [c - size//2, c + (size-1)//2]
# Backward: the analytic kernel, with a = alpha/size and W'(i) = {c : i in W(c)}:
#   B(g, x)_i = g_i d_i^-beta - 2 a beta x_i sum_{c in W'(i)} u_c,   u_c = g_c x_c d_c^(-beta-1).
# Tangents (closed forms in torch ops), with t_d_c = 2a sum_{j in W(c)} x_j t_x_j:
#   of y:  t_y_c = t_x_c d_c^-beta - beta x_c d_c^(-beta-1) t_d_c
#   of B:  t_B_i = t_g_i d_i^-beta - beta g_i d_i^(-beta-1) t_d_i
#                  - 2 a beta (t_x_i sum_{W'(i)} u_c + x_i sum_{W'(i)} t_u_c),
#          t_u_c = (t_g_c x_c + g_c t_x_c) d_c^(-beta-1) - (beta+1) g_c x_c d_c^(-beta-2) t_d_c.
# The double backward differentiates B written in torch ops.


def _channel_window_sum(t, before, after):
    """sum_{j = c - before}^{c + after} t[:, j] (zero outside [0, C)) for t of shape (N, C, S)."""
    channels = t.shape[1]
    padded = torch.nn.functional.pad(t, (0, 0, before, after))
    return sum((padded[:, o : o + channels] for o in range(1, before + after + 1)), padded[:, :channels])


def _lrn_windows(size):
    """(before, after) of W(c) (the forward's window) and of W'(i) (the backward's)."""
    return (size // 2, (size - 1) // 2), ((size - 1) // 2, size // 2)


def _lrn_denominator(x, size, alpha, k):
    """d = k + alpha/size * (window sum of x^2) for x of shape (N, C, S)."""
    return k + alpha / size * _channel_window_sum(x * x, *_lrn_windows(size)[0])


def _lrn_tangent_of_denominator(x, t_x, size, alpha):
    return 2 * alpha / size * _channel_window_sum(x * t_x, *_lrn_windows(size)[0])


def _lrn_jvp_expression(input, tangent, size, alpha, beta, k):
    x, t_x = _flat_spatial(input), _flat_spatial(tangent)
    d = _lrn_denominator(x, size, alpha, k)
    t_d = _lrn_tangent_of_denominator(x, t_x, size, alpha)
    t_output = t_x * d.pow(-beta) - beta * x * d.pow(-beta - 1) * t_d
    return t_output.view(input.shape)


def _lrn_backward_jvp_expression(grad_output, input, t_grad, t_input, size, alpha, beta, k):
    g, x = _flat_spatial(grad_output), _flat_spatial(input)
    t_g, t_x = _flat_spatial(t_grad), _flat_spatial(t_input)
    d = _lrn_denominator(x, size, alpha, k)
    t_d = _lrn_tangent_of_denominator(x, t_x, size, alpha)
    d_pow = d.pow(-beta - 1)
    u = g * x * d_pow
    t_u = (t_g * x + g * t_x) * d_pow - (beta + 1) * u / d * t_d
    backward_window = _lrn_windows(size)[1]
    cross = _channel_window_sum(u, *backward_window)
    t_cross = _channel_window_sum(t_u, *backward_window)
    t_result = t_g * d.pow(-beta) - beta * g * d_pow * t_d - 2 * alpha * beta / size * (t_x * cross + x * t_cross)
    return t_result.view(input.shape)


def _lrn_backward_expression(grad_output, input, size, alpha, beta, k):
    """B(g, x), the analytic LRN backward (the kernel's formula, index_math.h), in torch ops:
    used only to differentiate it once more."""
    g, x = _flat_spatial(grad_output), _flat_spatial(input)
    d = _lrn_denominator(x, size, alpha, k)
    cross = _channel_window_sum(g * x * d.pow(-beta - 1), *_lrn_windows(size)[1])
    return (g * d.pow(-beta) - 2 * alpha * beta / size * x * cross).view(input.shape)


def _lrn_setup(ctx, inputs, output):
    input, size, alpha, beta, k = inputs
    ctx.save_for_backward(input)
    ctx.save_for_forward(input)
    ctx.args = (size, alpha, beta, k)


def _lrn_backward(ctx, grad):
    (input,) = ctx.saved_tensors
    return ops.local_response_norm_backward(grad, input, *ctx.args), None, None, None, None


def _lrn_jvp(ctx, t_input, *_):
    (input,) = ctx.saved_tensors
    return _lrn_jvp_expression(input, t_input, *ctx.args)


def _lrn_backward_setup(ctx, inputs, output):
    grad_output, input, size, alpha, beta, k = inputs
    ctx.save_for_backward(grad_output, input)
    ctx.save_for_forward(grad_output, input)
    ctx.args = (size, alpha, beta, k)


def _lrn_double_backward(ctx, gg):
    grad_output, input = ctx.saved_tensors
    _, vjp = torch.func.vjp(lambda g, x: _lrn_backward_expression(g, x, *ctx.args), grad_output, input)
    d_grad, d_input = vjp(gg)
    return d_grad, d_input, None, None, None, None


def _lrn_backward_jvp(ctx, t_grad, t_input, *_):
    grad_output, input = ctx.saved_tensors
    t_grad = torch.zeros_like(grad_output) if t_grad is None else t_grad
    t_input = torch.zeros_like(input) if t_input is None else t_input
    return _lrn_backward_jvp_expression(grad_output, input, t_grad, t_input, *ctx.args)


_DERIVATIVES = {
    "bias_backward": (_bias_backward_setup, _bias_backward_backward, _bias_backward_jvp),
    "max_pool2d_forward": (_max_pool_setup, _max_pool_backward, _max_pool_jvp),
    "max_pool2d_backward": (_max_pool_backward_setup, _max_pool_backward_backward, _max_pool_backward_jvp),
    "local_response_norm_forward": (_lrn_setup, _lrn_backward, _lrn_jvp),
    "local_response_norm_backward": (_lrn_backward_setup, _lrn_double_backward, _lrn_backward_jvp),
}

for _name, (_setup, _backward, _jvp) in _DERIVATIVES.items():
    register_derivatives(_name, setup_context=_setup, backward=_backward, jvp=_jvp, vmap=getattr(_batching, _name))

#: Every op of the library (its registered schemas), for tests (opcheck) and docs.
OP_NAMES = sorted(
    schema.name.split("::", 1)[1] for schema in torch._C._jit_get_all_schemas() if schema.name.startswith("rollconv::")
)
