"""Build the rollconv extension with torch.utils.cpp_extension.

Switches (environment variables):
  FORCE_CUDA=1          build the CUDA kernels even if no toolkit is auto-detected
  FORCE_ONLY_CPU=1      build the CPU kernels only, even if a toolkit is present
  ROLLCONV_EMULATE_CUDA=1  a test build without nvcc: csrc/cuda/kernels.cu compiled for the
                        host (launches emulated, see csrc/cuda/host_emulation.h) and its
                        kernels registered for CPU tensors instead of the CPU kernels
  TORCH_CUDA_ARCH_LIST  GPU architectures to compile for (default below)
  CUDA_HOME             the CUDA toolkit; found automatically when unset
"""
import glob
import os
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"  # Ampere, Hopper, PTX for newer GPUs


def _is_toolkit(path):
    return bool(path) and os.path.isfile(os.path.join(path, "bin", "nvcc")) and os.path.isfile(
        os.path.join(path, "include", "cuda_runtime.h")
    )


def find_cuda_home():
    """Locate the real CUDA toolkit.

    `nvcc` on PATH may be a wrapper script (here /usr/local/bin/nvcc), from which torch
    would guess CUDA_HOME=/usr/local and fail to link cudart; so only accept a
    directory that holds both bin/nvcc and include/cuda_runtime.h.
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
        try:  # a wrapper script that execs the real nvcc: read the path it names
            with open(nvcc, "r", errors="ignore") as f:
                for word in f.read().split():
                    if word.endswith("/bin/nvcc"):
                        candidates.append(os.path.dirname(os.path.dirname(word)))
        except OSError:
            pass
    candidates += sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    return next((c for c in candidates if _is_toolkit(c)), None)


def env_flag(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


emulate_cuda = env_flag("ROLLCONV_EMULATE_CUDA")
cuda_home = None if env_flag("FORCE_ONLY_CPU") or emulate_cuda else find_cuda_home()
if cuda_home:
    # Must be set before torch.utils.cpp_extension is imported: it reads CUDA_HOME once.
    os.environ["CUDA_HOME"] = cuda_home
with_cuda = not env_flag("FORCE_ONLY_CPU") and not emulate_cuda and (
    cuda_home is not None or env_flag("FORCE_CUDA")
)
if with_cuda:
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)

from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def nvidia_pip_includes():
    """cuBLAS/cuSPARSE headers that ATen's CUDA headers include ship in pip wheels."""
    found = []
    for entry in sys.path:
        found += glob.glob(os.path.join(entry, "nvidia", "cu*", "include"))
        found += glob.glob(os.path.join(entry, "nvidia", "*", "include"))
    return sorted({p for p in found if os.path.isdir(p)})


def extension():
    sources = glob.glob("csrc/*.cpp") + glob.glob("csrc/common/*.cpp")
    cxx_flags = ["-O3", "-fopenmp", "-DROLLCONV_VERSION=\"0.1.0\""]
    include_dirs = [os.path.join(ROOT, "csrc")]
    if emulate_cuda:
        # CUDA's kernels, compiled for the host, take the CPU dispatch key: nothing of
        # csrc/cpu (kernels, engines) is built.
        sources += glob.glob("csrc/emulated_cuda/*.cpp")
        cxx_flags.append("-DROLLCONV_EMULATE_CUDA")
    else:
        sources += glob.glob("csrc/cpu/*.cpp")
        # The GEMM engine and the channel FFT: their <name>_<isa>.cpp files set their own
        # target ISA (#pragma GCC target) and run only on CPUs that have it, so no global -m flags.
        sources += glob.glob("csrc/cpu/gemm/*.cpp") + glob.glob("csrc/cpu/fft/*.cpp")
    if not with_cuda:
        return CppExtension(
            "rollconv._C",
            sorted(sources),
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp"],
        )
    sources += glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/cuda/*.cpp")
    archs = os.environ["TORCH_CUDA_ARCH_LIST"]
    cxx_flags += ["-DROLLCONV_WITH_CUDA", f"-DROLLCONV_CUDA_ARCHS=\"{archs}\""]
    nvcc_flags = ["-O3", "-DROLLCONV_WITH_CUDA", "--expt-relaxed-constexpr", "--extended-lambda"]
    return CUDAExtension(
        "rollconv._C",
        sorted(sources),
        include_dirs=include_dirs + nvidia_pip_includes(),
        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
        extra_link_args=["-fopenmp"],
    )


class BuildExt(BuildExtension):
    """Compile into a fixed directory under build/ so that ninja rebuilds only what
    changed, also for `pip install -e .` (which otherwise uses a fresh temp dir)."""

    def run(self):
        kind = "emulated-cuda/objects" if emulate_cuda else "cuda" if with_cuda else "cpu"
        self.build_temp = os.path.join(ROOT, "build", kind)
        super().run()


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExt.with_options(use_ninja=True)},
)
