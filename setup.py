"""Build the rollconv extension with torch.utils.cpp_extension.

Switches (environment variables):
  FORCE_CUDA=1          build the CUDA kernels even if no toolkit is auto-detected
  FORCE_ONLY_CPU=1      build the CPU kernels only, even if a toolkit is present
  ROLLCONV_EMULATE_CUDA=1  a test build without nvcc: csrc/cuda/primitives.cu compiled for the
                        host (launches emulated, see csrc/cuda/host_emulation.h) and its
                        kernels registered for CPU tensors instead of the CPU kernels
  TORCH_CUDA_ARCH_LIST  GPU architectures to compile for (default below)
  CUDA_HOME             the CUDA toolkit; found automatically when unset
  DEBUG=1               -O0 -g (debug info kept); release builds (default) carry none

Objects are kept per kind of build, so that one kind never invalidates another's:
build/<cpu|cuda>[-debug] for in-place and editable builds (`make build`, `pip install -e`,
`setup.py build_ext --inplace`), build/wheel-<cpu|cuda>[-debug] for wheels (`pip install .`).
"""
import glob
import os
import re
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


def project_version():
    """The version, written once: pyproject.toml's `version = "..."` line (CMakeLists.txt
    reads the same line)."""
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as f:
        return re.search(r'^version = "([^"]+)"$', f.read(), re.MULTILINE).group(1)


def env_flag(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


debug = env_flag("DEBUG")
emulate_cuda = env_flag("ROLLCONV_EMULATE_CUDA")
cpu_only = env_flag("FORCE_ONLY_CPU") or emulate_cuda
cuda_home = None if cpu_only else find_cuda_home()
if cuda_home:
    # Must be set before torch.utils.cpp_extension is imported: it reads CUDA_HOME once.
    os.environ["CUDA_HOME"] = cuda_home
with_cuda = not cpu_only and (cuda_home is not None or env_flag("FORCE_CUDA"))
if with_cuda:
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)

try:
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402
except ModuleNotFoundError as missing:
    if missing.name != "torch":
        raise
    # pip's default build isolation builds in a fresh environment without torch (and
    # installing one there would compile against a torch other than the one used at run time).
    sys.exit(
        "rollconv: building needs torch, and this build environment has none: install torch "
        "first, then build against it with `pip install --no-build-isolation .`"
    )


def nvidia_pip_includes():
    """cuBLAS/cuSPARSE headers that ATen's CUDA headers include ship in pip wheels."""
    found = []
    for entry in sys.path:
        found += glob.glob(os.path.join(entry, "nvidia", "cu*", "include"))
        found += glob.glob(os.path.join(entry, "nvidia", "*", "include"))
    return sorted({p for p in found if os.path.isdir(p)})


def extension():
    sources = glob.glob("csrc/*.cpp") + glob.glob("csrc/common/*.cpp")
    if emulate_cuda:
        # CUDA's kernels, compiled for the host, take the CPU dispatch key: nothing of
        # csrc/cpu (kernels, engines) is built.
        sources += glob.glob("csrc/emulated_cuda/*.cpp")
    else:
        sources += glob.glob("csrc/cpu/*.cpp")
        # The GEMM engine and the channel FFT: their <name>_<isa>.cpp files set their own
        # target ISA (#pragma GCC target) and run only on CPUs that have it, so no global -m flags.
        sources += glob.glob("csrc/cpu/gemm/*.cpp") + glob.glob("csrc/cpu/fft/*.cpp")
    # After Python's own CFLAGS (which hold -g): -g0 drops the debug info from release
    # builds, and the linker strips what objects from elsewhere bring (symbols stay).
    optimize = ["-O0", "-g", "-DROLLCONV_DEBUG"] if debug else ["-O3", "-g0"]
    # -Wno-psabi: GCC notes that a vector wider than a file's target ISA is passed by another
    # ABI; such vectors only cross functions inside one per-ISA file, never the library's interface.
    cxx_flags = optimize + ["-fopenmp", "-Wno-psabi", f"-DROLLCONV_VERSION=\"{project_version()}\""]
    if emulate_cuda:
        cxx_flags.append("-DROLLCONV_EMULATE_CUDA")
    link_flags = ["-fopenmp"] + ([] if debug else ["-Wl,--strip-debug"])
    include_dirs = [os.path.join(ROOT, "csrc")]
    if not with_cuda:
        return CppExtension(
            "rollconv._C",
            sorted(sources),
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags,
        )
    sources += glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/cuda/*.cpp")
    archs = os.environ["TORCH_CUDA_ARCH_LIST"]
    cxx_flags += ["-DROLLCONV_WITH_CUDA", f"-DROLLCONV_CUDA_ARCHS=\"{archs}\""]
    nvcc_flags = (["-O0", "-g"] if debug else ["-O3"]) + [
        "-DROLLCONV_WITH_CUDA", "--expt-relaxed-constexpr", "--extended-lambda"]
    return CUDAExtension(
        "rollconv._C",
        sorted(sources),
        include_dirs=include_dirs + nvidia_pip_includes(),
        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
        extra_link_args=link_flags,
    )


class BuildExt(BuildExtension):
    """Compile into a fixed directory under build/ so that ninja rebuilds only what
    changed, also for `pip install -e .` (which otherwise uses a fresh temp dir); one
    directory per kind of build (see the top of this file), since ninja recompiles every
    object whose command line changed."""

    def run(self):
        kind = "cuda" if with_cuda else "cpu"
        if emulate_cuda:
            kind = "emulated-cuda/objects"
        elif not (self.inplace or getattr(self, "editable_mode", False)):
            kind = "wheel-" + kind
        self.build_temp = os.path.join(ROOT, "build", kind + ("-debug" if debug else ""))
        super().run()


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExt.with_options(use_ninja=True)},
)
