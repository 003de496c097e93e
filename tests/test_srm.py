"""SRM neuron (docs/maths.md §2-§3): every backend against snnspx.reference, elementwise.

The ops' outputs are compared with ``reference.srm_forward`` and their gradients (``x.grad``,
``srm_backward``) with ``reference.srm_backward`` / ``reference.srm_neuron_backward``: plain
loops without autograd. Edge cases the oracle must survive too call those functions directly.
"""

from __future__ import annotations

import collections
import dataclasses
import math

import pytest
import torch

import snnspx
from snnspx import MAX_DUDT_INV, SRMParams
from snnspx import functional as F
from snnspx import reference as R
from snnspx._backend import resolve
from conftest import COMPILED, DTYPES, GRID, profiled_ops

PARAMS = dict(tau_m=5.0, tau_s=3.0, tau_grad=2.5)
# Arithmetic ops of the PyTorch kernels (functional/srm.py) that the compiled kernels never
# dispatch: in the profile of a block that runs snnspx ops only, they show a PyTorch kernel ran.
TORCH_KERNEL_OPS = {"aten::where", "aten::mul", "aten::reciprocal", "aten::clamp"}


def currents(gen, shape, dtype=torch.float32, device="cpu", mean=0.5, std=1.0):
    """Random input currents that make neurons fire every few steps."""
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * std + mean).to(dtype).to(device)


def assert_forward_equal(got, want, msg=""):
    spikes, du, dut = got
    rs, rdu, rdut = want
    assert spikes.dtype == rs.dtype and du.dtype == rdu.dtype and dut.dtype == rdut.dtype
    torch.testing.assert_close(spikes.cpu(), rs.cpu(), rtol=0, atol=0, msg=lambda m: f"spikes differ {msg}: {m}")
    # du and dut bitwise too: every backend computes the state in the same order and rounds each
    # product on its own (no fused multiply-adds: __fmul_rn on the GPU, -ffp-contract=off on the CPU)
    torch.testing.assert_close(du.cpu(), rdu.cpu(), rtol=0, atol=0, msg=lambda m: f"du {msg}: {m}")
    torch.testing.assert_close(dut.cpu(), rdut.cpu(), rtol=0, atol=0, msg=lambda m: f"dut {msg}: {m}")


def srm_ops(counts: collections.Counter) -> dict:
    return {k: v for k, v in counts.items() if k.startswith("snnspx::")}


def run_every_srm_op(x, backend):
    """srm_forward, srm_backward and srm_neuron with its backward, once each."""
    s, du, dut = F.srm_forward(x, backend=backend)
    F.srm_backward(torch.ones_like(s), s, du, dut, backend=backend)
    F.srm_neuron(x.detach().clone().requires_grad_(), backend=backend).sum().backward()


ONCE_EACH = {f"snnspx::{n}": 1 for n in ("srm_forward", "srm_backward", "srm_neuron_fwd", "srm_neuron_bwd")}


# --------------------------------------------------------------------------- forward
@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(12, 3, 4, 5), (1, 50), (40, 2, 3)], ids=["T12", "T1", "T40"])
def test_forward_matches_reference(backend, device, dtype, shape, gen):
    x = currents(gen, shape, dtype, device, std=4.0 if shape[0] == 1 else 1.0)
    got = F.srm_forward(x, v_th=1.0, backend=backend, **PARAMS)
    want = R.srm_forward(x, params=SRMParams(v_th=1.0, **PARAMS))
    assert want[0].sum() > 0, "the test input should make some neurons spike"
    assert_forward_equal(got, want, f"({backend}, {device}, {dtype})")
    assert got[0].device.type == device


@pytest.mark.parametrize("backend,device", GRID)
def test_forward_long_T(backend, device, gen):
    x = currents(gen, (512, 2, 3), torch.float32, device, mean=0.3)
    assert_forward_equal(F.srm_forward(x, backend=backend), R.srm_forward(x), "T=512")


@pytest.mark.parametrize("backend,device", GRID)
def test_forward_noncontiguous(backend, device, gen):
    base = currents(gen, (6, 10, 8), torch.float32, device)
    for x in (base.transpose(1, 2), base[:, ::2, 1:7], base.expand(2, 6, 10, 8)[1], base.permute(0, 2, 1)[:, :, ::3]):
        got = F.srm_forward(x, backend=backend)
        want = F.srm_forward(x.contiguous(), backend=backend)
        for a, b in zip(got, want):
            assert torch.equal(a, b)
        assert_forward_equal(got, R.srm_forward(x))


@pytest.mark.parametrize("backend,device", GRID)
def test_forward_empty_T(backend, device):
    for shape in [(0, 3, 4), (0,), (3, 0)]:
        x = torch.zeros(shape, device=device)
        spikes, du, dut = F.srm_forward(x, backend=backend)
        assert spikes.shape == du.shape == dut.shape == shape
        gw, gt = F.srm_backward(spikes, spikes, du, dut, backend=backend)
        assert gw.shape == gt.shape == shape
        xg = x.clone().requires_grad_()
        F.srm_neuron(xg, backend=backend).sum().backward()
        assert xg.grad.shape == shape


def test_reference_empty_T():
    """The oracle on empty inputs: T = 0 and no neurons."""
    for shape in [(0, 3, 4), (0,), (3, 0)]:
        x = torch.zeros(shape)
        spikes, du, dut = R.srm_forward(x)
        assert spikes.shape == du.shape == dut.shape == shape
        gw, gt = R.srm_backward(spikes, spikes, du, dut)
        assert gw.shape == gt.shape == shape
        assert R.srm_neuron_backward(spikes, x).shape == shape


@pytest.mark.parametrize("backend,device", GRID)
def test_backward_spikes_must_be_float(backend, device):
    s, du, dut = F.srm_forward(torch.randn(4, 3, device=device), backend=backend)
    with pytest.raises(TypeError, match="spikes must be float32"):
        F.srm_backward(s, s.bool(), du, dut, backend=backend)


def test_reference_backward_spikes_must_be_float():
    s, du, dut = R.srm_forward(torch.randn(4, 3))
    with pytest.raises(TypeError, match="spikes must be float32"):  # the op's message
        R.srm_backward(s, s.bool(), du, dut)


@pytest.mark.parametrize("backend,device", GRID)
def test_closed_form_without_spikes(backend, device, gen):
    """With no spike, u[t] = sum_k eps(t-k) x[k], eps(d) = c (a_m^(d+1) - a_s^(d+1))."""
    T = 30
    x = currents(gen, (T, 5), torch.float64, device, mean=0.0)
    spikes, du, _ = F.srm_forward(x, v_th=math.inf, backend=backend, **PARAMS)
    assert spikes.sum() == 0
    u = torch.cumsum(du, 0).cpu()
    a_m, a_s, c = 1 - 1 / 5.0, 1 - 1 / 3.0, 5.0 / 2.0
    d = torch.arange(T, dtype=torch.float64)
    eps = c * (a_m ** (d + 1) - a_s ** (d + 1))
    lags = d[:, None] - d[None, :]
    K = torch.where(lags >= 0, eps[lags.clamp(min=0).long()], torch.zeros(()))
    torch.testing.assert_close(u, K @ x.cpu(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend,device", GRID)
def test_threshold_tie_does_not_spike(backend, device):
    """u == v_th is not a spike (strict >); one ulp below v_th is."""
    x = torch.tensor([[3.0, 2.0, 5.0]], device=device)
    _, du, _ = R.srm_forward(x)  # T = 1: u = du
    for n in range(3):
        u = du[0, n].item()  # exactly representable in float32
        spikes, _, _ = F.srm_forward(x[:, n : n + 1], v_th=u, backend=backend)
        assert spikes.item() == 0, f"u == v_th = {u} must not spike"
        below = torch.nextafter(torch.tensor(u, dtype=torch.float32), torch.tensor(-math.inf)).item()
        spikes, _, _ = F.srm_forward(x[:, n : n + 1], v_th=below, backend=backend)
        assert spikes.item() == 1, f"u = {u} > v_th = {below} must spike"


@pytest.mark.parametrize("backend,device", GRID)
def test_reset_after_spike(backend, device):
    """A spike resets m, s, g and u_last: the step after restarts from zero."""
    x = torch.tensor([[10.0], [0.0], [1.0]], device=device)
    spikes, du, dut = F.srm_forward(x, backend=backend)
    assert spikes[:, 0].tolist() == [1.0, 0.0, 0.0]
    assert du[1, 0].item() == 0.0 and dut[1, 0].item() == 0.0  # all state is zero after the reset
    fresh = F.srm_forward(x[2:], backend=backend)
    assert du[2, 0].item() == fresh[1][0, 0].item()


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_half_inputs_use_float32_state(backend, device, dtype, gen):
    x = currents(gen, (10, 4, 3), dtype, device)
    spikes, du, dut = F.srm_forward(x, backend=backend)
    assert spikes.dtype == dtype and du.dtype == dut.dtype == torch.float32
    assert_forward_equal((spikes, du, dut), R.srm_forward(x))


# --------------------------------------------------------------------------- backward
@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T", [1, 16, 100])
def test_backward_matches_reference(backend, device, dtype, T, gen):
    # The gradient is non-zero only before a spike. With one step the membrane is
    # u = c (a_m - a_s) x = x / 3, so std 1 rarely crosses v_th = 1: wider currents, and one
    # neuron driven over the threshold (u = 4 / 3), make every seed exercise the backward.
    x = currents(gen, (T, 3, 4), dtype, device, std=4.0 if T == 1 else 1.0)
    x[0, 0, 0] = 4.0
    spikes, du, dut = R.srm_forward(x)
    assert spikes.sum() > 0, "the test input should make some neurons spike"
    grad = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(dtype).to(device)
    p = SRMParams(du_inv_clamp=4.0, max_dudt_inv=MAX_DUDT_INV, **PARAMS)
    gw, gt = F.srm_backward(grad, spikes, du, dut, params=p, backend=backend)
    rw, rt = R.srm_backward(grad, spikes, du, dut, params=p)
    assert gw.dtype == gt.dtype == dtype
    assert rw.abs().sum() > 0 and rt.abs().sum() > 0, "the test should exercise a non-zero gradient"
    torch.testing.assert_close(gw.cpu(), rw.cpu(), msg=lambda m: f"grad_w ({backend}): {m}")
    torch.testing.assert_close(gt.cpu(), rt.cpu(), msg=lambda m: f"grad_t ({backend}): {m}")


@pytest.mark.parametrize("backend,device", GRID)
def test_backward_zero_without_later_spike(backend, device, gen):
    """Only the last step spikes: every step has that spike ahead; with none, all zero."""
    T = 8
    spikes = torch.zeros(T, 2, device=device)
    spikes[-1, 0] = 1
    du = torch.full((T, 2), 0.5, device=device)
    dut = torch.full((T, 2), 2.0, device=device)
    grad = torch.randn((T, 2), generator=gen).to(device)
    gw, gt = F.srm_backward(grad, spikes, du, dut, backend=backend)
    assert torch.all(gw[:, 1] == 0) and torch.all(gt[:, 1] == 0), "no spike: the gradient must be exactly 0"
    rw, rt = R.srm_backward(grad, spikes, du, dut)
    torch.testing.assert_close(gw.cpu(), rw.cpu())
    torch.testing.assert_close(gt.cpu(), rt.cpu())
    assert torch.all(gw[:, 0] != 0) or grad[-1, 0] == 0


@pytest.mark.parametrize("backend,device", GRID)
def test_backward_clamps_and_ignores_silent_grads(backend, device):
    """-1/0 clamps to the lower bound; NaN gradients at silent steps are never read."""
    spikes = torch.tensor([[0.0], [1.0], [0.0]], device=device)
    du = torch.tensor([[1.0], [0.0], [1.0]], device=device)
    dut = torch.tensor([[1.0], [0.0], [1.0]], device=device)
    grad = torch.tensor([[math.nan], [2.0], [math.inf]], device=device)
    gw, gt = F.srm_backward(grad, spikes, du, dut, du_inv_clamp=4.0, max_dudt_inv=7.0, backend=backend)
    eps0 = 2.5 * (0.8 - 2 / 3)
    eps1 = 2.5 * (0.8**2 - (2 / 3) ** 2)
    torch.testing.assert_close(gw[:, 0].cpu(), torch.tensor([2 * -4.0 * eps1, 2 * -4.0 * eps0, 0.0]))
    torch.testing.assert_close(gt[:, 0].cpu(), torch.tensor([2 * -7.0 * -(0.6**2), 2 * -7.0 * -0.6, 0.0]))


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("dtype", DTYPES)
def test_neuron_autograd_matches_reference(backend, device, dtype, gen):
    x = currents(gen, (20, 3, 5), dtype, device)
    w = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(dtype).to(device)
    xg = x.clone().requires_grad_()
    spikes = F.srm_neuron(xg, du_inv_clamp=3.0, max_dudt_inv=50.0, backend=backend)
    (spikes * w).sum().backward()
    rs = R.srm_forward(x)[0]
    rw = R.srm_neuron_backward(w, x, du_inv_clamp=3.0, max_dudt_inv=50.0)
    assert torch.equal(spikes.detach().cpu(), rs.cpu())
    torch.testing.assert_close(xg.grad.cpu(), rw.cpu())


@pytest.mark.parametrize("dtype", DTYPES)
def test_reference_neuron_backward_is_the_composition(dtype, gen):
    """reference.srm_neuron_backward is srm_backward's grad_w on srm_forward's outputs, with
    the given constants; plain loops: nothing the oracle returns is part of an autograd graph."""
    x = currents(gen, (20, 3, 5), dtype).requires_grad_()
    w = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(dtype)
    p = SRMParams(du_inv_clamp=3.0, max_dudt_inv=50.0)
    rs, rdu, rdut = R.srm_forward(x, params=p)
    rw, rt = R.srm_backward(w, rs, rdu, rdut, params=p)
    got = R.srm_neuron_backward(w, x, params=p)
    assert torch.equal(got, rw) and got.dtype == dtype
    assert not any(t.requires_grad for t in (rs, rdu, rdut, rw, rt, got))


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_half_gradients_match_reference(backend, device, dtype, gen):
    """float16/bfloat16: the state and the backward run in float32 and the gradients come back
    in the input's dtype (docs/maths.md, Precision), as the reference does on the same half
    inputs; compared with the dtype's default tolerances."""
    x = currents(gen, (16, 3, 5), dtype, device)
    w = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(dtype).to(device)
    kw = dict(du_inv_clamp=3.0, max_dudt_inv=50.0)
    rs, rdu, rdut = R.srm_forward(x)
    rw, rt = R.srm_backward(w, rs, rdu, rdut, **kw)
    assert rw.dtype == rt.dtype == dtype
    assert rs.sum() > 0 and rw.abs().sum() > 0, "the test should exercise spikes and a non-zero gradient"
    # srm_neuron through autograd (the compact saved state on the compiled backends)
    xg = x.clone().requires_grad_()
    spikes = F.srm_neuron(xg, backend=backend, **kw)
    (spikes * w).sum().backward()
    assert torch.equal(spikes.detach().cpu(), rs.cpu())
    assert xg.grad.dtype == dtype
    torch.testing.assert_close(xg.grad.cpu(), rw.cpu(), msg=lambda m: f"srm_neuron grad ({backend}): {m}")
    # srm_backward on srm_forward's outputs
    gw, gt = F.srm_backward(w, rs.to(device), rdu.to(device), rdut.to(device), backend=backend, **kw)
    assert gw.dtype == gt.dtype == dtype
    torch.testing.assert_close(gw.cpu(), rw.cpu(), msg=lambda m: f"grad_w ({backend}): {m}")
    torch.testing.assert_close(gt.cpu(), rt.cpu(), msg=lambda m: f"grad_t ({backend}): {m}")


@pytest.mark.parametrize("backend,device", GRID)
def test_srm_forward_gradient_flows_through_spikes(backend, device, gen):
    x = currents(gen, (9, 4), torch.float64, device).requires_grad_()
    spikes, du, dut = F.srm_forward(x, backend=backend)
    assert not du.requires_grad and not dut.requires_grad  # documented: not differentiable, on every backend
    spikes.sum().backward()
    rs, rdu, rdut = R.srm_forward(x.detach())
    rw, _ = R.srm_backward(torch.ones_like(rs), rs, rdu, rdut)
    torch.testing.assert_close(x.grad.cpu(), rw.cpu())


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_long_T(backend, device, dtype, gen):
    """T = 600: the kernel tables reach float32 subnormals (eps(d) below 1e-38 near d = 390)
    and underflow to zero; srm_backward and srm_neuron's gradient still equal the reference."""
    T = 600
    x = currents(gen, (T, 2, 3), dtype, device, mean=0.1, std=0.6)
    x[T // 2 :, 0, 0] = 0  # a neuron silent for the last 300 steps: long lags before its spike
    x[T - 1, 0, 0] = 10.0
    rs, rdu, rdut = R.srm_forward(x)
    w = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(dtype).to(device)
    gw, gt = F.srm_backward(w, rs.to(device), rdu.to(device), rdut.to(device), backend=backend)
    rw, rt = R.srm_backward(w, rs, rdu, rdut)
    assert rs[T - 1, 0, 0] == 1 and rw[: T - 1, 0, 0].abs().sum() > 0
    torch.testing.assert_close(gw.cpu(), rw.cpu(), rtol=1.3e-6, atol=0)
    torch.testing.assert_close(gt.cpu(), rt.cpu(), rtol=1.3e-6, atol=0)
    xg = x.clone().requires_grad_()
    (F.srm_neuron(xg, backend=backend) * w).sum().backward()
    torch.testing.assert_close(xg.grad.cpu(), rw.cpu(), rtol=1.3e-6, atol=0)


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_noncontiguous(backend, device, dtype, gen):
    """Strided grad_spikes, spikes, du and dut into srm_backward, and a strided x into
    srm_neuron with its gradient: the results of their contiguous copies, bit for bit."""
    base = currents(gen, (10, 6, 8), dtype, device)
    x = base.transpose(1, 2)[:, ::2]  # [10, 4, 6], strided
    s, du, dut = F.srm_forward(x, backend=backend)
    g = torch.randn((10, 6, 4), generator=gen, dtype=torch.float64).to(dtype).to(device).transpose(1, 2)
    strided = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in (s, du, dut)]
    assert not g.is_contiguous() and not any(t.is_contiguous() for t in strided)
    got = F.srm_backward(g, *strided, backend=backend)
    want = F.srm_backward(g.contiguous(), s, du, dut, backend=backend)
    assert s.sum() > 0 and want[0].abs().sum() > 0
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    grads = []
    for v in (x, x.contiguous()):
        vg = v.detach().clone(memory_format=torch.preserve_format).requires_grad_()
        (F.srm_neuron(vg, backend=backend) * g).sum().backward()
        grads.append(vg.grad)
    assert torch.equal(grads[0], grads[1])


NONFINITE_NEURONS = ((0, 4), (1, 5), (2, 5), (3, 7))  # (neuron, first step with a NaN u)


def nonfinite_currents(gen, device):
    x = currents(gen, (12, 5), torch.float32, device)
    x[0:3, :] = 3.0  # spikes early on every neuron, so the NaN neurons have a gradient before
    x[4, 0] = math.nan
    x[5, 1] = math.inf
    x[5, 2], x[6, 2] = math.inf, -math.inf
    x[7, 3] = -math.inf
    x[:, 4] = 3.0  # a finite neuron that keeps spiking
    return x


def test_reference_nonfinite_inputs_follow_the_rule(gen):
    """The oracle itself follows docs/maths.md §2's rule for NaN/inf currents (see below)."""
    x = nonfinite_currents(gen, "cpu")
    spikes, du, dut = R.srm_forward(x)
    for n, t in NONFINITE_NEURONS:
        assert spikes[t:, n].sum() == 0 and torch.isnan(du[t:, n]).all(), f"neuron {n} after step {t}"
    assert spikes[7:, 4].sum() > 0, "the finite neuron keeps spiking"
    w = torch.randn(x.shape, generator=gen)
    rw, rt = R.srm_backward(w, spikes, du, dut)
    assert torch.equal(R.srm_neuron_backward(w, x), rw)
    for n, t in NONFINITE_NEURONS:
        assert torch.all(rw[t:, n] == 0) and torch.all(rt[t:, n] == 0), f"neuron {n}: no gradient after step {t}"
    assert torch.isfinite(rw).all() and rw[:4, 0].abs().sum() > 0


@pytest.mark.parametrize("backend,device", GRID)
def test_nonfinite_inputs_follow_the_rule(backend, device, gen):
    """docs/maths.md §2: a NaN current (or +inf and -inf meeting in m - s; an infinite current
    enters both traces, so any one does) makes u NaN; the neuron then never spikes again and
    gets gradient 0 from there on. Every backend gives the reference's spikes, state (NaN
    where it is NaN) and gradient."""
    x = nonfinite_currents(gen, device)
    got = F.srm_forward(x, backend=backend)
    want = R.srm_forward(x.cpu())
    for a, b in zip(got, want):
        torch.testing.assert_close(a.cpu(), b, rtol=0, atol=0, equal_nan=True)
    spikes, du = got[0].cpu(), got[1].cpu()
    for n, t in NONFINITE_NEURONS:
        assert spikes[t:, n].sum() == 0 and torch.isnan(du[t:, n]).all(), f"neuron {n} after step {t}"
    assert spikes[7:, 4].sum() > 0, "the finite neuron keeps spiking"
    w = torch.randn(x.shape, generator=gen).to(device)
    xg = x.clone().requires_grad_()
    (F.srm_neuron(xg, backend=backend) * w).sum().backward()
    rw = R.srm_neuron_backward(w.cpu(), x.cpu())
    torch.testing.assert_close(xg.grad.cpu(), rw, rtol=1.3e-6, atol=1e-5, equal_nan=True)
    for n, t in NONFINITE_NEURONS:
        assert torch.all(xg.grad[t:, n] == 0), f"neuron {n}: no gradient after step {t} (no later spike)"
    assert torch.isfinite(xg.grad).all() and xg.grad[:4, 0].abs().sum() > 0


def test_subthreshold_recurrence_gradcheck(gen):
    """Below threshold the recurrence is linear in x: gradcheck the membrane it produces."""
    from snnspx.functional.srm import _forward_kernel  # the PyTorch kernel, under plain autograd

    x = currents(gen, (6, 3), torch.float64, mean=0.0, std=0.1).requires_grad_()
    assert torch.autograd.gradcheck(lambda v: torch.cumsum(_forward_kernel(v, 5.0, 3.0, 2.5, math.inf, 0)[1], 0), (x,))


# --------------------------------------------------------------------------- module, compile, opcheck
@pytest.mark.parametrize("backend,device", GRID)
def test_module_batch_first(backend, device, gen):
    x = currents(gen, (2, 7, 3), torch.float32, device)  # [B, T, N]
    m_bf = snnspx.nn.SRMNeuron(batch_first=True, backend=backend)
    m_tf = snnspx.nn.SRMNeuron(backend=backend)
    assert torch.equal(m_bf(x), m_tf(x.transpose(0, 1)).transpose(0, 1))
    assert "tau_m=5.0" in repr(m_bf)


@pytest.mark.parametrize("backend,device", GRID)
def test_module_params(backend, device, gen):
    """SRMNeuron(params, **neuron) runs srm_neuron with SRMParams.make(params, **neuron); its
    fields read as read-only attributes; a new ``params`` replaces them all."""
    p = SRMParams(tau_m=7.0, tau_s=2.0, tau_grad=3.0, v_th=0.8, du_inv_clamp=2.0, max_dudt_inv=9.0)
    m = snnspx.nn.SRMNeuron(p, v_th=0.6, backend=backend)
    assert m.params == dataclasses.replace(p, v_th=0.6) and (m.tau_m, m.v_th) == (7.0, 0.6)
    with pytest.raises(AttributeError):
        m.tau_m = 4.0
    x = currents(gen, (9, 2, 4), torch.float32, device)
    xg = x.clone().requires_grad_()
    out = m(xg)
    w = torch.randn(x.shape, generator=gen).to(device)
    (out * w).sum().backward()
    assert torch.equal(out.detach().cpu(), R.srm_forward(x.cpu(), params=m.params)[0])
    torch.testing.assert_close(xg.grad.cpu(), R.srm_neuron_backward(w.cpu(), x.cpu(), params=m.params))
    m.params = SRMParams()
    assert m.v_th == 1.0 and torch.equal(m(x).cpu(), R.srm_forward(x.cpu())[0])


@pytest.mark.parametrize("backend,device", COMPILED)
def test_torch_compile_module(backend, device, gen):
    torch._dynamo.reset()
    model = torch.nn.Sequential(torch.nn.Linear(6, 8, dtype=torch.float64), snnspx.nn.SRMNeuron(backend=backend)).to(device)
    x = currents(gen, (10, 3, 6), torch.float64, device)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    out_c = compiled(x)
    out_c.sum().backward()
    grads_c = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    out_e = model(x)
    out_e.sum().backward()
    assert torch.equal(out_c, out_e)
    for gc, ge in zip(grads_c, [p.grad for p in model.parameters()]):
        torch.testing.assert_close(gc, ge)


@pytest.mark.parametrize("backend,device", COMPILED)
def test_opcheck(backend, device, gen):
    snnspx.functional.srm_forward(torch.zeros(1, 1, device=device), backend=backend)  # loads the library
    ops = torch.ops.snnspx
    samples = [
        *(currents(gen, (7, 3, 2), dtype, device) for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16)),
        currents(gen, (7, 2, 3), torch.float32, device).transpose(1, 2),  # not contiguous
        currents(gen, (0, 3, 2), torch.float32, device),  # T = 0
        currents(gen, (5, 0, 2), torch.float32, device),  # no neurons
    ]
    for x in samples:
        dtype = x.dtype
        args = (5.0, 3.0, 2.5, 1.0, 0)
        torch.library.opcheck(ops.srm_forward.default, (x, *args))
        torch.library.opcheck(ops.srm_forward.default, (x.clone().requires_grad_(), *args))
        spikes, du, dut = ops.srm_forward.default(x, *args)
        g = torch.randn(x.shape, generator=gen, dtype=dtype).to(device)
        torch.library.opcheck(ops.srm_backward.default, (g, spikes, du, dut, 5.0, 3.0, 2.5, 4.0, 1e8, 0))
        nargs = (5.0, 3.0, 2.5, 1.0, 4.0, 1e8, 0)
        for return_state in (False, True):
            torch.library.opcheck(ops.srm_neuron_fwd.default, (x.clone().requires_grad_(), *nargs, None, return_state))
        for with_t in (False, True):
            torch.library.opcheck(ops.srm_neuron_bwd.default, (g, x, None, *nargs, with_t))


@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_saved_state_is_x_only(backend, gen):
    """srm_neuron keeps x itself for backward (the backward recomputes the traces from it):
    nothing per neuron-step of its own, whichever kernel runs (one autograd formula); the
    currents of an op in front of it, 4 bytes per float32 neuron-step."""
    x = currents(gen, (16, 4, 8), torch.float32).requires_grad_()
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        F.srm_neuron(x, backend=backend)
    assert len(saved) == 1 and saved[0] is x
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        F.srm_neuron(x * 2, backend=backend)  # the product is what srm_neuron keeps: 4 bytes per step
    assert sum(t.numel() * t.element_size() for t in saved) == 4 * x.numel()


# --------------------------------------------------------------------------- sentinels and errors
def test_cpp_kernel_actually_runs():
    """The cpp library's CPU kernels serve the neuron's ops (a CPU kernel beats the PyTorch
    CompositeExplicitAutograd kernel): each op runs once per call, with none of the PyTorch
    kernel's arithmetic inside, for backend="cpp" and, CPU tensors going to the compiled
    kernels when they build rather than to a fallback, with no backend given."""
    F.srm_forward(torch.zeros(1, 1), backend="cpp")  # loads the library
    for name in ONCE_EACH:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "CPU"), name
    assert resolve(None, torch.device("cpu")) == "cpp"
    for backend in ("cpp", None):
        ran = profiled_ops(lambda: run_every_srm_op(torch.randn(5, 4), backend))
        assert srm_ops(ran) == ONCE_EACH, f"backend={backend}"
        assert not TORCH_KERNEL_OPS & ran.keys(), f"backend={backend}: the PyTorch kernel ran"


def test_torch_backend_runs_pytorch_kernels_on_cpu(gen):
    """backend="torch" with the cpp library loaded runs the same ops with their PyTorch kernels
    (the backward too: it follows the forward's choice), and the same values as cpp."""
    F.srm_forward(torch.zeros(1, 1), backend="cpp")
    assert torch._C._dispatch_has_kernel_for_dispatch_key("snnspx::srm_forward", "CPU")
    x = currents(gen, (8, 3, 4))
    ran = profiled_ops(lambda: run_every_srm_op(x, "torch"))
    assert srm_ops(ran) == ONCE_EACH
    assert TORCH_KERNEL_OPS <= ran.keys(), "the PyTorch kernels did not run"
    # the choice holds for the backward of srm_neuron alone (it runs after the forward's block)
    xg = x.clone().requires_grad_()
    out = F.srm_neuron(xg, backend="torch")
    ran = profiled_ops(lambda: out.sum().backward())
    assert ran["snnspx::srm_neuron_bwd"] == 1 and "aten::where" in ran
    for a, b in zip(F.srm_forward(x, backend="torch"), F.srm_forward(x, backend="cpp")):
        assert torch.equal(a, b)


@pytest.mark.cuda
def test_cuda_kernel_actually_runs(gen):
    """Every CUDA op of the neuron runs once per call, with its CUDA kernel (none of the
    PyTorch kernel's arithmetic); with no backend given, so do CUDA tensors once the CUDA kernels
    are the default (see test_cuda_default_is_the_pytorch_kernel_until_verified)."""
    x = currents(gen, (6, 4), device="cuda")
    F.srm_forward(x, backend="cuda")  # loads the library
    for name in ONCE_EACH:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "CUDA"), name
    backends = ("cuda", None) if snnspx._backend._cuda_kernels_default() else ("cuda",)
    for backend in backends:
        ran = profiled_ops(lambda: run_every_srm_op(x, backend))
        assert srm_ops(ran) == ONCE_EACH, f"backend={backend}"
        assert not TORCH_KERNEL_OPS & ran.keys(), f"backend={backend}: the PyTorch kernel ran"


def check_bad_arguments(forward, backward):
    """Argument errors name the argument; `forward`/`backward` take srm_forward's/srm_backward's
    arguments (an op's backend or the reference)."""
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="tau_m and tau_s must differ"):
        forward(x, tau_m=3.0, tau_s=3.0)
    for name in ("tau_m", "tau_s", "tau_grad"):
        with pytest.raises(ValueError, match=name):
            forward(x, **{name: 1.0})
    with pytest.raises(TypeError, match="x must be float32"):
        forward(torch.ones(4, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="x must have at least 1"):
        forward(torch.tensor(1.0))
    s, du, dut = forward(x)
    with pytest.raises(ValueError, match="du must have the shape"):
        backward(s, s, du[:2], dut)
    with pytest.raises(ValueError, match="du_inv_clamp"):
        backward(s, s, du, dut, du_inv_clamp=-1.0)


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_bad_arguments_name_the_argument(backend):
    check_bad_arguments(
        lambda *a, **k: F.srm_forward(*a, backend=backend, **k), lambda *a, **k: F.srm_backward(*a, backend=backend, **k)
    )


def test_reference_bad_arguments_name_the_argument():
    check_bad_arguments(R.srm_forward, R.srm_backward)


def test_ops_check_params_through_srm_params():
    """The functional ops take params= and SRMParams fields as keywords (which override it);
    a bad field or keyword is the error of SRMParams; every argument after the tensors is keyword-only."""
    x = torch.randn(4, 3)
    s, du, dut = F.srm_forward(x)
    for call in (lambda **k: F.srm_forward(x, **k), lambda **k: F.srm_neuron(x, **k),
                 lambda **k: F.srm_backward(s, s, du, dut, **k)):
        with pytest.raises(ValueError, match="tau_m must be a finite number > 1"):
            call(params=SRMParams(), tau_m=0.5)
        with pytest.raises(TypeError, match="v_th must be a Python number"):
            call(v_th="1")
        with pytest.raises(TypeError, match="params must be an snnspx.SRMParams"):
            call(params=dict(tau_m=5.0))
        with pytest.raises(TypeError):
            call(tau=5.0)  # not a field
    with pytest.raises(TypeError):
        F.srm_forward(x, 5.0)  # positional constants are gone
    with pytest.raises(TypeError):
        F.srm_neuron(x, SRMParams())


@pytest.mark.parametrize("backend,device", GRID)
def test_params_and_keywords_agree(backend, device, gen):
    """params=SRMParams(...) and the same fields as keywords run the same neuron, as the
    reference does with them; keywords replace the fields of params."""
    p = SRMParams(tau_m=7.0, tau_s=2.0, tau_grad=3.0, v_th=0.8, du_inv_clamp=2.0, max_dudt_inv=9.0)
    fields = dataclasses.asdict(p)
    x = currents(gen, (15, 2, 3), torch.float64, device)
    w = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(device)
    want = R.srm_forward(x, params=p)
    assert want[0].sum() > 0
    assert_forward_equal(F.srm_forward(x, params=p, backend=backend), want)
    assert_forward_equal(F.srm_forward(x, backend=backend, **fields), want)
    q = dataclasses.replace(p, v_th=0.3)
    assert_forward_equal(F.srm_forward(x, params=p, v_th=0.3, backend=backend), R.srm_forward(x, params=q))
    rw, rt = R.srm_backward(w, *want, params=p)
    for got in (F.srm_backward(w, *want, params=p, backend=backend), F.srm_backward(w, *want, backend=backend, **fields)):
        torch.testing.assert_close(got[0].cpu(), rw.cpu(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got[1].cpu(), rt.cpu(), rtol=1e-12, atol=1e-12)
    xg = x.clone().requires_grad_()
    (F.srm_neuron(xg, params=p, v_th=0.3, backend=backend) * w).sum().backward()
    torch.testing.assert_close(xg.grad.cpu(), R.srm_neuron_backward(w, x, params=q).cpu(), rtol=1e-12, atol=1e-12)


def test_compiled_op_checks_its_arguments():
    """The C++ checks stand on their own, for callers of torch.ops.snnspx directly."""
    F.srm_forward(torch.zeros(1, 1), backend="cpp")
    ops = torch.ops.snnspx
    with pytest.raises(ValueError, match="tau_m and tau_s must differ"):  # the Python layer's type too
        ops.srm_forward(torch.randn(3, 2), 3.0, 3.0, 2.5, 1.0, 0)
    with pytest.raises(ValueError, match="v_th must not be NaN"):
        ops.srm_forward(torch.randn(3, 2), 5.0, 3.0, 2.5, float("nan"), 0)
    # The fused ops check the threshold like srm_forward.
    x, labels, nan = torch.randn(3, 1, 1, 2), torch.zeros(1, 1, 2, dtype=torch.long), float("nan")
    with pytest.raises(ValueError, match="v_th must not be NaN"):
        ops.srm_suppix_pool(x, labels, 1, "sum", 5.0, 3.0, 2.5, nan, 0, True, "")
    with pytest.raises(ValueError, match="v_th must not be NaN"):
        ops.srm_suppix_pool_fwd(x, labels, 1, "sum", 5.0, 3.0, 2.5, nan, 4.0, 1e8, 0, True, "")
    gy, counts, no_argmax = torch.randn(3, 1, 1, 1), torch.full((1, 1, 1), 2, dtype=torch.int32), torch.empty(0).int()
    with pytest.raises(ValueError, match="v_th must not be NaN"):  # the backward runs the neuron again
        ops.srm_suppix_pool_bwd(gy, x, labels, counts, no_argmax, "sum", 5.0, 3.0, 2.5, nan, 4.0, 1e8, 0, "")
    with pytest.raises(TypeError, match="grad_y must have the dtype of x"):
        ops.srm_suppix_pool_bwd(gy.double(), x, labels, counts, no_argmax, "sum", 5.0, 3.0, 2.5, 1.0, 4.0, 1e8, 0, "")
    with pytest.raises(RuntimeError, match=r"grad_y must be \[T, B, C, K\]"):
        ops.srm_suppix_pool_bwd(gy[:2], x, labels, counts, no_argmax, "sum", 5.0, 3.0, 2.5, 1.0, 4.0, 1e8, 0, "")
    with pytest.raises(RuntimeError, match="x must be a floating-point tensor"):
        ops.srm_forward(torch.ones(3, 2, dtype=torch.int32), 5.0, 3.0, 2.5, 1.0, 0)
    x = torch.randn(3, 2)
    s, du, dut = ops.srm_forward(x, 5.0, 3.0, 2.5, 1.0, 0)
    with pytest.raises(RuntimeError, match="grad_spikes and dut must have the same shape"):
        ops.srm_backward(s, s, du, dut[:1], 5.0, 3.0, 2.5, 4.0, 1.0, 0)
    with pytest.raises(RuntimeError, match="grad_spikes and x must have the same shape"):
        ops.srm_neuron_bwd(s, x[:1], None, 5.0, 3.0, 2.5, 1.0, 4.0, 1.0, 0, False)
    with pytest.raises(TypeError, match="grad_spikes must have the dtype of x"):
        ops.srm_neuron_bwd(s.double(), x, None, 5.0, 3.0, 2.5, 1.0, 4.0, 1.0, 0, False)


def test_backend_selection(monkeypatch):
    with pytest.raises(ValueError, match="backend must be one of"):
        F.srm_forward(torch.randn(2, 2), backend="triton")
    with pytest.raises(ValueError, match="'reference' is not a backend"):
        F.srm_forward(torch.randn(2, 2), backend="reference")
    with pytest.raises(ValueError, match="'reference' is not a backend"):
        snnspx.nn.SRMNeuron(backend="reference")
    monkeypatch.setenv("SNNSPX_BACKEND", "nope")
    with pytest.raises(ValueError, match="SNNSPX_BACKEND must be one of"):
        F.srm_forward(torch.randn(2, 2))
    monkeypatch.setenv("SNNSPX_BACKEND", "reference")
    with pytest.raises(ValueError, match="SNNSPX_BACKEND='reference' is not a backend"):
        F.srm_forward(torch.randn(2, 2))
    monkeypatch.setenv("SNNSPX_BACKEND", "torch")
    F.srm_forward(torch.zeros(1, 1), backend="cpp")  # the cpp kernels are loaded, yet not used:
    assert resolve(None, torch.device("cpu")) == "torch"
    ran = profiled_ops(lambda: F.srm_forward(torch.randn(2, 2)))
    assert ran["snnspx::srm_forward"] == 1 and "aten::where" in ran, "SNNSPX_BACKEND=torch must not run the kernel"
    monkeypatch.setenv("SNNSPX_BACKEND", "cuda")
    with pytest.raises(ValueError, match="runs on CUDA tensors"):
        F.srm_forward(torch.randn(2, 2))


def test_cuda_default_is_the_pytorch_kernel_until_verified(monkeypatch):
    """A CUDA kernel that has not passed the GPU check is never a default: CUDA tensors go to
    the PyTorch kernels, with one warning that says why and how to opt in; nothing is built.
    (Resolution needs no GPU: it only looks at the device type.)"""
    from snnspx import _backend

    monkeypatch.delenv("SNNSPX_BACKEND", raising=False)
    monkeypatch.setattr(_backend, "_warned", set())
    monkeypatch.setattr(_backend, "CUDA_KERNELS_VERIFIED", False)
    monkeypatch.setattr(_backend, "_CUDA_DEFAULT_ENV", "")
    with pytest.warns(RuntimeWarning, match="not yet passed the project's GPU check.*backend='cuda'"):
        assert resolve(None, torch.device("cuda")) == "torch"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve(None, torch.device("cuda")) == "torch"  # warned once only
    monkeypatch.setattr(_backend, "CUDA_KERNELS_VERIFIED", True)
    monkeypatch.setattr(_backend, "_CUDA_DEFAULT_ENV", "torch")  # the user's choice wins over a pass
    assert resolve(None, torch.device("cuda")) == "torch"
    monkeypatch.setattr(_backend, "_CUDA_DEFAULT_ENV", "gpu")
    with pytest.raises(ValueError, match="SNNSPX_CUDA_DEFAULT must be 'cuda', 'torch' or empty, got 'gpu'"):
        resolve(None, torch.device("cuda"))
