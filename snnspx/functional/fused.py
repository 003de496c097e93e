"""Fused SRM neuron + superpixel pooling (docs/maths.md §6): its ops' schemas, PyTorch kernels,
fake kernels and autograd formulas, and the public wrapper.

Layouts as in :mod:`snnspx.functional.suppix` (``x`` ``[T, B, C, P]`` currents, labels
``[L, LB, P]``), mode ``"sum" | "avg" | "max"``:

* ``srm_suppix_pool(x, labels, num_superpixels, mode, tau_m, tau_s, tau_grad, v_th, variant,
  check_labels, strategy) -> y [T, B, C, K]``: inference; the compiled kernels write no
  ``[T, B, C, P]`` tensor. ``variant`` is :attr:`snnspx.SRMParams.variant` (CUDA: 0 only).
* ``srm_suppix_pool_fwd(..., v_th, du_inv_clamp, max_dudt_inv, variant, check_labels, strategy)
  -> (y, counts, argmax)``: training; ``counts`` int32 ``[L, LB, K]`` pixels per superpixel,
  ``argmax`` int32 ``[T, B, C, K]`` the lowest spiking pixel (-1: none) for "max", empty
  otherwise. Like the inference form, no ``[T, B, C, P]`` tensor is written: autograd keeps
  ``x`` itself (with labels, counts and argmax) and nothing per neuron-step of its own.
* ``srm_suppix_pool_bwd(grad_y, x, labels, counts, argmax, mode, tau_m, tau_s, tau_grad, v_th,
  du_inv_clamp, max_dudt_inv, variant, strategy) -> grad_x``: §5's pooling backward composed
  with §3's ``grad_w``; it runs the neuron's forward again from ``x`` (the same steps, so the
  same bits) for the factors of §3 before it walks back.

The PyTorch kernels compose the unfused kernels (they write the spikes).
"""

from __future__ import annotations

import torch

from .. import _checks, _library
from .._backend import kernels
from ..params import SRMParams
from .srm import _neuron_bwd_kernel, _params, _run_forward, resolve_neuron, srm_neuron
from .suppix import _counts_kernel, _pool_backward_kernel, _pool_kernel, check_strategy, suppix_pool

__all__ = ["srm_suppix_pool"]


# --------------------------------------------------------------------------- PyTorch kernels
def _fwd_kernel(
    x, labels, K, mode, tau_m, tau_s, tau_grad, v_th, du_inv_clamp, max_dudt_inv, variant, check_labels, strategy
):
    _checks.check_devices("srm_suppix_pool", x=x, labels=labels)
    check_strategy("srm_suppix_pool_fwd", strategy)
    spikes = _run_forward(x, _params(tau_m, tau_s, tau_grad, variant), v_th, None, False, traces=False)[0]
    if mode not in ("sum", "avg", "max"):
        raise RuntimeError(f"srm_suppix_pool: mode must be 'sum', 'avg' or 'max', got {mode!r}")
    y, aux = _pool_kernel(spikes, labels, K, mode, check_labels)
    counts = aux if mode != "max" else _counts_kernel(labels, K)
    # max: the lowest spiking pixel, -1 where none spiked (as the compiled kernels give it)
    argmax = torch.where(y > 0, aux, -1) if mode == "max" else aux.new_empty((0,))
    return y, counts, argmax


def _inference_kernel(x, labels, K, mode, tau_m, tau_s, tau_grad, v_th, variant, check_labels, strategy):
    check_strategy("srm_suppix_pool", strategy)
    d = SRMParams()
    clamps = (d.du_inv_clamp, d.max_dudt_inv)
    return _fwd_kernel(x, labels, K, mode, tau_m, tau_s, tau_grad, v_th, *clamps, variant, check_labels, "")[0]


def _bwd_kernel(
    grad_y, x, labels, counts, argmax, mode, tau_m, tau_s, tau_grad, v_th, du_inv_clamp, max_dudt_inv, variant, strategy
):
    _checks.check_devices("srm_suppix_pool_bwd", grad_y=grad_y, x=x, labels=labels, counts=counts, argmax=argmax)
    check_strategy("srm_suppix_pool_bwd", strategy)
    grad_spikes = _pool_backward_kernel(grad_y, labels, argmax if mode == "max" else counts, mode)
    args = (tau_m, tau_s, tau_grad, v_th, du_inv_clamp, max_dudt_inv, variant, False)
    return _neuron_bwd_kernel(grad_spikes, x, None, *args)[0]


# --------------------------------------------------------------------------- schemas, fakes, autograd
_library.define(
    "srm_suppix_pool(Tensor x, Tensor labels, int num_superpixels, str mode, float tau_m, float tau_s,"
    " float tau_grad, float v_th, int variant, bool check_labels, str strategy) -> Tensor",
    _inference_kernel,
)
_library.define(
    "srm_suppix_pool_fwd(Tensor x, Tensor labels, int num_superpixels, str mode, float tau_m, float tau_s,"
    " float tau_grad, float v_th, float du_inv_clamp, float max_dudt_inv, int variant, bool check_labels,"
    " str strategy)"
    " -> (Tensor, Tensor, Tensor)",
    _fwd_kernel,
)
_library.define(
    "srm_suppix_pool_bwd(Tensor grad_y, Tensor x, Tensor labels, Tensor counts, Tensor argmax, str mode,"
    " float tau_m, float tau_s, float tau_grad, float v_th, float du_inv_clamp, float max_dudt_inv, int variant,"
    " str strategy) -> Tensor",
    _bwd_kernel,
)
_INFER = _library.op("srm_suppix_pool")
_FWD = _library.op("srm_suppix_pool_fwd")
_BWD = _library.op("srm_suppix_pool_bwd")

_library.register_no_derivative("srm_suppix_pool_bwd")
# Called directly on an x that needs a gradient, the inference op must not drop the
# gradient silently (autograd's fallback warns and gives None): its backward raises.
_library.register_raising_autograd(
    "srm_suppix_pool",
    "snnspx::srm_suppix_pool is the inference form of the fused op and keeps no state for a "
    "backward: train through snnspx.functional.srm_suppix_pool (which calls "
    "snnspx::srm_suppix_pool_fwd when x needs a gradient)",
)


@torch.library.register_fake("snnspx::srm_suppix_pool")
def _infer_fake(x, labels, num_superpixels, mode, tau_m, tau_s, tau_grad, v_th, variant, check_labels, strategy):
    _checks.check_devices("srm_suppix_pool", x=x, labels=labels)
    T, B, C, _ = x.shape
    return x.new_empty((T, B, C, num_superpixels))


@torch.library.register_fake("snnspx::srm_suppix_pool_fwd")
def _fwd_fake(
    x, labels, num_superpixels, mode, tau_m, tau_s, tau_grad, v_th, du_inv_clamp, max_dudt_inv, variant, check_labels,
    strategy,
):
    _checks.check_devices("srm_suppix_pool_fwd", x=x, labels=labels)
    T, B, C, _ = x.shape
    K = num_superpixels
    y = x.new_empty((T, B, C, K))
    counts = labels.new_empty((labels.shape[0], labels.shape[1], K), dtype=torch.int32)
    argmax = labels.new_empty((T, B, C, K) if mode == "max" else (0,), dtype=torch.int32)
    return y, counts, argmax


@torch.library.register_fake("snnspx::srm_suppix_pool_bwd")
def _bwd_fake(
    grad_y, x, labels, counts, argmax, mode, tau_m, tau_s, tau_grad, v_th, du_inv_clamp, max_dudt_inv, variant, strategy
):
    _checks.check_devices("srm_suppix_pool_bwd", grad_y=grad_y, x=x, labels=labels, counts=counts, argmax=argmax)
    return grad_y.new_empty(x.shape)


# Keeps the op's input x (no tensor of its own per neuron-step): the backward recomputes the
# neuron's factors from it.
def _setup(ctx, inputs, output):
    x, labels, _, mode, tau_m, tau_s, tau_grad, v_th, du_inv_clamp, max_dudt_inv, variant, _, _ = inputs
    _, counts, argmax = output
    ctx.save_for_backward(x, labels, counts, argmax)
    ctx.mark_non_differentiable(counts, argmax)
    # Without this, autograd would zero-fill the (integer) gradients of counts and argmax
    # before calling _backward.
    ctx.set_materialize_grads(False)
    ctx.args = (mode, tau_m, tau_s, tau_grad, v_th, du_inv_clamp, max_dudt_inv, variant)


def _backward(ctx, grad_y, *_unused):
    if grad_y is None:
        return (None,) * 13
    x, labels, counts, argmax = ctx.saved_tensors
    return (_BWD(grad_y, x, labels, counts, argmax, *ctx.args, ""),) + (None,) * 12


_library.register_autograd("srm_suppix_pool_fwd", _backward, _setup)


# --------------------------------------------------------------------------- public wrapper
def srm_suppix_pool(
    x: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_superpixels: int | None = None,
    mode: str = "avg",
    params: SRMParams | None = None,
    check_labels: bool = True,
    backend: str | None = None,
    **neuron,
) -> torch.Tensor:
    """SRM spikes of `x`, pooled per superpixel and step, in one pass.

    Equal, element for element, to
    ``suppix_pool(srm_neuron(x, ...), labels, num_superpixels, mode)``; bitwise for
    ``"sum"`` and ``"max"``, and ``"avg"`` divides the same integer spike count by
    the same pixel count (while a superpixel has at most ``2**24`` spikes at one step:
    beyond, the fused count stays exact and pooling's float32 sum does not). Deterministic:
    spike counts are integers, so the result does not depend on the order of the pixels.

    Memory: the ``"cuda"`` and ``"cpp"`` backends write no ``[T, B, C, H, W]`` tensor
    when no gradient is needed, provided `x` is contiguous in its ``[T, B, C, H, W]``
    order; any other `x` (e.g. the transposed ``[B, T, ...]`` input of
    ``SRMSupPixPool(batch_first=True)``) is first copied to a contiguous tensor. In training
    autograd keeps the op's `x` (with the labels, the per-superpixel counts and, for
    ``"max"``, the argmax) and nothing per neuron-step of its own: the backward runs the
    neuron again from `x`, the same steps and so the same bits. That is no new memory where
    `x` is kept anyway; 4 bytes per float32 neuron-step where `x` is an intermediate (the
    currents of a layer in front) or a contiguous copy. The ``"torch"`` backend runs the
    unfused PyTorch kernels and writes the spikes.

    Gradient for `x`: docs/maths.md §5's pooling backward composed with §3's event-driven
    ``grad_w``. In float32 and float64 the C++ kernel gives the same bits as
    ``srm_neuron`` followed by ``suppix_pool`` on the same backend. In float16/bfloat16,
    ``"sum"`` and ``"max"`` give the same bits too, but ``"avg"`` may differ by one unit
    in the last place: the fused kernel keeps ``g / n`` in float32 and rounds once, at
    the end, where the composition also rounds ``g / n`` to the input dtype before the
    neuron's backward; the fused value is never the farther of the two from the same
    computation in float32. tests/test_fused.py checks all of this on the C++ backend, and every backend
    against the reference composition with ``torch.testing.assert_close`` (the dtype's
    default tolerances).

    Args:
        x: input currents ``[T, B, C, H, W]``.
        labels: int32/int64 superpixel labels ``[H, W]`` (shared by the batch),
            ``[B, H, W]`` or ``[T, B, H, W]`` (one map per step); a negative label
            marks a pixel that belongs to no superpixel.
        num_superpixels: K. None infers ``labels.max() + 1`` (a read-back from the
            GPU before the kernels are queued).
        check_labels: a label ``>= K`` raises ``ValueError``. The compiled ops reduce
            the labels on the device and read the verdict back after their kernels
            are queued (on a GPU the host waits for that small copy, not for the
            kernels).
            ``False`` skips it: pixels with a label ``>= K`` are then ignored, like
            negative ones.
        mode: ``"avg"`` (spike count / pixel count, 0 for an empty superpixel),
            ``"sum"`` or ``"max"`` (1 if any pixel spiked).
        params, **neuron: the neuron's constants and options, as :func:`srm_neuron`. With
            ``grad="surrogate"`` (tensor constants allowed) the result is
            ``suppix_pool(srm_neuron(x, ...), labels, ...)``, differentiated by autograd.
        backend: ``"cuda"``, ``"cpp"`` (fused kernels), ``"torch"`` (the composition of the
            unfused PyTorch kernels), or None. The CUDA kernels run the default neuron only,
            as :func:`srm_forward` says.

    Returns:
        ``y`` ``[T, B, C, K]`` in the dtype of `x`.
    """
    p, constants = SRMParams.make_split(params, **neuron)
    _checks.check_tensor(x, "x")
    if x.dim() != 5:
        raise ValueError(f"x must be [T, B, C, H, W], got shape {tuple(x.shape)}")
    if p.grad == "surrogate" or constants:
        # Plain autograd of the composition (docs/maths.md §6, §9): the fused kernels carry the
        # event-driven gradient only.
        spikes = srm_neuron(x, params=p, backend=backend, **constants)
        return suppix_pool(spikes, labels, num_superpixels=num_superpixels, mode=mode, check_labels=check_labels,
                           backend=backend)
    p.check_dtype(x.dtype)
    layout = _checks.suppix_layout(x, labels, pooled=False)
    _checks.suppix_mode(mode, "exact")
    K, inferred = _checks.num_superpixels(labels, num_superpixels)
    check = _checks.check_flag(check_labels, "check_labels") and not inferred  # an inferred K bounds every label
    b = resolve_neuron(backend, x.device, p)
    xf, lab = layout.data, layout.labels
    with kernels(b, x.device):
        if torch.is_grad_enabled() and x.requires_grad:
            return _FWD(xf, lab, K, mode, *p.neuron_args, check, "")[0]
        return _INFER(xf, lab, K, mode, *p.forward_args, check, "")
