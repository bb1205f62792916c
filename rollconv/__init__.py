"""rollconv: exact rolling-filter convolution and im2col convolution ops for PyTorch.

Importing the package loads the compiled library (``rollconv._C``), which registers the
``torch.ops.rollconv.*`` ops with CPU kernels and, when built with CUDA, CUDA kernels.
"""
import torch  # noqa: F401  (the compiled library links against torch)

from . import _C  # registers torch.ops.rollconv.*
from . import _ops  # noqa: F401  fake kernels and autograd for every op
from . import backends, functional, nn, reference
from ._info import info

__version__ = _C.version
__all__ = ["backends", "functional", "nn", "reference", "info", "__version__"]
