"""Mixed precision: float16/bfloat16 tensors on every device, and torch.autocast.

- Every op takes float16 and bfloat16 (on CPU computed in float32, rounded once) and
  matches float64 on the same rounded operands to within the dtype's rounding, gradients
  and double backward included.
- Under torch.autocast the convolutions cast input, weight and bias to the autocast dtype
  (torch.nn.functional.conv2d's policy), pooling and LRN run in the dtype they get; the
  fake kernels agree with the real ones (opcheck, FakeTensorMode, torch.compile).
- A network mixing torch.nn layers and every rollconv module trains under autocast (with
  GradScaler for float16) as the float32 network does, and a .bfloat16() / .half() model
  works.
CUDA variants run when a GPU is visible (the `device` fixture, conftest.DEVICES).
"""
import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

import rollconv
import rollconv.functional as RF
from rollconv import _ops, reference

ops = torch.ops.rollconv

REDUCED = [torch.float16, torch.bfloat16]
# Relative error (in norm) allowed against float64 on the same rounded operands: a few units
# of the dtype's rounding (float32 arithmetic inside, one rounding of the result).
OP_TOL = {torch.float16: 4e-3, torch.bfloat16: 3e-2}


def rel_error(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


# name: (function of (x, *params), input shape, parameter shapes)
OP_CASES = {
    "conv2d": (lambda x, w, b: RF.conv2d(x, w, b, 1, 1), (2, 4, 9, 8), [(6, 4, 3, 3), (6,)]),
    "conv2d_strided_groups": (lambda x, w, b: RF.conv2d(x, w, b, (2, 1), 1, (1, 2), 2), (2, 4, 9, 8), [(6, 2, 3, 3), (6,)]),
    "roll_conv2d_direct": (
        lambda x, w, b: RF.roll_conv2d(x, w, b, padding=1, activation="relu", algorithm="direct"), (2, 6, 9, 8), [(3, 6, 3, 3), (3,)]),
    "roll_conv2d_bank": (
        lambda x, w, b: RF.roll_conv2d(x, w, b, 2, 1, rolls=4, algorithm="bank"), (2, 6, 9, 8), [(3, 6, 3, 3), (3,)]),
    "roll_conv2d_fft": (
        lambda x, w, b: RF.roll_conv2d(x, w, b, padding=1, activation="relu", algorithm="fft"), (2, 6, 9, 8), [(3, 6, 3, 3), (3,)]),
    "conv_transpose2d": (lambda x, w, b: RF.conv_transpose2d(x, w, b, 2, 1, 1), (2, 4, 5, 6), [(4, 3, 3, 3), (3,)]),
    "max_pool2d": (lambda x: RF.max_pool2d(x, 3, 2, 1, ceil_mode=True), (2, 3, 9, 8), []),
    "local_response_norm": (lambda x: RF.local_response_norm(x, 3, 0.1, 0.75, 1.0), (2, 5, 6, 7), []),
}


def _operands(name, dtype, device):
    """The case's operands in `dtype` and their float64 twins (the same rounded values)."""
    _, shape, param_shapes = OP_CASES[name]
    low = [torch.randn(s, dtype=torch.float64).to(device, dtype).requires_grad_() for s in [shape, *param_shapes]]
    ref = [t.detach().double().requires_grad_() for t in low]
    return low, ref


@pytest.mark.parametrize("dtype", REDUCED)
@pytest.mark.parametrize("name", list(OP_CASES))
def test_reduced_precision_matches_float64_on_the_same_values(name, dtype, device):
    fn = OP_CASES[name][0]
    low, ref = _operands(name, dtype, device)
    out, ref_out = fn(*low), fn(*ref)
    assert out.dtype == dtype and out.device.type == device.type
    assert rel_error(out, ref_out) < OP_TOL[dtype]

    grad = torch.randn(ref_out.shape, dtype=torch.float64).to(device, dtype).requires_grad_()
    ref_grad = grad.detach().double().requires_grad_()
    grads = torch.autograd.grad(out, low, grad, create_graph=True)
    ref_grads = torch.autograd.grad(ref_out, ref, ref_grad, create_graph=True)
    for g, r in zip(grads, ref_grads):
        assert g.dtype == dtype
        assert rel_error(g, r) < OP_TOL[dtype]

    # Double backward: the derivatives of the input's gradient. LRN's is composed of torch
    # ops, each rounding to the dtype, hence the wider margin.
    gg = torch.randn(ref[0].shape, dtype=torch.float64).to(device, dtype)
    second = torch.autograd.grad(grads[0], [grad, *low], gg, allow_unused=True)
    ref_second = torch.autograd.grad(ref_grads[0], [ref_grad, *ref], gg.double(), allow_unused=True)
    margin = 4 if name == "local_response_norm" else 1
    for s, r in zip(second, ref_second):
        if r is None or r.abs().max() == 0:
            assert s is None or s.abs().max() == 0
            continue
        assert s.dtype == dtype
        assert rel_error(s, r) < OP_TOL[dtype] * margin


@pytest.mark.parametrize("dtype", REDUCED)
def test_reduced_precision_bias_backward(dtype, device):
    grad = torch.randn(3, 8, 5, 5, dtype=torch.float64).to(device, dtype)
    for channels in (8, 4):
        out = ops.bias_backward(grad, channels)
        ref = grad.double().reshape(3, 8 // channels, channels, 25).sum((0, 1, 3))
        assert out.dtype == dtype and rel_error(out, ref) < OP_TOL[dtype]


def test_mixed_dtypes_are_still_rejected(device):
    x = torch.randn(1, 3, 5, 5, device=device, dtype=torch.bfloat16)
    w = torch.randn(4, 3, 3, 3, device=device)
    with pytest.raises(RuntimeError, match="weight to have the same dtype as input"):
        RF.conv2d(x, w)
    with pytest.raises(RuntimeError, match="bias to have the same dtype"):
        RF.roll_conv2d(x, w.to(torch.bfloat16), torch.randn(4, device=device, dtype=torch.float16))


# --- autocast: policy --------------------------------------------------------------------------


def test_every_op_has_autocast_kernels():
    for name in _ops.OP_NAMES:
        for key in ("AutocastCPU", "AutocastCUDA"):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"rollconv::{name}", key), (name, key)


# Each rollconv call next to the torch call it stands for, on float32 operands.
POLICY_CASES = {
    "conv2d": (lambda x, w, b: RF.conv2d(x, w, b, 1, 1), lambda x, w, b: F.conv2d(x, w, b, 1, 1), (6, 4, 3, 3)),
    "conv_transpose2d": (
        lambda x, w, b: RF.conv_transpose2d(x, w[:, :4], b[:4], 2, 1, 1),
        lambda x, w, b: F.conv_transpose2d(x, w[:, :4], b[:4], 2, 1, 1), (4, 6, 3, 3)),
    **{
        f"roll_conv2d_{alg}": (
            lambda x, w, b, alg=alg: RF.roll_conv2d(x, w, b, padding=1, algorithm=alg),
            lambda x, w, b: F.conv2d(x, reference.filter_bank(w, 4), b.repeat(4), padding=1), (6, 4, 3, 3))
        for alg in ("direct", "bank", "fft", "auto")
    },
    "max_pool2d": (lambda x, w, b: RF.max_pool2d(x, 2), lambda x, w, b: F.max_pool2d(x, 2), None),
    "local_response_norm": (
        lambda x, w, b: RF.local_response_norm(x, 3), lambda x, w, b: F.local_response_norm(x, 3), None),
}


@pytest.mark.parametrize("dtype", REDUCED)
@pytest.mark.parametrize("name", list(POLICY_CASES))
def test_autocast_gives_torchs_dtypes_and_values(name, dtype, device):
    ours, theirs, w_shape = POLICY_CASES[name]
    x = torch.randn(2, 4, 8, 8, device=device)
    w = torch.randn(w_shape or (1,), device=device)
    b = torch.randn(w.shape[0], device=device)
    with torch.autocast(device.type, dtype=dtype):
        out, ref = ours(x, w, b), theirs(x, w, b)
        assert out.dtype == ref.dtype  # the autocast dtype for convolutions, float32 for the rest
        out64 = ours(x.double(), w.double(), b.double())  # float64 is never cast, as in torch
        assert out64.dtype == torch.float64
    if w_shape is not None:
        assert out.dtype == dtype
        # The reference: float64 on the operands rounded as autocast rounds them.
        x, w, b = (t.to(dtype).double() for t in (x, w, b))
        ref = theirs(x, w, b)
    assert rel_error(out, ref) < OP_TOL[dtype]


@pytest.mark.parametrize("dtype", REDUCED)
@pytest.mark.parametrize("algorithm", ["direct", "bank", "fft"])
def test_fake_kernels_agree_with_the_real_ones_under_autocast(algorithm, dtype, device):
    """The autocast kernels run the ops below autocast, so the 'bank' algorithm's internal
    ATen convolution is not cast again and every pass returns what its fake kernel says."""
    x = torch.randn(2, 4, 8, 8, device=device)
    w = torch.randn(3, 4, 3, 3, device=device)
    b = torch.randn(3, device=device)
    g = torch.randn(2, 12, 8, 8, device=device)
    geo = ([1, 1], [1, 1], [1, 1], 4, 1, algorithm)
    calls = [
        (ops.roll_conv2d_forward, (x, w, b, *geo, True)),
        (ops.roll_conv2d_backward_input, (g, w, [8, 8], *geo)),
        (ops.roll_conv2d_backward_weight, (g, x, [3, 3], *geo)),
        (ops.conv2d_forward, (x, w, b, [1, 1], [1, 1], [1, 1], 1)),
        (ops.conv2d_backward_input, (g[:, :3], w, [8, 8], [1, 1], [1, 1], [1, 1], 1)),
        (ops.conv2d_backward_weight, (g[:, :3], x, [3, 3], [1, 1], [1, 1], [1, 1], 1)),
    ]
    with torch.autocast(device.type, dtype=dtype):
        for op, args in calls:
            real = op(*args)
            with FakeTensorMode() as mode:
                fake = op(*[mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args])
            assert real.dtype == fake.dtype == dtype, op
            assert real.shape == fake.shape, op


def _autocast_opcheck_samples(device):
    """float32 operands (autocast casts them) for every op; roll_conv2d with 'bank', the
    algorithm that calls ATen inside (the others are covered by the test above)."""
    mk = lambda *s: torch.randn(*s, device=device, requires_grad=True)  # noqa: E731
    _, idx = ops.max_pool2d_forward(torch.randn(2, 3, 7, 6, device=device), [3, 2], [2, 1], [1, 1], [1, 2], True)
    geo = ([2, 1], [1, 0], [1, 2])
    return {
        "conv2d_forward": (mk(2, 4, 7, 6), mk(6, 2, 3, 2), mk(6), *geo, 2),
        "conv2d_backward_input": (mk(2, 6, 4, 4), mk(6, 2, 3, 2), [7, 6], *geo, 2),
        "conv2d_backward_weight": (mk(2, 6, 4, 4), mk(2, 4, 7, 6), [3, 2], *geo, 2),
        "bias_backward": (mk(2, 6, 3, 5), 3),
        "roll_conv2d_forward": (mk(2, 3, 7, 6), mk(2, 3, 3, 2), mk(2), *geo, 2, 1, "bank", True),
        "roll_conv2d_backward_input": (mk(2, 6, 4, 4), mk(2, 3, 3, 2), [7, 6], *geo, 3, 1, "bank"),
        "roll_conv2d_backward_weight": (mk(2, 4, 4, 4), mk(2, 3, 7, 6), [3, 2], *geo, 2, 1, "bank"),
        "roll_conv2d_backward": (mk(2, 4, 4, 4), mk(2, 3, 7, 6), mk(2, 3, 3, 2), torch.randn(2, 4, 4, 4, device=device),
                                 *geo, 2, 1, "bank", [True, True, True]),
        "max_pool2d_forward": (mk(2, 3, 7, 6), [3, 2], [2, 1], [1, 1], [1, 2], True),
        "max_pool2d_backward": (mk(*idx.shape), idx, [7, 6], [3, 2], [2, 1], [1, 1], [1, 2]),
        "local_response_norm_forward": (mk(2, 5, 3, 4), 3, 1e-2, 0.75, 1.0),
        "local_response_norm_backward": (mk(2, 5, 3, 4), mk(2, 5, 3, 4), 3, 1e-2, 0.75, 1.0),
    }


@pytest.mark.parametrize("name", _ops.OP_NAMES)
def test_opcheck_under_autocast(name, device):
    """In the device's default autocast dtype (CPU: bfloat16, CUDA: float16)."""
    args = _autocast_opcheck_samples(device)[name]
    with torch.autocast(device.type):
        torch.library.opcheck(getattr(ops, name).default, args)


# --- a network of torch.nn and rollconv layers --------------------------------------------------


def _network(device):
    torch.manual_seed(0)
    R = rollconv.nn
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        R.RollConv2d(8, 2, 3, padding=1, activation="relu", algorithm="direct"),  # 16 channels
        R.RollConv2d(16, 1, 3, padding=1, rolls=8, algorithm="bank"),  # 8
        R.RollConv2d(8, 2, 3, padding=1, activation="relu", algorithm="fft"),  # 16
        R.MaxPool2d(2), R.LocalResponseNorm(3),
        R.Conv2d(16, 8, 3, padding=1), nn.ReLU(),
        R.ConvTranspose2d(8, 4, 2, stride=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 16 * 16, 10),
    ).to(device)


def _batch(device):
    torch.manual_seed(1)
    return torch.randn(4, 3, 16, 16, device=device), torch.randint(0, 10, (4,), device=device)


def _train(model, device, steps, dtype=None):
    """SGD steps; under autocast(dtype) when given, with GradScaler for float16. Returns the
    losses and the gradients of the first step."""
    x, y = _batch(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    losses, first_grads = [], None
    for _ in range(steps):
        opt.zero_grad()
        with torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
            loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        if first_grads is None:
            first_grads = [p.grad.clone() for p in model.parameters()]
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
    return losses, first_grads


# Relative error of a training run against float32, activations rounded to the dtype
# through ~10 layers: of the loss, of each parameter's first gradient and total update
# (the same network with torch's layers in place of rollconv's measured 0.05-0.07 in
# float16 and 0.11-0.12 in bfloat16 at worst, as this one does), and of a model's output.
LOSS_TOL = {torch.float16: 2e-3, torch.bfloat16: 2e-2}
GRAD_TOL = {torch.float16: 0.15, torch.bfloat16: 0.3}
OUT_TOL = {torch.float16: 1e-2, torch.bfloat16: 6e-2}


@pytest.mark.parametrize("dtype", REDUCED)
def test_network_trains_under_autocast_like_float32(dtype, device):
    model = _network(device)
    amp_model = copy.deepcopy(model)
    outputs = {}

    def record(layer, args, out):  # the dtype each layer returns under autocast
        outputs.setdefault(layer, out.dtype)

    for layer in amp_model:
        layer.register_forward_hook(record)

    initial = [p.detach().clone() for p in model.parameters()]
    ref_losses, ref_grads = _train(model, device, steps=3)
    losses, grads = _train(amp_model, device, steps=3, dtype=dtype)

    for layer, out_dtype in outputs.items():
        conv = isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, rollconv.nn.RollConv2d))
        if conv:
            assert out_dtype == dtype, layer
    assert outputs[amp_model[6]] == outputs[amp_model[5]] == dtype  # MaxPool2d keeps what it gets
    assert all(p.dtype == torch.float32 for p in amp_model.parameters())
    for ours, ref in zip(losses, ref_losses):
        assert abs(ours - ref) <= LOSS_TOL[dtype] * abs(ref)
    # Each gradient's error relative to the larger of its own size and 1% of the whole
    # gradient's: a gradient that nearly cancels (a bias summed over many positions) keeps
    # only rounding noise in float16/bfloat16, whoever computes it.
    whole = torch.cat([r.flatten() for r in ref_grads]).norm().item()
    for (name, _), g, r in zip(model.named_parameters(), grads, ref_grads):
        scale = max(r.norm().item(), 0.01 * whole)
        assert (g - r).double().norm().item() / scale < GRAD_TOL[dtype], name
    for (name, p), r, p0 in zip(amp_model.named_parameters(), model.parameters(), initial):
        assert torch.isfinite(p).all() and rel_error(p - p0, r - p0) < GRAD_TOL[dtype], name  # the steps taken


@pytest.mark.parametrize("dtype", REDUCED)
def test_reduced_precision_model(dtype, device):
    """model.bfloat16() / model.half(): every layer computes in that dtype."""
    model = _network(device)
    low = copy.deepcopy(model).to(dtype)
    x, y = _batch(device)
    ref = model(x)
    out = low(x.to(dtype))
    assert out.dtype == dtype
    assert rel_error(out, ref) < OUT_TOL[dtype]
    F.cross_entropy(out.float(), y).backward()
    assert all(p.grad.dtype == dtype and torch.isfinite(p.grad).all() for p in low.parameters())
    torch.optim.SGD(low.parameters(), lr=0.05).step()


@pytest.mark.parametrize("dtype", REDUCED)
def test_compile_under_autocast(dtype, device):
    model = _network(device).eval()  # eval: BatchNorm's running statistics stay put
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x, _ = _batch(device)
    results = []
    for fn in (compiled, model):
        xi = x.clone().requires_grad_()
        with torch.autocast(device.type, dtype=dtype):
            out = fn(xi)
        out.float().square().sum().backward()
        results.append((out, xi.grad))
    (out, grad), (ref, ref_grad) = results
    assert out.dtype == ref.dtype == dtype
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(grad, ref_grad)
