"""Forward-mode AD, torch.func transforms and torch.fx for every op, against torch's own
for the same math (float64, small shapes).

- Each op: gradcheck with forward mode, reverse mode and batched (vmapped) derivatives of
  both, and gradgradcheck forward-over-reverse.
- Each functional: torch.func.jvp, jacfwd, jacrev, vjp, grad, grad(grad), hessian, vmap
  over inputs, weights and both, and per-sample gradients (vmap(grad)), against the same
  transform of the torch.nn.functional reference; no vmap per-sample fallback (disabled in
  this module, so that it raises).
- torch.fx.symbolic_trace of every module and of a function of the functional API.
"""
import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, hessian, jacfwd, jacrev, jvp, vjp, vmap

import rollconv
import rollconv.functional as RF
from rollconv import reference

ops = torch.ops.rollconv

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # torch's, in the references


@pytest.fixture(autouse=True)
def no_vmap_fallback():
    """torch.vmap's per-sample fallback for an op without a batching rule (its warning goes
    to stderr, not to Python's warnings) must never run: disabled, it raises instead."""
    torch._C._functorch._set_vmap_fallback_enabled(False)
    yield
    torch._C._functorch._set_vmap_fallback_enabled(True)

F64 = torch.float64
GEOMETRY = ([2, 1], [1, 0], [1, 2])  # stride, padding, dilation


def _rand(*shape):
    return torch.randn(*shape, dtype=F64)


def _leaf(*shape):
    return _rand(*shape).requires_grad_()


def _close(actual, expected):
    torch.testing.assert_close(actual, expected, atol=1e-9, rtol=1e-9)


# --- every op: gradcheck in forward mode, reverse mode and batched --------------------------


def _op_samples():
    """(name, op, args) with float64 leaves: every op, every roll_conv2d algorithm."""
    mk = _leaf
    stride, padding, dilation = GEOMETRY
    x = mk(2, 4, 6, 5)
    conv_out = ops.conv2d_forward(x, _rand(6, 2, 3, 2), None, *GEOMETRY, 2)
    g = mk(*conv_out.shape)
    yield "conv2d_forward", (x, mk(6, 2, 3, 2), mk(6), *GEOMETRY, 2)
    yield "conv2d_backward_input", (g, mk(6, 2, 3, 2), [6, 5], *GEOMETRY, 2)
    yield "conv2d_backward_weight", (g, x, [3, 2], *GEOMETRY, 2)
    yield "bias_backward", (mk(2, 6, 3, 2), 2)
    x3 = mk(2, 3, 6, 5)
    for algorithm, rolls in (("direct", 2), ("bank", 3), ("fft", 3)):
        out = ops.roll_conv2d_forward(x3, _rand(2, 3, 3, 2), None, *GEOMETRY, rolls, 1, algorithm, False)
        for relu in (False, True):
            yield f"roll_conv2d_forward-{algorithm}-relu={relu}", (x3, mk(2, 3, 3, 2), mk(2), *GEOMETRY, rolls, 1, algorithm, relu)
        g = mk(*out.shape)
        yield f"roll_conv2d_backward_input-{algorithm}", (g, mk(2, 3, 3, 2), [6, 5], *GEOMETRY, rolls, 1, algorithm)
        yield f"roll_conv2d_backward_weight-{algorithm}", (g, x3, [3, 2], *GEOMETRY, rolls, 1, algorithm)
        y = _rand(*out.shape)  # the mask's source: no values within gradcheck's eps of 0
        yield f"roll_conv2d_backward-{algorithm}", (g, x3, mk(2, 3, 3, 2), y, *GEOMETRY, rolls, 1, algorithm,
                                                    [True, True, True])
    pool = ([3, 2], [2, 2], [1, 1], [1, 1])
    xp = mk(2, 3, 7, 6)
    out, indices = ops.max_pool2d_forward(xp, *pool, True)
    yield "max_pool2d_forward", (xp, *pool, True)
    yield "max_pool2d_backward", (mk(*out.shape), indices, [7, 6], *pool)
    for size in (3, 2):
        xl = mk(2, 5, 3, 4)
        yield f"local_response_norm_forward-size={size}", (xl, size, 0.5, 0.75, 1.5)
        yield f"local_response_norm_backward-size={size}", (mk(2, 5, 3, 4), xl, size, 0.5, 0.75, 1.5)


OP_SAMPLES = dict(_op_samples())


def test_every_op_has_samples():
    assert {name.split("-")[0] for name in OP_SAMPLES} == set(rollconv._ops.OP_NAMES)


def _first_output(op):
    """max_pool2d_forward's indices are not differentiable: check the values only."""

    def fn(*args):
        out = op(*args)
        return out[0] if isinstance(out, tuple) and op is ops.max_pool2d_forward else out

    return fn


@pytest.mark.parametrize("name", OP_SAMPLES)
def test_gradcheck_forward_and_reverse_mode(name):
    op = getattr(ops, name.split("-")[0])
    fn = _first_output(op)
    args = OP_SAMPLES[name]
    assert torch.autograd.gradcheck(
        fn, args, check_forward_ad=True, check_backward_ad=True, check_batched_grad=True,
        check_batched_forward_grad=True, fast_mode=True,
    )


@pytest.mark.parametrize("name", OP_SAMPLES)
def test_gradgradcheck_forward_over_reverse(name):
    op = getattr(ops, name.split("-")[0])
    assert torch.autograd.gradgradcheck(
        _first_output(op), OP_SAMPLES[name], check_fwd_over_rev=True, check_rev_over_rev=True,
        check_batched_grad=True, fast_mode=True,
    )


def test_forward_ad_dual_tensors_match_the_reference():
    """torch.autograd.forward_ad (not torch.func): roll_conv2d's tangent is not zero."""
    import torch.autograd.forward_ad as fwAD

    x, tx = _rand(2, 3, 6, 6), _rand(2, 3, 6, 6)
    w, tw = _rand(4, 3, 3, 3), _rand(4, 3, 3, 3)
    with fwAD.dual_level():
        ours = fwAD.unpack_dual(RF.roll_conv2d(fwAD.make_dual(x, tx), fwAD.make_dual(w, tw), padding=1)).tangent
        ref = fwAD.unpack_dual(F.conv2d(fwAD.make_dual(x, tx), reference.filter_bank(fwAD.make_dual(w, tw), 3), padding=1)).tangent
    assert ours is not None and ours.abs().max() > 1
    _close(ours, ref)


# --- the functional API against torch.nn.functional, transform by transform ------------------


def _roll_reference(x, w, b=None, stride=1, padding=0, dilation=1, rolls=None, activation=None, algorithm=None):
    """rollconv.reference.roll_conv2d with roll_conv2d's argument order (algorithm ignored)."""
    return reference.roll_conv2d(x, w, b, stride, padding, dilation, rolls, 1, activation)


# (ours, reference, shapes of (input, weight, bias), keyword arguments). The input is
# unbatched (C, H, W), as a vmap over samples sees it.
CASES = {
    "conv2d": (RF.conv2d, F.conv2d, ((4, 6, 5), (6, 2, 3, 2), (6,)), dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2)),
    "conv2d-same": (RF.conv2d, F.conv2d, ((2, 5, 5), (3, 2, 2, 3), (3,)), dict(padding="same")),
    "conv_transpose2d": (
        RF.conv_transpose2d, F.conv_transpose2d, ((4, 4, 3), (4, 3, 3, 2), (6,)),
        dict(stride=(2, 1), padding=(1, 0), output_padding=(1, 0), groups=2, dilation=(1, 2)),
    ),
    **{
        f"roll_conv2d-{algorithm}-{activation}": (
            RF.roll_conv2d, _roll_reference, ((3, 6, 5), (2, 3, 3, 2), (2,)),
            dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2), rolls=rolls, activation=activation, algorithm=algorithm),
        )
        for algorithm, rolls in (("direct", 2), ("bank", 3), ("fft", 3))
        for activation in (None, "relu")
    },
}
UNARY_CASES = {
    "max_pool2d": (RF.max_pool2d, F.max_pool2d, (3, 7, 6), dict(kernel_size=(3, 2), stride=2, padding=1, ceil_mode=True)),
    "local_response_norm": (RF.local_response_norm, F.local_response_norm, (5, 3, 4), dict(size=3, alpha=0.5, k=1.5)),
}


def _bind(fn, kw):
    return lambda *tensors: fn(*tensors, **kw)


def _case(name):
    ours, ref, shapes, kw = CASES[name]
    return _bind(ours, kw), _bind(ref, kw), [_rand(*s) for s in shapes]


def _unary_case(name):
    ours, ref, shape, kw = UNARY_CASES[name]
    return _bind(ours, kw), _bind(ref, kw), [_rand(*shape)]


def _all_cases():
    return [pytest.param(_case, n, id=n) for n in CASES] + [pytest.param(_unary_case, n, id=n) for n in UNARY_CASES]


def _assert_same_transform(transform, ours, ref, *args):
    torch.testing.assert_close(transform(ours)(*args), transform(ref)(*args), atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("make, name", _all_cases())
def test_jvp_jacfwd_jacrev_vjp(make, name):
    ours, ref, tensors = make(name)
    argnums = tuple(range(len(tensors)))
    tangents = [torch.randn_like(t) for t in tensors]
    out, tangent = jvp(ours, tuple(tensors), tuple(tangents))
    ref_out, ref_tangent = jvp(ref, tuple(tensors), tuple(tangents))
    assert tangent.abs().max() > 0.1
    _close(out, ref_out)
    _close(tangent, ref_tangent)
    _assert_same_transform(lambda f: jacfwd(f, argnums), ours, ref, *tensors)
    _assert_same_transform(lambda f: jacrev(f, argnums), ours, ref, *tensors)
    cotangent = torch.randn_like(out)
    _close(vjp(ours, *tensors)[1](cotangent), vjp(ref, *tensors)[1](cotangent))


def _loss(fn):
    """A scalar that is not linear in fn's output, so second derivatives are not zero."""
    return lambda *tensors: (fn(*tensors) ** 2).sum()


@pytest.mark.parametrize("make, name", _all_cases())
def test_grad_grad_of_grad_and_hessian(make, name):
    ours, ref, tensors = make(name)
    argnums = tuple(range(len(tensors)))
    _assert_same_transform(lambda f: grad(_loss(f), argnums), ours, ref, *tensors)

    def grad_norm(f):  # d/d(all) of |d loss / d input|^2: reverse over reverse
        return grad(lambda *t: (grad(_loss(f))(*t) ** 2).sum(), argnums)

    _assert_same_transform(grad_norm, ours, ref, *tensors)
    # forward over reverse, on the first (smallest useful) argument
    _assert_same_transform(lambda f: hessian(_loss(f)), ours, ref, *tensors)


def _batched(t, size=3):
    return torch.stack([torch.randn_like(t) for _ in range(size)])


@pytest.mark.parametrize("make, name", _all_cases())
def test_vmap_over_each_argument_and_all(make, name):
    ours, ref, tensors = make(name)
    for i in range(len(tensors)):
        in_dims = [None] * len(tensors)
        in_dims[i] = 0
        args = list(tensors)
        args[i] = _batched(tensors[i])
        _assert_same_transform(lambda f: vmap(f, in_dims=tuple(in_dims)), ours, ref, *args)
    if len(tensors) > 1:
        batched = [_batched(t) for t in tensors]
        _assert_same_transform(vmap, ours, ref, *batched)
        # the vmapped dimension elsewhere than first, and an output dimension other than 0
        moved = [b.movedim(0, -1) for b in batched]
        _assert_same_transform(lambda f: vmap(f, in_dims=-1, out_dims=1), ours, ref, *moved)
    # nested vmap: a batch of batches of inputs
    inputs_only = (0,) + (None,) * (len(tensors) - 1)
    _assert_same_transform(lambda f: vmap(vmap(f, inputs_only), inputs_only), ours, ref,
                           _batched(_batched(tensors[0], 2)), *tensors[1:])


@pytest.mark.parametrize("make, name", _all_cases())
def test_per_sample_gradients_and_jacobians(make, name):
    """vmap(grad) over samples with shared parameters (per-sample gradients, as Opacus),
    vmap(jacrev) and vmap(jacfwd)."""
    ours, ref, tensors = make(name)
    samples = _batched(tensors[0], 4)
    in_dims = (0,) + (None,) * (len(tensors) - 1)
    argnums = tuple(range(len(tensors)))
    _assert_same_transform(lambda f: vmap(grad(_loss(f), argnums), in_dims), ours, ref, samples, *tensors[1:])
    _assert_same_transform(lambda f: vmap(jacrev(f, argnums), in_dims), ours, ref, samples[:2], *tensors[1:])
    _assert_same_transform(lambda f: vmap(jacfwd(f, argnums), in_dims), ours, ref, samples[:2], *tensors[1:])


def test_per_sample_gradients_of_a_model_with_functional_call():
    """The torch.func recipe for per-sample gradients, on a model of every rollconv layer,
    against one backward per sample."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        rollconv.nn.RollConv2d(3, 2, 3, padding=1, activation="relu"),
        rollconv.nn.Conv2d(6, 4, 3, padding=1, groups=2),
        rollconv.nn.LocalResponseNorm(3),
        rollconv.nn.MaxPool2d(2),
        rollconv.nn.ConvTranspose2d(4, 2, 2, stride=2),
    ).double()
    params = {k: v.detach() for k, v in model.named_parameters()}
    x, target = _rand(5, 3, 6, 6), _rand(5, 2, 6, 6)

    def loss(p, sample, t):
        return ((torch.func.functional_call(model, p, (sample.unsqueeze(0),)) - t) ** 2).sum()

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, target)
    for i in range(x.shape[0]):
        model.zero_grad()
        ((model(x[i : i + 1]) - target[i]) ** 2).sum().backward()
        for k, p in model.named_parameters():
            _close(per_sample[k][i], p.grad)


def test_functionalize_linearize_vectorized_jacobian_and_compiled_jvp():
    """Transforms built on the others: each as torch's for the same math."""
    ours, ref, (x, w, b) = _case("roll_conv2d-direct-relu")
    ones = (torch.ones_like(x), torch.ones_like(w), torch.ones_like(b))
    _assert_same_transform(torch.func.functionalize, ours, ref, x, w, b)
    _assert_same_transform(lambda f: torch.func.functionalize(grad(_loss(f), (0, 1, 2))), ours, ref, x, w, b)
    _assert_same_transform(lambda f: lambda *a: torch.func.linearize(f, *a)[1](*ones), ours, ref, x, w, b)
    _assert_same_transform(
        lambda f: lambda *a: torch.autograd.functional.jacobian(f, a, vectorize=True), ours, ref, x, w, b
    )
    # torch.compile traces jvp's dual level into the graph: the tangent must still be seen
    compiled = torch.compile(lambda *a: jvp(ours, a, ones)[1], backend="aot_eager", fullgraph=True)
    _close(compiled(x, w, b), jvp(ref, (x, w, b), ones)[1])


# --- torch.fx -----------------------------------------------------------------------------------


MODULES = {
    "Conv2d": lambda: rollconv.nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2),
    "Conv2d-reflect": lambda: rollconv.nn.Conv2d(4, 2, 3, padding=1, padding_mode="reflect"),
    "ConvTranspose2d": lambda: rollconv.nn.ConvTranspose2d(4, 2, 3, stride=2, output_padding=1),
    "RollConv2d": lambda: rollconv.nn.RollConv2d(4, 2, 3, padding="same", activation="relu"),
    "MaxPool2d": lambda: rollconv.nn.MaxPool2d(3, 2, 1),
    "MaxPool2d-indices": lambda: rollconv.nn.MaxPool2d(2, return_indices=True),
    "LocalResponseNorm": lambda: rollconv.nn.LocalResponseNorm(3),
}
FUNCTION_OF = {
    "Conv2d": RF.conv2d, "ConvTranspose2d": RF.conv_transpose2d, "RollConv2d": RF.roll_conv2d,
    "MaxPool2d": RF.max_pool2d, "LocalResponseNorm": RF.local_response_norm,
}


@pytest.mark.parametrize("name", MODULES)
def test_fx_symbolic_trace_of_every_module(name):
    module = MODULES[name]()
    # ConvTranspose2d.forward(input, output_size=None), as torch's: a traced top-level
    # forward makes every argument a proxy unless told it is a constant (inside a model,
    # the caller passes the real None: see the functional model below).
    constants = {"output_size": None} if name == "ConvTranspose2d" else None
    traced = torch.fx.symbolic_trace(module, concrete_args=constants)
    targets = [n.target for n in traced.graph.nodes if n.op == "call_function"]
    assert FUNCTION_OF[name.split("-")[0]] in targets
    x = torch.randn(2, 4, 7, 7)
    torch.testing.assert_close(traced(x), module(x))


class _Net(torch.nn.Module):
    """Layers and functional calls mixed, as FX-based tools meet them."""

    def __init__(self):
        super().__init__()
        self.roll = rollconv.nn.RollConv2d(3, 2, 3, padding=1)
        self.up = rollconv.nn.ConvTranspose2d(4, 2, 2, stride=2)
        self.w1, self.w2 = torch.nn.Parameter(torch.randn(2, 3, 3, 3)), torch.nn.Parameter(torch.randn(4, 6, 1, 1))
        self.w3 = torch.nn.Parameter(torch.randn(4, 2, 2, 2))

    def forward(self, x):
        y = RF.roll(x, self.w1, 1, 1) + self.roll(x)
        y = RF.conv2d(y, self.w2, padding="same")
        y, indices = RF.max_pool2d(y, 2, return_indices=True)
        y = RF.local_response_norm(y, 2)
        return self.up(y) + RF.conv_transpose2d(y, self.w3, stride=2), indices


def test_fx_symbolic_trace_of_a_model_of_layers_and_functional_calls():
    net = _Net()
    traced = torch.fx.symbolic_trace(net)
    targets = [n.target for n in traced.graph.nodes if n.op == "call_function"]
    for fn in (RF.roll_conv2d, RF.conv2d, RF.max_pool2d, RF.local_response_norm, RF.conv_transpose2d):
        assert fn in targets
    assert targets.count(RF.conv_transpose2d) == 2 and targets.count(RF.roll_conv2d) == 2
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(traced(x), net(x))
