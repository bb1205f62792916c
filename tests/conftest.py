import pytest
import torch
import torch._dynamo

import rollconv  # noqa: F401  registers the ops

HAS_GPU = torch.cuda.is_available()
requires_gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")

# The emulated CUDA build (tests/emulated_cuda_build.sh) compiles csrc/cuda/primitives.cu for
# the host and registers its kernels for CPU tensors: there the CUDA test cases run on CPU
# tensors. CUDA is the device those cases use; requires_cuda_kernels skips them where
# neither a GPU nor the emulated build is present. (requires_gpu is for what only a GPU
# has: streams, several devices, inductor's GPU code.)
EMULATED_CUDA = bool(rollconv._C.emulated_cuda)
CUDA = torch.device("cpu" if EMULATED_CUDA else "cuda")
requires_cuda_kernels = pytest.mark.skipif(
    not (HAS_GPU or EMULATED_CUDA), reason="needs a CUDA GPU or the emulated CUDA build"
)

# Every test that takes `device` runs on CPU, and on CUDA when a GPU is visible (on CPU
# tensors with CUDA's kernels in the emulated CUDA build).
DEVICES = ["cpu", pytest.param("cuda", marks=[requires_cuda_kernels, pytest.mark.cuda])]


@pytest.fixture(params=DEVICES)
def device(request):
    return CUDA if request.param == "cuda" else torch.device("cpu")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _fresh_compile_caches():
    """Each test compiles from scratch: torch.compile's caches (and its limit of 8
    recompilations per function) are per process, and the suite runs in one process."""
    yield
    torch._dynamo.reset()


@pytest.fixture
def small_workspace():
    """Force the im2col workspace to 1 MiB so the batch is processed in several chunks."""
    with rollconv.backends.flags(workspace_mb=1):
        yield
