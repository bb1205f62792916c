"""Run-time choice of the rolling-convolution algorithm, as ``torch.backends.cudnn.benchmark``.

``roll_conv2d(..., algorithm='auto')`` picks among ``'direct'``, ``'bank'`` and ``'fft'``.
On the CPU a rule measured on the project's machines decides
(``rollconv.functional.choose_roll_algorithm``). On a device without such a rule (CUDA),
the first call with a new configuration times the candidate algorithms on that device and
caches the fastest; later calls with the same configuration use the cached choice.

``benchmark`` (this module's attribute) switches the timing:

- ``None`` (default): time where no measured rule exists, i.e. off the CPU;
- ``True``: time on every device, the CPU included;
- ``False``: never time; the rule decides everywhere.

Its default comes from the environment variable ``ROLLCONV_BENCHMARK``, read once when
rollconv is imported: ``1``/``true``/``on``/``yes`` for ``True``, ``0``/``false``/``off``/``no``
for ``False``, unset, empty or ``auto`` for ``None``. Set it at run time with
``rollconv.backends.benchmark = True`` or for a block with ``with rollconv.backends.flags(benchmark=True):``.

What is timed: the forward pass, plus the backward that autograd will run (the combined
backward op when both the input and the weight need gradients, else the one pass needed;
nothing when grad mode is off), on fresh
tensors of the same shapes, dtype, memory format and device (the caller's tensors, their
autograd state and the global random number generator are not touched). Each candidate
runs once to warm up (plans, handles, lazy initialization), then up to five interleaved
rounds, synchronizing the device around each run; the fastest median wins. A candidate that
fails (out of memory, unsupported configuration) is dropped; if all fail, the rule's choice
is cached and the call itself reports the error, if any.

The cache key (``Key``): device, the dtype the op computes in (the autocast dtype under
``torch.autocast``), input and weight shapes, input memory format, bias or not, stride,
padding, dilation, rolls, shift, the fused ReLU, and which gradients are needed. The cache is
shared by all threads (a lock serializes timing) and lives until ``clear_cache()``.

Where timing is impossible or would be traced, the cached choice is used if there is one,
else the rule: fake and meta tensors, tensor subclasses, ``torch.func`` transforms, active
dispatch modes (``FakeTensorMode``, ``make_fx``), non-strict ``torch.export`` (which runs
this code on fake tensors; symbolic shapes have no cache entry), ``torch.jit.trace`` and
CUDA graph capture
(``torch.cuda.graph``: a capturing stream cannot synchronize). While ``torch.compile``
(Dynamo) traces, the rule alone decides: a cache lookup there would specialize the graph
to the traced sizes (a recompilation per batch size). Every algorithm computes the same
convolution, so the choice changes results only by float rounding.

The CPU engines' switches (``flags``, ``set_flags``, ``get_flags``): ``cpu_engine`` (the
CPU's fused convolution engines on, or off: then the CPU takes the composed path CUDA
takes, im2col + ATen GEMMs and ATen FFTs around the per-frequency primitives),
``workspace_mb`` (that path's workspace per call) and ``gemm_isa`` (the CPU engines' vector
code). Each starts from its environment variable, read once when rollconv is imported:
``ROLLCONV_CPU_ENGINE`` (``0``: off), ``ROLLCONV_WORKSPACE_MB`` (default: 16 on the CPU,
128 on CUDA) and
``ROLLCONV_GEMM_ISA`` (``portable``, ``avx2`` or ``avx512``; default the best the CPU has).
"""
import contextlib
import logging
import os
import statistics
import threading
import time
import warnings
from typing import NamedTuple, Optional, Tuple

import torch

from . import _C

__all__ = ["benchmark", "flags", "set_flags", "get_flags", "clear_cache", "cached_algorithms", "Key"]

_log = logging.getLogger(__name__)

_TRUE = ("1", "true", "on", "yes")
_FALSE = ("0", "false", "off", "no")


def _from_environment(value):
    """The value of ``benchmark`` that the text of ROLLCONV_BENCHMARK stands for."""
    text = (value or "").strip().lower()
    if text in ("", "auto", "none"):
        return None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    warnings.warn(
        f"ROLLCONV_BENCHMARK={value!r} is not understood (expected 1/true/on/yes, 0/false/off/no, "
        f"or auto); using the default (time the algorithms off the CPU only)",
        stacklevel=2,
    )
    return None


#: None: time off the CPU only; True: time on every device; False: never (the rule decides).
benchmark: Optional[bool] = _from_environment(os.environ.get("ROLLCONV_BENCHMARK"))

#: Timed rounds per candidate (each a median's sample), and the time after which no new
#: round starts (the warm-up and at least one round always run).
ROUNDS = 5
ROUND_BUDGET_S = 0.5


class Key(NamedTuple):
    """What a cached choice depends on (sizes and geometry as plain ints)."""

    device: str
    dtype: torch.dtype
    input_shape: Tuple[int, ...]
    weight_shape: Tuple[int, ...]
    channels_last: bool
    bias: bool
    stride: Tuple[int, ...]
    padding: Tuple[int, ...]
    dilation: Tuple[int, ...]
    rolls: int
    shift: int
    relu: bool
    grad_input: bool
    grad_weight: bool


_cache = {}
_lock = threading.Lock()


def clear_cache():
    """Forget every timed choice (the next call of each configuration times again)."""
    with _lock:
        _cache.clear()


def cached_algorithms():
    """A copy of the cache: ``{Key: algorithm}``."""
    with _lock:
        return dict(_cache)


_KEEP = object()  # a switch left as it is
_MAX_WORKSPACE_MB = _C.max_workspace_mb  # the library's bound: the most whose bytes fit an int64


def _valid_workspace_mb(value):
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_WORKSPACE_MB


# The library read ROLLCONV_WORKSPACE_MB when it loaded (csrc/settings.cpp); it says whether
# it had to ignore the text.
if _C.workspace_environment_rejected():
    warnings.warn(f"ROLLCONV_WORKSPACE_MB={os.environ.get('ROLLCONV_WORKSPACE_MB')!r} is not a whole number of MiB "
                  f"from 0 to {_MAX_WORKSPACE_MB}; using the defaults (16 MiB on the CPU, 128 MiB on CUDA)",
                  stacklevel=2)
_GEMM_ISAS = ("portable", "avx2", "avx512")


def get_flags():
    """The run-time switches, as a dict:

    - ``benchmark``: this module's attribute (see the module's doc);
    - ``cpu_engine`` (bool): whether the CPU's fused engines run;
    - ``workspace_mb`` (int or None): the composed path's workspace per call, in MiB, on
      every device; ``None``: each device's default, 16 MiB on the CPU (larger blocks are
      fresh mmaps whose page faults cost as much as the im2col) and 128 MiB on CUDA (there
      each chunk's launches cost: on an H200 128 MiB ran 'direct' 1.6-2.8x and conv2d
      1.1-1.8x faster than 16; ``bench/gpu_check_h200.md``);
    - ``gemm_isa`` (str): the CPU engines' vector code, ``'portable'``, ``'avx2'`` or
      ``'avx512'``; ``None`` in a build without CPU engines (the emulated CUDA build).

    Raises RuntimeError if ``ROLLCONV_GEMM_ISA`` named an ISA this CPU lacks or none at all.
    """
    return {
        "benchmark": benchmark,
        "cpu_engine": bool(_C.engines_enabled()),
        "workspace_mb": None if _C.workspace_bytes() < 0 else _C.workspace_bytes() >> 20,
        "gemm_isa": _C.gemm_isa() if hasattr(_C, "gemm_isa") else None,
    }


def set_flags(benchmark=_KEEP, *, cpu_engine=_KEEP, workspace_mb=_KEEP, gemm_isa=_KEEP):
    """Set the switches given (see ``get_flags``); return the previous values of those, as a
    dict ``set_flags(**previous)`` restores. Raises ValueError for a ``workspace_mb`` that
    is not a non-negative int or None, or an unknown ``gemm_isa``, RuntimeError for an ISA this CPU (or this
    build) lacks; nothing is changed then."""
    if workspace_mb is not _KEEP and workspace_mb is not None and not _valid_workspace_mb(workspace_mb):
        raise ValueError(f"workspace_mb must be an int from 0 to {_MAX_WORKSPACE_MB} (MiB) or None (the default), "
                         f"but got {workspace_mb!r}")
    if gemm_isa is not _KEEP:
        if gemm_isa not in _GEMM_ISAS:
            raise ValueError(f"gemm_isa must be one of {_GEMM_ISAS}, but got {gemm_isa!r}")
        if not hasattr(_C, "set_gemm_isa"):
            raise RuntimeError("this rollconv build has no CPU engines (emulated CUDA build): gemm_isa cannot be set")
    current = get_flags()
    previous = {}
    if gemm_isa is not _KEEP:
        _C.set_gemm_isa(gemm_isa)  # first: the one that can still fail (an ISA this CPU lacks)
        previous["gemm_isa"] = current["gemm_isa"]
    if benchmark is not _KEEP:
        globals()["benchmark"] = benchmark
        previous["benchmark"] = current["benchmark"]
    if cpu_engine is not _KEEP:
        _C.set_engines_enabled(bool(cpu_engine))
        previous["cpu_engine"] = current["cpu_engine"]
    if workspace_mb is not _KEEP:
        _C.set_workspace_bytes(-1 if workspace_mb is None else workspace_mb << 20)
        previous["workspace_mb"] = current["workspace_mb"]
    return previous


@contextlib.contextmanager
def flags(benchmark=_KEEP, *, cpu_engine=_KEEP, workspace_mb=_KEEP, gemm_isa=_KEEP):
    """Set the switches given (``set_flags``) inside a ``with`` block; restored after it.
    E.g. ``with rollconv.backends.flags(cpu_engine=False): ...`` runs the block's CPU
    convolutions on the composed path CUDA takes."""
    previous = set_flags(benchmark, cpu_engine=cpu_engine, workspace_mb=workspace_mb, gemm_isa=gemm_isa)
    try:
        yield
    finally:
        set_flags(**previous)


def compute_dtype(input):
    """The dtype roll_conv2d computes in: the input's, or under ``torch.autocast`` for the
    input's device the autocast dtype (which, as for torch's convolutions, replaces every
    floating dtype but float64)."""
    device_type = input.device.type
    if device_type not in ("cpu", "cuda") or not input.dtype.is_floating_point or input.dtype == torch.float64:
        return input.dtype  # meta tensors have no autocast state
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else input.dtype


def _dynamo_compiling():
    is_dynamo = getattr(torch.compiler, "is_dynamo_compiling", None) or torch.compiler.is_compiling
    return is_dynamo()


def _can_time(tensors):
    """Whether real kernels may run now on fresh copies of these tensors, outside any trace."""
    if torch.compiler.is_compiling():  # non-strict torch.export runs this code on fake tensors
        return False
    if torch.jit.is_tracing():  # the tracer would record the timing runs into the graph
        return False
    for t in tensors:
        if type(t) not in (torch.Tensor, torch.nn.Parameter) or t.device.type not in ("cpu", "cuda"):
            return False  # fake, meta and subclass tensors (FakeTensor, DTensor, ...)
        if torch._C._functorch.is_functorch_wrapped_tensor(t):
            return False  # vmap, grad, ...: sizes and randomness follow the transform
    if torch._C._len_torch_dispatch_stack() > 0:
        return False  # FakeTensorMode, make_fx's proxy mode, ...: they would record the timing
    if tensors[0].device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return False
    return True


def _key(input, weight, bias, stride, padding, dilation, rolls, shift, relu, dtype):
    sizes = (*input.shape, *weight.shape)
    if not all(type(s) is int for s in sizes):
        return None  # symbolic sizes (torch.export with dynamic shapes): nothing to look up
    grad = torch.is_grad_enabled()
    return Key(
        device=str(input.device),
        dtype=dtype,
        input_shape=tuple(input.shape),
        weight_shape=tuple(weight.shape),
        channels_last=input.dim() == 4 and not input.is_contiguous() and input.is_contiguous(memory_format=torch.channels_last),
        bias=bias is not None,
        stride=tuple(stride),
        padding=tuple(padding),
        dilation=tuple(dilation),
        rolls=int(rolls),
        shift=int(shift),
        relu=bool(relu),
        grad_input=grad and input.requires_grad,
        grad_weight=grad and weight.requires_grad,
    )


def candidates(key):
    """The algorithms timed for a configuration: 'direct' and 'bank', and 'fft' when every
    roll is taken (rolls == C // shift) in float32/float64."""
    names = ["direct", "bank"]
    if key.rolls * key.shift == key.input_shape[1] and key.dtype in (torch.float32, torch.float64):
        names.append("fft")
    return names


def roll_conv2d_algorithm(rule, input, weight, bias, stride, padding, dilation, rolls, shift, relu, dtype):
    """The algorithm roll_conv2d's 'auto' runs: ``rule`` (the measured rule's answer) where
    timing is off (``benchmark`` and the device, see the module's doc), else the cached or
    newly timed fastest candidate. input is the 4-D (padded) input the op receives."""
    if _dynamo_compiling():
        return rule
    setting = benchmark
    if setting is False or (setting is None and input.device.type == "cpu"):
        return rule
    key = _key(input, weight, bias, stride, padding, dilation, rolls, shift, relu, dtype)
    if key is None:
        return rule
    if not _can_time((input, weight) if bias is None else (input, weight, bias)):
        return _cache.get(key, rule)
    with _lock:
        choice = _cache.get(key)
        if choice is None:
            seconds = _time_algorithms(key, candidates(key))
            # If every candidate failed, the rule's choice is kept (not timed again); the
            # call itself then reports the error, if any.
            choice = min(seconds, key=seconds.get) if seconds else rule
            _cache[key] = choice
            _log.debug("rollconv.backends: %s -> %s (median seconds %s)", key, choice, seconds)
        return choice


def _time_algorithms(key, names):
    """Median seconds of each candidate's passes for `key` on fresh tensors; failing
    candidates are left out."""
    device = torch.device(key.device)
    generator = torch.Generator(device=device)
    generator.manual_seed(0)
    memory_format = torch.channels_last if key.channels_last else torch.contiguous_format

    def fresh(shape, memory_format=torch.contiguous_format):
        t = torch.empty(shape, dtype=key.dtype, device=device, memory_format=memory_format)
        return t.uniform_(-1, 1, generator=generator)

    n, c, h, w = key.input_shape
    f, _, kh, kw = key.weight_shape
    out_hw = [(size + 2 * p - d * (k - 1) - 1) // s + 1
              for size, k, s, p, d in zip((h, w), (kh, kw), key.stride, key.padding, key.dilation)]
    geometry = (list(key.stride), list(key.padding), list(key.dilation), key.rolls, key.shift)
    ops = torch.ops.rollconv
    from ._ops import uses_combined_backward  # (rollconv._ops imports nothing of this module)

    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        x, weight = fresh(key.input_shape, memory_format), fresh(key.weight_shape)
        bias = fresh((f,)) if key.bias else None
        grad_output = fresh((n, key.rolls * f, *out_hw)) if key.grad_input or key.grad_weight else None

        # The backward autograd runs: one op for both gradients, or the one pass needed.
        combined = uses_combined_backward((key.grad_input, key.grad_weight))
        output_mask = [key.grad_input, key.grad_weight, False]

        def passes(algorithm):
            def run():
                y = ops.roll_conv2d_forward(x, weight, bias, *geometry, algorithm, key.relu)
                if combined:
                    ops.roll_conv2d_backward(grad_output, x, weight, y if key.relu else None, *geometry, algorithm,
                                             output_mask)
                    return
                if key.grad_input:
                    ops.roll_conv2d_backward_input(grad_output, weight, [h, w], *geometry, algorithm)
                if key.grad_weight:
                    ops.roll_conv2d_backward_weight(grad_output, x, [kh, kw], *geometry, algorithm)
            return run

        return median_seconds({name: passes(name) for name in names}, device)


def _synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(runs, device, rounds=None, budget_s=None):
    """Median wall time of each of ``runs`` ({name: fn()}) on ``device``: one warm-up call
    each (a call that raises drops its candidate), then interleaved rounds (alternating
    order, so drifts of the machine hit every candidate alike), synchronizing the device
    before and after each call; no round starts after ``budget_s`` seconds of rounds."""
    rounds = ROUNDS if rounds is None else rounds
    budget_s = ROUND_BUDGET_S if budget_s is None else budget_s
    working = {}
    for name, fn in runs.items():
        try:
            fn()
            _synchronize(device)
        except Exception as error:  # noqa: BLE001  any failure only removes the candidate
            _log.debug("rollconv.backends: %s failed while timing: %s", name, error)
            continue
        working[name] = fn
    times = {name: [] for name in working}
    start = time.perf_counter()
    for r in range(rounds):
        for name in (list(working) if r % 2 == 0 else list(working)[::-1]):
            _synchronize(device)
            t0 = time.perf_counter()
            working[name]()
            _synchronize(device)
            times[name].append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s:
            break
    return {name: statistics.median(ts) for name, ts in times.items()}
