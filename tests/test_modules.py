"""The nn modules as a PyTorch user meets them: autocast, half-precision construction, the meta
device, argument checks at construction, and an extra_repr that shows every setting."""

from __future__ import annotations

import pytest
import torch

import snnspx
from conftest import GRID


def _layers(backend):
    return {
        "linear": (snnspx.nn.SRMLinear(32, 8, v_th=0.5, backend=backend), (4, 2, 32)),
        "conv": (snnspx.nn.SRMConv2d(3, 4, 3, padding=1, v_th=0.5, backend=backend), (4, 2, 3, 6, 6)),
    }


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("layer", ["linear", "conv"])
def test_layers_under_autocast(backend, device, layer, gen):
    """Inside torch.autocast the synapse runs in the autocast dtype, forward and backward,
    and the gradients equal those of the same layer run in that dtype without autocast."""
    dtype = torch.bfloat16 if device == "cpu" else torch.float16
    m, shape = _layers(backend)[layer]
    m = m.to(device)
    s = (torch.rand(shape, generator=gen) < 0.5).float().to(device).requires_grad_()
    with torch.autocast(device, dtype=dtype):
        y = m(s)
    assert y.dtype == dtype and y.sum() > 0
    y.sum().backward()
    assert s.grad.dtype == torch.float32 and m.weight.grad.dtype == torch.float32

    # the same computation by hand: weight and input cast to dtype, no autocast
    m2, _ = _layers(backend)[layer]
    m2 = m2.to(device)
    m2.load_state_dict(m.state_dict())
    s2 = s.detach().clone().requires_grad_()
    w = m2.weight
    if layer == "linear":
        w_hat = snnspx.functional.standardize_weight(w, m2.bn_weight, m2.bn_bias, eps=m2.eps)
        y2 = snnspx.functional.srm_linear(s2.to(dtype), w_hat.to(dtype), v_th=0.5, backend=backend)
    else:
        y2 = snnspx.functional.srm_conv2d(s2.to(dtype), w.to(dtype), padding=1, v_th=0.5, backend=backend)
    y2.sum().backward()
    assert torch.equal(y, y2)
    torch.testing.assert_close(s.grad, s2.grad)
    torch.testing.assert_close(m.weight.grad, m2.weight.grad)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_layers_construct(dtype, seed):
    """orthogonal_ has no half-precision QR: the layers initialise in float32 and round once."""
    for make in (lambda **kw: snnspx.nn.SRMConv2d(2, 4, 3, **kw), lambda **kw: snnspx.nn.SRMLinear(8, 4, **kw)):
        torch.manual_seed(seed)
        half = make(dtype=dtype)
        torch.manual_seed(seed)
        full = make()
        assert half.weight.dtype == dtype
        assert torch.equal(half.weight, full.weight.detach().to(dtype))


def test_meta_device_then_reset_parameters():
    with torch.device("meta"):
        m = snnspx.nn.SRMLinear(8, 4, weight_bits=4)
    m = m.to_empty(device="cpu")
    m.reset_parameters()
    q = m.weight_quantizer
    assert q.running_min.item() == float("inf") and q.running_max.item() == float("-inf")
    assert q.scale_exponent.item() == -1
    torch.testing.assert_close(m.weight @ m.weight.T, torch.eye(4), atol=1e-5, rtol=0)
    m(torch.ones(2, 1, 8))  # calibrates in training mode
    assert q.scale_exponent.item() >= 0
    q.reset_running_stats()
    with pytest.raises(RuntimeError, match="no range yet"):
        q.eval()(torch.ones(3))


@pytest.mark.parametrize(
    "make,error,match",
    [
        (lambda: snnspx.nn.SRMLinear(8, 4, eps=float("nan")), ValueError, "eps must be finite"),
        (lambda: snnspx.nn.SRMLinear(8, 4, eps=-1.0), ValueError, "eps must be finite and >= 0"),
        (lambda: snnspx.nn.SRMLinear(8, 4, eps="1e-5"), TypeError, "eps must be a Python number"),
        (lambda: snnspx.nn.SRMLinear(8, 4, weight_norm=1), TypeError, "weight_norm must be True or False"),
        (lambda: snnspx.nn.SRMLinear(8, 4, weight_rounding="floor"), ValueError, "weight_rounding"),
        (lambda: snnspx.nn.SRMConv2d(2, 4, 3, batch_first="yes"), TypeError, "batch_first must be True or False"),
        (lambda: snnspx.nn.SRMNeuron(batch_first=None), TypeError, "batch_first"),
        (lambda: snnspx.nn.SpikeAvgPool2d(batch_first=1), TypeError, "batch_first"),
        (lambda: snnspx.nn.SupPixPool(check_labels="no"), TypeError, "check_labels must be True or False"),
        (lambda: snnspx.nn.SupPixUnpool(batch_first="no"), TypeError, "batch_first"),
        (lambda: snnspx.nn.SRMSupPixPool(check_labels=0), TypeError, "check_labels"),
    ],
)
def test_constructor_checks(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_extra_repr_shows_every_setting():
    kw = dict(du_inv_clamp=2.0, max_dudt_inv=10.0, batch_first=True, backend="torch")
    for m in (snnspx.nn.SRMNeuron(**kw), snnspx.nn.SRMSupPixPool(num_superpixels=4, **kw),
              snnspx.nn.SRMLinear(8, 4, **kw), snnspx.nn.SRMConv2d(2, 4, 3, **kw)):
        r = repr(m)
        for text in ("du_inv_clamp=2.0", "max_dudt_inv=10.0", "batch_first=True", "backend='torch'"):
            assert text in r, f"{text!r} missing from {r}"
    r = repr(snnspx.nn.SupPixPool(check_labels=False, batch_first=True, backend="torch"))
    assert "check_labels=False" in r and "batch_first=True" in r and "backend='torch'" in r
    r = repr(snnspx.nn.SupPixUnpool(check_labels=False, backend="cpp"))
    assert r == "SupPixUnpool(check_labels=False, batch_first=False, backend='cpp')"
    assert "backend='cpp'" in repr(snnspx.nn.SpikeAvgPool2d(backend="cpp"))
    assert "check_labels=True" in repr(snnspx.nn.SRMSupPixPool())


@pytest.mark.parametrize("backend,device", GRID)
def test_stacked_layers_under_autocast(backend, device, gen):
    """The README's network under autocast: the second layer receives spikes already in the
    autocast dtype while its weight is float32; both train, the weights' gradients float32."""
    dtype = torch.bfloat16 if device == "cpu" else torch.float16
    net = torch.nn.Sequential(
        snnspx.nn.SRMConv2d(2, 8, 3, padding=1, v_th=0.3, backend=backend), snnspx.nn.SpikeAvgPool2d(2),
        torch.nn.Flatten(2), snnspx.nn.SRMLinear(8 * 4 * 4, 10, v_th=0.3, backend=backend),
    ).to(device)
    s = (torch.rand(6, 2, 2, 8, 8, generator=gen) < 0.4).float().to(device)
    with torch.autocast(device, dtype=dtype):
        out = net(s)
    assert out.dtype == dtype and out.shape == (6, 2, 10)
    out.float().sum().backward()
    for p in net.parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()


def _srm_modules():
    return {
        "neuron": lambda *a, **kw: snnspx.nn.SRMNeuron(*a, **kw),
        "conv": lambda *a, **kw: snnspx.nn.SRMConv2d(2, 4, 3, 1, 0, 1, 1, *a, **kw),
        "linear": lambda *a, **kw: snnspx.nn.SRMLinear(8, 4, *a, **kw),
        "fused": lambda *a, **kw: snnspx.nn.SRMSupPixPool("avg", 4, *a, **kw),
    }


@pytest.mark.parametrize("name", ["neuron", "conv", "linear", "fused"])
def test_modules_take_params_and_expose_them(name, gen):
    """Every SRM module takes params=SRMParams(...) (also positionally, right after its own
    arguments), the fields as keywords, or both (the keywords win); it exposes ``.params`` and
    the fields as read-only attributes, and runs that neuron."""
    import dataclasses

    make = _srm_modules()[name]
    p = snnspx.SRMParams(tau_m=6.0, v_th=0.5)
    forms = [make(params=p), make(p), make(tau_m=6.0, v_th=0.5),
             make(params=snnspx.SRMParams(tau_m=6.0, v_th=2.0), v_th=0.5)]
    for m in forms:
        assert m.params == p and isinstance(m.params, snnspx.SRMParams)
        got = (m.tau_m, m.tau_s, m.tau_grad, m.v_th, m.du_inv_clamp, m.max_dudt_inv)
        assert got == (6.0, 3.0, 2.5, 0.5, 4.0, snnspx.MAX_DUDT_INV), got
        with pytest.raises(AttributeError):
            m.tau_m = 7.0
        with pytest.raises(dataclasses.FrozenInstanceError):
            m.params.v_th = 0.25
    assert make().params == snnspx.SRMParams()
    with pytest.raises(TypeError):
        make(p, True)  # batch_first (and everything after params) is keyword-only
    with pytest.raises(ValueError, match="tau_m and tau_s must differ"):
        make(tau_m=3.0)
    with pytest.raises(TypeError, match="v_th"):
        make(v_th="1.0")
    if name == "neuron":  # the module runs its params: the oracle's spikes, also after params is replaced
        x = torch.randn(8, 2, 5, generator=gen) * 2
        m = forms[0]
        assert torch.equal(m(x), snnspx.reference.srm_forward(x, params=p)[0])
        m.params = snnspx.SRMParams(tau_m=6.0, v_th=0.25)
        assert m.v_th == 0.25
        assert torch.equal(m(x), snnspx.reference.srm_forward(x, tau_m=6.0, v_th=0.25)[0])


def test_meta_tensors_reach_the_backend_check():
    """A device autocast does not know (meta) gets the backend's own error, not autocast's."""
    s = torch.zeros(2, 1, 4, device="meta")
    w = torch.zeros(3, 4, device="meta")
    with pytest.raises(ValueError, match="runs on CPU tensors"):
        snnspx.functional.srm_linear(s, w, backend="cpp")


@pytest.mark.parametrize("backend", ["oracle", "torch", "cpp"])
def test_functional_check_labels_must_be_bool(backend):
    """The functional ops and the oracle's functions (snnspx.reference) alike."""
    x = torch.zeros(2, 1, 1, 2, 2)
    lab = torch.zeros(2, 2, dtype=torch.long)
    F = snnspx.reference if backend == "oracle" else snnspx.functional
    kw = {} if backend == "oracle" else dict(backend=backend)
    with pytest.raises(TypeError, match="check_labels must be True or False"):
        F.suppix_pool(x, lab, num_superpixels=1, check_labels="no", **kw)
    with pytest.raises(TypeError, match="check_labels must be True or False"):
        F.suppix_unpool(torch.zeros(2, 1, 1, 1), lab, check_labels=None, **kw)
    with pytest.raises(TypeError, match="check_labels must be True or False"):
        F.srm_suppix_pool(x, lab, num_superpixels=1, check_labels=1, **kw)


def _every_module():
    """One of each module, with its input (labels where it takes them)."""
    labels = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, -1, 3], [2, 2, 3, 3]])
    spikes = (torch.rand(5, 2, 3, 4, 4, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    return {
        "neuron": (snnspx.nn.SRMNeuron(v_th=0.5), (spikes * 2,)),
        "conv": (snnspx.nn.SRMConv2d(3, 4, 3, padding=1, v_th=0.5), (spikes,)),
        "linear": (snnspx.nn.SRMLinear(48, 6, v_th=0.5), (spikes.flatten(2),)),
        "spike_pool": (snnspx.nn.SpikeAvgPool2d(2), (spikes,)),
        "quantizer": (snnspx.nn.Quantizer(bits=4), (spikes * 3 - 1,)),
        "suppix_pool": (snnspx.nn.SupPixPool("max", num_superpixels=4), (spikes, labels)),
        "suppix_unpool": (snnspx.nn.SupPixUnpool(), (spikes.flatten(3)[..., :4], labels)),
        "fused": (snnspx.nn.SRMSupPixPool("avg", 4, v_th=0.5), (spikes * 2, labels)),
    }


@pytest.mark.parametrize(
    "name", ["neuron", "conv", "linear", "spike_pool", "quantizer", "suppix_pool", "suppix_unpool", "fused"]
)
def test_modules_copy_and_pickle(name):
    """copy.deepcopy and a whole-module torch.save / torch.load give a module that computes
    the same outputs and gradients, with the same settings (repr) and state."""
    import copy
    import io

    modules = _every_module()
    assert name in modules and len(modules) == 8
    m, args = modules[name]
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    copies = [copy.deepcopy(m), torch.load(buf, weights_only=False)]

    def run(mod):
        x = args[0].clone().requires_grad_()
        y = mod(x, *args[1:])
        (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
        return y.detach(), x.grad, [p.grad for p in mod.parameters()]

    for c in copies:  # before any call: a training Quantizer's call moves its range
        assert repr(c) == repr(m)
        assert c.state_dict().keys() == m.state_dict().keys()
        assert all(torch.equal(a, b) for a, b in zip(c.state_dict().values(), m.state_dict().values()))
    want = run(m)
    assert want[0].abs().sum() > 0 and want[1].abs().sum() > 0, "the module should give outputs and gradients"
    for c in copies:
        got = run(c)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        assert all(torch.equal(a, b) for a, b in zip(got[2], want[2]))
