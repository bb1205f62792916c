"""`make bench`: rollconv against PyTorch, side by side in one process, with reports.

The cases, candidates and timing are rollconv.benchmark's (also run by
`python -m rollconv bench`): interleaved rounds, medians, ratios baseline_time /
rollconv_time (> 1: rollconv is faster). This script adds peak memory, measured per
candidate in a fresh subprocess: on CPU, the peak of the resident set (sampled every
0.1 ms by a thread, with glibc told to return large blocks to the system on free) over
one forward+backward, minus the resident set before it; on a GPU,
torch.cuda.max_memory_allocated; and the CPU GEMM engine alone.

Writes bench/results/results.json, bench/results/results.md and bench/results/roll_speedup.png.

    python bench/run.py [--threads 2] [--rounds 7] [--device cpu] [--quick] [--only TEXT]
"""
import json
import os
import statistics
import subprocess
import sys
import threading
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
# This checkout's rollconv (built in place), not whichever one the environment has installed:
# `python bench/run.py` puts bench/, not the checkout, first on sys.path.
sys.path[:0] = [os.path.dirname(HERE), HERE]
import rollconv  # noqa: E402
from rollconv import benchmark  # noqa: E402

import limits  # noqa: E402  (bench/limits.py)

RESULTS = os.path.join(HERE, "results")


# --- peak memory ------------------------------------------------------------------------


def peak_memory(case_index, candidate, args):
    """Peak extra memory of one forward+backward, measured in a fresh process."""
    code = (
        "import sys, torch; sys.path.insert(0, %r); import run; "
        "print(run.measure_peak(%d, %r, %r, %r, %r, %r))"
        % (HERE, case_index, candidate, args.device, args.quick, args.batch, args.size)
    )
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return float(out.stdout.strip().splitlines()[-1])


def measure_peak(case_index, candidate, device, quick, batch, size):
    torch.set_num_threads(2)
    device = torch.device(device)
    case = benchmark.all_cases(quick, batch, size)[case_index]
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

# Speed-up targets over the filter-bank method (issue 16), by input channels C (F = 256 / C).
ROLL_TARGETS = {"forward+backward": {4: 2.0, 16: 3.0, 64: 8.0, 256: 20.0},
                "forward": {4: 1.5, 16: 2.0, 64: 6.0, 256: 15.0}}
BASELINE = "filter-bank method"


def main():
    args = benchmark.argument_parser(threads=2).parse_args()
    facts = benchmark.setup(args)
    facts["rollconv from"] = os.path.dirname(rollconv.__file__)
    device = torch.device(args.device)
    os.makedirs(RESULTS, exist_ok=True)
    print("\n".join(f"{k}: {v}" for k, v in facts.items()))
    machine = limits.machine_limits(facts["threads"]) if device.type == "cpu" else None
    if machine:
        print(limits.format_limits(machine))

    gemm_rows = [] if args.only and args.only not in "gemm" else gemm_rates(facts["threads"], args.quick)
    rows = []
    for index, case in enumerate(benchmark.all_cases(args.quick, args.batch, args.size)):
        if args.only not in case["name"]:
            continue
        row = benchmark.measure(case, device, args.rounds)
        if case["group"] in ("roll_conv2d", "conv2d"):
            row["peak MiB"] = {name: peak_memory(index, name, args) for name in case["candidates"]}
        rows.append(row)
        print(benchmark.format_row(row))

    # roll_conv2d pass by pass, against each pass's bound (bench/limits.py)
    pass_rows = []
    if machine:
        for r in rows:
            if r["group"] == "roll_conv2d":
                c = r["c"]
                pass_rows += limits.pass_rows(c, 256 // c, args.batch or 8, args.size or 32, max(args.rounds, 5), machine)
        if pass_rows:
            print(limits.PASS_HEADER)
            print("\n".join(limits.format_pass_row(p) for p in pass_rows))

    with open(os.path.join(RESULTS, "results.json"), "w") as f:
        json.dump({"facts": facts, "limits": machine, "gemm": gemm_rows, "rows": rows, "passes": pass_rows}, f,
                  indent=2, default=str)
    with open(os.path.join(RESULTS, "results.md"), "w") as f:
        f.write(markdown(rows, facts, gemm_rows, machine, pass_rows))
    plot(rows)
    print(f"\nwrote {RESULTS}/results.json, results.md, roll_speedup.png")


def roll_table(rows):
    """The issue's table: fwd+bwd and forward speed-ups over the filter-bank method, targets,
    peak memory."""
    lines = ["| C, F | filter-bank fwd+bwd ms | rollconv fwd+bwd ms | speed-up | target | filter-bank fwd ms | "
             "rollconv fwd ms | speed-up | target | peak MiB rollconv | peak MiB filter-bank |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        c = r["c"]
        cells = [f"{c}, {256 // c}"]
        for mode in ("forward+backward", "forward"):
            ours, theirs = r[mode]["rollconv"], r[mode][BASELINE]
            target = ROLL_TARGETS[mode].get(c)
            cells += [f"{theirs * 1e3:.2f}", f"{ours * 1e3:.2f}", f"{theirs / ours:.2f}x",
                      f">= {target}x" if target else "-"]
        mem = r.get("peak MiB", {})
        cells += [f"{mem[k]:.1f}" if k in mem else "-" for k in ("rollconv", BASELINE)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(rows, facts, gemm_rows=(), machine=None, pass_rows=()):
    lines = [
        "# rollconv benchmark",
        "",
        f"torch {facts['torch']}, {facts['machine']}, {facts['threads']} threads, device {facts['device']}, "
        f"median of {facts['rounds']} interleaved rounds. Ratio = baseline time / rollconv time (> 1: rollconv faster).",
        "",
        limits.format_limits(machine) if machine else "",
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
        lines += ["", "## roll_conv2d (algorithm 'auto', ReLU) against the filter-bank method and issue 16's targets",
                  "", "Speed-up = filter-bank time / rollconv time; peak MiB: extra resident memory of one "
                  "forward+backward.", ""] + roll_table(rolls)
    if pass_rows:
        lines += ["", "## roll_conv2d pass by pass against each pass's bound (bench/limits.py)", "",
                  "bound = max(bytes moved / measured bandwidth, flops / measured peak); reached = bound / time.",
                  "", limits.PASS_HEADER] + [limits.format_pass_row(p) for p in pass_rows]
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
        ax.plot(cs, [r[mode][BASELINE] / r[mode]["rollconv"] for r in rolls], "o-", label=mode)
        ax.plot(cs, [ROLL_TARGETS[mode][c] for c in cs], "--", label=f"target ({mode})")
    ax.axhline(1.0, color="grey", lw=0.5)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("input channels C (F = 256 / C)")
    ax.set_ylabel("speed-up over the filter-bank method")
    ax.set_title("roll_conv2d, N=8, 32x32, 3x3")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(RESULTS, "roll_speedup.png"), dpi=120)


if __name__ == "__main__":
    main()
