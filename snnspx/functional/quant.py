"""Power-of-two fixed-point quantization with a straight-through gradient (SPEC §7)."""

from __future__ import annotations

import torch

from .. import _checks, reference
from .._backend import resolve_python

__all__ = ["quantize", "pow2_scale_exponent"]

MAX_EXPONENT = 31  # the scale is 2**i, i in 0 .. 31 (as in the original)


def pow2_scale_exponent(absmax: torch.Tensor, bits: int) -> torch.Tensor:
    """The exponent ``i`` of the quantizer's scale ``2**i`` for values in ``[-absmax, absmax]``.

    The largest ``i`` in ``0 .. 31`` with ``round(absmax * 2**i) < 2**(bits - 1)`` (``round``
    half to even). When even ``i = 0`` fails (``absmax >= 2**(bits - 1) - 0.5``, or it is
    not finite), ``i = 0``: the scale is 1 and large values clamp. Computed on the device of
    `absmax` in float64, without reading it back.

    Returns:
        an int64 scalar tensor.
    """
    _checks.check_quantizer_params(bits, "nearest")
    i = torch.arange(MAX_EXPONENT + 1, dtype=torch.float64, device=absmax.device)
    fits = torch.round(absmax.detach().to(torch.float64) * torch.exp2(i)) < 2.0 ** (bits - 1)
    # round(absmax * 2**i) grows with i, so the exponents that fit are a prefix 0 .. n-1.
    return (fits.sum() - 1).clamp(min=0)


def _quantize(x: torch.Tensor, scale: torch.Tensor, bits: int, rounding: str) -> torch.Tensor:
    acc = _checks.acc_dtype(x.dtype)
    s = scale.to(device=x.device, dtype=acc)
    v = x.to(acc) * s
    v = torch.round(v) if rounding == "nearest" else torch.trunc(v)
    q_max = float(2 ** (bits - 1) - 1)
    return (v.clamp(-q_max, q_max) / s).to(x.dtype)


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, bits, rounding):
        return _quantize(x, scale, bits, rounding)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None, None


def quantize(
    x: torch.Tensor,
    scale: torch.Tensor | float,
    bits: int = 8,
    rounding: str = "nearest",
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """``clamp(round(x * scale), -q_max, q_max) / scale``, ``q_max = 2**(bits-1) - 1``.

    The gradient is straight through: ``dL/dx = dL/dy`` everywhere, also where the value
    clamps. ``rounding="nearest"`` uses :func:`torch.round` (ties to even);
    ``"truncate"`` rounds toward zero, as the original's ``x.int()``. Arithmetic is in
    float32 for float16/bfloat16 inputs (the scale may exceed their range) and in the
    dtype of `x` otherwise; with float32 inputs, ``bits > 24`` exceeds the integers that
    float32 represents exactly.

    Args:
        x: any float tensor.
        scale: a power of two, ``2**pow2_scale_exponent(...)`` (Python number or scalar tensor).
        bits: 2 .. 32.
        rounding: ``"nearest"`` or ``"truncate"``.
        backend: ``"reference"`` runs :func:`snnspx.reference.quantize` (loops); every other
            backend the PyTorch ops.
    """
    _checks.check_tensor(x, "x", min_dim=0)
    _checks.check_quantizer_params(bits, rounding)
    if not isinstance(scale, torch.Tensor):
        scale = torch.tensor(float(scale), dtype=torch.float64)
    if resolve_python(backend, x.device) == "reference":
        return reference.quantize(x, scale, bits, rounding)
    return _StraightThrough.apply(x, scale, bits, rounding)
