"""The oracle: per-element Python loops written straight from the definitions in docs/maths.md.

Slow on purpose (one Python iteration per neuron and step); every kernel is tested
against these on small inputs. Plain functions with no autograd: each forward has its
backward beside it (``srm_forward`` / ``srm_backward``, ``suppix_pool`` /
``suppix_pool_backward``, ...), and the tests compare an op's output with the forward and
the gradients autograd gives with the backward. Arguments as in :mod:`snnspx.functional`,
without ``backend``. Arithmetic happens in NumPy scalars of the neuron-state dtype
(float32, or float64 for float64 inputs) in the same order as the kernels, so spikes
agree exactly.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from . import _checks
from .params import SRMParams

__all__ = [
    "suppix_pool",
    "suppix_pool_backward",
    "suppix_pool_double_backward",
    "suppix_unpool",
    "suppix_unpool_backward",
    "suppix_counts",
    "srm_suppix_pool",
    "srm_suppix_pool_backward",
    "srm_forward",
    "srm_backward",
    "srm_neuron_backward",
    "srm_conv2d_forward",
    "srm_conv2d_backward",
    "srm_linear_forward",
    "srm_linear_backward",
    "standardize_weight",
    "spike_avg_pool2d",
    "spike_avg_pool2d_backward",
    "quantize",
    "pow2_scale_exponent",
]


def _np_dtype(dtype: torch.dtype):
    return np.float64 if dtype == torch.float64 else np.float32


def _as_2d(t: torch.Tensor, np_dtype) -> np.ndarray:
    """[T, ...] -> numpy [T, N] in np_dtype (a copy)."""
    t = t.detach().to("cpu", torch.float64 if np_dtype is np.float64 else torch.float32)
    return t.reshape(t.shape[0], math.prod(t.shape[1:])).numpy().copy()  # no -1: T or a size may be 0


def _clamp(v, lo, hi):
    return lo if v < lo else (hi if v > hi else v)  # NaN stays NaN


def srm_forward(
    x: torch.Tensor,
    *,
    params: SRMParams | None = None,
    state: torch.Tensor | None = None,
    return_state: bool = False,
    **neuron,
):
    """docs/maths.md §2 (and its "Neuron variants") by explicit loops. Returns
    ``(spikes, du, dut)``, each shaped like `x`; with `return_state` also ``state_out``.

    `state` (docs/maths.md, "Carried state"): ``[4, *x.shape[1:]]`` = (m, s, g, u_last) per
    neuron to start from (None: zeros), in the state dtype; ``state_out`` is laid out alike,
    the state after the last step's reset."""
    p = SRMParams.make(params, **neuron)
    _checks.check_tensor(x, "x")
    f = _np_dtype(x.dtype)
    a_m, a_s, a_g, c = (f(v) for v in p.constants())
    vth = f(_checks.to_acc_float(p.v_th, x.dtype))
    leaky = p.forward_type == "leaky"
    xs = _as_2d(x, f)
    T, N = xs.shape
    init = np.zeros((4, N), f)
    if state is not None:
        if tuple(state.shape) != (4, *x.shape[1:]):
            raise ValueError(f"state must be [4, *x.shape[1:]], got {list(state.shape)}")
        init = state.detach().to("cpu", torch.float64 if f is np.float64 else torch.float32).reshape(4, N).numpy()
    end = np.zeros((4, N), f)
    spikes = np.zeros((T, N), f)
    du = np.zeros((T, N), f)
    dut = np.zeros((T, N), f)
    with np.errstate(all="ignore"):
        for n in range(N):
            m, s, g, u_last = (init[k, n] for k in range(4))
            for t in range(T):
                m = (m + xs[t, n]) * a_m
                s = (s + xs[t, n]) * a_s
                g = (g + xs[t, n]) * a_g
                if leaky:
                    u = c * (m - s)
                    du[t, n] = u - u_last
                    dut[t, n] = g if p.gradient_type == "exponential" else du[t, n]
                else:  # the membrane adds up the trace g
                    u = u_last + g
                    du[t, n] = g
                    dut[t, n] = g
                if u > vth or (p.fire_if == ">=" and u == vth):
                    spikes[t, n] = 1
                    m = s = g = u_last = f(0)
                else:
                    u_last = u
            end[:, n] = (m, s, g, u_last)
    acc = _checks.acc_dtype(x.dtype)

    def back(a, dtype):
        return torch.from_numpy(a).reshape(x.shape).to(device=x.device, dtype=dtype)

    out = back(spikes, x.dtype), back(du, acc), back(dut, acc)
    if not return_state:
        return out
    return (*out, torch.from_numpy(end).reshape(4, *x.shape[1:]).to(device=x.device, dtype=acc))


def srm_backward(
    grad_spikes: torch.Tensor,
    spikes: torch.Tensor,
    du: torch.Tensor,
    dut: torch.Tensor,
    *,
    params: SRMParams | None = None,
    **neuron,
):
    """docs/maths.md §3 by explicit loops (the tables of ``params.gradient_type``). Returns
    ``(grad_w, grad_t)`` in the dtype of `grad_spikes`."""
    p = SRMParams.make(params, **neuron)
    _checks.check_tensor(grad_spikes, "grad_spikes")
    _checks.check_same_shape(grad_spikes, "grad_spikes", spikes=spikes, du=du, dut=dut)
    _checks.check_tensor(spikes, "spikes")
    _checks.check_srm_backward_dtypes(grad_spikes, spikes, du, dut)
    f = _np_dtype(du.dtype)
    G = _as_2d(grad_spikes, f)
    S = _as_2d(spikes, f)
    DU = _as_2d(du, f)
    DUT = _as_2d(dut, f)
    T, N = G.shape
    epsw_d, epst_d = p.tables(T)
    epsw = [f(v) for v in epsw_d]
    epst = [f(v) for v in epst_d]
    lo_w, lo_t = -f(_checks.to_acc_float(p.du_inv_clamp, du.dtype)), -f(_checks.to_acc_float(p.max_dudt_inv, du.dtype))
    zero, minus_one = f(0), f(-1)
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


def srm_neuron_backward(grad_spikes: torch.Tensor, x: torch.Tensor, *, params: SRMParams | None = None, **neuron):
    """dL/dx of ``srm_neuron(x)`` for ``grad_spikes = dL/dspikes``: ``grad_w`` of :func:`srm_backward`."""
    p = SRMParams.make(params, **neuron)
    return srm_backward(grad_spikes, *srm_forward(x, params=p), params=p)[0]


# ------------------------------------------------------------------ superpixel pooling (docs/maths.md §5)
# One Python iteration per pixel, in ascending pixel order, accumulating in NumPy
# scalars of float32 (float64 for float64 inputs). Each (t, b, c) plane reads the
# label map of its step and image: labels[l, bl, p], l = t or 0, bl = b or 0.


def _maps(labels: torch.Tensor):
    lab = labels.detach().cpu().numpy()
    return lambda t, b: lab[t if lab.shape[0] > 1 else 0, b if lab.shape[1] > 1 else 0]


def _planes(T: int, B: int, C: int, label_map):
    """(t, b, c, the label map of (t, b)) for every plane, in (t, b, c) order."""
    for t in range(T):
        for b in range(B):
            lab = label_map(t, b)
            for c in range(C):
                yield t, b, c, lab


def _pool_loops(X: np.ndarray, label_map, K: int, mode: str, f):
    """X [T, B, C, P] numpy. Returns y [T, B, C, K], argmax (or -1), n, m (non-zero inputs)."""
    T, B, C, P = X.shape
    y = np.zeros((T, B, C, K), f)
    arg = np.full((T, B, C, K), -1, np.int64)
    n = np.zeros((T, B, C, K), np.int64)
    m = np.zeros((T, B, C, K), np.int64)
    with np.errstate(all="ignore"):
        for t, b, c, lab in _planes(T, B, C, label_map):
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
        for t, b, c, lab in _planes(T, B, C, label_map):
            for p in range(P):
                k = int(lab[p])
                if k < 0 or (arg is not None and arg[t, b, c, k] != p):
                    continue
                if scale is None:
                    z[t, b, c, p] = Y[t, b, c, k]
                elif scale[t, b, c, k] > 0:
                    z[t, b, c, p] = Y[t, b, c, k] / f(scale[t, b, c, k])
    return z


# ========================================================================== SRM layers (docs/maths.md §4)
def _np(t: torch.Tensor, f) -> np.ndarray:
    return t.detach().to("cpu", torch.float64 if f is np.float64 else torch.float32).numpy().copy()


def _conv_taps(in_hw, weight_shape, stride, padding, dilation, groups):
    """Every (o, c, ci, kh, kw, oh, ow, ih, iw) with input pixel (ci, ih, iw) inside the image
    feeding output pixel (o, oh, ow) through weight[o, c, kh, kw]: the convolution term by term."""
    O, Cg, KH, KW = weight_shape
    Ho, Wo = _checks.conv2d_output_size(in_hw, (KH, KW), stride, padding, dilation)
    per_group = O // groups
    for o in range(O):
        for c in range(Cg):
            ci = (o // per_group) * Cg + c
            for kh in range(KH):
                for kw in range(KW):
                    for oh in range(Ho):
                        ih = oh * stride[0] - padding[0] + kh * dilation[0]
                        if not 0 <= ih < in_hw[0]:
                            continue
                        for ow in range(Wo):
                            iw = ow * stride[1] - padding[1] + kw * dilation[1]
                            if 0 <= iw < in_hw[1]:
                                yield o, c, ci, kh, kw, oh, ow, ih, iw


def _conv2d(x, w, conv):
    """x [N, C, H, W], w [O, C/groups, kH, kW] (numpy) -> [N, O, H', W'], batch as a vector."""
    stride, padding, dilation, groups = conv
    Ho, Wo = _checks.conv2d_output_size(x.shape[2:], w.shape[2:], stride, padding, dilation)
    out = np.zeros((x.shape[0], w.shape[0], Ho, Wo), x.dtype)
    for o, c, ci, kh, kw, oh, ow, ih, iw in _conv_taps(x.shape[2:], w.shape, *conv):
        out[:, o, oh, ow] += w[o, c, kh, kw] * x[:, ci, ih, iw]
    return out


def _conv2d_input_grad(g, w, in_shape, conv):
    """d(sum(g * conv(x, w)))/dx: each output gradient goes back along the taps that made it."""
    out = np.zeros(in_shape, g.dtype)
    for o, c, ci, kh, kw, oh, ow, ih, iw in _conv_taps(in_shape[2:], w.shape, *conv):
        out[:, ci, ih, iw] += w[o, c, kh, kw] * g[:, o, oh, ow]
    return out


def _conv2d_weight_grad(x, g, w_shape, conv):
    """d(sum(g * conv(x, w)))/dw: each tap collects output gradient times input over the batch."""
    out = np.zeros(w_shape, g.dtype)
    for o, c, ci, kh, kw, oh, ow, ih, iw in _conv_taps(x.shape[2:], w_shape, *conv):
        out[o, c, kh, kw] += np.dot(g[:, o, oh, ow], x[:, ci, ih, iw])
    return out


def srm_conv2d_forward(s_in, weight, *, stride=1, padding=0, dilation=1, groups=1, params=None, **neuron):
    """Convolution by loops, then :func:`srm_forward`. Returns ``(spikes, du, dut)``, ``[T, B, C_out, H', W']``."""
    conv = _checks.conv2d_params(stride, padding, dilation, groups)
    _checks.check_srm_conv2d(s_in, weight, conv[3])
    f = _np_dtype(s_in.dtype)
    T, B = s_in.shape[:2]
    x = _conv2d(_np(s_in, f).reshape(T * B, *s_in.shape[2:]), _np(weight, f), conv)
    x = torch.from_numpy(x).reshape(T, B, *x.shape[1:]).to(device=s_in.device, dtype=s_in.dtype)
    return srm_forward(x, params=SRMParams.make(params, **neuron))


def srm_conv2d_backward(
    grad_spikes, s_in, weight, spikes, du, dut, *, stride=1, padding=0, dilation=1, groups=1,
    params=None, input_grad_scale=0.85, input_grad_mask=True, **neuron,
):
    """docs/maths.md §4 backward by loops. Returns ``(grad_s_in, grad_weight)``::

    grad_weight = conv weight-gradient(input=s_in, grad_output=grad_w)
    grad_s_in   = conv input-gradient(grad_t, weight) * s_in * input_grad_scale   (exactly 0 where s_in is 0)

    With ``input_grad_mask=False`` the factor ``s_in`` is left out.
    """
    conv = _checks.conv2d_params(stride, padding, dilation, groups)
    grad_w, grad_t = srm_backward(grad_spikes, spikes, du, dut, params=SRMParams.make(params, **neuron))
    f = _np_dtype(du.dtype)
    T, B = s_in.shape[:2]
    x = _np(s_in, f).reshape(T * B, *s_in.shape[2:])
    w = _np(weight, f)
    gw = _np(grad_w, f).reshape(T * B, *grad_w.shape[2:])
    gt = _np(grad_t, f).reshape(T * B, *grad_t.shape[2:])
    with np.errstate(all="ignore"):  # a half-precision grad_t may hold inf
        grad_weight = _conv2d_weight_grad(x, gw, w.shape, conv)
        # masked by select: where s_in is 0 the gradient is 0 even if the sum overflowed to inf
        # (inf * 0 would be NaN), as in snnspx.functional.srm_conv2d
        grad_in = _conv2d_input_grad(gt, w, x.shape, conv)
        grad_in = _mask_input_grad(grad_in, x, f(input_grad_scale), input_grad_mask, f)
    return (
        torch.from_numpy(grad_in).reshape(s_in.shape).to(device=s_in.device, dtype=s_in.dtype),
        torch.from_numpy(grad_weight).to(device=weight.device, dtype=weight.dtype),
    )


def srm_linear_forward(s_in, weight, *, params=None, **neuron):
    """``x[..., o] = sum_i s_in[..., i] * weight[o, i]`` by loops, then :func:`srm_forward`."""
    _checks.check_srm_linear(s_in, weight)
    f = _np_dtype(s_in.dtype)
    s = _np(s_in, f).reshape(math.prod(s_in.shape[:-1]), s_in.shape[-1])
    w = _np(weight, f)
    x = np.zeros((s.shape[0], w.shape[0]), f)
    for o in range(w.shape[0]):
        for i in range(w.shape[1]):
            x[:, o] += w[o, i] * s[:, i]
    x = torch.from_numpy(x).reshape(*s_in.shape[:-1], w.shape[0]).to(device=s_in.device, dtype=s_in.dtype)
    return srm_forward(x, params=SRMParams.make(params, **neuron))


def _mask_input_grad(grad_in, x, scale, mask, f):
    """``grad_in * x * scale`` where ``x != 0`` and exactly 0 elsewhere (a select: an inf
    ``grad_in`` gives no NaN), or ``grad_in * scale`` without the mask."""
    if not mask:
        return grad_in * scale
    return np.where(x != 0, grad_in * x * scale, f(0))


def srm_linear_backward(
    grad_spikes, s_in, weight, spikes, du, dut, *, params=None, input_grad_scale=0.85, input_grad_mask=True, **neuron
):
    """docs/maths.md §4 backward of the dense layer by loops. Returns ``(grad_s_in, grad_weight)``::

    grad_weight[o, i] = sum over rows of grad_w[., o] * s_in[., i]
    grad_s_in[., i]   = (sum_o grad_t[., o] * weight[o, i]) * s_in[., i] * input_grad_scale

    ``grad_s_in`` is exactly 0 where ``s_in`` is 0; with ``input_grad_mask=False`` the factor
    ``s_in`` is left out.
    """
    grad_w, grad_t = srm_backward(grad_spikes, spikes, du, dut, params=SRMParams.make(params, **neuron))
    f = _np_dtype(du.dtype)
    s = _np(s_in, f).reshape(math.prod(s_in.shape[:-1]), s_in.shape[-1])
    w = _np(weight, f)
    gw = _np(grad_w, f).reshape(math.prod(grad_w.shape[:-1]), w.shape[0])
    gt = _np(grad_t, f).reshape(math.prod(grad_t.shape[:-1]), w.shape[0])
    grad_weight = np.zeros(w.shape, f)
    grad_in = np.zeros(s.shape, f)
    with np.errstate(all="ignore"):  # a half-precision grad_t may hold inf
        for o in range(w.shape[0]):
            for i in range(w.shape[1]):
                grad_weight[o, i] = np.dot(gw[:, o], s[:, i])
                grad_in[:, i] += gt[:, o] * w[o, i]
        grad_in = _mask_input_grad(grad_in, s, f(input_grad_scale), input_grad_mask, f)
    return (
        torch.from_numpy(grad_in).reshape(s_in.shape).to(device=s_in.device, dtype=s_in.dtype),
        torch.from_numpy(grad_weight).to(device=weight.device, dtype=weight.dtype),
    )


def standardize_weight(weight, bn_weight=None, bn_bias=None, *, eps=1e-5):
    """Row by row: ``(w - mean) / sqrt(unbiased var + eps) * bn_weight + bn_bias`` (float64 loops, no autograd).

    A row is ``weight[o]`` flattened (any ``[C_out, ...]`` weight). A zero denominator (a
    constant row with ``eps = 0``) divides as IEEE floats do: NaN for 0 / 0, like the
    functional form."""
    _checks.check_standardize_args(weight, bn_weight, bn_bias)
    w = weight.detach().cpu().double().reshape(weight.shape[0], -1)
    out = torch.empty_like(w)
    n = w.shape[1]
    for o in range(w.shape[0]):
        row = [float(v) for v in w[o]]
        mean = sum(row) / n
        var = sum((v - mean) ** 2 for v in row) / (n - 1)
        gain = 1.0 if bn_weight is None else float(bn_weight.detach()[o])
        shift = 0.0 if bn_bias is None else float(bn_bias.detach()[o])
        den = np.float64((var + eps) ** 0.5)
        with np.errstate(all="ignore"):  # den = 0: IEEE division (NaN or +-inf), not an exception
            for i in range(n):
                out[o, i] = float(np.float64(row[i] - mean) / den * gain + shift)
    return out.reshape(weight.shape).to(device=weight.device, dtype=weight.dtype)


def _windows(H, W, kernel):
    """The non-overlapping windows (floor mode): (oh, ow, list of (ih, iw))."""
    kh, kw = kernel
    for oh in range(H // kh):
        for ow in range(W // kw):
            yield oh, ow, [(oh * kh + i, ow * kw + j) for i in range(kh) for j in range(kw)]


def spike_avg_pool2d_backward(grad_y, x, *, kernel_size=2):
    """Every pixel of a window gets ``g / n``, ``n`` its window's non-zero inputs; 0 where ``n = 0``
    and for pixels in no window."""
    kernel = _checks.kernel_pair(kernel_size)
    f = _np_dtype(grad_y.dtype)
    H, W = x.shape[-2:]
    xs = _np(x, f).reshape(math.prod(x.shape[:-2]), H, W)
    gy = _np(grad_y, f).reshape(xs.shape[0], H // kernel[0], W // kernel[1])
    gx = np.zeros(xs.shape, f)
    for p in range(xs.shape[0]):
        for oh, ow, pixels in _windows(H, W, kernel):
            n = sum(1 for ih, iw in pixels if xs[p, ih, iw] != 0)
            for ih, iw in pixels:
                gx[p, ih, iw] = gy[p, oh, ow] / f(n) if n > 0 else f(0)
    return torch.from_numpy(gx).reshape(x.shape).to(device=x.device, dtype=grad_y.dtype)


def _pool_adjoint_loops(V: np.ndarray, label_map, K: int, f, scale=None, arg=None):
    """The adjoint of :func:`_unpool_loops` (same `scale` and `arg`): sum pooling of V, divided
    by scale[t, b, c, k] (0 where that is 0); with `arg`, the value at pixel arg[t, b, c, k]
    alone (0 for an empty superpixel, arg = -1)."""
    if arg is not None:
        y = np.zeros((*V.shape[:3], K), f)
        for t, b, c, k in np.ndindex(y.shape):
            if arg[t, b, c, k] >= 0:
                y[t, b, c, k] = V[t, b, c, arg[t, b, c, k]]
        return y
    y = _pool_loops(V, label_map, K, "sum", f)[0]
    if scale is not None:
        with np.errstate(all="ignore"):
            for i in np.ndindex(y.shape):
                y[i] = y[i] / f(scale[i]) if scale[i] > 0 else f(0)
    return y


def suppix_counts(labels: torch.Tensor, *, num_superpixels: int | None = None) -> torch.Tensor:
    """Pixels per superpixel, int64 ``labels.shape[:-2] + (K,)`` (docs/maths.md §5's n)."""
    _checks.check_labels_tensor(labels)
    K, inferred = _checks.num_superpixels(labels, num_superpixels)
    if not inferred:
        _checks.check_label_range(labels, K)
    flat = labels.detach().cpu().reshape(math.prod(labels.shape[:-2]), labels.shape[-2] * labels.shape[-1]).numpy()
    n = np.zeros((flat.shape[0], K), np.int64)
    for i in range(flat.shape[0]):
        for p in range(flat.shape[1]):
            if flat[i, p] >= 0:
                n[i, int(flat[i, p])] += 1
    return torch.from_numpy(n).reshape(*labels.shape[:-2], K).to(labels.device)


def _pool_layout(x, labels, num_superpixels, check_labels):
    """(layout, K) with labels >= K turned into ignored pixels when they are not checked."""
    lay = _checks.suppix_layout(x, labels, pooled=False)
    K, inferred = _checks.num_superpixels(lay.labels, num_superpixels)
    if _checks.check_flag(check_labels, "check_labels") and not inferred:
        _checks.check_label_range(lay.labels, K)
    return lay._replace(labels=torch.where(lay.labels >= K, -1, lay.labels)), K


def suppix_pool(
    x: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_superpixels: int | None = None,
    mode: str = "avg",
    return_counts: bool = False,
    check_labels: bool = True,
):
    """docs/maths.md §5 by explicit loops: ``[T, B, C, H, W]`` -> ``[T, B, C, K]``, or
    ``[B, C, H, W]`` -> ``[B, C, K]``. Labels >= K are an error unless ``check_labels=False``,
    which ignores them. With ``return_counts`` also ``n``, int64 ``labels.shape[:-2] + (K,)``."""
    _checks.suppix_mode(mode, "exact")
    lay, K = _pool_layout(x, labels, num_superpixels, check_labels)
    f = _np_dtype(lay.data.dtype)
    y = _pool_loops(_np(lay.data, f), _maps(lay.labels), K, mode, f)[0]
    y = torch.from_numpy(y).to(device=x.device, dtype=x.dtype)
    y = y[0] if lay.single_step else y
    if return_counts:
        return y, suppix_counts(torch.where(labels >= K, -1, labels), num_superpixels=K)
    return y


def _pool_grad_terms(x, labels, num_superpixels, mode, grad):
    """(layout, K, f, scale, arg): what pooling's backward reads besides the labels, the divisor
    of "avg" (``n``, or ``m`` for ``grad="spike"``) or the argmax of "max"."""
    _checks.suppix_mode(mode, grad)
    lay, K = _pool_layout(x, labels, num_superpixels, False)
    f = _np_dtype(lay.data.dtype)
    _, arg, n, m = _pool_loops(_np(lay.data, f), _maps(lay.labels), K, mode, f)
    scale = None if mode in ("sum", "max") else (n if grad == "exact" else m)
    return lay, K, f, scale, (arg if mode == "max" else None)


def suppix_pool_backward(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_superpixels: int | None = None,
    mode: str = "avg",
    grad: str = "exact",
) -> torch.Tensor:
    """dL/dx of :func:`suppix_pool` for ``grad_y = dL/dy`` (docs/maths.md §5): ``g[k]`` to every
    pixel of k ("sum"), ``g[k] / n[k]`` ("avg"; ``g[k] / m[t, b, c, k]`` with ``grad="spike"``),
    ``g[k]`` to the argmax pixel ("max"); 0 for ignored pixels. Shaped like `x`."""
    lay, K, f, scale, arg = _pool_grad_terms(x, labels, num_superpixels, mode, grad)
    gy = grad_y.unsqueeze(0) if lay.single_step else grad_y
    z = _unpool_loops(_np(gy, f), _maps(lay.labels), lay.labels.shape[-1], f, scale=scale, arg=arg)
    return torch.from_numpy(z).reshape(x.shape).to(device=x.device, dtype=grad_y.dtype)


def suppix_pool_double_backward(
    v: torch.Tensor,
    x: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_superpixels: int | None = None,
    mode: str = "avg",
    grad: str = "exact",
) -> torch.Tensor:
    """The derivative of :func:`suppix_pool_backward` (linear in ``grad_y``): its adjoint applied
    to ``v = dL/dgrad_x`` (shaped like `x`), giving ``dL/dgrad_y`` ``[T, B, C, K]``."""
    lay, K, f, scale, arg = _pool_grad_terms(x, labels, num_superpixels, mode, grad)
    V = _np(v.reshape(lay.data.shape), f)
    y = torch.from_numpy(_pool_adjoint_loops(V, _maps(lay.labels), K, f, scale=scale, arg=arg))
    y = y.to(device=v.device, dtype=v.dtype)
    return y[0] if lay.single_step else y


def suppix_unpool(y: torch.Tensor, labels: torch.Tensor, *, check_labels: bool = True) -> torch.Tensor:
    """docs/maths.md §5 unpooling by explicit loops: ``z[p] = y[label(p)]``, 0 for negative labels.

    ``[T, B, C, K]`` (or ``[B, C, K]``) -> ``[T, B, C, H, W]`` (or ``[B, C, H, W]``).
    """
    lay = _checks.suppix_layout(y, labels, pooled=True)
    K = y.shape[-1]
    if _checks.check_flag(check_labels, "check_labels"):
        _checks.check_label_range(lay.labels, K)
    labs = torch.where(lay.labels >= K, -1, lay.labels)
    f = _np_dtype(y.dtype)
    z = torch.from_numpy(_unpool_loops(_np(lay.data, f), _maps(labs), labs.shape[-1], f))
    H, W = lay.spatial
    z = z.to(device=y.device, dtype=y.dtype).reshape(*lay.data.shape[:3], H, W)
    return z[0] if lay.single_step else z


def suppix_unpool_backward(grad_z: torch.Tensor, labels: torch.Tensor, *, num_superpixels: int) -> torch.Tensor:
    """dL/dy of :func:`suppix_unpool` for ``grad_z = dL/dz``: sum pooling of `grad_z` (labels
    >= K ignored)."""
    return suppix_pool(grad_z, labels, num_superpixels=num_superpixels, mode="sum", check_labels=False)


def spike_avg_pool2d(x, *, kernel_size=2):
    """Window means of ``[..., H, W]`` by loops (stride = kernel); its backward is
    :func:`spike_avg_pool2d_backward`."""
    kernel = _checks.kernel_pair(kernel_size)
    _checks.check_pool_input(x, kernel)
    f = _np_dtype(x.dtype)
    H, W = x.shape[-2:]
    xs = _np(x, f).reshape(math.prod(x.shape[:-2]), H, W)
    y = np.zeros((xs.shape[0], H // kernel[0], W // kernel[1]), f)
    for p in range(xs.shape[0]):
        for oh, ow, pixels in _windows(H, W, kernel):
            y[p, oh, ow] = sum(xs[p, ih, iw] for ih, iw in pixels) / f(len(pixels))
    return torch.from_numpy(y).reshape(*x.shape[:-2], *y.shape[1:]).to(device=x.device, dtype=x.dtype)


# =========================================================================== quantizer (docs/maths.md §7)
def _one_value(v, name: str) -> float:
    """A Python number or a one-element real tensor, as a float (the checks of functional.quant)."""
    if isinstance(v, torch.Tensor):
        _checks.check_one_value_tensor(v, name)
        return float(v.detach().reshape(()).double())
    if _checks.is_real_number(v):
        return _checks.number_as_float(v)
    raise TypeError(f"{name} must be a Python number or a one-element tensor, got {type(v).__name__}")


def pow2_scale_exponent(absmax, bits):
    """Largest ``i`` in 0..31 with ``round(|absmax| * 2**i) < 2**(bits-1)`` (ties to even), else 0.

    `absmax`: a Python number or a one-element real tensor, read as a magnitude (a negative
    value gives the exponent of its absolute value); NaN and infinities give 0. Returns an
    int64 0-dim tensor on the device of `absmax` (the CPU for a number).
    """
    _checks.check_quantizer_params(bits, "nearest")
    device = absmax.device if isinstance(absmax, torch.Tensor) else torch.device("cpu")
    a = abs(_one_value(absmax, "absmax"))
    best = 0
    if math.isfinite(a):
        for i in range(32):
            v = a * 2.0**i
            if math.isfinite(v) and round(v) < 2 ** (bits - 1):  # Python's round: ties to even
                best = i
    return torch.tensor(best, dtype=torch.int64, device=device)


def quantize(x, scale, *, bits=8, rounding="nearest"):
    """Element by element ``clamp(round(x * scale), -q_max, q_max) / scale``; its gradient is the
    identity (straight through).

    `scale` must be a positive power of two within the normal range of the arithmetic dtype
    (float64 for float64 `x`, float32 otherwise): a Python number or a one-element real
    tensor. Its value is read, and a bad one raises ``ValueError`` (a tensor of several
    elements ``ValueError``, another type ``TypeError``).
    """
    _checks.check_tensor(x, "x", min_dim=0)
    _checks.check_quantizer_params(bits, rounding)
    acc = _checks.acc_dtype(x.dtype)
    s_val = _one_value(scale, "scale")
    fi = torch.finfo(acc)
    if not (math.isfinite(s_val) and fi.tiny <= s_val <= fi.max and math.frexp(s_val)[0] == 0.5):
        raise ValueError(
            f"scale must be a positive power of two (2**i, e.g. 2 ** pow2_scale_exponent(...)) in "
            f"{acc}'s normal range [2**{math.frexp(fi.tiny)[1] - 1}, 2**{math.frexp(fi.max)[1] - 1}] "
            f"(the arithmetic dtype here), got {scale!r}"
        )
    f = np.float64 if x.dtype == torch.float64 else np.float32
    s = f(s_val)
    q_max = f(2 ** (bits - 1) - 1)
    xs = _np(x, f).reshape(-1)
    out = np.empty_like(xs)
    for k in range(xs.size):
        v = xs[k] * s
        v = f(np.round(v)) if rounding == "nearest" else f(np.trunc(v))  # np.round: ties to even
        out[k] = min(max(v, -q_max), q_max) / s
    return torch.from_numpy(out).reshape(x.shape).to(device=x.device, dtype=x.dtype)


def _fused_layout(x, labels, num_superpixels, mode, check_labels):
    if not isinstance(x, torch.Tensor) or x.dim() != 5:
        raise ValueError(f"x must be a [T, B, C, H, W] tensor, got {getattr(x, 'shape', type(x))}")
    _checks.suppix_mode(mode, "exact")
    return _pool_layout(x, labels, num_superpixels, check_labels)[1]


def srm_suppix_pool(
    x: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_superpixels: int | None = None,
    mode: str = "avg",
    params: SRMParams | None = None,
    check_labels: bool = True,
    **neuron,
) -> torch.Tensor:
    """docs/maths.md §6 by definition: reference pooling of the reference SRM spikes.

    A label ``>= K`` raises ``ValueError`` (before the neuron loops run); with
    ``check_labels=False`` such pixels are ignored like negative ones.
    """
    K = _fused_layout(x, labels, num_superpixels, mode, check_labels)
    spikes = srm_forward(x, params=SRMParams.make(params, **neuron))[0]
    return suppix_pool(spikes, labels, num_superpixels=K, mode=mode, check_labels=False)


def srm_suppix_pool_backward(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_superpixels: int | None = None,
    mode: str = "avg",
    params: SRMParams | None = None,
    **neuron,
) -> torch.Tensor:
    """dL/dx of :func:`srm_suppix_pool`: §5's pooling backward of `grad_y` at the spikes,
    then §3's ``grad_w`` (labels >= K ignored)."""
    p = SRMParams.make(params, **neuron)
    K = _fused_layout(x, labels, num_superpixels, mode, False)
    spikes, du, dut = srm_forward(x, params=p)
    grad_spikes = suppix_pool_backward(grad_y, spikes, labels, num_superpixels=K, mode=mode)
    return srm_backward(grad_spikes, spikes, du, dut, params=p)[0]
from ._reference_surrogate import __all__ as _surrogate_all, srm_surrogate_backward, srm_surrogate_forward  # noqa: E402,F401
__all__ += _surrogate_all
