"""Dropout for spike trains: one mask per sample, kept for all T steps."""

from __future__ import annotations

import numbers

import torch
from torch import nn

from .. import _checks

__all__ = ["SpikeDropout"]

_MASKS = ("channel", "neuron")


class SpikeDropout(nn.Module):
    """Drops whole channels (or single neurons) of each sample for every step, scaling the rest.

    In training mode, each sample draws one keep mask, kept for all T steps (per-step
    dropout would turn a neuron on and off inside one spike train); kept values are
    multiplied by ``1 / (1 - p)``, dropped ones are 0. The gradient follows the same mask and
    scale. The original's dropout layer does this per channel of ``[T, B, C, H, W]`` and per
    feature of ``[T, B, N]``.

    * ``mask="channel"``: one draw per (sample, channel): channel ``c`` (dim 2 of
      ``[T, B, C, ...]``) of sample ``b`` is dropped at every step and position.
    * ``mask="neuron"``: one draw per (sample, neuron): every position of ``x[0]`` on its own,
      at every step. For ``[T, B, N]`` the two modes are the same.

    In eval mode and for ``p == 0`` the input is returned unchanged; ``p == 1`` drops
    everything (zeros, as :class:`torch.nn.Dropout`). The draws use the global random
    generator of the input's device (``torch.manual_seed`` repeats them).

    Args:
        p: probability of dropping, in ``[0, 1]``. Default 0.5.
        mask: ``"channel"`` (default) or ``"neuron"``.
        batch_first: inputs are ``[B, T, ...]`` instead of ``[T, B, ...]``. Default False.

    Shape:
        - Input: ``[T, B, C, ...]`` (at least 3 dimensions; ``[B, T, C, ...]`` with
          ``batch_first``), any floating dtype.
        - Output: the same shape and dtype.
    """

    def __init__(self, p: float = 0.5, *, mask: str = "channel", batch_first: bool = False) -> None:
        super().__init__()
        if not isinstance(p, numbers.Real) or isinstance(p, bool):
            raise TypeError(f"p must be a Python number in [0, 1], got {type(p).__name__}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        if mask not in _MASKS:
            raise ValueError(f"mask must be 'channel' or 'neuron', got {mask!r}")
        self.p = float(p)
        self.mask = mask
        self.batch_first = _checks.check_flag(batch_first, "batch_first")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() < 3:
            layout = "[B, T, C, ...]" if self.batch_first else "[T, B, C, ...]"
            raise ValueError(f"x must be {layout} (at least 3 dimensions), got shape {tuple(x.shape)}")
        if not self.training or self.p == 0.0:
            return x
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
        # the mask's shape: x's with the time dimension (and, per channel, the positions) as 1
        shape = list(x.shape)
        shape[1 if self.batch_first else 0] = 1
        if self.mask == "channel":
            shape[3:] = [1] * (x.dim() - 3)
        if self.p == 1.0:
            return x * x.new_zeros(shape)
        keep = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(1.0 - self.p)
        return x * (keep / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}, mask={self.mask!r}, batch_first={self.batch_first}"
