"""nn.Module wrapper of the SRM neuron."""

from __future__ import annotations

import torch

from ..functional import srm as F
from ..params import SRMParams
from ._base import SRMModule

__all__ = ["SRMNeuron"]


class SRMNeuron(SRMModule):
    """Spike Response Model neuron over all time steps, with the event-driven or a surrogate gradient.

    Args:
        params: the neuron's constants, an :class:`snnspx.SRMParams` (default: its defaults:
            ``tau_m=5, tau_s=3, tau_grad=2.5, v_th=1``, backward clamps 4 and
            :data:`snnspx.MAX_DUDT_INV`).
        batch_first: inputs are ``[B, T, ...]`` instead of ``[T, B, ...]``.
        backend: force a backend (see :func:`snnspx.backends`); None picks one.
        channels: the number of channels (dim 2 of ``[T, B, C, ...]``) for one learned value
            per channel with ``learn_tau``/``learn_threshold``; None: one value in all.
        **neuron: fields of :class:`snnspx.SRMParams` that replace those of `params`
            (``SRMNeuron(v_th=0.5)``, ``SRMNeuron(grad="surrogate")``), and the module keywords
            ``learn_tau``, ``learn_threshold``, ``stateful``, ``step_mode`` (see
            :class:`snnspx.nn.SRMModule`).

    Shape:
        - Input: ``[T, B, *]`` (or ``[B, T, *]`` with ``batch_first``), float currents.
        - Output: spikes of the same shape and dtype, values 0 or 1.
    """

    def __init__(
        self, params: SRMParams | None = None, *, batch_first: bool = False, backend: str | None = None,
        channels: int | None = None, **neuron
    ) -> None:
        super().__init__(params, neuron, batch_first, backend, channels=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(lambda x, **kw: F.srm_neuron(x, backend=self.backend, **self._neuron_kwargs(), **kw), x)

    def extra_repr(self) -> str:
        return self._neuron_repr()
