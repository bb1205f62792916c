"""The machine's limits, and roll_conv2d's passes against them.

machine_limits(threads): the FMA peak (rollconv._C.peak_gflops: chains of FMAs in the GEMM
engine's ISA on `threads` threads) and the memory bandwidth of torch's own kernels: read (a
sum), write (fill_: ordinary stores), copy (copy_: bytes read plus bytes written), on 16 MiB
buffers (the working set of the cases here, 8 to 32 MiB: it stays in a large last-level
cache, as the passes' operands do between passes) and on 256 MiB (far larger than any
cache: DRAM). Each is the best of repetitions for a quarter of a second: the bound of what the machine can do,
not a typical figure (other jobs share these machines).

roll_passes(c, f, ...): per pass of roll_conv2d (the algorithm 'auto' picks), on one set of
tensors, in interleaved rounds (medians):
  forward:  relu(roll_conv2d(x, w)) under no_grad; must read x, write y;
  mask:     ReLU's backward (dY masked by y > 0), the separate pass autograd runs before dX
            and dK; reads dY and y, writes the masked dY;
  dX, dK:   the backward ops on the masked dY; dX reads dY, writes dX; dK reads dY and x;
  backward: the combined backward op where it exists (dX and dK from dY and y in one op);
            reads dY, y and x, writes dX;
  fwd+bwd:  the whole forward+backward through autograd (y.sum().backward()).
Each pass's bound is max(bytes / bandwidth, flops / peak): the bytes it must move (each
operand once; reads at the read bandwidth, writes at the write bandwidth, both measured on
16 MiB) and the flops of
the algorithm that runs ('direct' and 'bank': the bank's 2 N (C F) C kh kw oh ow; 'fft':
the per-frequency sums, 8 N F K kh kw oh ow with K = C/2 + 1, plus the channel transforms,
counted as 2.5 n log2 n per real transform of length n). "reached" = bound / time.

    python bench/limits.py [--threads 2] [--rounds 9] [--c 16] [--batch 8] [--size 32] [--malloc adaptive]
"""
import argparse
import math
import os
import statistics
import sys
import time

import torch

# This checkout's rollconv (see run.py).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import rollconv  # noqa: E402
import rollconv.functional as RF  # noqa: E402
from rollconv import benchmark  # noqa: E402

ops = torch.ops.rollconv
SIZES = {"": 16 << 20, "DRAM ": 256 << 20}  # key prefix: buffer bytes


def _best_seconds(fn, repeats, budget=0.25):
    """The fastest of at least `repeats` runs, repeated for `budget` seconds: on a machine
    shared with other jobs a few runs may all be interrupted."""
    fn()  # first touch, warm-up
    best, start, runs = math.inf, time.perf_counter(), 0
    while runs < repeats or time.perf_counter() - start < budget:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        runs += 1
    return best


def machine_limits(threads, repeats=7):
    """{'peak GFLOP/s': float32 FMA peak, 'read GB/s', 'write GB/s', 'copy GB/s' (16 MiB), and the
    same with 'DRAM ' in front (256 MiB)} measured now. Each bandwidth is the best on 1 and on
    `threads` threads: where other jobs keep the cores busy, waking a second thread can cost
    more than a 16 MiB pass takes."""
    limits = {"peak GFLOP/s": max(rollconv._C.peak_gflops(False, threads) for _ in range(5))}
    for prefix, size in SIZES.items():
        a = torch.ones(size // 4)
        b = torch.empty_like(a)
        seconds = {"read": [], "write": [], "copy": []}
        for t in sorted({1, threads}):
            torch.set_num_threads(t)
            seconds["read"].append(_best_seconds(lambda: a.sum(), repeats))
            seconds["write"].append(_best_seconds(lambda: b.fill_(1.0), repeats))
            seconds["copy"].append(_best_seconds(lambda: b.copy_(a), repeats))
        for name, times in seconds.items():
            limits[f"{prefix}{name} GB/s"] = (2 if name == "copy" else 1) * size / min(times) / 1e9
    torch.set_num_threads(threads)
    return limits


def format_limits(limits):
    def bandwidths(prefix):
        return (f"read {limits[prefix + 'read GB/s']:.1f}, write {limits[prefix + 'write GB/s']:.1f}, "
                f"copy {limits[prefix + 'copy GB/s']:.1f} GB/s")

    return (f"measured limits: FMA peak {limits['peak GFLOP/s']:.0f} GFLOP/s float32; on 16 MiB {bandwidths('')}; "
            f"on 256 MiB (DRAM) {bandwidths('DRAM ')} (copy: read + written)")


# --- the passes' work ------------------------------------------------------------------------


def _fft_flops(real_transforms, n):
    return real_transforms * 2.5 * n * math.log2(n) if n > 1 else 0.0


def pass_work(c, f, n, hw, algorithm, k=3, itemsize=4):
    """{pass: (bytes read, bytes written, flops)} of roll_conv2d with rolls = C, stride 1,
    'same' padding, ReLU, for the given algorithm."""
    px = hw * hw
    x, y = n * c * px * itemsize, n * c * f * px * itemsize
    if algorithm == "fft":
        freqs = c // 2 + 1
        sums = 8 * n * f * freqs * k * k * px
        x_t, y_t = _fft_flops(n * px, c), _fft_flops(n * f * px, c)
        flops = {"forward": sums + x_t + y_t, "dX": sums + y_t + x_t, "dK": sums + x_t + y_t,
                 "backward": 2 * sums + 2 * x_t + y_t}
    else:
        bank = 2 * n * c * f * c * k * k * px
        flops = {"forward": bank, "dX": bank, "dK": bank, "backward": 2 * bank}
    work = {
        "forward": (x, y, flops["forward"]),
        "mask": (2 * y, y, 0.0),
        "dX": (y, x, flops["dX"]),
        "dK": (y + x, 0, flops["dK"]),
        "backward": (2 * y + x, x, flops["backward"]),
    }
    work["fwd+bwd"] = tuple(a + b for a, b in zip(work["forward"], work["backward"]))
    return work


def bound_seconds(work, limits):
    """(memory seconds, arithmetic seconds) of one pass's work."""
    read, written, flops = work
    memory = read / (limits["read GB/s"] * 1e9) + written / (limits["write GB/s"] * 1e9)
    return memory, flops / (limits["peak GFLOP/s"] * 1e9)


# --- timing -----------------------------------------------------------------------------------


def _has_combined_backward():
    return hasattr(ops, "roll_conv2d_backward")


def roll_passes(c, f, n=8, hw=32, rounds=9, algorithm=None, seed=0):
    """Median seconds of each pass (module docstring) and the algorithm that ran."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, hw, hw, generator=g)
    w = torch.randn(f, c, 3, 3, generator=g) * 0.1
    alg = algorithm or RF.choose_roll_algorithm(x, w, c, [1, 1], [1, 1])
    geometry = ([1, 1], [1, 1], [1, 1], c, 1, alg)
    with torch.no_grad():
        y = ops.roll_conv2d_forward(x, w, None, *geometry, True)
    dy = torch.randn(y.shape, generator=g)
    masked = torch.ops.aten.threshold_backward(dy, y, 0)
    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()

    def forward():
        with torch.no_grad():
            ops.roll_conv2d_forward(x, w, None, *geometry, True)

    def fwd_bwd():
        xg.grad = wg.grad = None
        RF.roll_conv2d(xg, wg, padding=1, activation="relu", algorithm=alg).sum().backward()

    passes = {
        "forward": forward,
        "mask": lambda: torch.ops.aten.threshold_backward(dy, y, 0),
        "dX": lambda: ops.roll_conv2d_backward_input(masked, w, [hw, hw], *geometry),
        "dK": lambda: ops.roll_conv2d_backward_weight(masked, x, [3, 3], *geometry),
        "fwd+bwd": fwd_bwd,
    }
    if _has_combined_backward():
        passes["backward"] = lambda: ops.roll_conv2d_backward(dy, x, w, y, *geometry, [True, True, False])
    times = {name: [] for name in passes}
    for fn in passes.values():
        fn()
    names = list(passes)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            passes[name]()
            times[name].append(time.perf_counter() - t0)
    return alg, {name: statistics.median(ts) for name, ts in times.items()}


def pass_rows(c, f, n, hw, rounds, limits, algorithm=None):
    """The per-pass table rows of one case: time, bound and fraction of the bound reached."""
    alg, times = roll_passes(c, f, n, hw, rounds, algorithm)
    work = pass_work(c, f, n, hw, alg)
    rows = []
    for name, seconds in times.items():
        memory, arithmetic = bound_seconds(work[name], limits)
        rows.append({"C": c, "F": f, "algorithm": alg, "pass": name, "ms": seconds * 1e3,
                     "MiB moved": (work[name][0] + work[name][1]) / 2**20, "GFLOP": work[name][2] / 1e9,
                     "memory bound ms": memory * 1e3, "arithmetic bound ms": arithmetic * 1e3,
                     "reached": max(memory, arithmetic) / seconds})
    return rows


PASS_HEADER = ("| C, F | algorithm | pass | ms | MiB moved | GFLOP | memory bound ms | arithmetic bound ms | "
               "reached |\n|---|---|---|---:|---:|---:|---:|---:|---:|")


def format_pass_row(r):
    return (f"| {r['C']}, {r['F']} | {r['algorithm']} | {r['pass']} | {r['ms']:.2f} | {r['MiB moved']:.1f} | "
            f"{r['GFLOP']:.3f} | {r['memory bound ms']:.2f} | {r['arithmetic bound ms']:.2f} | {r['reached']:.0%} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--c", type=int, action="append", help="input channels (repeatable; default 4 16 64 256)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--algorithm", default=None, help="force an algorithm (default: 'auto's choice)")
    benchmark.add_malloc_option(parser)
    args = parser.parse_args()
    print("malloc:", benchmark.apply_malloc_option(args.malloc))
    limits = machine_limits(args.threads)
    print(format_limits(limits))
    print(PASS_HEADER)
    for c in args.c or (4, 16, 64, 256):
        for row in pass_rows(c, 256 // c, args.batch, args.size, args.rounds, limits, args.algorithm):
            print(format_pass_row(row), flush=True)


if __name__ == "__main__":
    main()
