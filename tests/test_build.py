"""The JIT build: the ops exist at import without any build, the CPU library builds here,
the CUDA one compiles and links wherever nvcc and a CUDA build of PyTorch exist (also
without a GPU), and a failed build is reported, never silently replaced."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import snnspx
from snnspx import _backend, _build


def test_cpu_library_builds():
    info = snnspx.backends()["cpp"]
    assert info.available, info.reason
    assert torch._C._dispatch_has_kernel_for_dispatch_key("snnspx::srm_forward", "CPU")


IMPORT_ONLY = r"""
import sys, torch, snnspx
from snnspx import _build
op = torch.ops.snnspx.srm_forward
x = torch.randn(4, 2, 3, device="meta")
spikes, du, dut = op(x, 5.0, 3.0, 2.5, 1.0, 0)
assert spikes.device.type == "meta" and spikes.shape == du.shape == dut.shape == x.shape
assert du.dtype == torch.float32
s = snnspx.functional.srm_neuron(x.requires_grad_(), v_th=0.5)  # the wrapper, autograd included
s.sum().backward()
assert s.shape == x.grad.shape == x.shape and x.grad.device.type == "meta"
assert not torch._C._dispatch_has_kernel_for_dispatch_key("snnspx::srm_forward", "CPU")
# the strategy query answers for the kernels that serve: here the PyTorch ones
lab = torch.zeros(1, 1, 4, dtype=torch.int64)
assert torch.ops.snnspx._strategy("suppix_pool", torch.zeros(1, 1, 1, 4), lab, 1, "sum") == "torch"
assert _build.is_loaded("cpu") is False and _build.is_loaded("cuda") is False
print(sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("snnspx::")))
"""


def test_ops_exist_at_import_without_a_build(tmp_path):
    """`import snnspx` declares every op (snnspx._library; no C++ schema): in a fresh process
    with an empty cache and no compiler, the ops resolve and run on meta tensors (their fake
    kernels and autograd formulas), and no compiled library is loaded: the strategy query
    answers "torch"."""
    env = dict(os.environ, SNNSPX_CACHE_DIR=str(tmp_path / "empty-cache"), CXX=str(tmp_path / "no-compiler"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(snnspx.__file__).resolve().parent.parent),
                                                      os.environ.get("PYTHONPATH")]))
    env.pop("SNNSPX_BACKEND", None)
    proc = subprocess.run([sys.executable, "-c", IMPORT_ONLY], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ops = proc.stdout.strip().splitlines()[-1]
    for name in ("srm_forward", "srm_backward", "srm_neuron_fwd", "suppix_pool", "suppix_unpool", "srm_suppix_pool"):
        assert f"'snnspx::{name}'" in ops, ops
    assert "kernel_calls" not in ops, ops
    assert not (tmp_path / "empty-cache").exists() or not any((tmp_path / "empty-cache").iterdir())


def test_schemas_are_declared_in_python():
    """One declaration per op, in Python (snnspx._library); the C++ sources only add kernels to
    them (TORCH_LIBRARY_IMPL), and hold no test instrumentation."""
    import re

    assert not hasattr(snnspx, "kernel_calls")
    assert not hasattr(torch.ops.snnspx, "_kernel_calls")
    src = _build.source_dir()
    assert not (src / "ops.cpp").exists()
    files = sorted(p for p in src.rglob("*") if p.suffix in (".cpp", ".cu", ".h", ".cuh"))
    assert len(files) >= 6, files
    pattern = re.compile(r"TORCH_LIBRARY(_FRAGMENT)?\(|\bm\.def\(|kernel_calls")
    declaring = [p.name for p in files if pattern.search(p.read_text())]
    assert declaring == [], f"schemas or instrumentation in {declaring}"


def _snnspx_ops() -> list[str]:
    """Every operator registered in the snnspx namespace, from the dispatcher's own list."""
    return sorted(name for name in torch._C._dispatch_get_all_op_names() if name.startswith("snnspx::"))


@pytest.mark.skipif(torch.version.cuda is None, reason="needs a CUDA build of PyTorch")
@pytest.mark.skipif(_build.find_cuda_home() is None, reason="needs the CUDA toolkit (nvcc)")
def test_cuda_extension_compiles_and_links():
    """Runs in CI on machines with no GPU: a broken kernel fails here, not on a user's GPU.

    Every operator of the snnspx namespace (the list comes from the dispatcher, not from
    this file) has its PyTorch kernel, and a CPU and a CUDA kernel once both libraries are loaded.
    The one private op is the strategy query `_strategy` (kernels for every device, no autograd
    formula or fake kernel: it returns a str); no test sentinels."""
    _build.load_library("cpu")
    _build.load_library("cuda")
    ops = _snnspx_ops()
    device_ops = [op for op in ops if not op.startswith("snnspx::_")]
    assert [op for op in ops if op.startswith("snnspx::_")] == ["snnspx::_strategy"], ops
    assert all(torch._C._dispatch_has_kernel_for_dispatch_key(op, "CompositeExplicitAutograd") for op in device_ops)
    assert len(device_ops) >= 11, device_ops  # srm_* (4), suppix_* (4), srm_suppix_pool* (3) at least
    assert "snnspx::srm_suppix_pool_bwd" in device_ops and "snnspx::suppix_counts" in device_ops
    for key in ("CPU", "CUDA"):
        missing = [op for op in device_ops if not torch._C._dispatch_has_kernel_for_dispatch_key(op, key)]
        assert not missing, f"no {key} kernel registered for {missing}"
    for key in ("CompositeExplicitAutograd", "CPU", "CUDA"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key("snnspx::_strategy", key), key
    assert not [op for op in ops if "kernel_calls" in op], ops


def test_backends_report():
    info = snnspx.backends()
    assert set(info) == set(snnspx.BACKENDS) == {"cuda", "cpp", "torch"}
    assert info["torch"].available and "reference" not in info
    if not torch.cuda.is_available():
        assert not info["cuda"].available and "CUDA device" in info["cuda"].reason


def test_failed_build_is_an_error_when_requested_and_a_warning_by_default(monkeypatch):
    boom = _build.BuildError("building the snnspx cpu library failed: compiler exploded")
    monkeypatch.setattr(_build, "_loaded", {})
    monkeypatch.setattr(_build, "_failed", {"cpu": boom})
    monkeypatch.setattr(_backend, "_warned", set())
    monkeypatch.delenv("SNNSPX_BACKEND", raising=False)
    with pytest.raises(_build.BuildError, match="compiler exploded"):
        snnspx.functional.srm_forward(torch.randn(3, 2), backend="cpp")
    with pytest.warns(RuntimeWarning, match="compiler exploded"):
        assert _backend.resolve(None, torch.device("cpu")) == "torch"
    assert not snnspx.backends()["cpp"].available
    assert "compiler exploded" in snnspx.backends()["cpp"].reason


def test_broken_source_gives_the_compiler_message(tmp_path, monkeypatch):
    src = tmp_path / "csrc"
    (src / "cpu").mkdir(parents=True)
    (src / "cpu" / "ops.cpp").write_text("#include <torch/library.h>\nthis is not C++;\n")
    monkeypatch.setattr(_build, "source_dir", lambda: src)
    monkeypatch.setenv("SNNSPX_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(_build.BuildError, match=r"(?s)building the snnspx cpu library failed.*this is not C\+\+"):
        _build._build("cpu")


def test_missing_compiler_says_what_and_how_to_fix(tmp_path, monkeypatch):
    """A library that must be compiled, with no compiler at $CXX: the error names the
    compiler and the fixes, rather than ending a page of ninja command lines with
    'c++: not found'. A library already built (a complete cache entry) loads without a compiler."""
    real_cache = os.environ.get("SNNSPX_CACHE_DIR")
    _build.load_library("cpu")  # the real cache holds a complete entry from here on
    monkeypatch.setenv("SNNSPX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.raises(_build.BuildError, match=r"(?s)no C\+\+ compiler: CXX=.*no-such-compiler.*build-essential.*backend='torch'"):
        _build._build("cpu")
    monkeypatch.delenv("CXX")
    monkeypatch.setenv("PATH", str(tmp_path))  # no c++ on it
    with pytest.raises(_build.BuildError, match=r"no C\+\+ compiler: 'c\+\+', the default"):
        _build._build("cpu")
    if real_cache is None:
        monkeypatch.delenv("SNNSPX_CACHE_DIR")
    else:
        monkeypatch.setenv("SNNSPX_CACHE_DIR", real_cache)
    assert _build.entry_state(_build.cache_entry("cpu"), "cpu") == "complete"
    monkeypatch.setattr(_build, "_loaded", {})
    monkeypatch.setattr(_build, "_failed", {})
    _build.load_library("cpu")  # PATH has no compiler
    assert _build._loaded["cpu"][1] is False, "the complete entry should load, not compile"


def test_fallback_warning_points_at_the_callers_line(monkeypatch):
    """The fallback RuntimeWarning names the user's line, for a functional op and for a module
    (whose call passes through torch.nn.Module), not a line inside snnspx or torch."""
    monkeypatch.setattr(_build, "_loaded", {})
    monkeypatch.setattr(_build, "_failed", {"cpu": _build.BuildError("no compiler here")})
    monkeypatch.delenv("SNNSPX_BACKEND", raising=False)
    calls = [
        lambda: snnspx.functional.srm_neuron(torch.randn(3, 2)),
        lambda: snnspx.nn.SRMNeuron()(torch.randn(3, 2)),
        lambda: snnspx.nn.SupPixPool("avg", num_superpixels=2)(torch.randn(2, 1, 1, 2, 2), torch.tensor([[0, 1], [1, 0]])),
    ]
    for call in calls:
        monkeypatch.setattr(_backend, "_warned", set())
        with pytest.warns(RuntimeWarning, match="no compiler here") as record:
            call()
        assert [Path(w.filename).name for w in record] == [Path(__file__).name]
