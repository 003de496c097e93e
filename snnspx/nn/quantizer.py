"""The power-of-two fixed-point quantizer (SPEC §7) as a module with a running range."""

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

    Buffers (in ``state_dict``): ``running_min`` (``+inf`` until data is seen),
    ``running_max`` (``-inf``), ``scale_exponent`` (int64, ``-1`` until data is seen; an
    integer, so ``.half()`` cannot overflow it). A quantizer that has never seen data (nor
    loaded a calibrated ``state_dict``) raises ``RuntimeError`` in eval mode rather than
    pass values through unquantized.

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
        self.register_buffer("running_min", torch.tensor(float("inf")))
        self.register_buffer("running_max", torch.tensor(float("-inf")))
        self.register_buffer("scale_exponent", torch.tensor(-1, dtype=torch.int64))
        self._calibrated = False  # mirrors scale_exponent >= 0 without reading a GPU tensor back

    @property
    def scale(self) -> torch.Tensor:
        """``2**scale_exponent`` as a float64 scalar tensor."""
        return torch.exp2(self.scale_exponent.to(torch.float64))

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        lo, hi = torch.aminmax(x.detach())
        self.running_min.copy_(torch.minimum(self.running_min, lo.to(self.running_min.dtype)))
        self.running_max.copy_(torch.maximum(self.running_max, hi.to(self.running_max.dtype)))
        absmax = torch.maximum(self.running_min.abs(), self.running_max.abs())
        self.scale_exponent.copy_(Q.pow2_scale_exponent(absmax, self.bits))
        self._calibrated = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.numel() > 0:
            self._observe(x)
        elif not self._calibrated:
            if x.numel() == 0:
                return x.clone()
            raise RuntimeError(
                "Quantizer has no range yet: call it in training mode on data first (or load a "
                "state_dict of a trained one) before using it in eval mode"
            )
        return Q.quantize(x, self.scale, self.bits, self.rounding)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._calibrated = bool(self.scale_exponent.item() >= 0)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, rounding={self.rounding!r}"
