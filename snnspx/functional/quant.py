"""Power-of-two fixed-point quantization with a straight-through gradient (docs/maths.md §7)."""

from __future__ import annotations

import math

import torch

from .. import _checks
from .._backend import check_request

__all__ = ["quantize", "pow2_scale_exponent"]

MAX_EXPONENT = 31  # the scale is 2**i, i in 0 .. 31 (as in the original)


def pow2_scale_exponent(absmax: torch.Tensor | float, bits: int) -> torch.Tensor:
    """The exponent ``i`` of the quantizer's scale ``2**i`` for values in ``[-absmax, absmax]``.

    The largest ``i`` in ``0 .. 31`` with ``round(|absmax| * 2**i) < 2**(bits - 1)`` (``round``
    half to even). When even ``i = 0`` fails (``|absmax| >= 2**(bits - 1) - 0.5``, or it is
    not finite: NaN included), ``i = 0``: the scale is 1 and large values clamp.

    `absmax` is read as a magnitude: a negative value gives the exponent of its absolute
    value (the range ``[-|absmax|, |absmax|]``), the same on every device, as telling a
    negative tensor value apart would need a read-back.

    Args:
        absmax: one value: a Python number (computed on the CPU) or a one-element real
            tensor (any shape with one element; computed on its device in float64, without
            reading it back). A tensor of several values raises ``ValueError``, any other
            type (or a bool/complex tensor) ``TypeError``.
        bits: 2 .. 32.

    Returns:
        an int64 scalar (0-dim) tensor on the device of `absmax` (the CPU for a number).
    """
    _checks.check_quantizer_params(bits, "nearest")
    if isinstance(absmax, torch.Tensor):
        _checks.check_one_value_tensor(absmax, "absmax")
        a = absmax.detach().reshape(()).to(torch.float64)
    elif _checks.is_real_number(absmax):
        a = torch.tensor(_checks.number_as_float(absmax), dtype=torch.float64)
    else:
        raise TypeError(f"absmax must be a Python number or a one-element tensor, got {type(absmax).__name__}")
    i = torch.arange(MAX_EXPONENT + 1, dtype=torch.float64, device=a.device)
    fits = torch.round(a.abs() * torch.exp2(i)) < 2.0 ** (bits - 1)
    # round(|absmax| * 2**i) grows with i, so the exponents that fit are a prefix 0 .. n-1.
    return (fits.sum() - 1).clamp(min=0)


def _scale_error(scale, acc: torch.dtype) -> ValueError:
    fi = torch.finfo(acc)
    return ValueError(
        f"scale must be a positive power of two (2**i, e.g. 2 ** pow2_scale_exponent(...)) in "
        f"{acc}'s normal range [2**{math.frexp(fi.tiny)[1] - 1}, 2**{math.frexp(fi.max)[1] - 1}] "
        f"(the arithmetic dtype here), got {scale!r}"
    )


def _check_scale_value(s: float, acc: torch.dtype) -> None:
    fi = torch.finfo(acc)
    if not (math.isfinite(s) and fi.tiny <= s <= fi.max and math.frexp(s)[0] == 0.5):
        raise _scale_error(s, acc)


def _quantize(x: torch.Tensor, scale: torch.Tensor, bits: int, rounding: str) -> torch.Tensor:
    acc = _checks.acc_dtype(x.dtype)
    s = scale.to(device=x.device, dtype=acc)
    # The value of a tensor scale is checked here, on its device (no read-back): anything but
    # a positive power of two in acc's normal range becomes NaN, so the whole output is NaN
    # rather than silently quantized on a wrong grid.
    mantissa, _ = torch.frexp(s)
    fi = torch.finfo(acc)
    ok = (mantissa == 0.5) & (s >= fi.tiny) & (s <= fi.max)
    s = torch.where(ok, s, torch.full_like(s, float("nan")))
    v = x.to(acc) * s
    v = torch.round(v) if rounding == "nearest" else torch.trunc(v)
    q_max = float(2 ** (bits - 1) - 1)
    return _checks.cast_output(v.clamp(-q_max, q_max) / s, x.dtype)


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
    *,
    bits: int = 8,
    rounding: str = "nearest",
    backend: str | None = None,
) -> torch.Tensor:
    """``clamp(round(x * scale), -q_max, q_max) / scale``, ``q_max = 2**(bits-1) - 1``.

    The gradient is straight through: ``dL/dx = dL/dy`` everywhere, also where the value
    clamps. ``rounding="nearest"`` uses :func:`torch.round` (ties to even);
    ``"truncate"`` rounds toward zero, as the original's ``x.int()``. Arithmetic is in
    float32 for float16/bfloat16 inputs (the scale may exceed their range) and in the
    dtype of `x` otherwise; with float32 inputs, ``bits > 24`` exceeds the integers that
    float32 represents exactly. NaN in `x` gives NaN, ``+-inf`` clamps to ``+-q_max / scale``.

    What is checked about `scale`: it must be a positive power of two ``2**i`` (any integer
    ``i``, e.g. ``2 ** pow2_scale_exponent(...)``) in the normal range of the arithmetic dtype
    (``2**-126 .. 2**127`` for float32). A Python number that is not raises ``ValueError``
    (under ``torch.compile``, where it may be a symbolic float, it is checked like a tensor). A
    tensor must be a real one-element tensor (else ``TypeError``/``ValueError``), but its value
    is not read back (that would synchronise a GPU and break ``torch.compile`` graphs): an
    invalid value (0, negative, NaN, not a power of two) makes the whole output NaN instead.

    Args:
        x: any float tensor.
        scale: a positive power of two: a Python number or a one-element real tensor.
        bits: 2 .. 32.
        rounding: ``"nearest"`` or ``"truncate"``.
        backend: checked like every op's (see :func:`snnspx.backends`); every backend runs
            the same PyTorch ops (there is no compiled kernel).
    """
    _checks.check_tensor(x, "x", min_dim=0)
    _checks.check_quantizer_params(bits, rounding)
    acc = _checks.acc_dtype(x.dtype)
    if isinstance(scale, torch.Tensor):
        _checks.check_one_value_tensor(scale, "scale")
        scale = scale.detach().reshape(())
    elif _checks.is_real_number(scale):
        s = _checks.number_as_float(scale)
        if not torch.compiler.is_compiling():
            _check_scale_value(s, acc)
        # Under torch.compile a float argument may be symbolic, and math.frexp cannot trace it:
        # the scale is then checked like a tensor one, on the device (an invalid one gives NaN).
        scale = torch.scalar_tensor(s, dtype=torch.float64)
    else:
        raise TypeError(f"scale must be a Python number or a one-element tensor, got {type(scale).__name__}")
    check_request(backend, x.device)
    return _StraightThrough.apply(x, scale, bits, rounding)
