"""Edge inputs that crashed the process, hung, or gave a wrong answer without an error:
zero sizes, extreme geometry, argument validation, memory formats, concurrent calls and
int64 index arithmetic. Each test is one member of a kind; tests/test_properties.py sweeps
the kinds at random against torch."""
import concurrent.futures
import os
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F

import rollconv
import rollconv.functional as RF
from rollconv.functional import ArgumentError

from rollconv import reference

ALGORITHMS = ["direct", "bank", "fft"]


def _grads(y, *tensors):
    """Backward of y with a fixed grad_output; the gradients of `tensors` (None stays None)."""
    y.backward(torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y))
    return [None if t is None else t.grad for t in tensors]


def _leaf(t):
    return t.detach().clone().requires_grad_()


# --- zero sizes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kernel, stride",
    [((3, 3), 2), ((3, 3), (1, 2)), ((1, 1), 1), ((3, 3), 1)],
)
def test_zero_input_channels_give_the_bias_broadcast(kernel, stride):
    """No input channels: the sum over channels is empty, so y is the bias over every pixel and
    dW is zero (torch returns zero output channels here, contradicting the weight's shape)."""
    x = _leaf(torch.randn(2, 0, 50, 100, dtype=torch.float64))
    w = _leaf(torch.empty(33, 0, *kernel, dtype=torch.float64))
    b = _leaf(torch.randn(33, dtype=torch.float64))
    y = RF.conv2d(x, w, b, stride)
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    oh, ow = (50 - kernel[0]) // sh + 1, (100 - kernel[1]) // sw + 1
    assert y.shape == (2, 33, oh, ow)
    torch.testing.assert_close(y, b.view(1, 33, 1, 1).expand(2, 33, oh, ow))
    gx, gw, gb = _grads(y, x, w, b)
    assert gx.shape == x.shape and gw.shape == w.shape
    g = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
    torch.testing.assert_close(gb, g.sum((0, 2, 3)))


def test_zero_input_channels_of_a_transposed_convolution():
    x = torch.randn(2, 0, 4, 5)
    w = torch.empty(0, 3, 3, 3)
    b = torch.randn(3)
    y = RF.conv_transpose2d(x, w, b, stride=2)
    assert y.shape == (2, 3, 9, 11)
    torch.testing.assert_close(y, b.view(1, 3, 1, 1).expand_as(y))


@pytest.mark.parametrize("call", [
    lambda x: RF.conv2d(x, torch.randn(1, 1, 1, 1)),
    lambda x: RF.conv_transpose2d(x, torch.randn(1, 1, 1, 1)),
    lambda x: F.conv2d(x, torch.randn(1, 1, 1, 1)),
    lambda x: F.conv_transpose2d(x, torch.randn(1, 1, 1, 1)),
])
def test_images_of_no_pixels_with_a_batch_and_channels_are_an_error_as_in_torch(call):
    with pytest.raises(RuntimeError):
        call(torch.randn(1, 1, 0, 0))


def test_the_rolling_convolution_needs_a_channel():
    with pytest.raises(RuntimeError, match="at least one input channel"):
        RF.roll_conv2d(torch.randn(1, 0, 5, 5), torch.randn(2, 0, 3, 3), rolls=1)


@pytest.mark.parametrize("call", ["conv2d", "module", "direct", "bank", "fft", "roll_module", "transpose"])
def test_empty_batch_with_bias_forward_and_backward(call):
    x = _leaf(torch.randn(0, 3, 5, 5))
    if call in ("conv2d", "module"):
        layer = rollconv.nn.Conv2d(3, 4, 3)
        fn = layer if call == "module" else (lambda t: RF.conv2d(t, layer.weight, layer.bias))
        w, b, out_shape = layer.weight, layer.bias, (0, 4, 3, 3)
    elif call == "transpose":
        layer = rollconv.nn.ConvTranspose2d(3, 4, 3)
        fn, w, b, out_shape = layer, layer.weight, layer.bias, (0, 4, 7, 7)
    else:
        layer = rollconv.nn.RollConv2d(3, 2, 3, activation="relu", algorithm="auto" if call == "roll_module" else call)
        fn, w, b, out_shape = layer, layer.weight, layer.bias, (0, 6, 3, 3)
    y = fn(x)
    assert y.shape == out_shape
    y.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.count_nonzero(w.grad) == 0 and torch.count_nonzero(b.grad) == 0


def test_zero_output_channels_give_an_empty_output():
    """torch raises for a weight with no output channels; the empty result is the right one."""
    x = _leaf(torch.randn(2, 3, 5, 5))
    w = _leaf(torch.empty(0, 3, 3, 3))
    y = RF.conv2d(x, w, torch.empty(0))
    assert y.shape == (2, 0, 3, 3)
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.zeros_like(x))
    for algorithm in ALGORITHMS:
        assert RF.roll_conv2d(x, w, algorithm=algorithm).shape == (2, 0, 3, 3)


@pytest.mark.parametrize("shape", [(0, 4, 3, 3), (2, 0, 3, 3), (0, 1, 2), (2, 3, 0), (1, 2, 0, 4, 4)])
def test_local_response_norm_of_empty_tensors(shape):
    x = _leaf(torch.randn(shape))
    y = RF.local_response_norm(x, 3)
    torch.testing.assert_close(y, F.local_response_norm(x.detach(), 3))
    y.sum().backward()
    assert x.grad.shape == x.shape


def test_max_pool_follows_torch_on_empty_tensors():
    x = _leaf(torch.randn(0, 3, 5, 5))
    y = RF.max_pool2d(x, 2)
    assert y.shape == F.max_pool2d(x.detach(), 2).shape
    y.sum().backward()
    for shape in [(2, 0, 5, 5), (2, 3, 0, 5)]:  # torch: only the batch may be empty
        with pytest.raises(RuntimeError):
            F.max_pool2d(torch.randn(shape), 2)
        with pytest.raises(RuntimeError, match="non-zero channels"):
            RF.max_pool2d(torch.randn(shape), 2)


# --- extreme geometry --------------------------------------------------------------------


@pytest.mark.parametrize("stride", [2**20, 2**27, 2**62])
def test_a_huge_stride_on_the_fft_path(stride):
    """The fused fft engine's tiles grow with the stride: it must hand such windows to the
    composed path instead of allocating gigabytes (or aborting inside OpenMP)."""
    x = _leaf(torch.randn(1, 16, 6, 6, dtype=torch.float64))
    w = _leaf(torch.randn(1, 16, 3, 3, dtype=torch.float64))
    assert RF.choose_roll_algorithm(x, w, 16, [stride, stride], [1, 1]) == "fft"
    y = RF.roll_conv2d(x, w, stride=stride, algorithm="fft")
    ref_x, ref_w = _leaf(x), _leaf(w)
    ref = reference.roll_conv2d(ref_x, ref_w, stride=stride)
    assert y.shape == ref.shape == (1, 16, 1, 1)
    torch.testing.assert_close(y, ref)
    for got, want in zip(_grads(y, x, w), _grads(ref, ref_x, ref_w)):
        torch.testing.assert_close(got, want)


def test_max_pool_with_a_dilation_that_overflows_int64_is_an_error():
    x = torch.randn(1, 1, 20, 20, requires_grad=True)
    with pytest.raises(RuntimeError, match="overflows int64"):
        RF.max_pool2d(x, 5, 1, 2, 2**62, return_indices=True)


def test_max_pool_with_a_kernel_far_larger_than_the_input_takes_no_time():
    """Windows start arithmetically (no loop over the padding) and the work per window is
    bounded by the input: a 2**20 kernel over a 20 x 20 input is instant."""
    x = _leaf(torch.randn(1, 2, 20, 20, dtype=torch.float64))
    start = time.perf_counter()
    y, idx = RF.max_pool2d(x, 2**20, 1, 2**19, return_indices=True)
    y.sum().backward()
    assert time.perf_counter() - start < 5
    assert y.shape == (1, 2, 21, 21)  # every window covers the whole input
    torch.testing.assert_close(y, x.detach().amax((2, 3), keepdim=True).expand_as(y))
    flat = x.detach().flatten(2).argmax(2)
    assert torch.equal(idx, flat.view(1, 2, 1, 1).expand_as(idx))
    expected = torch.zeros_like(x).flatten(2)
    expected.scatter_(2, flat.unsqueeze(2), 21.0 * 21.0)
    torch.testing.assert_close(x.grad, expected.view_as(x))


def test_max_pool_backward_gives_indices_outside_the_input_no_gradient(device):
    """Indices past the plane address no input element: nothing is written for them (the
    sanitizer build checks the memory) and the rest is summed as usual. (Each index lies in
    its own window, as the forward's do: CUDA's gather only looks there, README.)"""
    g = torch.ones(1, 1, 2, 2, device=device)
    # 3x3 windows at stride 1 on 4x4: windows (0, 0) and (1, 1) both hold element 5
    outside = torch.tensor([[[[5, -5], [10**6, 5]]]], device=device)
    gx = torch.ops.rollconv.max_pool2d_backward(g, outside, [4, 4], [3, 3], [1, 1], [0, 0], [1, 1])
    assert gx.flatten().tolist() == [0.0] * 5 + [2.0] + [0.0] * 10


def test_a_window_entirely_in_padding_gets_no_gradient(device):
    """torch's max is -inf there and its index points past the plane; its backward gives
    zero gradients (and writes out of bounds: a later allocation aborted)."""
    x = torch.randn(1, 1, 2, 4, device=device, dtype=torch.float64, requires_grad=True)
    y, idx = RF.max_pool2d(x, (2, 1), (2, 1), (1, 0), (3, 1), return_indices=True)  # one row: rows -1 and 2
    y_torch, idx_torch = F.max_pool2d(x.detach(), (2, 1), (2, 1), (1, 0), (3, 1), return_indices=True)
    assert torch.equal(y, y_torch) and torch.equal(idx, idx_torch) and y.eq(float("-inf")).all()
    y.backward(torch.ones_like(y))
    assert x.grad.eq(0).all()


def test_a_dilated_kernel_that_overflows_int64_is_an_error():
    """torch wraps around here and returns a 6 x 6 output; the kernel cannot fit."""
    x, w = torch.randn(1, 2, 6, 6), torch.randn(2, 2, 3, 3)
    for fn in (lambda: RF.conv2d(x, w, dilation=2**62), lambda: RF.roll_conv2d(x, w, dilation=2**62)):
        with pytest.raises(RuntimeError, match="overflows int64"):
            fn()


@pytest.mark.parametrize("call", ["conv2d", "direct", "bank", "fft"])
def test_positions_past_int32_in_an_intermediate_product(call):
    """dilation and padding of 2**30: the tap offset 2 * 2**30 passes int32 while every
    tensor is tiny. Index arithmetic is int64 (Window2d, ColumnLayout and the kernels' loop
    variables are int64_t), so only the middle tap meets the input."""
    x = _leaf(torch.randn(1, 2, 1, 1, dtype=torch.float64))
    w = _leaf(torch.randn(2, 2, 1, 3, dtype=torch.float64))
    kw = dict(padding=(0, 2**30), dilation=(1, 2**30))
    if call == "conv2d":
        y = RF.conv2d(x, w, **kw)
        ref = torch.einsum("nc,fc->nf", x.detach()[:, :, 0, 0], w.detach()[:, :, 0, 1])
    else:
        y = RF.roll_conv2d(x, w, algorithm=call, **kw)
        ref = reference.roll_conv2d(x.detach(), w.detach()[:, :, :, 1:2])[:, :, 0, 0]
    assert y.shape == (1, ref.shape[1], 1, 1)
    torch.testing.assert_close(y[:, :, 0, 0], ref)
    gx, gw = _grads(y, x, w)
    assert torch.count_nonzero(gw[:, :, :, 0]) == 0 and torch.count_nonzero(gw[:, :, :, 2]) == 0


def test_an_output_too_large_to_count_is_an_error():
    x, w = torch.randn(1, 1, 1, 1), torch.randn(1, 1, 1, 1)
    with pytest.raises(RuntimeError, match="more elements than int64|allocate|overflow"):
        RF.conv2d(x, w, padding=2**40)


# --- validation --------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [torch.randn(1), torch.randn(()), torch.randn(3, 1), torch.randn(3, dtype=torch.float64)])
def test_conv_transpose2d_validates_its_bias(bias):
    with pytest.raises(RuntimeError, match="bias"):
        RF.conv_transpose2d(torch.randn(1, 2, 3, 3), torch.randn(2, 3, 2, 2), bias)


def test_a_3d_weight_with_same_padding_is_a_clear_error():
    with pytest.raises(ArgumentError, match="4-D"):
        RF.conv2d(torch.randn(1, 1, 4, 4), torch.randn(1, 2, 2), padding="same")


@pytest.mark.parametrize(
    "call",
    [
        lambda: RF.conv2d(torch.randn(4, 4), torch.randn(1, 1, 3, 3)),
        lambda: RF.conv_transpose2d(torch.randn(2, 1, 1, 4, 4), torch.randn(1, 1, 3, 3)),
        lambda: RF.roll_conv2d(torch.randn(5), torch.randn(1, 1, 3, 3)),
        lambda: RF.max_pool2d(torch.randn(4, 4), 2),
        lambda: RF.local_response_norm(torch.randn(4, 4), 2),
        lambda: RF.conv2d(torch.randn(1, 1, 4, 4), torch.randn(1, 1, 3, 3), padding="full"),
        lambda: RF.roll_conv2d(torch.randn(1, 2, 4, 4), torch.randn(1, 2, 3, 3), algorithm="winograd"),
    ],
)
def test_validation_errors_are_runtime_errors_like_torch(call):
    """Code written for torch.nn.functional catches RuntimeError; ours is also a ValueError."""
    with pytest.raises(RuntimeError):
        call()
    with pytest.raises(ValueError):
        call()


# --- memory formats ------------------------------------------------------------------------


def _channels_last(t):
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (lambda x: RF.conv2d(x, torch.randn(4, 3, 3, 3)), None),
        (lambda x: RF.roll_conv2d(x, torch.randn(2, 3, 3, 3), algorithm="direct"), None),
        (lambda x: RF.roll_conv2d(x, torch.randn(2, 3, 3, 3), algorithm="bank"), None),
        (lambda x: RF.roll_conv2d(x, torch.randn(2, 3, 3, 3), algorithm="fft"), None),
        (lambda x: RF.conv_transpose2d(x, torch.randn(3, 2, 3, 3)), lambda x: F.conv_transpose2d(x, torch.randn(3, 2, 3, 3))),
        (lambda x: RF.max_pool2d(x, 2), lambda x: F.max_pool2d(x, 2)),
        (lambda x: RF.local_response_norm(x, 3), lambda x: F.local_response_norm(x, 3)),
    ],
)
def test_channels_last_in_channels_last_out(ours, theirs):
    """torch's rule: a channels_last input gives a channels_last output (and input gradient)."""
    x = torch.randn(2, 3, 8, 8).to(memory_format=torch.channels_last).requires_grad_()
    y = ours(x)
    assert _channels_last(y)
    if theirs is not None:
        assert _channels_last(theirs(x.detach()))
    y.backward(torch.ones_like(y))
    assert _channels_last(x.grad)
    assert not _channels_last(ours(x.detach().contiguous()))


def test_max_pool_indices_follow_the_input_format():
    x = torch.randn(2, 3, 8, 8).to(memory_format=torch.channels_last)
    y, idx = RF.max_pool2d(x, 2, return_indices=True)
    ref_y, ref_idx = F.max_pool2d(x, 2, return_indices=True)
    assert _channels_last(idx) == _channels_last(ref_idx) == True  # noqa: E712
    assert torch.equal(idx, ref_idx) and torch.equal(y, ref_y)


def test_a_channels_last_weight_gives_a_channels_last_output():
    x = torch.randn(2, 3, 8, 8)
    w = torch.randn(4, 3, 3, 3).to(memory_format=torch.channels_last)
    assert _channels_last(RF.conv2d(x, w)) == _channels_last(F.conv2d(x, w)) == True  # noqa: E712


def test_opcheck_with_channels_last_inputs():
    x = torch.randn(2, 4, 7, 6, dtype=torch.float64).to(memory_format=torch.channels_last)
    w = torch.randn(3, 4, 3, 3, dtype=torch.float64)
    ops = torch.ops.rollconv
    torch.library.opcheck(ops.conv2d_forward.default, (x, w, None, [1, 1], [1, 1], [1, 1], 1))
    torch.library.opcheck(ops.roll_conv2d_forward.default, (x, w, None, [1, 1], [1, 1], [1, 1], 4, 1, "direct", True))
    torch.library.opcheck(ops.max_pool2d_forward.default, (x, [2, 2], [2, 2], [0, 0], [1, 1], False))
    torch.library.opcheck(ops.local_response_norm_forward.default, (x, 3, 1e-4, 0.75, 1.0))


# --- concurrency -------------------------------------------------------------------------


def _workload(seed):
    """Every op and algorithm on shapes of its own, forward and backward, float64."""
    gen = torch.Generator().manual_seed(seed)
    c = 4 + seed % 5
    x = torch.randn(2, c, 9 + seed % 4, 8, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(3, c, 3, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    outs = [RF.conv2d(x, w, padding=1), RF.conv_transpose2d(x, w.transpose(0, 1), stride=2)]
    outs += [RF.roll_conv2d(x, w, padding=1, activation="relu", algorithm=a) for a in ALGORITHMS]
    outs += [RF.max_pool2d(x, 3, 2, 1), RF.local_response_norm(x, 3)]
    total = sum(o.sum() for o in outs)
    gx, gw = torch.autograd.grad(total, (x, w))
    return [o.detach() for o in outs] + [gx, gw]


def _compare_concurrent_with_sequential():
    seeds = list(range(8))
    alone = [_workload(s) for s in seeds]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(_workload, seeds * 2))
    for i, results in enumerate(together):
        for got, want in zip(results, alone[i % len(seeds)]):
            assert torch.equal(got, want)


def test_concurrent_calls_match_calls_one_at_a_time():
    """No shared mutable state in the engines, caches or workspaces: results of ops called
    from several Python threads at once are bitwise those of the same calls in sequence.
    In a process of its own (each Python thread gets its own OpenMP thread pool, which then
    outlives the test), with a time limit, so that a deadlock fails the test."""
    code = "import test_edge_inputs as t; t._compare_concurrent_with_sequential(); print('same')"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.path.dirname(__file__), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0 and done.stdout.strip().endswith("same"), done.stderr[-3000:]
