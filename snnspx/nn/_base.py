"""What every SRM module shares: its neuron constants (an SRMParams), the layout flag, the backend."""

from __future__ import annotations

import dataclasses

from torch import nn

from .. import _checks
from .._backend import check_name
from ..params import SRMParams


def check_backend(backend) -> str | None:
    """A module's `backend` argument, checked when the module is built rather than at its first call."""
    if backend is not None:
        check_name(backend)
    return backend


def backend_repr(backend: str | None) -> str:
    """The ``extra_repr`` suffix of a module's `backend`: empty unless one is forced."""
    return "" if backend is None else f", backend={backend!r}"


class SRMModule(nn.Module):
    """Holds ``params`` (:class:`snnspx.SRMParams`, built from `params` and the `neuron`
    keywords), ``batch_first`` and ``backend`` for SRMNeuron, SRMSupPixPool and the SRM layers.
    The fields of ``params`` read as attributes too (``module.tau_m``); to change them, assign
    a new ``params``."""

    def __init__(self, params: SRMParams | None, neuron: dict, batch_first: bool, backend: str | None) -> None:
        super().__init__()
        self.params = SRMParams.make(params, **neuron)
        self.batch_first = _checks.check_flag(batch_first, "batch_first")
        self.backend = check_backend(backend)

    def _time_major(self, x, full_dim: int | None = None):
        """``x`` ``[T, B, ...]``: transposed from ``[B, T, ...]`` with ``batch_first``."""
        if not self.batch_first:
            return x
        if x.dim() < 2 or (full_dim is not None and x.dim() != full_dim):
            want = "[B, T, ...]" if full_dim is None else "[B, T, C, H, W]"
            raise ValueError(f"x must be {want} with batch_first=True, got shape {tuple(x.shape)}")
        return x.transpose(0, 1)

    def _neuron_repr(self) -> str:
        """The neuron constants, the layout flag and a forced backend, for extra_repr."""
        fields = ", ".join(f"{f}={getattr(self.params, f)!r}" for f in _PARAM_FIELDS)
        return f"{fields}, batch_first={self.batch_first}" + backend_repr(self.backend)


_PARAM_FIELDS = tuple(f.name for f in dataclasses.fields(SRMParams))


def _field(name: str) -> property:
    return property(lambda self: getattr(self.params, name), doc=f"``params.{name}`` (read-only).")


for _name in _PARAM_FIELDS:
    setattr(SRMModule, _name, _field(_name))
