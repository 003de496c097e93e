"""SRM layers (docs/maths.md §4): SRMConv2d, SRMLinear and SpikeAvgPool2d."""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import _checks
from ..functional import layers as F
from ..params import SRMParams
from ._base import SRMModule, backend_repr, check_backend
from .quantizer import Quantizer

__all__ = ["SRMConv2d", "SRMLinear", "SpikeAvgPool2d"]


@torch.no_grad()
def _orthogonal_(w: torch.Tensor) -> None:
    """nn.init.orthogonal_, computed in float32 for float16/bfloat16 weights (its QR has no
    half-precision kernel) and rounded once: the same values as a float32 layer's, rounded."""
    if w.dtype in (torch.float16, torch.bfloat16):
        w32 = torch.empty(w.shape, dtype=torch.float32, device=w.device)
        nn.init.orthogonal_(w32)
        w.copy_(w32)
    else:
        nn.init.orthogonal_(w)


class _SRMLayer(SRMModule):
    """The SRM constants, the layout flag, the input-gradient options, the optional weight
    standardisation (``bn_weight``, ``bn_bias``) and weight quantizer shared by the layers."""

    def __init__(self, params, neuron, input_grad_scale, input_grad_mask, batch_first, weight_bits, weight_rounding,
                 backend, channels, device, dtype):
        super().__init__(params, neuron, batch_first, backend, channels=channels, device=device, dtype=dtype)
        _checks.check_input_grad_scale(input_grad_scale)
        self.input_grad_scale = float(input_grad_scale)
        self.input_grad_mask = _checks.check_flag(input_grad_mask, "input_grad_mask")
        _checks.check_rounding(weight_rounding, "weight_rounding")
        self.weight_quantizer = None if weight_bits is None else Quantizer(weight_bits, weight_rounding)

    def _init_weight(self, shape, weight_norm, eps, device, dtype) -> None:
        """``weight`` of `shape`, and with `weight_norm` ``bn_weight``, ``bn_bias`` of ``[shape[0]]``."""
        self.weight_norm = _checks.check_flag(weight_norm, "weight_norm")
        self.eps = _checks.check_eps(eps)
        if weight_norm and math.prod(shape[1:]) < 2:
            raise ValueError(
                f"weight_norm needs at least 2 inputs per output unit (an unbiased variance per row), "
                f"got a weight of shape {tuple(shape)}"
            )
        kw = dict(device=device, dtype=dtype)
        self.weight = nn.Parameter(torch.empty(shape, **kw))
        if weight_norm:
            self.bn_weight = nn.Parameter(torch.empty(shape[0], **kw))
            self.bn_bias = nn.Parameter(torch.empty(shape[0], **kw))
        else:
            self.register_parameter("bn_weight", None)
            self.register_parameter("bn_bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _orthogonal_(self.weight)
        if self.weight_quantizer is not None:
            self.weight_quantizer.reset_running_stats()
        if self.weight_norm:
            nn.init.ones_(self.bn_weight)
            nn.init.zeros_(self.bn_bias)

    def effective_weight(self) -> torch.Tensor:
        """``W_hat``: the weight the synapses use (standardised, then quantized, as configured).

        With ``weight_bits``, a call in training mode also widens the quantizer's running range.
        """
        w = self.weight
        if self.weight_norm:
            w = F.standardize_weight(w, self.bn_weight, self.bn_bias, eps=self.eps)
        return w if self.weight_quantizer is None else self.weight_quantizer(w)

    def _srm_kwargs(self) -> dict:
        return dict(input_grad_scale=self.input_grad_scale, input_grad_mask=self.input_grad_mask, backend=self.backend,
                    **self._neuron_kwargs())

    def _srm_repr(self) -> str:
        return (f"weight_norm={self.weight_norm}, eps={self.eps}, input_grad_scale={self.input_grad_scale}, "
                f"input_grad_mask={self.input_grad_mask}, " + self._neuron_repr())


class SRMConv2d(_SRMLayer):
    """2-D convolution of input spikes into SRM neurons, trained with the spike-time gradient.

    Per step ``x[t] = conv2d(s_in[t], W_hat)`` (no bias), then the SRM neuron over all T
    steps; the weight gradient is the convolution's weight-gradient of ``grad_w`` and the
    input-spike gradient its input-gradient of ``grad_t``, masked by ``s_in`` (unless
    ``input_grad_mask=False``) and scaled by ``input_grad_scale``
    (:func:`snnspx.functional.srm_conv2d`). ``W_hat`` is ``weight``, or with ``weight_norm``
    each output channel's filter standardised over its ``C_in / groups * kH * kW`` values
    (mean 0, unbiased variance 1, ``eps`` added to the variance), times ``bn_weight`` plus
    ``bn_bias`` per output channel (:func:`snnspx.functional.standardize_weight`, the
    original's conv layer); gradients reach ``weight``, ``bn_weight`` and ``bn_bias`` through it.

    Args:
        in_channels, out_channels: channels of the input spikes and of the neurons.
        kernel_size: int or pair.
        stride, padding, dilation: ints or pairs, as :class:`torch.nn.Conv2d` (padding:
            numbers only, not ``"same"``). Defaults 1, 0, 1.
        groups: blocked connections, as :class:`torch.nn.Conv2d`. Default 1.
        params: the neuron's constants and the backward's clamps (:class:`snnspx.SRMParams`;
            default: its defaults).
        input_grad_scale: factor of the input-spike gradient. Default 0.85 (the original).
        input_grad_mask: multiply the input-spike gradient by the input spikes (True, the
            default and the original's) or not (False).
        weight_norm: standardise each output channel's filter (see above). Default False.
        eps: added to the variance of the standardisation. Default 1e-5.
        batch_first: inputs and outputs are ``[B, T, ...]`` instead of ``[T, B, ...]``.
            Default False.
        weight_bits: if set, the weight passes through a :class:`Quantizer` of that many
            bits (``self.weight_quantizer``) in every forward; its gradient goes straight
            through (with ``weight_norm`` it acts on ``W_hat``). Default None (no quantization).
        weight_rounding: the quantizer's rounding, ``"nearest"`` (default) or ``"truncate"``.
        backend: the SRM neuron's backend (see :func:`snnspx.backends`); None picks one.
        **neuron: fields of :class:`snnspx.SRMParams` that replace those of `params`
            (``SRMConv2d(2, 8, 3, v_th=0.5)``; ``grad="surrogate"`` makes the layer plain
            autograd, docs/maths.md §9), and the module keywords ``learn_tau``,
            ``learn_threshold`` (one value per output channel), ``stateful``, ``step_mode``
            (:class:`snnspx.nn.SRMModule`).

    Shape:
        - Input: spikes ``[T, B, C_in, H, W]`` (``[B, T, ...]`` with ``batch_first``).
        - Output: spikes ``[T, B, C_out, H', W']``, dtype of the input (inside
          ``torch.autocast``, the autocast dtype), values 0 or 1.

    Attributes:
        weight: ``[C_out, C_in / groups, kH, kW]``, orthogonal init (rows over
            ``C_in / groups * kH * kW``), no bias.
        bn_weight, bn_bias: ``[C_out]``, ones and zeros (only with ``weight_norm``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        params: SRMParams | None = None,
        *,
        input_grad_scale: float = 0.85,
        input_grad_mask: bool = True,
        weight_norm: bool = False,
        eps: float = 1e-5,
        batch_first: bool = False,
        weight_bits: int | None = None,
        weight_rounding: str = "nearest",
        backend: str | None = None,
        device=None,
        dtype=None,
        **neuron,
    ) -> None:
        super().__init__(params, neuron, input_grad_scale, input_grad_mask, batch_first, weight_bits, weight_rounding,
                         backend, out_channels, device, dtype)
        self.stride, self.padding, self.dilation, self.groups = _checks.conv2d_params(stride, padding, dilation, groups)
        self.kernel_size = _checks.kernel_pair(kernel_size)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible by groups ({groups})")
        self.in_channels, self.out_channels = in_channels, out_channels
        self._init_weight((out_channels, in_channels // groups, *self.kernel_size), weight_norm, eps, device, dtype)

    def forward(self, s_in: torch.Tensor) -> torch.Tensor:
        return self._run(lambda x, **kw: F.srm_conv2d(
            x, self.effective_weight(), stride=self.stride, padding=self.padding, dilation=self.dilation,
            groups=self.groups, **self._srm_kwargs(), **kw,
        ), s_in)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, " + self._srm_repr()
        )


class SRMLinear(_SRMLayer):
    """Dense synapses from input spikes into SRM neurons, trained with the spike-time gradient.

    ``x = s_in @ W_hat.T`` (no bias), then the SRM neuron over all T steps. With
    ``weight_norm`` (default) ``W_hat`` is each row of ``weight`` standardised over its
    inputs (mean 0, unbiased variance 1, ``eps`` added to the variance), times ``bn_weight``
    plus ``bn_bias`` per output unit (:func:`snnspx.functional.standardize_weight`);
    gradients reach ``weight``, ``bn_weight`` and ``bn_bias`` through it. The input-spike
    gradient is ``(grad_t @ W_hat) * s_in * input_grad_scale``, masked by ``s_in`` as in the
    original; ``input_grad_mask=False`` leaves the factor ``s_in`` out
    (:func:`snnspx.functional.srm_linear`).

    Args:
        in_features, out_features: sizes of the input and of the neuron layer
            (``in_features >= 2`` with ``weight_norm``).
        weight_norm: standardise the weight rows (see above). Default True.
        eps: added to the variance of the standardisation. Default 1e-5.
        Others: as :class:`SRMConv2d`; with ``weight_bits`` the quantizer acts on ``W_hat``.

    Shape:
        - Input: spikes ``[T, B, ..., in_features]`` (``[B, T, ...]`` with ``batch_first``).
        - Output: spikes ``[T, B, ..., out_features]``, dtype of the input (the autocast dtype
          inside ``torch.autocast``).

    Attributes:
        weight: ``[out_features, in_features]``, orthogonal init.
        bn_weight, bn_bias: ``[out_features]``, ones and zeros (only with ``weight_norm``).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        params: SRMParams | None = None,
        *,
        input_grad_scale: float = 0.85,
        input_grad_mask: bool = True,
        weight_norm: bool = True,
        eps: float = 1e-5,
        batch_first: bool = False,
        weight_bits: int | None = None,
        weight_rounding: str = "nearest",
        backend: str | None = None,
        device=None,
        dtype=None,
        **neuron,
    ) -> None:
        super().__init__(params, neuron, input_grad_scale, input_grad_mask, batch_first, weight_bits, weight_rounding,
                         backend, out_features, device, dtype)
        if weight_norm is True and in_features < 2:
            raise ValueError(f"weight_norm needs in_features >= 2 (an unbiased variance per row), got {in_features}")
        self.in_features, self.out_features = in_features, out_features
        self._init_weight((out_features, in_features), weight_norm, eps, device, dtype)

    def forward(self, s_in: torch.Tensor) -> torch.Tensor:
        return self._run(lambda x, **kw: F.srm_linear(x, self.effective_weight(), **self._srm_kwargs(), **kw), s_in)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, " + self._srm_repr()


class SpikeAvgPool2d(nn.Module):
    """Average pooling of spikes per step, with the spike-count gradient of the original.

    Forward: mean over non-overlapping ``kernel_size`` windows (stride = kernel, floor mode).
    Backward: each pixel of a window gets ``g / n``, ``n`` the window's non-zero inputs, 0
    where ``n = 0`` (:func:`snnspx.functional.spike_avg_pool2d`). Autograd keeps the window
    counts only: 1 byte per window, a quarter byte per input for 2x2 windows.

    Args:
        kernel_size: int or pair, also the stride. Default 2.
        batch_first: accepted for symmetry with the other layers; pooling acts on each
            ``[H, W]`` plane, so both layouts pass through unchanged.
        backend: ``"cuda"``, ``"cpp"``, ``"torch"`` or None (default; see
            :func:`snnspx.backends`). An unknown name raises ``ValueError`` here, when the
            module is built.

    Shape:
        - Input: ``[T, B, C, H, W]`` (or ``[B, T, C, H, W]``; any ``[..., H, W]`` with >= 3 dims).
        - Output: ``[T, B, C, H // kH, W // kW]``, same layout and dtype.
    """

    def __init__(self, kernel_size=2, *, batch_first: bool = False, backend: str | None = None) -> None:
        super().__init__()
        self.kernel_size = _checks.kernel_pair(kernel_size)
        check_backend(backend)
        self.batch_first = _checks.check_flag(batch_first, "batch_first")
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.spike_avg_pool2d(x, kernel_size=self.kernel_size, backend=self.backend)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, batch_first={self.batch_first}" + backend_repr(self.backend)
