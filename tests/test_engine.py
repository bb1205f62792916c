"""The CPU engines (csrc/cpu/gemm + conv_engine.cpp, and the fused channel-FFT rolling
convolution csrc/cpu/fft + roll_fft_engine.cpp) against their fallbacks and torch: every ISA
the CPU supports, the paths that CUDA uses (selected on CPU with ROLLCONV_CPU_ENGINE=0:
im2col + ATen GEMMs, ATen FFTs around the per-frequency kernels), determinism, and the
benchmark hooks."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import rollconv
import rollconv.functional as RF
from rollconv import _C

from rollconv.reference import roll_conv2d as reference_roll


def _conv_and_grads(fn, x, w, b):
    x, w, b = (t.detach().clone().requires_grad_() for t in (x, w, b))
    y = fn(x, w, b)
    y.backward(torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y))
    return y.detach(), x.grad, w.grad, b.grad


def _assert_same_bits_on_thread_counts(fn, x, w, b, thread_counts):
    """fn's output and gradients (_conv_and_grads) bitwise the same on each thread count;
    returns them."""
    threads = torch.get_num_threads()
    try:
        results = []
        for n in thread_counts:
            torch.set_num_threads(n)
            results.append(_conv_and_grads(fn, x, w, b))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, c in zip(results[0], other):
            assert torch.equal(a, c)
    return results[0]


def _assert_engine_on_and_off_match(ours, reference, x, w, b):
    """`ours` with the CPU engines (default) and without (ROLLCONV_CPU_ENGINE=0: CUDA's code
    paths) against `reference`, float64: output and the three gradients."""
    ref = _conv_and_grads(reference, x, w, b)
    for engine_setting in (True, False):
        with rollconv.backends.flags(cpu_engine=engine_setting):
            for got, want in zip(_conv_and_grads(ours, x, w, b), ref):
                torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


CONFIGS = [  # (x shape, w shape, kwargs)
    ((3, 6, 11, 9), (4, 6, 3, 3), dict(stride=1, padding=1)),
    ((2, 6, 13, 10), (6, 3, 2, 3), dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2)),
    ((1, 3, 20, 17), (5, 3, 5, 4), dict(stride=(3, 2), padding=(2, 3))),
    # dK's depth chunks (512 pixels in float64) cut samples in the middle; batch 1 splits
    # dW's columns between the threads instead.
    ((3, 4, 30, 41), (6, 4, 3, 3), dict(padding=1, dilation=(2, 1))),
    ((1, 5, 27, 33), (7, 5, 3, 3), dict(padding=(0, 2))),
    # Stride 1: dX as the forward convolution with the flipped weight, groups and dilation
    # (and, with padding past the kernel's reach, the col2im path again).
    ((2, 128, 9, 7), (6, 64, 3, 2), dict(padding=(1, 0), dilation=(2, 1), groups=2)),
    ((1, 64, 6, 5), (3, 64, 3, 3), dict(padding=(3, 1))),
    # A padded sample over 8 MiB (float64): the forward packs B, dK copies im2col lines.
    ((1, 8, 370, 370), (2, 8, 3, 3), dict(padding=1)),
]


@pytest.mark.parametrize("x_shape, w_shape, kw", CONFIGS)
def test_aten_gemm_path_on_cpu(x_shape, w_shape, kw):
    """ROLLCONV_CPU_ENGINE=0: the same ops through im2col + at::mm (CUDA's code path)."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(*x_shape, dtype=torch.float64, generator=gen)
    w = torch.randn(*w_shape, dtype=torch.float64, generator=gen)
    b = torch.randn(w_shape[0], dtype=torch.float64, generator=gen)
    engine = _conv_and_grads(lambda x, w, b: RF.conv2d(x, w, b, **kw), x, w, b)
    with rollconv.backends.flags(cpu_engine=False):
        fallback = _conv_and_grads(lambda x, w, b: RF.conv2d(x, w, b, **kw), x, w, b)
    ref = _conv_and_grads(lambda x, w, b: F.conv2d(x, w, b, **kw), x, w, b)
    for e, f, r in zip(engine, fallback, ref):
        torch.testing.assert_close(e, r, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(f, r, rtol=1e-10, atol=1e-10)


def test_aten_gemm_path_roll_direct():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 7, 9, 8, dtype=torch.float64, generator=gen)
    w = torch.randn(3, 7, 3, 2, dtype=torch.float64, generator=gen)
    b = torch.randn(3, dtype=torch.float64, generator=gen)
    ours = lambda x, w, b: RF.roll_conv2d(x, w, b, padding=1, rolls=5, activation="relu", algorithm="direct")
    _assert_engine_on_and_off_match(ours, lambda x, w, b: reference_roll(x, w, b, padding=1, rolls=5, activation="relu"), x, w, b)


FFT_CONFIGS = [  # (x shape, F, kernel, kwargs): lane groups cut short, strides, dilation, radices
    ((2, 7, 9, 37), 3, (3, 3), dict(padding=1)),
    ((3, 12, 10, 9), 2, (3, 2), dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2))),
    ((1, 60, 6, 19), 1, (5, 3), dict(stride=(1, 3), padding=(4, 1))),
    ((2, 11, 20, 50), 5, (2, 4), dict(padding=(0, 3), dilation=2)),
    ((2, 49, 5, 17), 4, (1, 1), dict()),
    ((3, 1, 8, 8), 2, (3, 3), dict(padding=1)),
    ((2, 4, 7, 37), 5, (3, 3), dict(padding=1)),  # C = 4: the written-out transform
    ((3, 4, 9, 10), 2, (3, 2), dict(stride=2, padding=(2, 0))),
    ((2, 16, 6, 21), 3, (3, 3), dict(padding=1)),  # C = 16: the written-out synthesis
    # strips of rows (dX, a lone filter's forward): strided columns, row dilation (the general
    # path), heights that leave short strips; dK's registers-only 3x3 kernel
    ((2, 6, 11, 14), 1, (3, 3), dict(stride=(1, 2), padding=1)),
    ((2, 8, 13, 20), 3, (3, 3), dict(padding=2, dilation=(2, 1))),
    ((3, 5, 7, 33), 7, (3, 3), dict(padding=(0, 1))),
    ((2, 6, 9, 21), 2, (3, 3), dict(padding=(1, 2), dilation=(1, 2))),  # dK's 3x3 rows, column dilation
    ((2, 64, 5, 9), 2, (3, 3), dict(padding=1)),  # radix-8 stages with twiddles (AVX-512)
    ((2, 40, 6, 7), 1, (3, 3), dict(padding=1)),  # 8 x 5
    # rows of at most half a lane vector (4 float64) go two to a lane vector in the sums of
    # the forward and dX: whole halves, partial ones, an odd last row, row and column strides
    ((2, 12, 7, 4), 3, (3, 3), dict(padding=1)),
    ((2, 10, 9, 5), 2, (3, 2), dict(stride=(2, 1), padding=(1, 0))),
    ((3, 6, 5, 9), 1, (3, 3), dict(stride=(1, 2), padding=1)),
]


@pytest.mark.parametrize("x_shape, f, kernel, kw", FFT_CONFIGS)
def test_roll_fft_fused_and_unfused(x_shape, f, kernel, kw):
    """The fused CPU fft (default) and the composed one CUDA runs (ROLLCONV_CPU_ENGINE=0)
    against the filter-bank method, with bias and ReLU, forward, dX, dK and the bias gradient."""
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(*x_shape, dtype=torch.float64, generator=gen)
    w = torch.randn(f, x_shape[1], *kernel, dtype=torch.float64, generator=gen)
    b = torch.randn(f, dtype=torch.float64, generator=gen)
    ours = lambda x, w, b: RF.roll_conv2d(x, w, b, activation="relu", algorithm="fft", **kw)
    _assert_engine_on_and_off_match(ours, lambda x, w, b: reference_roll(x, w, b, activation="relu", **kw), x, w, b)


def test_roll_fft_many_chunks_float32():
    """A batch whose spectra take several of the fused fft's chunks, float32 against bank."""
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(6, 64, 64, 64, generator=gen)
    w = torch.randn(2, 64, 3, 3, generator=gen) * 0.1
    fft = _conv_and_grads(lambda x, w, b: RF.roll_conv2d(x, w, b, padding=1, algorithm="fft"), x, w, torch.zeros(2))
    bank = _conv_and_grads(lambda x, w, b: RF.roll_conv2d(x, w, b, padding=1, algorithm="bank"), x, w, torch.zeros(2))
    for got, want in zip(fft, bank):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


@pytest.mark.parametrize("channels, activation", [(24, None), (8, "relu")])
def test_roll_fft_independent_of_thread_count(channels, activation):
    # The engine transforms the weight itself and its sums have a fixed order, so every
    # result is bitwise the same on any thread count (at C = 8 torch.fft's own transforms
    # would round differently on 1 and 2 threads).
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(4, channels, 17, 21, generator=gen)
    w = torch.randn(3, channels, 3, 3, generator=gen)
    b = torch.randn(3, generator=gen)
    fn = lambda x, w, b: RF.roll_conv2d(x, w, b, padding=1, activation=activation, algorithm="fft")
    _assert_same_bits_on_thread_counts(fn, x, w, b, (1, 2, 3))


def test_roll_fft_by_samples_independent_of_thread_count():
    """The forward and combined backward sample by sample on each thread (2 and 3 threads:
    9 samples) and chunked (1 and 4 threads) give the same bits; dK's per-sample sums here
    take several rounds (845 KiB per sample), the last one partial."""
    gen = torch.Generator().manual_seed(10)
    x = torch.randn(9, 64, 6, 6, generator=gen)
    w = torch.randn(128, 64, 5, 5, generator=gen) * 0.05
    b = torch.randn(128, generator=gen)
    fn = lambda x, w, b: RF.roll_conv2d(x, w, b, padding=2, activation="relu", algorithm="fft")
    ours = _assert_same_bits_on_thread_counts(fn, x, w, b, (1, 2, 3, 4))
    bank = _conv_and_grads(lambda x, w, b: RF.roll_conv2d(x, w, b, padding=2, activation="relu", algorithm="bank"),
                           x, w, b)
    for got, want in zip(ours, bank):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


@pytest.mark.parametrize("channels, filters", [(4, 3), (16, 2), (64, 2), (256, 1)])
@pytest.mark.parametrize("x_size, kw", [((9, 8), dict(padding=1)), ((7, 5), dict(padding=(1, 0))),
                                        ((10, 15), dict(stride=2, padding=1)), ((5, 24), dict(padding=1)),
                                        ((8, 37), dict(stride=(1, 2), padding=1))])
def test_roll_fft_paired_rows_float32(channels, filters, x_size, kw):
    """Rows whose last chunk is at most 8 float32 pixels (half a lane vector): those chunks
    go two rows to a lane vector in the forward's sums (forward_rows: positions, and a lone
    filter's strips) and dX's (input_grad_rows' strips, at stride 1). Widths 8 (whole
    halves), 3 and 5 (partial ones), 24 (a whole chunk, then 8) and 19 (one, then 3); odd
    rows, strides, the written-out transforms (C = 4, 16) and a lone filter (C = 256);
    bitwise the same on 1 and 2 threads, and against the filter-bank method in float64."""
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(6, channels, *x_size, generator=gen)
    w = torch.randn(filters, channels, 3, 3, generator=gen) / channels**0.5
    b = torch.randn(filters, generator=gen)
    fn = lambda x, w, b: RF.roll_conv2d(x, w, b, algorithm="fft", **kw)
    ours = _assert_same_bits_on_thread_counts(fn, x, w, b, (1, 2))
    assert ours[0].shape[-1] % 16 <= 8
    bank = _conv_and_grads(lambda x, w, b: RF.roll_conv2d(x, w, b, algorithm="bank", **kw),
                           x.double(), w.double(), b.double())
    for got, want in zip(ours, bank):  # (one filter: its bias gradient, a sum of dY, is ~0)
        torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-4 * max(1.0, want.abs().max().item()))


@pytest.mark.parametrize("width", [24, 28, 40, 33])
def test_roll_fft_block_rows_for_whole_groups(width):
    """Widths whose blocks of rows the engine resizes so that they end on whole transform
    groups (rows_per_block: 24 and the dX passes fewer rows, 28 and 40 more; 33 none, the
    partial group alone then), with outputs large enough to be written by streaming stores
    (over 4 MiB): with ReLU bitwise the same on 1 and 2 threads; without, against the
    filter-bank method in float64 (with ReLU, outputs within float32's rounding of zero
    would take the other side of the mask there; and the float32 bank's bias gradient, a
    sum of 10^6 terms, is the less exact of the two)."""
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(12, 64, 32, width, generator=gen)  # 4 filters: 5, 4, 3 and 3 rows
    w = torch.randn(4, 64, 3, 3, generator=gen) * 0.1  # per forward block before the rule
    b = torch.randn(4, generator=gen)
    for activation in ("relu", None):
        fn = lambda x, w, b: RF.roll_conv2d(x, w, b, padding=1, activation=activation, algorithm="fft")
        ours = _assert_same_bits_on_thread_counts(fn, x, w, b, (1, 2))
    assert ours[0].numel() * ours[0].element_size() > 4 << 20
    bank = _conv_and_grads(lambda x, w, b: RF.roll_conv2d(x, w, b, padding=1, algorithm="bank"),
                           x.double(), w.double(), b.double())
    for got, want in zip(ours, bank):
        torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-4 * want.abs().max().item())


def test_deterministic():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(6, 16, 20, 20, generator=gen)
    w = torch.randn(24, 16, 3, 3, generator=gen)
    b = torch.randn(24, generator=gen)
    first = _conv_and_grads(lambda x, w, b: RF.conv2d(x, w, b, padding=1), x, w, b)
    for _ in range(3):
        for a, c in zip(first, _conv_and_grads(lambda x, w, b: RF.conv2d(x, w, b, padding=1), x, w, b)):
            assert torch.equal(a, c)


ISA_CHECK = r"""
import torch, torch.nn.functional as F, rollconv, rollconv.functional as RF
from rollconv import _C
assert _C.gemm_isa() == %r, _C.gemm_isa()
for dtype, tol in ((torch.float32, 1e-4), (torch.float64, 1e-10)):
    x = torch.randn(3, 5, 30, 19, dtype=dtype, requires_grad=True)
    w = torch.randn(11, 5, 3, 5, dtype=dtype, requires_grad=True)
    y = RF.conv2d(x, w, padding=(1, 2))
    gx, gw = torch.autograd.grad(y.square().sum(), (x, w))
    y2 = F.conv2d(x, w, padding=(1, 2))
    rx, rw = torch.autograd.grad(y2.square().sum(), (x, w))
    for a, b in ((y, y2), (gx, rx), (gw, rw)):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * b.abs().max().item())
    # the channel FFT's kernels (same ISA choice): fft against bank
    # (3x3, and a kernel with row dilation: dX's strips of rows then take the general path)
    # (width 37: the last chunks of two rows, 5 pixels each, share a lane vector in the
    # float32 sums; width 8: whole rows do)
    for kernel, dilation, padding, width in (((3, 3), 1, 1, 37), ((5, 2), (2, 1), (4, 1), 37), ((3, 3), 1, 1, 8)):
        x = torch.randn(2, 12, 9, width, dtype=dtype, requires_grad=True)
        w = torch.randn(3, 12, *kernel, dtype=dtype, requires_grad=True)
        outs = []
        for algorithm in ("fft", "bank"):
            y = RF.roll_conv2d(x, w, padding=padding, dilation=dilation, algorithm=algorithm)
            outs.append((y,) + torch.autograd.grad(y.square().sum(), (x, w)))
        for a, b in zip(*outs):
            torch.testing.assert_close(a, b, rtol=tol, atol=tol * b.abs().max().item())
print("ok")
"""


@pytest.mark.parametrize("isa", ["portable", "avx2", "avx512"])
def test_each_isa(isa):
    """Each micro-kernel the CPU can run, forced with ROLLCONV_GEMM_ISA in a fresh process."""
    cpu_flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    needed = {"portable": [], "avx2": ["avx2", "fma"], "avx512": ["avx512f", "avx512vl", "avx512dq"]}[isa]
    if not all(f" {flag}" in cpu_flags for flag in needed):
        pytest.skip(f"this CPU has no {isa}")
    env = dict(os.environ, ROLLCONV_GEMM_ISA=isa)
    out = subprocess.run([sys.executable, "-c", ISA_CHECK % isa], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_bench_hooks():
    assert _C.gemm_isa() in ("portable", "avx2", "avx512")
    assert _C.peak_gflops(False, 1) > 0
    seconds = _C.gemm_seconds(37, 53, 29, False, 1, 2)
    assert len(seconds) == 2 and all(s > 0 for s in seconds)
    assert rollconv.info.__doc__  # info() prints the engine ISA among the build facts
    assert "CPU GEMM engine ISA" in rollconv._info.build_facts()


SWITCHES_FROM_ENVIRONMENT = r"""
import os, rollconv
print(rollconv.backends.get_flags())
os.environ["ROLLCONV_CPU_ENGINE"] = "1"  # read when rollconv was imported, not later
print(rollconv.backends.get_flags()["cpu_engine"])
"""


@pytest.mark.parametrize("off", ["0", "false", "OFF"])
def test_switches_read_from_the_environment_at_import(off):
    """ROLLCONV_CPU_ENGINE, ROLLCONV_WORKSPACE_MB and ROLLCONV_GEMM_ISA set the switches once,
    when rollconv is imported."""
    env = dict(os.environ, ROLLCONV_CPU_ENGINE=off, ROLLCONV_WORKSPACE_MB="3", ROLLCONV_GEMM_ISA="portable")
    out = subprocess.run([sys.executable, "-c", SWITCHES_FROM_ENVIRONMENT], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    flags, later = out.stdout.strip().splitlines()
    assert "'cpu_engine': False" in flags and "'workspace_mb': 3" in flags and "'gemm_isa': 'portable'" in flags
    assert later == "False"


def test_flags_switch_and_restore():
    before = rollconv.backends.get_flags()
    with rollconv.backends.flags(cpu_engine=not before["cpu_engine"], workspace_mb=2, gemm_isa="portable"):
        inside = rollconv.backends.get_flags()
        assert inside["cpu_engine"] is not before["cpu_engine"]
        assert inside["workspace_mb"] == 2 and inside["gemm_isa"] == _C.gemm_isa() == "portable"
    assert rollconv.backends.get_flags() == before
    with rollconv.backends.flags(workspace_mb=None):  # each device's default
        assert rollconv.backends.get_flags()["workspace_mb"] is None and _C.workspace_bytes() == -1
    assert rollconv.backends.get_flags() == before
    with pytest.raises(ValueError, match="gemm_isa must be one of"):
        rollconv.backends.set_flags(gemm_isa="sse9")
    for bad in (-1, True, 1.5, "3", 2**43):
        with pytest.raises(ValueError, match="workspace_mb must be an int from 0"):
            rollconv.backends.set_flags(cpu_engine=not before["cpu_engine"], workspace_mb=bad)
        assert rollconv.backends.get_flags() == before  # nothing changed


@pytest.mark.parametrize("text, expected", [(" 7 ", 7), ("0", 0), ("", None), ("abc", None), ("-3", None),
                                            ("1.5", None), ("16MB", None), ("99999999999999", None)])
def test_workspace_from_the_environment(text, expected):
    """ROLLCONV_WORKSPACE_MB: a whole number of MiB, else the defaults and a warning."""
    code = ("import warnings\nwith warnings.catch_warnings(record=True) as caught:\n"
            "    warnings.simplefilter('always')\n    import rollconv\n"
            "print(rollconv.backends.get_flags()['workspace_mb'], rollconv._C.workspace_bytes(), "
            "any('ROLLCONV_WORKSPACE_MB' in str(w.message) for w in caught))")
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, ROLLCONV_WORKSPACE_MB=text),
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    mb, raw, warned = out.stdout.split()
    assert mb == str(expected) and int(raw) == (-1 if expected is None else expected << 20)
    assert warned == str(expected is None and text.strip() != "")


def test_info_reports_a_bad_isa_setting_and_ops_raise_it():
    env = dict(os.environ, ROLLCONV_GEMM_ISA="bogus")
    info = subprocess.run([sys.executable, "-m", "rollconv", "info"], env=env, capture_output=True, text=True)
    assert info.returncode == 0 and "error: ROLLCONV_GEMM_ISA must be portable, avx2 or avx512, not 'bogus'" in info.stdout
    call = "import torch, rollconv.functional as RF; RF.conv2d(torch.randn(1, 1, 4, 4), torch.randn(1, 1, 3, 3))"
    op = subprocess.run([sys.executable, "-c", call], env=env, capture_output=True, text=True)
    assert op.returncode != 0 and "ROLLCONV_GEMM_ISA must be portable, avx2 or avx512" in op.stderr
