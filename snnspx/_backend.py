"""Which kernel runs an op: ``cuda``, ``cpp`` or ``torch``.

An explicit ``backend=`` argument wins, then the environment variable ``SNNSPX_BACKEND``;
both are requests, and a request that cannot run is an error. With neither, CPU tensors go
to ``cpp``; if that library does not build, the op runs its PyTorch kernel (``torch``) after
one warning that carries the build error. CUDA tensors go to ``cuda`` only while
:data:`CUDA_KERNELS_VERIFIED` holds (the CUDA library of this version passed
``benchmarks/gpu_check.sh`` on a GPU); otherwise to ``torch``, after one warning, unless
``SNNSPX_CUDA_DEFAULT=cuda`` was set when snnspx was imported (or ``backend="cuda"`` is passed).

Every backend runs the same op (one schema, one autograd formula): ``cpp`` and ``cuda`` are
the kernels a compiled library registers for its device, ``torch`` the PyTorch kernel every
op has (see :mod:`snnspx._library`).
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import NamedTuple

import torch

from . import _build, _library

BACKENDS = ("cuda", "cpp", "torch")
_COMPILED = {"cuda": "cuda", "cpp": "cpu"}  # backend -> library kind
_warned: set[str] = set()

# Whether the CUDA kernels of this version have passed benchmarks/gpu_check.sh on a GPU. A
# CUDA kernel that never ran on a GPU is never a default: until a pass, CUDA tensors run the
# PyTorch kernels unless asked otherwise. Set to True in the commit that records a pass
# (CONTRIBUTING.md, "The last GPU pass").
CUDA_KERNELS_VERIFIED = False
# Read once, at import: "cuda" makes the compiled CUDA kernels the default for CUDA tensors
# (what gpu_check.sh tests), "torch" the PyTorch kernels; empty: CUDA_KERNELS_VERIFIED decides.
_CUDA_DEFAULT_ENV = os.environ.get("SNNSPX_CUDA_DEFAULT", "")


class BackendInfo(NamedTuple):
    available: bool
    reason: str


def backends() -> dict[str, BackendInfo]:
    """Which backends can run here, and why not for the others.

    Builds the compiled libraries if they have not been built yet (about 30 s each on
    a 2-core machine with an empty cache; later calls load the cached build).

    Returns:
        ``{"cuda": BackendInfo(available, reason), "cpp": ..., "torch": ...}``
    """
    out: dict[str, BackendInfo] = {}
    if not torch.cuda.is_available():
        out["cuda"] = BackendInfo(False, "no CUDA device is visible to PyTorch (torch.cuda.is_available() is False)")
    else:
        out["cuda"] = BackendInfo(*_build.library_status("cuda"))
    out["cpp"] = BackendInfo(*_build.library_status("cpu"))
    out["torch"] = BackendInfo(True, "vectorised PyTorch, always available")
    return out


def check_name(backend, source: str = "backend") -> None:
    """A backend request: one of BACKENDS (None is checked by the caller)."""
    if backend == "reference":
        raise ValueError(
            f"{source}='reference' is not a backend: snnspx.reference holds the plain loops the tests "
            "compare with; call its functions directly"
        )
    if backend not in BACKENDS:
        raise ValueError(f"{source} must be one of {BACKENDS} or None, got {backend!r}")


def _default(device: torch.device) -> str:
    if device.type not in ("cpu", "cuda"):
        return "torch"  # e.g. meta: the fake kernels serve, nothing is built
    if device.type == "cuda" and not _cuda_kernels_default():
        return "torch"
    want = "cuda" if device.type == "cuda" else "cpp"
    kind = _COMPILED[want]
    if kind in _build._loaded:  # fast path, also keeps torch.compile tracing simple
        return want
    try:
        _build.load_library(kind)
    except _build.BuildError as exc:
        if want not in _warned:
            _warned.add(want)
            warnings.warn(
                f"snnspx: the {want!r} backend is unavailable, running the slower 'torch' backend instead. "
                f"Pass backend=... or set SNNSPX_BACKEND to choose explicitly. Reason: {exc}",
                RuntimeWarning,
                stacklevel=_caller_stacklevel(),
            )
        return "torch"
    return want


def _cuda_kernels_default() -> bool:
    """Whether CUDA tensors go to the compiled CUDA kernels when no backend is requested; says
    why not once (a warning) when they do not."""
    if _CUDA_DEFAULT_ENV not in ("", "cuda", "torch"):
        raise ValueError(f"SNNSPX_CUDA_DEFAULT must be 'cuda', 'torch' or empty, got {_CUDA_DEFAULT_ENV!r}")
    if _CUDA_DEFAULT_ENV == "cuda" or (CUDA_KERNELS_VERIFIED and _CUDA_DEFAULT_ENV != "torch"):
        return True
    if not CUDA_KERNELS_VERIFIED and "cuda-unverified" not in _warned:
        _warned.add("cuda-unverified")
        warnings.warn(
            "snnspx: CUDA tensors run the PyTorch kernels ('torch' backend): the CUDA kernels of this version "
            "have not yet passed the project's GPU check (docs/build.md). Pass backend='cuda', or set "
            "SNNSPX_CUDA_DEFAULT=cuda before importing snnspx, to use them anyway.",
            RuntimeWarning,
            stacklevel=_caller_stacklevel(),
        )
    return False


# Frames in these folders are not the user's: snnspx itself, and torch (nn.Module.__call__,
# torch.library's wrappers) between a user's call and snnspx.
_INTERNAL_DIRS = tuple(
    os.path.dirname(os.path.abspath(f)) + os.sep for f in (__file__, torch.__file__)
)


def _caller_stacklevel() -> int:
    """The stacklevel for warnings.warn, called by the caller of this function, that points
    at the user's line: the first frame outside snnspx and torch, however deep the package's
    own calls (a functional op, a module, a layer) went."""
    frame, level = sys._getframe(2), 2  # the caller of the function that calls warnings.warn
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_INTERNAL_DIRS):
        frame, level = frame.f_back, level + 1
    return level


def resolve(backend: str | None, device: torch.device) -> str:
    """The backend that runs an op whose tensors live on `device`.

    Raises:
        ValueError: unknown name, or a compiled backend asked for tensors on the wrong device.
        snnspx.BuildError: a compiled backend was requested and its library does not build.
    """
    if torch.compiler.is_compiling():
        return _resolve_while_tracing(backend, device.type)
    return _resolve(backend, device)


def _assume_constant_result(fn):
    # What torch.compiler.assume_constant_result(fn) does, without importing Dynamo
    # (about a second) when snnspx is imported: Dynamo then calls fn for real while
    # it traces and keeps the answer as a constant, instead of tracing into it.
    # tests/test_layers.py compiles a model in a fresh process to keep this honest.
    fn._dynamo_marked_constant = True
    return fn


# The oldest PyTorch whose torch.compile runs the test suite (tests/test_compile.py and the
# compiled-model tests). The Dynamo of torch 2.4 gave the torch backend's layers wrong
# gradients and failed on others; versions between 2.4 and 2.11 are untested.
COMPILE_MIN_TORCH = (2, 11)


def _torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split(".")[:2]
    return int(major), int(minor)


@_assume_constant_result
def _check_compile_version() -> bool:
    """Under torch.compile: a clear error, rather than possibly wrong gradients, on a PyTorch
    older than COMPILE_MIN_TORCH (eager calls are not affected)."""
    if _torch_version() < COMPILE_MIN_TORCH:
        want = ".".join(map(str, COMPILE_MIN_TORCH))
        raise RuntimeError(
            f"snnspx under torch.compile needs torch >= {want}, this is torch {torch.__version__}: the "
            "Dynamo of older versions gave snnspx layers wrong gradients or failed on them. Run the "
            f"model without torch.compile, or update PyTorch (docs/build.md)"
        )
    return True


@_assume_constant_result
def _resolve_while_tracing(backend: str | None, device_type: str) -> str:
    # Building or loading a library (locks, files, subprocesses) cannot be traced, and
    # the first snnspx op of a process may well be inside torch.compile.
    _check_compile_version()
    return _resolve(backend, torch.device(device_type))


def _resolve(backend: str | None, device: torch.device) -> str:
    source = "backend"
    if backend is None:
        env = os.environ.get("SNNSPX_BACKEND")
        if env:
            backend, source = env, "SNNSPX_BACKEND"
    if backend is None:
        return _default(device)
    check_name(backend, source)
    if backend == "cpp" and device.type != "cpu":
        raise ValueError(f"{source}='cpp' runs on CPU tensors, got tensors on {device}")
    if backend == "cuda" and device.type != "cuda":
        raise ValueError(f"{source}='cuda' runs on CUDA tensors, got tensors on {device}")
    if backend in _COMPILED and _COMPILED[backend] not in _build._loaded:
        _build.load_library(_COMPILED[backend])
    return backend


def check_request(backend: str | None, device: torch.device) -> None:
    """For an op that has only PyTorch code: a request (argument, then ``SNNSPX_BACKEND``) is
    checked as :func:`resolve` checks it; with none, nothing is built or loaded."""
    if backend is not None or os.environ.get("SNNSPX_BACKEND"):
        resolve(backend, device)


def kernels(backend: str, device: torch.device):
    """The context an op of the resolved `backend` runs in: :func:`snnspx._library.torch_kernels`
    when ``"torch"`` was chosen on the CPU or a GPU, else nothing. Forced even while no compiled
    library is loaded, so that a library loaded between an op's forward and its backward does
    not change the kernel of the backward. Inside torch.compile the traced op runs the kernel
    registered for the device: the choice is made in eager mode only."""
    active = backend == "torch" and device.type in ("cpu", "cuda") and not torch.compiler.is_compiling()
    return _library.torch_kernels(active)
