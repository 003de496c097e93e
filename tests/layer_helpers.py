"""Shared pieces of the SRM layer tests (test_layers.py, test_layer_modules.py): inputs whose
synaptic currents are exact in float32, the oracle's gradients, and the TF32 switch."""

from __future__ import annotations

import pytest
import torch

import snnspx
from snnspx import reference as R
from conftest import GRID

# The neuron of the comparisons, spelled out (these are SRMParams' defaults).
SRM = dict(tau_m=5.0, tau_s=3.0, tau_grad=2.5, du_inv_clamp=4.0, max_dudt_inv=snnspx.MAX_DUDT_INV)
# GRID, and the oracle's own functions (for edge cases the oracle must survive too).
WITH_ORACLE = [pytest.param("oracle", "cpu", id="oracle-cpu"), *GRID]


@pytest.fixture(autouse=True)
def no_tf32():
    """cuDNN convolutions in float32 may use TF32 (PyTorch's default, as for nn.Conv2d); the
    comparisons with the float32 loops need full float32 products."""
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = before


def spike_train(gen, shape, dtype=torch.float32, device="cpu", p=0.3):
    return (torch.rand(shape, generator=gen, dtype=torch.float64) < p).to(dtype).to(device)


def dyadic(gen, shape, dtype=torch.float32, device="cpu", lo=-4, hi=12):
    """Weights k / 16, k in [lo, hi): exact sums of spikes, mostly excitatory."""
    return (torch.randint(lo, hi, shape, generator=gen, dtype=torch.int64) / 16.0).to(dtype).to(device)


def randn(gen, shape, dtype, device):
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype).to(device)


def assert_spikes_equal(got, want, msg=""):
    assert got.dtype == want.dtype and got.shape == want.shape, f"{msg}: {got.dtype}{tuple(got.shape)} vs {want.dtype}{tuple(want.shape)}"
    torch.testing.assert_close(got.cpu(), want.cpu(), rtol=0, atol=0, msg=lambda m: f"spikes differ {msg}: {m}")


def layer_grads(fn, s_in, weight, grad_spikes):
    """Spikes of fn(s_in, weight) and the autograd gradients for s_in and weight."""
    s = s_in.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    out = fn(s, w)
    out.backward(grad_spikes)
    return out.detach(), s.grad, w.grad


def oracle_conv(s_in, weight, grad_spikes, **kw):
    """layer_grads' triple from snnspx.reference: srm_conv2d_forward, then srm_conv2d_backward
    (keywords: the convolution's, the neuron's, input_grad_scale)."""
    fwd_kw = {k: v for k, v in kw.items() if k != "input_grad_scale"}
    st = R.srm_conv2d_forward(s_in.detach().cpu(), weight.detach().cpu(), **fwd_kw)
    gs, gw = R.srm_conv2d_backward(grad_spikes.cpu(), s_in.detach().cpu(), weight.detach().cpu(), *st, **kw)
    return st[0], gs, gw
