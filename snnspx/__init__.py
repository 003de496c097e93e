"""snnspx: Spike Response Model layers and superpixel spike pooling for PyTorch.

Kernels are compiled on first use (never at import); see :func:`backends`.
:mod:`snnspx.viz` (figures, needs matplotlib) is imported on first use.
"""

from . import functional, nn, reference, superpixels
from ._backend import BACKENDS, BackendInfo, backends, kernel_calls
from ._build import BuildError
from . import encoding

__version__ = "0.1.0"

__all__ = [
    "functional", "nn", "reference", "superpixels", "backends", "BackendInfo", "BACKENDS", "BuildError", "kernel_calls",
    "encoding", "viz",
]


def __getattr__(name: str):
    # snnspx.viz on first access, so that `import snnspx` stays light; viz itself
    # imports matplotlib only when a figure is drawn.
    if name == "viz":
        import importlib

        return importlib.import_module(".viz", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
