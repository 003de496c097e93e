"""The oracle: per-element Python loops written straight from the SPEC.

Slow on purpose (one Python iteration per neuron and step); every other backend
is tested against these on small inputs. Same signatures as
:mod:`snnspx.functional`, without ``backend``. Arithmetic happens in NumPy
scalars of the neuron-state dtype (float32, or float64 for float64 inputs) in
the same order as the kernels, so spikes agree exactly.
"""

from __future__ import annotations

import numpy as np
import torch

from . import _checks

__all__ = ["srm_forward", "srm_backward", "srm_neuron"]


def _np_dtype(dtype: torch.dtype):
    return np.float64 if dtype == torch.float64 else np.float32


def _as_2d(t: torch.Tensor, np_dtype) -> np.ndarray:
    """[T, ...] -> numpy [T, N] in np_dtype (a copy)."""
    t = t.detach().to("cpu", torch.float64 if np_dtype is np.float64 else torch.float32)
    return t.reshape(t.shape[0], -1).numpy().copy()


def _clamp(v, lo, hi):
    return lo if v < lo else (hi if v > hi else v)  # NaN stays NaN


def srm_forward(x: torch.Tensor, tau_m: float = 5.0, tau_s: float = 3.0, tau_grad: float = 2.5, v_th: float = 1.0):
    """SPEC §2 by explicit loops. Returns ``(spikes, du, dut)``, each shaped like `x`."""
    _checks.check_tensor(x, "x")
    _checks.check_srm_params(tau_m, tau_s, tau_grad, v_th)
    f = _np_dtype(x.dtype)
    a_m, a_s, a_g, c = (f(v) for v in _checks.srm_constants(tau_m, tau_s, tau_grad))
    vth = f(v_th)
    xs = _as_2d(x, f)
    T, N = xs.shape
    spikes = np.zeros((T, N), f)
    du = np.zeros((T, N), f)
    dut = np.zeros((T, N), f)
    with np.errstate(all="ignore"):
        for n in range(N):
            m = s = g = u_last = f(0)
            for t in range(T):
                m = (m + xs[t, n]) * a_m
                s = (s + xs[t, n]) * a_s
                g = (g + xs[t, n]) * a_g
                u = c * (m - s)
                du[t, n] = u - u_last
                dut[t, n] = g
                if u > vth:
                    spikes[t, n] = 1
                    m = s = g = u_last = f(0)
                else:
                    u_last = u
    acc = _checks.acc_dtype(x.dtype)

    def back(a, dtype):
        return torch.from_numpy(a).reshape(x.shape).to(device=x.device, dtype=dtype)

    return back(spikes, x.dtype), back(du, acc), back(dut, acc)


def srm_backward(
    grad_spikes: torch.Tensor,
    spikes: torch.Tensor,
    du: torch.Tensor,
    dut: torch.Tensor,
    tau_m: float = 5.0,
    tau_s: float = 3.0,
    tau_grad: float = 2.5,
    du_inv_clamp: float = 4.0,
    max_dudt_inv: float = 123456789.0,
):
    """SPEC §3 by explicit loops. Returns ``(grad_w, grad_t)`` in the dtype of `grad_spikes`."""
    _checks.check_tensor(grad_spikes, "grad_spikes")
    _checks.check_same_shape(grad_spikes, "grad_spikes", spikes=spikes, du=du, dut=dut)
    _checks.check_srm_params(tau_m, tau_s, tau_grad)
    _checks.check_backward_params(du_inv_clamp, max_dudt_inv)
    f = _np_dtype(du.dtype)
    G = _as_2d(grad_spikes, f)
    S = _as_2d(spikes, f)
    DU = _as_2d(du, f)
    DUT = _as_2d(dut, f)
    T, N = G.shape
    epsw_d, epst_d = _checks.srm_tables(T, tau_m, tau_s, tau_grad)
    epsw = [f(v) for v in epsw_d]
    epst = [f(v) for v in epst_d]
    lo_w, lo_t, zero, minus_one = -f(du_inv_clamp), -f(max_dudt_inv), f(0), f(-1)
    grad_w = np.zeros((T, N), f)
    grad_t = np.zeros((T, N), f)
    with np.errstate(all="ignore"):
        for n in range(N):
            A_w = A_t = zero
            lag = 0
            seen = False
            for t in range(T - 1, -1, -1):
                if S[t, n] == 1:
                    A_w = G[t, n] * _clamp(minus_one / DU[t, n], lo_w, zero)
                    A_t = G[t, n] * _clamp(minus_one / DUT[t, n], lo_t, zero)
                    lag = 0
                    seen = True
                elif seen:
                    lag += 1
                grad_w[t, n] = A_w * epsw[lag] if seen else zero
                grad_t[t, n] = A_t * epst[lag] if seen else zero

    def back(a):
        return torch.from_numpy(a).reshape(grad_spikes.shape).to(device=grad_spikes.device, dtype=grad_spikes.dtype)

    return back(grad_w), back(grad_t)


class _ReferenceNeuron(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, tau_m, tau_s, tau_grad, v_th, du_inv_clamp, max_dudt_inv):
        spikes, du, dut = srm_forward(x, tau_m, tau_s, tau_grad, v_th)
        ctx.save_for_backward(spikes, du, dut)
        ctx.params = (tau_m, tau_s, tau_grad, du_inv_clamp, max_dudt_inv)
        return spikes

    @staticmethod
    def backward(ctx, grad_spikes):
        spikes, du, dut = ctx.saved_tensors
        grad_w, _ = srm_backward(grad_spikes, spikes, du, dut, *ctx.params)
        return grad_w, None, None, None, None, None, None


def srm_neuron(
    x: torch.Tensor,
    tau_m: float = 5.0,
    tau_s: float = 3.0,
    tau_grad: float = 2.5,
    v_th: float = 1.0,
    du_inv_clamp: float = 4.0,
    max_dudt_inv: float = 123456789.0,
) -> torch.Tensor:
    """Spikes of `x` with the event-driven gradient dL/dx = grad_w (SPEC §3)."""
    _checks.check_backward_params(du_inv_clamp, max_dudt_inv)
    return _ReferenceNeuron.apply(x, tau_m, tau_s, tau_grad, v_th, du_inv_clamp, max_dudt_inv)
