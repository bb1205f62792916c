"""`make gpu-check`'s benchmark: rollconv on a GPU against cuDNN, forward+backward.

- roll_conv2d per algorithm ('auto', 'direct', 'bank', 'fft') against the filter-bank
  method (roll + cat, then torch's conv2d on cuDNN, + ReLU; rollconv.reference);
- conv2d against torch's conv2d (cuDNN);

each in float32 and under automatic mixed precision (``torch.autocast(device, float16)``
and ``bfloat16``; the backward runs outside the autocast block, as torch's AMP recipe
does). Both sides at their best: ``torch.backends.cudnn.benchmark = True`` for cuDNN,
rollconv's 'auto' self-timed (rollconv.backends). float32 keeps torch's defaults: cuDNN
convolutions may use TF32, cuBLAS matmuls (rollconv's GEMMs) do not.

Timing: each candidate is called once to warm up (a failing candidate is reported and
left out); then interleaved rounds (alternating order); each sample is the mean of a few
back-to-back calls between two device synchronizations (so one sample lasts ~10 ms on the
GPU); the figure is the median of the samples. Ratio = baseline time / candidate time
(> 1: rollconv faster). Rel. err = max |y - y_baseline| / max |y_baseline| of the forward.

Prints one summary table and writes everything (facts, the CUDA tests' summary when
given, the table, every sample as JSON) to one Markdown file.

    python bench/gpu_check.py [--device cuda] [--quick] [--rounds 7] [--out FILE]
    python bench/gpu_check.py --preflight   # check torch and the GPU; print TORCH_CUDA_ARCH_LIST
    python bench/gpu_check.py --device cpu --quick   # the same code on the CPU, in seconds

Only the standard library and torch are imported before the benchmark starts, so the
preflight runs before rollconv is built.
"""
import argparse
import json
import math
import os
import platform
import re
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_OUT = os.path.join(HERE, "results", "gpu_check.md")

#: The precisions compared: name -> autocast dtype (None: plain float32).
PRECISIONS = {"float32": None, "amp float16": torch.float16, "amp bfloat16": torch.bfloat16}
ROLL_ALGORITHMS = ("auto", "direct", "bank", "fft")
#: Largest relative error of a candidate's forward against the baseline's that is rounding:
#: cuDNN's float32 convolutions may run in TF32 (10-bit mantissa); bfloat16 has 8 bits.
#: Above it the row is marked wrong and the benchmark exits non-zero.
REL_ERR_LIMIT = {"float32": 1e-2, "amp float16": 1e-2, "amp bfloat16": 5e-2}


# --- preflight ----------------------------------------------------------------------------


def minimum_torch(pyproject=os.path.join(ROOT, "pyproject.toml")):
    """The oldest torch rollconv builds with: pyproject.toml's `torch>=X` dependency."""
    with open(pyproject) as f:
        match = re.search(r'"torch>=([0-9][0-9.]*)"', f.read())
    if not match:
        raise RuntimeError(f"no torch>=X dependency in {pyproject}")
    return match.group(1)


def preflight(minimum=None):
    """Check that this Python can build and test rollconv on a GPU; return the
    TORCH_CUDA_ARCH_LIST of the visible GPUs ("9.0", "8.0;9.0"). Exits with a message
    (SystemExit, status 1) when it cannot."""
    from torch.torch_version import TorchVersion

    minimum = minimum_torch() if minimum is None else minimum
    if TorchVersion(torch.__version__) < minimum:
        sys.exit(f"gpu-check: torch {torch.__version__} is older than {minimum}, the oldest torch rollconv "
                 f"builds with (it registers its ops with torch.library.register_fake and register_autograd, "
                 f"and reads the autocast state per device). Use a Python with torch >= {minimum}: "
                 f"make gpu-check PYTHON=/path/to/python")
    if torch.version.cuda is None:
        sys.exit(f"gpu-check: torch {torch.__version__} of {sys.executable} is a CPU-only build "
                 f"(torch.version.cuda is None); use the Python whose torch has CUDA")
    if not torch.cuda.is_available():
        sys.exit("gpu-check: no CUDA GPU is visible (torch.cuda.is_available() is False): "
                 "run this on a machine with an NVIDIA GPU and its driver (check nvidia-smi and CUDA_VISIBLE_DEVICES)")
    capabilities = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
    return ";".join(f"{major}.{minor}" for major, minor in capabilities)


# --- cases --------------------------------------------------------------------------------


def roll_cases(quick):
    """(N, C, F, H=W): 3x3, padding 1, every roll, ReLU; C*F = 256 as in bench/run.py."""
    if quick:
        return [(2, 4, 4, 8)]
    return [(32, 4, 64, 32), (32, 16, 16, 32), (32, 64, 4, 32), (32, 256, 1, 32), (16, 32, 32, 64)]


def conv_cases(quick):
    """(N, C_in, C_out, H=W, k, stride, padding)."""
    if quick:
        return [(2, 4, 8, 8, 3, 1, 1)]
    return [
        (32, 64, 64, 56, 3, 1, 1),
        (32, 128, 128, 28, 3, 1, 1),
        (32, 256, 256, 14, 3, 1, 1),
        (32, 64, 256, 56, 1, 1, 0),
        (32, 3, 64, 224, 7, 2, 3),
    ]


def _autocast(device, dtype):
    if dtype is None:
        import contextlib
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _baseline_name(device, what):
    return f"{what} (cuDNN)" if device.type == "cuda" else f"{what} (torch, {device.type})"


def _candidates_roll(RF, filter_bank_method, algorithms, baseline):
    cands = {baseline: lambda x, w: filter_bank_method(x, w, 1)}
    for algorithm in algorithms:
        cands[f"roll_conv2d {algorithm}"] = (
            lambda x, w, algorithm=algorithm: RF.roll_conv2d(x, w, padding=1, activation="relu", algorithm=algorithm))
    return cands


# --- timing -------------------------------------------------------------------------------


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step(fn, inputs, autocast):
    for t in inputs:
        t.grad = None
    with autocast():
        y = fn(*inputs)
    y.float().sum().backward()
    return y


def time_candidates(candidates, inputs, device, autocast, rounds, sample_s):
    """{name: {"ms": median ms, "samples": [ms...], "inner": calls per sample, "y": forward
    output}} or {"error": message} for a candidate that raised."""
    results, working = {}, {}
    for name, fn in candidates.items():
        try:
            y = _step(fn, inputs, autocast)  # warm-up: lazy init, plans, cuDNN autotuning, 'auto' timing
            _sync(device)
            t0 = time.perf_counter()
            _step(fn, inputs, autocast)
            _sync(device)
            once = time.perf_counter() - t0
        except Exception as error:  # noqa: BLE001  reported in the table, the others go on
            results[name] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"}
            continue
        inner = max(1, min(50, math.ceil(sample_s / max(once, 1e-6))))
        results[name] = {"samples": [], "inner": inner, "y": y.detach().float()}
        working[name] = fn
    names = list(working)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            entry = results[name]
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(entry["inner"]):
                _step(working[name], inputs, autocast)
            _sync(device)
            entry["samples"].append((time.perf_counter() - t0) / entry["inner"] * 1e3)
    for name in names:
        results[name]["ms"] = statistics.median(results[name]["samples"])
    return results


def _relative_error(y, reference):
    if y.shape != reference.shape:
        return float("nan")
    scale = reference.abs().max().item() or 1.0
    return (y - reference).abs().max().item() / scale


# --- the benchmark ------------------------------------------------------------------------


def run_benchmark(device, quick, rounds, sample_s, budget_s, log=print):
    """Every case in every precision; returns the table's rows."""
    sys.path.insert(0, HERE)
    import rollconv.functional as RF
    from rollconv import backends
    from rollconv.benchmark import filter_bank_method

    rows, start = [], time.perf_counter()

    def record(case, precision, baseline, results, extra=None):
        base = results.get(baseline, {})
        for name, entry in results.items():
            row = {"case": case, "precision": precision, "candidate": name, "baseline": baseline}
            if "error" in entry:
                row["error"] = entry["error"]
            else:
                row.update(ms=entry["ms"], samples=entry["samples"], inner=entry["inner"])
                if "ms" in base:
                    row["ratio"] = base["ms"] / entry["ms"]
                    row["rel_err"] = _relative_error(entry["y"], base["y"])
            if extra and name in extra:
                row["note"] = extra[name]
            if not row.get("rel_err", 0.0) <= REL_ERR_LIMIT[precision]:  # NaN (a wrong shape) too
                row["wrong"] = True
                row["note"] = (row.get("note", "") + f" WRONG: rel. err above {REL_ERR_LIMIT[precision]:.0e}").strip()
            rows.append(row)

    jobs = []
    for n, c, f, hw in roll_cases(quick):
        jobs.append(("roll", (n, c, f, hw)))
    for spec in conv_cases(quick):
        jobs.append(("conv", spec))
    for kind, spec in jobs:
        for precision, dtype in PRECISIONS.items():
            if time.perf_counter() - start > budget_s:
                log(f"gpu-check: time budget of {budget_s:.0f} s spent, skipping {kind} {spec} {precision}")
                rows.append({"case": f"{kind} {spec}", "precision": precision, "candidate": "-",
                             "error": f"skipped: the {budget_s:.0f} s budget was spent"})
                continue
            torch.manual_seed(0)
            autocast = lambda dtype=dtype: _autocast(device, dtype)  # noqa: E731
            if kind == "roll":
                n, c, f, hw = spec
                case = f"roll_conv2d N={n} C={c} F={f} 3x3 p1 relu @{hw}x{hw}"
                x = torch.randn(n, c, hw, hw, device=device, requires_grad=True)
                w = (torch.randn(f, c, 3, 3, device=device) / math.sqrt(9 * c)).requires_grad_()
                inputs = (x, w)
                backends.clear_cache()
                baseline = _baseline_name(device, "filter bank")
                results = time_candidates(_candidates_roll(RF, filter_bank_method, ROLL_ALGORITHMS, baseline), inputs, device,
                                          autocast, rounds, sample_s)
                try:
                    with autocast():  # what 'auto' ran: the cached timed choice, or the rule
                        picked = "ran " + RF._auto_algorithm(x, w, None, [1, 1], [1, 1], [1, 1], c, 1, True)
                except Exception as error:  # noqa: BLE001
                    picked = f"(its choice is unknown: {type(error).__name__})"
                record(case, precision, baseline, results, {"roll_conv2d auto": picked})
            else:
                n, cin, cout, hw, k, s, p = spec
                case = f"conv2d N={n} {cin}->{cout} {k}x{k} s{s} p{p} @{hw}x{hw}"
                x = torch.randn(n, cin, hw, hw, device=device, requires_grad=True)
                w = (torch.randn(cout, cin, k, k, device=device) / math.sqrt(cin * k * k)).requires_grad_()
                b = torch.randn(cout, device=device, requires_grad=True)
                candidates = {
                    _baseline_name(device, "conv2d"): lambda x, w, b: torch.nn.functional.conv2d(x, w, b, s, p),
                    "rollconv conv2d": lambda x, w, b: RF.conv2d(x, w, b, s, p),
                }
                inputs = (x, w, b)
                results = time_candidates(candidates, inputs, device, autocast, rounds, sample_s)
                record(case, precision, next(iter(candidates)), results)
            for row in rows[-len(results):]:
                log(format_row(row))
            del inputs, x, w, results
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


# --- report -------------------------------------------------------------------------------


def format_row(row):
    if "error" in row:
        return f"{row['case']} | {row['precision']} | {row['candidate']}: {row['error']}"
    ratio = f"{row['ratio']:.2f}x" if "ratio" in row else "-"
    return f"{row['case']} | {row['precision']} | {row['candidate']}: {row['ms']:.3f} ms, baseline/this {ratio}"


def table(rows):
    lines = ["| case | precision | candidate | fwd+bwd ms | baseline / this | rel. err | note |",
             "|---|---|---|---:|---:|---:|---|"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['case']} | {row['precision']} | {row['candidate']} | - | - | - | {row['error']} |")
            continue
        ratio = f"{row['ratio']:.2f}x" if "ratio" in row else "-"
        err = f"{row['rel_err']:.1e}" if "rel_err" in row else "-"
        lines.append(f"| {row['case']} | {row['precision']} | {row['candidate']} | {row['ms']:.3f} | {ratio} | {err} | "
                     f"{row.get('note', '')} |")
    return "\n".join(lines)


def facts(device, rounds, sample_s):
    out = {
        "torch": torch.__version__,
        "torch CUDA": torch.version.cuda or "none",
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "device": str(device),
        "rounds": rounds,
        "target sample ms": sample_s * 1e3,
    }
    try:
        import rollconv

        out.update(rollconv=rollconv.__version__, rollconv_file=rollconv.__file__,
                   rollconv_cuda_archs=rollconv._C.cuda_archs or "-")
    except ImportError:
        pass
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update(gpu=props.name, capability=f"{props.major}.{props.minor}",
                   gpu_memory_GiB=round(props.total_memory / 2**30, 1),
                   cudnn=torch.backends.cudnn.version(), cudnn_benchmark=torch.backends.cudnn.benchmark,
                   cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                   matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    else:
        out["threads"] = torch.get_num_threads()
    return out


def tests_summary(log_path, rc):
    """The pytest run's closing line and exit status, for the report."""
    if not log_path:
        return None
    last = "no pytest output"
    if os.path.exists(log_path):
        with open(log_path, errors="replace") as f:
            lines = [line.strip() for line in f if re.search(r"\b(passed|failed|error|errors|skipped|deselected)\b", line)]
        if lines:
            last = lines[-1].strip("= ")
    return {"summary": last, "exit status": rc}


def report(rows, the_facts, tests):
    lines = ["# rollconv GPU check", ""]
    lines += [f"- {k}: {v}" for k, v in the_facts.items()]
    if tests is not None:
        lines += ["", f"CUDA tests (`pytest -m cuda`): {tests['summary']} (exit status {tests['exit status']})"]
    lines += ["", "Forward+backward, median of interleaved rounds; ratio = baseline time / this time "
              "(> 1: this is faster). Baselines: the filter-bank method (roll + cat + conv2d on cuDNN, + ReLU) "
              "for roll_conv2d, torch's conv2d for conv2d.", "", table(rows), "", "## Every sample (JSON)", "",
              "```json", json.dumps({"facts": the_facts, "tests": tests, "rows": rows}, indent=1, default=str), "```", ""]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny cases, 3 rounds (a smoke test, e.g. on the CPU)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 7, --quick 3)")
    parser.add_argument("--sample-ms", type=float, default=None, help="target length of one sample (default 10, --quick 1)")
    parser.add_argument("--budget-s", type=float, default=240, help="start no new case after this many seconds")
    parser.add_argument("--out", default=DEFAULT_OUT, help="the results file (Markdown)")
    parser.add_argument("--tests-log", default=None, help="pytest output to summarize in the report")
    parser.add_argument("--tests-rc", type=int, default=None, help="pytest's exit status")
    parser.add_argument("--preflight", action="store_true", help="check torch and the GPU, print TORCH_CUDA_ARCH_LIST")
    args = parser.parse_args(argv)
    if args.preflight:
        print(preflight())
        return 0
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu-check: no CUDA GPU is visible (torch.cuda.is_available() is False); "
              "use --device cpu for a dry run of the same code", file=sys.stderr)
        return 2
    rounds = args.rounds or (3 if args.quick else 7)
    sample_s = (args.sample_ms or (1.0 if args.quick else 10.0)) / 1e3
    previous_benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = device.type == "cuda"  # cuDNN at its best, as rollconv's 'auto' is
    try:
        rows = run_benchmark(device, args.quick, rounds, sample_s, args.budget_s, log=lambda s: print(s, file=sys.stderr))
        the_facts = facts(device, rounds, sample_s)
    finally:
        torch.backends.cudnn.benchmark = previous_benchmark
    print(table(rows))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(report(rows, the_facts, tests_summary(args.tests_log, args.tests_rc)))
    print(f"\nwrote {args.out}")
    wrong = [row for row in rows if row.get("wrong")]
    for row in wrong:
        print(f"gpu-check: wrong result: {row['case']} | {row['precision']} | {row['candidate']}: "
              f"rel. err {row['rel_err']:.1e}", file=sys.stderr)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
