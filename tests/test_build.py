"""The JIT build: the CPU library builds here, the CUDA one compiles and links
wherever nvcc and a CUDA build of PyTorch exist (also without a GPU), and a
failed build is reported, never silently replaced."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import snnspx
from snnspx import _backend, _build


def test_cpu_library_builds():
    info = snnspx.backends()["cpp"]
    assert info.available, info.reason
    assert torch._C._dispatch_has_kernel_for_dispatch_key("snnspx::srm_forward", "CPU")


def _snnspx_ops() -> list[str]:
    """Every operator registered in the snnspx namespace, from the dispatcher's own list."""
    return sorted(name for name in torch._C._dispatch_get_all_op_names() if name.startswith("snnspx::"))


def _device_independent(op: str) -> bool:
    """The test sentinels (_kernel_calls, _cuda_kernel_calls) have one kernel for every device
    (CompositeImplicitAutograd, registered with their schema) instead of a CPU and a CUDA one."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(op, "CompositeImplicitAutograd")


@pytest.mark.skipif(torch.version.cuda is None, reason="needs a CUDA build of PyTorch")
@pytest.mark.skipif(_build.find_cuda_home() is None, reason="needs the CUDA toolkit (nvcc)")
def test_cuda_extension_compiles_and_links():
    """Runs in CI on machines with no GPU: a broken kernel fails here, not on a user's GPU.

    Every operator of the snnspx namespace (the list comes from the dispatcher, not from
    this file) has a CPU and a CUDA kernel, apart from the device-independent sentinels."""
    _build.load_library("cuda")
    ops = _snnspx_ops()
    device_ops = [op for op in ops if not _device_independent(op)]
    sentinels = sorted(set(ops) - set(device_ops))
    assert sentinels == ["snnspx::_cuda_kernel_calls", "snnspx::_kernel_calls"], sentinels
    assert len(device_ops) >= 11, device_ops  # srm_* (4), suppix_* (4), srm_suppix_pool* (3) at least
    assert "snnspx::srm_suppix_pool_bwd" in device_ops and "snnspx::suppix_counts" in device_ops
    for key in ("CPU", "CUDA"):
        missing = [op for op in device_ops if not torch._C._dispatch_has_kernel_for_dispatch_key(op, key)]
        assert not missing, f"no {key} kernel registered for {missing}"


def test_backends_report():
    info = snnspx.backends()
    assert set(info) == set(snnspx.BACKENDS)
    assert info["torch"].available and info["reference"].available
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
    (src / "ops.cpp").write_text("#include <torch/library.h>\nthis is not C++;\n")
    monkeypatch.setattr(_build, "source_dir", lambda: src)
    monkeypatch.setenv("SNNSPX_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(_build.BuildError, match=r"(?s)building the snnspx cpu library failed.*this is not C\+\+"):
        _build._build("cpu")


def test_missing_compiler_says_what_and_how_to_fix(tmp_path, monkeypatch):
    """A library that must be compiled, with no compiler at $CXX: the error names the
    compiler and the fixes, rather than ending a page of ninja command lines with
    'c++: not found'. A library already built loads without a compiler."""
    monkeypatch.setenv("SNNSPX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.raises(_build.BuildError, match=r"(?s)no C\+\+ compiler: CXX=.*no-such-compiler.*build-essential.*backend='torch'"):
        _build._build("cpu")
    monkeypatch.delenv("CXX")
    monkeypatch.setenv("PATH", str(tmp_path))  # no c++ on it
    with pytest.raises(_build.BuildError, match=r"no C\+\+ compiler: 'c\+\+', the default"):
        _build._build("cpu")
    built = tmp_path / "built"
    built.mkdir()
    (built / "snnspx_cpu.so").touch()
    assert _build._missing_compiler("cpu", built) is None


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
