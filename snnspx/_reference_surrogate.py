"""The surrogate-mode SRM neuron (docs/maths.md §9-§11) as per-element loops: the oracle of
:func:`snnspx.functional.srm_neuron_surrogate`'s ops, re-exported by :mod:`snnspx.reference`.

Plain functions, no autograd. The forward runs in NumPy scalars of the neuron-state dtype
(float32, or float64 for float64 inputs) in the kernels' order, so the spikes agree exactly;
the backward is §9's chain rule written out per neuron and step, with the reset as the
factor ``(1 - S_t)`` and each surrogate as §9 writes it; the constants' gradients are
added in Python floats (double).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from . import _checks
from .params import SURROGATES

__all__ = ["srm_surrogate_forward", "srm_surrogate_backward"]



def _np_dtype(dtype: torch.dtype):
    return np.float64 if dtype == torch.float64 else np.float32


def _values(v, x: torch.Tensor, name: str) -> list[float]:
    """A constant's values, one per channel (a list of 1 for a number or a 0-d tensor)."""
    if isinstance(v, torch.Tensor):
        if v.dim() == 0:
            return [float(v.detach())]
        if v.dim() != 1 or x.dim() < 3 or v.shape[0] != x.shape[2]:
            raise ValueError(f"{name} must be a number, a 0-d tensor or [C] with C = x.shape[2], got {tuple(v.shape)}")
        return [float(a) for a in v.detach().cpu().to(torch.float64)]
    return [float(v)]


class _Neurons:
    """Per-neuron constants (a_m, a_s, c, v_th in the state dtype; the time constants in
    double) and the channel of each neuron of x [T, N] (N = the neurons of one step)."""

    def __init__(self, x, tau_m, tau_s, v_th, tau_grad):
        self.f = f = _np_dtype(x.dtype)
        self.tm, self.ts, self.vt = _values(tau_m, x, "tau_m"), _values(tau_s, x, "tau_s"), _values(v_th, x, "v_th")
        self.C = max(len(self.tm), len(self.ts), len(self.vt))
        self.P = math.prod(x.shape[3:]) if x.dim() >= 3 else 1
        self.a_g = f(1.0 - 1.0 / tau_grad)

    def channel(self, n: int) -> int:
        return (n // self.P) % self.C if self.C > 1 else 0

    def constants(self, ch: int):
        f = self.f
        tm, ts = self.tm[ch % len(self.tm)], self.ts[ch % len(self.ts)]
        vt = _checks.to_acc_float(self.vt[ch % len(self.vt)], torch.float64 if f is np.float64 else torch.float32)
        return f(1.0 - 1.0 / tm), f(1.0 - 1.0 / ts), f(tm / (tm - ts)), f(vt), tm, ts


def _as_2d(t: torch.Tensor, f) -> np.ndarray:
    t = t.detach().to("cpu", torch.float64 if f is np.float64 else torch.float32)
    return t.reshape(t.shape[0], math.prod(t.shape[1:])).numpy().copy()


def _state_2d(state, x, f) -> np.ndarray:
    N = math.prod(x.shape[1:])
    if state is None:
        return np.zeros((4, N), f)
    return _as_2d(state, f)


def _fires(u, vth, fire_if: str) -> bool:
    if fire_if not in (">", ">="):
        raise ValueError(f"fire_if must be '>' or '>=', got {fire_if!r}")
    return bool(u >= vth) if fire_if == ">=" else bool(u > vth)


def srm_surrogate_forward(x: torch.Tensor, *, tau_m=5.0, tau_s=3.0, v_th=1.0, state=None, fire_if=">", tau_grad=2.5):
    """§2 from a carried state (§11). Returns ``(spikes, state_out)``: spikes shaped like `x` in
    its dtype; ``state_out`` ``[4, *x.shape[1:]]`` = (m, s, g, u_last) after the last step's reset."""
    _checks.check_tensor(x, "x")
    nr = _Neurons(x, tau_m, tau_s, v_th, tau_grad)
    f = nr.f
    xs = _as_2d(x, f)
    st = _state_2d(state, x, f)
    T, N = xs.shape
    spikes = np.zeros((T, N), f)
    with np.errstate(all="ignore"):
        for n in range(N):
            a_m, a_s, c, vth, _, _ = nr.constants(nr.channel(n))
            m, s, g, u_last = st[0, n], st[1, n], st[2, n], st[3, n]
            for t in range(T):
                m = (m + xs[t, n]) * a_m
                s = (s + xs[t, n]) * a_s
                g = (g + xs[t, n]) * nr.a_g
                u = c * (m - s)
                if _fires(u, vth, fire_if):
                    spikes[t, n] = 1
                    m = s = g = u_last = f(0)
                else:
                    u_last = u
            st[:, n] = (m, s, g, u_last)
    acc = _checks.acc_dtype(x.dtype)
    return (torch.from_numpy(spikes).reshape(x.shape).to(x.device, x.dtype),
            torch.from_numpy(st).reshape(4, *x.shape[1:]).to(x.device, acc))


def _surrogate(kind: str, z, alpha, f):
    """sigma'(z), §9's formulas in the state dtype."""
    one = f(1)
    a = f(alpha)
    if kind == "sigmoid":
        sig = one / (one + np.exp(-a * z))
        return a * sig * (one - sig)
    if kind == "atan":
        return (a / f(2)) / (one + (f(math.pi / 2) * a * z) ** 2)
    if kind == "fast_sigmoid":
        return one / (one + a * abs(z)) ** 2
    if kind == "triangle":
        return max(f(0), one - abs(z) / a) / a
    raise ValueError(f"surrogate must be one of {tuple(SURROGATES)}, got {kind!r}")


def srm_surrogate_backward(
    grad_spikes: torch.Tensor,
    x: torch.Tensor,
    *,
    tau_m=5.0,
    tau_s=3.0,
    v_th=1.0,
    state=None,
    fire_if=">",
    surrogate="sigmoid",
    alpha=None,
    detach_reset=False,
    grad_state=None,
    tau_grad=2.5,
):
    """§9's backpropagation through time, per neuron, from ``dL/dspikes`` (and ``dL/dstate_out``,
    `grad_state`, None for zeros).

    Returns ``(grad_x, grad_tau_m, grad_tau_s, grad_v_th, grad_state_in)``: grad_x in the dtype of
    `x`; each constant's gradient shaped like it (0-d for a number; float64 for a number, else
    its dtype); grad_state_in ``[4, *x.shape[1:]]`` in the state dtype (0 for u_last when T > 0).
    """
    _checks.check_tensor(x, "x")
    alpha = SURROGATES[surrogate] if alpha is None and surrogate in SURROGATES else alpha
    nr = _Neurons(x, tau_m, tau_s, v_th, tau_grad)
    f = nr.f
    xs, G = _as_2d(x, f), _as_2d(grad_spikes, f)
    st = _state_2d(state, x, f)
    gst = _state_2d(grad_state, x, f)
    T, N = xs.shape
    gx = np.zeros((T, N), f)
    gst_in = np.zeros((4, N), f) if T else gst.copy()
    # per channel, in double: dL/dtau_m, dL/dtau_s, dL/dv_th
    g_tm, g_ts, g_vt = [0.0] * nr.C, [0.0] * nr.C, [0.0] * nr.C
    one, zero = f(1), f(0)
    with np.errstate(all="ignore"):
        for n in range(N):
            ch = nr.channel(n)
            a_m, a_s, c, vth, tm, ts = nr.constants(ch)
            m, s, g = st[0, n], st[1, n], st[2, n]
            fwd = []  # per step: m + x, s + x, m^, s^, g^, u, S
            for t in range(T):
                pm, ps, pg = m + xs[t, n], s + xs[t, n], g + xs[t, n]
                mh, sh, gh = pm * a_m, ps * a_s, pg * nr.a_g
                u = c * (mh - sh)
                S = one if _fires(u, vth, fire_if) else zero
                fwd.append((pm, ps, mh, sh, gh, u, S))
                m, s, g = mh * (one - S), sh * (one - S), gh * (one - S)
            lm, ls, lg, lu = gst[0, n], gst[1, n], gst[2, n], gst[3, n]  # dL/d(state after step t)
            d_am = d_as = d_c = d_vt = 0.0
            for t in range(T - 1, -1, -1):
                pm, ps, mh, sh, gh, u, S = fwd[t]
                keep = one - S
                sg = _surrogate(surrogate, u - vth, alpha, f)
                dS = G[t, n]  # dL/dS_t: the spike, and (unless detached) the reset of m, s, g, u_last
                if not detach_reset:
                    dS = dS - (lm * mh + ls * sh + lg * gh + lu * u)
                du = dS * sg + lu * keep  # dL/du_t
                dmh = lm * keep + c * du  # dL/dm^_t
                dsh = ls * keep - c * du  # dL/ds^_t
                dgh = lg * keep
                d_am += float(dmh) * float(pm)
                d_as += float(dsh) * float(ps)
                d_c += float(du) * float(mh - sh)
                d_vt -= float(dS) * float(sg)
                lm, ls, lg, lu = dmh * a_m, dsh * a_s, dgh * nr.a_g, zero
                gx[t, n] = lm + ls + lg
            if T:
                gst_in[:, n] = (lm, ls, lg, zero)
            g_tm[ch] += d_am / tm**2 - d_c * ts / (tm - ts) ** 2
            g_ts[ch] += d_as / ts**2 + d_c * tm / (tm - ts) ** 2
            g_vt[ch] += d_vt
    acc = _checks.acc_dtype(x.dtype)

    def shaped(vals, like):
        if isinstance(like, torch.Tensor):
            out = torch.tensor(vals if like.dim() else sum(vals), dtype=torch.float64)
            return out.to(like.device, like.dtype)
        return torch.tensor(sum(vals), dtype=torch.float64)

    return (torch.from_numpy(gx).reshape(x.shape).to(x.device, x.dtype), shaped(g_tm, tau_m), shaped(g_ts, tau_s),
            shaped(g_vt, v_th), torch.from_numpy(gst_in).reshape(4, *x.shape[1:]).to(x.device, acc))
