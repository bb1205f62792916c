"""Autograd, forward-mode AD and torch.func support for the torch.ops.rollconv ops.

``torch.library.register_autograd`` (torch 2.14) has two gaps: the Autograd kernel it
registers calls its function only when an input requires grad, so forward-mode AD
(``torch.func.jvp``, ``torch.autograd.forward_ad``) never reaches a derivative and every
tangent reads as zero; and it calls an ``autograd.Function`` whose ``forward`` takes
``ctx``, which torch.func refuses ("must override the setup_context staticmethod").

``register_derivatives`` registers instead, as the op's ``Autograd`` kernel, an
autograd function with ``forward`` (the op below autograd), ``setup_context``,
``backward`` and ``jvp``, applied whenever an input requires grad or carries a tangent.
It is applied inside the dispatcher like ATen's C++ autograd kernels, on the tensors of
the current torch.func level (a single-level function, as torch.func's own
``custom_function_call`` uses for grad and jvp levels), so each grad or jvp level
records it once, and its formulas, written with the ops themselves (or torch ops),
reenter every transform below. The op's ``FuncTorchBatched`` kernel is its vmap rule
(``torch.library.register_vmap``, rules in rollconv/_batching.py). Together these give
every torch.func transform (grad, vjp, jacrev, jvp, jacfwd, hessian, vmap) and any
nesting of them; torch.compile, torch.export and opcheck see the same Autograd kernel
shape as with ``register_autograd``.
"""
import torch
from torch._functorch.utils import enable_single_level_autograd_function
from torch.autograd.forward_ad import _set_fwd_grad_enabled
from torch.autograd.function import _SingleLevelFunction

from . import _C as _rollconv_C

_C = torch._C

#: Keeps the registrations alive.
_LIB = torch.library.Library("rollconv", "FRAGMENT")


def register_derivatives(name, *, setup_context, backward, jvp, vmap):
    """Register the derivatives and the batching rule of the op ``rollconv::<name>``.

    setup_context(ctx, inputs, output): save what backward and jvp need (tensors with
    ``ctx.save_for_backward`` and ``ctx.save_for_forward``, others as attributes).
    backward(ctx, *grad_outputs) -> one gradient (or None) per op argument.
    jvp(ctx, *tangents) -> one tangent (or None) per output; a tangent is None for a
    non-tensor argument and for a tensor without one.
    vmap(info, in_dims, *args) -> (output, out_dims), as for ``torch.library.register_vmap``.
    Returns the autograd function.
    """
    op = getattr(torch.ops.rollconv, name).default

    def forward(*args):
        # Applying the function turned both grad modes off; torch.func levels below this
        # one expect them on (each level restores its own no_grad when it is entered), so
        # turn them back on, as torch.func's own custom_function_call does.
        with torch.enable_grad(), _set_fwd_grad_enabled(True), _C._AutoDispatchBelowAutograd():
            return op(*args)

    function = type(
        "".join(part.capitalize() for part in name.split("_")),
        (_SingleLevelFunction,),
        {
            "forward": staticmethod(forward),
            "setup_context": staticmethod(setup_context),
            "backward": staticmethod(backward),
            "jvp": staticmethod(jvp),
            "__module__": __name__,
        },
    )

    def autograd_kernel(keyset, *args):
        # In C++: it runs on every call (requires grad under grad mode, or a forward-mode
        # tangent, asked of the tensors: torch.compile's graphs do not update forward_ad's
        # Python level counter).
        if _rollconv_C.needs_derivatives(*args):
            with enable_single_level_autograd_function():
                return function.apply(*args)
        with _C._AutoDispatchBelowAutograd():
            return op.redispatch(keyset & _C._after_autograd_keyset, *args)

    _LIB.impl(name, autograd_kernel, "Autograd", with_keyset=True)
    torch.library.register_vmap(op, vmap, lib=_LIB)
    return function
