"""nn.Module wrapper of the SRM neuron."""

from __future__ import annotations

import torch

from ..functional import srm as F
from ..params import SRMParams
from ._base import SRMModule

__all__ = ["SRMNeuron"]


class SRMNeuron(SRMModule):
    """Spike Response Model neuron over all time steps, with the event-driven gradient.

    Args:
        params: the neuron's constants, an :class:`snnspx.SRMParams` (default: its defaults:
            ``tau_m=5, tau_s=3, tau_grad=2.5, v_th=1``, backward clamps 4 and
            :data:`snnspx.MAX_DUDT_INV`).
        batch_first: inputs are ``[B, T, ...]`` instead of ``[T, B, ...]``.
        backend: force a backend (see :func:`snnspx.backends`); None picks one.
        **neuron: fields of :class:`snnspx.SRMParams` that replace those of `params`
            (``SRMNeuron(v_th=0.5)``).

    Shape:
        - Input: ``[T, B, *]`` (or ``[B, T, *]`` with ``batch_first``), float currents.
        - Output: spikes of the same shape and dtype, values 0 or 1.
    """

    def __init__(
        self, params: SRMParams | None = None, *, batch_first: bool = False, backend: str | None = None, **neuron
    ) -> None:
        super().__init__(params, neuron, batch_first, backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.srm_neuron(self._time_major(x), params=self.params, backend=self.backend)
        return out.transpose(0, 1) if self.batch_first else out

    def extra_repr(self) -> str:
        return self._neuron_repr()
