"""Modules mirroring ``torch.nn``: same constructor arguments, parameter names, init and
state_dict as the torch module they replace, computed with rollconv ops."""
import math

import torch
from torch import nn

from . import functional as F
from . import reference

__all__ = ["Conv2d", "ConvTranspose2d", "RollConv2d", "RollPool", "MaxPool2d", "LocalResponseNorm"]

#: The padding modes of torch.nn.Conv2d.
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


class Conv2d(nn.Conv2d):
    """Drop-in for ``torch.nn.Conv2d`` (all padding modes: non-zero modes pad first,
    as torch does); loads a ``torch.nn.Conv2d`` state_dict."""

    def _conv_forward(self, input, weight, bias):
        if self.padding_mode != "zeros":
            input = nn.functional.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv2d(input, weight, bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class ConvTranspose2d(nn.ConvTranspose2d):
    """Drop-in for ``torch.nn.ConvTranspose2d`` (padding_mode 'zeros', as torch)."""

    def forward(self, input, output_size=None):
        if self.padding_mode != "zeros":
            raise ValueError("Only 'zeros' padding mode is supported for ConvTranspose2d")
        output_padding = self._output_padding(
            input, output_size, self.stride, self.padding, self.kernel_size, 2, self.dilation
        )
        return F.conv_transpose2d(
            input, self.weight, self.bias, self.stride, self.padding, output_padding, self.groups, self.dilation
        )


class MaxPool2d(nn.MaxPool2d):
    """Drop-in for ``torch.nn.MaxPool2d``."""

    def forward(self, input):
        return F.max_pool2d(
            input, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode, self.return_indices
        )


class LocalResponseNorm(nn.LocalResponseNorm):
    """Drop-in for ``torch.nn.LocalResponseNorm``."""

    def forward(self, input):
        return F.local_response_norm(input, self.size, self.alpha, self.beta, self.k)


class RollConv2d(nn.Module):
    """Rolling-filter convolution layer (see ``rollconv.functional.roll_conv2d``).

    Input (N, in_channels, H, W) or (in_channels, H, W); output (N, rolls * filters, H_out,
    W_out) in roll-major order (channel ``r * filters + f``), H_out as ``torch.nn.Conv2d``.

    Parameters: ``weight`` (filters, in_channels, kh, kw) and ``bias`` (filters,), shared
    across the rolls, initialized as ``torch.nn.Conv2d`` with the same fan-in.
    Arguments as ``torch.nn.Conv2d`` where they exist: ``stride``, ``padding`` (int, pair,
    'valid' or 'same'), ``dilation``, ``bias`` and ``padding_mode`` ('zeros', 'reflect',
    'replicate' or 'circular'; any but 'zeros' pads the input with ``torch.nn.functional.pad``
    before a convolution without padding, as ``torch.nn.Conv2d`` does). ``shift``: input
    channels the filter moves per roll (divides in_channels): 1 for a layer on the colour
    channels (a lifting layer), the previous rolling layer's ``filters`` for a layer on top of
    one, so that the network stays equivariant. ``rolls``: how many rolls,
    1 <= rolls <= in_channels // shift (default in_channels // shift). ``activation``: None
    or 'relu' (fused). ``algorithm``: 'auto' (the CPU's measured rule; timed and cached on
    CUDA, see ``rollconv.backends``), 'direct', 'bank' or 'fft' ('fft' needs
    rolls == in_channels // shift); see ``roll_conv2d``. It is a choice of computation, not
    part of the state_dict.

    Raises at construction, with the exception types ``torch.nn.Conv2d`` raises for the same
    mistakes: ValueError for an unknown padding string or padding_mode, padding='same' with
    a stride other than 1, a shift that does not divide in_channels, rolls outside
    [1, in_channels // shift], 'fft' with fewer rolls, or an
    unknown activation or algorithm; RuntimeError for non-positive in_channels, filters,
    kernel_size, stride or dilation and negative padding (torch.nn.Conv2d reports those
    as RuntimeError, at its first forward); TypeError for sizes that are not ints or pairs.
    """

    def __init__(
        self,
        in_channels,
        filters,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        bias=True,
        rolls=None,
        activation=None,
        algorithm="auto",
        shift=1,
        padding_mode="zeros",
        device=None,
        dtype=None,
    ):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("filters", filters)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, but got {value!r}")
            if value < 1:
                raise RuntimeError(f"{name} must be positive, but got {value}")
        if isinstance(shift, bool) or not isinstance(shift, int):
            raise TypeError(f"shift must be an int, but got {shift!r}")
        if shift < 1 or in_channels % shift:
            raise ValueError(f"shift must be a positive divisor of in_channels={in_channels}, but got {shift}")
        blocks = in_channels // shift
        rolls = blocks if rolls is None else rolls
        if isinstance(rolls, bool) or not isinstance(rolls, int):
            raise TypeError(f"rolls must be an int or None, but got {rolls!r}")
        if not 1 <= rolls <= blocks:
            raise ValueError(f"rolls must be in [1, in_channels // shift = {blocks}], but got {rolls}")
        if activation not in (None, "relu"):
            raise ValueError(f"activation must be None or 'relu', but got {activation!r}")
        if algorithm not in F.ROLL_ALGORITHMS:
            raise ValueError(f"algorithm must be one of {F.ROLL_ALGORITHMS}, but got {algorithm!r}")
        if algorithm == "fft" and rolls != blocks:
            raise ValueError(f"algorithm='fft' needs rolls == in_channels // shift ({blocks}), but got rolls={rolls}")
        kernel_size = tuple(F._pair(kernel_size, "kernel_size"))
        stride = tuple(F._pair(stride, "stride"))
        dilation = tuple(F._pair(dilation, "dilation"))
        for name, value in (("kernel_size", kernel_size), ("stride", stride), ("dilation", dilation)):
            if min(value) < 1:
                raise RuntimeError(f"{name} must be positive, but got {value}")
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"Invalid padding string {padding!r}, should be one of {{'same', 'valid'}}")
            if padding == "same" and stride != (1, 1):
                raise ValueError("padding='same' is not supported for strided convolutions")
        else:
            padding = tuple(F._pair(padding, "padding"))
            if min(padding) < 0:
                raise RuntimeError(f"padding must be non-negative, but got {padding}")
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, but got padding_mode={padding_mode!r}")
        self.in_channels, self.filters, self.rolls, self.shift = in_channels, filters, rolls, shift
        self.out_channels = rolls * filters
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, dilation
        self.padding_mode = padding_mode
        self.activation = activation
        self.algorithm = algorithm
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty((filters, in_channels, *kernel_size), **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(filters, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def __setstate__(self, state):
        super().__setstate__(state)
        if not hasattr(self, "padding_mode"):  # pickled before padding_mode existed
            self.padding_mode = "zeros"
        if not hasattr(self, "shift"):  # pickled before shift existed
            self.shift = 1

    def reset_parameters(self):
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def _explicit_padding(self):
        """Padding as (left, right, top, bottom) for torch.nn.functional.pad, as torch.nn.Conv2d
        computes it for non-zero padding modes ('same': the odd pixel goes right/bottom)."""
        if self.padding == "valid":
            return [0, 0, 0, 0]
        if self.padding == "same":
            total = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size)]
            return [total[1] // 2, total[1] - total[1] // 2, total[0] // 2, total[0] - total[0] // 2]
        return [self.padding[1], self.padding[1], self.padding[0], self.padding[0]]

    def forward(self, input):
        padding = self.padding
        if self.padding_mode != "zeros":
            input = nn.functional.pad(input, self._explicit_padding(), mode=self.padding_mode)
            padding = 0
        return F.roll_conv2d(
            input, self.weight, self.bias, self.stride, padding, self.dilation, self.rolls, self.activation, self.algorithm,
            self.shift,
        )

    def filter_bank(self):
        """The expanded (rolls * filters, in_channels, kh, kw) bank: roll r of every filter
        (``rollconv.reference.filter_bank``)."""
        return reference.filter_bank(self.weight, self.rolls, self.shift)

    def to_conv2d(self):
        """An equivalent plain ``torch.nn.Conv2d`` (bank expanded, bias repeated per roll),
        followed by ``torch.nn.ReLU`` in an ``nn.Sequential`` when activation='relu'."""
        conv = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            bias=self.bias is not None,
            padding_mode=self.padding_mode,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )
        with torch.no_grad():
            conv.weight.copy_(self.filter_bank())
            if self.bias is not None:
                conv.bias.copy_(self.bias.repeat(self.rolls))
        return nn.Sequential(conv, nn.ReLU()) if self.activation == "relu" else conv

    def extra_repr(self):
        text = (
            f"{self.in_channels}, {self.filters}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"rolls={self.rolls} (out_channels={self.out_channels})"
        )
        if self.shift != 1:
            text += f", shift={self.shift}"
        if self.padding not in ((0, 0), "valid"):
            text += f", padding={self.padding!r}"
        if self.dilation != (1, 1):
            text += f", dilation={self.dilation}"
        if self.bias is None:
            text += ", bias=False"
        if self.padding_mode != "zeros":
            text += f", padding_mode={self.padding_mode!r}"
        if self.activation:
            text += f", activation={self.activation!r}"
        if self.algorithm != "auto":
            text += f", algorithm={self.algorithm!r}"
        return text


class RollPool(nn.Module):
    """The invariant read-out of a rolling network (see ``rollconv.functional.roll_pool``):
    (N, rolls * F, *) -> (N, F, *), the max (mode='max') or mean (mode='mean') over the
    roll axis of roll-major channels. No parameters."""

    def __init__(self, rolls, mode="max"):
        super().__init__()
        if isinstance(rolls, bool) or not isinstance(rolls, int) or rolls < 1:
            raise ValueError(f"rolls must be a positive int, but got {rolls!r}")
        if mode not in ("max", "mean"):
            raise ValueError(f"mode must be 'max' or 'mean', but got {mode!r}")
        self.rolls, self.mode = rolls, mode

    def forward(self, input):
        return F.roll_pool(input, self.rolls, self.mode)

    def extra_repr(self):
        return f"rolls={self.rolls}, mode={self.mode!r}"
