"""Find the toolchain, JIT-build the compiled libraries, cache them, explain failures.

Two libraries are built from ``csrc/`` on first use (never at import) with
:mod:`torch.utils.cpp_extension` and ninja; both only add kernels to the schemas that
:mod:`snnspx._library` declares at import:

* ``cpu``: ``csrc/cpu/*.cpp``. Needs only a C++ compiler.
* ``cuda``: ``csrc/cuda/*.cpp`` and ``csrc/cuda/*.cu``. Needs ``nvcc`` and a CUDA build of PyTorch.

The cache (``$SNNSPX_CACHE_DIR``, default ``~/.cache/snnspx``) holds one folder per library
and key: the key is a hash of the sources' contents, the flags and the PyTorch, CUDA and
Python versions (not file times, not the source folder, not ninja's log). A folder is
complete when its ``manifest.json`` names the library's size and SHA-256 and the file
matches them: such a folder is loaded directly (``torch.ops.load_library``), with no
ninja, no compiler and nothing written, so a read-only shared cache works. A build runs
in a private folder beside it and is published by renaming that folder, so no process
ever sees a partial library; a damaged one (a truncated copy, a full disk) fails the
checksum and is rebuilt, never loaded.

Environment:

``CUDA_HOME`` / ``CUDA_PATH``
    The CUDA toolkit. Otherwise the folder above ``nvcc`` on ``PATH``, otherwise
    ``/usr/local/cuda`` when it holds ``bin/nvcc``.
``TORCH_CUDA_ARCH_LIST``
    GPU architectures to build for (PyTorch's own variable). Otherwise those of the
    visible GPUs, or ``9.0`` (Hopper) when none is visible (a compile-and-link check).
``SNNSPX_CACHE_DIR``, ``MAX_JOBS``, ``SNNSPX_VERBOSE_BUILD=1``
    Cache folder, parallel compile jobs, and the full compiler output.
``SNNSPX_EXTRA_CFLAGS``, ``SNNSPX_EXTRA_LDFLAGS``
    Extra compiler / linker flags (space-separated) for both libraries; the compiler
    flags reach the ``.cpp`` files only, not ``nvcc``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

__all__ = [
    "BuildError", "load_library", "library_status", "find_cuda_home", "source_dir", "cuda_arch_flags", "cache_entry",
]


class BuildError(RuntimeError):
    """A compiled snnspx library could not be built or loaded; the message says why."""


_lock = threading.RLock()
_loaded: dict[str, tuple[float, bool]] = {}  # kind -> (seconds the build or load took, whether it compiled)
_failed: dict[str, BuildError] = {}


def source_dir() -> Path:
    """The ``csrc`` folder: beside the package in a checkout, ``snnspx/_csrc`` in a wheel."""
    here = Path(__file__).resolve().parent
    for cand in (here.parent / "csrc", here / "_csrc"):
        if (cand / "srm_core.h").is_file():
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
        return sorted((src / "cpu").glob("*.cpp"))
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


def _digest(kind: str, flags: dict[str, list[str]]) -> str:
    """The cache key: the sources' contents, the flags and the versions the library depends on."""
    h = hashlib.sha256()
    h.update(f"{kind}|{torch.__version__}|{torch.version.cuda}|{sys.version_info[:2]}".encode())
    h.update(f"{sys.platform}|{platform.machine()}".encode())
    h.update(repr(sorted(flags.items())).encode())
    if kind == "cuda":
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
    torch.utils.cpp_extension would call (``$CXX``, else ``c++``) is not there; None otherwise.
    (Loading a complete cache entry needs no compiler.)"""
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


def _check_cuda_torch() -> None:
    if torch.version.cuda is None:
        raise BuildError(f"the cuda backend needs a CUDA build of PyTorch; this one ({torch.__version__}) is CPU-only")


def _check_cuda_toolkit() -> str:
    _check_cuda_torch()
    cuda_home = find_cuda_home()
    if cuda_home is None or not _is_toolkit(Path(cuda_home)):
        raise BuildError(
            "the cuda backend needs the CUDA toolkit: set CUDA_HOME to the folder holding bin/nvcc and "
            f"include/cuda_runtime_api.h (found {cuda_home!r})"
        )
    return cuda_home


def cache_entry(kind: str) -> Path:
    """The cache folder of the ``"cpu"`` or ``"cuda"`` library for these sources, flags and versions."""
    return _cache_root() / f"snnspx_{kind}-{_digest(kind, _flags(kind))}"


def _prebuilt_entries(kind: str) -> list[Path]:
    """Cache entries a wheel built with ``SNNSPX_PREBUILD`` carries (setup.py), for any key."""
    return sorted((Path(__file__).resolve().parent / "_prebuilt").glob(f"snnspx_{kind}-*"))


def _library_file(entry: Path, kind: str) -> Path:
    return entry / f"snnspx_{kind}.so"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def entry_state(entry: Path, kind: str) -> str:
    """``"complete"``, ``"missing"`` or ``"damaged: <why>"`` for a cache folder."""
    lib, manifest = _library_file(entry, kind), entry / "manifest.json"
    if not entry.exists():
        return "missing"
    try:
        want = json.loads(manifest.read_text())
        size = lib.stat().st_size
        digest = _sha256(lib) if size == want.get("size") else None
    except PermissionError as exc:
        return f"unreadable: {exc}"  # another user's entry: not ours to replace
    except (OSError, ValueError) as exc:
        return f"damaged: {exc}"
    if size != want.get("size"):
        return f"damaged: {lib.name} has {size} bytes, the manifest says {want.get('size')}"
    if digest != want.get("sha256"):
        return f"damaged: {lib.name} does not match its checksum"
    return "complete"


def _load_file(lib: Path, kind: str) -> None:
    try:
        torch.ops.load_library(str(lib))
    except (OSError, RuntimeError) as exc:
        raise BuildError(
            f"the snnspx {kind} library {lib} could not be loaded ({exc}). Delete its folder to have it "
            "built again, or run `python -m snnspx build`; backend='torch' needs no library"
        ) from exc


def _build(kind: str) -> None:
    """Compile the library into a private folder, load it, and publish the folder as its cache entry."""
    cuda_home = _check_cuda_toolkit() if kind == "cuda" else None
    entry = cache_entry(kind)
    root = entry.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
        private = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=root))
    except OSError as exc:
        raise BuildError(
            f"the snnspx kernel cache {root} cannot be written ({exc}), and the {kind} library is not "
            "built there yet. Point SNNSPX_CACHE_DIR at a writable folder, build ahead of time with "
            "`python -m snnspx build`, or use backend='torch', which needs no compiled library"
        ) from exc
    try:
        missing = _missing_compiler(kind, entry)
        if missing is not None:
            raise missing
        from torch.utils import cpp_extension  # only to build: its import warns about CUDA

        verbose = os.environ.get("SNNSPX_VERBOSE_BUILD") == "1"
        _say(f"compiling the {kind} kernels: none are cached yet for these sources and this PyTorch "
             f"(about {'2-4 minutes' if kind == 'cuda' else '1 minute'} on 2 cores; once): {entry}")
        start = time.perf_counter()
        try:
            with _torch_cuda_home(cuda_home if kind == "cuda" else cpp_extension.CUDA_HOME):
                cpp_extension.load(
                    name=f"snnspx_{kind}",
                    sources=[str(s) for s in _sources(kind)],
                    build_directory=str(private),
                    with_cuda=(kind == "cuda"),
                    is_python_module=False,
                    verbose=verbose,
                    **_flags(kind),
                )
        except Exception as exc:  # noqa: BLE001 - re-raised with the compiler's story attached
            detail = str(exc).strip()
            if len(detail) > 6000:
                detail = "...\n" + detail[-6000:]
            raise BuildError(
                f"building the snnspx {kind} library failed (set SNNSPX_VERBOSE_BUILD=1 for the full "
                f"compiler output):\n{detail}"
            ) from exc
        _say(f"compiled the {kind} kernels in {time.perf_counter() - start:.0f} s")
        _publish(private, entry, kind)
        private = None
    finally:
        if private is not None:
            shutil.rmtree(private, ignore_errors=True)


def _publish(private: Path, entry: Path, kind: str) -> None:
    """Write the manifest of a finished build and rename its private folder to `entry`."""
    try:
        lib = _library_file(private, kind)
        manifest = {"size": lib.stat().st_size, "sha256": _sha256(lib), "torch": torch.__version__,
                    "cuda": torch.version.cuda, "python": list(sys.version_info[:2])}
        for f in private.iterdir():  # objects and ninja's files: an entry is never rebuilt in place
            if f != lib:
                shutil.rmtree(f) if f.is_dir() else f.unlink()
        (private / "manifest.json").write_text(json.dumps(manifest))
        os.chmod(private, 0o755)  # mkdtemp's folder is private to its owner; a cache may be shared
    except OSError as exc:
        raise BuildError(f"the snnspx {kind} library was built but could not be stored in {private} ({exc})") from exc
    try:
        os.rename(private, entry)  # atomic: the entry appears complete or not at all
    except OSError:
        shutil.rmtree(private, ignore_errors=True)  # another process published the same entry first


def _say(msg: str) -> None:
    print(f"snnspx: {msg}", file=sys.stderr, flush=True)


def _load_library_locked(kind: str) -> None:
    if kind in _loaded:
        return
    if kind in _failed:
        raise _failed[kind]
    start = time.perf_counter()
    try:
        if kind == "cuda":
            _check_cuda_torch()  # loading needs no toolkit, only a CUDA build of PyTorch
        entry = cache_entry(kind)
        prebuilt = _prebuilt_entries(kind)
        compiled = False
        if not _load_prebuilt(kind, entry):
            state = entry_state(entry, kind)
            if state == "complete":
                _load_file(_library_file(entry, kind), kind)
            elif state.startswith("unreadable"):
                raise BuildError(f"the cached snnspx {kind} library in {entry} is {state}; point SNNSPX_CACHE_DIR "
                                 "at a folder of your own")
            else:
                if state != "missing":
                    _say(f"the cached {kind} library in {entry} is {state}; building it again")
                    _discard(entry)
                _build(kind)
                compiled = True
    except BuildError as exc:
        _failed[kind] = exc
        raise
    _loaded[kind] = (time.perf_counter() - start, compiled)


def _load_prebuilt(kind: str, entry: Path) -> bool:
    """Load the library a wheel carries for this key (see setup.py); False if there is none that
    loads, after one line that says why when the wheel carries one."""
    prebuilt = _prebuilt_entries(kind)
    mine = [p for p in prebuilt if p.name == entry.name]
    if mine and entry_state(mine[0], kind) == "complete":
        try:
            _load_file(_library_file(mine[0], kind), kind)
            return True
        except BuildError as exc:
            _say(f"the {kind} library inside this installation did not load ({exc}); using the cache {entry}")
            return False
    if prebuilt:
        _say(f"the {kind} library inside this installation was made for another build ({_made_for(prebuilt[0])}; "
             f"sources, flags or platform may differ too: its key is {prebuilt[0].name}, this installation "
             f"needs {entry.name}), or is damaged; using the cache {entry} instead")
    return False


def _made_for(entry: Path) -> str:
    try:
        m = json.loads((entry / "manifest.json").read_text())
        return f"torch {m['torch']} (CUDA {m['cuda']}, Python {'.'.join(map(str, m['python']))})"
    except (OSError, ValueError, KeyError):
        return "another build (its manifest is unreadable)"


def _discard(entry: Path) -> None:
    """Move a damaged entry out of the way (a process may still have its library mapped)."""
    try:
        os.rename(entry, entry.with_name(f".{entry.name}.damaged.{os.getpid()}"))
    except FileNotFoundError:
        pass  # another process moved it first
    except OSError as exc:
        raise BuildError(
            f"the cached snnspx library in {entry} is damaged and cannot be replaced ({exc}): delete that "
            "folder, or point SNNSPX_CACHE_DIR elsewhere"
        ) from exc


def is_loaded(kind: str) -> bool:
    """Whether the ``"cpu"`` or ``"cuda"`` library is loaded in this process (no build)."""
    return kind in _loaded


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
    secs, compiled = _loaded[kind]
    return True, (f"built and loaded in {secs:.1f} s" if compiled else "loaded (cached build)")


def build_seconds(kind: str) -> float | None:
    """Seconds the build or cache load of `kind` took in this process, None if not loaded."""
    return _loaded[kind][0] if kind in _loaded else None
