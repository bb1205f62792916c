"""Facts of this build and machine, printed by ``python -m rollconv info``."""
import os
import platform

import torch

from . import _C


def _gemm_isa():
    if not hasattr(_C, "gemm_isa"):
        return "none (emulated CUDA build)"
    try:
        return _C.gemm_isa()
    except RuntimeError as error:  # a bad ROLLCONV_GEMM_ISA: info reports it, ops raise it
        return f"error: {error}"


def build_facts():
    return {
        "rollconv": _C.version,
        "torch": torch.__version__,
        "torch CUDA": torch.version.cuda or "none (CPU-only torch)",
        "build": "debug (DEBUG=1: -O0, debug info)" if _C.debug else "release",
        "CUDA kernels compiled": bool(_C.with_cuda),
        "CUDA architectures": _C.cuda_archs or "-",
        # A test build: csrc/cuda/primitives.cu compiled for the host, its kernels serving CPU
        # tensors in place of the CPU kernels (see tests/emulated_cuda_build.sh).
        "emulated CUDA build": bool(_C.emulated_cuda),
        "GPU visible": (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no"),
        "CPU threads (torch / OpenMP)": torch.get_num_threads(),
        "CPU GEMM engine ISA": _gemm_isa(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "unset"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }


def info(file=None):
    """Print the rollconv, torch and CUDA versions, the compiled CUDA architectures,
    whether a GPU is visible and the thread count; return them as a dict."""
    facts = build_facts()
    width = max(len(k) for k in facts)
    for key, value in facts.items():
        print(f"{key:<{width}}  {value}", file=file)
    return facts
