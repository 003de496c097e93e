"""The SRM neuron (docs/maths.md §2-§3): wrappers, the vectorised ``torch`` backend, fake
kernels and autograd for the compiled ops."""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .. import _checks, reference
from .._backend import resolve

__all__ = ["srm_forward", "srm_backward", "srm_neuron"]

_DEFAULTS = dict(tau_m=5.0, tau_s=3.0, tau_grad=2.5, v_th=1.0, du_inv_clamp=4.0, max_dudt_inv=123456789.0)


# --------------------------------------------------------------------------- torch backend
def _forward_torch(x, tau_m, tau_s, tau_grad, v_th):
    """Vectorised over neurons, a Python loop over T; same operation order as the kernels."""
    acc = _checks.acc_dtype(x.dtype)
    a_m, a_s, a_g, c = (torch.tensor(v, dtype=acc, device=x.device) for v in _checks.srm_constants(tau_m, tau_s, tau_grad))
    vth = torch.tensor(_checks.to_acc_float(v_th, x.dtype), dtype=acc, device=x.device)
    spikes = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    du = torch.empty(x.shape, dtype=acc, device=x.device)
    dut = torch.empty(x.shape, dtype=acc, device=x.device)
    zero = torch.zeros((), dtype=acc, device=x.device)
    m = s = g = u_last = torch.zeros(x.shape[1:], dtype=acc, device=x.device)
    for t in range(x.shape[0]):
        xt = x[t].to(acc)
        m = (m + xt) * a_m
        s = (s + xt) * a_s
        g = (g + xt) * a_g
        u = c * (m - s)
        du[t] = u - u_last
        dut[t] = g
        spk = u > vth
        spikes[t] = spk
        m = torch.where(spk, zero, m)
        s = torch.where(spk, zero, s)
        g = torch.where(spk, zero, g)
        u_last = torch.where(spk, zero, u)
    return spikes, du, dut


def _backward_torch(grad_spikes, spikes, du, dut, tau_m, tau_s, tau_grad, du_inv_clamp, max_dudt_inv):
    acc = du.dtype
    T = grad_spikes.shape[0]
    dev = grad_spikes.device
    epsw_l, epst_l = _checks.srm_tables(max(T, 1), tau_m, tau_s, tau_grad)
    epsw = torch.tensor(epsw_l, dtype=torch.float64, device=dev).to(acc)
    epst = torch.tensor(epst_l, dtype=torch.float64, device=dev).to(acc)
    lo_w = -_checks.to_acc_float(du_inv_clamp, acc)  # inf beyond float32's range, as in the kernels
    lo_t = -_checks.to_acc_float(max_dudt_inv, acc)
    shape = grad_spikes.shape[1:]
    zero = torch.zeros((), dtype=acc, device=dev)
    a_w = torch.zeros(shape, dtype=acc, device=dev)
    a_t = torch.zeros(shape, dtype=acc, device=dev)
    lag = torch.zeros(shape, dtype=torch.long, device=dev)
    seen = torch.zeros(shape, dtype=torch.bool, device=dev)
    grad_w = torch.empty(grad_spikes.shape, dtype=grad_spikes.dtype, device=dev)
    grad_t = torch.empty_like(grad_w)
    for t in range(T - 1, -1, -1):
        spk = spikes[t] == 1
        g = grad_spikes[t].to(acc)
        a_w = torch.where(spk, g * torch.clamp(torch.reciprocal(-du[t]), lo_w, 0.0), a_w)
        a_t = torch.where(spk, g * torch.clamp(torch.reciprocal(-dut[t]), lo_t, 0.0), a_t)
        lag = torch.where(spk, 0, torch.where(seen, lag + 1, lag))
        seen = seen | spk
        grad_w[t] = torch.where(seen, a_w * epsw[lag], zero)
        grad_t[t] = torch.where(seen, a_t * epst[lag], zero)
    return grad_w, grad_t


# --------------------------------------------------------------------------- autograd (python backends)
_PY_IMPLS = {
    "torch": (_forward_torch, _backward_torch),
    "reference": (reference.srm_forward, reference.srm_backward),
}


class _PyNeuron(torch.autograd.Function):
    """Autograd for the torch and reference backends: spikes carry grad_w back to x."""

    @staticmethod
    def forward(ctx, x, backend, tau_m, tau_s, tau_grad, v_th, du_inv_clamp, max_dudt_inv):
        fwd, _ = _PY_IMPLS[backend]
        spikes, du, dut = fwd(x, tau_m, tau_s, tau_grad, v_th)
        ctx.mark_non_differentiable(du, dut)
        ctx.set_materialize_grads(False)  # no zero-filled grads for the non-differentiable outputs
        ctx.save_for_backward(spikes, du, dut)
        ctx.backend = backend
        ctx.params = (tau_m, tau_s, tau_grad, du_inv_clamp, max_dudt_inv)
        return spikes, du, dut

    @staticmethod
    @once_differentiable  # the event-driven gradient is a surrogate with no derivative of its own
    def backward(ctx, grad_spikes, _grad_du, _grad_dut):
        if grad_spikes is None:
            return (None,) * 8
        spikes, du, dut = ctx.saved_tensors
        _, bwd = _PY_IMPLS[ctx.backend]
        grad_w, _ = bwd(grad_spikes.contiguous(), spikes, du, dut, *ctx.params)
        return grad_w, None, None, None, None, None, None, None


def no_derivative_message(op: str) -> str:
    return (
        f"snnspx: no double backward through {op} (nor any derivative of its outputs): the SRM "
        "neuron's event-driven gradient (docs/maths.md §3) is a surrogate with no derivative of its own"
    )


class _PyBackward(torch.autograd.Function):
    """srm_backward of the torch and reference backends. Its outputs have no derivative, as on
    the compiled backends: differentiating them raises instead of giving a derivative of the
    torch ops (torch) or silently none (reference)."""

    @staticmethod
    def forward(ctx, backend, grad_spikes, spikes, du, dut, *params):
        _, bwd = _PY_IMPLS[backend]
        return bwd(grad_spikes, spikes, du, dut, *params)

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(no_derivative_message("srm_backward"))


# --------------------------------------------------------------------------- public wrappers
def srm_forward(
    x: torch.Tensor,
    tau_m: float = 5.0,
    tau_s: float = 3.0,
    tau_grad: float = 2.5,
    v_th: float = 1.0,
    *,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the SRM neuron over all T steps in one pass (docs/maths.md §2).

    Args:
        x: input currents ``[T, ...]`` (any trailing shape, any strides), float32,
            float64, float16 or bfloat16. ``T = 0`` returns empty tensors. Not checked for
            NaN/inf: a neuron whose state becomes NaN never spikes again (docs/maths.md §2).
        tau_m, tau_s: membrane and synaptic time constants, > 1 and different.
        tau_grad: time constant of the spike-time gradient trace, > 1.
        v_th: threshold; a neuron spikes when ``u > v_th`` (strict), then resets.
        backend: ``"cuda"``, ``"cpp"``, ``"torch"``, ``"reference"`` or None (see
            :func:`snnspx.backends`).

    Returns:
        ``(spikes, du, dut)``, each ``[T, ...]``. ``spikes`` has the dtype of `x`
        and values 0 or 1; ``du[t] = u[t] - u_last`` and ``dut[t]`` (the gradient
        trace g) are float64 for float64 `x` and float32 otherwise. Gradients flow
        to `x` through ``spikes`` only (the event-driven ``grad_w`` of
        docs/maths.md §3, with the default clamps); ``du`` and ``dut`` are not
        differentiable.
    """
    _checks.check_tensor(x, "x")
    _checks.check_srm_params(tau_m, tau_s, tau_grad, v_th)
    b = resolve(backend, x.device)
    args = (float(tau_m), float(tau_s), float(tau_grad), float(v_th))
    if b in _PY_IMPLS:
        return _PyNeuron.apply(x, b, *args, _DEFAULTS["du_inv_clamp"], _DEFAULTS["max_dudt_inv"])
    return torch.ops.snnspx.srm_forward.default(x, *args)


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
    *,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The event-driven backward of the SRM neuron (docs/maths.md §3).

    Args:
        grad_spikes: dL/dspikes ``[T, ...]``; only read where ``spikes == 1``.
        spikes, du, dut: the outputs of :func:`srm_forward` (same shape; ``du`` and
            ``dut`` float32, or float64 for float64 inputs).
        du_inv_clamp: ``-1/du`` is clamped to ``[-du_inv_clamp, 0]``.
        max_dudt_inv: ``-1/dut`` is clamped to ``[-max_dudt_inv, 0]``.

    Returns:
        ``(grad_w, grad_t)``, ``[T, ...]`` in the dtype of `grad_spikes`: ``grad_w[t]``
        is dL/dx[t] through the time of the next output spike, ``grad_t[t]`` the
        proxy gradient for the timing of an input spike at ``t``. Both are exactly 0
        at steps that no later (or same-step) spike follows.
    """
    _checks.check_tensor(grad_spikes, "grad_spikes")
    _checks.check_same_shape(grad_spikes, "grad_spikes", spikes=spikes, du=du, dut=dut)
    _checks.check_tensor(spikes, "spikes")  # the 0/1 floats srm_forward returned, on every backend
    _checks.check_srm_params(tau_m, tau_s, tau_grad)
    _checks.check_backward_params(du_inv_clamp, max_dudt_inv)
    _checks.check_srm_backward_dtypes(grad_spikes, spikes, du, dut)
    b = resolve(backend, grad_spikes.device)
    args = (float(tau_m), float(tau_s), float(tau_grad), float(du_inv_clamp), float(max_dudt_inv))
    if b in _PY_IMPLS:
        return _PyBackward.apply(b, grad_spikes, spikes, du, dut, *args)
    return torch.ops.snnspx.srm_backward.default(grad_spikes, spikes, du, dut, *args)


def srm_neuron(
    x: torch.Tensor,
    tau_m: float = 5.0,
    tau_s: float = 3.0,
    tau_grad: float = 2.5,
    v_th: float = 1.0,
    du_inv_clamp: float = 4.0,
    max_dudt_inv: float = 123456789.0,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """Spikes ``[T, ...]`` of the SRM neuron, differentiable with the event-driven gradient.

    Forward as :func:`srm_forward`; backward gives ``dL/dx = grad_w`` of
    :func:`srm_backward`. On the compiled backends autograd keeps 8 bytes per
    float32 neuron-step for the backward (the two clamped spike-time factors
    ``clamp(-1/du)`` and ``clamp(-1/dut)`` at spike steps, a marker elsewhere),
    not the 12 of ``(spikes, du, dut)``.

    Args:
        x: input currents ``[T, ...]``; see :func:`srm_forward` for the others.
        du_inv_clamp, max_dudt_inv: the backward's clamps (see :func:`srm_backward`).

    Returns:
        spikes ``[T, ...]``, dtype of `x`, values 0 or 1.
    """
    _checks.check_tensor(x, "x")
    _checks.check_srm_params(tau_m, tau_s, tau_grad, v_th)
    _checks.check_backward_params(du_inv_clamp, max_dudt_inv)
    b = resolve(backend, x.device)
    args = (float(tau_m), float(tau_s), float(tau_grad), float(v_th), float(du_inv_clamp), float(max_dudt_inv))
    if b in _PY_IMPLS:
        return _PyNeuron.apply(x, b, *args)[0]
    return torch.ops.snnspx.srm_neuron_fwd.default(x, *args)[0]


# --------------------------------------------------------------------------- registrations
def register_raising_autograd(op: str, message: str) -> None:
    """Give `op` an autograd formula that raises ``RuntimeError(message)`` when a backward
    reaches it, so that differentiating its outputs fails loudly instead of autograd's
    fallback silently giving None."""

    def setup(ctx, inputs, output):
        pass

    def backward(ctx, *grads):
        raise RuntimeError(message)

    torch.library.register_autograd(op, backward, setup_context=setup)


def register_once_differentiable(op: str) -> None:
    """Give the backward op `op` an autograd formula that raises: the event-driven gradient is
    a surrogate, not the derivative of a function, so it has no derivative of its own. A double
    backward (``create_graph=True``, then a backward through the gradient) fails with this
    message instead of silently giving None, as ``once_differentiable`` does for Python
    functions."""
    register_raising_autograd(op, no_derivative_message(op))


def _register() -> None:
    """Fake kernels and autograd of the compiled SRM ops (called once the schemas exist)."""
    lib = "snnspx::"
    register_once_differentiable(lib + "srm_backward")
    register_once_differentiable(lib + "srm_neuron_bwd")

    @torch.library.register_fake(lib + "srm_forward")
    def _srm_forward_fake(x, tau_m, tau_s, tau_grad, v_th):
        acc = _checks.acc_dtype(x.dtype)
        return x.new_empty(x.shape), x.new_empty(x.shape, dtype=acc), x.new_empty(x.shape, dtype=acc)

    @torch.library.register_fake(lib + "srm_backward")
    def _srm_backward_fake(grad_spikes, spikes, du, dut, tau_m, tau_s, tau_grad, du_inv_clamp, max_dudt_inv):
        return grad_spikes.new_empty(grad_spikes.shape), grad_spikes.new_empty(grad_spikes.shape)

    @torch.library.register_fake(lib + "srm_neuron_fwd")
    def _srm_neuron_fwd_fake(x, tau_m, tau_s, tau_grad, v_th, du_inv_clamp, max_dudt_inv):
        return x.new_empty(x.shape), x.new_empty((2, *x.shape), dtype=_checks.acc_dtype(x.dtype))

    @torch.library.register_fake(lib + "srm_neuron_bwd")
    def _srm_neuron_bwd_fake(grad_spikes, saved, tau_m, tau_s, tau_grad, du_inv_clamp, max_dudt_inv):
        return grad_spikes.new_empty(grad_spikes.shape)

    # srm_forward: the gradient reaches x through the spikes only.
    def _fwd_setup(ctx, inputs, output):
        _, tau_m, tau_s, tau_grad, _ = inputs
        spikes, du, dut = output
        ctx.save_for_backward(spikes, du, dut)
        ctx.mark_non_differentiable(du, dut)  # as documented, and as the Python backends do
        ctx.set_materialize_grads(False)  # no zero-filled grads for the non-differentiable outputs
        ctx.params = (tau_m, tau_s, tau_grad, _DEFAULTS["du_inv_clamp"], _DEFAULTS["max_dudt_inv"])

    def _fwd_backward(ctx, grad_spikes, _grad_du, _grad_dut):
        if grad_spikes is None:
            return None, None, None, None, None
        spikes, du, dut = ctx.saved_tensors
        grad_w, _ = torch.ops.snnspx.srm_backward.default(grad_spikes, spikes, du, dut, *ctx.params)
        return grad_w, None, None, None, None

    torch.library.register_autograd(lib + "srm_forward", _fwd_backward, setup_context=_fwd_setup)

    # srm_neuron_fwd: saves the compact [2, T, ...] state only.
    def _neuron_setup(ctx, inputs, output):
        _, tau_m, tau_s, tau_grad, _, du_inv_clamp, max_dudt_inv = inputs
        ctx.save_for_backward(output[1])
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)  # no zero-filled grads for the non-differentiable outputs
        ctx.params = (tau_m, tau_s, tau_grad, du_inv_clamp, max_dudt_inv)

    def _neuron_backward(ctx, grad_spikes, _grad_saved):
        if grad_spikes is None:
            return None, None, None, None, None, None, None
        (saved,) = ctx.saved_tensors
        grad_x = torch.ops.snnspx.srm_neuron_bwd.default(grad_spikes, saved, *ctx.params)
        return grad_x, None, None, None, None, None, None

    torch.library.register_autograd(lib + "srm_neuron_fwd", _neuron_backward, setup_context=_neuron_setup)
