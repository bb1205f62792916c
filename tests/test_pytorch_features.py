"""PyTorch features over every op: dynamic shapes under torch.compile, torch.export with
dynamic image sizes, torch.jit.trace. (DistributedDataParallel: test_distributed.py.)

torch.compile(dynamic=True) over images of several sizes compiles each rollconv op as
often as torch compiles its own op for the same math (once): the sizes that the backward
ops take (input_size, kernel_size) are SymInt[] in the schemas, so they stay symbolic."""
import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters

import rollconv
import rollconv.functional as RF
from rollconv import reference

SIZES = (8, 9, 10, 11)


def graphs_compiled(fn, make_inputs, sizes=SIZES):
    """Graphs torch.compile(dynamic=True) makes for forward+backward of fn over the sizes
    (Dynamo's count of distinct graphs: a recompile adds one; a restart of the analysis,
    as Dynamo does for the float arguments of local_response_norm, does not), checking each
    compiled result (output and input gradients) against eager."""
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(fn, backend="aot_eager", dynamic=True)
    for size in sizes:
        inputs = make_inputs(size)
        y = compiled(*inputs)
        grads = torch.autograd.grad(y.sum(), inputs)
        detached = [t.detach().requires_grad_() for t in inputs]
        y_eager = fn(*detached)
        torch.testing.assert_close(y, y_eager)
        torch.testing.assert_close(grads, torch.autograd.grad(y_eager.sum(), detached))
    return counters["stats"]["unique_graphs"]


def filter_bank_method(x, w):
    """roll_conv2d(x, w, padding=1) in torch ops: the filter-bank method."""
    return reference.roll_conv2d(x, w, padding=1)


def image(size, channels=3):
    return torch.randn(2, channels, size, size, dtype=torch.float64, requires_grad=True)


def image_and_weight(weight_shape, channels=None):
    def make(size):
        x = image(size, channels or weight_shape[1])
        return x, torch.randn(*weight_shape, dtype=torch.float64, requires_grad=True)

    return make


CASES = {
    "conv2d": (lambda x, w: RF.conv2d(x, w, padding=1), lambda x, w: F.conv2d(x, w, padding=1), image_and_weight((4, 3, 3, 3))),
    "conv2d same": (
        lambda x, w: RF.conv2d(x, w, padding="same"),
        lambda x, w: F.conv2d(x, w, padding="same"),
        image_and_weight((4, 3, 3, 3)),
    ),
    "roll_conv2d direct": (
        lambda x, w: RF.roll_conv2d(x, w, padding=1, algorithm="direct"),
        filter_bank_method,
        image_and_weight((2, 3, 3, 3)),
    ),
    "roll_conv2d bank": (
        lambda x, w: RF.roll_conv2d(x, w, padding=1, algorithm="bank"),
        filter_bank_method,
        image_and_weight((2, 3, 3, 3)),
    ),
    "roll_conv2d fft": (
        lambda x, w: RF.roll_conv2d(x, w, padding=1, algorithm="fft"),
        filter_bank_method,
        image_and_weight((2, 3, 3, 3)),
    ),
    "conv_transpose2d": (
        lambda x, w: RF.conv_transpose2d(x, w, stride=2, padding=1),
        lambda x, w: F.conv_transpose2d(x, w, stride=2, padding=1),
        image_and_weight((3, 4, 3, 3), channels=3),
    ),
    "max_pool2d": (lambda x: RF.max_pool2d(x, 3, 2, 1), lambda x: F.max_pool2d(x, 3, 2, 1), lambda s: (image(s),)),
    "local_response_norm": (
        lambda x: RF.local_response_norm(x, 3),
        lambda x: F.local_response_norm(x, 3),
        lambda s: (image(s),),
    ),
}


_TORCH_GRAPHS = {}  # torch's count per reference function (the rolling cases share one)


@pytest.mark.parametrize("name", list(CASES))
def test_dynamic_image_sizes_compile_as_often_as_torch(name):
    ours, theirs, make_inputs = CASES[name]
    if theirs not in _TORCH_GRAPHS:
        _TORCH_GRAPHS[theirs] = graphs_compiled(theirs, make_inputs)
    # One graph for all sizes; never more than torch needs for the same math (older torch
    # releases recompile some of their own ops, e.g. max_pool2d on torch 2.11).
    ours_count = graphs_compiled(ours, make_inputs)
    assert ours_count == 1 and ours_count <= _TORCH_GRAPHS[theirs], (ours_count, _TORCH_GRAPHS[theirs])


def every_layer():
    return torch.nn.Sequential(
        rollconv.nn.RollConv2d(3, 4, 3, padding=1, activation="relu"),
        rollconv.nn.MaxPool2d(2),
        rollconv.nn.LocalResponseNorm(3),
        rollconv.nn.Conv2d(12, 5, 3, padding=1),
        rollconv.nn.ConvTranspose2d(5, 2, 2, stride=2),
    )


LAYER_OPS = {
    "rollconv.roll_conv2d_forward.default",
    "rollconv.max_pool2d_forward.default",
    "rollconv.local_response_norm_forward.default",
    "rollconv.conv2d_forward.default",
    "rollconv.conv2d_backward_input.default",  # conv_transpose2d
}


def test_export_with_dynamic_image_size():
    model = every_layer()
    size = torch.export.Dim("size", min=4, max=64)
    exported = torch.export.export(
        model, (torch.randn(2, 3, 12, 12),), dynamic_shapes=({2: 2 * size, 3: 2 * size},)
    )
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert LAYER_OPS <= targets
    for hw in (8, 12, 20):
        x = torch.randn(2, 3, hw, hw)
        torch.testing.assert_close(exported.module()(x), model(x))


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_jit_trace():
    model = every_layer()
    x = torch.randn(2, 3, 12, 12)
    traced = torch.jit.trace(model, (x,))
    graph = str(traced.inlined_graph)
    assert all(f"rollconv::{name.split('.')[1]}" in graph for name in LAYER_OPS), graph
    for batch in (2, 3):  # a traced graph replays its ops on inputs of other batch sizes
        x = torch.randn(batch, 3, 12, 12, requires_grad=True)
        torch.testing.assert_close(traced(x), model(x))
        grad = torch.autograd.grad(traced(x).sum(), x)[0]
        torch.testing.assert_close(grad, torch.autograd.grad(model(x).sum(), x)[0])
