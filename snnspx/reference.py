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

__all__ = ["srm_forward", "srm_backward", "srm_neuron", "suppix_pool", "suppix_unpool", "suppix_counts"]


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


# --------------------------------------------------------------------------- superpixel pooling (SPEC §5)
# One Python iteration per pixel, in ascending pixel order, accumulating in NumPy
# scalars of float32 (float64 for float64 inputs). Each (t, b, c) plane reads the
# label map of its step and image: labels[l, bl, p], l = t or 0, bl = b or 0.


def _maps(lay):
    lab = lay.labels.detach().cpu().numpy()
    return lambda t, b: lab[t if lab.shape[0] > 1 else 0, b if lab.shape[1] > 1 else 0]


def _pool_loops(X: np.ndarray, label_map, K: int, mode: str, f):
    """X [T, B, C, P] numpy. Returns y [T, B, C, K], argmax (or -1), n, m (non-zero inputs)."""
    T, B, C, P = X.shape
    y = np.zeros((T, B, C, K), f)
    arg = np.full((T, B, C, K), -1, np.int64)
    n = np.zeros((T, B, C, K), np.int64)
    m = np.zeros((T, B, C, K), np.int64)
    with np.errstate(all="ignore"):
        for t in range(T):
            for b in range(B):
                lab = label_map(t, b)
                for c in range(C):
                    acc = [f(0)] * K
                    for p in range(P):
                        k = int(lab[p])
                        if k < 0:
                            continue
                        v = X[t, b, c, p]
                        n[t, b, c, k] += 1
                        m[t, b, c, k] += v != 0
                        if mode == "max":
                            best = acc[k]
                            # the first pixel, a larger value, or a NaN over a number; ties keep the first
                            if arg[t, b, c, k] < 0 or v > best or (np.isnan(v) and not np.isnan(best)):
                                acc[k], arg[t, b, c, k] = v, p
                        else:
                            acc[k] = f(acc[k] + v)
                    for k in range(K):
                        if mode == "sum":
                            y[t, b, c, k] = acc[k]
                        elif mode == "max":
                            y[t, b, c, k] = acc[k] if n[t, b, c, k] > 0 else f(0)
                        else:
                            y[t, b, c, k] = acc[k] / f(n[t, b, c, k]) if n[t, b, c, k] > 0 else f(0)
    return y, arg, n, m


def _unpool_loops(Y: np.ndarray, label_map, P: int, f, scale=None, arg=None):
    """z[t, b, c, p] = Y[t, b, c, label(p)] (/ scale[t, b, c, k]; only at arg[t, b, c, k] == p)."""
    T, B, C, K = Y.shape
    z = np.zeros((T, B, C, P), f)
    with np.errstate(all="ignore"):
        for t in range(T):
            for b in range(B):
                lab = label_map(t, b)
                for c in range(C):
                    for p in range(P):
                        k = int(lab[p])
                        if k < 0 or (arg is not None and arg[t, b, c, k] != p):
                            continue
                        if scale is None:
                            z[t, b, c, p] = Y[t, b, c, k]
                        elif scale[t, b, c, k] > 0:
                            z[t, b, c, p] = Y[t, b, c, k] / f(scale[t, b, c, k])
    return z


class _ReferencePool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x4, lay, K, mode, grad):
        f = _np_dtype(x4.dtype)
        X = x4.detach().to("cpu", torch.float64 if f is np.float64 else torch.float32).numpy()
        y, arg, n, m = _pool_loops(X, _maps(lay), K, mode, f)
        ctx.lay, ctx.mode, ctx.grad, ctx.P = lay, mode, grad, x4.shape[-1]
        ctx.arg, ctx.n, ctx.m = arg, n, m
        return torch.from_numpy(y).to(device=x4.device, dtype=x4.dtype)

    @staticmethod
    def backward(ctx, grad_y):
        f = _np_dtype(grad_y.dtype)
        G = grad_y.detach().to("cpu", torch.float64 if f is np.float64 else torch.float32).numpy()
        if ctx.mode == "sum":
            z = _unpool_loops(G, _maps(ctx.lay), ctx.P, f)
        elif ctx.mode == "max":
            z = _unpool_loops(G, _maps(ctx.lay), ctx.P, f, arg=ctx.arg)
        else:  # avg: g / n (exact) or g / m, m the non-zero inputs (spike)
            z = _unpool_loops(G, _maps(ctx.lay), ctx.P, f, scale=ctx.n if ctx.grad == "exact" else ctx.m)
        return torch.from_numpy(z).to(device=grad_y.device, dtype=grad_y.dtype), None, None, None, None


class _ReferenceUnpool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y4, lay):
        f = _np_dtype(y4.dtype)
        Y = y4.detach().to("cpu", torch.float64 if f is np.float64 else torch.float32).numpy()
        ctx.lay, ctx.K = lay, y4.shape[-1]
        z = _unpool_loops(Y, _maps(lay), lay.labels.shape[-1], f)
        return torch.from_numpy(z).to(device=y4.device, dtype=y4.dtype)

    @staticmethod
    def backward(ctx, grad_z):
        f = _np_dtype(grad_z.dtype)
        G = grad_z.detach().to("cpu", torch.float64 if f is np.float64 else torch.float32).numpy()
        gy, _, _, _ = _pool_loops(G, _maps(ctx.lay), ctx.K, "sum", f)
        return torch.from_numpy(gy).to(device=grad_z.device, dtype=grad_z.dtype), None


def suppix_counts(labels: torch.Tensor, num_superpixels: int | None = None) -> torch.Tensor:
    """Pixels per superpixel, int64 ``labels.shape[:-2] + (K,)`` (SPEC §5's n)."""
    _checks.check_labels_tensor(labels)
    K, inferred = _checks.num_superpixels(labels, num_superpixels)
    if not inferred:
        _checks.check_label_range(labels, K)
    flat = labels.detach().cpu().reshape(-1, labels.shape[-2] * labels.shape[-1]).numpy()
    n = np.zeros((flat.shape[0], K), np.int64)
    for i in range(flat.shape[0]):
        for p in range(flat.shape[1]):
            if flat[i, p] >= 0:
                n[i, int(flat[i, p])] += 1
    return torch.from_numpy(n).reshape(*labels.shape[:-2], K).to(labels.device)


def suppix_pool(
    x: torch.Tensor,
    labels: torch.Tensor,
    num_superpixels: int | None = None,
    mode: str = "avg",
    *,
    grad: str = "exact",
    return_counts: bool = False,
    check_labels: bool = True,
):
    """SPEC §5 by explicit loops: ``[T, B, C, H, W]`` (or ``[B, C, H, W]``) -> ``[T, B, C, K]`` (or ``[B, C, K]``).

    Differentiable in `x` with the backward of `mode` (and `grad` for "avg"). Labels
    >= K are an error unless ``check_labels=False``, which ignores them.
    """
    internal = _checks.suppix_mode(mode, grad)
    lay = _checks.suppix_layout(x, labels, pooled=False)
    K, inferred = _checks.num_superpixels(lay.labels, num_superpixels)
    if check_labels and not inferred:
        _checks.check_label_range(lay.labels, K)
    if not check_labels:  # labels >= K are ignored pixels, as in the kernels
        lay = lay._replace(labels=torch.where(lay.labels >= K, -1, lay.labels))
    y = _ReferencePool.apply(lay.data, lay, K, "avg" if internal == "avg_spike" else internal, grad)
    y = y[0] if lay.single_step else y
    if return_counts:
        return y, suppix_counts(torch.where(labels >= K, -1, labels), K)
    return y


def suppix_unpool(y: torch.Tensor, labels: torch.Tensor, *, check_labels: bool = True) -> torch.Tensor:
    """SPEC §5 unpooling by explicit loops: ``z[p] = y[label(p)]``, 0 for negative labels.

    ``[T, B, C, K]`` (or ``[B, C, K]``) -> ``[T, B, C, H, W]`` (or ``[B, C, H, W]``); its
    backward is sum pooling of the gradient.
    """
    lay = _checks.suppix_layout(y, labels, pooled=True)
    K = y.shape[-1]
    if check_labels:
        _checks.check_label_range(lay.labels, K)
    else:
        lay = lay._replace(labels=torch.where(lay.labels >= K, -1, lay.labels))
    z = _ReferenceUnpool.apply(lay.data, lay)
    H, W = lay.spatial
    z = z.reshape(*z.shape[:3], H, W)
    return z[0] if lay.single_step else z
