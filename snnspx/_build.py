"""Find the toolchain, JIT-build the compiled libraries, cache them, explain failures.

Two libraries are built from ``csrc/`` with :func:`torch.utils.cpp_extension.load`
and ninja, on first use, never at import:

* ``cpu``: ``csrc/ops.cpp`` (the operator schemas) and ``csrc/cpu/*.cpp``. Needs only
  a C++ compiler; no CUDA toolkit.
* ``cuda``: ``csrc/cuda/*.cpp`` and ``csrc/cuda/*.cu``. Needs ``nvcc`` and a CUDA
  build of PyTorch; it registers CUDA kernels for the schemas of the ``cpu`` library,
  which is therefore loaded first.

Builds land in ``$SNNSPX_CACHE_DIR`` (default ``~/.cache/snnspx``), in a folder
named after a hash of the sources, the source folder's path, the flags and the
PyTorch, CUDA and Python versions, so an edited kernel (or a moved checkout) is
rebuilt and an unchanged one is loaded straight from disk. A build takes about 30 s
per library on 2 cores.

Environment:

``CUDA_HOME`` / ``CUDA_PATH``
    The CUDA toolkit. Otherwise the folder above ``nvcc`` on ``PATH``, otherwise
    ``/usr/local/cuda`` when it holds ``bin/nvcc``.
``TORCH_CUDA_ARCH_LIST``
    GPU architectures to build for (PyTorch's own variable). Otherwise those of the
    visible GPUs, or ``9.0`` (Hopper) when none is visible (a compile-and-link check).
``SNNSPX_CACHE_DIR``, ``MAX_JOBS``, ``SNNSPX_VERBOSE_BUILD=1``
    Build folder, parallel compile jobs, and the full compiler output.
``SNNSPX_EXTRA_CFLAGS``, ``SNNSPX_EXTRA_LDFLAGS``
    Extra compiler / linker flags (space-separated) for both libraries; the compiler
    flags reach the ``.cpp`` files only, not ``nvcc``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import torch

__all__ = ["BuildError", "load_library", "library_status", "find_cuda_home", "source_dir", "cuda_arch_flags"]


class BuildError(RuntimeError):
    """A compiled snnspx library could not be built or loaded; the message says why."""


_lock = threading.RLock()
_loaded: dict[str, float] = {}  # kind -> seconds the build/load took
_failed: dict[str, BuildError] = {}


def source_dir() -> Path:
    """The ``csrc`` folder: beside the package in a checkout, ``snnspx/_csrc`` in a wheel."""
    here = Path(__file__).resolve().parent
    for cand in (here.parent / "csrc", here / "_csrc"):
        if (cand / "ops.cpp").is_file():
            return cand
    raise BuildError(f"snnspx C++/CUDA sources not found (looked in {here.parent / 'csrc'} and {here / '_csrc'})")


def _is_toolkit(folder: Path) -> bool:
    return (folder / "bin" / "nvcc").exists() and (folder / "include" / "cuda_runtime_api.h").exists()


def find_cuda_home() -> str | None:
    """The CUDA toolkit folder (``bin/nvcc`` and ``include/cuda_runtime_api.h``), or None.

    ``CUDA_HOME`` / ``CUDA_PATH`` win when set. Otherwise the folder above ``nvcc``
    on ``PATH`` (symbolic links followed) when it is a whole toolkit, then
    ``/usr/local/cuda``. (PyTorch's own guess takes the folder above the first
    ``nvcc`` on ``PATH`` even when that is a wrapper script in ``/usr/local/bin``.)
    """
    for var in ("CUDA_HOME", "CUDA_PATH"):
        val = os.environ.get(var)
        if val:
            return val
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(Path(nvcc).resolve().parent.parent)
    candidates.append(Path("/usr/local/cuda"))
    for cand in candidates:
        if _is_toolkit(cand):
            return str(cand)
    return None


def cuda_arch_flags() -> list[str]:
    """``-gencode`` flags: TORCH_CUDA_ARCH_LIST, else the visible GPUs, else sm_90."""
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return []  # PyTorch's cpp_extension turns the variable into flags itself
    caps = set()
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            caps.add(f"{major}{minor}")
    if not caps:
        caps = {"90"}
    return [f"-gencode=arch=compute_{c},code=sm_{c}" for c in sorted(caps)]


def _cache_root() -> Path:
    root = os.environ.get("SNNSPX_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "snnspx"


def _sources(kind: str) -> list[Path]:
    src = source_dir()
    if kind == "cpu":
        return [src / "ops.cpp", *sorted((src / "cpu").glob("*.cpp"))]
    return [*sorted((src / "cuda").glob("*.cpp")), *sorted((src / "cuda").glob("*.cu"))]


def _env_flags(var: str) -> list[str]:
    return os.environ.get(var, "").split()


def _flags(kind: str) -> dict[str, list[str]]:
    # The C++ standard is left to cpp_extension (it follows the PyTorch build).
    cflags = ["-O3", *_env_flags("SNNSPX_EXTRA_CFLAGS")]
    ldflags = _env_flags("SNNSPX_EXTRA_LDFLAGS")
    if kind == "cpu":
        # -fno-trapping-math lets the compiler turn the per-neuron selects into vector
        # blends (it changes no result: the kernels never rely on FP traps).
        # -ffp-contract=off: no fused multiply-adds, whose single rounding would make the
        # neuron state differ from the other backends' (GCC contracts by default where the
        # target has FMA, e.g. on ARM64).
        return {
            "extra_cflags": [*cflags, "-fopenmp", "-fno-trapping-math", "-ffp-contract=off"],
            "extra_ldflags": ["-fopenmp", *ldflags],
        }
    return {
        "extra_cflags": cflags,
        "extra_cuda_cflags": ["-O3", "--expt-relaxed-constexpr", *cuda_arch_flags()],
        "extra_ldflags": ldflags,
    }


def _digest(kind: str, sources: list[Path], flags: dict[str, list[str]], cuda_home: str | None) -> str:
    h = hashlib.sha256()
    # The source folder is part of the key: the compiler records absolute paths, so
    # two checkouts sharing one cache folder would keep rebuilding each other's kernels.
    h.update(f"{kind}|{torch.__version__}|{torch.version.cuda}|{sys.version_info[:2]}|{cuda_home}|{source_dir()}".encode())
    h.update(repr(sorted(flags.items())).encode())
    h.update(os.environ.get("TORCH_CUDA_ARCH_LIST", "").encode())
    src = source_dir()
    for path in sorted(src.rglob("*")):
        if path.suffix in {".cpp", ".cu", ".h", ".cuh"}:
            h.update(str(path.relative_to(src)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _torch_cuda_home(cuda_home: str | None):
    """PyTorch reads CUDA_HOME once, at import: point it at the toolkit we found."""
    from torch.utils import cpp_extension

    old = cpp_extension.CUDA_HOME
    cpp_extension.CUDA_HOME = cuda_home
    try:
        yield
    finally:
        cpp_extension.CUDA_HOME = old


def _missing_compiler(kind: str, build_dir: Path) -> BuildError | None:
    """A clear error when the library must be compiled and the C++ compiler that
    torch.utils.cpp_extension would call (``$CXX``, else ``c++``) is not there; None otherwise
    (also when the library is already built: loading it needs no compiler)."""
    if (build_dir / f"snnspx_{kind}.so").exists():
        return None
    cxx = os.environ.get("CXX", "").strip()
    exe = cxx.split()[0] if cxx else "c++"
    if shutil.which(exe) is not None:
        return None
    where = f"CXX={cxx!r}" if cxx else "'c++', the default (set CXX to name another)"
    return BuildError(
        f"the snnspx {kind} library must be compiled (nothing built yet in {build_dir}) but there is no C++ "
        f"compiler: {where} is not an executable on PATH. Install one (e.g. `sudo apt install build-essential` "
        "or `conda install gxx_linux-64`) or point CXX at one, then restart Python; or use backend='torch', "
        "which needs no compiler. See docs/build.md, 'When the compiler fails'."
    )


def _build(kind: str) -> None:
    from torch.utils import cpp_extension

    cuda_home = None
    if kind == "cuda":
        if torch.version.cuda is None:
            raise BuildError(f"the cuda backend needs a CUDA build of PyTorch; this one ({torch.__version__}) is CPU-only")
        cuda_home = find_cuda_home()
        if cuda_home is None or not _is_toolkit(Path(cuda_home)):
            raise BuildError(
                "the cuda backend needs the CUDA toolkit: set CUDA_HOME to the folder holding bin/nvcc and "
                f"include/cuda_runtime_api.h (found {cuda_home!r})"
            )
    sources = _sources(kind)
    flags = _flags(kind)
    name = f"snnspx_{kind}"
    build_dir = _cache_root() / f"torch{torch.__version__.split('+')[0]}" / f"{name}_{_digest(kind, sources, flags, cuda_home)}"
    build_dir.mkdir(parents=True, exist_ok=True)
    missing = _missing_compiler(kind, build_dir)
    if missing is not None:
        raise missing
    verbose = os.environ.get("SNNSPX_VERBOSE_BUILD") == "1"
    try:
        with _torch_cuda_home(cuda_home if kind == "cuda" else cpp_extension.CUDA_HOME):
            cpp_extension.load(
                name=name,
                sources=[str(s) for s in sources],
                build_directory=str(build_dir),
                with_cuda=(kind == "cuda"),
                is_python_module=False,
                verbose=verbose,
                **flags,
            )
    except Exception as exc:  # noqa: BLE001 - re-raised with the compiler's story attached
        detail = str(exc).strip()
        if len(detail) > 6000:
            detail = "...\n" + detail[-6000:]
        raise BuildError(
            f"building the snnspx {kind} library failed (build folder {build_dir}; set SNNSPX_VERBOSE_BUILD=1 "
            f"for the full compiler output):\n{detail}"
        ) from exc


def _load_library_locked(kind: str) -> None:
    if kind in _loaded:
        return
    if kind in _failed:
        raise _failed[kind]
    if kind == "cuda":
        _load_library_locked("cpu")  # the schemas live in the cpu library
    start = time.perf_counter()
    try:
        _build(kind)
    except BuildError as exc:
        _failed[kind] = exc
        raise
    _loaded[kind] = time.perf_counter() - start
    if kind == "cpu":
        from . import _registrations  # fake kernels and autograd need the schemas

        _registrations.register_all()


def load_library(kind: str) -> None:
    """Build (or take from the cache) and load the ``"cpu"`` or ``"cuda"`` library.

    Idempotent and thread-safe. Raises :class:`BuildError` with the compiler's
    message when the build fails; the failure is remembered for this process.
    """
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"kind must be 'cpu' or 'cuda', got {kind!r}")
    with _lock:
        _load_library_locked(kind)


def library_status(kind: str) -> tuple[bool, str]:
    """(loaded, why): tries the build once if it has not been tried yet."""
    try:
        load_library(kind)
    except BuildError as exc:
        return False, str(exc)
    secs = _loaded[kind]
    return True, (f"built and loaded in {secs:.1f} s" if secs > 2 else "loaded (cached build)")


def build_seconds(kind: str) -> float | None:
    """Seconds the build or cache load of `kind` took in this process, None if not loaded."""
    return _loaded.get(kind)
