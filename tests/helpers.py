"""Helpers shared by the test modules."""
import pytest
import torch


def randn(*shape, **kw):
    return torch.randn(*shape, **kw)


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
