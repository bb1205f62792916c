"""conv2d by im2col + GEMM: the source notebooks' cases, torch.nn.functional.conv2d as reference,
gradcheck, opcheck, torch.compile, modules and bad input."""
import random

import pytest
import torch
import torch.nn.functional as F

import rollconv
import rollconv.functional as RF
from helpers import assert_clear_error, assert_compiles_like_eager, randn, random_window

ops = torch.ops.rollconv


def _ref_and_ours(x, w, b, **kw):
    """Forward and all gradients of torch's conv2d and ours on the same data."""
    results = []
    for fn in (F.conv2d, RF.conv2d):
        xs = x.detach().clone().requires_grad_()
        ws = w.detach().clone().requires_grad_()
        bs = None if b is None else b.detach().clone().requires_grad_()
        y = fn(xs, ws, bs, **kw)
        g = torch.randn_like(y, generator=torch.Generator().manual_seed(1)) if y.device.type == "cpu" else torch.ones_like(y)
        y.backward(g)
        results.append((y, xs.grad, ws.grad, None if bs is None else bs.grad))
    return results


def _assert_close_all(ref, ours, **tol):
    for r, o in zip(ref, ours):
        if r is None:
            assert o is None
        else:
            torch.testing.assert_close(o, r, **tol)


# --- the source notebooks' cases ---------------------------------------------------------------------------


def test_stride2_golden_values():
    """Source notebook 003 (layer shapes with torch.nn.Conv2d): 5x5 input, 2x2 kernel, stride 2 -> [[176, -34], [8, 66]]."""
    A = torch.tensor(
        [[5, 27, 9, -15, 12], [2, 4, -2, -7, 8], [-8, 16, 5, 23, -6], [-17, 7, 9, -14, 3], [10, -5, 13, 6, -11]],
        dtype=torch.float32,
    ).view(1, 1, 5, 5).requires_grad_()
    B = torch.tensor([[8, 4], [2, 6]], dtype=torch.float32).view(1, 1, 2, 2).requires_grad_()
    out = RF.conv2d(A, B, stride=2)
    assert out.squeeze().tolist() == [[176.0, -34.0], [8.0, 66.0]]
    out.sum().backward()
    assert B.grad.squeeze().tolist() == [[11.0, 51.0], [-8.0, -10.0]]
    expected_dx = [[8, 4, 8, 4, 0], [2, 6, 2, 6, 0], [8, 4, 8, 4, 0], [2, 6, 2, 6, 0], [0, 0, 0, 0, 0]]
    assert A.grad.squeeze().tolist() == expected_dx


def test_layer_shapes_of_a_strided_rectangular_kernel():
    """Source notebook 003: C_in=4 -> C_out=5, kernel (3, 2), stride 2 on 14x4x32x35 -> 14x5x15x17."""
    x = torch.randn(14, 4, 32, 35)
    w = torch.randn(5, 4, 3, 2)
    b = torch.randn(5)
    y = RF.conv2d(x, w, b, stride=2)
    assert y.shape == (14, 5, 15, 17)
    torch.testing.assert_close(y, F.conv2d(x, w, b, stride=2), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "x_shape, stride, padding",
    [
        ((2, 3, 17, 23), (1, 1), (0, 0)),  # source notebook 001: stride 1 -> (2, 4, 13, 16)
        ((2, 3, 17, 24), (3, 4), (0, 0)),  # strided complete -> (2, 4, 5, 5)
        ((2, 3, 19, 26), (3, 4), (0, 0)),  # strided partial -> (2, 4, 5, 5)
        ((2, 3, 19, 26), (3, 4), (7, 10)),  # padded -> (2, 4, 10, 10)
        ((2, 3, 17, 24), (3, 4), (6, 8)),  # dK / dX under stride and padding
    ],
)
def test_convolutional_layer_notebook_cases(x_shape, stride, padding):
    x = torch.randn(*x_shape, dtype=torch.float64)
    w = torch.randn(4, 3, 5, 8, dtype=torch.float64)
    b = torch.randn(4, dtype=torch.float64)
    ref, ours = _ref_and_ours(x, w, b, stride=stride, padding=padding)
    _assert_close_all(ref, ours, rtol=1e-10, atol=1e-10)


def test_convolutional_layer_notebook_output_shapes():
    expect = {((17, 23), (1, 1), (0, 0)): (13, 16), ((17, 24), (3, 4), (0, 0)): (5, 5),
              ((19, 26), (3, 4), (0, 0)): (5, 5), ((19, 26), (3, 4), (7, 10)): (10, 10)}
    w = torch.randn(4, 3, 5, 8)
    for (hw, stride, padding), out_hw in expect.items():
        assert RF.conv2d(torch.randn(2, 3, *hw), w, stride=stride, padding=padding).shape == (2, 4, *out_hw)


def test_dk_dx_ops_match_the_dilated_convolution_formulas():
    """Source notebook 001 ('Convolutional Layer') derives dK and dX as convolutions of padded, stride-dilated tensors;
    the dedicated ops must give the same numbers (E = sum Y^2, so dY = 2Y)."""
    X = torch.randn(2, 3, 17, 24, dtype=torch.float64)
    K = torch.randn(4, 3, 5, 8, dtype=torch.float64)
    Y = F.conv2d(X, K, stride=(3, 4), padding=(6, 8))
    dY = 2 * Y
    # dK = conv2d(pad(X^T), stride0(dY^T))^T, cropped to the kernel size
    Xt = F.pad(X, (8, 8, 6, 6)).transpose(0, 1)
    dYt = torch.zeros(4, 2, (Y.shape[2] - 1) * 3 + 1, (Y.shape[3] - 1) * 4 + 1, dtype=torch.float64)
    dYt[:, :, ::3, ::4] = dY.transpose(0, 1)
    dK_seed = F.conv2d(Xt, dYt).transpose(0, 1)[:, :, :5, :8]
    # dX = conv2d(pad(stride0(dY)), rot180(K^T)), cropped by the padding
    s0 = torch.zeros(2, 4, (Y.shape[2] - 1) * 3 + 1, (Y.shape[3] - 1) * 4 + 1, dtype=torch.float64)
    s0[:, :, ::3, ::4] = dY
    dX_full = F.conv2d(F.pad(s0, (7, 7, 4, 4)), K.flip(2, 3).transpose(0, 1))
    dX_seed = torch.zeros_like(X)
    crop = dX_full[:, :, 6 : 6 + X.shape[2], 8 : 8 + X.shape[3]]
    dX_seed[:, :, : crop.shape[2], : crop.shape[3]] = crop
    dK = ops.conv2d_backward_weight(dY, X, [5, 8], [3, 4], [6, 8], [1, 1], 1)
    dX = ops.conv2d_backward_input(dY, K, [17, 24], [3, 4], [6, 8], [1, 1], 1)
    torch.testing.assert_close(dK, dK_seed)
    torch.testing.assert_close(dX, dX_seed)


def test_stride2_with_bias_golden_gradients():
    """Source notebook 002 ('Forward and Backward with Convolutions'): 3x3x4x4 input, 2x2 kernel, stride 2, bias; dX/dW/db with dZ = 1."""
    x = torch.randn(3, 3, 4, 4, dtype=torch.float64)
    w = torch.randn(3, 3, 2, 2, dtype=torch.float64)
    b = torch.randn(3, dtype=torch.float64)
    ref, ours = _ref_and_ours(x, w, b, stride=2)
    _assert_close_all(ref, ours)
    # the notebook's own loops: dbias is the sum of dZ = number of output pixels times N
    xs = x.clone().requires_grad_()
    bs = b.clone().requires_grad_()
    RF.conv2d(xs, w, bs, stride=2).sum().backward()
    assert bs.grad.tolist() == [12.0, 12.0, 12.0]


# --- randomized against torch ------------------------------------------------------------


def _random_config(rng):
    groups = rng.choice([1, 1, 2, 3])
    cin = groups * rng.randint(1, 4)
    cout = groups * rng.randint(1, 4)
    kernel, stride, dilation, padding, hw = random_window(rng, 9)
    return dict(n=rng.randint(1, 3), cin=cin, cout=cout, k=kernel, hw=hw, groups=groups,
                stride=stride, padding=padding, dilation=dilation, bias=rng.random() < 0.7)


@pytest.mark.parametrize("seed", range(60))
def test_random_configs_match_torch(seed, device):
    rng = random.Random(seed)
    c = _random_config(rng)
    x = torch.randn(c["n"], c["cin"], *c["hw"], dtype=torch.float64, device=device)
    w = torch.randn(c["cout"], c["cin"] // c["groups"], *c["k"], dtype=torch.float64, device=device)
    b = torch.randn(c["cout"], dtype=torch.float64, device=device) if c["bias"] else None
    ref, ours = _ref_and_ours(x, w, b, stride=c["stride"], padding=c["padding"], dilation=c["dilation"], groups=c["groups"])
    _assert_close_all(ref, ours, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("padding", ["same", "valid", 1, (2, 0), [0, 1]])
@pytest.mark.parametrize("kernel", [(3, 3), (2, 4), (1, 5)])
def test_padding_forms(padding, kernel):
    x = torch.randn(2, 4, 9, 8, dtype=torch.float64)
    w = torch.randn(3, 4, *kernel, dtype=torch.float64)
    ref, ours = _ref_and_ours(x, w, None, padding=padding, dilation=(2, 1) if padding == "same" else 1)
    _assert_close_all(ref, ours)


def test_unbatched_input():
    x = torch.randn(3, 7, 7)
    w = torch.randn(5, 3, 3, 3)
    y = RF.conv2d(x, w, padding=1)
    assert y.shape == (5, 7, 7)
    torch.testing.assert_close(y, F.conv2d(x, w, padding=1))


def test_empty_batch():
    x = torch.randn(0, 3, 7, 7, requires_grad=True)
    w = torch.randn(5, 3, 3, 3, requires_grad=True)
    y = RF.conv2d(x, w)
    assert y.shape == (0, 5, 5, 5)
    y.sum().backward()
    assert x.grad.shape == x.shape and torch.equal(w.grad, torch.zeros_like(w))


def test_non_contiguous_and_channels_last():
    x = torch.randn(2, 6, 9, 10, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    ref = F.conv2d(x, w, groups=2)
    torch.testing.assert_close(RF.conv2d(x.to(memory_format=torch.channels_last), w, groups=2), ref)
    torch.testing.assert_close(RF.conv2d(x.transpose(2, 3).contiguous().transpose(2, 3), w, groups=2), ref)
    torch.testing.assert_close(RF.conv2d(x, w.to(memory_format=torch.channels_last), groups=2), ref)
    wide = torch.randn(2, 12, 9, 10, dtype=torch.float64)[:, ::2]
    torch.testing.assert_close(RF.conv2d(wide, w, groups=2), F.conv2d(wide, w, groups=2))


def test_batch_processed_in_chunks(small_workspace):
    """With a 1 MiB workspace the 64-sample batch goes through im2col in several chunks."""
    x = torch.randn(64, 8, 24, 24, dtype=torch.float64)
    w = torch.randn(6, 8, 3, 3, dtype=torch.float64)
    b = torch.randn(6, dtype=torch.float64)
    ref, ours = _ref_and_ours(x, w, b, padding=1)
    _assert_close_all(ref, ours)


def test_float32():
    x = torch.randn(4, 16, 20, 20)
    w = torch.randn(32, 16, 3, 3)
    ref, ours = _ref_and_ours(x, w, torch.randn(32), padding=1, stride=2)
    _assert_close_all(ref, ours, rtol=1e-4, atol=1e-4)


# --- autograd, opcheck, compile -------------------------------------------------------------


@pytest.mark.parametrize("groups, stride, padding, dilation", [(1, 1, 0, 1), (2, (2, 1), (1, 2), (1, 2))])
def test_gradcheck_and_gradgradcheck(groups, stride, padding, dilation):
    x = torch.randn(2, 4, 7, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 4 // groups, 3, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    fn = lambda x, w, b: RF.conv2d(x, w, b, stride, padding, dilation, groups)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, w, b))


def _opcheck_samples(device="cpu", dtype=torch.float64):
    mk = lambda *s: torch.randn(*s, dtype=dtype, device=device, requires_grad=True)  # noqa: E731
    g = [2, 1]
    return {
        "conv2d_forward": [
            (mk(2, 4, 7, 6), mk(6, 2, 3, 2), mk(6), g, [1, 0], [1, 2], 2),
            (mk(1, 3, 5, 5), mk(2, 3, 1, 1), None, [1, 1], [0, 0], [1, 1], 1),
        ],
        "conv2d_backward_input": [(mk(2, 6, 4, 4), mk(6, 2, 3, 2), [7, 6], g, [1, 0], [1, 2], 2)],
        "conv2d_backward_weight": [(mk(2, 6, 4, 4), mk(2, 4, 7, 6), [3, 2], g, [1, 0], [1, 2], 2)],
        "bias_backward": [(mk(2, 6, 3, 5), 6), (mk(2, 6, 3, 5), 3)],
    }


@pytest.mark.parametrize("name", ["conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight", "bias_backward"])
def test_opcheck(name, device):
    for args in _opcheck_samples(device)[name]:
        torch.library.opcheck(getattr(ops, name).default, args)


def test_torch_compile_fullgraph():
    model = torch.nn.Sequential(rollconv.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), rollconv.nn.Conv2d(8, 4, 3, stride=2))
    assert_compiles_like_eager(model, torch.randn(2, 3, 12, 12))


# --- modules ------------------------------------------------------------------------------


@pytest.mark.parametrize("padding_mode", ["zeros", "circular", "reflect", "replicate"])
def test_conv2d_module_is_a_drop_in(padding_mode):
    torch.manual_seed(3)
    ref = torch.nn.Conv2d(4, 6, (3, 2), stride=(1, 2), padding=(1, 1), dilation=1, groups=2, padding_mode=padding_mode).double()
    ours = rollconv.nn.Conv2d(4, 6, (3, 2), stride=(1, 2), padding=(1, 1), dilation=1, groups=2, padding_mode=padding_mode).double()
    assert ours.state_dict().keys() == ref.state_dict().keys()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
    torch.testing.assert_close(ours(x), ref(x))


def test_conv2d_module_init_matches_torch():
    torch.manual_seed(5)
    ref = torch.nn.Conv2d(3, 5, 3)
    torch.manual_seed(5)
    ours = rollconv.nn.Conv2d(3, 5, 3)
    torch.testing.assert_close(ours.weight, ref.weight)
    torch.testing.assert_close(ours.bias, ref.bias)


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: RF.conv2d(randn(2, 3, 5), randn(4, 3, 3, 3)), "channels"),  # unbatched C=2 mismatch
        (lambda: RF.conv2d(randn(5, 5), randn(4, 3, 3, 3)), "3-D .* or 4-D"),
        (lambda: RF.conv2d(randn(1, 3, 5, 5), randn(4, 3, 3)), "weight to be a 4-D tensor"),
        (lambda: RF.conv2d(randn(1, 4, 5, 5), randn(4, 3, 3, 3)), "weight.shape\\[1\\] \\* groups"),
        (lambda: RF.conv2d(randn(1, 4, 5, 5), randn(4, 2, 3, 3), groups=3), "groups=3 must divide"),
        (lambda: RF.conv2d(randn(1, 4, 5, 5), randn(3, 2, 3, 3), groups=2), "groups=2 must divide the output"),
        (lambda: RF.conv2d(randn(1, 4, 5, 5), randn(4, 4, 3, 3), groups=0), "groups must be positive"),
        (lambda: RF.conv2d(randn(1, 3, 5, 5), randn(4, 3, 3, 3), stride=0), "stride must be positive"),
        (lambda: RF.conv2d(randn(1, 3, 5, 5), randn(4, 3, 3, 3), dilation=(1, -1)), "dilation must be positive"),
        (lambda: RF.conv2d(randn(1, 3, 5, 5), randn(4, 3, 3, 3), padding=-1), "padding must be non-negative"),
        (lambda: RF.conv2d(randn(1, 3, 5, 5), randn(4, 3, 7, 3)), "larger than the padded input"),
        (lambda: RF.conv2d(randn(1, 3, 5, 5), randn(4, 3, 3, 3), padding="full"), "padding must be"),
        (lambda: RF.conv2d(randn(1, 3, 5, 5), randn(4, 3, 3, 3), padding="same", stride=2), "strided"),
        (lambda: RF.conv2d(randn(1, 3, 5, 5), randn(4, 3, 3, 3, dtype=torch.float64)), "weight to have the same dtype"),
        (lambda: RF.conv2d(randn(1, 3, 5, 5), randn(4, 3, 3, 3), randn(4, dtype=torch.float64)), "bias to have the same dtype"),
        (lambda: RF.conv2d(randn(1, 3, 5, 5), randn(4, 3, 3, 3), randn(5)), "bias of shape \\(4\\)"),
        (lambda: RF.conv2d(randn(1, 3, 5, 5), randn(4, 3, 3, 3), randn(4, 1)), "bias of shape"),
        (lambda: RF.conv2d(torch.ones(1, 3, 5, 5, dtype=torch.int64), torch.ones(4, 3, 3, 3, dtype=torch.int64)), "CPU kernels support float32, float64, float16 and bfloat16"),
        (lambda: RF.conv2d(randn(1, 3, 5, 5, dtype=torch.float16), randn(4, 3, 3, 3, dtype=torch.bfloat16)), "weight to have the same dtype"),
        (lambda: RF.conv2d(randn(1, 3, 5, 5), randn(4, 3, 3, 3), stride=(1, 2, 3)), "stride must be an int or a pair"),
        (lambda: RF.conv2d(randn(1, 3, 5, 5), randn(4, 3, 3, 3), stride=1.5), "stride must be an int or a pair"),
        (lambda: ops.conv2d_backward_input(randn(1, 4, 3, 3), randn(4, 3, 3, 3), [6, 6], [1, 1], [0, 0], [1, 1], 1), "grad_output of shape"),
        (lambda: ops.conv2d_backward_weight(randn(1, 4, 3, 3), randn(1, 3, 6, 5), [3, 3], [1, 1], [0, 0], [1, 1], 1), "grad_output of shape"),
        (lambda: ops.bias_backward(randn(1, 4, 3, 3), 3), "channels=3"),
    ],
)
def test_bad_input_gets_a_clear_error(make, match):
    assert_clear_error(make, match)


def test_device_mismatch_is_reported():
    assert_clear_error(lambda: RF.conv2d(torch.randn(1, 3, 5, 5), torch.randn(4, 3, 3, 3, device="meta")), "device")
