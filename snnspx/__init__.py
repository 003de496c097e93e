"""snnspx: Spike Response Model layers and superpixel spike pooling for PyTorch.

Kernels are compiled on first use (never at import); see :func:`backends`.
"""

from . import functional, nn, reference, superpixels
from ._backend import BACKENDS, BackendInfo, backends, kernel_calls
from ._build import BuildError

__version__ = "0.1.0"

__all__ = ["functional", "nn", "reference", "superpixels", "backends", "BackendInfo", "BACKENDS", "BuildError", "kernel_calls"]
