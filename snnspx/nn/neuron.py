"""nn.Module wrappers of the SRM neuron."""

from __future__ import annotations

import torch

from ..functional import srm as F
from ._base import SRMModule

__all__ = ["SRMNeuron"]


class SRMNeuron(SRMModule):
    """Spike Response Model neuron over all time steps, with the event-driven gradient.

    Args:
        tau_m, tau_s: membrane and synaptic time constants (> 1, different). Default 5, 3.
        tau_grad: time constant of the spike-time gradient trace (> 1). Default 2.5.
        v_th: firing threshold, strict ``u > v_th``. Default 1.
        du_inv_clamp, max_dudt_inv: clamps of the backward (docs/maths.md §3). Defaults 4, 123456789.
        batch_first: inputs are ``[B, T, ...]`` instead of ``[T, B, ...]``.
        backend: force a backend (see :func:`snnspx.backends`); None picks one.

    Shape:
        - Input: ``[T, B, *]`` (or ``[B, T, *]`` with ``batch_first``), float currents.
        - Output: spikes of the same shape and dtype, values 0 or 1.
    """

    def __init__(
        self,
        tau_m: float = 5.0,
        tau_s: float = 3.0,
        tau_grad: float = 2.5,
        v_th: float = 1.0,
        du_inv_clamp: float = 4.0,
        max_dudt_inv: float = 123456789.0,
        batch_first: bool = False,
        backend: str | None = None,
    ) -> None:
        super().__init__(tau_m, tau_s, tau_grad, v_th, du_inv_clamp, max_dudt_inv, batch_first, backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.batch_first:
            if x.dim() < 2:
                raise ValueError(f"x must be [B, T, ...] with batch_first=True, got shape {tuple(x.shape)}")
            x = x.transpose(0, 1)
        out = F.srm_neuron(
            x, self.tau_m, self.tau_s, self.tau_grad, self.v_th, self.du_inv_clamp, self.max_dudt_inv,
            backend=self.backend,
        )
        return out.transpose(0, 1) if self.batch_first else out

    def extra_repr(self) -> str:
        return self._neuron_repr()
