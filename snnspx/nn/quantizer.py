"""The power-of-two fixed-point quantizer (docs/maths.md §7) as a module with a running range."""

from __future__ import annotations

import torch
from torch import nn

from .. import _checks
from ..functional import quant as Q

__all__ = ["Quantizer"]


class Quantizer(nn.Module):
    """Fixed point with a power-of-two scale fitted to the range seen in training.

    In training mode every call widens the running range to what it sees
    (``running_min = min(running_min, x.min())``, ``running_max`` likewise: the extremes over
    all batches, not a moving average) and refits the scale ``2**scale_exponent``, the largest
    ``2**i``, ``i`` in 0..31, with ``round(max(|running_min|, |running_max|) * 2**i) < 2**(bits-1)``
    (when none fits, ``i = 0``: scale 1, and the values beyond ``q_max`` clamp). In eval mode
    nothing changes: the scale is frozen. The output is
    ``clamp(round(x * scale), -q_max, q_max) / scale``, ``q_max = 2**(bits-1) - 1``, and the
    gradient goes straight through (identity, also where values clamp); see
    :func:`snnspx.functional.quantize`.

    Non-finite values (NaN, ``+-inf``) are left out of the running range, so one bad batch
    cannot pin the scale: ``min``/``max`` above are over the finite values of ``x``, and a
    batch with no finite value leaves all three buffers unchanged. They still go through the
    quantization like any other value: NaN stays NaN in the output, ``+-inf`` clamps to
    ``+-q_max / scale``. (A range that holds NaN, e.g. from an old checkpoint, is replaced by
    the next batch's finite range.) Checking is done on the device: no read-back per call.

    Buffers (in ``state_dict``): ``running_min`` (``+inf`` until data is seen) and
    ``running_max`` (``-inf``), float64 whatever the module's dtype (``.half()`` or
    ``.to(dtype)`` keep them float64 and only move them: a range in half precision would
    round, and overflow to inf above 65504, which moves the fitted scale), and
    ``scale_exponent`` (int64, ``-1`` until a finite value is seen). A quantizer that has seen no
    finite value (nor loaded a calibrated ``state_dict``) raises ``RuntimeError`` in eval
    mode rather than pass values through unquantized; in training mode it quantizes such a
    batch with scale 1. Whether it has is read back from the device once, when the module
    is switched to eval mode (``.eval()``/``.train(False)``), never inside ``forward`` there.

    Args:
        bits: word length b, 2..32 (8 by default).
        rounding: ``"nearest"`` (default; :func:`torch.round`, ties to even) or ``"truncate"``
            (toward zero, the original's ``x.int()``).

    Shape:
        any; the output has the shape and dtype of the input.
    """

    def __init__(self, bits: int = 8, rounding: str = "nearest") -> None:
        super().__init__()
        _checks.check_quantizer_params(bits, rounding)
        self.bits, self.rounding = bits, rounding
        self.register_buffer("running_min", torch.empty((), dtype=torch.float64))
        self.register_buffer("running_max", torch.empty((), dtype=torch.float64))
        self.register_buffer("scale_exponent", torch.empty((), dtype=torch.int64))
        # Whether scale_exponent >= 0, kept on the host so that forward never reads a GPU
        # tensor back: True / False when known, None after training batches whose finiteness
        # only the device knows (resolved by train(False), i.e. .eval()).
        self._calibrated: bool | None = False
        self.reset_running_stats()  # the initial values

    @torch.no_grad()
    def reset_running_stats(self) -> None:
        """Forget the range: the buffers back to ``+inf``, ``-inf`` and ``-1``, as when built
        (also what a module made on the ``meta`` device needs after ``to_empty``)."""
        self.running_min.fill_(float("inf"))
        self.running_max.fill_(float("-inf"))
        self.scale_exponent.fill_(-1)
        self._calibrated = False

    def _apply(self, fn, recurse=True):
        # The running range stays float64 whatever fn does to dtypes (.half(), .to(dtype));
        # only its device follows. fn's own result gives the device and, for to_empty() or a
        # meta tensor (no data to copy), the values.
        exact = (self.running_min, self.running_max)
        super()._apply(fn, recurse)
        for name, old in zip(("running_min", "running_max"), exact):
            new = getattr(self, name)
            if new.dtype != torch.float64:
                src = new if old.is_meta or new.is_meta else old
                setattr(self, name, src.to(device=new.device, dtype=torch.float64))
        return self

    @property
    def scale(self) -> torch.Tensor:
        """``2**scale_exponent`` as a float64 scalar tensor (0.5 until a finite value is seen,
        when ``scale_exponent`` is -1; ``forward`` then uses 1)."""
        return torch.exp2(self.scale_exponent.to(torch.float64))

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        x = x.detach()
        finite = torch.isfinite(x)
        lo = x.masked_fill(~finite, float("inf")).amin()  # +inf when no value is finite
        hi = x.masked_fill(~finite, float("-inf")).amax()
        # fmin/fmax: a NaN already in the buffer (an old checkpoint) gives way to the batch's range.
        # The buffers are float64: every input dtype converts to them exactly.
        self.running_min.copy_(torch.fmin(self.running_min, lo.to(torch.float64)))
        self.running_max.copy_(torch.fmax(self.running_max, hi.to(torch.float64)))
        seen = self.running_min <= self.running_max  # false while no finite value has been seen
        absmax = torch.maximum(self.running_min.abs(), self.running_max.abs())
        fitted = Q.pow2_scale_exponent(absmax, self.bits)
        self.scale_exponent.copy_(torch.where(seen, fitted, self.scale_exponent))
        if self._calibrated is not True:
            self._calibrated = None

    def _resolve_calibrated(self) -> bool:
        if self._calibrated is None:
            self._calibrated = bool(self.scale_exponent.item() >= 0)
        return self._calibrated

    def train(self, mode: bool = True) -> "Quantizer":
        if not mode:
            self._resolve_calibrated()  # the one read-back, outside any forward
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _checks.check_tensor(x, "x", min_dim=0)
        if x.numel() == 0:
            return x.clone()  # nothing to quantize, and an empty batch carries no range
        if self.training:
            self._observe(x)
        elif not self._resolve_calibrated():
            raise RuntimeError(
                "Quantizer has no range yet: call it in training mode on data with finite values "
                "first (or load a state_dict of a trained one) before using it in eval mode"
            )
        # In training, before any finite value was seen (scale_exponent -1), scale 1.
        scale = torch.exp2(self.scale_exponent.clamp(min=0).to(torch.float64))
        return Q.quantize(x, scale, bits=self.bits, rounding=self.rounding)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._calibrated = bool(self.scale_exponent.item() >= 0)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, rounding={self.rounding!r}"
