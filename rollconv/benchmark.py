"""rollconv against PyTorch on this machine: ``python -m rollconv bench`` and ``make bench``.

For every case the candidates (rollconv and PyTorch's ways of computing the same thing)
are timed in interleaved rounds, so machine noise hits them alike; each figure is the
median of the rounds, and each ratio is baseline_time / rollconv_time (> 1: rollconv is
faster). Modes: "forward" (under torch.no_grad) and "forward+backward" (``y.sum().backward()``).

    python -m rollconv bench [--quick] [--threads N] [--rounds R] [--device cpu|cuda]
                             [--only TEXT] [--batch N] [--size S]

``--quick`` (a few cases, 3 rounds) takes well under a minute on two cores; the full set
several minutes. On glibc the run fixes malloc's thresholds first (``--malloc adaptive``
keeps glibc's defaults; see ``fix_malloc_thresholds``). ``bench/run.py`` (``make bench``) runs the same cases and adds peak
memory, the GEMM engine alone and the written reports.
"""
import argparse
import ctypes
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from . import functional as RF
from . import reference
from ._info import build_facts

MODES = ("forward", "forward+backward")


# --- the candidates ---------------------------------------------------------------------


def filter_bank_method(x, w, padding):
    """The filter-bank method a user writes by hand (rollconv.reference): roll + cat, then
    torch's conv2d (oneDNN on CPU, cuDNN on CUDA) + ReLU."""
    return reference.roll_conv2d(x, w, None, 1, padding, activation="relu")


def torch_im2col_conv(*args, **kw):
    """PyTorch's own im2col + GEMM path (slow_conv2d): oneDNN disabled."""
    with torch.backends.mkldnn.flags(enabled=False):
        return F.conv2d(*args, **kw)


def conv_case(n, cin, cout, hw, k, stride=1, padding=0):
    def make(device):
        x = torch.randn(n, cin, hw, hw, device=device, requires_grad=True)
        w = (torch.randn(cout, cin, k, k, device=device) * 0.1).requires_grad_()
        b = torch.randn(cout, device=device, requires_grad=True)
        return x, w, b

    kw = dict(stride=stride, padding=padding)
    return {
        "name": f"conv2d N={n} {cin}->{cout} {k}x{k} s{stride} p{padding} @{hw}x{hw}",
        "group": "conv2d",
        "make": make,
        "flops": 2 * n * cout * cin * k * k * ((hw + 2 * padding - k) // stride + 1) ** 2,
        "candidates": {
            "rollconv": lambda x, w, b: RF.conv2d(x, w, b, **kw),
            "torch (oneDNN)": lambda x, w, b: F.conv2d(x, w, b, **kw),
            "torch im2col": lambda x, w, b: torch_im2col_conv(x, w, b, **kw),
        },
    }


def roll_case(c, f, n=8, hw=32):
    def make(device):
        x = torch.randn(n, c, hw, hw, device=device, requires_grad=True)
        w = (torch.randn(f, c, 3, 3, device=device) * 0.1).requires_grad_()
        return x, w

    return {
        "name": f"roll_conv2d C={c} F={f} (C*F={c * f}) N={n} 3x3 p1 @{hw}x{hw}",
        "group": "roll_conv2d",
        "c": c,
        "make": make,
        "flops": 2 * n * c * f * c * 9 * hw * hw,
        "candidates": {
            "rollconv": lambda x, w: RF.roll_conv2d(x, w, padding=1, activation="relu"),  # algorithm='auto'
            "rollconv direct": lambda x, w: RF.roll_conv2d(x, w, padding=1, activation="relu", algorithm="direct"),
            "rollconv bank": lambda x, w: RF.roll_conv2d(x, w, padding=1, activation="relu", algorithm="bank"),
            "rollconv fft": lambda x, w: RF.roll_conv2d(x, w, padding=1, activation="relu", algorithm="fft"),
            "filter-bank method": lambda x, w: filter_bank_method(x, w, 1),
        },
    }


def other_cases(n=8, pool_hw=56, lrn_hw=28, tconv_hw=28):
    def pool_make(device):
        return (torch.randn(n, 64, pool_hw, pool_hw, device=device, requires_grad=True),)

    def lrn_make(device):
        return (torch.randn(n, 64, lrn_hw, lrn_hw, device=device, requires_grad=True),)

    def tconv_make(device):
        return (torch.randn(n, 64, tconv_hw, tconv_hw, device=device, requires_grad=True),
                (torch.randn(64, 32, 4, 4, device=device) * 0.1).requires_grad_())

    return [
        {"name": f"max_pool2d N={n} C=64 @{pool_hw}x{pool_hw} k3 s2 p1", "group": "other", "make": pool_make,
         "candidates": {"rollconv": lambda x: RF.max_pool2d(x, 3, 2, 1), "torch": lambda x: F.max_pool2d(x, 3, 2, 1)}},
        {"name": f"local_response_norm N={n} C=64 @{lrn_hw}x{lrn_hw} size 5", "group": "other", "make": lrn_make,
         "candidates": {"rollconv": lambda x: RF.local_response_norm(x, 5), "torch": lambda x: F.local_response_norm(x, 5)}},
        {"name": f"conv_transpose2d N={n} 64->32 4x4 s2 p1 @{tconv_hw}x{tconv_hw}", "group": "other", "make": tconv_make,
         "candidates": {"rollconv": lambda x, w: RF.conv_transpose2d(x, w, None, 2, 1),
                        "torch": lambda x, w: F.conv_transpose2d(x, w, None, 2, 1)}},
    ]


def all_cases(quick=False, batch=None, size=None):
    """The benchmark cases: typical conv2d layers, roll_conv2d at C*F = 256 for C = 4..256,
    pooling, LRN and a transposed convolution. quick: one conv2d layer and two roll_conv2d
    cases. batch / size replace every case's batch size / image height and width."""

    def n(default):
        return batch or default

    def hw(default):
        return size or default

    convs = [
        conv_case(n(8), 64, 64, hw(56), 3, 1, 1),
        conv_case(n(8), 128, 128, hw(28), 3, 1, 1),
        conv_case(n(8), 256, 256, hw(14), 3, 1, 1),
        conv_case(n(8), 64, 256, hw(56), 1),
        conv_case(n(8), 3, 64, hw(224), 7, 2, 3),
        conv_case(n(32), 16, 32, hw(32), 5),
    ]
    rolls = [roll_case(c, 256 // c, n(8), hw(32)) for c in (4, 16, 64, 256)]
    if quick:
        return convs[:1] + [rolls[0], rolls[2]]
    return convs + rolls + other_cases(n(8), hw(56), hw(28), hw(28))


# --- timing -----------------------------------------------------------------------------


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_once(fn, inputs, mode, device):
    for t in inputs:
        t.grad = None
    sync(device)
    t0 = time.perf_counter()
    if mode == "forward":
        with torch.no_grad():
            fn(*inputs)
    else:
        fn(*inputs).sum().backward()
    sync(device)
    return time.perf_counter() - t0


def time_case(case, device, rounds, mode):
    """Median seconds per candidate: one warm-up call each, then `rounds` interleaved rounds
    (alternating the order)."""
    inputs = case["make"](device)
    names = list(case["candidates"])
    times = {name: [] for name in names}
    for name in names:  # warm-up
        run_once(case["candidates"][name], inputs, mode, device)
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            times[name].append(run_once(case["candidates"][name], inputs, mode, device))
    return {name: statistics.median(ts) for name, ts in times.items()}


def measure(case, device, rounds):
    """One case's result row: median seconds per candidate for each mode, and rollconv's
    forward GFLOP/s where the case counts its multiply-adds."""
    row = {"case": case["name"], "group": case["group"], "c": case.get("c")}
    for mode in MODES:
        row[mode] = time_case(case, device, rounds, mode)
    if "flops" in case:
        row["rollconv GFLOP/s (forward)"] = case["flops"] / row["forward"]["rollconv"] / 1e9
    return row


def format_row(row):
    parts = [row["case"]]
    for mode in MODES:
        ours = row[mode]["rollconv"]
        ratios = ", ".join(f"{name} {t / ours:.2f}x" for name, t in row[mode].items() if name != "rollconv")
        parts.append(f"  {mode}: rollconv {ours * 1e3:.2f} ms; baseline/rollconv: {ratios}")
    if "peak MiB" in row:
        parts.append("  peak MiB: " + ", ".join(f"{k} {v:.1f}" for k, v in row["peak MiB"].items()))
    return "\n".join(parts)


# --- command line -------------------------------------------------------------------------


def argument_parser(prog=None, threads=None):
    """The options shared by ``python -m rollconv bench`` and bench/run.py."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=threads,
                        help="CPU threads (default: %s)" % (threads or "torch's default, the machine's cores"))
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per case (default 7; 3 with --quick)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--quick", action="store_true", help="three cases, 3 rounds: well under a minute")
    parser.add_argument("--only", default="", help="run only the cases whose name contains this text")
    parser.add_argument("--batch", type=int, help="batch size of every case (default: each case's own)")
    parser.add_argument("--size", type=int, help="image height and width of every case (default: each case's own)")
    add_malloc_option(parser)
    return parser


def add_malloc_option(parser):
    """--malloc fixed|adaptive (also bench/limits.py's); apply it with ``apply_malloc_option``."""
    parser.add_argument("--malloc", choices=("fixed", "adaptive"), default="fixed",
                        help="glibc malloc's mmap and trim thresholds: fixed for the run (default; see "
                             "fix_malloc_thresholds), or glibc's adaptive defaults")


# mallopt(3) parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: The mmap threshold set by ``fix_malloc_thresholds``: the largest glibc accepts on 64-bit
#: systems (mallopt(3)), above the roll_conv2d cases' outputs (8 MiB).
MMAP_THRESHOLD_BYTES = 32 << 20
#: The trim threshold set by ``fix_malloc_thresholds``: freed memory stays in the process.
TRIM_THRESHOLD_BYTES = 1 << 30


def fix_malloc_thresholds():
    """Fix glibc malloc's mmap and trim thresholds (``mallopt``: 32 MiB and 1 GiB) for this
    process; returns a description for the run's facts.

    By default glibc moves both thresholds as blocks are freed, so whether a fresh tensor of
    some MiB is served from memory already mapped or from new pages (one page fault per
    page or per small folio, each zeroed by the kernel) depends on the process's history.
    Measured on a 2-core VM (bench/roll_conv2d_limits.md, 2026-12-02): the same script gave
    0 to 2438 page faults per roll_conv2d forward+backward and 0 to 16320 for the
    filter-bank method, from run to run, up to a quarter of the wall time in the kernel.
    With the thresholds fixed both ran without faults. PyTorch's CPU tuning guide makes the
    same point for jemalloc and tcmalloc (memory reused instead of returned and refaulted).
    Other C libraries are left alone."""
    if platform.libc_ver()[0] != "glibc":
        return "unchanged (not glibc)"
    libc = ctypes.CDLL(None)  # the C library the process already uses
    if libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) != 1 or libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) != 1:
        return "glibc's adaptive thresholds (mallopt refused the fixed ones)"
    return f"glibc, mmap threshold {MMAP_THRESHOLD_BYTES >> 20} MiB and trim threshold {TRIM_THRESHOLD_BYTES >> 30} GiB, fixed"


def apply_malloc_option(choice):
    """Apply ``--malloc`` (``add_malloc_option``); returns its description for the run's facts."""
    return fix_malloc_thresholds() if choice == "fixed" else "adaptive (the C library's defaults)"


def setup(args):
    """Apply the parsed options (threads, rounds, malloc) and return the facts of the run."""
    if args.quick and args.rounds == 7:
        args.rounds = 3
    if args.threads:
        torch.set_num_threads(args.threads)
    malloc = apply_malloc_option(args.malloc)
    facts = build_facts()
    facts.update(threads=torch.get_num_threads(), rounds=args.rounds, device=args.device,
                 python=platform.python_version(),
                 # libgomp's default policy spins at every barrier before it sleeps: on a machine
                 # shared with other jobs that changes every timing (torch's and ours), so say which
                 OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "unset (libgomp: spin, then sleep)"),
                 malloc=malloc)
    return facts


def selected_cases(args):
    return [case for case in all_cases(args.quick, args.batch, args.size) if args.only in case["name"]]


def main(argv=None):
    """``python -m rollconv bench``: print each case's timings and ratios; return the rows."""
    args = argument_parser(prog="python -m rollconv bench").parse_args(argv)
    facts = setup(args)
    print("\n".join(f"{k}: {v}" for k, v in facts.items()))
    print("ratio = baseline time / rollconv time (> 1: rollconv is faster)\n")
    device = torch.device(args.device)
    rows = []
    for case in selected_cases(args):
        rows.append(measure(case, device, args.rounds))
        print(format_row(rows[-1]), flush=True)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
