"""roll_conv2d with shift > 1 (the filter moves by `shift` channels per roll), the invariant
read-out roll_pool, and equivariance / invariance of whole rolling networks, against the
filter-bank reference (rollconv.reference) in float64."""
import random

import pytest
import torch

import rollconv
import rollconv.functional as RF
from helpers import assert_clear_error, assert_compiles_like_eager, randn, random_window
from rollconv import reference

ops = torch.ops.rollconv

ALGORITHMS = ["direct", "bank", "fft"]


def _grads(fn, x, w, b, seed=7):
    """fn's output and the gradients of <output, g> for a fixed random g."""
    x, w = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    b = None if b is None else b.detach().clone().requires_grad_()
    y = fn(x, w, b)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(y)
    y.backward(g)
    return [t for t in (y, x.grad, w.grad, None if b is None else b.grad) if t is not None]


def _assert_matches_reference(x, w, b, algorithm, atol=1e-10, **kw):
    relu = kw.pop("relu", False)
    activation = "relu" if relu else None
    ours = _grads(lambda x, w, b: RF.roll_conv2d(x, w, b, activation=activation, algorithm=algorithm, **kw), x, w, b)
    ref = _grads(lambda x, w, b: reference.roll_conv2d(x, w, b, activation=activation, **kw), x, w, b)
    for got, want in zip(ours, ref):
        torch.testing.assert_close(got, want, atol=atol, rtol=atol)


@pytest.fixture(params=["engine", "no_engine"])
def cpu_engine(request):
    """The CPU's fused engines (default), and the composed path CUDA runs (ROLLCONV_CPU_ENGINE=0)."""
    with rollconv.backends.flags(cpu_engine=request.param == "engine"):
        yield request.param


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("seed", range(16))
def test_random_shifts_match_the_reference(seed, algorithm, cpu_engine, device):
    if device.type != "cpu" and cpu_engine == "no_engine":
        pytest.skip("ROLLCONV_CPU_ENGINE concerns the CPU only")
    rng = random.Random(1000 + seed)
    shift = rng.choice([1, 2, 3, 4, 8])
    blocks = rng.choice([1, 2, 3, 4, 5, 6, 12])
    c, f = shift * blocks, rng.randint(1, 4)
    rolls = blocks if algorithm == "fft" else rng.choice([None, rng.randint(1, blocks)])
    (kh, kw), stride, dilation, padding, (h, wd) = random_window(rng, 6)
    x = torch.randn(rng.randint(1, 3), c, h, wd, dtype=torch.float64, device=device)
    w = torch.randn(f, c, kh, kw, dtype=torch.float64, device=device)
    b = torch.randn(f, dtype=torch.float64, device=device) if rng.random() < 0.6 else None
    _assert_matches_reference(x, w, b, algorithm, stride=stride, padding=padding, dilation=dilation, rolls=rolls,
                              shift=shift, relu=rng.random() < 0.5)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_hidden_layer_shape_and_chunks(algorithm, small_workspace, cpu_engine):
    """A hidden layer of an RGB network (C = 3 * 8, shift = 8) over several workspace chunks,
    at stride 1 with padding (the engine reads the image in place; dX runs as a forward)."""
    x = torch.randn(40, 24, 12, 12, dtype=torch.float64)
    w = torch.randn(8, 24, 3, 3, dtype=torch.float64)
    _assert_matches_reference(x, w, torch.randn(8, dtype=torch.float64), algorithm, padding=1, shift=8, relu=True)


@pytest.mark.parametrize("rolls", [None, 13])
def test_direct_roll_bands(rolls, cpu_engine):
    """Many blocks of few channels: 'direct' runs several rolls per GEMM (a band of copies of
    w, each `shift` channels further), the last band cut short when rolls=13."""
    x = torch.randn(2, 64, 7, 6, dtype=torch.float64)
    w = torch.randn(2, 64, 3, 3, dtype=torch.float64)
    for kw in (dict(padding=1), dict(stride=2, dilation=(1, 2))):
        _assert_matches_reference(x, w, torch.randn(2, dtype=torch.float64), "direct", shift=2, rolls=rolls, **kw)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_float32(algorithm):
    x = torch.randn(4, 12, 10, 9)
    w = torch.randn(5, 12, 3, 3)
    b = torch.randn(5)
    ours = _grads(lambda x, w, b: RF.roll_conv2d(x, w, b, padding=1, shift=3, algorithm=algorithm), x, w, b)
    ref = _grads(lambda x, w, b: reference.roll_conv2d(x.double(), w.double(), b.double(), padding=1, shift=3), x, w, b)
    for got, want in zip(ours, ref):
        assert got.dtype == torch.float32
        assert ((got.double() - want).abs().max() / want.abs().max()).item() < 1e-5


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("relu", [False, True])
def test_layer_equivariance(algorithm, relu):
    """Rolling x's channels by `shift` rolls the output's blocks of F channels by one."""
    n, shift, blocks, f = 2, 3, 4, 2
    x = torch.randn(n, shift * blocks, 7, 8, dtype=torch.float64)
    w = torch.randn(f, shift * blocks, 3, 3, dtype=torch.float64)
    b = torch.randn(f, dtype=torch.float64)
    kw = dict(padding=1, shift=shift, activation="relu" if relu else None, algorithm=algorithm)
    y = RF.roll_conv2d(x, w, b, **kw).view(n, blocks, f, 7, 8)
    y_rolled_input = RF.roll_conv2d(torch.roll(x, shift, dims=1), w, b, **kw).view(n, blocks, f, 7, 8)
    torch.testing.assert_close(y_rolled_input, torch.roll(y, 1, dims=1), rtol=1e-12, atol=1e-12)


def _invariant_network(algorithm, f1=4, f2=3, f3=5):
    """Lifting layer on RGB (shift 1), two hidden layers (shift = F of the layer below),
    spatial max pooling, then the max over the rolls."""
    return torch.nn.Sequential(
        rollconv.nn.RollConv2d(3, f1, 3, padding=1, activation="relu", algorithm=algorithm),
        rollconv.nn.RollConv2d(3 * f1, f2, 3, padding=1, shift=f1, activation="relu", algorithm=algorithm),
        rollconv.nn.MaxPool2d(2),
        rollconv.nn.RollConv2d(3 * f2, f3, 3, shift=f2, algorithm=algorithm),
        torch.nn.AdaptiveMaxPool2d(1),
        rollconv.nn.RollPool(3),
        torch.nn.Flatten(),
    ).double()


@pytest.mark.parametrize("algorithm", ["auto"] + ALGORITHMS)
def test_network_invariance(algorithm):
    net = _invariant_network(algorithm)
    x = torch.randn(3, 3, 10, 10, dtype=torch.float64)
    y = net(x)
    assert y.shape == (3, 5)
    for k in (1, 2):
        torch.testing.assert_close(net(torch.roll(x, k, dims=1)), y, rtol=1e-12, atol=1e-12)
    # Without the read-out the channels do move: the test above is not vacuous.
    features = net[:-2](x)
    assert not torch.allclose(net[:-2](torch.roll(x, 1, dims=1)), features)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_gradcheck_and_gradgradcheck(algorithm):
    """Small on purpose: gradgradcheck differentiates every pass numerically."""
    x = torch.randn(1, 4, 5, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 4, 3, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    fn = lambda x, w, b: RF.roll_conv2d(x, w, b, (2, 1), (1, 0), (1, 2), 2, "relu", algorithm, 2)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, w, b))
    if algorithm != "fft":  # fewer rolls than C / shift
        fn = lambda x, w, b: RF.roll_conv2d(x, w, b, 1, 1, 1, 1, None, algorithm, 2)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x, w, b))


def _samples(algorithm):
    mk = lambda *s: torch.randn(*s, dtype=torch.float64, requires_grad=True)  # noqa: E731
    geo = ([2, 1], [1, 0], [1, 2])
    some = 3 if algorithm == "fft" else 2  # rolls: fewer than C / shift where the algorithm allows
    return {
        "roll_conv2d_forward": [
            (mk(2, 6, 7, 6), mk(2, 6, 3, 2), mk(2), *geo, 3, 2, algorithm, False),
            (mk(2, 6, 7, 6), mk(2, 6, 3, 2), None, *geo, some, 2, algorithm, True),
        ],
        "roll_conv2d_backward_input": [(mk(2, 4, 4, 4), mk(2, 6, 3, 2), [7, 6], *geo, 2, 3, algorithm)],
        "roll_conv2d_backward_weight": [(mk(2, 2 * some, 4, 4), mk(2, 6, 7, 6), [3, 2], *geo, some, 2, algorithm)],
    }


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("name", ["roll_conv2d_forward", "roll_conv2d_backward_input", "roll_conv2d_backward_weight"])
def test_opcheck(name, algorithm):
    for args in _samples(algorithm)[name]:
        torch.library.opcheck(getattr(ops, name).default, args)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_torch_compile(algorithm):
    model = _invariant_network(algorithm).float()
    assert_compiles_like_eager(model, torch.randn(2, 3, 8, 8), torch.randn(3, 3, 8, 8))


# --- RollConv2d, the reference, roll_pool -----------------------------------------------------


def test_module_shift_and_to_conv2d():
    m = rollconv.nn.RollConv2d(12, 3, 3, padding=1, shift=4, activation="relu").double()
    assert m.rolls == 3 and m.out_channels == 9 and "shift=4" in repr(m)
    assert rollconv.nn.RollConv2d(12, 3, 3, shift=4, rolls=2).out_channels == 6
    x = torch.randn(2, 12, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(m.to_conv2d()(x), m(x))
    torch.testing.assert_close(m.filter_bank(), reference.filter_bank(m.weight, 3, 4))
    assert list(m.state_dict()) == ["weight", "bias"]


def test_filter_bank_formula():
    """bank[r*F + f, c] = w[f, (c - r*shift) mod C], element by element."""
    f, c, shift, rolls = 2, 6, 2, 3
    w = torch.randn(f, c, 2, 2)
    bank = reference.filter_bank(w, rolls, shift)
    assert bank.shape == (rolls * f, c, 2, 2)
    for r in range(rolls):
        for ff in range(f):
            for cc in range(c):
                assert torch.equal(bank[r * f + ff, cc], w[ff, (cc - r * shift) % c])
    assert reference.filter_bank(w, shift=3).shape[0] == 2 * f  # rolls defaults to C // shift


@pytest.mark.parametrize("mode", ["max", "mean"])
def test_roll_pool(mode):
    x = torch.randn(2, 3 * 4, 5, 5, dtype=torch.float64, requires_grad=True)
    y = RF.roll_pool(x, 3, mode)
    blocks = [x[:, r * 4 : (r + 1) * 4] for r in range(3)]
    want = torch.maximum(torch.maximum(blocks[0], blocks[1]), blocks[2]) if mode == "max" else sum(blocks) / 3
    torch.testing.assert_close(y, want)
    torch.testing.assert_close(rollconv.nn.RollPool(3, mode)(x), y)
    torch.testing.assert_close(RF.roll_pool(torch.roll(x, 4, dims=1), 3, mode), y)
    assert torch.autograd.gradcheck(lambda t: RF.roll_pool(t, 3, mode), (x,))
    assert RF.roll_pool(torch.randn(2, 6), 2, mode).shape == (2, 3)
    assert "rolls=3" in repr(rollconv.nn.RollPool(3, mode))


def test_auto_rule_shifted():
    def pick(c, f, shift, rolls=None, dtype=torch.float32, device="cpu"):
        return RF.choose_roll_algorithm(torch.empty(8, c, 16, 16, dtype=dtype, device=device),
                                        torch.empty(f, c, 3, 3, dtype=dtype, device=device),
                                        c // shift if rolls is None else rolls, [1, 1], [1, 1], shift=shift)

    # CPU: hidden layers of RGB networks (3 rolls) direct; many blocks fft; between, bank.
    assert pick(24, 8, 8) == pick(96, 32, 32) == pick(6, 2, 2) == "direct"
    assert pick(6 * 4, 4, 4) == "direct" and pick(7 * 4, 4, 4) == "bank"
    assert pick(64, 8, 8) == pick(96, 4, 4) == "bank"
    assert pick(64, 2, 2) == pick(128, 4, 4) == "fft"
    assert pick(128, 4, 4, rolls=31) == "bank"  # fft needs every roll
    # CPU float16/bfloat16 compute in float32: the float32 rule.
    assert pick(24, 8, 8, dtype=torch.float16) == "direct" and pick(128, 4, 4, dtype=torch.float16) == "fft"
    assert pick(24, 8, 8, dtype=torch.float16, device="meta") == "bank"
    # Off the CPU (meta stands in for CUDA): fft from FFT_MIN_CHANNELS blocks on, else bank.
    assert pick(2 * RF.FFT_MIN_CHANNELS, 2, 2, device="meta") == "fft"
    assert pick(24, 8, 8, device="meta") == pick(2 * RF.FFT_MIN_CHANNELS - 2, 2, 2, device="meta") == "bank"


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: RF.roll_conv2d(randn(1, 6, 5, 5), randn(2, 6, 3, 3), shift=4), "shift must be a positive divisor of the input channels \\(6\\)"),
        (lambda: RF.roll_conv2d(randn(1, 6, 5, 5), randn(2, 6, 3, 3), shift=0), "shift must be a positive int"),
        (lambda: RF.roll_conv2d(randn(1, 6, 5, 5), randn(2, 6, 3, 3), shift=2.0), "shift must be a positive int"),
        (lambda: RF.roll_conv2d(randn(1, 6, 5, 5), randn(2, 6, 3, 3), shift=2, rolls=4), "rolls must be in \\[1, 3\\]"),
        (lambda: RF.roll_conv2d(randn(1, 6, 5, 5), randn(2, 6, 3, 3), shift=2, rolls=2, algorithm="fft"), "'fft' needs rolls == C / shift \\(6 / 2 = 3"),
        (lambda: ops.roll_conv2d_backward_input(randn(1, 4, 3, 3), randn(2, 6, 3, 3), [5, 5], [1, 1], [0, 0], [1, 1], 2, 4, "direct"), "shift must be a positive divisor"),
        (lambda: ops.roll_conv2d_backward_weight(randn(1, 8, 3, 3), randn(1, 6, 5, 5), [3, 3], [1, 1], [0, 0], [1, 1], 4, 2, "bank"), "rolls must be in \\[1, 3\\]"),
        (lambda: rollconv.nn.RollConv2d(6, 2, 3, shift=4), "shift must be a positive divisor of in_channels=6"),
        (lambda: rollconv.nn.RollConv2d(6, 2, 3, shift=2, rolls=4), "rolls must be in \\[1, in_channels // shift = 3\\]"),
        (lambda: reference.filter_bank(randn(2, 6, 3, 3), shift=4), "shift must be a positive divisor"),
        (lambda: RF.roll_pool(randn(2, 7, 3, 3), 3), "rolls=3 dividing dim 1"),
        (lambda: RF.roll_pool(randn(2, 6, 3, 3), 3, "sum"), "mode must be 'max' or 'mean'"),
        (lambda: RF.roll_pool(randn(2, 6, 3, 3), 0), "rolls must be a positive int"),
        (lambda: rollconv.nn.RollPool(2, "min"), "mode must be 'max' or 'mean'"),
    ],
)
def test_bad_input_gets_a_clear_error(make, match):
    assert_clear_error(make, match)
