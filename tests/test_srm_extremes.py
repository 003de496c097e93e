"""SRM parameters and inputs at the edges: values beyond float32's range (the neuron state of
float32/float16/bfloat16 inputs is float32, where such a value is +-inf; every backend treats it
so, never as an error, and so does snnspx.reference) and srm_backward's dtype rule."""

from __future__ import annotations

import math

import pytest
import torch

import snnspx.functional as F
from snnspx import SRMParams
from snnspx import reference as R
from conftest import COMPILED, GRID

HUGE = [pytest.param(1e300, id="1e300"), pytest.param(math.inf, id="inf"), pytest.param(3.5e38, id="3.5e38")]
DTYPES = [pytest.param(d, id=str(d)[6:]) for d in (torch.float32, torch.float16, torch.float64)]


def clamp_inputs(gen, dtype, device="cpu"):
    """The reference's forward of random currents, with a zero du at step 3 (-1/du is -inf
    there, kept by an infinite clamp), and a random grad_spikes."""
    x = (4 * torch.randn(12, 5, 7, generator=gen)).to(device, dtype)
    s, du, dut = R.srm_forward(x)
    du[3] = 0
    g = torch.randn(x.shape, generator=gen).to(device, dtype)
    return g, s, du, dut


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("clamp", HUGE)
@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_clamps_beyond_float32(backend, device, clamp, dtype, gen):
    g, s, du, dut = clamp_inputs(gen, dtype, device)
    p = SRMParams(du_inv_clamp=clamp, max_dudt_inv=clamp)
    got = F.srm_backward(g, s, du, dut, params=p, backend=backend)
    want = R.srm_backward(g.cpu(), s.cpu(), du.cpu(), dut.cpu(), params=p)
    assert s.sum() > 0
    for a, b in zip(got, want):
        torch.testing.assert_close(a.cpu(), b, equal_nan=True, rtol=0, atol=0)


@pytest.mark.parametrize("clamp", HUGE)
@pytest.mark.parametrize("dtype", DTYPES)
def test_reference_backward_clamps_beyond_float32(clamp, dtype, gen):
    """The oracle takes the huge clamps too: with a float32 state, a clamp beyond float32's
    range is +inf (the same bits as math.inf); float64 keeps 1e300 finite."""
    g, s, du, dut = clamp_inputs(gen, dtype)
    got = R.srm_backward(g, s, du, dut, du_inv_clamp=clamp, max_dudt_inv=clamp)
    as_state = clamp if dtype == torch.float64 else float(torch.tensor(clamp, dtype=torch.float32))
    want = R.srm_backward(g, s, du, dut, du_inv_clamp=as_state, max_dudt_inv=as_state)
    assert s.sum() > 0 and s[3].sum() > 0, "a spike at the zero du"
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, equal_nan=True, rtol=0, atol=0)
    at_zero_du = got[0][3][s[3] == 1]  # -1/0 = -inf, clamped to -as_state
    assert torch.isinf(at_zero_du).all() if as_state == math.inf else torch.isfinite(at_zero_du).all()


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("v_th,spiking", [(1e300, False), (-1e300, True)])
def test_threshold_beyond_float32(backend, device, v_th, spiking, gen):
    x = torch.randn(6, 4, 3, generator=gen).to(device)
    s, _, _ = F.srm_forward(x, v_th=v_th, backend=backend)
    assert bool((s == 1).all()) if spiking else not bool(s.any())
    labels = torch.zeros(3, 2, dtype=torch.long, device=device)
    x5 = x[:, :, None, :, None].expand(6, 4, 1, 3, 2)
    y = F.srm_suppix_pool(x5, labels, num_superpixels=1, mode="sum", v_th=v_th, backend=backend)
    assert bool((y == 6).all()) if spiking else not bool(y.any())


@pytest.mark.parametrize("v_th,spiking", [(1e300, False), (-1e300, True)])
def test_reference_threshold_beyond_float32(v_th, spiking, gen):
    x = torch.randn(6, 4, 3, generator=gen)
    s, _, _ = R.srm_forward(x, v_th=v_th)
    assert bool((s == 1).all()) if spiking else not bool(s.any())
    labels = torch.zeros(3, 2, dtype=torch.long)
    y = R.srm_suppix_pool(x[:, :, None, :, None].expand(6, 4, 1, 3, 2), labels, num_superpixels=1, mode="sum", v_th=v_th)
    assert bool((y == 6).all()) if spiking else not bool(y.any())


@pytest.mark.parametrize("backend,device", GRID)
def test_backward_spikes_dtype_must_match(backend, device, gen):
    x = torch.randn(5, 3, generator=gen).to(device)
    s, du, dut = F.srm_forward(x, backend=backend)
    with pytest.raises(TypeError, match="spikes must have the dtype of grad_spikes"):
        F.srm_backward(torch.ones_like(s), s.double(), du, dut, backend=backend)
    if backend in ("cpp", "cuda"):  # the op checks too, for callers of torch.ops.snnspx directly
        with pytest.raises(TypeError, match="spikes must have the dtype of grad_spikes"):
            torch.ops.snnspx.srm_backward.default(torch.ones_like(s), s.half(), du, dut, 5.0, 3.0, 2.5, 4.0, 1e8, 0)


def test_reference_backward_spikes_dtype_must_match(gen):
    s, du, dut = R.srm_forward(torch.randn(5, 3, generator=gen))
    with pytest.raises(TypeError, match="spikes must have the dtype of grad_spikes"):
        R.srm_backward(torch.ones_like(s), s.double(), du, dut)


@pytest.mark.parametrize("backend,device", COMPILED)
def test_compiled_backward_rejects_2_31_steps(backend, device):
    """The compiled backwards count steps in int32: T >= 2^31 is a clear error, checked before
    any memory is touched (the inputs here are expanded views of one element)."""
    g = torch.ones(1, device=device).expand(2**31 + 2, 1)
    s = torch.zeros(1, device=device).expand(2**31 + 2, 1)
    with pytest.raises(ValueError, match="at most 2\\^31 - 1 steps"):
        F.srm_backward(g, s, s, s, backend=backend)


@pytest.mark.parametrize("backend,device", COMPILED)
def test_compiled_unpool_rejects_2_31_superpixels(backend, device):
    """K = y.shape[-1] >= 2^31 - 1 does not fit the kernels' int32 superpixel index (it read far
    out of bounds before): a clear error, before any memory is touched."""
    y = torch.ones(1, dtype=torch.bfloat16, device=device).expand(1, 1, 1, 2**31)
    labels = torch.tensor([[-1, 0]], device=device)
    with pytest.raises(ValueError, match="number of superpixels K"):
        F.suppix_unpool(y, labels, check_labels=False, backend=backend)
