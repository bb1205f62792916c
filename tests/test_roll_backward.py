"""roll_conv2d's combined backward op (roll_conv2d_backward): the same gradients as the
filter-bank reference and as the separate passes, for every algorithm, with and without the
fused ReLU, every output_mask; autograd uses it when several gradients are needed and keeps
double backward, forward mode and vmap; opcheck; the CPU's fused channel-FFT backward gives
the separate passes' dX and dK bitwise, deterministically."""
import itertools

import pytest
import torch

import rollconv.functional as RF
from rollconv import _ops, reference

ops = torch.ops.rollconv
F64 = torch.float64
ALGORITHMS = ["direct", "bank", "fft"]


@pytest.fixture(params=["engine", "no_engine"])
def cpu_engine(request, monkeypatch):
    """The CPU's fused engines (default), and the composed path CUDA runs (ROLLCONV_CPU_ENGINE=0)."""
    if request.param == "no_engine":
        monkeypatch.setenv("ROLLCONV_CPU_ENGINE", "0")
    return request.param


def _problem(n, c, f, hw, shift=1, dtype=F64, device="cpu", relu=True):
    """Operands of one roll_conv2d (3x3, padding 1, every roll) and the forward's output."""
    x = torch.randn(n, c, hw, hw, dtype=dtype, device=device)
    w = torch.randn(f, c, 3, 3, dtype=dtype, device=device)
    geometry = ([1, 1], [1, 1], [1, 1], c // shift, shift)
    return x, w, geometry


def _separate(g, x, w, y, geometry, algorithm):
    """The separate passes on the masked gradient, as autograd ran them before."""
    masked = g if y is None else torch.ops.aten.threshold_backward(g, y, 0)
    rolls = geometry[3]
    return (ops.roll_conv2d_backward_input(masked, w, list(x.shape[2:]), *geometry, algorithm),
            ops.roll_conv2d_backward_weight(masked, x, list(w.shape[2:]), *geometry, algorithm),
            ops.bias_backward(masked, g.shape[1] // rolls))


@pytest.mark.parametrize("algorithm", ["direct", "bank"])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_relu_mask_in_chunks_of_samples(algorithm, dtype, cpu_engine, device):
    # 256 output channels of 32x32: one sample's grad_output is 1 MiB in float32 and 2 MiB in
    # float64; 9 samples make 9 and 18 MiB, so the separate passes run on chunks of 2 samples
    # (the last of 1; csrc/common/conv_ops.cpp, kMaskedChunkBytes, kMaxMaskedChunks): dX fills
    # each chunk's rows, dK and db add the chunks up. On CUDA the passes run whole (the chunks'
    # launches cost more than the memory they save there): the same results.
    if device.type == "cuda" and cpu_engine == "no_engine":
        pytest.skip("ROLLCONV_CPU_ENGINE applies to the CPU only")
    x, w, geometry = _problem(9, 4, 64, 32, dtype=dtype, device=device)
    with torch.backends.cudnn.flags(enabled=False):  # 'bank' on cuDNN may round float32 to TF32
        y = ops.roll_conv2d_forward(x, w, None, *geometry, algorithm, True)
        g = torch.randn_like(y)
        expected = _separate(g, x, w, y, geometry, algorithm)
        got = ops.roll_conv2d_backward(g, x, w, y, *geometry, algorithm, [True, True, True])
    tol = dict(atol=1e-11, rtol=1e-11) if dtype == F64 else dict(atol=1e-3, rtol=1e-4)
    for actual, reference_grad in zip(got, expected):
        torch.testing.assert_close(actual, reference_grad, **tol)
    # and against the filter-bank reference through autograd
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    with torch.backends.cudnn.flags(enabled=False):  # cuDNN's float32 may round to TF32
        yr = reference.roll_conv2d(xr, wr, None, 1, 1, activation="relu")
        yr.backward(g)
    torch.testing.assert_close(got[0], xr.grad, **tol)
    torch.testing.assert_close(got[1], wr.grad, **tol)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("shift", [1, 2])
@pytest.mark.parametrize("relu", [True, False])
def test_matches_the_separate_passes(algorithm, shift, relu, cpu_engine, device):
    x, w, geometry = _problem(3, 6, 2, 7, shift, device=device)
    y = ops.roll_conv2d_forward(x, w, None, *geometry, algorithm, relu)
    g = torch.randn_like(y)
    expected = _separate(g, x, w, y if relu else None, geometry, algorithm)
    for mask in itertools.product([False, True], repeat=3):
        got = ops.roll_conv2d_backward(g, x, w, y if relu else None, *geometry, algorithm, list(mask))
        for wanted, actual, reference_grad in zip(mask, got, expected):
            if wanted:
                torch.testing.assert_close(actual, reference_grad, atol=1e-11, rtol=1e-11)
            else:
                assert actual is None


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("bias", [True, False])
def test_autograd_matches_the_filter_bank_reference(algorithm, bias, device):
    x, w, _ = _problem(2, 8, 3, 6, device=device)
    b = torch.randn(3, dtype=F64, device=device) if bias else None
    leaves = [t.clone().requires_grad_() for t in (x, w) + ((b,) if bias else ())]
    ref_leaves = [t.clone().requires_grad_() for t in leaves]
    y = RF.roll_conv2d(*leaves[:2], leaves[2] if bias else None, padding=1, activation="relu", algorithm=algorithm)
    y_ref = reference.roll_conv2d(*ref_leaves[:2], ref_leaves[2] if bias else None, padding=1, activation="relu")
    g = torch.randn_like(y)
    for ours, theirs in zip(torch.autograd.grad(y, leaves, g), torch.autograd.grad(y_ref, ref_leaves, g)):
        torch.testing.assert_close(ours, theirs, atol=1e-10, rtol=1e-10)


def _ops_called(fn):
    from torch.utils._python_dispatch import TorchDispatchMode

    names = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            names.append(func.name())
            return func(*args, **(kwargs or {}))

    with Record():
        fn()
    return {n.split("::")[1].split(".")[0] for n in names if n.startswith("rollconv::")}


def test_autograd_uses_it_when_several_gradients_are_needed():
    x, w = torch.randn(2, 4, 6, 6), torch.randn(2, 4, 3, 3)
    b = torch.randn(2)

    def backward(*needs):
        leaves = [t.clone().requires_grad_(need) for t, need in zip((x, w, b), needs)]
        return lambda: RF.roll_conv2d(*leaves, padding=1, activation="relu").sum().backward()

    assert "roll_conv2d_backward" in _ops_called(backward(True, True, False))
    assert "roll_conv2d_backward" in _ops_called(backward(False, True, True))
    single = _ops_called(backward(False, True, False))
    assert "roll_conv2d_backward" not in single and "roll_conv2d_backward_weight" in single


@pytest.mark.parametrize("algorithm", ["direct", "fft"])
def test_gradcheck_and_gradgradcheck_through_it(algorithm):
    """Small on purpose: gradgradcheck differentiates every pass numerically."""
    x = torch.randn(1, 3, 5, 4, dtype=F64, requires_grad=True)
    w = torch.randn(2, 3, 3, 2, dtype=F64, requires_grad=True)
    b = torch.randn(2, dtype=F64, requires_grad=True)

    def fn(x, w, b):
        return RF.roll_conv2d(x, w, b, padding=1, activation="relu", algorithm=algorithm)

    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, w, b))


def _op_samples(device, algorithm):
    mk = lambda *s: torch.randn(*s, dtype=F64, device=device, requires_grad=True)  # noqa: E731
    geo = ([2, 1], [1, 0], [1, 2])
    rolls = 3 if algorithm == "fft" else 2
    g = mk(2, 2 * rolls, 4, 4)
    y = torch.randn(2, 2 * rolls, 4, 4, dtype=F64, device=device)  # no values within eps of 0
    return [
        (g, mk(2, 3, 7, 6), mk(2, 3, 3, 2), y, *geo, rolls, 1, algorithm, [True, True, True]),
        (g, mk(2, 3, 7, 6), mk(2, 3, 3, 2), None, *geo, rolls, 1, algorithm, [True, False, True]),
        (g, mk(2, 3, 7, 6), mk(2, 3, 3, 2), y, *geo, rolls, 1, algorithm, [False, True, False]),
    ]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_opcheck(algorithm, device):
    for args in _op_samples(device, algorithm):
        torch.library.opcheck(ops.roll_conv2d_backward.default, args)


@pytest.mark.parametrize("algorithm", ["direct", "fft"])
def test_forward_mode_reverse_mode_and_batched_derivatives(algorithm):
    for args in _op_samples("cpu", algorithm)[:2]:
        fn = lambda *a: tuple(t for t in ops.roll_conv2d_backward(*a) if t is not None)  # noqa: E731
        assert torch.autograd.gradcheck(fn, args, check_forward_ad=True, check_batched_grad=True,
                                        check_batched_forward_grad=True, fast_mode=True)
        assert torch.autograd.gradgradcheck(fn, args, check_fwd_over_rev=True, check_batched_grad=True,
                                            fast_mode=True)


def test_per_sample_gradients_by_vmap():
    """vmap(grad) runs the combined op under vmap (its batching rule), against a loop."""
    x, w, b = torch.randn(4, 3, 5, 5, dtype=F64), torch.randn(2, 3, 3, 3, dtype=F64), torch.randn(2, dtype=F64)

    def loss(w, b, xi):
        return RF.roll_conv2d(xi.unsqueeze(0), w, b, padding=1, activation="relu").square().sum()

    ours = torch.func.vmap(torch.func.grad(loss, argnums=(0, 1)), in_dims=(None, None, 0))(w, b, x)
    for i in range(4):
        for batched, single in zip(ours, torch.func.grad(loss, argnums=(0, 1))(w, b, x[i])):
            torch.testing.assert_close(batched[i], single)


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_fused_fft_backward_is_the_separate_passes_bitwise(two_threads):
    """float32, several chunks of samples (the engine keeps 1 MiB of spectra), two threads."""
    x, w, geometry = _problem(5, 8, 8, 24, dtype=torch.float32)
    y = ops.roll_conv2d_forward(x, w, None, *geometry, "fft", True)
    g = torch.randn_like(y)
    expected = _separate(g, x, w, y, geometry, "fft")
    first = ops.roll_conv2d_backward(g, x, w, y, *geometry, "fft", [True, True, True])
    again = ops.roll_conv2d_backward(g, x, w, y, *geometry, "fft", [True, True, True])
    assert torch.equal(first[0], expected[0]) and torch.equal(first[1], expected[1])
    torch.testing.assert_close(first[2], expected[2], atol=1e-4, rtol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(first, again))


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("layout", ["expanded", "channels_last", "sliced", "nan_in_mask"])
def test_fused_fft_backward_reads_any_strides_in_place(layout, relu):
    """A grad_output of any strides (y.sum()'s expanded one, channels_last, a slice) gives the
    contiguous one's gradients bitwise (the engine gathers each analysis item's rows instead
    of copying the whole tensor); the ReLU mask as threshold_backward applies it (NaN keeps)."""
    x, w, geometry = _problem(3, 8, 4, 11, dtype=torch.float32)
    y = ops.roll_conv2d_forward(x, w, None, *geometry, "fft", relu)
    if layout == "expanded":
        g = torch.full((), 0.75).expand_as(y)
    elif layout == "channels_last":
        g = torch.randn_like(y).to(memory_format=torch.channels_last)
    elif layout == "sliced":
        g = torch.randn(3, y.shape[1] * 2, 11, 13)[:, ::2, :, 1:12]
    else:
        g = torch.randn_like(y).to(memory_format=torch.channels_last)
        y = y.clone()
        y[0, 3, 2, :4] = float("nan")
    assert not g.is_contiguous()
    mask = y if relu else None
    got = ops.roll_conv2d_backward(g, x, w, mask, *geometry, "fft", [True, True, True])
    expected = ops.roll_conv2d_backward(g.contiguous(), x, w, mask, *geometry, "fft", [True, True, True])
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    reference_grads = _separate(g, x, w, mask, geometry, "direct")
    for actual, ref in zip(got, reference_grads):
        torch.testing.assert_close(actual, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision(dtype):
    x, w, geometry = _problem(2, 4, 2, 6, dtype=dtype)
    y = ops.roll_conv2d_forward(x, w, None, *geometry, "fft", True)
    g = torch.randn_like(y)
    got = ops.roll_conv2d_backward(g, x, w, y, *geometry, "fft", [True, True, True])
    expected = _separate(g.double(), x.double(), w.double(), y.double(), geometry, "fft")
    for actual, ref in zip(got, expected):
        assert actual.dtype == dtype
        torch.testing.assert_close(actual.double(), ref, atol=0.1, rtol=0.05)


def test_empty_batch_and_channels_last():
    x, w, geometry = _problem(0, 4, 2, 6)
    g = torch.randn(0, 8, 6, 6, dtype=F64)
    dx, dw, db = ops.roll_conv2d_backward(g, x, w, None, *geometry, "fft", [True, True, True])
    assert dx.shape == x.shape and dw.shape == w.shape and db.shape == (2,)
    assert not dw.any() and not db.any()
    x, w, geometry = _problem(2, 4, 2, 6)
    x = x.to(memory_format=torch.channels_last)
    y = ops.roll_conv2d_forward(x, w, None, *geometry, "fft", True)
    g = torch.randn_like(y)
    got = ops.roll_conv2d_backward(g, x, w, y, *geometry, "fft", [True, True, False])
    expected = _separate(g, x, w, y, geometry, "fft")
    torch.testing.assert_close(got[0], expected[0])
    torch.testing.assert_close(got[1], expected[1])
    assert got[1].is_contiguous(memory_format=torch.channels_last)


def test_bad_input_gets_a_clear_error():
    x, w, geometry = _problem(2, 4, 2, 6)
    g = torch.randn(2, 8, 6, 6, dtype=F64)
    with pytest.raises(RuntimeError, match="expected output of the shape of grad_output"):
        ops.roll_conv2d_backward(g, x, w, g[:, :4], *geometry, "fft", [True, True, True])
    with pytest.raises(RuntimeError, match="grad_output of shape"):
        ops.roll_conv2d_backward(g[:, :6], x, w, None, *geometry, "fft", [True, True, True])
    with pytest.raises(RuntimeError, match="algorithm must be"):
        ops.roll_conv2d_backward(g, x, w, None, *geometry, "winograd", [True, True, True])


def test_listed_with_the_ops():
    assert "roll_conv2d_backward" in _ops.OP_NAMES
