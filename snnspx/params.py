"""The SRM neuron's constants as one validated object (docs/maths.md §2-§3)."""

from __future__ import annotations

import dataclasses

from ._checks.args import _finite

__all__ = ["SRMParams", "MAX_DUDT_INV"]

# The original's bound on the clamp of -1/dut in the event-driven backward: so large that
# it never binds for a float32 trace, i.e. in effect no clamp.
MAX_DUDT_INV = 123456789.0


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# The decays a = 1 - 1/tau lie in [0.5, 1), where numbers are 2**-24 apart in float32 and 2**-53
# in float64: each rounding moves a decay by up to half of that.
_SPACING = {True: 2.0**-24, False: 2.0**-53}
# The largest relative error of a_m - a_s that the rounding of the decays may cause: the membrane
# u = c (m - s) scales with a_m - a_s, so this bounds its error from the constants alone.
_MAX_DECAY_ERROR = 0.01


def _decay_error(tau_m: float, tau_s: float, single: bool) -> str:
    """Why the decays 1 - 1/tau_m and 1 - 1/tau_s are too close for the neuron-state dtype
    (float32 if `single`): their rounding may change a_m - a_s by more than 1 %; "" if not."""
    a_m, a_s = 1.0 - 1.0 / tau_m, 1.0 - 1.0 / tau_s
    if _SPACING[single] <= _MAX_DECAY_ERROR * abs(a_m - a_s):
        return ""
    # |d(1 - 1/tau)| = |d tau| / tau**2: the gap in tau that keeps the rounding error below the bound
    gap = max(tau_m, tau_s) ** 2 * _SPACING[single] / _MAX_DECAY_ERROR
    return (
        f"tau_m={tau_m} and tau_s={tau_s} are too close for {'float32' if single else 'float64'}: their decays "
        f"1 - 1/tau round to the same or nearly the same number, so the membrane c (m - s) is 0 or off by "
        f"more than {_MAX_DECAY_ERROR:.0%}; make the time constants differ by at least about {gap:.2g}"
    )


@dataclasses.dataclass(frozen=True)
class SRMParams:
    """The constants of the SRM neuron and of its event-driven backward.

    Every functional op, module and layer that runs the neuron takes one of these as
    ``params=`` and, for convenience, the same fields as keywords (``tau_m=7.0``), which
    override the fields of ``params``.

    Args:
        tau_m, tau_s: membrane and synaptic time constants, finite, > 1 and different.
        tau_grad: time constant of the spike-time gradient trace, finite, > 1.
        v_th: firing threshold, not NaN; a neuron spikes when ``u > v_th`` (strict).
        du_inv_clamp: the backward clamps ``-1/du`` to ``[-du_inv_clamp, 0]``; >= 0.
        max_dudt_inv: the backward clamps ``-1/dut`` to ``[-max_dudt_inv, 0]``; >= 0.
            Default :data:`MAX_DUDT_INV`, the original's value (in effect no clamp).

    Raises:
        TypeError: a field is not a Python number.
        ValueError: a field is out of its range (the message names it).
    """

    tau_m: float = 5.0
    tau_s: float = 3.0
    tau_grad: float = 2.5
    v_th: float = 1.0
    du_inv_clamp: float = 4.0
    max_dudt_inv: float = MAX_DUDT_INV

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not _is_number(v):
                raise TypeError(f"{f.name} must be a Python number, got {type(v).__name__}")
            object.__setattr__(self, f.name, float(v))
        for name in ("tau_m", "tau_s", "tau_grad"):
            v = getattr(self, name)
            if not (_finite(v) and v > 1.0):
                raise ValueError(f"{name} must be a finite number > 1, got {v}")
        if self.tau_m == self.tau_s:
            raise ValueError(
                f"tau_m and tau_s must differ (the SRM kernel divides by tau_m - tau_s), got {self.tau_m} for both"
            )
        if self.v_th != self.v_th:
            raise ValueError("v_th must not be NaN")
        for name in ("du_inv_clamp", "max_dudt_inv"):
            v = getattr(self, name)
            if not v >= 0:
                raise ValueError(f"{name} must be >= 0, got {v}")

    @classmethod
    def make(cls, params: SRMParams | None = None, **fields) -> SRMParams:
        """``params`` (default: all defaults) with the given fields replaced.

        Raises:
            TypeError: `params` is not an SRMParams, or a keyword is not a field.
        """
        unknown = [k for k in fields if k not in _FIELD_NAMES]
        if unknown:
            raise TypeError(
                f"unexpected keyword argument(s) {', '.join(map(repr, unknown))}: the neuron's keywords are the "
                f"fields of snnspx.SRMParams ({', '.join(_FIELD_NAMES)})"
            )
        if params is None:
            return cls(**fields)
        if not isinstance(params, SRMParams):
            raise TypeError(f"params must be an snnspx.SRMParams or None, got {type(params).__name__}")
        return dataclasses.replace(params, **fields) if fields else params

    def check_dtype(self, dtype) -> None:
        """Raise ``ValueError`` if ``a_m`` and ``a_s`` are so close that their rounding in the
        neuron-state dtype of `dtype` inputs (float32, or float64 for float64) may change
        ``a_m - a_s``, and so the membrane ``u = c (m - s)``, by more than 1 % (at worst to 0: a
        neuron that never fires). Not checked inside torch.compile, where the time constants may be
        symbolic: check the model once in eager mode."""
        import torch

        if torch.compiler.is_compiling():
            return
        msg = _decay_error(self.tau_m, self.tau_s, dtype != torch.float64)
        if msg:
            raise ValueError(f"{msg} (the neuron state of {dtype} inputs)")

    def constants(self) -> tuple[float, float, float, float]:
        """``(a_m, a_s, a_g, c)`` in double precision (docs/maths.md §2)."""
        return (
            1.0 - 1.0 / self.tau_m,
            1.0 - 1.0 / self.tau_s,
            1.0 - 1.0 / self.tau_grad,
            self.tau_m / (self.tau_m - self.tau_s),
        )

    def tables(self, T: int) -> tuple[list[float], list[float]]:
        """``epsw[d] = c (a_m^(d+1) - a_s^(d+1))`` and ``epst[d] = -a_g^(d+1)``, ``d < T``, in
        double precision (docs/maths.md §3)."""
        a_m, a_s, a_g, c = self.constants()
        return [c * (a_m ** (d + 1) - a_s ** (d + 1)) for d in range(T)], [-(a_g ** (d + 1)) for d in range(T)]

    @property
    def forward_args(self) -> tuple[float, float, float, float]:
        """``(tau_m, tau_s, tau_grad, v_th)``: the forward ops' float arguments."""
        return self.tau_m, self.tau_s, self.tau_grad, self.v_th

    @property
    def backward_args(self) -> tuple[float, float, float, float, float]:
        """``(tau_m, tau_s, tau_grad, du_inv_clamp, max_dudt_inv)``: the backward ops' float arguments."""
        return self.tau_m, self.tau_s, self.tau_grad, self.du_inv_clamp, self.max_dudt_inv

    def __repr__(self) -> str:
        fields = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self))
        return f"SRMParams({fields})"


_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(SRMParams))
