"""The SRM neuron (docs/maths.md §2-§3): its ops' schemas, PyTorch kernels, fake kernels and
autograd formulas, and the public wrappers.

Ops (the compiled libraries add CPU and CUDA kernels for the same schemas). ``variant`` is
:attr:`snnspx.SRMParams.variant`, the neuron options (docs/maths.md, "Neuron variants"); the
CUDA kernels take variant 0 only:

* ``srm_forward(x, tau_m, tau_s, tau_grad, v_th, variant) -> (spikes, du, dut)``: §2, one pass
  over T. ``du``/``dut`` are float64 for float64 ``x`` and float32 otherwise.
* ``srm_backward(grad_spikes, spikes, du, dut, tau_m, tau_s, tau_grad, du_inv_clamp,
  max_dudt_inv, variant) -> (grad_w, grad_t)``: §3, the event-driven backward.
* ``srm_neuron_fwd(x, ..., v_th, du_inv_clamp, max_dudt_inv, variant, state, return_state) ->
  (spikes, state_out)`` and ``srm_neuron_bwd(grad_spikes, x, state, ..., v_th, du_inv_clamp,
  max_dudt_inv, variant, with_t) -> (grad_w, grad_t)``: the autograd pair behind
  :func:`srm_neuron` and the SRM layers. The forward writes the spikes only; its autograd
  keeps ``x`` and ``state`` (nothing per neuron-step of its own: 0 new bytes where ``x`` is
  kept anyway, 4 per float32 neuron-step where ``x`` is an intermediate such as a layer's
  currents), and the backward runs the forward again from them (the same steps, so the same
  bits) before it walks back. ``grad_t`` is §3's input-spike gradient, an empty ``[0]``
  tensor unless ``with_t``; the clamps are the backward's (the forward checks them).
  ``state`` (None = zeros) and ``state_out`` are the carried state ``[4, *x.shape[1:]]`` =
  (m, s, g, u_last) in the state dtype, before the first step and after the last step's
  reset (docs/maths.md, "Carried state"); ``state_out`` is an empty ``[0]`` tensor unless
  ``return_state``, and neither has a gradient. The CUDA kernels carry no state: their glue
  rejects a state and ``return_state=True``.
"""

from __future__ import annotations

import os

import torch

from .. import _checks, _library
from .._backend import kernels, resolve
from ..params import SRMParams, decode_variant
from .surrogate import srm_neuron_surrogate

__all__ = ["srm_forward", "srm_backward", "srm_neuron"]


def resolve_neuron(backend: str | None, device: torch.device, params: SRMParams, *, carried: bool = False) -> str:
    """:func:`snnspx._backend.resolve` for an op that runs the neuron of `params` (and, if
    `carried`, takes or returns a carried state). The CUDA kernels run the default neuron from
    a zero state only: otherwise CUDA tensors run the PyTorch kernels when no backend was
    requested, and a request for ``"cuda"`` (the argument or ``SNNSPX_BACKEND``) is a
    ``ValueError``."""
    b = resolve(backend, device)
    if b != "cuda" or (params.variant == 0 and not carried):
        return b
    if (backend or os.environ.get("SNNSPX_BACKEND")) == "cuda":
        if params.variant != 0:
            raise ValueError(
                f"the 'cuda' backend runs the default neuron only (fire_if='>', forward_type='leaky', "
                f"gradient_type='exponential'), got {params.options}: run CUDA tensors with backend='torch'"
            )
        raise ValueError(
            "the 'cuda' backend does not carry the neuron state (state= or return_state=True): "
            "run CUDA tensors with backend='torch'"
        )
    return "torch"


# --------------------------------------------------------------------------- PyTorch kernels
def _scalar(v: float, dtype: torch.dtype, device) -> torch.Tensor:
    return torch.tensor(_checks.to_acc_float(v, dtype), dtype=_checks.acc_dtype(dtype), device=device)


def _params(tau_m, tau_s, tau_grad, variant) -> SRMParams:
    """The constants and options an op's arguments name (ValueError for a bad `variant`)."""
    return SRMParams(tau_m, tau_s, tau_grad, **decode_variant(variant))


def _run_forward(x, p: SRMParams, v_th, state, end_state: bool, traces: bool = True):
    """§2 vectorised over neurons, a Python loop over T, in the kernels' operation order, from
    `state` (``[4, *x.shape[1:]]`` = (m, s, g, u_last) in the state dtype; None = zeros).
    Returns ``(spikes, du, dut, state_out)``; ``du`` and ``dut`` are None unless `traces`,
    ``state_out`` (the state after the last step's reset, stacked as `state`) None unless
    `end_state`."""
    nonleaky, fire_ge = p.forward_type == "nonleaky", p.fire_if == ">="
    dut_is_du = p.gradient_type != "exponential"  # (a nonleaky du is g anyway)
    need_ms = end_state or not nonleaky  # a nonleaky u never reads m and s
    acc = _checks.acc_dtype(x.dtype)
    dev = x.device
    a_m, a_s, a_g, c = (torch.tensor(v, dtype=acc, device=dev) for v in p.constants())
    vth = _scalar(v_th, x.dtype, dev)
    spikes = torch.empty(x.shape, dtype=x.dtype, device=dev)
    du = torch.empty(x.shape, dtype=acc, device=dev) if traces else None
    dut = torch.empty(x.shape, dtype=acc, device=dev) if traces else None
    zero = torch.zeros((), dtype=acc, device=dev)
    if state is None:
        m = s = g = u_last = torch.zeros(x.shape[1:], dtype=acc, device=dev)
    else:
        m, s, g, u_last = state.unbind(0)
    for t in range(x.shape[0]):
        xt = x[t].to(acc)
        g = (g + xt) * a_g
        if need_ms:
            m = (m + xt) * a_m
            s = (s + xt) * a_s
        if nonleaky:
            u = u_last + g
            if traces:
                du[t] = g
        else:
            u = c * (m - s)
            if traces:
                du[t] = u - u_last
        if traces:
            dut[t] = du[t] if dut_is_du else g
        spk = u >= vth if fire_ge else u > vth
        spikes[t] = spk
        if need_ms:
            m = torch.where(spk, zero, m)
            s = torch.where(spk, zero, s)
        g = torch.where(spk, zero, g)
        u_last = torch.where(spk, zero, u)
    state_out = torch.stack([m, s, g, u_last]) if end_state else None  # stack copies: never aliases `state`
    return spikes, du, dut, state_out


def _forward_kernel(x, tau_m, tau_s, tau_grad, v_th, variant):
    return _run_forward(x, _params(tau_m, tau_s, tau_grad, variant), v_th, None, False)[:3]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _check_state(state, x: torch.Tensor, name: str = "state") -> None:
    """A carried neuron state for `x` ``[T, ...]``: ``[4, *x.shape[1:]]`` in the state dtype
    (float64 for float64 `x`, float32 otherwise) on `x`'s device."""
    if not isinstance(state, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(state).__name__}")
    want = (4, *x.shape[1:])
    if tuple(state.shape) != want:
        raise ValueError(
            f"{name} must be [4, *x.shape[1:]] = {list(want)} (m, s, g, u_last per neuron), got {list(state.shape)}"
        )
    acc = _checks.acc_dtype(x.dtype)
    if state.dtype != acc:
        raise TypeError(
            f"{name} must be {_dtype_name(acc)} (the neuron-state dtype: float64 for float64 x, float32 otherwise), "
            f"got {_dtype_name(state.dtype)}"
        )
    if state.device != x.device:
        raise ValueError(f"{name} must be on x's device {x.device}, got {state.device}")


def _factors(du, dut, du_inv_clamp, max_dudt_inv, dtype):
    """The spike-time factors ``clamp(-1/du, -du_inv_clamp, 0)`` and ``clamp(-1/dut, -max_dudt_inv, 0)``."""
    lo_w = -_checks.to_acc_float(du_inv_clamp, dtype)  # inf beyond float32's range, as in the kernels
    lo_t = -_checks.to_acc_float(max_dudt_inv, dtype)
    return torch.clamp(torch.reciprocal(-du), lo_w, 0.0), torch.clamp(torch.reciprocal(-dut), lo_t, 0.0)


def _grad_loop(grad_spikes, step, tau_m, tau_s, tau_grad, variant, acc, with_t: bool):
    """§3's backward walk from T-1 down to 0; ``step(t)`` gives ``(spiked, fw, ft)`` at step t,
    the factors read at spikes only (computed per step: whole-tensor factors cost more memory
    traffic than they save). The variant changes the tables only."""
    T = grad_spikes.shape[0]
    dev = grad_spikes.device
    epsw_l, epst_l = _params(tau_m, tau_s, tau_grad, variant).tables(max(T, 1))
    epsw = torch.tensor(epsw_l, dtype=torch.float64, device=dev).to(acc)
    epst = torch.tensor(epst_l, dtype=torch.float64, device=dev).to(acc)
    shape = grad_spikes.shape[1:]
    zero = torch.zeros((), dtype=acc, device=dev)
    a_w = torch.zeros(shape, dtype=acc, device=dev)
    a_t = torch.zeros(shape, dtype=acc, device=dev)
    lag = torch.zeros(shape, dtype=torch.long, device=dev)
    seen = torch.zeros(shape, dtype=torch.bool, device=dev)
    grad_w = torch.empty(grad_spikes.shape, dtype=grad_spikes.dtype, device=dev)
    grad_t = torch.empty_like(grad_w) if with_t else None
    for t in range(T - 1, -1, -1):
        s, fw, ft = step(t)
        g = grad_spikes[t].to(acc)
        a_w = torch.where(s, g * fw, a_w)
        lag = torch.where(s, 0, torch.where(seen, lag + 1, lag))
        seen = seen | s
        grad_w[t] = torch.where(seen, a_w * epsw[lag], zero)
        if with_t:
            a_t = torch.where(s, g * ft, a_t)
            grad_t[t] = torch.where(seen, a_t * epst[lag], zero)
    return grad_w, grad_t


def _backward_kernel(grad_spikes, spikes, du, dut, tau_m, tau_s, tau_grad, du_inv_clamp, max_dudt_inv, variant):
    _checks.check_devices("srm_backward", grad_spikes=grad_spikes, spikes=spikes, du=du, dut=dut)

    def step(t):
        return (spikes[t] == 1, *_factors(du[t], dut[t], du_inv_clamp, max_dudt_inv, du.dtype))

    return _grad_loop(grad_spikes, step, tau_m, tau_s, tau_grad, variant, du.dtype, True)


def _neuron_fwd_kernel(x, tau_m, tau_s, tau_grad, v_th, du_inv_clamp, max_dudt_inv, variant, state, return_state):
    if state is not None:
        _check_state(state, x)
    p = _params(tau_m, tau_s, tau_grad, variant)
    spikes, _, _, state_out = _run_forward(x, p, v_th, state, return_state, traces=False)
    if not return_state:
        state_out = x.new_empty((0,), dtype=_checks.acc_dtype(x.dtype))
    return spikes, state_out


def _neuron_bwd_kernel(grad_spikes, x, state, tau_m, tau_s, tau_grad, v_th, du_inv_clamp, max_dudt_inv, variant,
                       with_t):
    """srm_neuron_bwd's PyTorch kernel (and the neuron half of the fused op's backward): the
    forward again from `x` and `state`, then §3's walk over the factors at spikes (+1 and 0
    at silent steps, so anything but a positive ``fw`` marks a spike: a NaN factor too)."""
    _checks.check_devices("srm_neuron_bwd", grad_spikes=grad_spikes, x=x)
    if state is not None:
        _check_state(state, x)
    p = _params(tau_m, tau_s, tau_grad, variant)
    spikes, du, dut, _ = _run_forward(x, p, v_th, state, False)
    fw, ft = _factors(du, dut, du_inv_clamp, max_dudt_inv, du.dtype)
    spk = spikes == 1
    fw, ft = torch.where(spk, fw, 1.0), torch.where(spk, ft, 0.0)
    grad_w, grad_t = _grad_loop(grad_spikes, lambda t: (~(fw[t] > 0), fw[t], ft[t]), tau_m, tau_s, tau_grad, variant,
                                fw.dtype, with_t)
    return grad_w, grad_t if with_t else grad_w.new_empty((0,))


# --------------------------------------------------------------------------- schemas, fakes, autograd
_library.define(
    "srm_forward(Tensor x, float tau_m, float tau_s, float tau_grad, float v_th, int variant)"
    " -> (Tensor, Tensor, Tensor)",
    _forward_kernel,
)
_library.define(
    "srm_backward(Tensor grad_spikes, Tensor spikes, Tensor du, Tensor dut, float tau_m, float tau_s,"
    " float tau_grad, float du_inv_clamp, float max_dudt_inv, int variant) -> (Tensor, Tensor)",
    _backward_kernel,
)
_library.define(
    "srm_neuron_fwd(Tensor x, float tau_m, float tau_s, float tau_grad, float v_th, float du_inv_clamp,"
    " float max_dudt_inv, int variant, Tensor? state, bool return_state) -> (Tensor spikes, Tensor state_out)",
    _neuron_fwd_kernel,
)
_library.define(
    "srm_neuron_bwd(Tensor grad_spikes, Tensor x, Tensor? state, float tau_m, float tau_s, float tau_grad,"
    " float v_th, float du_inv_clamp, float max_dudt_inv, int variant, bool with_t) -> (Tensor grad_w, Tensor grad_t)",
    _neuron_bwd_kernel,
)
_FORWARD = _library.op("srm_forward")
_BACKWARD = _library.op("srm_backward")
_NEURON_FWD = _library.op("srm_neuron_fwd")
_NEURON_BWD = _library.op("srm_neuron_bwd")
_DEFAULT = SRMParams()


@torch.library.register_fake("snnspx::srm_forward")
def _forward_fake(x, tau_m, tau_s, tau_grad, v_th, variant):
    acc = _checks.acc_dtype(x.dtype)
    return x.new_empty(x.shape), x.new_empty(x.shape, dtype=acc), x.new_empty(x.shape, dtype=acc)


@torch.library.register_fake("snnspx::srm_backward")
def _backward_fake(grad_spikes, spikes, du, dut, tau_m, tau_s, tau_grad, du_inv_clamp, max_dudt_inv, variant):
    _checks.check_devices("srm_backward", grad_spikes=grad_spikes, spikes=spikes, du=du, dut=dut)
    return grad_spikes.new_empty(grad_spikes.shape), grad_spikes.new_empty(grad_spikes.shape)


@torch.library.register_fake("snnspx::srm_neuron_fwd")
def _neuron_fwd_fake(x, tau_m, tau_s, tau_grad, v_th, du_inv_clamp, max_dudt_inv, variant, state, return_state):
    if state is not None:
        _check_state(state, x)
    acc = _checks.acc_dtype(x.dtype)
    return x.new_empty(x.shape), x.new_empty((4, *x.shape[1:]) if return_state else (0,), dtype=acc)


@torch.library.register_fake("snnspx::srm_neuron_bwd")
def _neuron_bwd_fake(grad_spikes, x, state, tau_m, tau_s, tau_grad, v_th, du_inv_clamp, max_dudt_inv, variant, with_t):
    _checks.check_devices("srm_neuron_bwd", grad_spikes=grad_spikes, x=x)
    if state is not None:
        _check_state(state, x)
    return grad_spikes.new_empty(grad_spikes.shape), grad_spikes.new_empty(grad_spikes.shape if with_t else (0,))


# srm_forward: the gradient reaches x through the spikes only, with the default clamps.
def _forward_setup(ctx, inputs, output):
    _, tau_m, tau_s, tau_grad, _, variant = inputs
    spikes, du, dut = output
    ctx.save_for_backward(spikes, du, dut)
    ctx.mark_non_differentiable(du, dut)
    ctx.set_materialize_grads(False)  # no zero-filled grads for the non-differentiable outputs
    ctx.args = (tau_m, tau_s, tau_grad, _DEFAULT.du_inv_clamp, _DEFAULT.max_dudt_inv, variant)


def _forward_backward(ctx, grad_spikes, _grad_du, _grad_dut):
    if grad_spikes is None:
        return (None,) * 6
    spikes, du, dut = ctx.saved_tensors
    return (_BACKWARD(grad_spikes, spikes, du, dut, *ctx.args)[0],) + (None,) * 5


# srm_neuron_fwd: keeps x and the start state only; the backward recomputes the rest. The
# event-driven backward runs within the call (docs/maths.md, "Carried state"): state_out is
# not differentiable and the input state gets no gradient.
def _neuron_setup(ctx, inputs, output):
    x, tau_m, tau_s, tau_grad, v_th, du_inv_clamp, max_dudt_inv, variant, state, _ = inputs
    ctx.save_for_backward(x, state)
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)
    ctx.args = (tau_m, tau_s, tau_grad, v_th, du_inv_clamp, max_dudt_inv, variant)


def _neuron_backward(ctx, grad_spikes, _grad_state):
    if grad_spikes is None:
        return (None,) * 10
    x, state = ctx.saved_tensors
    return (_NEURON_BWD(grad_spikes, x, state, *ctx.args, False)[0],) + (None,) * 9


_library.register_autograd("srm_forward", _forward_backward, _forward_setup)
_library.register_autograd("srm_neuron_fwd", _neuron_backward, _neuron_setup)
_library.register_no_derivative("srm_backward")
_library.register_no_derivative("srm_neuron_bwd")


# --------------------------------------------------------------------------- public wrappers
def srm_forward(
    x: torch.Tensor, *, params: SRMParams | None = None, backend: str | None = None, **neuron
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the SRM neuron over all T steps in one pass (docs/maths.md §2).

    Args:
        x: input currents ``[T, ...]`` (any trailing shape, any strides), float32,
            float64, float16 or bfloat16. ``T = 0`` returns empty tensors. Not checked for
            NaN/inf: a neuron whose state becomes NaN never spikes again (docs/maths.md §2).
        params: the neuron's constants and options (:class:`snnspx.SRMParams`; default: its
            defaults).
        backend: ``"cuda"``, ``"cpp"``, ``"torch"`` or None (see :func:`snnspx.backends`).
            The CUDA kernels run the default neuron only: with other options (``fire_if``,
            ``forward_type``, ``gradient_type``) CUDA tensors run ``"torch"`` when no backend
            is requested, and requesting ``"cuda"`` raises ``ValueError``.
        **neuron: fields of :class:`snnspx.SRMParams` (``tau_m``, ``tau_s``, ``tau_grad``,
            ``v_th``, ...) that replace those of `params`.

    Returns:
        ``(spikes, du, dut)``, each ``[T, ...]``. ``spikes`` has the dtype of `x`
        and values 0 or 1; ``du[t] = u[t] - u_last`` and ``dut[t]`` (the gradient
        trace g; other variants: docs/maths.md, "Neuron variants") are float64 for
        float64 `x` and float32 otherwise. Gradients flow
        to `x` through ``spikes`` only (the event-driven ``grad_w`` of
        docs/maths.md §3, with the default clamps: other clamps raise ``ValueError``
        when `x` needs a gradient); ``du`` and ``dut`` are not differentiable.
    """
    p = SRMParams.make(params, **neuron)
    _check_event_mode(p, "srm_forward")
    _checks.check_tensor(x, "x")
    clamps = (p.du_inv_clamp, p.max_dudt_inv)
    if clamps != (_DEFAULT.du_inv_clamp, _DEFAULT.max_dudt_inv) and x.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            "srm_forward's gradient uses the default clamps (du_inv_clamp=4, max_dudt_inv=MAX_DUDT_INV); for "
            f"others use srm_neuron, or srm_backward on the outputs (got du_inv_clamp={p.du_inv_clamp}, "
            f"max_dudt_inv={p.max_dudt_inv} for an x that needs a gradient)"
        )
    p.check_dtype(x.dtype)
    b = resolve_neuron(backend, x.device, p)
    with kernels(b, x.device):
        return _FORWARD(x, *p.forward_args)


def srm_backward(
    grad_spikes: torch.Tensor,
    spikes: torch.Tensor,
    du: torch.Tensor,
    dut: torch.Tensor,
    *,
    params: SRMParams | None = None,
    backend: str | None = None,
    **neuron,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The event-driven backward of the SRM neuron (docs/maths.md §3).

    Args:
        grad_spikes: dL/dspikes ``[T, ...]``; only read where ``spikes == 1``.
        spikes, du, dut: the outputs of :func:`srm_forward` (same shape; ``du`` and
            ``dut`` float32, or float64 for float64 inputs).
        params, backend, **neuron: as :func:`srm_forward`; ``du_inv_clamp`` and
            ``max_dudt_inv`` clamp ``-1/du`` to ``[-du_inv_clamp, 0]`` and ``-1/dut`` to
            ``[-max_dudt_inv, 0]``.

    Returns:
        ``(grad_w, grad_t)``, ``[T, ...]`` in the dtype of `grad_spikes`: ``grad_w[t]``
        is dL/dx[t] through the time of the next output spike, ``grad_t[t]`` the
        proxy gradient for the timing of an input spike at ``t``. Both are exactly 0
        at steps that no later (or same-step) spike follows. They have no derivative:
        differentiating them raises ``RuntimeError``.
    """
    p = SRMParams.make(params, **neuron)
    _check_event_mode(p, "srm_backward")
    _checks.check_tensor(grad_spikes, "grad_spikes")
    _checks.check_same_shape(grad_spikes, "grad_spikes", spikes=spikes, du=du, dut=dut)
    _checks.check_tensor(spikes, "spikes")
    _checks.check_srm_backward_dtypes(grad_spikes, spikes, du, dut)
    b = resolve_neuron(backend, grad_spikes.device, p)
    with kernels(b, grad_spikes.device):
        return _BACKWARD(grad_spikes, spikes, du, dut, *p.backward_args)


def _srm_event_op(x, p: SRMParams, backend, state, carried: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """srm_neuron_fwd's ``(spikes, state_out)`` with the checks; ``state_out`` is the end state
    where `carried` (which keeps CUDA tensors off the CUDA kernels, whose glue takes no
    state), else an empty tensor. The entry point of the SRM layers' event mode."""
    _checks.check_tensor(x, "x")
    p.check_dtype(x.dtype)
    if state is not None:
        _check_state(state, x)
    b = resolve_neuron(backend, x.device, p, carried=carried)
    with kernels(b, x.device):
        return _NEURON_FWD(x, *p.neuron_args, state, carried)


def _srm_event_grads(grad_spikes, x, state, p: SRMParams, backend, with_t: bool):
    """srm_neuron_bwd's ``(grad_w, grad_t)`` for a forward of :func:`_srm_event_op` on `x` from
    `state`, with its backend (the resolved one)."""
    with kernels(backend, x.device):
        return _NEURON_BWD(grad_spikes, x, state, *p.neuron_args, with_t)


def srm_neuron(
    x: torch.Tensor,
    *,
    params: SRMParams | None = None,
    backend: str | None = None,
    state: torch.Tensor | None = None,
    return_state: bool = False,
    **neuron,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Spikes ``[T, ...]`` of the SRM neuron, differentiable with the gradient `params` chooses.

    Forward as :func:`srm_forward`. With ``grad="event"`` (the default) the backward gives
    ``dL/dx = grad_w`` of :func:`srm_backward` with the clamps of `params`; with
    ``grad="surrogate"`` it is :func:`snnspx.functional.srm_neuron_surrogate`'s (exact
    backpropagation through time with a surrogate spike derivative, docs/maths.md §9), and
    ``tau_m``, ``tau_s`` and ``v_th`` may then be tensors (0-d or one value per channel,
    dim 2 of ``x``; differentiable), the returned state is differentiable and `state` gets a
    gradient. What follows describes the event mode. Autograd keeps `x` (and `state`) for the
    backward, which recomputes the traces from them: no memory per neuron-step of its own
    where `x` is kept anyway, 4 bytes per float32 neuron-step where `x` is an intermediate,
    not the 12 of ``(spikes, du, dut)``.

    A sequence may be run in chunks (docs/maths.md, "Carried state"): pass each call's
    returned state to the next. The spikes equal those of one call over the whole
    sequence, bit for bit. The event-driven backward runs within each chunk: a chunk's end
    is a truncation point (``x`` gets no credit for spikes of later chunks), the returned
    state is not differentiable, and `state` gets no gradient.

    Args:
        x: input currents ``[T, ...]``; params, backend, **neuron: as :func:`srm_forward`.
            The ``"cuda"`` backend carries no state: with `state` or `return_state`, CUDA
            tensors run ``"torch"`` when no backend is requested, and requesting ``"cuda"``
            raises ``ValueError``.
        state: the state to start from, ``[4, *x.shape[1:]]`` = ``(m, s, g, u_last)`` per
            neuron (docs/maths.md §2), float64 for float64 `x` and float32 otherwise, on
            `x`'s device; None starts from zeros.
        return_state: also return the state after the last step.

    Returns:
        spikes ``[T, ...]``, dtype of `x`, values 0 or 1; with `return_state`, the pair
        ``(spikes, state_out)``, ``state_out`` laid out as `state` (after the last step's
        reset; `state`, or zeros, when ``T = 0``).

    Raises:
        TypeError, ValueError: `state` is not a tensor of that shape, dtype and device, or
            `return_state` not a bool.
    """
    p, tensors = SRMParams.make_split(params, **neuron)
    return_state = _checks.check_flag(return_state, "return_state")
    if p.grad == "surrogate":
        consts = {k: tensors.get(k, getattr(p, k)) for k in _TENSOR_CONSTANTS}
        return srm_neuron_surrogate(
            x, **consts, state=state, fire_if=p.fire_if, surrogate=p.surrogate, alpha=p.alpha,
            detach_reset=p.detach_reset, return_state=return_state, tau_grad=p.tau_grad, backend=backend,
        )
    _check_no_tensor_constants(tensors)
    spikes, state_out = _srm_event_op(x, p, backend, state, state is not None or return_state)
    return (spikes, state_out) if return_state else spikes


# The constants that srm_neuron also takes as tensors (one value per channel, learnable) in
# surrogate mode (docs/maths.md §10).
_TENSOR_CONSTANTS = ("tau_m", "tau_s", "v_th")


def _check_no_tensor_constants(tensors: dict) -> None:
    if tensors:
        raise ValueError(
            f"{', '.join(tensors)} given as tensors (per-channel or learnable constants) need grad='surrogate': the "
            "event-driven gradient has no derivative for the constants, and its kernels take numbers"
        )


def _check_event_mode(p: SRMParams, op: str) -> None:
    if p.grad != "event":
        raise ValueError(f"{op} is the event mode's op (docs/maths.md §2-§3); for grad={p.grad!r} use srm_neuron")
