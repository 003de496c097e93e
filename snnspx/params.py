"""The SRM neuron's constants as one validated object (docs/maths.md §2-§3)."""

from __future__ import annotations

import dataclasses

from ._checks.args import _finite

__all__ = ["SRMParams", "MAX_DUDT_INV", "FIRE_IF", "FORWARD_TYPES", "GRADIENT_TYPES", "GRADS", "SURROGATES",
           "decode_variant"]

# The original's bound on the clamp of -1/dut in the event-driven backward: so large that
# it never binds for a float32 trace, i.e. in effect no clamp.
MAX_DUDT_INV = 123456789.0


# The neuron's options (docs/maths.md, "Neuron variants"), each a tuple whose index is the
# option's code in SRMParams.variant: bit 0 = FIRE_IF, bit 1 = FORWARD_TYPES, bits 2-3 =
# GRADIENT_TYPES. The first value of each is the default: variant 0 is the neuron of §2-§3.
FIRE_IF = (">", ">=")
FORWARD_TYPES = ("leaky", "nonleaky")
GRADIENT_TYPES = ("exponential", "original", "nonnegative")
_OPTIONS = {"fire_if": FIRE_IF, "forward_type": FORWARD_TYPES, "gradient_type": GRADIENT_TYPES}
# The gradient modes (docs/maths.md §3 and §9) and the surrogate derivatives of §9 with their
# parameter's default value (sigmoid's and atan's alpha, fast_sigmoid's slope, triangle's width).
GRADS = ("event", "surrogate")
SURROGATES = {"sigmoid": 4.0, "atan": 2.0, "fast_sigmoid": 25.0, "triangle": 1.0}
_GRAD_OPTIONS = {"grad": GRADS, "surrogate": tuple(SURROGATES)}
_NUMBER_FIELDS = ("tau_m", "tau_s", "tau_grad", "v_th", "du_inv_clamp", "max_dudt_inv")


def decode_variant(variant: int) -> dict[str, str]:
    """The options ``{"fire_if": ..., "forward_type": ..., "gradient_type": ...}`` of an
    :attr:`SRMParams.variant` (the ops' ``int variant`` argument).

    Raises:
        ValueError: `variant` is not one of the 12 codes ``SRMParams.variant`` gives.
    """
    trace = variant >> 2 if isinstance(variant, int) and not isinstance(variant, bool) and variant >= 0 else -1
    if not 0 <= trace < len(GRADIENT_TYPES):
        raise ValueError(
            f"variant must be an snnspx.SRMParams.variant: an int in 0..{4 * len(GRADIENT_TYPES) - 1} (bit 0 fire_if "
            f"'>=', bit 1 forward_type 'nonleaky', bits 2-3 the gradient_type's index in {GRADIENT_TYPES}), got {variant!r}"
        )
    return {"fire_if": FIRE_IF[variant & 1], "forward_type": FORWARD_TYPES[(variant >> 1) & 1],
            "gradient_type": GRADIENT_TYPES[trace]}


# The constants that may also be tensors in surrogate mode (SRMParams.make_split).
_TENSOR_FIELDS = ("tau_m", "tau_s", "v_th")


def _is_tensor(v) -> bool:
    import torch

    return isinstance(v, torch.Tensor)


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
        v_th: firing threshold, not NaN; a neuron spikes when ``u > v_th`` (see `fire_if`).
        du_inv_clamp: the backward clamps ``-1/du`` to ``[-du_inv_clamp, 0]``; >= 0.
        max_dudt_inv: the backward clamps ``-1/dut`` to ``[-max_dudt_inv, 0]``; >= 0.
            Default :data:`MAX_DUDT_INV`, the original's value (in effect no clamp).

    Keyword-only, the neuron variant (docs/maths.md, "Neuron variants"; the defaults are
    the neuron of §2-§3):

    Args:
        fire_if: ``">"`` spikes when ``u > v_th``, ``">="`` when ``u >= v_th``.
        forward_type: ``"leaky"`` (``u = c (m - s)``) or ``"nonleaky"`` (``u`` adds up the
            trace ``g``: ``u = u_last + g``, and ``du = dut = g``).
        gradient_type: the spike-time trace of the backward: ``"exponential"`` (``dut = g``,
            ``epst[d] = -a_g^(d+1)``), ``"original"`` (``dut = du`` and ``epst[d]`` the
            negated step ``-(eps(d) - eps(d-1))`` of the membrane kernel) or
            ``"nonnegative"`` (as ``"original"`` with the step's negative part dropped).
            A nonleaky neuron keeps ``dut = g``; its ``epst`` follows this field.

    Keyword-only, the gradient (docs/maths.md §9):

    Args:
        grad: ``"event"`` (the event-driven spike-time gradient of §3, the default) or
            ``"surrogate"`` (exact backpropagation through time of the neuron's recurrence
            with the spike's derivative replaced by the surrogate's; leaky neurons only, and
            `gradient_type`, `du_inv_clamp`, `max_dudt_inv` do not apply). In the layers,
            ``"surrogate"`` makes the whole layer plain autograd (no ``input_grad_scale``, no mask).
        surrogate: ``"sigmoid"``, ``"atan"``, ``"fast_sigmoid"`` or ``"triangle"``.
        alpha: the surrogate's parameter (> 0), None for its default (:data:`SURROGATES`).
        detach_reset: treat the reset factor ``(1 - S_t)`` as a constant in the backward.

    Raises:
        TypeError: a number field is not a Python number, or an option is not a str.
        ValueError: a field is out of its range or an option not one of its values (the
            message names the field and what it allows).
    """

    tau_m: float = 5.0
    tau_s: float = 3.0
    tau_grad: float = 2.5
    v_th: float = 1.0
    du_inv_clamp: float = 4.0
    max_dudt_inv: float = MAX_DUDT_INV
    _: dataclasses.KW_ONLY
    fire_if: str = FIRE_IF[0]
    forward_type: str = FORWARD_TYPES[0]
    gradient_type: str = GRADIENT_TYPES[0]
    grad: str = GRADS[0]
    surrogate: str = "sigmoid"
    alpha: float | None = None
    detach_reset: bool = False

    def __post_init__(self) -> None:
        for name in _NUMBER_FIELDS:
            v = getattr(self, name)
            if not _is_number(v):
                raise TypeError(f"{name} must be a Python number, got {type(v).__name__}")
            object.__setattr__(self, name, float(v))
        for name, allowed in {**_OPTIONS, **_GRAD_OPTIONS}.items():
            v = getattr(self, name)
            if not isinstance(v, str):
                raise TypeError(f"{name} must be a str, one of {allowed}, got {type(v).__name__}")
            if v not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {v!r}")
        self._check_gradient_options()
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

    def _check_gradient_options(self) -> None:
        if self.alpha is not None:
            if not _is_number(self.alpha):
                raise TypeError(f"alpha must be a Python number or None, got {type(self.alpha).__name__}")
            if not (_finite(self.alpha) and self.alpha > 0):
                raise ValueError(f"alpha must be a finite number > 0 or None, got {self.alpha}")
            object.__setattr__(self, "alpha", float(self.alpha))
        if not isinstance(self.detach_reset, bool):
            raise TypeError(f"detach_reset must be a bool, got {type(self.detach_reset).__name__}")
        if self.grad == "surrogate":
            if self.forward_type != "leaky":
                raise ValueError("grad='surrogate' runs the leaky neuron of docs/maths.md §9: forward_type must be 'leaky'")
            if self.gradient_type != GRADIENT_TYPES[0]:
                raise ValueError(
                    f"gradient_type={self.gradient_type!r} chooses the trace of the event-driven backward; it has no "
                    "meaning with grad='surrogate' (leave it at its default)"
                )

    @property
    def surrogate_alpha(self) -> float:
        """`alpha`, or the default of `surrogate` when it is None."""
        return SURROGATES[self.surrogate] if self.alpha is None else self.alpha

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

    @classmethod
    def make_split(cls, params: SRMParams | None = None, **fields) -> tuple[SRMParams, dict]:
        """:meth:`make` for calls that may give ``tau_m``, ``tau_s`` or ``v_th`` as tensors
        (surrogate mode's per-channel or learnable constants, docs/maths.md §10): returns the
        params and ``{name: tensor}``. A time constant given as a tensor gets a valid placeholder
        in the params (its partner plus 1), so that only the numbers are checked here; the
        surrogate op checks the tensors' values."""
        tensors = {k: fields.pop(k) for k in _TENSOR_FIELDS if _is_tensor(fields.get(k))}
        base = params if isinstance(params, SRMParams) else cls()
        for name, partner in (("tau_m", "tau_s"), ("tau_s", "tau_m")):
            if name in tensors:
                other = fields.get(partner, getattr(base, partner))
                fields[name] = (other if _is_number(other) else 2.0) + 1.0
        return cls.make(params, **fields), tensors

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
        """The backward's kernel tables for lags ``d < T``, in double precision (docs/maths.md §3
        and "Neuron variants"), with ``f(k) = c (a_m^k - a_s^k)``: ``epsw[d] = f(d+1)``;
        ``epst[d] = -a_g^(d+1)`` ("exponential"), ``-(f(d+1) - f(d))`` ("original"), or
        ``-max(f(d+1) - f(d), 0)`` ("nonnegative"). Every backend uses these values, each
        rounded once to the state dtype (the C++ ``srm_table_entry`` computes them in the same order)."""
        a_m, a_s, a_g, c = self.constants()

        def f(k: int) -> float:
            return c * (a_m**k - a_s**k)

        epsw = [f(d + 1) for d in range(T)]
        if self.gradient_type == "exponential":
            return epsw, [-(a_g ** (d + 1)) for d in range(T)]
        steps = [f(d + 1) - f(d) for d in range(T)]
        if self.gradient_type == "nonnegative":
            steps = [v if v > 0.0 else 0.0 for v in steps]
        return epsw, [-v for v in steps]

    @property
    def variant(self) -> int:
        """The neuron options as the ops' ``int variant`` argument: bit 0 ``fire_if=">="``, bit 1
        ``forward_type="nonleaky"``, bits 2-3 the index of `gradient_type` in
        ``("exponential", "original", "nonnegative")``; 0 for the defaults (:func:`decode_variant`
        inverts it)."""
        return (
            FIRE_IF.index(self.fire_if)
            | FORWARD_TYPES.index(self.forward_type) << 1
            | GRADIENT_TYPES.index(self.gradient_type) << 2
        )

    @property
    def options(self) -> str:
        """The non-default neuron options as keywords (``"fire_if='>='"``), "" for the defaults: for messages."""
        return ", ".join(f"{n}={getattr(self, n)!r}" for n, allowed in _OPTIONS.items() if getattr(self, n) != allowed[0])

    # The ops' neuron arguments, in schema order (snnspx/functional/srm.py and fused.py): one
    # property per argument list, so that no call site assembles them by hand.
    @property
    def forward_args(self) -> tuple[float, float, float, float, int]:
        """``(tau_m, tau_s, tau_grad, v_th, variant)``: the arguments of ``srm_forward`` and
        ``srm_suppix_pool`` after the tensors (and the pooling arguments)."""
        return self.tau_m, self.tau_s, self.tau_grad, self.v_th, self.variant

    @property
    def neuron_args(self) -> tuple[float, float, float, float, float, float, int]:
        """``(tau_m, tau_s, tau_grad, v_th, du_inv_clamp, max_dudt_inv, variant)``: the arguments of
        the training forwards ``srm_neuron_fwd`` and ``srm_suppix_pool_fwd``."""
        return self.tau_m, self.tau_s, self.tau_grad, self.v_th, self.du_inv_clamp, self.max_dudt_inv, self.variant

    @property
    def backward_args(self) -> tuple[float, float, float, float, float, int]:
        """``(tau_m, tau_s, tau_grad, du_inv_clamp, max_dudt_inv, variant)``: the arguments of
        ``srm_backward`` and ``srm_neuron_bwd``."""
        return self.tau_m, self.tau_s, self.tau_grad, self.du_inv_clamp, self.max_dudt_inv, self.variant

    def __repr__(self) -> str:
        fields = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self))
        return f"SRMParams({fields})"


_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(SRMParams))
