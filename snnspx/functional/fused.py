"""Fused SRM neuron + superpixel pooling (docs/maths.md §6): wrapper, fake kernels, autograd."""

from __future__ import annotations

import torch

from .. import _checks
from .._backend import resolve
from .srm import register_once_differentiable, register_raising_autograd, srm_neuron

__all__ = ["srm_suppix_pool"]


def srm_suppix_pool(
    x: torch.Tensor,
    labels: torch.Tensor,
    num_superpixels: int | None = None,
    mode: str = "avg",
    tau_m: float = 5.0,
    tau_s: float = 3.0,
    tau_grad: float = 2.5,
    v_th: float = 1.0,
    du_inv_clamp: float = 4.0,
    max_dudt_inv: float = 123456789.0,
    *,
    check_labels: bool = True,
    backend: str | None = None,
) -> torch.Tensor:
    """SRM spikes of `x`, pooled per superpixel and step, in one pass.

    Equal, element for element, to
    ``suppix_pool(srm_neuron(x, ...), labels, num_superpixels, mode)``; bitwise for
    ``"sum"`` and ``"max"``, and ``"avg"`` divides the same integer spike count by
    the same pixel count (while a superpixel has at most ``2**24`` spikes at one step:
    beyond, the fused count stays exact and pooling's float32 sum does not). Deterministic: spike counts are integers, so the result
    does not depend on the order in which pixels are added.

    Memory: the ``"cuda"`` and ``"cpp"`` backends write no ``[T, B, C, H, W]`` tensor
    when no gradient is needed, provided `x` is contiguous in its ``[T, B, C, H, W]``
    order; any other `x` (e.g. the transposed ``[B, T, ...]`` input of
    ``SRMSupPixPool(batch_first=True)``) is first copied to a contiguous tensor. In training
    they keep the SRM neuron's compact backward state (8 bytes per float32 neuron-step).
    The ``"torch"`` and ``"reference"`` backends run the unfused ops and write the spikes.

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
        tau_m, tau_s, tau_grad, v_th, du_inv_clamp, max_dudt_inv: as :func:`srm_neuron`.
        backend: ``"cuda"``, ``"cpp"`` (fused kernels), ``"torch"``, ``"reference"``
            (the composition of the unfused ops), or None.

    Returns:
        ``y`` ``[T, B, C, K]`` in the dtype of `x`.
    """
    _checks.check_tensor(x, "x")
    if x.dim() != 5:
        raise ValueError(f"x must be [T, B, C, H, W], got shape {tuple(x.shape)}")
    _checks.check_srm_params(tau_m, tau_s, tau_grad, v_th)
    _checks.check_backward_params(du_inv_clamp, max_dudt_inv)
    layout = _checks.suppix_layout(x, labels, pooled=False)
    _checks.suppix_mode(mode, "exact")
    K, inferred = _checks.num_superpixels(labels, num_superpixels)
    check = _checks.check_flag(check_labels, "check_labels") and not inferred  # an inferred K bounds every label
    b = resolve(backend, x.device)
    if b in ("torch", "reference"):
        from .suppix import suppix_pool

        spikes = srm_neuron(x, tau_m, tau_s, tau_grad, v_th, du_inv_clamp, max_dudt_inv, backend=b)
        return suppix_pool(spikes, labels, K, mode, check_labels=check, backend=b)
    args = (float(tau_m), float(tau_s), float(tau_grad), float(v_th))
    xf, lab = layout.data, layout.labels
    if torch.is_grad_enabled() and x.requires_grad:
        y = torch.ops.snnspx.srm_suppix_pool_fwd.default(
            xf, lab, K, mode, *args, float(du_inv_clamp), float(max_dudt_inv), check
        )[0]
    else:
        y = torch.ops.snnspx.srm_suppix_pool.default(xf, lab, K, mode, *args, check)
    return y


def _register() -> None:
    lib = "snnspx::"
    register_once_differentiable(lib + "srm_suppix_pool_bwd")
    # Called directly on an x that needs a gradient, the inference op must not drop the
    # gradient silently (autograd's fallback warns and gives None): its backward raises.
    register_raising_autograd(
        lib + "srm_suppix_pool",
        "snnspx::srm_suppix_pool is the inference form of the fused op and keeps no state for a "
        "backward: train through snnspx.functional.srm_suppix_pool (which calls "
        "snnspx::srm_suppix_pool_fwd when x needs a gradient)",
    )

    @torch.library.register_fake(lib + "srm_suppix_pool")
    def _fused_fake(x, labels, num_superpixels, mode, tau_m, tau_s, tau_grad, v_th, check_labels):
        T, B, C, _ = x.shape
        return x.new_empty((T, B, C, num_superpixels))

    @torch.library.register_fake(lib + "srm_suppix_pool_fwd")
    def _fused_fwd_fake(
        x, labels, num_superpixels, mode, tau_m, tau_s, tau_grad, v_th, du_inv_clamp, max_dudt_inv, check_labels
    ):
        T, B, C, P = x.shape
        K = num_superpixels
        y = x.new_empty((T, B, C, K))
        saved = x.new_empty((2, T, B, C, P), dtype=_checks.acc_dtype(x.dtype))
        counts = labels.new_empty((labels.shape[0], labels.shape[1], K), dtype=torch.int32)
        argmax = labels.new_empty((T, B, C, K) if mode == "max" else (0,), dtype=torch.int32)
        return y, saved, counts, argmax

    @torch.library.register_fake(lib + "srm_suppix_pool_bwd")
    def _fused_bwd_fake(grad_y, saved, labels, counts, argmax, mode, tau_m, tau_s, tau_grad):
        return grad_y.new_empty(saved.shape[1:])

    def _setup(ctx, inputs, output):
        _, labels, _, mode, tau_m, tau_s, tau_grad, _, _, _, _ = inputs
        _, saved, counts, argmax = output
        ctx.save_for_backward(saved, labels, counts, argmax)
        ctx.mark_non_differentiable(saved, counts, argmax)
        # Without this, autograd would zero-fill a gradient of each unused output before
        # calling _backward: a [2, T, B, C, H, W] buffer of zeros per step (about as much
        # memory traffic as the backward kernel itself).
        ctx.set_materialize_grads(False)
        ctx.args = (mode, tau_m, tau_s, tau_grad)

    def _backward(ctx, grad_y, *_unused):
        if grad_y is None:
            return (None,) * 11
        saved, labels, counts, argmax = ctx.saved_tensors
        mode, tau_m, tau_s, tau_grad = ctx.args
        grad_x = torch.ops.snnspx.srm_suppix_pool_bwd.default(
            grad_y, saved, labels, counts, argmax, mode, tau_m, tau_s, tau_grad
        )
        return (grad_x,) + (None,) * 10

    torch.library.register_autograd(lib + "srm_suppix_pool_fwd", _backward, setup_context=_setup)
