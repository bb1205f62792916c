"""Helpers shared by the test modules."""
import pytest
import torch


def randn(*shape, **kw):
    return torch.randn(*shape, **kw)


def random_window(rng, max_extent):
    """A random 2-D window (rng: random.Random): kernel (kh, kw) in 1..4, stride 1..3,
    dilation 1..2, padding 0..2, and an input (h, w) that the dilated kernel fits with
    1..max_extent output positions before striding."""
    kh, kw = rng.randint(1, 4), rng.randint(1, 4)
    stride = (rng.randint(1, 3), rng.randint(1, 3))
    dilation = (rng.randint(1, 2), rng.randint(1, 2))
    padding = (rng.randint(0, 2), rng.randint(0, 2))
    h = rng.randint(1, max_extent) + dilation[0] * (kh - 1)
    w = rng.randint(1, max_extent) + dilation[1] * (kw - 1)
    return (kh, kw), stride, dilation, padding, (h, w)


def assert_clear_error(make, match):
    """Bad input must raise a Python exception whose message matches `match`."""
    with pytest.raises((RuntimeError, ValueError, TypeError, NotImplementedError), match=match):
        make()


def assert_compiles_like_eager(model, *inputs, backend="aot_eager"):
    """torch.compile(fullgraph=True) gives eager's forward and input gradient, for each input
    (a second batch size makes torch.compile retrace with symbolic shapes)."""
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    for x in inputs:
        x = x.detach().requires_grad_()
        y = compiled(x)
        torch.testing.assert_close(y, model(x))
        y.sum().backward()
        compiled_grad = x.grad.clone()
        x.grad = None
        model(x).sum().backward()
        torch.testing.assert_close(compiled_grad, x.grad)
