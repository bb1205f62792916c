"""CUDA-specific tests. Without a GPU only the registration checks run, except in the
emulated CUDA build (tests/emulated_cuda_build.sh), where the cases marked
requires_cuda_kernels run CUDA's kernels on CPU tensors; on a GPU machine all of them run
(`pytest -m cuda`)."""
import pytest
import torch
import torch.nn.functional as F

import rollconv
import rollconv.functional as RF
from rollconv import _C, _ops

from conftest import CUDA, requires_cuda_kernels, requires_gpu
from rollconv import reference

pytestmark = pytest.mark.cuda


def test_every_op_has_a_kernel_for_cpu_and_cuda():
    """CUDA builds register the CUDA kernels; CPU-only builds register a stub that says
    how to rebuild. Either way the dispatcher never answers 'could not run'."""
    for name in _ops.OP_NAMES:
        for key in ("CPU", "CUDA"):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"rollconv::{name}", key), (name, key)


def test_info_reports_the_build():
    facts = rollconv.info(file=open("/dev/null", "w"))
    assert facts["CUDA kernels compiled"] == bool(_C.with_cuda)
    assert facts["emulated CUDA build"] == bool(_C.emulated_cuda)
    assert not (_C.with_cuda and _C.emulated_cuda)  # the emulated build compiles no device code
    assert facts["torch"] == torch.__version__


def _same_arguments(ours, reference, *args, **kwargs):
    """Functions of x that call rollconv's op and its reference with the same arguments.
    Each returns the output and its leaves: x and copies of the tensor arguments in x's
    dtype and device, whose .grad a backward fills."""

    def call(fn):
        def run(x):
            leaves = [x] + [a.to(x, copy=True).requires_grad_() for a in args if isinstance(a, torch.Tensor)]
            tensors = iter(leaves[1:])
            out = fn(x, *[next(tensors) if isinstance(a, torch.Tensor) else a for a in args], **kwargs)
            return out, leaves

        return run

    return call(ours), call(reference)


def _filter_bank_method(x, w, b, stride, padding, dilation, rolls, activation, algorithm):
    return reference.roll_conv2d(x, w, b, stride, padding, dilation, rolls, activation=activation)


def _cases(dtype):
    """(rollconv op, torch reference) pairs: torch.nn.functional's op, and for roll_conv2d
    the filter-bank method. The parameters are representable in `dtype`, so the float64 reference
    computes on the same numbers."""
    torch.manual_seed(0)
    shapes = ((8, 3, 3, 2), (8,), (2, 6, 3, 3), (2,), (6, 2, 3, 3))
    w, b, rw, rb, tw = (torch.randn(*shape).to(dtype).double() for shape in shapes)
    cases = [
        _same_arguments(RF.conv2d, F.conv2d, w, b, (2, 1), 1, (1, 2), 2),
        _same_arguments(RF.roll_conv2d, _filter_bank_method, rw, rb, 1, 1, 1, None, "relu", "direct"),
        _same_arguments(RF.roll_conv2d, _filter_bank_method, rw, rb, 2, 0, 1, 4, None, "direct"),
        _same_arguments(RF.roll_conv2d, _filter_bank_method, rw, rb, 2, 0, 1, 4, "relu", "bank"),
        _same_arguments(RF.conv_transpose2d, F.conv_transpose2d, tw, None, 2, 1, 1, 1),
        _same_arguments(RF.max_pool2d, F.max_pool2d, 3, 2, 1, ceil_mode=True),
        _same_arguments(RF.local_response_norm, F.local_response_norm, 3, 0.1, 0.75, 1.0),
        _same_arguments(RF.roll_conv2d, _filter_bank_method, rw, rb, 1, 1, 1, None, "relu", "fft"),
    ]
    return cases


@requires_cuda_kernels
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-4), (torch.float16, 2e-2), (torch.bfloat16, 1e-1)])
def test_cuda_matches_float64_reference_forward_and_backward(dtype, tol):
    """Every op (and algorithm) on CUDA in `dtype` against torch's float64 CPU result on the
    same numbers (input, parameters and output gradient rounded to `dtype` first, so that
    max-pool ties agree): the output, and the gradients of the input and parameters."""
    x = torch.randn(4, 6, 17, 15).to(dtype).double()
    for ours, reference in _cases(dtype):
        ref, ref_leaves = reference(x.clone().requires_grad_())
        grad = torch.randn(ref.shape).to(dtype).double()
        ref.backward(grad)
        out, leaves = ours(x.to(CUDA, dtype, copy=True).requires_grad_())
        out.backward(grad.to(out))
        assert out.dtype == dtype and out.device.type == CUDA.type
        torch.testing.assert_close(out.double().cpu(), ref.detach(), rtol=tol, atol=tol * 10)
        for leaf, ref_leaf in zip(leaves, ref_leaves):
            torch.testing.assert_close(leaf.grad.double().cpu(), ref_leaf.grad, rtol=tol, atol=tol * 10)


@requires_cuda_kernels
def test_cuda_results_are_deterministic():
    x = torch.randn(8, 16, 20, 20, device=CUDA)
    w = torch.randn(4, 16, 3, 3, device=CUDA, requires_grad=True)
    grads = []
    for _ in range(3):
        w.grad = None
        RF.roll_conv2d(x, w, padding=1, algorithm="direct").square().sum().backward()
        grads.append(w.grad.clone())
    assert all(torch.equal(g, grads[0]) for g in grads)


@requires_gpu
def test_cuda_on_current_stream_and_second_device():
    s = torch.cuda.Stream()
    x = torch.randn(2, 3, 9, 9, device="cuda")
    w = torch.randn(4, 3, 3, 3, device="cuda")
    with torch.cuda.stream(s):
        y = RF.conv2d(x, w)
    s.synchronize()
    torch.testing.assert_close(y, F.conv2d(x, w), rtol=1e-4, atol=1e-4)
    if torch.cuda.device_count() > 1:
        x1, w1 = x.to("cuda:1"), w.to("cuda:1")
        torch.testing.assert_close(RF.conv2d(x1, w1).cpu(), y.cpu(), rtol=1e-4, atol=1e-4)


@requires_gpu
def test_cuda_device_mismatch():
    with pytest.raises(RuntimeError, match="same device"):
        RF.conv2d(torch.randn(1, 3, 5, 5, device="cuda"), torch.randn(4, 3, 3, 3))


@requires_gpu
def test_cuda_compile_and_module():
    model = torch.nn.Sequential(rollconv.nn.RollConv2d(3, 4, 3, padding=1, activation="relu"), rollconv.nn.MaxPool2d(2)).cuda()
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(2, 3, 16, 16, device="cuda", requires_grad=True)
    torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)
