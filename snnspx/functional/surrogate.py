"""The SRM neuron in surrogate-gradient mode (docs/maths.md §9-§11): its two ops' schemas,
PyTorch kernels, fake kernels and autograd formula, and the public wrapper
:func:`srm_neuron_surrogate`.

Ops (the compiled libraries add CPU and CUDA kernels for the same schemas):

* ``srm_sg_fwd(x, tau_m, tau_s, v_th, state, tau_grad, fire_ge, surrogate, alpha, detach_reset)
  -> (spikes, state_out)``: §2's forward from a carried state. ``x`` ``[T, ...]``;
  ``tau_m``, ``tau_s``, ``v_th`` 0-d tensors or ``[C]`` (one per channel, dim 2 of
  ``x`` ``[T, B, C, ...]``); ``state`` ``[4, *x.shape[1:]]`` = ``(m, s, g, u_last)`` in the
  neuron-state dtype (float64 for float64 ``x``, float32 otherwise), None for zeros;
  ``state_out`` the state after the last step's reset. ``surrogate``, ``alpha`` and
  ``detach_reset`` are the backward's (the autograd formula reads them here).
* ``srm_sg_bwd(grad_spikes, grad_state, x, tau_m, tau_s, v_th, state, tau_grad, fire_ge,
  surrogate, alpha, detach_reset, constants_grad) -> (grad_x, grad_tau_m, grad_tau_s, grad_v_th,
  grad_state)``: §9's exact backpropagation through time with the surrogate derivative,
  recomputing the forward from ``x`` and ``state``. ``grad_state`` may be None (no gradient
  reached the returned state). With ``constants_grad=False`` the constants' gradients are not
  computed and come back as zeros (the autograd formula asks for them only when a constant
  requires a gradient).

The constants ``a_m = 1 - 1/tau_m``, ``a_s = 1 - 1/tau_s``, ``c = tau_m / (tau_m - tau_s)``,
``a_g = 1 - 1/tau_grad`` are computed in double from the given values and rounded once to the
neuron-state dtype, so scalar constants give :func:`snnspx.functional.srm_forward`'s spikes bit
for bit. Autograd keeps ``x`` and the input state for the backward: 4 bytes per float32
neuron-step, plus 16 bytes per neuron for a given state.
"""

from __future__ import annotations

import math

import torch

from .. import _checks, _library
from .._checks.args import _finite
from .._backend import kernels, resolve
from ..params import SURROGATES, _decay_error

__all__ = ["srm_neuron_surrogate", "SURROGATES"]

_ALPHA_NAMES = {"sigmoid": "alpha", "atan": "alpha", "fast_sigmoid": "slope", "triangle": "width"}


# --------------------------------------------------------------------------- PyTorch kernels
class _Constants:
    """The neuron's constants in the neuron-state dtype, shaped to broadcast over one step
    ``x[t]`` (``[C, 1, ..., 1]`` for a per-channel one); ``channels`` = C, or 1 if all are scalars."""

    def __init__(self, x, tau_m, tau_s, v_th, tau_grad):
        self.acc = _checks.acc_dtype(x.dtype)
        for name, t in (("tau_m", tau_m), ("tau_s", tau_s), ("v_th", v_th)):  # as csrc/surrogate_glue.h checks
            if t.dim() and (t.dim() != 1 or x.dim() < 3 or t.shape[0] != x.shape[2]):
                raise ValueError(
                    f"{name} must be a 0-d tensor or one value per channel, [C] with C = x.shape[2] of x "
                    f"[T, B, C, ...]; got {list(t.shape)} for x of shape {list(x.shape)}"
                )
        per_channel = any(t.dim() == 1 for t in (tau_m, tau_s, v_th))
        self.channels = x.shape[2] if per_channel else 1
        self.tail = max(x.dim() - 3, 0)  # dims after the channel's in one step
        tm, ts = tau_m.to(torch.float64), tau_s.to(torch.float64)
        self.a_m = self._shape(1.0 - 1.0 / tm)
        self.a_s = self._shape(1.0 - 1.0 / ts)
        self.c = self._shape(tm / (tm - ts))
        self.v_th = self._shape(v_th.to(torch.float64))
        self.a_g = torch.tensor(1.0 - 1.0 / tau_grad, dtype=torch.float64, device=x.device).to(self.acc)

    def _shape(self, t):
        t = t.to(self.acc)
        return t if t.dim() == 0 else t.reshape(t.shape[0], *([1] * self.tail))


def _fires(u, v_th, fire_ge):
    return u >= v_th if fire_ge else u > v_th


def _surrogate_grad(kind: str, z, alpha: float):
    """sigma'(z) of docs/maths.md §9 (the kernels' form: see csrc/surrogate_core.h)."""
    if kind == "sigmoid":
        e = torch.exp(-alpha * z.abs())
        return alpha * e / ((1 + e) * (1 + e))
    if kind == "atan":
        w = (math.pi / 2 * alpha) * z
        return (alpha / 2) / (1 + w * w)
    if kind == "fast_sigmoid":
        d = 1 + alpha * z.abs()
        return 1 / (d * d)
    if kind == "triangle":
        return torch.clamp(1 - (1 / alpha) * z.abs(), min=0) * (1 / alpha)
    raise ValueError(f"surrogate must be one of {tuple(SURROGATES)}, got {kind!r}")


def _initial_state(state, x, acc):
    if state is None:
        z = torch.zeros(x.shape[1:], dtype=acc, device=x.device)
        return z, z, z, z
    return tuple(state.unbind(0))


def _check_devices(op, x, tau_m, tau_s, v_th, state, **more):
    tensors = dict(x=x, tau_m=tau_m, tau_s=tau_s, v_th=v_th, **more)
    if state is not None:
        tensors["state"] = state
    _checks.check_devices(op, **{k: v for k, v in tensors.items() if v is not None})


def _fwd_kernel(x, tau_m, tau_s, v_th, state, tau_grad, fire_ge, surrogate, alpha, detach_reset):
    """Vectorised over neurons, a Python loop over T; the kernels' operation order."""
    _check_devices("srm_sg_fwd", x, tau_m, tau_s, v_th, state)
    k = _Constants(x, tau_m, tau_s, v_th, tau_grad)
    zero = torch.zeros((), dtype=k.acc, device=x.device)
    spikes = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    m, s, g, u_last = _initial_state(state, x, k.acc)
    for t in range(x.shape[0]):
        xt = x[t].to(k.acc)
        m = (m + xt) * k.a_m
        s = (s + xt) * k.a_s
        g = (g + xt) * k.a_g
        u = k.c * (m - s)
        spk = _fires(u, k.v_th, fire_ge)
        spikes[t] = spk
        m, s, g = torch.where(spk, zero, m), torch.where(spk, zero, s), torch.where(spk, zero, g)
        u_last = torch.where(spk, zero, u)
    return spikes, torch.stack([m, s, g, u_last])


def _bwd_kernel(grad_spikes, grad_state, x, tau_m, tau_s, v_th, state, tau_grad, fire_ge, surrogate, alpha,
                detach_reset, constants_grad):
    """§9's backward (csrc/surrogate_core.h's sg_backward_step, vectorised over neurons): the
    forward again, keeping the sums before the decay and u per step, then the walk back."""
    _check_devices("srm_sg_bwd", x, tau_m, tau_s, v_th, state, grad_spikes=grad_spikes, grad_state=grad_state)
    k = _Constants(x, tau_m, tau_s, v_th, tau_grad)
    acc, dev, T = k.acc, x.device, x.shape[0]
    zero = torch.zeros((), dtype=acc, device=dev)
    track = grad_state is not None  # the g and u_last adjoints may be non-zero
    m, s, g, _ = _initial_state(state, x, acc)
    steps = []
    for t in range(T):
        xt = x[t].to(acc)
        pm, ps, pg = m + xt, s + xt, g + xt
        m, s, g = pm * k.a_m, ps * k.a_s, pg * k.a_g
        u = k.c * (m - s)
        spk = _fires(u, k.v_th, fire_ge)
        m, s, g = torch.where(spk, zero, m), torch.where(spk, zero, s), torch.where(spk, zero, g)
        steps.append((pm, ps, pg, u, spk))
    shape = x.shape[1:]
    if track:
        lm, ls, lg, lu = (t.to(acc).expand(shape) for t in grad_state.unbind(0))
    else:
        lm = ls = lg = lu = torch.zeros(shape, dtype=acc, device=dev)
    d_am = d_as = d_c = d_vth = torch.zeros(shape, dtype=acc, device=dev)
    grad_x = torch.empty(x.shape, dtype=x.dtype, device=dev)
    for t in range(T - 1, -1, -1):
        pm, ps, pg, u, spk = steps[t]
        mh, sh = pm * k.a_m, ps * k.a_s
        sg = _surrogate_grad(surrogate, u - k.v_th, alpha)
        dS = grad_spikes[t].to(acc)
        if not detach_reset:
            r = lm * mh + ls * sh
            if track:
                r = r + lg * (pg * k.a_g) + lu * u
            dS = dS - r
        du = dS * sg
        if track:
            du = du + torch.where(spk, zero, lu)
        cdu = k.c * du
        dmh = torch.where(spk, zero, lm) + cdu
        dsh = torch.where(spk, zero, ls) - cdu
        if constants_grad:
            d_am, d_as = d_am + dmh * pm, d_as + dsh * ps
            d_c, d_vth = d_c + du * (mh - sh), d_vth - dS * sg
        lm, ls = dmh * k.a_m, dsh * k.a_s
        gx = lm + ls
        if track:
            lg = torch.where(spk, zero, lg) * k.a_g
            lu = zero
            gx = gx + lg
        grad_x[t] = gx
    if T == 0:
        grad_state_in = grad_state.to(acc).clone() if track else torch.zeros((4, *shape), dtype=acc, device=dev)
    else:
        grad_state_in = torch.stack([lm, ls, lg if track else torch.zeros_like(lm), torch.zeros_like(lm)])
    if constants_grad:
        grads = _constant_grads(k, torch.stack([d_am, d_as, d_c, d_vth]), tau_m, tau_s, v_th)
    else:
        grads = tuple(torch.zeros_like(t) for t in (tau_m, tau_s, v_th))
    return (grad_x, *grads, grad_state_in)


def _constant_grads(k: _Constants, partials, tau_m, tau_s, v_th):
    """dL/dtau_m, dL/dtau_s, dL/dv_th from the per-neuron sums ``partials`` [4, *x.shape[1:]]
    (dL/da_m, dL/da_s, dL/dc, dL/dv_th), added per channel in double (csrc/surrogate_glue.h)."""
    p = partials.to(torch.float64)
    if k.channels == 1:
        sums = p.reshape(4, math.prod(p.shape[1:])).sum(1, keepdim=True)
    else:
        sums = p.reshape(4, p.shape[1], k.channels, math.prod(p.shape[3:])).sum((1, 3))
    tm = tau_m.to(torch.float64).expand(k.channels)
    ts = tau_s.to(torch.float64).expand(k.channels)
    gap2 = (tm - ts) * (tm - ts)
    g_tm = sums[0] / (tm * tm) - sums[2] * ts / gap2
    g_ts = sums[1] / (ts * ts) + sums[2] * tm / gap2

    def shaped(g, like):
        return (g.sum() if like.dim() == 0 else g).to(like.dtype)

    return shaped(g_tm, tau_m), shaped(g_ts, tau_s), shaped(sums[3], v_th)


# --------------------------------------------------------------------------- schemas, fakes, autograd
_library.define(
    "srm_sg_fwd(Tensor x, Tensor tau_m, Tensor tau_s, Tensor v_th, Tensor? state, float tau_grad, bool fire_ge,"
    " str surrogate, float alpha, bool detach_reset) -> (Tensor, Tensor)",
    _fwd_kernel,
)
_library.define(
    "srm_sg_bwd(Tensor grad_spikes, Tensor? grad_state, Tensor x, Tensor tau_m, Tensor tau_s, Tensor v_th,"
    " Tensor? state, float tau_grad, bool fire_ge, str surrogate, float alpha, bool detach_reset,"
    " bool constants_grad) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
    _bwd_kernel,
)
_FWD = _library.op("srm_sg_fwd")
_BWD = _library.op("srm_sg_bwd")


def _state_like(x):
    return x.new_empty((4, *x.shape[1:]), dtype=_checks.acc_dtype(x.dtype))


@torch.library.register_fake("snnspx::srm_sg_fwd")
def _fwd_fake(x, tau_m, tau_s, v_th, state, tau_grad, fire_ge, surrogate, alpha, detach_reset):
    _check_devices("srm_sg_fwd", x, tau_m, tau_s, v_th, state)
    return x.new_empty(x.shape), _state_like(x)


@torch.library.register_fake("snnspx::srm_sg_bwd")
def _bwd_fake(grad_spikes, grad_state, x, tau_m, tau_s, v_th, state, tau_grad, fire_ge, surrogate, alpha,
              detach_reset, constants_grad):
    _check_devices("srm_sg_bwd", x, tau_m, tau_s, v_th, state, grad_spikes=grad_spikes, grad_state=grad_state)
    return (x.new_empty(x.shape), tau_m.new_empty(tau_m.shape), tau_s.new_empty(tau_s.shape),
            v_th.new_empty(v_th.shape), _state_like(x))


def _setup(ctx, inputs, output):
    x, tau_m, tau_s, v_th, state = inputs[:5]
    ctx.save_for_backward(x, tau_m, tau_s, v_th, state)
    ctx.args = inputs[5:]
    ctx.set_materialize_grads(False)  # no zero-filled gradient for an unused output


def _backward(ctx, grad_spikes, grad_state):
    none = (None,) * 10
    if grad_spikes is None and grad_state is None:
        return none
    x, tau_m, tau_s, v_th, state = ctx.saved_tensors
    if grad_spikes is None:
        grad_spikes = torch.zeros_like(x)
    need = ctx.needs_input_grad
    grads = _BWD(grad_spikes, grad_state, x, tau_m, tau_s, v_th, state, *ctx.args, any(need[1:4]))
    return tuple(g if need[i] else None for i, g in enumerate(grads)) + none[5:]


_library.register_autograd("srm_sg_fwd", _backward, _setup)
_library.register_raising_autograd(
    "srm_sg_bwd", "snnspx: no double backward through srm_sg_bwd: the surrogate gradient is not itself differentiated"
)


# --------------------------------------------------------------------------- public wrapper
# 0-d float64 tensors of the numbers given as constants, kept between calls: creating one
# costs about as much as the op on a small input. Shared safely because nothing writes to them
# (the ops and their autograd formula only read their constants). Keyed by the value with its
# sign (0.0 == -0.0 as keys) and device; cleared when it holds many.
_NUMBER_TENSORS: dict = {}


def _number_tensor(v: float, device: torch.device) -> torch.Tensor:
    if torch.compiler.is_compiling():  # a fresh tensor for the tracer, never a cached one
        return torch.tensor(v, dtype=torch.float64, device=device)
    key = (v, math.copysign(1.0, v), device)
    t = _NUMBER_TENSORS.get(key)
    if t is None:
        if len(_NUMBER_TENSORS) >= 64:
            _NUMBER_TENSORS.clear()
        with torch.inference_mode(False):  # a normal tensor, which autograd may save, even if made in inference mode
            t = torch.tensor(v, dtype=torch.float64, device=device)
        if type(t) is torch.Tensor:  # not a tensor subclass that a mode made (FakeTensorMode, make_fx)
            _NUMBER_TENSORS[key] = t
    return t


def _constant_tensor(v, name: str, x: torch.Tensor) -> torch.Tensor:
    """A time constant or threshold as the op takes it: a 0-d float64 tensor for a number
    (its exact value), a given tensor checked for dtype, device and shape ([] or [C])."""
    if isinstance(v, torch.Tensor):
        if not v.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor or a Python number, got a {v.dtype} tensor")
        if v.device != x.device:
            raise ValueError(f"{name} must be on x's device {x.device}, got {v.device}")
        if v.dim() == 0:
            return v
        if v.dim() != 1:
            raise ValueError(f"{name} must be a number, a 0-d tensor or one value per channel [C], got shape {tuple(v.shape)}")
        if x.dim() < 3:
            raise ValueError(
                f"{name} has one value per channel (shape {tuple(v.shape)}), which needs x [T, B, C, ...] with the "
                f"channels in dim 2; got x of shape {tuple(x.shape)}: give a number or a 0-d tensor"
            )
        if v.shape[0] != x.shape[2]:
            raise ValueError(
                f"{name} must have one value per channel of x (C = x.shape[2] = {x.shape[2]}), got shape {tuple(v.shape)}"
            )
        return v
    if _checks.is_real_number(v):
        return _number_tensor(_checks.number_as_float(v), x.device)
    raise TypeError(f"{name} must be a Python number or a tensor, got {type(v).__name__}")


def _check_number_values(tau_m: float, tau_s: float, v_th: float, dtype) -> None:
    """_check_constant_values for Python numbers, without tensor operations."""
    for name, v in (("tau_m", tau_m), ("tau_s", tau_s)):
        if not (_finite(v) and v > 1):
            raise ValueError(f"{name} must be finite and > 1 in every channel, got {[v]}")
    if tau_m == tau_s:
        raise ValueError(f"tau_m and tau_s must differ (c = tau_m / (tau_m - tau_s)), got {tau_m} for both")
    if v_th != v_th:
        raise ValueError("v_th must not be NaN")
    msg = _decay_error(tau_m, tau_s, dtype != torch.float64)
    if msg:
        raise ValueError(f"{msg} (the neuron state of {dtype} inputs)")


def _check_constant_values(tau_m, tau_s, v_th, dtype) -> None:
    """tau > 1 and finite, tau_m != tau_s, v_th not NaN, decays apart enough for the state dtype
    (snnspx.SRMParams's rules), channel by channel; one read of the values when all is well."""
    tm, ts = torch.broadcast_tensors(tau_m.detach().to(torch.float64), tau_s.detach().to(torch.float64))
    vt = v_th.detach()
    spacing = 2.0**-53 if dtype == torch.float64 else 2.0**-24
    gap = ((1 - 1 / tm) - (1 - 1 / ts)).abs()
    ok = torch.stack([
        ((tm > 1) & (tm < math.inf)).all(), ((ts > 1) & (ts < math.inf)).all(), (tm != ts).all(),
        ~vt.isnan().any(), (spacing <= 0.01 * gap).all(),
    ])
    if bool(ok.all()):
        return
    for name, t in (("tau_m", tm), ("tau_s", ts)):
        bad = ~((t > 1) & (t < math.inf))
        if bad.any():
            raise ValueError(f"{name} must be finite and > 1 in every channel, got {t[bad].flatten()[:4].tolist()}")
    same = (tm == ts).flatten().nonzero().flatten().tolist()
    if same:
        raise ValueError(
            f"tau_m and tau_s must differ (c = tau_m / (tau_m - tau_s)), got {tm.flatten()[same[0]].item()} for both"
            f"{' in channel ' + str(same[0]) if tm.dim() else ''}"
        )
    if vt.isnan().any():
        raise ValueError("v_th must not be NaN")
    for a, b in zip(tm.flatten().tolist(), ts.flatten().tolist()):
        msg = _decay_error(a, b, dtype != torch.float64)
        if msg:
            raise ValueError(f"{msg} (the neuron state of {dtype} inputs)")


def _check_state(state, x) -> None:
    if state is None:
        return
    if not isinstance(state, torch.Tensor):
        raise TypeError(f"state must be a tensor [4, *x.shape[1:]] or None, got {type(state).__name__}")
    want = (4, *x.shape[1:])
    if tuple(state.shape) != want:
        raise ValueError(f"state must be [4, *x.shape[1:]] = {list(want)} (m, s, g, u_last), got {list(state.shape)}")
    acc = _checks.acc_dtype(x.dtype)
    if state.dtype != acc:
        raise TypeError(f"state must be {acc} (the neuron-state dtype of {x.dtype} inputs), got {state.dtype}")
    if state.device != x.device:
        raise ValueError(f"state must be on x's device {x.device}, got {state.device}")


def _check_alpha(surrogate, alpha) -> float:
    if surrogate not in SURROGATES:
        raise ValueError(f"surrogate must be one of {', '.join(map(repr, SURROGATES))}, got {surrogate!r}")
    if alpha is None:
        return SURROGATES[surrogate]
    what = f"the {surrogate} surrogate's {_ALPHA_NAMES[surrogate]}"
    if not _checks.is_real_number(alpha):
        raise TypeError(f"alpha ({what}) must be a Python number or None, got {type(alpha).__name__}")
    if not (_finite(alpha) and alpha > 0):
        raise ValueError(f"alpha ({what}) must be a finite number > 0, got {alpha}")
    return float(alpha)


def srm_neuron_surrogate(
    x: torch.Tensor,
    *,
    tau_m=5.0,
    tau_s=3.0,
    v_th=1.0,
    state: torch.Tensor | None = None,
    fire_if: str = ">",
    surrogate: str = "sigmoid",
    alpha: float | None = None,
    detach_reset: bool = False,
    return_state: bool = False,
    tau_grad: float = 2.5,
    backend: str | None = None,
):
    """Spikes of the SRM neuron, differentiable with a surrogate gradient (docs/maths.md §9-§11).

    The forward is the event mode's (:func:`snnspx.functional.srm_forward`, §2): for scalar
    constants and ``fire_if=">"`` the spikes are the same bits. The backward is the exact
    backpropagation through time of §9's lines with ``dS/du`` replaced by the surrogate
    derivative, for `x`, for the constants given as tensors that require a gradient, and for
    `state`.

    Args:
        x: input currents ``[T, B, C, ...]`` (or ``[T, N]``, or any ``[T, ...]`` with scalar
            constants), float32, float64, float16 or bfloat16, any strides.
        tau_m, tau_s: time constants, finite, > 1 and different in every channel: Python
            numbers, 0-d tensors or ``[C]`` tensors (one per channel, ``C = x.shape[2]``);
            differentiable when given as tensors. Keep learnable ones valid with a
            parametrisation (e.g. ``tau = 1 + softplus(p)``).
        v_th: threshold, a number or a 0-d or ``[C]`` tensor, not NaN; differentiable.
        state: ``[4, *x.shape[1:]]`` = ``(m, s, g, u_last)`` to start from (float64 for float64
            `x`, float32 otherwise), None for zeros: the ``state`` of an earlier call with
            ``return_state=True`` continues that call's sequence bit for bit (§11).
            Differentiable: gradients cross chunks.
        fire_if: ``">"`` (spike when ``u > v_th``) or ``">="``.
        surrogate: ``"sigmoid"``, ``"atan"``, ``"fast_sigmoid"`` or ``"triangle"``.
        alpha: the surrogate's parameter (> 0), default per surrogate: sigmoid 4, atan 2,
            fast_sigmoid's slope 25, triangle's width 1 (:data:`SURROGATES`).
        detach_reset: treat the reset factor ``(1 - S_t)`` as a constant in the backward.
        return_state: also return the state after the last step.
        tau_grad: the time constant of the trace ``g`` carried in the state (§2), a number
            > 1; it affects the returned state only, not the spikes.
        backend: ``"cuda"``, ``"cpp"``, ``"torch"`` or None (see :func:`snnspx.backends`).

    Returns:
        spikes ``[T, ...]`` in the dtype of `x`, values 0 or 1; with ``return_state``,
        ``(spikes, state)``, state ``[4, *x.shape[1:]]`` in the neuron-state dtype.

    Memory: autograd keeps `x` (4 bytes per float32 neuron-step) and the input state; the
    backward recomputes the forward.
    """
    _checks.check_tensor(x, "x")
    if fire_if not in (">", ">="):
        raise ValueError(f"fire_if must be '>' or '>=', got {fire_if!r}")
    alpha = _check_alpha(surrogate, alpha)
    _checks.check_flag(detach_reset, "detach_reset")
    _checks.check_flag(return_state, "return_state")
    if not _checks.is_real_number(tau_grad):
        raise TypeError(f"tau_grad must be a Python number, got {type(tau_grad).__name__}")
    if not (_finite(tau_grad) and tau_grad > 1):
        raise ValueError(f"tau_grad must be a finite number > 1, got {tau_grad}")
    consts = [_constant_tensor(v, n, x) for v, n in ((tau_m, "tau_m"), (tau_s, "tau_s"), (v_th, "v_th"))]
    _check_state(state, x)
    if not torch.compiler.is_compiling() and x.device.type != "meta":  # values are not read while tracing
        if all(_checks.is_real_number(v) for v in (tau_m, tau_s, v_th)):
            _check_number_values(*(_checks.number_as_float(v) for v in (tau_m, tau_s, v_th)), x.dtype)
        else:
            _check_constant_values(*consts, x.dtype)
    b = resolve(backend, x.device)
    with kernels(b, x.device):
        spikes, state_out = _FWD(x, *consts, state, float(tau_grad), fire_if == ">=", surrogate, alpha, detach_reset)
    return (spikes, state_out) if return_state else spikes
