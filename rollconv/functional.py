"""Functional API, mirroring ``torch.nn.functional`` argument forms.

Each function normalizes its arguments (ints or pairs, string padding, unbatched
input) and calls one ``torch.ops.rollconv`` op; kernels, autograd and validation are
the op's. Like ``torch.nn.functional``, each function defers to ``__torch_function__``
overrides of its tensor arguments (``torch.overrides``), so ``torch.fx.symbolic_trace``
records it as one call_function node and tensor subclasses and modes see it.
"""
import torch
from torch.overrides import handle_torch_function, has_torch_function_unary, has_torch_function_variadic

from . import backends

ops = torch.ops.rollconv

__all__ = [
    "ArgumentError",
    "conv2d",
    "conv_transpose2d",
    "roll_conv2d",
    "roll",
    "roll_pool",
    "max_pool2d",
    "local_response_norm",
]


class ArgumentError(ValueError, RuntimeError):
    """An argument rollconv cannot accept (a wrong rank, shape, dtype or geometry).

    A subclass of both ValueError and RuntimeError: code written for torch.nn.functional,
    which raises RuntimeError for such arguments, catches it, and so does code that expects
    Python's ValueError. (The ops' own checks, in C++, raise RuntimeError.)
    """


def _pair(value, name):
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a pair of ints, but got {value!r}")
    if isinstance(value, int):
        return [value, value]
    if isinstance(value, (tuple, list, torch.Size)) and len(value) in (1, 2) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        return [int(value[0]), int(value[-1])]
    raise TypeError(f"{name} must be an int or a pair of ints, but got {value!r}")


def _batched(input, name="input"):
    """Accept (C, H, W) like torch.nn.functional: returns the 4-D input and whether to squeeze."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"{name} must be a Tensor, but got {type(input).__name__}")
    if input.dim() == 3:
        return input.unsqueeze(0), True
    if input.dim() != 4:
        raise ArgumentError(f"expected {name} to be 3-D (C, H, W) or 4-D (N, C, H, W), but got shape {tuple(input.shape)}")
    return input, False


def _check_weight(weight, layout):
    """weight must be a 4-D tensor; `layout` names its dims for the message."""
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a Tensor, but got {type(weight).__name__}")
    if weight.dim() != 4:
        raise ArgumentError(f"expected weight to be a 4-D tensor {layout}, but got shape {tuple(weight.shape)}")


def _padding_args(input, weight, padding, stride, dilation):
    """Resolve padding (int, pair, 'valid' or 'same') to symmetric padding, padding the
    input first when 'same' needs one more row/column on the bottom/right (as torch does)."""
    if not isinstance(padding, str):
        return input, _pair(padding, "padding")
    if padding == "valid":
        return input, [0, 0]
    if padding != "same":
        raise ArgumentError(f"padding must be an int, a pair of ints, 'valid' or 'same', but got {padding!r}")
    if stride != [1, 1]:
        raise ArgumentError("padding='same' is not supported for strided convolutions")
    total = [dilation[i] * (weight.shape[2 + i] - 1) for i in (0, 1)]
    extra = [t % 2 for t in total]
    if any(extra):
        input = torch.nn.functional.pad(input, [0, extra[1], 0, extra[0]])
    return input, [t // 2 for t in total]


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D convolution by im2col + GEMM, same arguments as ``torch.nn.functional.conv2d``.

    input (N, C, H, W) or (C, H, W); weight (C_out, C / groups, kh, kw); bias (C_out,).
    padding: int, pair, 'valid' or 'same'. Dtypes: float32, float64, float16, bfloat16 (all
    operands alike). float16/bfloat16 use float32 arithmetic: on CPU the operands are
    converted to float32 and the result rounded back, on CUDA cuBLAS accumulates in float32.
    Under ``torch.autocast`` input, weight and bias are cast to the autocast dtype, as for
    ``torch.nn.functional.conv2d`` (the same holds for every convolution here).
    The output is channels_last when input or weight is (torch's rule). With no input
    channels the output is the bias over every pixel (torch returns no channels there).

    Raises ArgumentError (a RuntimeError and ValueError) for a wrong rank or padding string,
    TypeError for non-tensor or non-int arguments, RuntimeError from the op for wrong shapes,
    dtypes, devices or geometry.
    """
    if has_torch_function_variadic(input, weight, bias):
        return handle_torch_function(
            conv2d, (input, weight, bias), input, weight, bias, stride=stride, padding=padding, dilation=dilation, groups=groups
        )
    x, squeeze = _batched(input)
    _check_weight(weight, "(C_out, C / groups, kh, kw)")
    stride, dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
    x, padding = _padding_args(x, weight, padding, stride, dilation)
    out = ops.conv2d_forward(x, weight, bias, stride, padding, dilation, int(groups))
    return out.squeeze(0) if squeeze else out


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """Transposed convolution, same arguments as ``torch.nn.functional.conv_transpose2d``.

    It is conv2d's input-gradient pass (``conv2d_backward_input``): weight has shape
    (C_in, C_out / groups, kh, kw); its gradients are conv2d's forward and weight passes.
    Dtypes and autocast: as conv2d.
    """
    if has_torch_function_variadic(input, weight, bias):
        return handle_torch_function(
            conv_transpose2d, (input, weight, bias), input, weight, bias, stride=stride, padding=padding,
            output_padding=output_padding, groups=groups, dilation=dilation,
        )
    x, squeeze = _batched(input)
    stride, padding = _pair(stride, "stride"), _pair(padding, "padding")
    dilation, output_padding = _pair(dilation, "dilation"), _pair(output_padding, "output_padding")
    _check_weight(weight, "(C_in, C_out / groups, kh, kw)")
    # Checked here because the output size below divides by them; the op checks the rest.
    if min(stride) <= 0 or min(dilation) <= 0:
        raise ArgumentError(f"stride and dilation must be positive, but got stride={tuple(stride)}, dilation={tuple(dilation)}")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups <= 0:
        raise ArgumentError(f"groups must be a positive int, but got {groups!r}")
    if x.shape[1] != weight.shape[0]:
        raise ArgumentError(
            f"expected input with weight.shape[0] = {weight.shape[0]} channels, but got {x.shape[1]} channels"
        )
    if weight.shape[0] % groups != 0:
        raise ArgumentError(f"groups={groups} must divide weight.shape[0] = {weight.shape[0]}")
    if x.shape[0] > 0 and x.shape[1] > 0 and min(x.shape[2:]) == 0:  # as conv2d and torch
        raise ArgumentError(
            f"expected input with non-zero height and width (only a zero batch or zero channels may leave "
            f"it empty), but got shape {tuple(x.shape)}"
        )
    out_channels = weight.shape[1] * groups
    if bias is not None:
        if not isinstance(bias, torch.Tensor):
            raise TypeError(f"bias must be a Tensor or None, but got {type(bias).__name__}")
        if bias.shape != (out_channels,):
            raise ArgumentError(f"expected bias of shape ({out_channels},), but got {tuple(bias.shape)}")
        # Under autocast both are cast to the autocast dtype (below), as torch casts them.
        if backends.compute_dtype(bias) != backends.compute_dtype(x) or bias.device != x.device:
            raise ArgumentError(
                f"expected bias with the input's dtype and device ({x.dtype}, {x.device}), but got ({bias.dtype}, {bias.device})"
            )
    for i in (0, 1):
        if output_padding[i] < 0 or (output_padding[i] >= stride[i] and output_padding[i] >= dilation[i]):
            raise ArgumentError(
                f"output_padding must be non-negative and smaller than either stride or dilation, "
                f"but got output_padding={tuple(output_padding)}, stride={tuple(stride)}, dilation={tuple(dilation)}"
            )
    out_hw = [
        (x.shape[2 + i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (weight.shape[2 + i] - 1) + output_padding[i] + 1
        for i in (0, 1)
    ]
    if min(out_hw) < 0 or (min(out_hw) == 0 and x.numel() > 0):
        raise ArgumentError(f"conv_transpose2d: the output would be empty ({out_hw[0]} x {out_hw[1]})")
    if min(out_hw) == 0:  # an empty batch or no channels, as torch: an empty result
        out = x.new_zeros((x.shape[0], out_channels, *out_hw))
        return out.squeeze(0) if squeeze else out
    # With output_padding >= stride (allowed when < dilation) the matching convolution has
    # more output rows than x: they receive zeros.
    conv_hw = [(out_hw[i] + 2 * padding[i] - dilation[i] * (weight.shape[2 + i] - 1) - 1) // stride[i] + 1 for i in (0, 1)]
    if conv_hw != list(x.shape[2:]):
        x = torch.nn.functional.pad(x, [0, conv_hw[1] - x.shape[3], 0, conv_hw[0] - x.shape[2]])
    if torch.jit.is_tracing():
        # The tracer hands out sizes as tensors, which a SymInt[] argument rejects; an int[]
        # argument used to turn them into the same constants.
        out_hw = [int(v) for v in out_hw]
    out = ops.conv2d_backward_input(x, weight, out_hw, stride, padding, dilation, int(groups))
    if bias is not None:
        # The op casts x and weight under autocast; the bias follows, as torch's does.
        out = out + bias.to(backends.compute_dtype(bias)).view(1, -1, 1, 1)
    return out.squeeze(0) if squeeze else out


ROLL_ALGORITHMS = ("auto", "direct", "bank", "fft")


#: Off the CPU, where nothing is timed, the rule picks the channel-FFT algorithm from this many
#: channels on (with rolls == C).
FFT_MIN_CHANNELS = 48
#: On the CPU with rolls == C, 'auto' picks 'direct' over 'fft' for at most this many
#: channels (where neither is faster in every mode: measured in the README, "Choosing the
#: rolling-convolution algorithm"; from C = 3, an RGB lifting layer, 'fft' is).
DIRECT_MAX_CHANNELS = 2
#: shift > 1 on the CPU: 'fft' with rolls == C // shift >= SHIFTED_FFT_MIN_BLOCKS, else
#: 'direct' for at most SHIFTED_DIRECT_MAX_ROLLS rolls, else 'bank'.
SHIFTED_FFT_MIN_BLOCKS = 32
SHIFTED_DIRECT_MAX_ROLLS = 6


def choose_roll_algorithm(input, weight, rolls, stride, dilation, dtype=None, shift=1):
    """The rule for roll_conv2d's ``algorithm='auto'`` where nothing is timed (see
    ``rollconv.backends``: by default the CPU; everywhere with ``backends.benchmark = False``).

    dtype is the dtype the op computes in (default ``input.dtype``; under ``torch.autocast``
    the autocast dtype, ``rollconv.backends.compute_dtype``).

    On the CPU (float32/float64), a rule measured there (fwd+bwd with ReLU, float32, side by
    side in one process; the figures and machines are in the README, "Choosing the
    rolling-convolution algorithm"):
    - shift == 1, rolls == C: 'fft' (the fused channel-FFT engine), except 'direct' when
      C <= DIRECT_MAX_CHANNELS;
    - shift == 1, fewer rolls: 'direct' when C <= 4 and F >= 32, else 'bank';
    - shift > 1 (G = C // shift blocks): 'fft' when rolls == G >= SHIFTED_FFT_MIN_BLOCKS,
      else 'direct' for rolls <= SHIFTED_DIRECT_MAX_ROLLS, else 'bank'.
    CPU float16/bfloat16 (also under ``torch.autocast``): the same rule, since every
    algorithm then runs the float32 engines on converted operands, a conversion that costs
    the same whichever algorithm runs. The rule assumes the CPU engines are on (not
    ROLLCONV_CPU_ENGINE=0).
    Off the CPU the rule is a fallback, not a measurement (by default CUDA times the
    candidates instead): 'fft' when rolls == C // shift >= FFT_MIN_CHANNELS, else 'bank';
    float16/bfloat16 (the dtype after autocast's cast): 'bank' (cuDNN in that dtype; 'fft'
    would compute in float32). Override with algorithm='direct' | 'bank' | 'fft'.
    """
    channels, filters = input.shape[1], weight.shape[0]
    dtype = backends.compute_dtype(input) if dtype is None else dtype
    on_cpu = input.device.type == "cpu"
    if not on_cpu and dtype not in (torch.float32, torch.float64):
        return "bank"
    if shift > 1:
        return _choose_shifted(channels, filters, rolls, shift, on_cpu)
    if rolls == channels:
        if not on_cpu:
            return "fft" if channels >= FFT_MIN_CHANNELS else "bank"
        return "direct" if channels <= DIRECT_MAX_CHANNELS else "fft"
    if on_cpu and channels <= 4 and filters >= 32:
        return "direct"
    return "bank"


def _choose_shifted(channels, filters, rolls, shift, on_cpu):
    """'auto' for shift > 1, float32/float64 (see choose_roll_algorithm)."""
    every_roll = rolls * shift == channels
    if not on_cpu:
        return "fft" if every_roll and rolls >= FFT_MIN_CHANNELS else "bank"
    if every_roll and rolls >= SHIFTED_FFT_MIN_BLOCKS:
        return "fft"
    return "direct" if rolls <= SHIFTED_DIRECT_MAX_ROLLS else "bank"


def _auto_algorithm(x, weight, bias, stride, padding, dilation, rolls, shift, relu):
    """'auto': the rule, or the timed choice where rollconv.backends times (see there)."""
    dtype = backends.compute_dtype(x)
    rule = choose_roll_algorithm(x, weight, rolls, stride, dilation, dtype=dtype, shift=shift)
    return backends.roll_conv2d_algorithm(rule, x, weight, bias, stride, padding, dilation, rolls, shift, relu, dtype)


def roll_conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, rolls=None, activation=None, algorithm="auto",
                shift=1):
    """Rolling-filter convolution: a bank of ``rolls * F`` filters made by cyclically
    rolling each base filter along the input-channel axis, computed without building it.

    input (N, C, H, W) or (C, H, W); weight (F, C, kh, kw); bias (F,), shared across rolls.
    Roll r moves the filter by ``r * shift`` channels; output channel ``r * F + f``
    (roll-major) is::

        y[n, r*F + f] = sum_c conv(x[n, (c + r*shift) mod C], w[f, c])  (+ bias[f])

    i.e. ``conv2d(x, cat([roll(w, r*shift, dims=1) for r in range(rolls)]))``
    (``rollconv.reference.roll_conv2d``). shift must divide C; rolls defaults to
    C // shift (any 1 <= rolls <= C // shift); activation is None or 'relu' (fused). With
    rolls == C // shift, rolling x's channels by ``shift`` rolls the output's blocks of F
    channels by one: shift=1 for a first layer over the colour channels, shift = F of the
    previous rolling layer for the layers on top of it (whose input is roll-major).

    algorithm: 'direct' computes every roll as a row window of one im2col of x (the bank is
    never built; on CPU the GEMM engine reads x in place, on CUDA cuBLAS GEMMs); 'bank' expands the bank inside the op and calls
    ATen's convolution (oneDNN on CPU, cuDNN on CUDA), folding dK back in the op; 'fft'
    (rolls == C // shift) diagonalizes the circulant bank with a real FFT over the
    channels: C/2 + 1 small complex convolutions (shift > 1: the bank is block-circulant,
    the FFT runs over the G = C // shift blocks of ``shift`` channels and leaves G/2 + 1
    complex convolutions with ``shift`` inputs each). All are exact (same math, float
    rounding aside).

    Dtypes: float32, float64, float16, bfloat16 with every algorithm (float16/bfloat16 in
    float32 arithmetic: on CPU the float32 engines run on converted operands, on CUDA
    'direct' and 'bank' accumulate in float32 and 'fft' transforms in float32). Under
    ``torch.autocast`` input, weight and bias are cast to the autocast dtype, as for
    ``torch.nn.functional.conv2d``; the output has that dtype whatever the algorithm.

    'auto' (default): on the CPU the measured rule ``choose_roll_algorithm``; on CUDA the
    first call with a new configuration (device, dtype, shapes, geometry, rolls, ReLU,
    gradients needed) times the candidates ('direct', 'bank', and 'fft' when rolls == C // shift in
    float32/float64) on fresh tensors and caches the fastest, as
    ``torch.backends.cudnn.benchmark`` does. ``rollconv.backends.benchmark`` (or the
    environment variable ``ROLLCONV_BENCHMARK``) turns the timing on for every device
    (True) or off (False: the rule decides everywhere). Under ``torch.compile`` the rule
    decides; under ``torch.export``, fake tensors and CUDA graph capture the cached choice
    or the rule (nothing is timed there). See ``rollconv.backends``.
    """
    if has_torch_function_variadic(input, weight, bias):
        return handle_torch_function(
            roll_conv2d, (input, weight, bias), input, weight, bias, stride=stride, padding=padding, dilation=dilation,
            rolls=rolls, activation=activation, algorithm=algorithm, shift=shift,
        )
    x, squeeze = _batched(input)
    if activation not in (None, "relu"):
        raise ArgumentError(f"activation must be None or 'relu', but got {activation!r}")
    if algorithm not in ROLL_ALGORITHMS:
        raise ArgumentError(f"algorithm must be one of {ROLL_ALGORITHMS}, but got {algorithm!r}")
    stride, dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
    _check_weight(weight, "(F, C, kh, kw)")
    if isinstance(shift, bool) or not isinstance(shift, int) or shift < 1:
        raise ArgumentError(f"shift must be a positive int, but got {shift!r}")
    rolls = x.shape[1] // shift if rolls is None else rolls
    if isinstance(rolls, bool) or not isinstance(rolls, int):
        raise TypeError(f"rolls must be an int or None, but got {rolls!r}")
    x, padding = _padding_args(x, weight, padding, stride, dilation)
    if algorithm == "auto":
        algorithm = _auto_algorithm(x, weight, bias, stride, padding, dilation, rolls, shift, activation == "relu")
    out = ops.roll_conv2d_forward(
        x, weight, bias, stride, padding, dilation, rolls, shift, algorithm, activation == "relu"
    )
    return out.squeeze(0) if squeeze else out


def roll(input, weight, stride=1, padding=0):
    """``roll(input, weight, stride, padding)`` of the notebook the project grew from, kept
    under its name: ReLU of the convolution with all C rolls of ``weight``, as one fused op
    (``roll_conv2d(..., activation='relu')``)."""
    return roll_conv2d(input, weight, None, stride, padding, activation="relu")


def roll_pool(input, rolls, mode="max"):
    """The invariant read-out of a rolling network: the max or mean over the roll axis.

    input (N, rolls * F, *) with roll-major channels (channel ``r * F + f``, as
    ``roll_conv2d`` writes them) -> (N, F, *): ``input.view(N, rolls, F, *)`` reduced over
    dim 1. Rolling the input's blocks of F channels (which is what rolling a rolling
    layer's input does to its output, rolls == C // shift) leaves the result unchanged.
    mode: 'max' (the gradient of tied maxima is shared evenly, as ``torch.amax``) or 'mean'.
    Raises ArgumentError (a ValueError and RuntimeError) when input has fewer than 2 dims or
    rolls does not divide dim 1, or for an unknown mode.
    """
    if has_torch_function_unary(input):
        return handle_torch_function(roll_pool, (input,), input, rolls, mode=mode)
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input must be a Tensor, but got {type(input).__name__}")
    if isinstance(rolls, bool) or not isinstance(rolls, int) or rolls < 1:
        raise ArgumentError(f"rolls must be a positive int, but got {rolls!r}")
    if mode not in ("max", "mean"):
        raise ArgumentError(f"mode must be 'max' or 'mean', but got {mode!r}")
    if input.dim() < 2 or input.shape[1] % rolls:
        raise ArgumentError(
            f"expected input of shape (N, rolls * F, *) with rolls={rolls} dividing dim 1, but got shape {tuple(input.shape)}"
        )
    blocks = input.unflatten(1, (rolls, input.shape[1] // rolls))
    return blocks.amax(dim=1) if mode == "max" else blocks.mean(dim=1)


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    """2-D max pooling, same arguments and results as ``torch.nn.functional.max_pool2d``.

    Padding counts as -inf, a NaN in a window is its maximum, and the gradient of a window
    goes to one element: the first maximum in row-major order (PyTorch's rule; the notebook's
    backward instead gave it to every element equal to the maximum). Dtypes: float32,
    float64, float16, bfloat16 (the gradient's sums in float32); under ``torch.autocast``
    it runs in the dtype it receives, as torch's pooling does.
    """
    if has_torch_function_unary(input):
        return handle_torch_function(
            max_pool2d, (input,), input, kernel_size, stride=stride, padding=padding, dilation=dilation,
            ceil_mode=ceil_mode, return_indices=return_indices,
        )
    x, squeeze = _batched(input)
    kernel_size = _pair(kernel_size, "kernel_size")
    stride = kernel_size if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0) else _pair(stride, "stride")
    out, indices = ops.max_pool2d_forward(
        x, kernel_size, stride, _pair(padding, "padding"), _pair(dilation, "dilation"), bool(ceil_mode)
    )
    if squeeze:
        out, indices = out.squeeze(0), indices.squeeze(0)
    return (out, indices) if return_indices else out


def local_response_norm(input, size, alpha=1e-4, beta=0.75, k=1.0):
    """Local response normalization across channels, as ``torch.nn.functional.local_response_norm``::

        y[:, c] = x[:, c] / (k + alpha / size * sum_{j=c-size//2}^{c+(size-1)//2} x[:, j]^2) ** beta

    for input of shape (N, C, *) with at least 3 dims. The backward is an analytic kernel.
    Dtypes: float32, float64, float16, bfloat16 (float16/bfloat16 computed in float32 per
    element); under ``torch.autocast`` it runs in the dtype it receives.
    """
    if has_torch_function_unary(input):
        return handle_torch_function(local_response_norm, (input,), input, size, alpha=alpha, beta=beta, k=k)
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input must be a Tensor, but got {type(input).__name__}")
    if input.dim() < 3:
        raise ArgumentError(f"expected input with at least 3 dimensions (N, C, *), but got shape {tuple(input.shape)}")
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"size must be an int, but got {size!r}")
    return ops.local_response_norm_forward(input, size, float(alpha), float(beta), float(k))
