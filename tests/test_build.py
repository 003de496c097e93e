"""The JIT build: the CPU library builds here, the CUDA one compiles and links
wherever nvcc and a CUDA build of PyTorch exist (also without a GPU), and a
failed build is reported, never silently replaced."""

from __future__ import annotations

import pytest
import torch

import snnspx
from snnspx import _backend, _build


def test_cpu_library_builds():
    info = snnspx.backends()["cpp"]
    assert info.available, info.reason
    assert torch._C._dispatch_has_kernel_for_dispatch_key("snnspx::srm_forward", "CPU")


@pytest.mark.skipif(torch.version.cuda is None, reason="needs a CUDA build of PyTorch")
@pytest.mark.skipif(_build.find_cuda_home() is None, reason="needs the CUDA toolkit (nvcc)")
def test_cuda_extension_compiles_and_links():
    """Runs in CI on machines with no GPU: a broken kernel fails here, not on a user's GPU."""
    _build.load_library("cuda")
    for op in ("srm_forward", "srm_backward", "srm_neuron_fwd", "srm_neuron_bwd"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"snnspx::{op}", "CUDA"), op


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
