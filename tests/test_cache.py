"""The kernel cache under faults: damaged libraries, other versions, unwritable folders, no
compiler, concurrent first calls, and programs exported and loaded again. Each case runs
in a fresh Python process (a library loads once per process)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import snnspx
from snnspx import _backend, _build
from snnspx import functional as F

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def complete_entry() -> Path:
    """The complete cache entry of the cpu library that this test session uses."""
    _build.load_library("cpu")
    entry = _build.cache_entry("cpu")
    assert _build.entry_state(entry, "cpu") == "complete"
    return entry


def run(code: str, *, cache: Path | str, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter with SNNSPX_CACHE_DIR=`cache`; stdout and stderr captured."""
    full_env = dict(os.environ, SNNSPX_CACHE_DIR=str(cache), PYTHONPATH=str(ROOT))
    full_env.pop("SNNSPX_BACKEND", None)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=full_env, capture_output=True, text=True, timeout=timeout,
        cwd="/",  # not the checkout: the import path is PYTHONPATH's alone
    )


def copy_entry(entry: Path, cache: Path) -> Path:
    dst = cache / entry.name
    shutil.copytree(entry, dst)
    return dst


@pytest.fixture
def fresh_loader(monkeypatch, tmp_path):
    """The loader as in a new process, in this one: nothing loaded or failed yet, the cache in
    `tmp_path`, and builds stubbed (a compile attempt raises BuildError("WOULD BUILD <kind>"))."""
    monkeypatch.setattr(_build, "_loaded", {})
    monkeypatch.setattr(_build, "_failed", {})
    monkeypatch.setenv("SNNSPX_CACHE_DIR", str(tmp_path))

    def no_build(kind):
        raise _build.BuildError(f"WOULD BUILD {kind}")

    monkeypatch.setattr(_build, "_build", no_build)
    return tmp_path


def test_truncated_library_is_never_loaded(fresh_loader, complete_entry, capfd):
    entry = copy_entry(complete_entry, fresh_loader)
    lib = entry / "snnspx_cpu.so"
    data = lib.read_bytes()
    lib.write_bytes(data[: len(data) // 3])  # an interrupted copy: dlopen would die of SIGBUS
    with pytest.raises(_build.BuildError, match="WOULD BUILD cpu"):
        _build.load_library("cpu")
    err = capfd.readouterr().err
    assert "damaged" in err and str(entry) in err
    assert not entry.exists()  # moved aside, so that the rebuild can publish a new entry
    assert any(p.name.startswith(f".{entry.name}.damaged") for p in fresh_loader.iterdir())


def test_missing_manifest_is_damaged_not_complete(tmp_path, complete_entry):
    entry = copy_entry(complete_entry, tmp_path)
    (entry / "manifest.json").unlink()
    assert _build.entry_state(entry, "cpu").startswith("damaged")
    manifest = json.loads((complete_entry / "manifest.json").read_text())
    (entry / "manifest.json").write_text(json.dumps(dict(manifest, sha256="0" * 64)))
    assert _build.entry_state(entry, "cpu") == "damaged: snnspx_cpu.so does not match its checksum"


def test_complete_cache_loads_without_compiler_or_writes(tmp_path, complete_entry):
    """A warm cache needs no ninja and no compiler (PATH holds neither), writes nothing (so a
    read-only shared cache works), and PyTorch's build machinery is not even imported (no
    'No CUDA runtime is found' warning). Meanwhile 48 threads make their first snnspx call at
    once, in a fresh process: every one gets its gradient (the autograd formulas exist from
    import on, before any kernel is loaded)."""
    cache = tmp_path / "cache"
    entry = copy_entry(complete_entry, cache)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in cache.rglob("*"))
    bindir = tmp_path / "bin-empty"
    bindir.mkdir()
    out = run("""
import shutil, sys, threading, warnings
warnings.simplefilter("error")
import torch, snnspx
from snnspx import _build, functional as F
assert shutil.which("c++") is None and shutil.which("ninja") is None
x0 = torch.randn(12, 2, 5, generator=torch.Generator().manual_seed(0)) + 0.6
results = [None] * 48
barrier = threading.Barrier(48)
def work(i):
    x = x0.clone().requires_grad_()
    barrier.wait()
    F.srm_neuron(x).sum().backward()
    results[i] = x.grad
threads = [threading.Thread(target=work, args=(i,)) for i in range(48)]
for t in threads: t.start()
for t in threads: t.join()
assert all(g is not None for g in results), sum(g is None for g in results)
assert all(torch.equal(g, results[0]) for g in results)
assert _build.is_loaded("cpu") and not _build._loaded["cpu"][1]
assert "torch.utils.cpp_extension" not in sys.modules
print("OK", float(results[0].abs().sum()) > 0)
""", cache=cache, env={"PATH": str(bindir), "CXX": ""})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "OK True", out.stdout
    assert "No CUDA runtime" not in out.stderr and "snnspx:" not in out.stderr, out.stderr
    assert sorted((p.name, p.stat().st_mtime_ns) for p in cache.rglob("*")) == before
    assert entry.exists()


def test_prebuilt_library_for_another_torch_is_rejected(fresh_loader, complete_entry, monkeypatch, capfd):
    """A wheel's library made for another PyTorch (another cache key) is not loaded: one line
    says so, and the cache (here: a build, stubbed) takes over."""
    other = fresh_loader / "pkg" / "_prebuilt" / "snnspx_cpu-0123456789abcdef"
    shutil.copytree(complete_entry, other)
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps(dict(manifest, torch="2.0.0")))
    monkeypatch.setattr(_build, "_prebuilt_entries", lambda kind: [other])
    with pytest.raises(_build.BuildError, match="WOULD BUILD cpu"):
        _build.load_library("cpu")
    err = capfd.readouterr().err
    assert "made for another build (torch 2.0.0" in err and f"needs {_build.cache_entry('cpu').name}" in err


def test_prebuilt_library_for_this_torch_loads(fresh_loader, complete_entry, monkeypatch):
    """A wheel's library made for this PyTorch is loaded as it is: nothing is built or written."""
    mine = fresh_loader / "pkg" / "_prebuilt" / complete_entry.name
    shutil.copytree(complete_entry, mine)
    monkeypatch.setattr(_build, "_prebuilt_entries", lambda kind: [mine])
    loaded = []
    monkeypatch.setattr(_build, "_load_file", lambda lib, kind: loaded.append(lib))
    _build.load_library("cpu")
    assert loaded == [mine / "snnspx_cpu.so"] and _build._loaded["cpu"][1] is False
    assert sorted(p.name for p in fresh_loader.iterdir()) == ["pkg"]


@pytest.mark.parametrize("kind", ["a file", "a folder inside a file"])
def test_unusable_cache_folder(tmp_path, monkeypatch, kind):
    """An unusable cache: BuildError naming the path and the fixes when cpp is requested, a
    report from backends(), and one fallback warning by default."""
    monkeypatch.setattr(_build, "_loaded", {})
    monkeypatch.setattr(_build, "_failed", {})
    monkeypatch.setattr(_backend, "_warned", set())
    target = tmp_path / "cache"
    target.write_text("not a folder")
    monkeypatch.setenv("SNNSPX_CACHE_DIR", str(target if kind == "a file" else target / "sub"))
    with pytest.raises(snnspx.BuildError) as info:
        F.srm_neuron(torch.ones(2, 3), backend="cpp")
    msg = str(info.value)
    assert str(target) in msg and "SNNSPX_CACHE_DIR" in msg and "backend='torch'" in msg
    assert not snnspx.backends()["cpp"].available
    with pytest.warns(RuntimeWarning, match="running the slower 'torch' backend") as record:
        y = F.srm_neuron(torch.ones(2, 3))
    assert len(record) == 1 and tuple(y.shape) == (2, 3)


def test_exported_program_loads_after_import(tmp_path, complete_entry):
    """The ops exist as soon as snnspx is imported: a saved exported program loads and runs in a
    process that has run no snnspx op, before any library is loaded."""
    path = tmp_path / "neuron.pt2"
    torch.export.save(torch.export.export(snnspx.nn.SRMNeuron(v_th=0.5), (torch.randn(6, 2, 3),)), str(path))
    copy_entry(complete_entry, tmp_path / "cache")
    out = run(f"""
import torch, snnspx
from snnspx import _build
prog = torch.export.load({str(path)!r})
assert not _build.is_loaded("cpu")
x = torch.randn(6, 2, 3)
assert torch.equal(prog.module()(x), snnspx.nn.SRMNeuron(v_th=0.5)(x))
print("OK")
""", cache=tmp_path / "cache")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "OK"


def test_cache_key_is_the_sources_contents_not_their_place(tmp_path, monkeypatch):
    """Reinstalling or moving the same sources finds the same entry; editing one rebuilds."""
    key = _build.cache_entry("cpu").name
    copy = tmp_path / "elsewhere" / "_csrc"
    shutil.copytree(_build.source_dir(), copy)
    monkeypatch.setattr(_build, "source_dir", lambda: copy)
    assert _build.cache_entry("cpu").name == key
    (copy / "cpu" / "srm.cpp").write_text((copy / "cpu" / "srm.cpp").read_text() + "\n// edited\n")
    assert _build.cache_entry("cpu").name != key


def test_cpu_key_ignores_cuda_settings_and_names_the_platform(monkeypatch):
    key = _build.cache_entry("cpu").name
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0")
    assert _build.cache_entry("cpu").name == key  # a CUDA setting does not rebuild the CPU library
    import platform
    other = "aarch64" if platform.machine() != "aarch64" else "x86_64"
    monkeypatch.setattr(platform, "machine", lambda: other)
    assert _build.cache_entry("cpu").name != key  # nor is another architecture's library loaded


def test_damaged_entry_moved_by_another_process_first(tmp_path, complete_entry):
    """Two processes find the same damaged entry: the second to move it aside finds it gone,
    which is fine (it then builds or finds the first one's rebuild)."""
    entry = copy_entry(complete_entry, tmp_path)
    _build._discard(entry)
    _build._discard(entry)  # no error
    assert not entry.exists()


def test_unreadable_entry_is_not_discarded(fresh_loader, complete_entry, monkeypatch):
    """An entry the process may not read (another user's, in a shared cache) is reported, not moved
    away or rebuilt over."""
    entry = copy_entry(complete_entry, fresh_loader)
    real = Path.read_text

    def denied(self, *args, **kwargs):
        if self.name == "manifest.json":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(_build.BuildError, match="unreadable.*SNNSPX_CACHE_DIR"):
        _build.load_library("cpu")
    assert entry.exists()


def test_torch_backend_backward_keeps_its_kernel_when_a_library_loads_between(tmp_path, complete_entry):
    """backend='torch' before any library is loaded; another op loads cpp before the backward:
    the backward still runs the PyTorch kernel (the same choice as its forward)."""
    cache = tmp_path / "cache"
    copy_entry(complete_entry, cache)
    out = run("""
import torch, snnspx
from snnspx import _build, nn
x = (torch.randn(8, 2, 5, generator=torch.Generator().manual_seed(0)) + 0.6).requires_grad_()
a, b = nn.SRMNeuron(backend="torch", v_th=0.3), nn.SRMNeuron(v_th=0.3)
mid = a(x)
assert not _build.is_loaded("cpu")
out = b(mid * 3)  # loads cpp
assert _build.is_loaded("cpu")
with torch.profiler.profile() as prof:
    out.sum().backward()
names = [e.name for e in prof.events()]
assert names.count("snnspx::srm_neuron_bwd") >= 2
assert "aten::where" in names  # the PyTorch kernel of a's backward ran
print("OK")
""", cache=cache)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "OK"
