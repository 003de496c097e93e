"""SRM parameters and inputs at the edges: values beyond float32's range (the neuron state of
float32/float16/bfloat16 inputs is float32, where such a value is +-inf; every backend treats it
so, never as an error) and srm_backward's dtype rule."""

from __future__ import annotations

import math

import pytest
import torch

import snnspx.functional as F
from conftest import ALL_BACKENDS

HUGE = [pytest.param(1e300, id="1e300"), pytest.param(math.inf, id="inf"), pytest.param(3.5e38, id="3.5e38")]


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
@pytest.mark.parametrize("clamp", HUGE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_backward_clamps_beyond_float32(backend, device, clamp, dtype, gen):
    x = (4 * torch.randn(12, 5, 7, generator=gen)).to(device, dtype)
    s, du, dut = F.srm_forward(x, backend="reference" if device == "cpu" else backend)
    du[3] = 0  # a zero difference: -1/du is -inf, kept by an infinite clamp
    g = torch.randn(x.shape, generator=gen).to(device, dtype)
    got = F.srm_backward(g, s, du, dut, du_inv_clamp=clamp, max_dudt_inv=clamp, backend=backend)
    want = F.srm_backward(g.cpu(), s.cpu(), du.cpu(), dut.cpu(), du_inv_clamp=clamp, max_dudt_inv=clamp, backend="reference")
    assert s.sum() > 0
    for a, b in zip(got, want):
        torch.testing.assert_close(a.cpu(), b, equal_nan=True, rtol=0, atol=0)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
@pytest.mark.parametrize("v_th,spiking", [(1e300, False), (-1e300, True)])
def test_threshold_beyond_float32(backend, device, v_th, spiking, gen):
    x = torch.randn(6, 4, 3, generator=gen).to(device)
    s, _, _ = F.srm_forward(x, v_th=v_th, backend=backend)
    assert bool((s == 1).all()) if spiking else not bool(s.any())
    labels = torch.zeros(3, 2, dtype=torch.long, device=device)
    y = F.srm_suppix_pool(x[:, :, None, :, None].expand(6, 4, 1, 3, 2), labels, 1, "sum", v_th=v_th, backend=backend)
    assert bool((y == 6).all()) if spiking else not bool(y.any())


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_backward_spikes_dtype_must_match(backend, device, gen):
    x = torch.randn(5, 3, generator=gen).to(device)
    s, du, dut = F.srm_forward(x, backend=backend)
    with pytest.raises(TypeError, match="spikes must have the dtype of grad_spikes"):
        F.srm_backward(torch.ones_like(s), s.double(), du, dut, backend=backend)
    if backend in ("cpp", "cuda"):  # the op checks too, for callers of torch.ops.snnspx directly
        with pytest.raises(TypeError, match="spikes must have the dtype of grad_spikes"):
            torch.ops.snnspx.srm_backward.default(torch.ones_like(s), s.half(), du, dut, 5.0, 3.0, 2.5, 4.0, 1e8)


@pytest.mark.parametrize("backend,device", [p for p in ALL_BACKENDS if p.values[0] in ("cpp", "cuda")])
def test_compiled_backward_rejects_2_31_steps(backend, device):
    """The compiled backwards count steps in int32: T >= 2^31 is a clear error, checked before
    any memory is touched (the inputs here are expanded views of one element)."""
    g = torch.ones(1, device=device).expand(2**31 + 2, 1)
    s = torch.zeros(1, device=device).expand(2**31 + 2, 1)
    with pytest.raises(ValueError, match="at most 2\\^31 - 1 steps"):
        F.srm_backward(g, s, s, s, backend=backend)


@pytest.mark.parametrize("backend,device", [p for p in ALL_BACKENDS if p.values[0] in ("cpp", "cuda")])
def test_compiled_unpool_rejects_2_31_superpixels(backend, device):
    """K = y.shape[-1] >= 2^31 - 1 does not fit the kernels' int32 superpixel index (it read far
    out of bounds before): a clear error, before any memory is touched."""
    y = torch.ones(1, dtype=torch.bfloat16, device=device).expand(1, 1, 1, 2**31)
    labels = torch.tensor([[-1, 0]], device=device)
    with pytest.raises(ValueError, match="number of superpixels K"):
        F.suppix_unpool(y, labels, check_labels=False, backend=backend)
