"""Learnable neuron constants (docs/maths.md §10) and the state a module carries (§11)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as TF

# The smallest |tau_m - tau_s| and tau - 1 the parametrisation allows: c = tau_m / (tau_m - tau_s)
# stays finite, the decays 1 - 1/tau stay apart in float32 for time constants up to about 130
# (snnspx.SRMParams.check_dtype), and a time constant never rounds to 1.
MIN_TAU_GAP = 0.1


def _softplus_inverse(v: float) -> float:
    """The p with softplus(p) = v, for v > 0."""
    return v + math.log(-math.expm1(-v))


class LearnableConstants(nn.Module):
    """``tau_m``, ``tau_s`` (with `learn_tau`) and ``v_th`` (with `learn_threshold`) as
    parameters, one value per channel (`channels`) or one in all.

    Parametrisation, which keeps the time constants valid whatever the optimiser does: the
    smaller of the two initial time constants is ``1 + MIN_TAU_GAP + softplus(p_low)`` and the
    larger ``that + MIN_TAU_GAP + softplus(p_gap)``, with ``MIN_TAU_GAP = 0.1``: both stay above
    1.1, and ``tau_m`` stays on the side of ``tau_s`` it started on, at least 0.1 away. ``v_th``
    is its own parameter.

    Attributes:
        tau_low, tau_gap: the raw parameters of the time constants (``[channels]`` or ``[]``).
        v_th: the threshold parameter.
    """

    def __init__(self, tau_m: float, tau_s: float, v_th: float, *, learn_tau: bool, learn_threshold: bool,
                 channels: int | None, device=None, dtype=None) -> None:
        super().__init__()
        if channels is not None and (not isinstance(channels, int) or isinstance(channels, bool) or channels < 1):
            raise ValueError(f"channels must be a positive int or None, got {channels!r}")
        if learn_tau and (abs(tau_m - tau_s) <= MIN_TAU_GAP or min(tau_m, tau_s) <= 1 + MIN_TAU_GAP):
            raise ValueError(
                f"learn_tau needs |tau_m - tau_s| > {MIN_TAU_GAP} and both > {1 + MIN_TAU_GAP} at the start "
                f"(got tau_m={tau_m}, tau_s={tau_s})"
            )
        shape = () if channels is None else (channels,)
        self.m_is_larger = tau_m > tau_s
        self.learn_tau, self.learn_threshold = learn_tau, learn_threshold
        if learn_tau:
            low, high = min(tau_m, tau_s), max(tau_m, tau_s)
            kw = dict(device=device, dtype=dtype)
            self.tau_low = nn.Parameter(torch.full(shape, _softplus_inverse(low - 1.0 - MIN_TAU_GAP), **kw))
            self.tau_gap = nn.Parameter(torch.full(shape, _softplus_inverse(high - low - MIN_TAU_GAP), **kw))
        if learn_threshold:
            self.v_th = nn.Parameter(torch.full(shape, float(v_th), device=device, dtype=dtype))

    def forward(self) -> dict[str, torch.Tensor]:
        """The learned constants as tensors, keyed as the neuron's keywords."""
        out = {}
        if self.learn_tau:
            low = 1.0 + MIN_TAU_GAP + TF.softplus(self.tau_low)
            high = low + MIN_TAU_GAP + TF.softplus(self.tau_gap)
            out["tau_m"], out["tau_s"] = (high, low) if self.m_is_larger else (low, high)
        if self.learn_threshold:
            out["v_th"] = self.v_th
        return out

    def extra_repr(self) -> str:
        return f"learn_tau={self.learn_tau}, learn_threshold={self.learn_threshold}"
