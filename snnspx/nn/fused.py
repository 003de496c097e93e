"""nn.Module of the fused SRM neuron + superpixel pooling."""

from __future__ import annotations

import torch

from .. import _checks
from ..functional.fused import srm_suppix_pool
from ..functional.srm import srm_neuron
from ..functional.suppix import suppix_pool
from ._base import SRMModule

__all__ = ["SRMSupPixPool"]


class SRMSupPixPool(SRMModule):
    """SRM spikes pooled per superpixel and step, fused in one kernel (docs/maths.md §6).

    Args:
        mode: ``"avg"`` (default) | ``"sum"`` | ``"max"``.
        num_superpixels: K, or None (default) to infer ``labels.max() + 1`` on every call
            (a GPU read-back; give K under ``torch.compile``).
        params: the neuron's constants (:class:`snnspx.SRMParams`; default: its defaults).
        batch_first: `x` is ``[B, T, C, H, W]`` and the output ``[B, T, C, K]``; per-step
            labels are then ``[B, T, H, W]``. Default False. With True the fused kernels
            work on a time-major copy of `x`.
        backend: force a backend (see :func:`snnspx.backends`); None (default) picks one.
        check_labels: raise ``ValueError`` on a label ``>= K`` (default); ``False``
            ignores such pixels and saves the check's read-back (see the functional form).
        channels: for one learned value per channel (``learn_tau``/``learn_threshold``), C.
        **neuron: fields of :class:`snnspx.SRMParams` that replace those of `params`, and the
            module keywords ``learn_tau``, ``learn_threshold``, ``stateful``
            (:class:`snnspx.nn.SRMModule`). In surrogate mode or with learned constants the
            functional op composes the neuron and the pooling (docs/maths.md §6); with a
            carried state so does the module, since the fused kernel carries none.

    Shape:
        - x: ``[T, B, C, H, W]`` currents (``[B, T, C, H, W]`` with ``batch_first``).
        - labels: ``[H, W]``, ``[B, H, W]`` or ``[T, B, H, W]`` int32/int64.
        - Output: ``[T, B, C, K]`` (``[B, T, C, K]`` with ``batch_first``), dtype of x.
    """

    def __init__(
        self,
        mode: str = "avg",
        num_superpixels: int | None = None,
        params: SRMParams | None = None,
        *,
        batch_first: bool = False,
        backend: str | None = None,
        check_labels: bool = True,
        channels: int | None = None,
        **neuron,
    ) -> None:
        super().__init__(params, neuron, batch_first, backend, channels=channels)
        if self.step_mode != "multi":
            raise ValueError("SRMSupPixPool runs whole sequences: step_mode must be 'multi'")
        _checks.suppix_mode(mode, "exact")
        if num_superpixels is not None:
            _checks.num_superpixels(torch.empty(0), num_superpixels)
        self.mode, self.num_superpixels = mode, num_superpixels
        self.check_labels = _checks.check_flag(check_labels, "check_labels")

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = self._time_major(x, full_dim=5)
        if self.batch_first and labels.dim() == 4:
            labels = labels.transpose(0, 1)
        if not self.stateful:  # the functional op also composes for surrogate mode and learned constants
            y = srm_suppix_pool(
                x, labels, num_superpixels=self.num_superpixels, mode=self.mode, check_labels=self.check_labels,
                backend=self.backend, **self._neuron_kwargs(),
            )
        else:
            spikes = self._carry(lambda x, **kw: srm_neuron(x, backend=self.backend, **self._neuron_kwargs(), **kw), x)
            y = suppix_pool(spikes, labels, num_superpixels=self.num_superpixels, mode=self.mode,
                            check_labels=self.check_labels, backend=self.backend)
        return y.transpose(0, 1) if self.batch_first else y

    def extra_repr(self) -> str:
        return (
            f"mode={self.mode!r}, num_superpixels={self.num_superpixels}, " + self._neuron_repr()
            + f", check_labels={self.check_labels}"
        )
