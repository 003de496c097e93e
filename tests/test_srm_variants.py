"""The neuron variants (docs/maths.md, "Neuron variants"): ``SRMParams(fire_if=...,
forward_type=..., gradient_type=...)``, every combination on the torch and cpp backends against
the loops of snnspx.reference; exact threshold ties; the ops' ``int variant`` argument
(opcheck, bad codes); the modules that pass the options on; the CUDA gate.

The default variant (0) is the neuron of tests/test_srm.py, which checks it bit for bit.
The fused op's variants are in tests/test_fused.py's grid.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import snnspx
from snnspx import SRMParams
from snnspx import functional as F
from snnspx import reference as R
from snnspx.params import FIRE_IF, FORWARD_TYPES, GRADIENT_TYPES
from conftest import DTYPES

CPU_BACKENDS = ["torch", "cpp"]
OPTIONS = [
    dict(fire_if=f, forward_type=t, gradient_type=g) for f, t, g in itertools.product(FIRE_IF, FORWARD_TYPES, GRADIENT_TYPES)
]
OPTION_IDS = [f"{o['fire_if']}-{o['forward_type']}-{o['gradient_type']}" for o in OPTIONS]


def currents(gen, shape, dtype, mean=0.3):
    return (torch.randn(shape, generator=gen, dtype=torch.float64) + mean).to(dtype)


def assert_forward_equal(got, want, msg):
    """Spikes, du and dut bit for bit: every backend runs the variant's step in the reference's order."""
    for name, a, b in zip(("spikes", "du", "dut"), got, want):
        assert a.dtype == b.dtype, (name, msg)
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=lambda m: f"{name} differ ({msg}): {m}")


# --------------------------------------------------------------------------- every variant against the reference
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("options", OPTIONS, ids=OPTION_IDS)
def test_variant_matches_reference(backend, dtype, options, gen):
    """Forward (spikes, du, dut), srm_backward and srm_neuron's x.grad, for T = 12, T = 1 and
    T = 300 (the tables' far end)."""
    p = SRMParams(v_th=0.8, du_inv_clamp=3.0, **options)
    for shape in [(12, 2, 5), (1, 7), (300, 3)]:
        x = currents(gen, shape, dtype, mean=2.0 if shape[0] == 1 else 0.3)
        w = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
        want = R.srm_forward(x, params=p)
        assert want[0].sum() > 0, f"the input should make neurons spike ({shape})"
        assert_forward_equal(F.srm_forward(x, params=p, backend=backend), want, f"{backend}, {shape}")
        rw, rt = R.srm_backward(w, *want, params=p)
        gw, gt = F.srm_backward(w, *want, params=p, backend=backend)
        torch.testing.assert_close(gw, rw)
        torch.testing.assert_close(gt, rt)
        xg = x.clone().requires_grad_()
        spikes = F.srm_neuron(xg, params=p, backend=backend)
        (spikes * w).sum().backward()
        assert torch.equal(spikes.detach(), want[0])
        torch.testing.assert_close(xg.grad, rw)  # reference.srm_neuron_backward, without its second forward
        assert xg.grad.abs().sum() > 0


def test_variants_change_what_they_should(gen):
    """Each option changes its part of the neuron only: ">=" the spikes at ties alone (none in
    random inputs); "nonleaky" the membrane, with du = dut = g; the gradient types leave the
    spikes and du alone and set dut = du (leaky) and the grad_t tables."""
    x = currents(gen, (20, 30), torch.float64)
    w = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    base = R.srm_forward(x)
    assert all(torch.equal(a, b) for a, b in zip(R.srm_forward(x, fire_if=">="), base))
    s, du, dut = R.srm_forward(x, forward_type="nonleaky")
    assert not torch.equal(s, base[0]) and torch.equal(du, dut)
    for kind in ("original", "nonnegative"):
        s, du, dut = R.srm_forward(x, gradient_type=kind)
        assert torch.equal(s, base[0]) and torch.equal(du, base[1]) and torch.equal(dut, du)
        gw, gt = R.srm_backward(w, s, du, dut, gradient_type=kind)
        assert torch.equal(gw, R.srm_backward(w, *base)[0]), "grad_w does not depend on the trace"
        assert not torch.equal(gt, R.srm_backward(w, *base)[1])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_variant_noncontiguous(backend, gen):
    base = currents(gen, (9, 6, 8), torch.float32)
    for options in OPTIONS:
        p = SRMParams(**options)
        for x in (base.transpose(1, 2), base[:, ::2, 1:7]):
            got = F.srm_forward(x, params=p, backend=backend)
            assert_forward_equal(got, F.srm_forward(x.contiguous(), params=p, backend=backend), "strided")
            assert_forward_equal(got, R.srm_forward(x, params=p), "strided, reference")


# --------------------------------------------------------------------------- threshold ties
def membrane(xs, p: SRMParams, dtype) -> list[float]:
    """u of one neuron fed xs with no threshold, in the state dtype and docs/maths.md's order."""
    f = np.float64 if dtype == torch.float64 else np.float32
    a_m, a_s, a_g, c = (f(v) for v in p.constants())
    m = s = g = u = f(0)
    out = []
    for x in xs:
        x = f(x)
        m, s, g = (m + x) * a_m, (s + x) * a_s, (g + x) * a_g
        u = u + g if p.forward_type == "nonleaky" else c * (m - s)
        out.append(float(u))
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("forward_type", FORWARD_TYPES)
def test_threshold_ties(forward_type, dtype):
    """u == v_th exactly (in the state dtype): ">" does not fire, ">=" does, on every CPU backend,
    in srm_forward, srm_neuron and the fused op, and in the reference. The membrane rises over
    the three steps, so the tie is at its last step (and at the only step for T = 1)."""
    for xs in ([0.9], [0.9, 0.0, 0.0]):
        x = torch.tensor(xs, dtype=dtype).reshape(len(xs), 1)
        u = membrane(xs, SRMParams(forward_type=forward_type), dtype)
        assert all(a < b for a, b in zip(u, u[1:])), u
        for fire_if in FIRE_IF:
            p = SRMParams(v_th=u[-1], fire_if=fire_if, forward_type=forward_type)
            want = torch.zeros(len(xs), 1, dtype=dtype)
            want[-1] = 1.0 if fire_if == ">=" else 0.0
            assert torch.equal(R.srm_forward(x, params=p)[0], want), ("reference", fire_if)
            for backend in CPU_BACKENDS:
                assert torch.equal(F.srm_forward(x, params=p, backend=backend)[0], want), (backend, fire_if)
                assert torch.equal(F.srm_neuron(x, params=p, backend=backend), want), (backend, fire_if)
                y = F.srm_suppix_pool(x.reshape(-1, 1, 1, 1, 1), torch.zeros(1, 1, dtype=torch.long), num_superpixels=1,
                                      mode="sum", params=p, backend=backend)
                assert torch.equal(y.reshape(-1, 1), want), ("fused", backend, fire_if)


# --------------------------------------------------------------------------- the ops' variant argument
def test_opcheck_with_variants(gen):
    """torch.library.opcheck of every changed op (cpp kernels) with a non-default variant."""
    F.srm_forward(torch.zeros(1, 1), backend="cpp")  # loads the library
    ops = torch.ops.snnspx
    x = currents(gen, (7, 3, 2), torch.float32)
    g = torch.randn(x.shape, generator=gen)
    taus = (5.0, 3.0, 2.5)
    variant = 7  # ">=", "nonleaky", "original"
    torch.library.opcheck(ops.srm_forward.default, (x.clone().requires_grad_(), *taus, 0.5, variant))
    spikes, du, dut = ops.srm_forward.default(x, *taus, 0.5, variant)
    torch.library.opcheck(ops.srm_backward.default, (g, spikes, du, dut, *taus, 4.0, 1e8, variant))
    torch.library.opcheck(ops.srm_neuron_fwd.default, (x.clone().requires_grad_(), *taus, 0.5, 4.0, 1e8, variant, None,
                                                       True))
    torch.library.opcheck(ops.srm_neuron_bwd.default, (g, x, None, *taus, 0.5, 4.0, 1e8, variant, True))
    xf = currents(gen, (5, 2, 2, 6), torch.float32)
    labels = torch.tensor([[[0, 0, 1, 1, -1, 2]]])
    variant = 9  # ">=", "leaky", "nonnegative"
    torch.library.opcheck(ops.srm_suppix_pool.default, (xf, labels, 3, "avg", *taus, 0.5, variant, True, ""))
    args = (labels, 3, "max", *taus, 0.5, 4.0, 1e8, variant)
    torch.library.opcheck(ops.srm_suppix_pool_fwd.default, (xf.clone().requires_grad_(), *args, False, ""))
    y, counts, argmax = ops.srm_suppix_pool_fwd.default(xf, *args, True, "")
    gy = torch.randn(y.shape, generator=gen)
    torch.library.opcheck(ops.srm_suppix_pool_bwd.default,
                          (gy, xf, labels, counts, argmax, "max", *taus, 0.5, 4.0, 1e8, variant, ""))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_bad_variant_code_is_a_value_error(backend):
    """Called directly, every op rejects a variant that SRMParams.variant never gives, with the
    PyTorch kernel's and the C++ kernel's ValueError alike."""
    F.srm_forward(torch.zeros(1, 1), backend="cpp")
    ops = torch.ops.snnspx
    x = torch.randn(3, 2)
    s, du, dut = F.srm_forward(x)
    xf, labels = torch.randn(3, 1, 1, 2), torch.zeros(1, 1, 2, dtype=torch.long)
    gy, counts, no_argmax = torch.randn(3, 1, 1, 1), torch.full((1, 1, 1), 2, dtype=torch.int32), torch.empty(0)
    calls = [
        lambda v: ops.srm_forward(x, 5.0, 3.0, 2.5, 1.0, v),
        lambda v: ops.srm_backward(s, s, du, dut, 5.0, 3.0, 2.5, 4.0, 1.0, v),
        lambda v: ops.srm_neuron_fwd(x, 5.0, 3.0, 2.5, 1.0, 4.0, 1.0, v, None, False),
        lambda v: ops.srm_neuron_bwd(x, x, None, 5.0, 3.0, 2.5, 1.0, 4.0, 1.0, v, True),
        lambda v: ops.srm_suppix_pool(xf, labels, 1, "sum", 5.0, 3.0, 2.5, 1.0, v, True, ""),
        lambda v: ops.srm_suppix_pool_fwd(xf, labels, 1, "sum", 5.0, 3.0, 2.5, 1.0, 4.0, 1.0, v, True, ""),
        lambda v: ops.srm_suppix_pool_bwd(gy, xf, labels, counts, no_argmax.int(), "sum", 5.0, 3.0, 2.5, 1.0, 4.0, 1.0,
                                          v, ""),
    ]
    with snnspx._library.torch_kernels(backend == "torch"):
        for call in calls:
            for bad in (-1, 12, 15):
                with pytest.raises(ValueError, match="variant must be an snnspx.SRMParams.variant"):
                    call(bad)


# --------------------------------------------------------------------------- modules pass the options on
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_modules_take_the_options(backend, gen):
    neuron = dict(fire_if=">=", forward_type="nonleaky", gradient_type="original")
    p = SRMParams(**neuron)
    conv = snnspx.nn.SRMConv2d(2, 4, 3, backend=backend, dtype=torch.float64, **neuron)
    lin = snnspx.nn.SRMLinear(6, 3, weight_norm=False, backend=backend, dtype=torch.float64, **neuron)
    for m in (conv, lin, snnspx.nn.SRMNeuron(**neuron), snnspx.nn.SRMSupPixPool("sum", 2, **neuron)):
        assert m.params == p and m.fire_if == ">=" and m.gradient_type == "original"
        assert "forward_type='nonleaky'" in repr(m)
    assert snnspx.nn.SRMConv2d(2, 4, 3, params=p, fire_if=">").params == SRMParams(forward_type="nonleaky", gradient_type="original")

    # SRMConv2d: spikes and both gradients are the reference layer's with these options
    s_in = (torch.rand((5, 2, 2, 5, 5), generator=gen) < 0.5).double().requires_grad_()
    out = conv(s_in)
    w = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    (out * w).sum().backward()
    ref = R.srm_conv2d_forward(s_in.detach(), conv.weight.detach(), params=p)
    assert out.sum() > 0 and torch.equal(out.detach(), ref[0])
    g_in, g_w = R.srm_conv2d_backward(w, s_in.detach(), conv.weight.detach(), *ref, params=p)
    torch.testing.assert_close(s_in.grad, g_in)
    torch.testing.assert_close(conv.weight.grad, g_w)

    # SRMLinear: spikes and the weight gradient
    s_lin = (torch.rand((8, 2, 6), generator=gen) < 0.5).double()
    with torch.no_grad():
        lin.weight.mul_(3.0)
    out = lin(s_lin)
    w = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    (out * w).sum().backward()
    ref = R.srm_linear_forward(s_lin, lin.weight.detach(), params=p)
    assert out.sum() > 0 and torch.equal(out.detach(), ref[0])
    torch.testing.assert_close(lin.weight.grad, R.srm_linear_backward(w, s_lin, lin.weight.detach(), *ref, params=p)[1])

    # SRMNeuron and SRMSupPixPool
    x = currents(gen, (6, 2, 1, 2, 3), torch.float64)
    assert torch.equal(snnspx.nn.SRMNeuron(backend=backend, **neuron)(x), R.srm_forward(x, params=p)[0])
    labels = torch.tensor([[0, 1, 1], [0, 0, -1]])
    y = snnspx.nn.SRMSupPixPool("sum", 2, backend=backend, **neuron)(x, labels)
    assert torch.equal(y, R.srm_suppix_pool(x, labels, num_superpixels=2, mode="sum", params=p))


# --------------------------------------------------------------------------- CUDA runs the default neuron only
def test_cuda_backend_gate(monkeypatch):
    """Where 'cuda' would run a non-default neuron: a request (argument or SNNSPX_BACKEND) is a
    ValueError naming the options and the way out; the default choice turns to 'torch'. (The
    device is faked: the gate looks at the resolved backend only.)"""
    from snnspx.functional import srm as S

    monkeypatch.setattr(S, "resolve", lambda backend, device: "cuda")
    monkeypatch.delenv("SNNSPX_BACKEND", raising=False)
    dev = torch.device("cpu")
    p = SRMParams(gradient_type="nonnegative")
    assert S.resolve_neuron("cuda", dev, SRMParams()) == "cuda"
    assert S.resolve_neuron(None, dev, p) == "torch"
    msg = r"runs the default neuron only .*got gradient_type='nonnegative': run CUDA tensors with backend='torch'"
    with pytest.raises(ValueError, match=msg):
        S.resolve_neuron("cuda", dev, p)
    monkeypatch.setenv("SNNSPX_BACKEND", "cuda")
    with pytest.raises(ValueError, match="fire_if='>='"):
        S.resolve_neuron(None, dev, SRMParams(fire_if=">="))


@pytest.mark.cuda
def test_cuda_tensors_with_variants():
    """On a GPU: backend='cuda' with options is a ValueError (the wrapper's, and the op's own
    check for direct calls); without a backend the PyTorch kernels run them."""
    x = torch.randn(6, 4, dtype=torch.float64, device="cuda") + 0.5
    p = SRMParams(fire_if=">=", forward_type="nonleaky")
    with pytest.raises(ValueError, match="run CUDA tensors with backend='torch'"):
        F.srm_neuron(x, params=p, backend="cuda")
    with pytest.raises(ValueError, match="forward_type='nonleaky'"):
        torch.ops.snnspx.srm_forward(x, 5.0, 3.0, 2.5, 1.0, p.variant)
    got = F.srm_forward(x, params=p)
    assert_forward_equal(tuple(t.cpu() for t in got), R.srm_forward(x.cpu(), params=p), "cuda tensors, torch kernels")
