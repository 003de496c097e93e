"""SRMParams, the neuron's one parameter object: validation, replacement, and the dtype check
that rejects time constants whose decays round to the same number."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch

import snnspx
from snnspx import SRMParams, functional as F


def test_defaults_fields_and_repr():
    """Defaults and the named constant; every number field a float; thresholds and clamps
    unbounded where the neuron allows it; a repr that evaluates back to the same params."""
    p = SRMParams()
    assert dataclasses.astuple(p) == (
        5.0, 3.0, 2.5, 1.0, 4.0, snnspx.MAX_DUDT_INV, ">", "leaky", "exponential", "event", "sigmoid", None, False
    )
    assert snnspx.MAX_DUDT_INV == 123456789.0
    q = SRMParams(tau_m=7, tau_s=2, tau_grad=3, v_th=-1, du_inv_clamp=0, max_dudt_inv=math.inf, fire_if=">=")
    assert all(type(v) is float for v in dataclasses.astuple(q)[:6]), "int fields become floats"
    assert (q.tau_m, q.v_th, q.du_inv_clamp, q.max_dudt_inv) == (7.0, -1.0, 0.0, math.inf)
    assert SRMParams(v_th=math.inf).v_th == math.inf and SRMParams(v_th=-1e300).v_th == -1e300
    assert repr(p) == (
        "SRMParams(tau_m=5.0, tau_s=3.0, tau_grad=2.5, v_th=1.0, du_inv_clamp=4.0, max_dudt_inv=123456789.0, "
        "fire_if='>', forward_type='leaky', gradient_type='exponential', grad='event', surrogate='sigmoid', "
        "alpha=None, detach_reset=False)"
    )
    assert eval(repr(q), {"SRMParams": SRMParams, "inf": math.inf}) == q
    with pytest.raises(TypeError):
        SRMParams(5.0, 3.0, 2.5, 1.0, 4.0, 1.0, ">=")  # the options are keyword-only


def test_variant_codes():
    """``variant``: bit 0 fire_if ">=", bit 1 nonleaky, bits 2-3 the gradient type; 0 for the
    defaults, 12 distinct codes that decode_variant maps back; any other int is an error."""
    from snnspx.params import FIRE_IF, FORWARD_TYPES, GRADIENT_TYPES, decode_variant

    assert SRMParams().variant == 0 and SRMParams().options == ""
    assert SRMParams(fire_if=">=").variant == 1 and SRMParams(forward_type="nonleaky").variant == 2
    assert SRMParams(gradient_type="original").variant == 4 and SRMParams(gradient_type="nonnegative").variant == 8
    codes = set()
    for fire_if, forward_type, gradient_type in itertools.product(FIRE_IF, FORWARD_TYPES, GRADIENT_TYPES):
        p = SRMParams(fire_if=fire_if, forward_type=forward_type, gradient_type=gradient_type)
        assert decode_variant(p.variant) == dict(fire_if=fire_if, forward_type=forward_type, gradient_type=gradient_type)
        codes.add(p.variant)
    assert codes == set(range(12))
    assert SRMParams(fire_if=">=", gradient_type="original").options == "fire_if='>=', gradient_type='original'"
    for bad in (-1, 12, 15, 16, True, 1.0):
        with pytest.raises(ValueError, match="variant must be an snnspx.SRMParams.variant"):
            decode_variant(bad)


def test_frozen_and_replaced_by_make():
    """Frozen, hashable, compared by value; make returns the defaults, the params given, or a
    copy with fields replaced (validated again)."""
    p = SRMParams(tau_m=7)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.tau_m = 3.0
    assert hash(SRMParams()) == hash(SRMParams()) and SRMParams(v_th=2.0) != SRMParams()
    q = SRMParams.make(p, v_th=0.5)
    assert (q.tau_m, q.v_th, p.v_th) == (7.0, 0.5, 1.0)
    every = SRMParams(tau_m=7, tau_s=2, tau_grad=3, v_th=-1, du_inv_clamp=0, max_dudt_inv=math.inf)
    assert SRMParams.make(every, v_th=0.5) == dataclasses.replace(every, v_th=0.5)
    assert SRMParams.make() == SRMParams()
    assert SRMParams.make(p) is p and SRMParams.make(None, tau_s=2) == SRMParams(tau_s=2)
    with pytest.raises(ValueError, match="tau_s must be a finite number > 1"):
        SRMParams.make(p, tau_s=1.0)
    with pytest.raises(TypeError, match="params must be an snnspx.SRMParams"):
        SRMParams.make({"tau_m": 5.0})
    with pytest.raises(TypeError, match="tau_x"):
        SRMParams.make(None, tau_x=1.0)


@pytest.mark.parametrize(
    "fields, error, match",
    [
        ({"tau_m": "5"}, TypeError, "tau_m must be a Python number, got str"),
        ({"tau_m": None}, TypeError, "tau_m must be a Python number, got NoneType"),
        ({"tau_m": True}, TypeError, "tau_m must be a Python number, got bool"),
        ({"v_th": True}, TypeError, "v_th must be a Python number, got bool"),
        ({"tau_m": 1.0}, ValueError, "tau_m must be a finite number > 1, got 1.0"),
        ({"tau_s": 1.0}, ValueError, "tau_s must be a finite number > 1, got 1.0"),
        ({"tau_s": 0.5}, ValueError, "tau_s must be a finite number > 1, got 0.5"),
        ({"tau_grad": 1.0}, ValueError, "tau_grad must be a finite number > 1, got 1.0"),
        ({"tau_grad": float("inf")}, ValueError, "tau_grad must be a finite number > 1"),
        ({"tau_grad": float("nan")}, ValueError, "tau_grad must be a finite number > 1"),
        ({"tau_m": float("inf")}, ValueError, "tau_m must be a finite number > 1"),
        ({"tau_m": float("nan")}, ValueError, "tau_m must be a finite number > 1"),
        ({"tau_m": 3.0}, ValueError, "tau_m and tau_s must differ"),
        ({"v_th": float("nan")}, ValueError, "v_th must not be NaN"),
        ({"du_inv_clamp": -1.0}, ValueError, "du_inv_clamp must be >= 0"),
        ({"du_inv_clamp": float("nan")}, ValueError, "du_inv_clamp must be >= 0"),
        ({"max_dudt_inv": -0.5}, ValueError, "max_dudt_inv must be >= 0"),
        ({"max_dudt_inv": float("nan")}, ValueError, "max_dudt_inv must be >= 0"),
        ({"fire_if": "=>"}, ValueError, r"fire_if must be one of \('>', '>='\), got '=>'"),
        ({"fire_if": 1}, TypeError, r"fire_if must be a str, one of \('>', '>='\), got int"),
        ({"forward_type": "Leaky"}, ValueError, r"forward_type must be one of \('leaky', 'nonleaky'\), got 'Leaky'"),
        ({"gradient_type": "exp"}, ValueError,
         r"gradient_type must be one of \('exponential', 'original', 'nonnegative'\), got 'exp'"),
        ({"gradient_type": None}, TypeError, "gradient_type must be a str"),
    ],
)
def test_invalid_fields_are_named(fields, error, match):
    with pytest.raises(error, match=match):
        SRMParams(**fields)
    with pytest.raises(error, match=match):  # the same check through every entry point
        F.srm_neuron(torch.ones(2, 3), **fields)
    with pytest.raises(error, match=match):
        snnspx.nn.SRMNeuron(**fields)


def test_tensor_constant_is_a_surrogate_mode_feature():
    """SRMParams holds numbers; srm_neuron and the modules take tensor constants (per channel,
    learnable) in surrogate mode only, and say so in event mode."""
    with pytest.raises(TypeError, match="tau_m must be a Python number, got Tensor"):
        SRMParams(tau_m=torch.tensor(5.0))
    with pytest.raises(TypeError, match="tau_m must be a Python number, got Tensor"):
        snnspx.nn.SRMNeuron(tau_m=torch.tensor(5.0))
    with pytest.raises(ValueError, match="tau_m given as tensors .* need grad='surrogate'"):
        F.srm_neuron(torch.ones(2, 3), tau_m=torch.tensor(5.0))
    assert F.srm_neuron(torch.ones(2, 3), tau_m=torch.tensor(5.0), grad="surrogate").shape == (2, 3)


def test_tables_and_constants():
    p = SRMParams(tau_m=4.0, tau_s=2.0, tau_grad=3.0)
    a_m, a_s, a_g, c = p.constants()
    assert (a_m, a_s, a_g, c) == (0.75, 0.5, 1 - 1 / 3, 2.0)
    epsw, epst = p.tables(3)
    assert epsw == [c * (a_m ** (d + 1) - a_s ** (d + 1)) for d in range(3)]
    assert epst == [-(a_g ** (d + 1)) for d in range(3)]
    # the other traces: minus the step f(d+1) - f(d) of f(k) = c (a_m^k - a_s^k), f(0) = 0;
    # "nonnegative" drops its negative part (here from d = 2 on: eps peaks at d = 1)
    f = [c * (a_m**k - a_s**k) for k in range(9)]
    for kind in ("original", "nonnegative"):
        epsw_k, epst_k = dataclasses.replace(p, gradient_type=kind).tables(8)
        assert epsw_k == f[1:]
        steps = [f[d + 1] - f[d] for d in range(8)]
        assert epst_k == [-(v if kind == "original" else max(v, 0.0)) for v in steps]
    assert dataclasses.replace(p, gradient_type="original").tables(8)[1][2] > 0
    assert dataclasses.replace(p, gradient_type="nonnegative").tables(8)[1][2:] == [0.0] * 6


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_decays_too_close_for_float32_are_rejected(backend):
    """tau_m = 5 and tau_s = 5.0000001 differ in double but give the same float32 decay (the
    membrane would stay 0 and the neuron never fire); tau_s = 5.000002 or 5.00001 give decays one
    or a few float32 steps apart, and a membrane off by 5-25 %. Float32 inputs are rejected with
    the dtype and the gap to use (tau**2 * 2**-24 / 1 %, 1.5e-4 at tau = 5); float64 inputs keep
    working, and a gap above that bound passes."""
    x = torch.randn(8, 3) + 2.0
    for tau_s in (5.0000001, 5.000002, 5.00001):
        with pytest.raises(ValueError, match=r"too close for float32.*differ by at least about 0\.00015 \(the neuron state of torch\.float32"):
            F.srm_neuron(x, tau_m=5.0, tau_s=tau_s, backend=backend)
    for fn in (lambda: F.srm_forward(x, tau_m=5.0, tau_s=5.0000001, backend=backend),
               lambda: F.srm_suppix_pool(x.reshape(2, 1, 1, 2, 6), torch.zeros(2, 6, dtype=torch.long),
                                         tau_m=5.0, tau_s=5.0000001, backend=backend),
               lambda: snnspx.nn.SRMLinear(3, 2, tau_m=5.0, tau_s=5.0000001, backend=backend)(x.reshape(8, 1, 3))):
        with pytest.raises(ValueError, match="too close for float32"):
            fn()
    spikes = F.srm_neuron(x.double(), tau_m=5.0, tau_s=5.0000001, backend=backend)
    assert spikes.sum() > 0  # in float64 the decays differ, and the neuron fires
    assert F.srm_neuron(x, tau_m=5.0, tau_s=5.0002, backend=backend).shape == x.shape
    # the membrane of the accepted pair is within 1 % of float64's (no spikes: a high threshold)
    _, du32, _ = F.srm_forward(x, tau_m=5.0, tau_s=5.0002, v_th=1e9, backend=backend)
    _, du64, _ = F.srm_forward(x.double(), tau_m=5.0, tau_s=5.0002, v_th=1e9, backend=backend)
    u32, u64 = du32.cumsum(0).double(), du64.cumsum(0)
    assert ((u32 - u64).abs() <= 0.01 * u64.abs() + 1e-6).all()


def test_srm_forward_rejects_clamps_its_gradient_ignores():
    with pytest.raises(ValueError, match="srm_forward's gradient uses the default clamps"):
        F.srm_forward(torch.ones(2, 3, requires_grad=True), du_inv_clamp=0.0)
    assert F.srm_forward(torch.ones(2, 3), du_inv_clamp=0.0)[0].shape == (2, 3)  # no gradient: the forward is the same


def test_misspelt_keyword_names_the_fields():
    with pytest.raises(TypeError, match=r"'backnd'.*fields of snnspx.SRMParams \(tau_m, tau_s"):
        F.srm_neuron(torch.ones(2, 3), backnd="torch")


def test_modules_carry_one_params():
    p = SRMParams(tau_m=6.0, v_th=0.4)
    conv = snnspx.nn.SRMConv2d(2, 3, 3, params=p, v_th=0.6)
    assert conv.params == SRMParams(tau_m=6.0, v_th=0.6)
    assert conv.tau_m == 6.0 and conv.v_th == 0.6
    with pytest.raises(AttributeError):
        conv.v_th = 0.1
    for m in (snnspx.nn.SRMNeuron(p), snnspx.nn.SRMLinear(4, 2, p), snnspx.nn.SRMSupPixPool("sum", 3, p)):
        assert m.params is p
        assert "tau_m=6.0" in repr(m)
