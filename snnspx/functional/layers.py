"""SRM layers (docs/maths.md §4): synapses (a convolution or a dense map) feeding SRM neurons,
trained with the split spike-time gradient, and the spike-count average pooling between them.

Backward of a synapse + neuron layer with input spikes ``s_in``, weight ``W``, currents
``x = W * s_in`` and output spikes: :func:`srm_backward` turns ``dL/dspikes`` into
``(grad_w, grad_t)``; the weight gradient is the synapse's weight-gradient of ``grad_w``
(as if ``grad_w`` were ``dL/dx``) and the input gradient the synapse's input-gradient of
``grad_t``, scaled by ``input_grad_scale`` (and masked by ``s_in`` for the convolution).
The convolution gradients come from PyTorch's own ``aten.convolution_backward``, on every
device, so they are exactly what ``nn.Conv2d`` would compute for that ``dL/dx``.

The gradient is a spike-*time* gradient: at a spike, the incoming ``dL/dspikes`` is read
as the derivative of the loss with respect to the time of that spike
(``grad_w = G * (-1/du) * eps``: a positive ``G`` raises the membrane, so the spike comes
earlier), and ``dL/ds_in`` is the same kind of gradient for the input spikes, so layers
chain. A loss written on spike counts therefore hands the layers ``-dL/dcount`` (an extra
spike needs earlier spikes); ``tests/test_layers.py`` trains a network that way.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as TF
from torch.autograd.function import once_differentiable

from .. import _checks
from .._backend import _assume_constant_result, check_request, resolve
from ..params import SRMParams
from .pool2d import spike_avg_pool2d  # re-exported: the op family lives in pool2d.py
from .srm import srm_backward, srm_forward

__all__ = ["srm_conv2d", "srm_linear", "spike_avg_pool2d", "standardize_weight"]


# --------------------------------------------------------------------------- shared pieces
@_assume_constant_result
def _autocast_available(device_type: str) -> bool:
    """Whether autocast knows this device type (``torch.is_autocast_enabled`` raises for one it
    does not, e.g. "meta"). Constant for a process, so Dynamo takes it as a constant: the
    Dynamo of torch 2.11 cannot trace the C function underneath, and ``fullgraph`` compiles
    of SRM layers failed there."""
    return torch.amp.is_autocast_available(device_type)


def _autocast_synapse(s_in: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inside ``torch.autocast`` the synapse (conv2d or linear) runs in the autocast dtype, as
    the plain PyTorch ops would. The cast happens here, before the autograd Function, so its
    backward sees the dtypes its forward used (a cast made by autocast inside the Function's
    forward would leave the backward mixing float32 and the autocast dtype). Like autocast,
    it casts floating tensors other than float64, before the dtype checks: a previous layer's
    spikes may already be in the autocast dtype while this layer's weight is float32. The
    spikes come out in the autocast dtype."""
    if not (isinstance(s_in, torch.Tensor) and isinstance(weight, torch.Tensor)):
        return s_in, weight  # the checks that follow explain
    dev = s_in.device.type
    if _autocast_available(dev) and torch.is_autocast_enabled(dev):
        dtype = torch.get_autocast_dtype(dev)

        def cast(t):
            return t.to(dtype) if t.is_floating_point() and t.dtype not in (torch.float64, dtype) else t

        s_in, weight = cast(s_in), cast(weight)
    return s_in, weight


def _neuron_forward(ctx, s_in, weight, x, params, input_grad_scale, backend):
    """Run the neurons on currents ``x`` [T, ...] and keep what the backward needs."""
    spikes, du, dut = srm_forward(x, params=params, backend=backend)
    # spikes is this Function's output and s_in its caller's tensor: saving them costs no
    # memory of its own; du and dut are new (4 + 4 bytes per float32 neuron-step).
    ctx.save_for_backward(s_in, weight, spikes, du, dut)
    ctx.params, ctx.input_grad_scale, ctx.backend = params, input_grad_scale, backend
    return spikes


def _neuron_backward(ctx, grad_spikes):
    """``(s_in, weight, grad_w, grad_t)`` from dL/dspikes (docs/maths.md §3)."""
    s_in, weight, spikes, du, dut = ctx.saved_tensors
    grad_w, grad_t = srm_backward(grad_spikes.contiguous(), spikes, du, dut, params=ctx.params, backend=ctx.backend)
    return s_in, weight, grad_w, grad_t


# --------------------------------------------------------------------------- convolution
class _SRMConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s_in, weight, conv, params, input_grad_scale, backend):
        T, B = s_in.shape[:2]
        x = TF.conv2d(s_in.reshape(T * B, *s_in.shape[2:]), weight, None, *conv)
        ctx.conv = conv
        return _neuron_forward(ctx, s_in, weight, x.reshape(T, B, *x.shape[1:]), params, input_grad_scale, backend)

    @staticmethod
    @once_differentiable  # the SRM gradient is a surrogate (docs/maths.md §3)
    def backward(ctx, grad_spikes):
        s_in, weight, grad_w, grad_t = _neuron_backward(ctx, grad_spikes)
        stride, padding, dilation, groups = ctx.conv
        T, B = s_in.shape[:2]
        flat_in = s_in.reshape(T * B, *s_in.shape[2:])

        def conv_backward(grad_out, mask):
            return torch.ops.aten.convolution_backward.default(
                grad_out.reshape(T * B, *grad_out.shape[2:]), flat_in, weight, None,
                list(stride), list(padding), list(dilation), False, [0, 0], groups, mask,
            )

        grad_in = grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = conv_backward(grad_w, [False, True, False])[1]
        if ctx.needs_input_grad[0]:
            grad_in = conv_backward(grad_t, [True, False, False])[0].reshape(s_in.shape)
            # The mask by select, not by product: in half precision grad_t can overflow to inf
            # (e.g. v_th <= 0, a spike with dut = 0, -1/dut clamped to -max_dudt_inv), and
            # inf * 0 would put NaN where s_in is 0; there the gradient is exactly 0.
            grad_in = torch.where(s_in != 0, grad_in * s_in * ctx.input_grad_scale, grad_in.new_zeros(()))
        return grad_in, grad_weight, None, None, None, None


def srm_conv2d(
    s_in: torch.Tensor,
    weight: torch.Tensor,
    *,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    params: SRMParams | None = None,
    input_grad_scale: float = 0.85,
    backend: str | None = None,
    **neuron,
) -> torch.Tensor:
    """Convolution of input spikes into SRM neurons, split spike-time gradient (docs/maths.md §4).

    Forward: ``x = conv2d(s_in[t], weight)`` for every step (no bias), then the SRM neuron of
    :func:`srm_forward` over the T steps. Backward, from :func:`srm_backward`'s
    ``(grad_w, grad_t)``::

        dL/dweight = conv2d weight-gradient(input=s_in, grad_output=grad_w)
        dL/ds_in   = conv2d input-gradient(grad_output=grad_t, weight) * s_in * input_grad_scale

    both from ``aten.convolution_backward``. ``dL/ds_in`` is a proxy (the gradient of input
    spike times), non-zero only where ``s_in`` is.

    Memory kept for the backward: ``s_in`` and ``weight`` as given (no copy) and the output
    spikes (the returned tensor, no copy), plus ``du`` and ``dut``: 8 new bytes per output
    neuron-step (16 for float64).

    Args:
        s_in: input spikes ``[T, B, C_in, H, W]`` (any real values are allowed; the input
            gradient is masked by them).
        weight: ``[C_out, C_in / groups, kH, kW]``, dtype and device of `s_in`.
        stride, padding, dilation: ints or pairs, as :func:`torch.nn.functional.conv2d`
            (padding must be numbers, not ``"same"``).
        groups: blocked connections from input to output channels.
        params, **neuron: the neuron's constants and the backward's clamps (see
            :func:`srm_forward`, :func:`srm_backward`).
        input_grad_scale: factor of the input-spike gradient (0.85 as in the original).
        backend: the SRM neuron's backend (see :func:`snnspx.backends`).

    Returns:
        spikes ``[T, B, C_out, H', W']``, dtype of `s_in` (inside ``torch.autocast``, the
        autocast dtype: the convolution runs in it), values 0 or 1.
    """
    conv = _checks.conv2d_params(stride, padding, dilation, groups)
    s_in, weight = _autocast_synapse(s_in, weight)
    _checks.check_srm_conv2d(s_in, weight, conv[3])
    _checks.conv2d_output_size(s_in.shape[-2:], weight.shape[-2:], *conv[:3])
    p = SRMParams.make(params, **neuron)
    _checks.check_input_grad_scale(input_grad_scale)
    b = resolve(backend, s_in.device)
    return _SRMConv2d.apply(s_in, weight, conv, p, float(input_grad_scale), b)


# --------------------------------------------------------------------------- linear
class _SRMLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s_in, weight, params, input_grad_scale, backend):
        return _neuron_forward(ctx, s_in, weight, TF.linear(s_in, weight), params, input_grad_scale, backend)

    @staticmethod
    @once_differentiable  # the SRM gradient is a surrogate (docs/maths.md §3)
    def backward(ctx, grad_spikes):
        s_in, weight, grad_w, grad_t = _neuron_backward(ctx, grad_spikes)
        grad_in = grad_weight = None
        if ctx.needs_input_grad[1]:
            rows = math.prod(s_in.shape[:-1])  # not -1: a size may be 0
            grad_weight = grad_w.reshape(rows, weight.shape[0]).T @ s_in.reshape(rows, weight.shape[1])
        if ctx.needs_input_grad[0]:
            grad_in = (grad_t @ weight) * ctx.input_grad_scale
        return grad_in, grad_weight, None, None, None


def srm_linear(
    s_in: torch.Tensor,
    weight: torch.Tensor,
    *,
    params: SRMParams | None = None,
    input_grad_scale: float = 0.85,
    backend: str | None = None,
    **neuron,
) -> torch.Tensor:
    """Dense synapses into SRM neurons, with the split spike-time gradient (docs/maths.md §4).

    Forward: ``x = s_in @ weight.T`` (no bias), then :func:`srm_forward` over the T steps.
    Backward, from :func:`srm_backward`'s ``(grad_w, grad_t)``::

        dL/dweight = grad_w^T @ s_in          (summed over T and the batch dimensions)
        dL/ds_in   = (grad_t @ weight) * input_grad_scale

    Unlike :func:`srm_conv2d`, the input gradient is *not* masked by ``s_in``: the
    original linear layer does not mask it, and this keeps that behaviour.

    For the standardised weights of :class:`snnspx.nn.SRMLinear`, pass the standardised
    weight (:func:`standardize_weight`); autograd carries ``dL/dweight`` through it.
    Memory kept for the backward as in :func:`srm_conv2d`: 8 new bytes per float32 output
    neuron-step.

    Args:
        s_in: input spikes ``[T, ..., in_features]``.
        weight: ``[out_features, in_features]``, dtype and device of `s_in`.
        Others: as :func:`srm_conv2d`.

    Returns:
        spikes ``[T, ..., out_features]``, dtype of `s_in` (the autocast dtype inside
        ``torch.autocast``), values 0 or 1.
    """
    s_in, weight = _autocast_synapse(s_in, weight)
    _checks.check_srm_linear(s_in, weight)
    p = SRMParams.make(params, **neuron)
    _checks.check_input_grad_scale(input_grad_scale)
    b = resolve(backend, s_in.device)
    return _SRMLinear.apply(s_in, weight, p, float(input_grad_scale), b)


def standardize_weight(
    weight: torch.Tensor,
    bn_weight: torch.Tensor | None = None,
    bn_bias: torch.Tensor | None = None,
    *,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Each row of `weight` standardised over its inputs, then scaled and shifted per row.

    ``(w - mean(w)) / sqrt(var(w) + eps) * bn_weight + bn_bias`` with the unbiased variance,
    row by row (docs/maths.md §4, the weight norm of :class:`snnspx.nn.SRMLinear`). Ordinary
    autograd ops: gradients flow to all three tensors.

    Args:
        weight: ``[out_features, in_features]``, ``in_features >= 2``.
        bn_weight, bn_bias: ``[out_features]`` or None (no scaling / no shift).
        eps: added to the variance.

    Returns:
        ``[out_features, in_features]`` in the dtype of `weight`. float16/bfloat16 weights are
        standardised in float32 and rounded once (a float16 variance overflows already for a
        spread of a few hundred).
    """
    _checks.check_standardize_args(weight, bn_weight, bn_bias)
    acc = _checks.acc_dtype(weight.dtype)
    w = weight.to(acc)
    var, mean = torch.var_mean(w, dim=1, correction=1, keepdim=True)
    w = (w - mean) / torch.sqrt(var + eps)
    if bn_weight is not None:
        w = w * bn_weight.to(acc)[:, None]
    if bn_bias is not None:
        w = w + bn_bias.to(acc)[:, None]
    return w.to(weight.dtype)
