"""Property-based tests (hypothesis): every op and algorithm against torch.nn.functional over
random geometry that includes zero sizes, 1x1 images, kernels as large as the padded input,
large strides and dilations, groups, rolls, non-contiguous and channels_last inputs.

For each drawn case both sides run forward and backward, float64, and the error decision
must agree: both raise, or both return equal values, gradients and memory formats. Where
rollconv deliberately returns the mathematically right value and torch raises or differs,
the case is named (`Deliberate`) and our value is checked against that right value.

The examples are derandomized (the same every run); ROLLCONV_PROPERTY_EXAMPLES sets how
many per op (default 60)."""
import enum
import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rollconv.functional as RF

from rollconv import reference

SETTINGS = settings(
    max_examples=int(os.environ.get("ROLLCONV_PROPERTY_EXAMPLES", "60")),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
ERRORS = (RuntimeError, ValueError, TypeError, IndexError)  # torch raises IndexError for some empty weights


class Deliberate(enum.Enum):
    """Cases where rollconv's answer is the mathematically right one and torch's is not."""

    NONE = "agree with torch"
    ZERO_INPUT_CHANNELS = "no input channels: y is the bias over the pixels (torch: zero output channels or an error)"
    ZERO_OUTPUT_CHANNELS = "a weight with no output channels: an empty output (torch raises)"


def _layout(t, layout):
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # same values, non-contiguous (H and W strides swapped)
        return t.transpose(2, 3).contiguous().transpose(2, 3)
    return t


def _run(fn, tensors):
    """fn(*leaves) forward and backward: ('error', exception) or ('ok', output, indices,
    gradients). Non-tensor entries pass through."""
    leaves = [t.detach().clone().requires_grad_() if isinstance(t, torch.Tensor) else t for t in tensors]
    try:
        result = fn(*leaves)
        out, extra = (result, None) if isinstance(result, torch.Tensor) else result
        grad_output = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape)
        params = [t for t in leaves if isinstance(t, torch.Tensor)]
        grads = torch.autograd.grad(out, params, grad_output, allow_unused=True) if out.requires_grad else [None] * len(params)
    except ERRORS as e:
        return ("error", e)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    return ("ok", out.detach(), extra, grads)


def _channels_last(t):
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def _assert_same(ours, theirs, case):
    assert ours[0] == theirs[0], f"{case}: rollconv {ours[0]} ({ours[1] if ours[0] == 'error' else ''}), torch {theirs[0]} ({theirs[1] if theirs[0] == 'error' else ''})"
    if ours[0] == "error":
        return
    _, out, extra, grads = ours
    _, ref, ref_extra, ref_grads = theirs
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9, msg=lambda m: f"{case}: output: {m}")
    if extra is not None:
        assert torch.equal(extra, ref_extra), f"{case}: indices differ"
    for i, (g, r) in enumerate(zip(grads, ref_grads)):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-9, msg=lambda m: f"{case}: gradient {i}: {m}")
    # The memory format of an unambiguous output (more than one channel and pixel).
    if out.dim() == 4 and out.shape[1] > 1 and out.shape[2] * out.shape[3] > 1:
        assert _channels_last(out) == _channels_last(ref), f"{case}: memory format differs"


@st.composite
def windows(draw):
    """Kernel, stride, padding, dilation and input size: small, or large strides and dilations."""
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = tuple(draw(st.sampled_from([1, 1, 2, 3, 2**20])) for _ in range(2))
    dilation = tuple(draw(st.sampled_from([1, 1, 2, 3, 2**40])) for _ in range(2))
    padding = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    hw = (draw(st.integers(0, 7)), draw(st.integers(0, 7)))
    return kernel, stride, padding, dilation, hw


@SETTINGS
@given(geo=windows(), n=st.integers(0, 3), groups=st.integers(1, 3), cin_g=st.integers(0, 3),
       cout_g=st.integers(0, 3), bias=st.booleans(), layout=st.sampled_from(["contiguous", "channels_last", "strided"]))
def test_conv2d_matches_torch(geo, n, groups, cin_g, cout_g, bias, layout):
    kernel, stride, padding, dilation, hw = geo
    x = _layout(torch.randn(n, groups * cin_g, *hw, dtype=torch.float64), layout)
    w = torch.randn(groups * cout_g, cin_g, *kernel, dtype=torch.float64)
    b = torch.randn(groups * cout_g, dtype=torch.float64) if bias else None
    args = (stride, padding, dilation, groups)
    _compare_convolutions(RF.conv2d, F.conv2d, (x, w, b), args, cin_g, cout_g, f"conv2d {layout}")


def _compare_convolutions(ours_fn, torch_fn, tensors, args, cin, cout, name):
    """ours_fn against torch_fn on (x, w, b) with the trailing arguments `args`; cin and cout
    are the channels per group (the Deliberate cases)."""
    ours = _run(lambda x, w, b: ours_fn(x, w, b, *args), tensors)
    theirs = _run(lambda x, w, b: torch_fn(x, w, b, *args), tensors)
    x, w, b = tensors
    case = f"{name} x={tuple(x.shape)} w={tuple(w.shape)} {args}"
    deliberate = _conv_deliberate(cin, cout, ours)
    if deliberate is Deliberate.NONE:
        _assert_same(ours, theirs, case)
    else:
        _assert_right_value(ours, deliberate, b, case)


def _conv_deliberate(cin, cout, ours):
    if ours[0] == "error":
        return Deliberate.NONE  # torch must raise too
    if cout == 0:
        return Deliberate.ZERO_OUTPUT_CHANNELS
    if cin == 0:
        return Deliberate.ZERO_INPUT_CHANNELS
    return Deliberate.NONE


def _assert_right_value(ours, deliberate, bias, case):
    """Our value in a Deliberate case: empty for no output channels; the bias (or zero) over
    every pixel, with zero input and weight gradients, for no input channels."""
    _, out, _, grads = ours
    if deliberate is Deliberate.ZERO_OUTPUT_CHANNELS:
        assert out.shape[1] == 0, case
        for g in grads:
            assert torch.count_nonzero(g) == 0, case
        return
    expected = torch.zeros_like(out) if bias is None else bias.view(1, -1, 1, 1).expand_as(out)
    torch.testing.assert_close(out, expected, msg=lambda m: f"{case}: {m}")
    for g in grads[:2]:
        assert torch.count_nonzero(g) == 0, case


@SETTINGS
@given(geo=windows(), n=st.integers(0, 2), c=st.integers(1, 5), f=st.integers(0, 3), bias=st.booleans(),
       relu=st.booleans(), algorithm=st.sampled_from(["direct", "bank", "fft"]), data=st.data(),
       layout=st.sampled_from(["contiguous", "channels_last", "strided"]))
def test_roll_conv2d_matches_the_filter_bank_method(geo, n, c, f, bias, relu, algorithm, data, layout):
    kernel, stride, padding, dilation, hw = geo
    shift = data.draw(st.sampled_from([d for d in range(1, c + 1) if c % d == 0]), label="shift")
    rolls = c // shift if algorithm == "fft" else data.draw(st.integers(1, c // shift), label="rolls")
    x = _layout(torch.randn(n, c, *hw, dtype=torch.float64), layout)
    w = torch.randn(f, c, *kernel, dtype=torch.float64)
    b = torch.randn(f, dtype=torch.float64) if bias else None
    ours = _run(lambda x, w, b: RF.roll_conv2d(x, w, b, stride, padding, dilation, rolls,
                                               "relu" if relu else None, algorithm, shift=shift), (x, w, b))
    theirs = _run(lambda x, w, b: reference.roll_conv2d(x, w, b, stride, padding, dilation, rolls, shift,
                                                        "relu" if relu else None), (x, w, b))
    case = f"roll_conv2d {algorithm} x={tuple(x.shape)} w={tuple(w.shape)} rolls={rolls} shift={shift} {stride} {padding} {dilation} {layout}"
    deliberate = Deliberate.ZERO_OUTPUT_CHANNELS if f == 0 and ours[0] == "ok" else Deliberate.NONE
    if deliberate is Deliberate.NONE:
        _assert_same(ours, theirs, case)
    else:
        _assert_right_value(ours, deliberate, b, case)


@SETTINGS
@given(geo=windows(), n=st.integers(0, 2), groups=st.integers(1, 2), cin_g=st.integers(0, 3),
       cout_g=st.integers(0, 3), bias=st.booleans(), data=st.data(),
       layout=st.sampled_from(["contiguous", "channels_last"]))
def test_conv_transpose2d_matches_torch(geo, n, groups, cin_g, cout_g, bias, data, layout):
    kernel, stride, padding, dilation, hw = geo
    stride = tuple(min(s, 3) for s in stride)  # the output grows with the stride
    dilation = tuple(min(d, 3) for d in dilation)
    output_padding = tuple(data.draw(st.integers(0, max(stride[i], dilation[i]) - 1), label="output_padding") for i in (0, 1))
    x = _layout(torch.randn(n, groups * cin_g, *hw, dtype=torch.float64), layout)
    w = torch.randn(groups * cin_g, cout_g, *kernel, dtype=torch.float64)
    b = torch.randn(groups * cout_g, dtype=torch.float64) if bias else None
    args = (stride, padding, output_padding, groups, dilation)
    _compare_convolutions(RF.conv_transpose2d, F.conv_transpose2d, (x, w, b), args, cin_g, cout_g,
                          f"conv_transpose2d {layout}")


@SETTINGS
@given(n=st.integers(0, 2), c=st.integers(0, 3), hw=st.tuples(st.integers(0, 7), st.integers(0, 7)),
       kernel=st.tuples(st.sampled_from([1, 2, 3, 4, 2**10]), st.sampled_from([1, 2, 3, 4])),
       stride=st.sampled_from([None, 1, 2, 3, 2**20]), dilation=st.sampled_from([1, 2, 3]),
       ceil_mode=st.booleans(), data=st.data(), layout=st.sampled_from(["contiguous", "channels_last", "strided"]))
def test_max_pool2d_matches_torch(n, c, hw, kernel, stride, dilation, ceil_mode, data, layout):
    padding = tuple(data.draw(st.integers(0, k // 2 + 1), label="padding") for k in kernel)  # + 1: invalid too
    x = _layout(torch.randn(n, c, *hw, dtype=torch.float64), layout)
    args = (kernel, stride, padding, dilation, ceil_mode, True)
    ours = _run(lambda x: RF.max_pool2d(x, *args), (x,))
    theirs = _run(lambda x: F.max_pool2d(x, *args), (x,))
    _assert_same(ours, theirs, f"max_pool2d x={tuple(x.shape)} {args} {layout}")


@SETTINGS
@given(shape=st.lists(st.integers(0, 4), min_size=3, max_size=5), size=st.integers(1, 6),
       alpha=st.floats(1e-4, 1.0), beta=st.floats(0.1, 1.5), k=st.floats(0.5, 2.0),
       channels_last=st.booleans())
def test_local_response_norm_matches_torch(shape, size, alpha, beta, k, channels_last):
    x = torch.randn(*shape, dtype=torch.float64)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    ours = _run(lambda x: RF.local_response_norm(x, size, alpha, beta, k), (x,))
    theirs = _run(lambda x: F.local_response_norm(x, size, alpha, beta, k), (x,))
    _assert_same(ours, theirs, f"local_response_norm x={tuple(x.shape)} size={size}")


def test_the_deliberate_cases_are_named():
    """Each deliberate difference from torch has a name and a reason (documented in the README)."""
    assert {d.name for d in Deliberate} == {"NONE", "ZERO_INPUT_CHANNELS", "ZERO_OUTPUT_CHANNELS"}
