import pytest
import torch

import rollconv  # noqa: F401  registers the ops

HAS_GPU = torch.cuda.is_available()
requires_gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")

# Every test that takes `device` runs on CPU, and on CUDA when a GPU is visible.
DEVICES = ["cpu", pytest.param("cuda", marks=[requires_gpu, pytest.mark.cuda])]


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def small_workspace(monkeypatch):
    """Force the im2col workspace to 1 MiB so the batch is processed in several chunks."""
    monkeypatch.setenv("ROLLCONV_WORKSPACE_MB", "1")
