"""The rolling-filter convolution: the golden values of the notebook the project grew from,
the filter-bank method (rollconv.reference) as the reference, equivariance, gradcheck, opcheck, torch.compile, RollConv2d and bad input."""
import random

import pytest
import torch
import torch.nn.functional as F

import rollconv
import rollconv.functional as RF
from helpers import assert_clear_error, assert_compiles_like_eager, randn, random_window
from rollconv import reference
from rollconv.reference import filter_bank

ops = torch.ops.rollconv


SEED_X = [[[1, 2, 3], [4, 5, 6], [7, 8, 9]], [[9, -8, 7], [9, 8, 7], [3, -2, -1]]]
SEED_W = [[[1, -1], [-1, 1]], [[1, 2], [-1, -2]]]
SEED_OUT1 = [[[0.0, 0.0], [26.0, 26.0]], [[7.0, 0.0], [0.0, 0.0]]]
SEED_W_GRAD = [[[-11.8125, -1.9688], [-15.7500, -16.4062]], [[-11.8125, -11.1562], [-3.2812, -1.3125]]]
SEED_X_GRAD = [
    [[-0.6562, -1.3125, 0.0000], [0.0000, 1.3125, 0.6562], [0.6562, 0.0000, -0.6562]],
    [[-0.6562, 0.6562, 0.0000], [0.0000, -2.6250, -1.3125], [0.6562, 1.9688, 1.3125]],
]


ALGORITHMS = ["direct", "bank", "fft"]  # fft: rolls == C only


@pytest.mark.parametrize("call", ["roll", "direct", "bank", "fft"])
def test_golden_values_of_the_rolling_filter_notebook(call):
    """The toy example of the notebook the project grew from ('Rolling Convolution Filters:
    Back Propagation Using PyTorch', source 000): its printed out1, w.grad and x.grad."""
    x = torch.tensor(SEED_X, dtype=torch.float32).unsqueeze(0).requires_grad_()
    w = torch.nn.Parameter(torch.tensor(SEED_W, dtype=torch.float32).unsqueeze(0))
    out1 = RF.roll(x, w) if call == "roll" else RF.roll_conv2d(x, w, activation="relu", algorithm=call)
    assert out1.shape == (1, 2, 2, 2)
    assert out1[0].tolist() == SEED_OUT1
    out2 = out1.mean()
    assert out2.item() == 7.375
    ((10 - out2) ** 2).backward()
    torch.testing.assert_close(w.grad[0], torch.tensor(SEED_W_GRAD), atol=1e-4, rtol=0)
    torch.testing.assert_close(x.grad[0], torch.tensor(SEED_X_GRAD), atol=1e-4, rtol=0)


def _compare_with_seed(x, w, b, atol=1e-10, algorithm="auto", **kw):
    relu = kw.pop("relu", False)
    outs = []
    for fn in ("seed", "ours"):
        xs, ws = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
        bs = None if b is None else b.detach().clone().requires_grad_()
        if fn == "seed":
            y = reference.roll_conv2d(xs, ws, bs, activation="relu" if relu else None, **kw)
        else:
            y = RF.roll_conv2d(xs, ws, bs, activation="relu" if relu else None, algorithm=algorithm, **kw)
        y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(7), dtype=y.dtype).to(y.device))
        outs.append((y, xs.grad, ws.grad, None if bs is None else bs.grad))
    for r, o in zip(*outs):
        if r is not None:
            torch.testing.assert_close(o, r, atol=atol, rtol=atol)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("seed", range(60))
def test_random_configs_match_the_filter_bank_method(seed, algorithm, device):
    rng = random.Random(seed)
    c = rng.choice([1, 2, 3, 4, 5, 8, 13, 16, 33, 64])
    f = rng.randint(1, 4)
    rolls = rng.choice([None, rng.randint(1, c)])
    if algorithm == "fft":
        rolls = None
    (kh, kw), stride, dilation, padding, (h, wd) = random_window(rng, 8)
    x = torch.randn(rng.randint(1, 3), c, h, wd, dtype=torch.float64, device=device)
    w = torch.randn(f, c, kh, kw, dtype=torch.float64, device=device)
    b = torch.randn(f, dtype=torch.float64, device=device) if rng.random() < 0.6 else None
    _compare_with_seed(x, w, b, stride=stride, padding=padding, dilation=dilation, rolls=rolls,
                       relu=rng.random() < 0.5, algorithm=algorithm)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("c, f", [(64, 2), (96, 1)])
def test_many_channels(c, f, algorithm):
    x = torch.randn(2, c, 6, 7, dtype=torch.float64)
    w = torch.randn(f, c, 3, 3, dtype=torch.float64)
    if algorithm != "fft":
        _compare_with_seed(x, w, torch.randn(f, dtype=torch.float64), padding=1, rolls=c - 1, algorithm=algorithm)
    _compare_with_seed(x, w, torch.randn(f, dtype=torch.float64), padding=1, algorithm=algorithm)


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_string_padding(padding):
    x = torch.randn(2, 3, 8, 9, dtype=torch.float64)
    w = torch.randn(2, 3, 2, 3, dtype=torch.float64)
    y = RF.roll_conv2d(x, w, padding=padding)
    torch.testing.assert_close(y, F.conv2d(x, filter_bank(w), padding=padding))


def test_auto_rule():
    def pick(c, f=1, rolls=None, dtype=torch.float32, device="cpu"):
        return RF.choose_roll_algorithm(torch.empty(1, c, 4, 4, dtype=dtype, device=device),
                                        torch.empty(f, c, 3, 3, dtype=dtype, device=device),
                                        c if rolls is None else rolls, [1, 1], [1, 1])

    # CPU, every roll: the fused fft, but direct for the fewest channels (whatever F).
    assert pick(16, f=16) == pick(256) == pick(64, dtype=torch.float64) == "fft"
    assert pick(RF.DIRECT_MAX_CHANNELS + 1) == pick(3, f=8) == pick(4, f=256) == pick(8, f=4) == "fft"
    assert pick(RF.DIRECT_MAX_CHANNELS, f=64) == pick(1) == pick(2, f=8) == "direct"
    # Fewer rolls: no fft.
    assert pick(256, rolls=255) == "bank" and pick(4, f=64, rolls=3) == "direct"
    # float16/bfloat16 on CPU run the float32 engines: the same rule.
    assert pick(256, dtype=torch.float16) == pick(256, dtype=torch.bfloat16) == "fft"
    assert pick(2, f=64, dtype=torch.bfloat16) == "direct" and pick(5, dtype=torch.bfloat16) == "fft"
    # Off the CPU (meta stands in for CUDA): fft from FFT_MIN_CHANNELS on, else bank.
    assert pick(RF.FFT_MIN_CHANNELS, device="meta") == "fft"
    assert pick(RF.FFT_MIN_CHANNELS - 1, device="meta") == pick(4, f=64, device="meta") == "bank"
    assert pick(RF.FFT_MIN_CHANNELS, dtype=torch.float16, device="meta") == "bank"


@pytest.mark.parametrize("c, f", [(1, 3), (7, 2), (16, 4), (64, 1)])
def test_fft_float32_within_1e4_of_direct(c, f):
    x = torch.randn(4, c, 12, 11, requires_grad=True)
    w = torch.randn(f, c, 3, 3, requires_grad=True)
    b = torch.randn(f, requires_grad=True)
    results = []
    for algorithm in ("direct", "fft"):
        y = RF.roll_conv2d(x, w, b, padding=1, algorithm=algorithm)
        results.append((y,) + torch.autograd.grad(y, (x, w, b), torch.ones_like(y)))
    for d, f_ in zip(*results):
        assert ((f_ - d).abs().max() / d.abs().max()).item() < 1e-4


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_unbatched_and_float32(small_workspace, algorithm):
    x = torch.randn(5, 10, 10)
    w = torch.randn(3, 5, 3, 3)
    torch.testing.assert_close(RF.roll_conv2d(x, w, padding=1, algorithm=algorithm), F.conv2d(x, filter_bank(w), padding=1), rtol=1e-4, atol=1e-4)
    xb = torch.randn(48, 16, 20, 20)  # several chunks with a 1 MiB workspace
    wb = torch.randn(4, 16, 3, 3)
    torch.testing.assert_close(RF.roll_conv2d(xb, wb, padding=1, algorithm=algorithm), F.conv2d(xb, filter_bank(wb), padding=1), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_channels_last_and_non_contiguous(algorithm):
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64)
    w = torch.randn(3, 4, 3, 3, dtype=torch.float64)
    ref = F.conv2d(x, filter_bank(w))
    torch.testing.assert_close(RF.roll_conv2d(x.to(memory_format=torch.channels_last), w, algorithm=algorithm), ref)
    torch.testing.assert_close(RF.roll_conv2d(x, w.transpose(2, 3).contiguous().transpose(2, 3), algorithm=algorithm), ref)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_empty_batch(algorithm):
    x = torch.randn(0, 4, 7, 7, requires_grad=True)
    w = torch.randn(3, 4, 3, 3, requires_grad=True)
    y = RF.roll_conv2d(x, w, algorithm=algorithm)
    assert y.shape == (0, 12, 5, 5)
    y.sum().backward()
    assert torch.equal(w.grad, torch.zeros_like(w))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("relu", [False, True])
def test_equivariance_to_channel_rolls(relu, algorithm):
    n, c, f = 2, 6, 3
    x = torch.randn(n, c, 9, 9, dtype=torch.float64)
    w = torch.randn(f, c, 3, 3, dtype=torch.float64)
    b = torch.randn(f, dtype=torch.float64)
    kw = dict(padding=1, activation="relu" if relu else None, algorithm=algorithm)
    y = RF.roll_conv2d(x, w, b, **kw).view(n, c, f, 9, 9)
    y_rolled_input = RF.roll_conv2d(torch.roll(x, 1, dims=1), w, b, **kw).view(n, c, f, 9, 9)
    torch.testing.assert_close(y_rolled_input, torch.roll(y, 1, dims=1))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_gradcheck_and_gradgradcheck(algorithm):
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 3, 3, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    for rolls in (3,) if algorithm == "fft" else (3, 2):
        fn = lambda x, w, b: RF.roll_conv2d(x, w, b, (2, 1), (1, 0), (1, 2), rolls, algorithm=algorithm)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x, w, b))
        assert torch.autograd.gradgradcheck(fn, (x, w, b))
    # with the fused ReLU
    fn = lambda x, w, b: RF.roll_conv2d(x, w, b, activation="relu", algorithm=algorithm)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, w, b))


def _samples(device, algorithm):
    mk = lambda *s: torch.randn(*s, dtype=torch.float64, device=device, requires_grad=True)  # noqa: E731
    geo = ([2, 1], [1, 0], [1, 2])
    some = 3 if algorithm == "fft" else 2  # fewer rolls than channels, where the algorithm allows
    return {
        "roll_conv2d_forward": [
            (mk(2, 3, 7, 6), mk(2, 3, 3, 2), mk(2), *geo, 3, 1, algorithm, False),
            (mk(2, 3, 7, 6), mk(2, 3, 3, 2), None, *geo, some, 1, algorithm, True),
        ],
        "roll_conv2d_backward_input": [(mk(2, 6, 4, 4), mk(2, 3, 3, 2), [7, 6], *geo, 3, 1, algorithm)],
        "roll_conv2d_backward_weight": [(mk(2, 2 * some, 4, 4), mk(2, 3, 7, 6), [3, 2], *geo, some, 1, algorithm)],
    }


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("name", ["roll_conv2d_forward", "roll_conv2d_backward_input", "roll_conv2d_backward_weight"])
def test_opcheck(name, algorithm, device):
    for args in _samples(device, algorithm)[name]:
        torch.library.opcheck(getattr(ops, name).default, args)


def test_torch_compile_fullgraph():
    model = torch.nn.Sequential(rollconv.nn.RollConv2d(3, 4, 3, padding=1, activation="relu"), rollconv.nn.RollConv2d(12, 2, 3, rolls=5))
    assert_compiles_like_eager(model, torch.randn(2, 3, 10, 10))


# --- RollConv2d -----------------------------------------------------------------------------


@pytest.mark.parametrize("activation", [None, "relu"])
def test_module_and_to_conv2d(activation):
    m = rollconv.nn.RollConv2d(4, 3, (3, 2), stride=(1, 2), padding=1, rolls=3, activation=activation).double()
    assert m.out_channels == 9 and m.weight.shape == (3, 4, 3, 2) and m.bias.shape == (3,)
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    plain = m.to_conv2d()
    conv = plain[0] if activation else plain
    assert isinstance(conv, torch.nn.Conv2d) and conv.out_channels == 9
    torch.testing.assert_close(plain(x), m(x))
    torch.testing.assert_close(m(x), reference.roll_conv2d(x, m.weight, m.bias, (1, 2), 1, rolls=3, activation=activation))


def test_module_state_dict_same_in_train_and_eval():
    m = rollconv.nn.RollConv2d(3, 2, 3)
    keys = list(m.state_dict())
    m.eval()
    assert list(m.state_dict()) == keys == ["weight", "bias"]
    assert rollconv.nn.RollConv2d(3, 2, 3, bias=False).bias is None
    assert "rolls=3" in repr(m)


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: RF.roll_conv2d(randn(1, 3, 5, 5), randn(2, 4, 3, 3)), "weight.shape\\[1\\] \\(4\\) to equal the input channels \\(3\\)"),
        (lambda: RF.roll_conv2d(randn(1, 3, 5, 5), randn(2, 3, 3, 3), rolls=4), "rolls must be in \\[1, 3\\]"),
        (lambda: RF.roll_conv2d(randn(1, 3, 5, 5), randn(2, 3, 3, 3), rolls=0), "rolls must be in"),
        (lambda: RF.roll_conv2d(randn(1, 3, 5, 5), randn(2, 3, 3, 3), rolls=2.0), "rolls must be an int"),
        (lambda: RF.roll_conv2d(randn(1, 3, 5, 5), randn(2, 3, 3, 3), randn(6)), "bias of shape \\(2\\)"),
        (lambda: RF.roll_conv2d(randn(1, 3, 5, 5), randn(2, 3, 3, 3), activation="tanh"), "activation must be"),
        (lambda: RF.roll_conv2d(randn(1, 3, 5, 5), randn(2, 3, 3, 3), algorithm="fast"), "algorithm must be one of"),
        (lambda: ops.roll_conv2d_forward(randn(1, 3, 5, 5), randn(2, 3, 3, 3), None, [1, 1], [0, 0], [1, 1], 3, 1, "fast", False), "algorithm must be 'direct', 'bank' or 'fft'"),
        (lambda: RF.roll_conv2d(randn(1, 3, 5, 5), randn(2, 3, 3, 3), rolls=2, algorithm="fft"), "'fft' needs rolls == C / shift \\(3"),
        (lambda: rollconv.nn.RollConv2d(3, 2, 3, algorithm="fast"), "algorithm must be one of"),
        (lambda: RF.roll_conv2d(randn(1, 3, 5, 5), randn(2, 3, 3)), "4-D tensor"),
        (lambda: RF.roll_conv2d(randn(3, 5), randn(2, 3, 3, 3)), "3-D .* or 4-D"),
        (lambda: RF.roll_conv2d(randn(1, 3, 5, 5), randn(2, 3, 3, 3), stride=0), "stride must be positive"),
        (lambda: RF.roll_conv2d(randn(1, 3, 5, 5), randn(2, 3, 3, 3), padding=-2), "padding must be non-negative"),
        (lambda: RF.roll_conv2d(randn(1, 3, 2, 5), randn(2, 3, 3, 3)), "larger than the padded input"),
        (lambda: RF.roll_conv2d(randn(1, 3, 5, 5), randn(2, 3, 3, 3, dtype=torch.float64)), "same dtype"),
        (lambda: RF.roll_conv2d(torch.ones(1, 3, 5, 5, dtype=torch.int32), torch.ones(2, 3, 3, 3, dtype=torch.int32)), "float32, float64, float16 and bfloat16"),
        (lambda: RF.roll_conv2d(randn(1, 3, 5, 5), randn(2, 3, 3, 3, device="meta")), "device"),
        (lambda: ops.roll_conv2d_backward_weight(randn(1, 5, 3, 3), randn(1, 3, 5, 5), [3, 3], [1, 1], [0, 0], [1, 1], 2, 1, "direct"), "rolls=2"),
        (lambda: ops.roll_conv2d_backward_input(randn(1, 6, 4, 4), randn(2, 3, 3, 3), [5, 5], [1, 1], [0, 0], [1, 1], 3, 1, "bank"), "grad_output of shape"),
        (lambda: rollconv.nn.RollConv2d(3, 2, 3, rolls=4), "rolls must be in"),
    ],
)
def test_bad_input_gets_a_clear_error(make, match):
    assert_clear_error(make, match)


def test_torch_compile_inductor_with_every_layer():
    """The default backend (inductor) around all rollconv layers, and a second batch size
    (which makes torch.compile retrace with symbolic shapes through the fake kernels)."""
    model = torch.nn.Sequential(
        rollconv.nn.RollConv2d(3, 4, 3, padding=1, activation="relu"),
        rollconv.nn.MaxPool2d(2),
        rollconv.nn.LocalResponseNorm(3),
        rollconv.nn.Conv2d(12, 5, 3),
        rollconv.nn.ConvTranspose2d(5, 2, 2, stride=2),
    )
    assert_compiles_like_eager(model, torch.randn(2, 3, 12, 12), torch.randn(5, 3, 12, 12), backend="inductor")


def test_torch_export_keeps_the_ops():
    model = torch.nn.Sequential(
        rollconv.nn.RollConv2d(3, 4, 3, padding=1, activation="relu"),
        rollconv.nn.MaxPool2d(2),
        rollconv.nn.Conv2d(12, 5, 3),
        rollconv.nn.LocalResponseNorm(3),
    )
    x = torch.randn(2, 3, 12, 12)
    exported = torch.export.export(model, (x,))
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert {"rollconv.roll_conv2d_forward.default", "rollconv.conv2d_forward.default"} <= targets
    torch.testing.assert_close(exported.module()(x), model(x))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_batch_in_chunks_with_a_short_last_one(device, dtype):
    """Without a fused engine (the CUDA path) the batch goes through the column-matrix
    workspace (16 MiB here, the CPU's default) in chunks of samples: 13 samples of this size
    make chunks of 12 + 1 in float32 and 6 + 6 + 1 in float64. Forward and every gradient,
    of roll_conv2d, conv2d and conv_transpose2d, against torch's convolution on the filter
    bank."""
    with rollconv.backends.flags(workspace_mb=16):
        _batch_in_chunks_with_a_short_last_one(device, dtype)


def _batch_in_chunks_with_a_short_last_one(device, dtype):
    torch.manual_seed(0)
    x = torch.randn(13, 4, 32, 32, device=device, dtype=dtype, requires_grad=True)
    w = torch.randn(64, 4, 3, 3, device=device, dtype=dtype, requires_grad=True)
    b = torch.randn(64, device=device, dtype=dtype, requires_grad=True)
    bank = torch.randn(256, 4, 3, 3, device=device, dtype=dtype, requires_grad=True)
    cases = {
        "roll_conv2d": (lambda: RF.roll_conv2d(x, w, b, padding=1, activation="relu", algorithm="direct"),
                        lambda: reference.roll_conv2d(x, w, b, padding=1, activation="relu"), (x, w, b)),
        "conv2d": (lambda: RF.conv2d(x, bank, padding=1), lambda: F.conv2d(x, bank, padding=1), (x, bank)),
        "conv_transpose2d": (lambda: RF.conv_transpose2d(x, w.transpose(0, 1), padding=1),
                             lambda: F.conv_transpose2d(x, w.transpose(0, 1), padding=1), (x, w)),
    }
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    for name, (ours, theirs, params) in cases.items():
        with torch.backends.cudnn.flags(enabled=False):  # cuDNN's float32 may round to TF32
            r = theirs()
        y = ours()
        y_, r_ = y.detach(), r.detach()
        assert float((y_ - r_).abs().max()) <= tol * float(r_.abs().max()), name
        probe = torch.randn_like(r)
        with torch.backends.cudnn.flags(enabled=False):
            grads_ref = torch.autograd.grad(r, params, probe)
        for g, g_ref in zip(torch.autograd.grad(y, params, probe), grads_ref):
            assert float((g - g_ref).abs().max()) <= tol * float(g_ref.abs().max()), name
