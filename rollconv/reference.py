"""The filter-bank reference of the rolling-filter convolution, in plain torch ops.

This is the filter-bank method of the notebook the project grew from ("Rolling
Convolution Filters: Back Propagation Using PyTorch"): roll the base weight along its
input-channel axis, concatenate the rolled copies along the output axis, and run one
``torch.nn.functional.conv2d`` (then ReLU). The notebook rolls by one channel, ``C`` times;
here roll ``r`` moves the filter by ``r * shift`` channels, for ``r < rolls``::

    w: (F, C, kh, kw)      x: (N, C, H, W)      G = C // shift
    bank[r*F + f, c]  = w[f, (c - r*shift) mod C]                       r = 0 .. rolls-1
    y[n, r*F + f]     = sum_c x[n, (c + r*shift) mod C] (*) w[f, c]  (+ bias[f])

Output channels are roll-major (``r*F + f``), in the order ``torch.cat`` produces them.
With ``rolls == G``, rolling x's channels by ``shift`` rolls y's blocks of F channels by
one. It materializes the bank (``rolls * F`` filters): the library's ops compute the same
without it; this module is what they are tested against, and what to compare them with.
Autograd differentiates it as it differentiates any torch code.
"""
import torch
import torch.nn.functional as F

__all__ = ["filter_bank", "roll_conv2d"]


def filter_bank(weight, rolls=None, shift=1):
    """The expanded bank ``cat([roll(weight, r * shift, dims=1) for r in range(rolls)])``.

    weight (F, C, kh, kw) -> (rolls * F, C, kh, kw); rolls defaults to C // shift.
    Raises ValueError unless shift divides C and 1 <= rolls <= C // shift.
    """
    channels = weight.shape[1]
    if isinstance(shift, bool) or not isinstance(shift, int) or shift < 1 or channels % shift:
        raise ValueError(f"shift must be a positive divisor of the input channels ({channels}), but got {shift!r}")
    rolls = channels // shift if rolls is None else rolls
    if not 1 <= rolls <= channels // shift:
        raise ValueError(f"rolls must be in [1, {channels // shift}] (C // shift), but got {rolls}")
    return torch.cat([torch.roll(weight, shifts=r * shift, dims=1) for r in range(rolls)], dim=0)


def roll_conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, rolls=None, shift=1, activation=None):
    """``conv2d(input, filter_bank(weight, rolls, shift), bias.repeat(rolls))``, then ReLU
    when activation='relu': the rolling-filter convolution by the filter-bank method.

    input (N, C, H, W) or (C, H, W); weight (F, C, kh, kw); bias (F,) or None, shared by
    the rolls; stride, padding, dilation as ``torch.nn.functional.conv2d`` takes them.
    Returns (N, rolls * F, H_out, W_out), roll-major.
    """
    if activation not in (None, "relu"):
        raise ValueError(f"activation must be None or 'relu', but got {activation!r}")
    rolls = weight.shape[1] // shift if rolls is None else rolls
    bank = filter_bank(weight, rolls, shift)
    y = F.conv2d(input, bank, None if bias is None else bias.repeat(rolls), stride, padding, dilation)
    return F.relu(y) if activation == "relu" else y
