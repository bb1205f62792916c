"""`make bench`: rollconv against PyTorch, side by side in one process.

For every case, the candidates are timed in interleaved rounds (so machine noise hits
them alike); each figure is the median of the rounds and each ratio is
baseline_time / rollconv_time (> 1: rollconv is faster). Peak memory is measured per
candidate in a fresh subprocess: on CPU, the peak of the resident set (sampled every
0.1 ms by a thread, with glibc told to return large blocks to the system on free) over
one forward+backward, minus the resident set before it; on a GPU,
torch.cuda.max_memory_allocated.

Writes bench/results/results.json, bench/results/results.md and bench/results/roll_speedup.png.

    python bench/run.py [--threads 2] [--rounds 7] [--device cpu] [--quick]
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time

import torch
import torch.nn.functional as F

import rollconv
import rollconv.functional as RF
from rollconv import reference

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")


# --- the candidates ---------------------------------------------------------------------


def seed_roll(x, w, padding):
    """Seed 000's method: expand the bank with roll + cat, then conv2d (oneDNN on CPU) + ReLU."""
    return reference.roll_conv2d(x, w, None, 1, padding, activation="relu")


def torch_im2col_conv(*args, **kw):
    """PyTorch's own im2col + GEMM path (THNN slow_conv2d): oneDNN disabled."""
    with torch.backends.mkldnn.flags(enabled=False):
        return F.conv2d(*args, **kw)


def conv_case(n, cin, cout, hw, k, stride=1, padding=0):
    def make(device):
        x = torch.randn(n, cin, hw, hw, device=device, requires_grad=True)
        w = torch.randn(cout, cin, k, k, device=device, requires_grad=True) * 0.1
        w = w.detach().requires_grad_()
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
        "name": f"roll_conv2d C={c} F={f} (C*F=256) N={n} 3x3 p1 @{hw}x{hw}",
        "group": "roll_conv2d",
        "c": c,
        "make": make,
        "flops": 2 * n * c * f * c * 9 * hw * hw,
        "candidates": {
            "rollconv": lambda x, w: RF.roll_conv2d(x, w, padding=1, activation="relu"),  # algorithm='auto'
            "rollconv direct": lambda x, w: RF.roll_conv2d(x, w, padding=1, activation="relu", algorithm="direct"),
            "rollconv bank": lambda x, w: RF.roll_conv2d(x, w, padding=1, activation="relu", algorithm="bank"),
            "rollconv fft": lambda x, w: RF.roll_conv2d(x, w, padding=1, activation="relu", algorithm="fft"),
            "seed method": lambda x, w: seed_roll(x, w, 1),
        },
    }


def other_cases():
    def pool_make(device):
        return (torch.randn(8, 64, 56, 56, device=device, requires_grad=True),)

    def lrn_make(device):
        return (torch.randn(8, 64, 28, 28, device=device, requires_grad=True),)

    def tconv_make(device):
        return (torch.randn(8, 64, 28, 28, device=device, requires_grad=True),
                (torch.randn(64, 32, 4, 4, device=device) * 0.1).requires_grad_())

    return [
        {"name": "max_pool2d N=8 C=64 @56x56 k3 s2 p1", "group": "other", "make": pool_make,
         "candidates": {"rollconv": lambda x: RF.max_pool2d(x, 3, 2, 1), "torch": lambda x: F.max_pool2d(x, 3, 2, 1)}},
        {"name": "local_response_norm N=8 C=64 @28x28 size 5", "group": "other", "make": lrn_make,
         "candidates": {"rollconv": lambda x: RF.local_response_norm(x, 5), "torch": lambda x: F.local_response_norm(x, 5)}},
        {"name": "conv_transpose2d N=8 64->32 4x4 s2 p1 @28x28", "group": "other", "make": tconv_make,
         "candidates": {"rollconv": lambda x, w: RF.conv_transpose2d(x, w, None, 2, 1),
                        "torch": lambda x, w: F.conv_transpose2d(x, w, None, 2, 1)}},
    ]


def all_cases(quick):
    convs = [
        conv_case(8, 64, 64, 56, 3, 1, 1),
        conv_case(8, 128, 128, 28, 3, 1, 1),
        conv_case(8, 256, 256, 14, 3, 1, 1),
        conv_case(8, 64, 256, 56, 1),
        conv_case(8, 3, 64, 224, 7, 2, 3),
        conv_case(32, 16, 32, 32, 5),
    ]
    rolls = [roll_case(c, 256 // c) for c in (4, 16, 64, 256)]
    cases = convs + rolls + other_cases()
    return cases[:2] + rolls[:2] if quick else cases


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


def peak_memory(case_index, candidate, device, quick):
    """Peak extra memory of one forward+backward, measured in a fresh process."""
    code = (
        "import sys, torch; sys.path.insert(0, %r); import run; "
        "print(run.measure_peak(%d, %r, %r, %r))" % (HERE, case_index, candidate, device, quick)
    )
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return float(out.stdout.strip().splitlines()[-1])


def measure_peak(case_index, candidate, device, quick):
    torch.set_num_threads(2)
    device = torch.device(device)
    case = all_cases(quick)[case_index]
    inputs = case["make"](device)
    fn = case["candidates"][candidate]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn(*inputs).sum().backward()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    fn(*inputs).sum().backward()  # warm-up: lazy initialization is not the op's memory
    for t in inputs:
        t.grad = None
    page = os.sysconf("SC_PAGE_SIZE")

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page

    peak, done = [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(1e-4)

    base = rss()
    sampler = threading.Thread(target=sample)
    sampler.start()
    fn(*inputs).sum().backward()
    done.set()
    sampler.join()
    return (max(peak[0], rss()) - base) / 2**20


# --- the GEMM engine alone -----------------------------------------------------------------


def gemm_rates(threads, quick):
    """GFLOP/s of the CPU GEMM engine (C = A B, square, row-major) against the FMA peak
    measured on the same threads with the same ISA (issue 6: >= 80% for large sizes)."""
    rows = []
    peak = {dt: rollconv._C.peak_gflops(dt == "float64", threads) for dt in ("float32", "float64")}
    sizes = [(1024, "float32")] if quick else [(1024, "float32"), (2048, "float32"), (3072, "float32"), (2048, "float64")]
    for size, dtype in sizes:
        seconds = statistics.median(rollconv._C.gemm_seconds(size, size, size, dtype == "float64", threads, 5))
        gflops = 2 * size**3 / seconds / 1e9
        row = {"size": size, "dtype": dtype, "isa": rollconv._C.gemm_isa(), "GFLOP/s": gflops,
               "peak GFLOP/s": peak[dtype], "fraction of peak": gflops / peak[dtype]}
        rows.append(row)
        print(f"GEMM {size}^3 {dtype} ({row['isa']}): {gflops:.0f} GFLOP/s = {row['fraction of peak']:.0%} "
              f"of the measured peak {peak[dtype]:.0f} GFLOP/s")
    return rows


# --- report -----------------------------------------------------------------------------

ROLL_TARGETS = {4: 1.0, 16: 1.5, 64: 4.0, 256: 10.0}  # issue 5's speed-up targets (fwd+bwd, vs seed)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="a few cases, 3 rounds (smoke test)")
    parser.add_argument("--only", default="", help="run only the cases whose name contains this text")
    args = parser.parse_args()
    if args.quick:
        args.rounds = 3
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    os.makedirs(RESULTS, exist_ok=True)
    facts = rollconv._info.build_facts()
    facts.update(threads=args.threads, rounds=args.rounds, device=str(device), python=platform.python_version())
    print("\n".join(f"{k}: {v}" for k, v in facts.items()))

    gemm_rows = [] if args.only and args.only not in "gemm" else gemm_rates(args.threads, args.quick)
    rows = []
    for index, case in enumerate(all_cases(args.quick)):
        if args.only not in case["name"]:
            continue
        row = {"case": case["name"], "group": case["group"], "c": case.get("c")}
        for mode in ("forward", "forward+backward"):
            row[mode] = time_case(case, device, args.rounds, mode)
        if case["group"] in ("roll_conv2d", "conv2d"):
            row["peak MiB"] = {name: peak_memory(index, name, args.device, args.quick) for name in case["candidates"]}
        if "flops" in case:
            row["rollconv GFLOP/s (forward)"] = case["flops"] / row["forward"]["rollconv"] / 1e9
        rows.append(row)
        print(format_row(row))

    with open(os.path.join(RESULTS, "results.json"), "w") as f:
        json.dump({"facts": facts, "gemm": gemm_rows, "rows": rows}, f, indent=2, default=str)
    with open(os.path.join(RESULTS, "results.md"), "w") as f:
        f.write(markdown(rows, facts, gemm_rows))
    plot(rows)
    print(f"\nwrote {RESULTS}/results.json, results.md, roll_speedup.png")


def format_row(row):
    parts = [row["case"]]
    for mode in ("forward", "forward+backward"):
        ours = row[mode]["rollconv"]
        ratios = ", ".join(f"{name} {t / ours:.2f}x" for name, t in row[mode].items() if name != "rollconv")
        parts.append(f"  {mode}: rollconv {ours * 1e3:.2f} ms; baseline/rollconv: {ratios}")
    if "peak MiB" in row:
        parts.append("  peak MiB: " + ", ".join(f"{k} {v:.1f}" for k, v in row["peak MiB"].items()))
    return "\n".join(parts)


def markdown(rows, facts, gemm_rows=()):
    lines = [
        "# rollconv benchmark",
        "",
        f"torch {facts['torch']}, {facts['machine']}, {facts['threads']} threads, device {facts['device']}, "
        f"median of {facts['rounds']} interleaved rounds. Ratio = baseline time / rollconv time (> 1: rollconv faster).",
        "",
        "| case | mode | rollconv ms | baseline | baseline ms | ratio |",
        "|---|---|---:|---|---:|---:|",
    ]
    for row in rows:
        for mode in ("forward", "forward+backward"):
            ours = row[mode]["rollconv"]
            for name, t in row[mode].items():
                if name != "rollconv":
                    lines.append(f"| {row['case']} | {mode} | {ours * 1e3:.2f} | {name} | {t * 1e3:.2f} | {t / ours:.2f}x |")
    if gemm_rows:
        lines += ["", "## The CPU GEMM engine alone (issue 6: >= 80% of the measured peak)", "",
                  "| size | dtype | ISA | GFLOP/s | measured peak | fraction |", "|---|---|---|---:|---:|---:|"]
        for g in gemm_rows:
            lines.append(f"| {g['size']}^3 | {g['dtype']} | {g['isa']} | {g['GFLOP/s']:.0f} | "
                         f"{g['peak GFLOP/s']:.0f} | {g['fraction of peak']:.0%} |")
    convs = [r for r in rows if r["group"] == "conv2d"]
    if convs:
        lines += ["", "## conv2d forward+backward against issue 6's targets", "",
                  "Targets: time <= 1.25x oneDNN's (ratio >= 0.80) on every shape, faster on two; "
                  ">= 2x faster than torch's im2col path. Peak MiB: extra resident memory of one forward+backward.", "",
                  "| case | vs oneDNN | vs torch im2col | peak MiB rollconv | peak MiB torch im2col | peak MiB oneDNN |",
                  "|---|---:|---:|---:|---:|---:|"]
        for r in convs:
            t = r["forward+backward"]
            mem = r["peak MiB"]
            lines.append(f"| {r['case']} | {t['torch (oneDNN)'] / t['rollconv']:.2f}x | "
                         f"{t['torch im2col'] / t['rollconv']:.2f}x | {mem['rollconv']:.1f} | "
                         f"{mem['torch im2col']:.1f} | {mem['torch (oneDNN)']:.1f} |")
    rolls = [r for r in rows if r["group"] == "roll_conv2d"]
    if rolls:
        lines += ["", "## roll_conv2d against the seed method (forward+backward) and issue 5's targets", "",
                  "| C, F | speed-up | target | peak MiB rollconv | peak MiB seed |", "|---|---:|---:|---:|---:|"]
        for r in rolls:
            sp = r["forward+backward"]["seed method"] / r["forward+backward"]["rollconv"]
            lines.append(f"| {r['c']}, {256 // r['c']} | {sp:.2f}x | >= {ROLL_TARGETS[r['c']]}x | "
                         f"{r['peak MiB']['rollconv']:.1f} | {r['peak MiB']['seed method']:.1f} |")
    return "\n".join(lines) + "\n"


def plot(rows):
    rolls = [r for r in rows if r["group"] == "roll_conv2d"]
    if not rolls:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cs = [r["c"] for r in rolls]
    fig, ax = plt.subplots(figsize=(6, 4))
    for mode in ("forward", "forward+backward"):
        ax.plot(cs, [r[mode]["seed method"] / r[mode]["rollconv"] for r in rolls], "o-", label=mode)
    ax.plot(cs, [ROLL_TARGETS[c] for c in cs], "k--", label="issue 5 target (fwd+bwd)")
    ax.axhline(1.0, color="grey", lw=0.5)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("input channels C (F = 256 / C)")
    ax.set_ylabel("speed-up over the seed method")
    ax.set_title("roll_conv2d, N=8, 32x32, 3x3")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(RESULTS, "roll_speedup.png"), dpi=120)


if __name__ == "__main__":
    main()
