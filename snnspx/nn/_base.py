"""What every SRM module shares: its neuron constants (an SRMParams), the layout flag, the backend."""

from __future__ import annotations

import dataclasses

from torch import nn

from .. import _checks
from .._backend import check_name
from ..params import SRMParams
from ._constants import LearnableConstants


def check_backend(backend) -> str | None:
    """A module's `backend` argument, checked when the module is built rather than at its first call."""
    if backend is not None:
        check_name(backend)
    return backend


def backend_repr(backend: str | None) -> str:
    """The ``extra_repr`` suffix of a module's `backend`: empty unless one is forced."""
    return "" if backend is None else f", backend={backend!r}"


# The module keywords that are not SRMParams fields (SRMModule's docstring).
_MODULE_KEYWORDS = ("learn_tau", "learn_threshold", "stateful", "step_mode")


class SRMModule(nn.Module):
    """Holds ``params`` (:class:`snnspx.SRMParams`, built from `params` and the `neuron`
    keywords), ``batch_first`` and ``backend`` for SRMNeuron, SRMSupPixPool and the SRM layers.
    The fields of ``params`` read as attributes too (``module.tau_m``); to change them, assign
    a new ``params``.

    Besides the fields of :class:`snnspx.SRMParams`, every SRM module takes these keywords
    (docs/maths.md §10-§11):

    Args:
        learn_tau: learn ``tau_m`` and ``tau_s``, one value per channel (per output channel or
            feature of a layer; ``SRMNeuron`` takes ``channels=``, else one value in all), kept
            valid by the parametrisation of :class:`snnspx.nn.LearnableConstants`. Needs
            ``grad="surrogate"``.
        learn_threshold: learn ``v_th`` the same way (any real value). Needs ``grad="surrogate"``.
        stateful: carry the neuron state ``(m, s, g, u_last)`` from one call to the next, so that
            a sequence may be fed in chunks (bit for bit the spikes of one call); :meth:`reset_state`
            (or :func:`snnspx.nn.reset_state` on a model) starts a new sequence. In surrogate mode the
            carried state is differentiable: gradients cross chunks until :meth:`detach_state`
            (truncated backpropagation through time: call :func:`snnspx.nn.detach_state` after each
            ``backward``) or the reset. In event mode a chunk's end is a truncation point (the
            event-driven gradient runs within each call). Call :meth:`reset_state` before changing the module's dtype or device.
        step_mode: ``"multi"`` (inputs ``[T, B, ...]``, the default) or ``"single"`` (one step
            ``[B, ...]`` per call; needs ``stateful=True``). In event mode each call is a chunk,
            so single steps train with the event-driven gradient cut to one step (an input
            gets credit only for a spike at its own step): train single-step models with
            ``grad="surrogate"``, whose gradient crosses the calls.
    """

    def __init__(self, params: SRMParams | None, neuron: dict, batch_first: bool, backend: str | None, *,
                 channels: int | None = None, device=None, dtype=None) -> None:
        super().__init__()
        extra = {k: neuron.pop(k) for k in _MODULE_KEYWORDS if k in neuron}
        self.params = SRMParams.make(params, **neuron)
        self.batch_first = _checks.check_flag(batch_first, "batch_first")
        self.backend = check_backend(backend)
        self.stateful = _checks.check_flag(extra.get("stateful", False), "stateful")
        self.step_mode = extra.get("step_mode", "multi")
        if self.step_mode not in ("multi", "single"):
            raise ValueError(f"step_mode must be 'multi' or 'single', got {self.step_mode!r}")
        if self.step_mode == "single" and not self.stateful:
            raise ValueError("step_mode='single' needs stateful=True: each step continues the state of the one before")
        learn_tau = _checks.check_flag(extra.get("learn_tau", False), "learn_tau")
        learn_threshold = _checks.check_flag(extra.get("learn_threshold", False), "learn_threshold")
        self.constants = None
        if learn_tau or learn_threshold:
            if self.params.grad != "surrogate":
                raise ValueError(
                    "learn_tau and learn_threshold need grad='surrogate': the event-driven gradient has no "
                    "derivative for the neuron's constants"
                )
            self.constants = LearnableConstants(
                self.params.tau_m, self.params.tau_s, self.params.v_th, learn_tau=learn_tau,
                learn_threshold=learn_threshold, channels=channels, device=device, dtype=dtype,
            )
        self.state = None

    def reset_state(self) -> None:
        """Forget the carried state: the next call starts a new sequence from zeros."""
        self.state = None

    def detach_state(self) -> None:
        """Keep the carried state's values but cut its gradient history (truncated BPTT)."""
        if self.state is not None:
            self.state = self.state.detach()

    def _neuron_kwargs(self) -> dict:
        """The neuron's keywords for the functional ops: ``params`` and the learned constants."""
        kw = {"params": self.params}
        if self.constants is not None:
            kw.update(self.constants())
        return kw

    def _run(self, fn, x):
        """``fn(x, state=..., return_state=...)`` [T, B, ...] (the layout and step mode applied
        around it), carrying the state when `stateful`."""
        single = self.step_mode == "single"
        out = self._carry(fn, x.unsqueeze(0) if single else self._time_major(x))
        if single:
            return out.squeeze(0)
        return out.transpose(0, 1) if self.batch_first else out

    def _carry(self, fn, x):
        """``fn(x, state=..., return_state=...)`` on time-major `x`, carrying the state when `stateful`."""
        if not self.stateful:
            return fn(x, state=None, return_state=False)
        out, self.state = fn(x, state=self.state, return_state=True)
        return out

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
        extra = "".join(f", {k}={v!r}" for k, v in (("stateful", self.stateful), ("step_mode", self.step_mode))
                        if v not in (False, "multi"))
        return f"{fields}, batch_first={self.batch_first}" + extra + backend_repr(self.backend)


_PARAM_FIELDS = tuple(f.name for f in dataclasses.fields(SRMParams))


def _field(name: str) -> property:
    return property(lambda self: getattr(self.params, name), doc=f"``params.{name}`` (read-only).")


for _name in _PARAM_FIELDS:
    setattr(SRMModule, _name, _field(_name))
