"""snnspx: Spike Response Model layers and superpixel spike pooling for PyTorch.

The ops are declared at import, each with a PyTorch kernel; the C++/CUDA kernels are
compiled on first use (never at import) and added to them; see :func:`backends`.
:mod:`snnspx.viz` (figures, needs matplotlib) is imported on first use.
"""

from .params import MAX_DUDT_INV, SRMParams
from . import functional, nn, reference, superpixels
from ._backend import BACKENDS, BackendInfo, backends
from ._build import BuildError
from . import encoding, init, losses

__version__ = "0.1.0"

__all__ = [
    "SRMParams", "MAX_DUDT_INV", "functional", "nn", "reference", "superpixels", "backends", "BackendInfo",
    "BACKENDS", "BuildError", "encoding", "init", "losses", "viz",
]


def __getattr__(name: str):
    # snnspx.viz on first access, so that `import snnspx` stays light; viz itself
    # imports matplotlib only when a figure is drawn.
    if name == "viz":
        import importlib

        return importlib.import_module(".viz", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
