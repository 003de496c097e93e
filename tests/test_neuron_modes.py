"""The neuron's gradient mode, learnable constants and carried state as the modules and layers
use them (docs/maths.md §9-§11): surrogate layers are plain autograd of the synapse and the
surrogate neuron; learned constants stay valid; chunks and single steps give one pass's spikes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as TF

import snnspx
from snnspx import SRMParams
from snnspx import functional as F
from snnspx import nn as snn


def spikes_in(gen, shape, p=0.3):
    return (torch.rand(shape, generator=gen) < p).float()


def test_params_gradient_fields():
    p = SRMParams(grad="surrogate", surrogate="atan")
    assert p.surrogate_alpha == 2.0 and p.variant == 0
    assert SRMParams(grad="surrogate", surrogate="triangle", alpha=0.5).surrogate_alpha == 0.5
    with pytest.raises(ValueError, match="grad must be one of"):
        SRMParams(grad="bptt")
    with pytest.raises(ValueError, match="surrogate must be one of"):
        SRMParams(surrogate="erf")
    with pytest.raises(ValueError, match="alpha must be a finite number > 0"):
        SRMParams(alpha=0.0)
    with pytest.raises(TypeError, match="detach_reset must be a bool"):
        SRMParams(detach_reset=1)
    with pytest.raises(ValueError, match="forward_type must be 'leaky'"):
        SRMParams(grad="surrogate", forward_type="nonleaky")
    with pytest.raises(ValueError, match="no meaning with grad='surrogate'"):
        SRMParams(grad="surrogate", gradient_type="original")


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_srm_neuron_surrogate_mode_is_the_surrogate_op(backend, gen):
    x = torch.randn((10, 2, 3, 4), generator=gen) + 0.5
    tau_m = torch.tensor([5.0, 6.0, 7.0], requires_grad=True)
    kw = dict(surrogate="fast_sigmoid", alpha=10.0, detach_reset=True, backend=backend)
    a = x.clone().requires_grad_()
    out = F.srm_neuron(a, grad="surrogate", tau_m=tau_m, **kw)
    out.sum().backward()
    b = x.clone().requires_grad_()
    tb = tau_m.detach().clone().requires_grad_()
    ref = F.srm_neuron_surrogate(b, tau_m=tb, **kw)
    ref.sum().backward()
    assert torch.equal(out, ref)
    assert torch.equal(F.srm_neuron(x, grad="surrogate", backend=backend), F.srm_neuron(x, backend=backend))
    assert torch.equal(a.grad, b.grad) and torch.equal(tau_m.grad, tb.grad)
    with pytest.raises(ValueError, match="need grad='surrogate'"):
        F.srm_neuron(x, tau_m=tau_m)


@pytest.mark.parametrize("layer", ["conv", "linear"])
def test_surrogate_layer_is_plain_autograd(layer, gen):
    """grad="surrogate": the layer's gradients are autograd's of synapse + surrogate neuron (no
    input_grad_scale, no mask), for the input, the weight and per-channel v_th."""
    torch.manual_seed(0)
    if layer == "conv":
        m = snn.SRMConv2d(3, 4, 3, padding=1, grad="surrogate", learn_threshold=True, weight_norm=True)
        s = spikes_in(gen, (8, 2, 3, 6, 6))
    else:
        m = snn.SRMLinear(6, 4, grad="surrogate", learn_threshold=True)
        s = spikes_in(gen, (8, 2, 6))
    with torch.no_grad():
        m.weight.mul_(2.0)
        m.constants.v_th.copy_(torch.linspace(0.3, 0.9, 4))
    a = s.clone().requires_grad_()
    out = m(a)
    g = torch.randn(out.shape, generator=gen)
    (out * g).sum().backward()
    b = s.clone().requires_grad_()
    w = m.effective_weight().detach().requires_grad_()
    v = m.constants.v_th.detach().clone().requires_grad_()
    T, B = b.shape[:2]
    if layer == "conv":
        x = TF.conv2d(b.flatten(0, 1), w, padding=1).unflatten(0, (T, B))
    else:
        x = b @ w.T
    ref = F.srm_neuron_surrogate(x, v_th=v)
    (ref * g).sum().backward()
    assert out.sum() > 0 and torch.equal(out, ref)
    torch.testing.assert_close(a.grad, b.grad)
    torch.testing.assert_close(m.constants.v_th.grad, v.grad)
    grad_w_hat = torch.autograd.grad(m.effective_weight(), m.weight, w.grad)[0]
    torch.testing.assert_close(m.weight.grad, grad_w_hat)


def test_learned_time_constants_stay_valid():
    c = snn.LearnableConstants(5.0, 3.0, 1.0, learn_tau=True, learn_threshold=False, channels=3)
    tau = c()
    torch.testing.assert_close(tau["tau_m"], torch.full((3,), 5.0))
    torch.testing.assert_close(tau["tau_s"], torch.full((3,), 3.0))
    with torch.no_grad():  # an optimiser step far out of range
        c.tau_low.copy_(torch.tensor([-50.0, 0.0, 50.0]))
        c.tau_gap.copy_(torch.tensor([-50.0, 50.0, 0.0]))
    tau = c()
    assert (tau["tau_s"] >= 1.1 - 1e-6).all() and (tau["tau_m"] - tau["tau_s"] >= 0.1 - 1e-6).all()
    swapped = snn.LearnableConstants(3.0, 5.0, 1.0, learn_tau=True, learn_threshold=False, channels=None)()
    assert swapped["tau_m"].item() == pytest.approx(3.0) and swapped["tau_s"].item() == pytest.approx(5.0)
    with pytest.raises(ValueError, match="learn_tau needs"):
        snn.LearnableConstants(3.0, 3.05, 1.0, learn_tau=True, learn_threshold=False, channels=None)
    with pytest.raises(ValueError, match="need grad='surrogate'"):
        snn.SRMNeuron(learn_tau=True)


def test_learn_tau_trains_per_channel(gen):
    m = snn.SRMNeuron(grad="surrogate", learn_tau=True, channels=3)
    x = torch.randn((12, 2, 3, 5), generator=gen) + 0.4
    m(x).sum().backward()
    assert m.constants.tau_low.grad.shape == (3,) and m.constants.tau_low.grad.abs().sum() > 0


@pytest.mark.parametrize("grad", ["event", "surrogate"])
@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_stateful_chunks_equal_one_pass(grad, backend, gen):
    x = torch.randn((15, 2, 3, 4), generator=gen) + 0.5
    whole = snn.SRMNeuron(grad=grad, backend=backend)(x)
    n = snn.SRMNeuron(grad=grad, backend=backend, stateful=True)
    assert torch.equal(torch.cat([n(x[:4]), n(x[4:5]), n(x[5:])]), whole)
    snn.reset_state(torch.nn.Sequential(n))
    assert n.state is None and torch.equal(n(x), whole)
    single = snn.SRMNeuron(grad=grad, backend=backend, stateful=True, step_mode="single")
    assert torch.equal(torch.stack([single(x[t]) for t in range(x.shape[0])]), whole)


def test_stateful_surrogate_gradients_cross_chunks(gen):
    x = torch.randn((12, 2, 4), generator=gen) + 0.5
    a = x.clone().requires_grad_()
    snn.SRMNeuron(grad="surrogate")(a).sum().backward()
    b = x.clone().requires_grad_()
    n = snn.SRMNeuron(grad="surrogate", stateful=True)
    torch.cat([n(b[:5]), n(b[5:])]).sum().backward()
    torch.testing.assert_close(a.grad, b.grad)


def test_stateful_layers_and_pool(gen):
    s = spikes_in(gen, (10, 2, 3, 6, 6), 0.4)
    conv = snn.SRMConv2d(3, 4, 3, padding=1, stateful=True)
    with torch.no_grad():
        conv.weight.mul_(3.0)
        chunks = torch.cat([conv(s[:3]), conv(s[3:])])
        conv.stateful = False
        assert torch.equal(chunks, conv(s)) and chunks.sum() > 0
    conv.stateful = True
    conv.reset_state()
    # With autograd too (event mode: each call is a truncation point); the weight learns.
    torch.cat([conv(s[:3]), conv(s[3:])]).sum().backward()
    assert conv.weight.grad.abs().sum() > 0
    labels = torch.randint(0, 5, (2, 6, 6), generator=gen)
    x = torch.randn((10, 2, 3, 6, 6), generator=gen) + 0.5
    pool = snn.SRMSupPixPool("sum", 5, grad="surrogate", stateful=True)
    whole = snn.SRMSupPixPool("sum", 5)(x, labels)
    assert torch.equal(torch.cat([pool(x[:6], labels), pool(x[6:], labels)]), whole)


def test_compiled_surrogate_model(gen):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        snn.SRMConv2d(2, 4, 3, padding=1, grad="surrogate", learn_tau=True),
        torch.nn.Flatten(2),
        snn.SRMLinear(4 * 6 * 6, 3, grad="surrogate", learn_threshold=True),
    )
    s = spikes_in(gen, (6, 2, 2, 6, 6), 0.5)
    eager = model(s)
    eager.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)(s)
    assert torch.equal(eager, compiled) and eager.sum() > 0
    compiled.sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], msg=n)


def test_functional_fused_pool_in_surrogate_mode(gen):
    x = torch.randn((6, 2, 3, 5, 5), generator=gen) + 0.5
    labels = torch.randint(-1, 4, (2, 5, 5), generator=gen)
    v = torch.tensor([0.5, 0.8, 1.0], requires_grad=True)
    a = x.clone().requires_grad_()
    y = F.srm_suppix_pool(a, labels, num_superpixels=4, mode="avg", grad="surrogate", v_th=v)
    y.sum().backward()
    b = x.clone().requires_grad_()
    vb = v.detach().clone().requires_grad_()
    ref = F.suppix_pool(F.srm_neuron_surrogate(b, v_th=vb), labels, num_superpixels=4, mode="avg")
    ref.sum().backward()
    assert torch.equal(y, ref)
    torch.testing.assert_close(a.grad, b.grad)
    torch.testing.assert_close(v.grad, vb.grad)
    assert torch.equal(F.srm_suppix_pool(x, labels, num_superpixels=4, grad="surrogate"),
                       F.srm_suppix_pool(x, labels, num_superpixels=4))


def test_linear_learned_constants_act_per_feature(gen):
    """One learned value per output feature, whatever the dims between batch and features."""
    m = snn.SRMLinear(6, 4, grad="surrogate", learn_threshold=True, weight_norm=False)
    with torch.no_grad():
        m.weight.mul_(3.0)
        m.constants.v_th.copy_(torch.tensor([0.2, 0.2, 1e6, 1e6]))
    out = m(spikes_in(gen, (8, 2, 4, 6), 0.6))  # [T, B, K=4, features=4]
    per_feature = out.sum(dim=(0, 1, 2))
    assert per_feature[:2].sum() > 0 and per_feature[2:].sum() == 0


def test_tensor_time_constant_with_a_number_partner(gen):
    x = torch.randn((6, 2, 3), generator=gen) + 0.5
    out = F.srm_neuron(x, grad="surrogate", tau_m=torch.tensor(8.0), tau_s=5.0)
    assert torch.equal(out, F.srm_neuron(x, tau_m=8.0, tau_s=5.0))


def test_truncated_bptt_with_detach_state(gen):
    m = snn.SRMLinear(5, 3, grad="surrogate", stateful=True)
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    s = spikes_in(gen, (12, 2, 5), 0.5)
    for chunk in (s[:4], s[4:8], s[8:]):
        m(chunk).sum().backward()
        opt.step()
        snn.detach_state(m)
    assert m.state is not None and not m.state.requires_grad
    with pytest.raises(ValueError, match="step_mode='single' needs stateful=True"):
        snn.SRMNeuron(step_mode="single")


def test_rate_init_ignores_and_keeps_carried_state(gen):
    torch.manual_seed(0)
    nets = [torch.nn.Sequential(snn.SRMLinear(20, 10, stateful=st), snn.SRMLinear(10, 5, stateful=st))
            for st in (False, True)]
    nets[1].load_state_dict(nets[0].state_dict())
    batch = spikes_in(gen, (12, 4, 20), 0.3)
    with torch.no_grad():
        nets[1](batch)  # leaves a carried state
    kept = nets[1][0].state.clone()
    scales = [[r.scale for r in snnspx.init.rate_init(n, batch)] for n in nets]
    assert scales[0] == scales[1]
    assert nets[1][0].stateful and torch.equal(nets[1][0].state, kept)


def test_pool_module_with_learned_threshold_is_the_functional_composition(gen):
    x = torch.randn((6, 2, 3, 5, 5), generator=gen) + 0.5
    labels = torch.randint(-1, 4, (2, 5, 5), generator=gen)
    pool = snn.SRMSupPixPool("max", 4, grad="surrogate", learn_threshold=True, channels=3)
    with torch.no_grad():
        pool.constants.v_th.copy_(torch.tensor([0.4, 0.9, 1.5]))
    v = pool.constants.v_th.detach()
    ref = F.suppix_pool(F.srm_neuron_surrogate(x, v_th=v), labels, num_superpixels=4, mode="max")
    y = pool(x, labels)
    assert torch.equal(y, ref) and y.sum() > 0
    y.sum().backward()
    assert pool.constants.v_th.grad.shape == (3,)


def test_event_mode_ops_reject_surrogate_mode_and_constants_follow_the_layer(gen):
    x = torch.randn((4, 2, 3), generator=gen)
    with pytest.raises(ValueError, match="srm_forward is the event mode's op"):
        F.srm_forward(x, grad="surrogate")
    with pytest.raises(ValueError, match="srm_backward is the event mode's op"):
        F.srm_backward(x, x, x, x, grad="surrogate")
    m = snn.SRMLinear(6, 4, grad="surrogate", learn_tau=True, learn_threshold=True, dtype=torch.float64)
    assert {p.dtype for p in m.parameters()} == {torch.float64}
    out = m(spikes_in(gen, (5, 2, 6)).double())
    assert out.dtype == torch.float64
