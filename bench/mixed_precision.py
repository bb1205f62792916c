"""What float16/bfloat16 cost on the CPU against float32 (forward+backward).

The CPU computes float16/bfloat16 convolutions in float32 (operands converted up front,
results rounded back) and pools / normalizes them directly with float32 arithmetic. Per
case, every candidate runs on operands of its dtype, in interleaved rounds (bench/run.py's
time_case: medians; ratios are candidate time / rollconv float32 time, > 1: slower).
"autocast" runs the float32 operands under torch.autocast("cpu", bfloat16), casts included.
torch's own float32 and bfloat16 (oneDNN) are listed for context.

    python bench/mixed_precision.py [--threads 2] [--rounds 7]
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

import rollconv.functional as RF

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import time_case  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def case(name, shapes, ours, theirs=None, theirs_bf16=True, scale=(1.0, 0.1, 1.0)):
    """Operands of every shape in every dtype, one tuple (float32 ones first); each
    candidate picks its own."""
    per_dtype = len(shapes)

    def make(device):
        torch.manual_seed(0)
        base = [torch.randn(s, device=device) * k for s, k in zip(shapes, scale)]
        return tuple(t.to(dtype).requires_grad_() for dtype in DTYPES.values() for t in base)

    def pick(index, fn, autocast=False):
        def run(*operands):
            args = operands[index * per_dtype:(index + 1) * per_dtype]
            if autocast:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return fn(*args)
            return fn(*args)
        return run

    candidates = {f"rollconv {d}": pick(i, ours) for i, d in enumerate(DTYPES)}
    candidates["rollconv autocast bf16"] = pick(0, ours, autocast=True)
    if theirs is not None:
        candidates["torch float32"] = pick(0, theirs)
        if theirs_bf16:
            candidates["torch bfloat16"] = pick(1, theirs)
    return {"name": name, "make": make, "candidates": candidates}


def cases():
    conv = lambda x, w, b: RF.conv2d(x, w, b, padding=1)  # noqa: E731
    roll = {alg: (lambda x, w, alg=alg: RF.roll_conv2d(x, w, padding=1, activation="relu", algorithm=alg))
            for alg in ("direct", "bank", "fft")}
    return [
        case("conv2d N=8 64->64 3x3 p1 @32x32", [(8, 64, 32, 32), (64, 64, 3, 3), (64,)], conv,
             lambda x, w, b: F.conv2d(x, w, b, padding=1)),
        *[case(f"roll_conv2d {alg} C=16 F=16 N=8 3x3 p1 @32x32", [(8, 16, 32, 32), (16, 16, 3, 3)], fn)
          for alg, fn in roll.items()],
        case("max_pool2d N=8 C=64 @56x56 k3 s2 p1", [(8, 64, 56, 56)], lambda x: RF.max_pool2d(x, 3, 2, 1),
             lambda x: F.max_pool2d(x, 3, 2, 1)),
        case("local_response_norm N=8 C=64 @28x28 size 5", [(8, 64, 28, 28)], lambda x: RF.local_response_norm(x, 5),
             lambda x: F.local_response_norm(x, 5), theirs_bf16=False),  # torch: no bfloat16 LRN on CPU
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    print(f"threads {args.threads}, {args.rounds} rounds, medians in ms (ratio to rollconv float32)\n")
    for c in cases():
        times = time_case(c, device, args.rounds, "backward")
        base = times["rollconv float32"]
        cells = ", ".join(f"{name} {t * 1e3:.2f} ({t / base:.2f}x)" for name, t in times.items())
        print(f"- {c['name']}: {cells}", flush=True)


if __name__ == "__main__":
    main()
