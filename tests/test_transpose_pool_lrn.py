"""Transposed convolution, max pooling and local response normalization against
torch.nn.functional and the formulas of source notebook 001."""
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import rollconv
import rollconv.functional as RF
from helpers import assert_clear_error, assert_compiles_like_eager, randn

ops = torch.ops.rollconv


def _fwd_bwd(fn, tensors, **kw):
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in tensors]
    y = fn(*leaves, **kw)
    y = y[0] if isinstance(y, tuple) else y
    y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(3), dtype=y.dtype).to(y.device))
    return [y] + [None if t is None else t.grad for t in leaves]


def _check_same(ref_fn, our_fn, tensors, atol=1e-10, **kw):
    for r, o in zip(_fwd_bwd(ref_fn, tensors, **kw), _fwd_bwd(our_fn, tensors, **kw)):
        if r is not None:
            torch.testing.assert_close(o, r, atol=atol, rtol=atol)


# --- transposed convolution -------------------------------------------------------------------


def test_conv_transpose_stride_3_4_padding_6_8():
    """Source notebook 001 ('Convolutional Layer'): conv_transpose2d(X2, K2, stride (3, 4), padding (6, 8)) of the (2, 4, 9, 9)
    convolution output gives the (2, 3, 17, 24) shape of the convolution's input, and its gradients
    are the convolution's forward and weight pass."""
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    k = torch.randn(4, 3, 5, 8, dtype=torch.float64)
    b = torch.randn(3, dtype=torch.float64)
    y = RF.conv_transpose2d(x, k, stride=(3, 4), padding=(6, 8))
    assert y.shape == (2, 3, 17, 24)
    _check_same(F.conv_transpose2d, RF.conv_transpose2d, (x, k, b), stride=(3, 4), padding=(6, 8))
    # the notebook's identities: with E = sum Y^2, dX2 = conv2d(2Y, K2) and dK2 = dK(X2 as dY, 2Y as input)
    dY = 2 * y
    torch.testing.assert_close(ops.conv2d_forward(dY, k, None, [3, 4], [6, 8], [1, 1], 1),
                               F.conv2d(dY, k, stride=(3, 4), padding=(6, 8)))


@pytest.mark.parametrize("seed", range(40))
def test_conv_transpose_random_configs(seed, device):
    rng = random.Random(seed)
    groups = rng.choice([1, 1, 2])
    cin, cout = groups * rng.randint(1, 3), groups * rng.randint(1, 3)
    k = (rng.randint(1, 4), rng.randint(1, 4))
    stride = (rng.randint(1, 3), rng.randint(1, 3))
    dilation = (rng.randint(1, 2), rng.randint(1, 2))
    padding = (rng.randint(0, k[0] - 1), rng.randint(0, k[1] - 1))
    output_padding = tuple(rng.randint(0, max(stride[i], dilation[i]) - 1) for i in (0, 1))
    x = torch.randn(rng.randint(1, 3), cin, rng.randint(2, 7), rng.randint(2, 7), dtype=torch.float64, device=device)
    w = torch.randn(cin, cout // groups, *k, dtype=torch.float64, device=device)
    b = torch.randn(cout, dtype=torch.float64, device=device) if rng.random() < 0.5 else None
    try:
        F.conv_transpose2d(x, w, b, stride, padding, output_padding, groups, dilation)
    except RuntimeError:
        pytest.skip("configuration torch rejects")
    _check_same(F.conv_transpose2d, RF.conv_transpose2d, (x, w, b), stride=stride, padding=padding,
                output_padding=output_padding, groups=groups, dilation=dilation)


def test_conv_transpose_gradcheck_gradgradcheck_and_module():
    x = torch.randn(2, 4, 4, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    fn = lambda x, w, b: RF.conv_transpose2d(x, w, b, (2, 3), (1, 0), (1, 2), 2, (1, 1))  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, w, b))
    ref = torch.nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2).double()
    ours = rollconv.nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2).double()
    ours.load_state_dict(ref.state_dict())
    xx = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(ours(xx), ref(xx))
    torch.testing.assert_close(ours(xx, output_size=[10, 10]), ref(xx, output_size=[10, 10]))
    torch.testing.assert_close(ours(xx[0]), ref(xx[0]))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: RF.conv_transpose2d(torch.randn(1, 2, 3, 3), torch.randn(2, 2, 3, 3), stride=2, output_padding=2), "output_padding must be"),
        (lambda: RF.conv_transpose2d(torch.randn(1, 3, 3, 3), torch.randn(2, 2, 3, 3)), "channels"),
        (lambda: RF.conv_transpose2d(torch.randn(1, 2, 3, 3), torch.randn(2, 2, 3)), "4-D tensor"),
        (lambda: RF.conv_transpose2d(torch.randn(1, 2, 3, 3), torch.randn(2, 2, 3, 3), stride=0), "stride and dilation must be positive"),
        (lambda: RF.conv_transpose2d(torch.randn(1, 2, 1, 1), torch.randn(2, 2, 1, 1), padding=1), "empty"),
        (lambda: RF.conv_transpose2d(torch.randn(1, 2, 3, 3).int(), torch.randn(2, 2, 3, 3).int()), "float32, float64, float16 and bfloat16"),
    ],
)
def test_conv_transpose_bad_input(make, match):
    assert_clear_error(make, match)


# --- max pooling ------------------------------------------------------------------------------


def test_maxpool_rectangular_window():
    """Source notebook 001: maxpool(X, 2, 3, 4, 5) on (2, 3, 18, 17) -> (2, 3, 5, 3), equal to torch."""
    x = torch.randn(2, 3, 18, 17)
    y = RF.max_pool2d(x, (2, 3), (4, 5))
    assert y.shape == (2, 3, 5, 3)
    assert torch.equal(y, F.max_pool2d(x, (2, 3), (4, 5)))


@pytest.mark.parametrize("shape, k, s", [((1, 1, 6, 6), (2, 2), (2, 2)), ((1, 1, 5, 5), (2, 2), (1, 1)), ((2, 3, 9, 7), (3, 2), (2, 1))])
def test_maxpool_backward_cases(shape, k, s):
    """Source notebook 001's maxpool_dk cases with E = sum Y^2 (random data: no ties)."""
    x = torch.randn(*shape, dtype=torch.float64)
    _check_same(F.max_pool2d, RF.max_pool2d, (x,), kernel_size=k, stride=s)


@pytest.mark.parametrize("seed", range(40))
def test_max_pool_random_configs(seed, device):
    rng = random.Random(seed)
    k = (rng.randint(1, 4), rng.randint(1, 4))
    kw = dict(kernel_size=k, stride=rng.choice([None, (rng.randint(1, 3), rng.randint(1, 3))]),
              padding=(rng.randint(0, k[0] // 2), rng.randint(0, k[1] // 2)),
              dilation=(rng.randint(1, 2), rng.randint(1, 2)), ceil_mode=rng.random() < 0.5)
    x = torch.randn(rng.randint(1, 2), rng.randint(1, 3), rng.randint(4, 11), rng.randint(4, 11), dtype=torch.float64, device=device)
    if rng.random() < 0.3:  # ties: integers repeat
        x = torch.randint(0, 3, x.shape, device=device).double()
    try:
        ref = F.max_pool2d(x, return_indices=True, **kw)
    except RuntimeError:
        pytest.skip("configuration torch rejects")
    ours = RF.max_pool2d(x, return_indices=True, **kw)
    assert torch.equal(ours[0], ref[0]) and torch.equal(ours[1], ref[1])
    _check_same(F.max_pool2d, RF.max_pool2d, (x,), **kw)


def test_max_pool_nan_and_inf_like_torch():
    x = torch.randn(1, 2, 6, 6)
    x[0, 0, 1, 1] = float("nan")
    x[0, 0, 4, 4] = float("nan")
    x[0, 0, 4, 5] = float("nan")
    x[0, 1, :3, :3] = float("-inf")
    for kw in (dict(kernel_size=2), dict(kernel_size=3, stride=1, padding=1), dict(kernel_size=3, stride=2, ceil_mode=True)):
        ref, ref_i = F.max_pool2d(x, return_indices=True, **kw)
        ours, ours_i = RF.max_pool2d(x, return_indices=True, **kw)
        torch.testing.assert_close(ours, ref, equal_nan=True)
        assert torch.equal(ours_i, ref_i)


def test_max_pool_gradcheck_gradgradcheck_compile_and_module():
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64, requires_grad=True)
    fn = lambda x: RF.max_pool2d(x, (3, 2), (2, 1), (1, 1), (1, 2), True)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))
    ref, ours = torch.nn.MaxPool2d(3, 2, 1, return_indices=True), rollconv.nn.MaxPool2d(3, 2, 1, return_indices=True)
    xx = torch.randn(2, 3, 9, 9)
    for r, o in zip(ref(xx), ours(xx)):
        assert torch.equal(r, o)
    assert torch.equal(rollconv.nn.MaxPool2d(2)(xx[0]), F.max_pool2d(xx[0], 2))
    assert_compiles_like_eager(rollconv.nn.MaxPool2d(2), xx)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: RF.max_pool2d(torch.randn(1, 1, 5, 5), 3, padding=2), "padding must be at most half"),
        (lambda: RF.max_pool2d(torch.randn(1, 1, 5, 5), 0), "kernel_size must be positive"),
        (lambda: RF.max_pool2d(torch.randn(1, 1, 5, 5), 2, stride=0), "stride must be positive"),
        (lambda: RF.max_pool2d(torch.randn(1, 1, 5, 5), 2, dilation=0), "dilation must be positive"),
        (lambda: RF.max_pool2d(torch.randn(1, 1, 2, 2), 3), "output would be empty"),
        (lambda: RF.max_pool2d(torch.randn(5, 5), 2), "3-D .* or 4-D"),
        (lambda: RF.max_pool2d(torch.ones(1, 1, 5, 5, dtype=torch.int64), 2), "float32, float64, float16 and bfloat16"),
        (lambda: ops.max_pool2d_backward(torch.randn(1, 1, 2, 2), torch.zeros(1, 1, 2, 3, dtype=torch.int64), [5, 5], [2, 2], [2, 2], [0, 0], [1, 1]), "indices"),
    ],
)
def test_max_pool_bad_input(make, match):
    assert_clear_error(make, match)


# --- local response normalization ---------------------------------------------------------------


def notebook_local_response_norm(n, alpha, beta, k, X):
    """Source notebook 001's formula, vectorized: window [i - n//2, i + n//2) and alpha unscaled."""
    Y = np.empty(X.shape)
    for i in range(X.shape[1]):
        lo, hi = max(0, i - n // 2), min(X.shape[1], i + n // 2)
        ss = (X[:, lo:hi] ** 2).sum(axis=1)
        Y[:, i] = X[:, i] / (k + alpha * ss) ** beta
    return Y


def test_lrn_matches_the_notebook_formula():
    """Source notebook 001 compares its formula to LocalResponseNorm(6, 0.0001 * 6, 0.75, 1): for even
    sizes its window [i - 3, i + 3) is torch's, and alpha / size undoes the * 6."""
    X = np.random.randn(2, 14, 9, 7)
    Y = notebook_local_response_norm(6, 0.0001, 0.75, 1, X)
    ours = rollconv.nn.LocalResponseNorm(6, 0.0001 * 6, 0.75, 1)(torch.tensor(X))
    np.testing.assert_allclose(ours.numpy(), Y, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", range(30))
def test_lrn_random_configs(seed, device):
    rng = random.Random(seed)
    shape = [rng.randint(1, 3), rng.randint(1, 9)] + [rng.randint(1, 5) for _ in range(rng.randint(1, 3))]
    x = torch.randn(*shape, dtype=torch.float64, device=device)
    kw = dict(size=rng.randint(1, 7), alpha=rng.choice([1e-4, 0.1, 1.0]), beta=rng.choice([0.75, 0.5, 1.3]), k=rng.choice([1.0, 2.0, 0.5]))
    _check_same(F.local_response_norm, RF.local_response_norm, (x,), **kw)


def test_lrn_gradcheck_and_module():
    x = torch.randn(2, 7, 3, 4, dtype=torch.float64, requires_grad=True)
    for size in (1, 2, 5):
        assert torch.autograd.gradcheck(lambda t: RF.local_response_norm(t, size, 0.5, 0.75, 1.5), (x,))
    xx = torch.randn(2, 6, 5, 5)
    torch.testing.assert_close(rollconv.nn.LocalResponseNorm(3)(xx), torch.nn.LocalResponseNorm(3)(xx))
    assert_compiles_like_eager(rollconv.nn.LocalResponseNorm(3), xx)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: RF.local_response_norm(torch.randn(2, 3), 2), "at least 3 dimensions"),
        (lambda: RF.local_response_norm(torch.randn(2, 3, 4), 0), "size must be positive"),
        (lambda: RF.local_response_norm(torch.randn(2, 3, 4), 2.5), "size must be an int"),
        (lambda: RF.local_response_norm(torch.ones(2, 3, 4, dtype=torch.int64), 2), "float32, float64, float16 and bfloat16"),
        (lambda: ops.local_response_norm_backward(torch.randn(2, 3, 5), torch.randn(2, 3, 4), 2, 1e-4, 0.75, 1.0), "grad_output of shape"),
    ],
)
def test_lrn_bad_input(make, match):
    assert_clear_error(make, match)


# --- opcheck ------------------------------------------------------------------------------------


def _samples(device="cpu"):
    mk = lambda *s: torch.randn(*s, dtype=torch.float64, device=device, requires_grad=True)  # noqa: E731
    _, idx = ops.max_pool2d_forward(torch.randn(2, 3, 7, 6, dtype=torch.float64, device=device), [3, 2], [2, 1], [1, 1], [1, 2], True)
    return {
        "max_pool2d_forward": [(mk(2, 3, 7, 6), [3, 2], [2, 1], [1, 1], [1, 2], True), (mk(1, 2, 5, 5), [2, 2], [2, 2], [0, 0], [1, 1], False)],
        "max_pool2d_backward": [(mk(*idx.shape), idx, [7, 6], [3, 2], [2, 1], [1, 1], [1, 2])],
        "local_response_norm_forward": [(mk(2, 5, 3, 4), 3, 1e-2, 0.75, 1.0), (mk(2, 5, 3), 2, 1e-4, 0.75, 2.0)],
        "local_response_norm_backward": [(mk(2, 5, 3, 4), mk(2, 5, 3, 4), 3, 1e-2, 0.75, 1.0)],
    }


@pytest.mark.parametrize("name", ["max_pool2d_forward", "max_pool2d_backward", "local_response_norm_forward", "local_response_norm_backward"])
def test_opcheck(name, device):
    for args in _samples(device)[name]:
        torch.library.opcheck(getattr(ops, name).default, args)


def test_lrn_gradgradcheck():
    x = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    for size in (1, 2, 3):
        assert torch.autograd.gradgradcheck(lambda t: RF.local_response_norm(t, size, 0.5, 0.75, 1.5), (x,))
