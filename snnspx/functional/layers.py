"""SRM layers (docs/maths.md §4): synapses (a convolution or a dense map) feeding SRM neurons,
trained with the split spike-time gradient, and the spike-count average pooling between them.

Backward of a synapse + neuron layer with input spikes ``s_in``, weight ``W``, currents
``x = W * s_in`` and output spikes: :func:`srm_backward` turns ``dL/dspikes`` into
``(grad_w, grad_t)``; the weight gradient is the synapse's weight-gradient of ``grad_w``
(as if ``grad_w`` were ``dL/dx``) and the input gradient the synapse's input-gradient of
``grad_t``, scaled by ``input_grad_scale`` and, with ``input_grad_mask`` (the default, as in the
original layers), masked by ``s_in``.
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
from typing import NamedTuple

import torch
import torch.nn.functional as TF
from torch.autograd.function import once_differentiable

from .. import _checks, _library
from .._backend import _assume_constant_result, kernels
from ..params import SRMParams
from .pool2d import spike_avg_pool2d  # re-exported: the op family lives in pool2d.py
from .srm import _srm_event_grads, _srm_event_op, resolve_neuron, srm_neuron

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


class _ConvSynapse(NamedTuple):
    """``x[t] = conv2d(s_in[t], weight)``; its two gradients are ``aten.convolution_backward``'s,
    on every device, so they are exactly what ``nn.Conv2d`` computes for the same ``dL/dx``."""

    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int

    def currents(self, s_in, weight):
        T, B = s_in.shape[:2]
        x = TF.conv2d(s_in.reshape(T * B, *s_in.shape[2:]), weight, None, *self)
        return x.reshape(T, B, *x.shape[1:])

    def _backward(self, grad_x, s_in, weight, mask):
        T, B = s_in.shape[:2]
        return torch.ops.aten.convolution_backward.default(
            grad_x.reshape(T * B, *grad_x.shape[2:]), s_in.reshape(T * B, *s_in.shape[2:]), weight, None,
            list(self.stride), list(self.padding), list(self.dilation), False, [0, 0], self.groups, mask,
        )

    def weight_grad(self, grad_x, s_in, weight):
        return self._backward(grad_x, s_in, weight, [False, True, False])[1]

    def input_grad(self, grad_x, s_in, weight):
        return self._backward(grad_x, s_in, weight, [True, False, False])[0].reshape(s_in.shape)


class _LinearSynapse(NamedTuple):
    """``x = s_in @ weight.T`` over any leading dimensions."""

    def currents(self, s_in, weight):
        return TF.linear(s_in, weight)

    def weight_grad(self, grad_x, s_in, weight):
        rows = math.prod(s_in.shape[:-1])  # not -1: a size may be 0
        return grad_x.reshape(rows, weight.shape[0]).T @ s_in.reshape(rows, weight.shape[1])

    def input_grad(self, grad_x, s_in, weight):
        return grad_x @ weight


# --------------------------------------------------------------------------- input-gradient finish
def _input_grad_kernel(grad, s_in, scale, mask):
    """``spike_input_grad_``'s PyTorch kernel: in place, ``grad * s_in * scale`` where ``s_in``
    is non-zero and 0 elsewhere (`mask`), or ``grad * scale``. The mask by select, not by
    product: in half precision ``grad`` can overflow to inf (e.g. ``v_th <= 0``, a spike with
    ``dut = 0``, ``-1/dut`` clamped to ``-max_dudt_inv``), and inf * 0 would put NaN where
    ``s_in`` is 0; there the gradient is exactly 0."""
    if mask:
        grad.mul_(s_in).mul_(scale).masked_fill_(s_in == 0, 0)
    else:
        grad.mul_(scale)


_library.define(
    "spike_input_grad_(Tensor(a!) grad, Tensor s_in, float scale, bool mask) -> ()", _input_grad_kernel
)
_INPUT_GRAD = _library.op("spike_input_grad_")


@torch.library.register_fake("snnspx::spike_input_grad_")
def _input_grad_fake(grad, s_in, scale, mask):
    return None


class _EventLayer(torch.autograd.Function):
    """A synapse feeding SRM neurons, with the split spike-time gradient (module docstring):
    the weight gradient is the synapse's of ``grad_w``, the input gradient the synapse's of
    ``grad_t``, scaled and (with the mask) multiplied by ``s_in``.

    Kept for the backward: ``s_in`` and ``weight`` (the caller's tensors), the currents ``x``
    (4 bytes per float32 output neuron-step, the only new memory) and the start state; the
    neuron's backward recomputes its traces from ``x`` (``srm_neuron_bwd``). With a carried
    state the chunk is a truncation point (docs/maths.md, "Carried state"): the state gets
    no gradient and the returned state is not differentiable."""

    @staticmethod
    def forward(ctx, s_in, weight, synapse, params, input_grad, backend, state, carried):
        x = synapse.currents(s_in, weight)
        spikes, state_out = _srm_event_op(x, params, backend, state, carried)
        ctx.save_for_backward(s_in, weight, x, state)
        ctx.mark_non_differentiable(state_out)
        ctx.set_materialize_grads(False)
        ctx.synapse, ctx.params, ctx.backend = synapse, params, backend
        ctx.input_grad_scale, ctx.input_grad_mask = input_grad
        return spikes, state_out

    @staticmethod
    @once_differentiable  # the SRM gradient is a surrogate (docs/maths.md §3)
    def backward(ctx, grad_spikes, _grad_state):
        grad_in = grad_weight = None
        if grad_spikes is None:
            return (None,) * 8
        s_in, weight, x, state = ctx.saved_tensors
        want_in = ctx.needs_input_grad[0]
        grad_w, grad_t = _srm_event_grads(grad_spikes, x, state, ctx.params, ctx.backend, want_in)
        if ctx.needs_input_grad[1]:
            grad_weight = ctx.synapse.weight_grad(grad_w, s_in, weight)
        if want_in:
            grad_in = ctx.synapse.input_grad(grad_t, s_in, weight)
            with kernels(ctx.backend, grad_in.device):
                _INPUT_GRAD(grad_in, s_in, ctx.input_grad_scale, ctx.input_grad_mask)
        return grad_in, grad_weight, None, None, None, None, None, None


def _srm_layer(synapse, s_in, weight, params: SRMParams, input_grad: tuple[float, bool], backend: str,
               constants: dict, state, return_state: bool):
    """Spikes of SRM neurons fed by ``synapse.currents(s_in, weight)``: the one place where the
    layers meet the neuron. The neuron's parameter object decides how gradients flow through
    the synapse; the layers pass it on unchanged.

    * ``grad="surrogate"``: the whole layer is plain autograd (the synapse's own backward, the
      neuron's surrogate backward through time); `constants` may hold tensors.
    * ``grad="event"``: the split spike-time gradient of :class:`_EventLayer`; a carried state
      makes each call a truncation point.
    """
    return_state = _checks.check_flag(return_state, "return_state")
    if params.grad == "surrogate":
        x = synapse.currents(s_in, weight)
        # The neuron's channel is dim 2 of [T, B, C, ...]; a dense layer's is its last dim.
        view = (x.shape[0], -1, x.shape[-1]) if isinstance(synapse, _LinearSynapse) else tuple(x.shape)
        if state is not None:
            state = state.reshape(4, *view[1:])
        out = srm_neuron(x.reshape(view), params=params, backend=backend, state=state, return_state=return_state,
                         **constants)
        if not return_state:
            return out.reshape(x.shape)
        return out[0].reshape(x.shape), out[1].reshape(4, *x.shape[1:])
    if constants:
        raise ValueError(
            f"{', '.join(constants)} given as tensors (per-channel or learnable constants) need grad='surrogate': "
            "the event-driven gradient has no derivative for the neuron's constants"
        )
    spikes, state_out = _EventLayer.apply(s_in, weight, synapse, params, input_grad, backend, state,
                                          state is not None or return_state)
    return (spikes, state_out) if return_state else spikes




def _input_grad_args(input_grad_scale, input_grad_mask) -> tuple[float, bool]:
    _checks.check_input_grad_scale(input_grad_scale)
    return float(input_grad_scale), _checks.check_flag(input_grad_mask, "input_grad_mask")


# --------------------------------------------------------------------------- convolution
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
    input_grad_mask: bool = True,
    backend: str | None = None,
    state: torch.Tensor | None = None,
    return_state: bool = False,
    **neuron,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Convolution of input spikes into SRM neurons, split spike-time gradient (docs/maths.md §4).

    Forward: ``x = conv2d(s_in[t], weight)`` for every step (no bias), then the SRM neuron of
    :func:`srm_forward` over the T steps. Backward, from :func:`srm_backward`'s
    ``(grad_w, grad_t)``::

        dL/dweight = conv2d weight-gradient(input=s_in, grad_output=grad_w)
        dL/ds_in   = conv2d input-gradient(grad_output=grad_t, weight) * s_in * input_grad_scale

    both from ``aten.convolution_backward``. ``dL/ds_in`` is a proxy (the gradient of input
    spike times), non-zero only where ``s_in`` is; with ``input_grad_mask=False`` the factor
    ``s_in`` is left out (every input position gets a gradient).

    Memory kept for the backward: ``s_in`` and ``weight`` as given (no copy) and the currents
    ``x``, from which the backward recomputes the neuron's traces: 4 new bytes per float32
    output neuron-step (8 for float64), plus the start state when one is carried. Without
    autograd, nothing.

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
        input_grad_mask: multiply the input-spike gradient by ``s_in`` (True, the default and
            the original's: silent inputs get exactly 0) or not (False).
        backend: the SRM neuron's backend (see :func:`snnspx.backends`).
        state, return_state: the neuron state to start from and whether to return the end
            state too, as :func:`snnspx.functional.srm_neuron` (in event mode each call is a
            truncation point: the gradients are those of the call run from `state`, which
            gets none).

    With ``grad="surrogate"`` in `params` (or `**neuron`) the layer is plain autograd instead:
    the convolution's own backward, the neuron's surrogate backward (:func:`srm_neuron`), no
    ``input_grad_scale`` and no mask; ``tau_m``, ``tau_s``, ``v_th`` may then be tensors (one
    value per output channel, learnable).

    Returns:
        spikes ``[T, B, C_out, H', W']``, dtype of `s_in` (inside ``torch.autocast``, the
        autocast dtype: the convolution runs in it), values 0 or 1.
    """
    conv = _checks.conv2d_params(stride, padding, dilation, groups)
    s_in, weight = _autocast_synapse(s_in, weight)
    _checks.check_srm_conv2d(s_in, weight, conv[3])
    _checks.conv2d_output_size(s_in.shape[-2:], weight.shape[-2:], *conv[:3])
    p, constants = SRMParams.make_split(params, **neuron)
    input_grad = _input_grad_args(input_grad_scale, input_grad_mask)
    b = resolve_neuron(backend, s_in.device, p, carried=state is not None or return_state is True)
    return _srm_layer(_ConvSynapse(*conv), s_in, weight, p, input_grad, b, constants, state, return_state)


# --------------------------------------------------------------------------- linear
def srm_linear(
    s_in: torch.Tensor,
    weight: torch.Tensor,
    *,
    params: SRMParams | None = None,
    input_grad_scale: float = 0.85,
    input_grad_mask: bool = True,
    backend: str | None = None,
    state: torch.Tensor | None = None,
    return_state: bool = False,
    **neuron,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Dense synapses into SRM neurons, with the split spike-time gradient (docs/maths.md §4).

    Forward: ``x = s_in @ weight.T`` (no bias), then :func:`srm_forward` over the T steps.
    Backward, from :func:`srm_backward`'s ``(grad_w, grad_t)``::

        dL/dweight = grad_w^T @ s_in          (summed over T and the batch dimensions)
        dL/ds_in   = (grad_t @ weight) * s_in * input_grad_scale

    The input gradient is masked by ``s_in`` as in :func:`srm_conv2d` and the original
    linear layer; ``input_grad_mask=False`` leaves the factor ``s_in`` out.

    For the standardised weights of :class:`snnspx.nn.SRMLinear`, pass the standardised
    weight (:func:`standardize_weight`); autograd carries ``dL/dweight`` through it.
    Memory kept for the backward as in :func:`srm_conv2d`: 4 new bytes per float32 output
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
    p, constants = SRMParams.make_split(params, **neuron)
    input_grad = _input_grad_args(input_grad_scale, input_grad_mask)
    b = resolve_neuron(backend, s_in.device, p, carried=state is not None or return_state is True)
    return _srm_layer(_LinearSynapse(), s_in, weight, p, input_grad, b, constants, state, return_state)


def standardize_weight(
    weight: torch.Tensor,
    bn_weight: torch.Tensor | None = None,
    bn_bias: torch.Tensor | None = None,
    *,
    eps: float = 1e-5,
) -> torch.Tensor:
    """Each row of `weight` standardised over its inputs, then scaled and shifted per row.

    A row is everything of one output unit or channel: ``weight[o]``, flattened (for a
    convolution ``C_in / groups * kH * kW`` values). Row by row,
    ``(w - mean(w)) / sqrt(var(w) + eps) * bn_weight + bn_bias`` with the unbiased variance
    (docs/maths.md §4, the weight norm of :class:`snnspx.nn.SRMLinear` and
    :class:`snnspx.nn.SRMConv2d`). Ordinary autograd ops: gradients flow to all three tensors.

    Args:
        weight: ``[out_features, in_features]``, or any ``[C_out, ...]`` (e.g. a convolution's
            ``[C_out, C_in / groups, kH, kW]``); at least 2 values per row.
        bn_weight, bn_bias: ``[C_out]`` (one per row) or None (no scaling / no shift).
        eps: added to the variance.

    Returns:
        the shape of `weight`, in its dtype. float16/bfloat16 weights are standardised in
        float32 and rounded once (a float16 variance overflows already for a spread of a few
        hundred).
    """
    _checks.check_standardize_args(weight, bn_weight, bn_bias)
    acc = _checks.acc_dtype(weight.dtype)
    w = weight.to(acc).reshape(weight.shape[0], -1)
    var, mean = torch.var_mean(w, dim=1, correction=1, keepdim=True)
    w = (w - mean) / torch.sqrt(var + eps)
    if bn_weight is not None:
        w = w * bn_weight.to(acc)[:, None]
    if bn_bias is not None:
        w = w + bn_bias.to(acc)[:, None]
    return w.reshape(weight.shape).to(weight.dtype)
