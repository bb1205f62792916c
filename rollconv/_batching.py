"""Batching rules (torch.vmap) of the torch.ops.rollconv ops.

Each rule has the signature of ``torch.library.register_vmap``: ``rule(info, in_dims,
*args) -> (output, out_dims)``, where ``info.batch_size`` is the size B of the vmapped
dimension and ``in_dims[i]`` says which dimension of ``args[i]`` it is (None: not
batched). A rule calls the op once on a bigger problem where the math allows it:

- a batch of inputs (images, output gradients) with shared weights is a bigger batch:
  the vmapped dimension joins N;
- conv2d with a batch of weights is one grouped call with ``groups * B`` groups (the
  inputs' batches stacked along channels), as for per-sample weight gradients;
- roll_conv2d with a batch of weights and a shared input is one call with ``B * F``
  filters; rolling convolutions have no groups, so a batch of weights with a batch of
  inputs (and roll_conv2d's input gradient for a batch of weights, and its weight
  gradient for a batch of inputs: per-sample gradients) loops over the B problems and
  stacks the results.
"""
import torch

ops = torch.ops.rollconv


def _batch_first(t, bdim, size):
    """t with the vmapped dimension first; an unbatched t is expanded to it (a view)."""
    return t.expand(size, *t.shape) if bdim is None else t.movedim(bdim, 0)


def _fold(t, bdim, size, dim):
    """Merge the vmapped dimension into logical dimension ``dim`` of t, batch-major."""
    return _batch_first(t, bdim, size).movedim(0, dim).flatten(dim, dim + 1)


def _unfold(t, dim, size):
    """Split dimension ``dim`` of t into (size, rest): the inverse of ``_fold``."""
    return t.unflatten(dim, (size, t.shape[dim] // size))


def _map_outputs(fn, out):
    return tuple(fn(o) for o in out) if isinstance(out, tuple) else fn(out)


def _join_batch(op, info, in_dims, args, tensors=1):
    """Call op with the first ``tensors`` arguments' vmapped dimension merged into their
    batch dimension N (unbatched ones expanded); the other arguments are not batched."""
    size = info.batch_size
    folded = [_fold(a, d, size, 0) for a, d in zip(args[:tensors], in_dims[:tensors])]
    out = op(*folded, *args[tensors:])
    return _map_outputs(lambda o: _unfold(o, 0, size), out), _map_outputs(lambda o: 0, out)


def _loop(op, info, in_dims, args):
    """Call op once per index of the vmapped dimension and stack the results. (The in_dims
    of a list argument is a list of Nones.)"""
    outs = [
        op(*(a.select(d, i) if isinstance(d, int) else a for a, d in zip(args, in_dims)))
        for i in range(info.batch_size)
    ]
    return torch.stack(outs), 0


def _shared_weight_forward(call, info, x_bdim, input, b_bdim, bias, per_channel_bias, relu):
    """Forward of a convolution whose weight is not batched: the input's vmapped dimension
    joins N; a batched bias is added after the op (then the ReLU, when fused).
    call(input, bias, relu) runs the op; per_channel_bias maps a (B, F) bias to the
    output's channels."""
    size = info.batch_size
    x = input if x_bdim is None else _fold(input, x_bdim, size, 0)
    if b_bdim is None:  # then the input is batched
        return _unfold(call(x, bias, relu), 0, size), 0
    out = call(x, None, False)
    out = out.unsqueeze(0) if x_bdim is None else _unfold(out, 0, size)
    out = out + per_channel_bias(bias.movedim(b_bdim, 0))[:, None, :, None, None]
    return (out.relu() if relu else out), 0


# --- conv2d -----------------------------------------------------------------------------


def conv2d_forward(info, in_dims, input, weight, bias, stride, padding, dilation, groups):
    x_bdim, w_bdim, b_bdim = in_dims[:3]
    size = info.batch_size
    if w_bdim is None:
        def call(x, b, _relu):
            return ops.conv2d_forward(x, weight, b, stride, padding, dilation, groups)

        return _shared_weight_forward(call, info, x_bdim, input, b_bdim, bias, lambda b: b, False)
    x = _fold(input, x_bdim, size, 1)  # (N, B*C, H, W)
    w = _fold(weight, w_bdim, size, 0)  # (B*C_out, C/groups, kh, kw)
    b = None if bias is None else _fold(bias, b_bdim, size, 0)
    out = ops.conv2d_forward(x, w, b, stride, padding, dilation, groups * size)
    return _unfold(out, 1, size), 1


def conv2d_backward_input(info, in_dims, grad_output, weight, input_size, stride, padding, dilation, groups):
    args = (grad_output, weight, input_size, stride, padding, dilation, groups)
    if in_dims[1] is None:
        return _join_batch(ops.conv2d_backward_input, info, in_dims, args)
    size = info.batch_size
    g = _fold(grad_output, in_dims[0], size, 1)
    w = _fold(weight, in_dims[1], size, 0)
    out = ops.conv2d_backward_input(g, w, input_size, stride, padding, dilation, groups * size)
    return _unfold(out, 1, size), 1


def conv2d_backward_weight(info, in_dims, grad_output, input, kernel_size, stride, padding, dilation, groups):
    # dK sums over N, so a batch of (grad_output, input) pairs is B separate sums: groups.
    size = info.batch_size
    g = _fold(grad_output, in_dims[0], size, 1)
    x = _fold(input, in_dims[1], size, 1)
    out = ops.conv2d_backward_weight(g, x, kernel_size, stride, padding, dilation, groups * size)
    return _unfold(out, 0, size), 0


def bias_backward(info, in_dims, grad_output, channels):
    # bias_backward sums channel c of grad_output into c mod channels: with the vmapped
    # dimension inside the channels (c * B + i), channel (f, i) collects sample i's f.
    size = info.batch_size
    g = _batch_first(grad_output, in_dims[0], size).movedim(0, 2).flatten(1, 2)
    return ops.bias_backward(g, channels * size).unflatten(0, (channels, size)), 1


# --- roll_conv2d --------------------------------------------------------------------------


def roll_conv2d_forward(info, in_dims, input, weight, bias, stride, padding, dilation, rolls, shift, algorithm, relu):
    args = (input, weight, bias, stride, padding, dilation, rolls, shift, algorithm, relu)
    x_bdim, w_bdim, b_bdim = in_dims[:3]
    size = info.batch_size
    if w_bdim is None:
        def call(x, b, fused_relu):
            return ops.roll_conv2d_forward(x, weight, b, stride, padding, dilation, rolls, shift, algorithm, fused_relu)

        return _shared_weight_forward(call, info, x_bdim, input, b_bdim, bias, lambda b: b.repeat(1, rolls), relu)
    if x_bdim is not None or rolls < 1:
        return _loop(ops.roll_conv2d_forward, info, in_dims, args)
    # One input, B weights of F filters: one call with B*F filters, whose output channel
    # r*(B*F) + i*F + f is sample i's channel r*F + f.
    w = _batch_first(weight, w_bdim, size)
    filters = w.shape[1]
    b = None if bias is None else _batch_first(bias, b_bdim, size).flatten()
    out = ops.roll_conv2d_forward(input, w.flatten(0, 1), b, stride, padding, dilation, rolls, shift, algorithm, relu)
    out = out.unflatten(1, (rolls, size, filters)).transpose(1, 2).flatten(2, 3)
    return out, 1


def roll_conv2d_backward_input(info, in_dims, grad_output, weight, *rest):
    args = (grad_output, weight, *rest)
    if in_dims[1] is None:
        return _join_batch(ops.roll_conv2d_backward_input, info, in_dims, args)
    return _loop(ops.roll_conv2d_backward_input, info, in_dims, args)


def roll_conv2d_backward_weight(info, in_dims, grad_output, input, kernel_size, stride, padding, dilation, rolls, shift, algorithm):
    args = (grad_output, input, kernel_size, stride, padding, dilation, rolls, shift, algorithm)
    if in_dims[1] is not None or rolls < 1:
        return _loop(ops.roll_conv2d_backward_weight, info, in_dims, args)
    # B output gradients for one input: one call with B*F filters (the forward's layout).
    size = info.batch_size
    g = _batch_first(grad_output, in_dims[0], size)  # (B, N, rolls*F, Ho, Wo)
    filters = g.shape[2] // rolls
    g = g.unflatten(2, (rolls, filters)).permute(1, 2, 0, 3, 4, 5).flatten(1, 3)
    out = ops.roll_conv2d_backward_weight(g, input, kernel_size, stride, padding, dilation, rolls, shift, algorithm)
    return _unfold(out, 0, size), 0


def _logical_shape(t, bdim):
    return t.shape if bdim is None else t.shape[:bdim] + t.shape[bdim + 1:]


def roll_conv2d_backward(info, in_dims, grad_output, input, weight, output, stride, padding, dilation, rolls, shift,
                         algorithm, output_mask):
    # The masked gradient (batched where grad_output or output is), then each pass's rule.
    g_bdim, x_bdim, w_bdim, y_bdim = in_dims[:4]
    size = info.batch_size
    masked, m_bdim = grad_output, g_bdim
    if output is not None:
        if g_bdim is None and y_bdim is None:
            masked = torch.ops.aten.threshold_backward(grad_output, output, 0)
        else:
            masked = torch.ops.aten.threshold_backward(
                _batch_first(grad_output, g_bdim, size), _batch_first(output, y_bdim, size), 0)
            m_bdim = 0
    geometry = (stride, padding, dilation, rolls, shift, algorithm)
    rest = (None,) * (len(geometry) + 1)
    results, dims = [None] * 3, [None] * 3
    if output_mask[0]:
        input_size = list(_logical_shape(input, x_bdim)[2:])
        results[0], dims[0] = roll_conv2d_backward_input(info, (m_bdim, w_bdim) + rest, masked, weight, input_size,
                                                         *geometry)
    if output_mask[1]:
        kernel_size = list(_logical_shape(weight, w_bdim)[2:])
        results[1], dims[1] = roll_conv2d_backward_weight(info, (m_bdim, x_bdim) + rest, masked, input, kernel_size,
                                                          *geometry)
    if output_mask[2]:
        filters = _logical_shape(weight, w_bdim)[0]
        results[2], dims[2] = bias_backward(info, (m_bdim, None), masked, filters)
    return tuple(results), tuple(dims)


# --- pooling and normalization: every sample is independent ------------------------------


def max_pool2d_forward(info, in_dims, *args):
    return _join_batch(ops.max_pool2d_forward, info, in_dims, args)


def max_pool2d_backward(info, in_dims, *args):
    return _join_batch(ops.max_pool2d_backward, info, in_dims, args, tensors=2)


def local_response_norm_forward(info, in_dims, *args):
    return _join_batch(ops.local_response_norm_forward, info, in_dims, args)


def local_response_norm_backward(info, in_dims, *args):
    return _join_batch(ops.local_response_norm_backward, info, in_dims, args, tensors=2)
