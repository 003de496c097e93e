"""The layers' options from the original (docs/maths.md §4): the input-gradient mask of
srm_conv2d / srm_linear and their modules, and SRMConv2d's weight standardisation
(standardize_weight on N-D weights), against snnspx.reference and plain formulas."""

from __future__ import annotations

import pytest
import torch

import snnspx
from snnspx import functional as F
from snnspx import reference as R
from conftest import GRID
from test_layers import assert_spikes_equal, dyadic, layer_grads, no_tf32, randn, spike_train  # noqa: F401


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("layer", ["linear", "conv"])
def test_input_grad_mask(backend, device, layer, gen):
    """input_grad_mask=True (the default, the original's) multiplies the input gradient by s_in:
    exactly 0 where s_in is 0, and s_in times the unmasked gradient elsewhere (s_in holds
    non-binary values here); False leaves s_in out. Both against the reference's loops; the
    weight gradient does not depend on the option; modules pass it on."""
    if layer == "linear":
        s_in = spike_train(gen, (8, 3, 10), torch.float64, device, p=0.5)
        weight = dyadic(gen, (5, 10), torch.float64, device)
        fwd, bwd, conv = R.srm_linear_forward, R.srm_linear_backward, {}
        fn = F.srm_linear
    else:
        s_in = spike_train(gen, (6, 2, 2, 5, 5), torch.float64, device, p=0.5)
        weight = dyadic(gen, (3, 2, 3, 3), torch.float64, device)
        fwd, bwd, conv = R.srm_conv2d_forward, R.srm_conv2d_backward, dict(padding=1)
        fn = F.srm_conv2d
    s_in = s_in * (1 + torch.rand(s_in.shape, generator=gen, dtype=torch.float64).to(device))  # values in [1, 2)
    st = fwd(s_in.cpu(), weight.cpu(), v_th=0.3, **conv)
    assert st[0].sum() > 0
    grad = randn(gen, st[0].shape, torch.float64, device)
    got = {}
    for mask in (True, False):
        kw = {} if mask else dict(input_grad_mask=False)
        spikes, gs, gw = layer_grads(lambda s, w: fn(s, w, v_th=0.3, backend=backend, **conv, **kw), s_in, weight, grad)
        want_s, want_w = bwd(grad.cpu(), s_in.cpu(), weight.cpu(), *st, v_th=0.3, **conv, **kw)
        assert_spikes_equal(spikes, st[0])
        torch.testing.assert_close(gs.cpu(), want_s)
        torch.testing.assert_close(gw.cpu(), want_w)
        got[mask] = gs, gw
    silent = s_in == 0
    assert silent.any() and torch.all(got[True][0][silent] == 0) and (got[False][0][silent] != 0).any()
    torch.testing.assert_close(got[True][0], torch.where(silent, 0.0, got[False][0] * s_in))
    assert torch.equal(got[True][1], got[False][1])
    # the modules hand the option to the functional form
    for mask in (True, False):
        torch.manual_seed(2)
        if layer == "linear":
            m = snnspx.nn.SRMLinear(10, 5, v_th=0.3, input_grad_mask=mask, weight_norm=False, backend=backend)
        else:
            m = snnspx.nn.SRMConv2d(2, 3, 3, padding=1, v_th=0.3, input_grad_mask=mask, backend=backend)
        m = m.to(device=device, dtype=torch.float64)
        assert m.input_grad_mask is mask and f"input_grad_mask={mask}" in repr(m)
        w = m.weight.detach()
        _, want, _ = layer_grads(lambda s, w: fn(s, w, v_th=0.3, input_grad_mask=mask, backend=backend, **conv),
                                 s_in, w, grad)
        x = s_in.clone().requires_grad_()
        m(x).backward(grad)
        torch.testing.assert_close(x.grad, want)
    with pytest.raises(TypeError, match="input_grad_mask must be True or False"):
        fn(s_in, weight, input_grad_mask=1, backend=backend, **conv)


def test_standardize_weight_nd(gen):
    """A convolution weight [C_out, C_in, kH, kW]: each output channel's C_in * kH * kW values
    standardised (unbiased variance), then bn_weight and bn_bias per channel; the reference
    agrees, and the result is the 2-D form of the flattened rows."""
    w = torch.randn(4, 3, 2, 3, generator=gen, dtype=torch.float64) * 2 + 0.5
    gain = torch.rand(4, generator=gen, dtype=torch.float64) + 0.5
    bias = torch.randn(4, generator=gen, dtype=torch.float64)
    eps = 0.25
    want = torch.empty_like(w)
    for o in range(4):
        vals = [float(v) for v in w[o].flatten()]
        mean = sum(vals) / len(vals)
        var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)
        want[o] = (w[o] - mean) / (var + eps) ** 0.5 * gain[o] + bias[o]
    got = F.standardize_weight(w, gain, bias, eps=eps)
    assert got.shape == w.shape
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(R.standardize_weight(w, gain, bias, eps=eps), want)
    torch.testing.assert_close(got, F.standardize_weight(w.flatten(1), gain, bias, eps=eps).reshape(w.shape))
    for bad in (torch.ones(3, 1, 1, 1), torch.ones(4)):
        with pytest.raises(ValueError, match="at least 2 values per output unit"):
            F.standardize_weight(bad)
    with pytest.raises(ValueError, match=r"bn_weight must be \[4\]"):
        F.standardize_weight(w, gain[:3])


@pytest.mark.parametrize("backend,device", GRID)
def test_conv_weight_norm(backend, device, gen):
    """SRMConv2d(weight_norm=True): the convolution uses the standardised filters (against the
    plain formula), the spikes and input gradient are the reference's for that W_hat, and
    weight, bn_weight and bn_bias receive autograd's gradients through the standardisation."""
    torch.manual_seed(gen.initial_seed())
    m = snnspx.nn.SRMConv2d(4, 6, 3, padding=1, groups=2, v_th=0.3, weight_norm=True, eps=1e-4, backend=backend,
                            dtype=torch.float64).to(device)
    assert {n for n, _ in m.named_parameters()} == {"weight", "bn_weight", "bn_bias"}
    assert m.bn_weight.shape == m.bn_bias.shape == (6,)
    assert torch.all(m.bn_weight == 1) and torch.all(m.bn_bias == 0)
    with torch.no_grad():
        m.bn_weight.uniform_(0.5, 1.5)
        m.bn_bias.uniform_(0.0, 0.2)
    w = m.weight.detach()
    flat = w.reshape(6, -1)  # rows of C_in / groups * kH * kW = 18
    want_hat = ((flat - flat.mean(1, keepdim=True)) / torch.sqrt(flat.var(1, correction=1, keepdim=True) + 1e-4)
                * m.bn_weight.detach()[:, None] + m.bn_bias.detach()[:, None]).reshape(w.shape)
    torch.testing.assert_close(m.effective_weight(), want_hat)
    s_in = spike_train(gen, (6, 2, 4, 5, 5), torch.float64, device, p=0.4).requires_grad_()
    out = m(s_in)
    grad = randn(gen, out.shape, torch.float64, device)
    out.backward(grad)
    st = R.srm_conv2d_forward(s_in.detach().cpu(), want_hat.cpu(), padding=1, groups=2, v_th=0.3)
    assert st[0].sum() > 0
    assert_spikes_equal(out.detach(), st[0])
    want_s, want_what = R.srm_conv2d_backward(grad.cpu(), s_in.detach().cpu(), want_hat.cpu(), *st, padding=1,
                                              groups=2, v_th=0.3)
    torch.testing.assert_close(s_in.grad.cpu(), want_s)
    params = [p.detach().clone().requires_grad_() for p in (m.weight, m.bn_weight, m.bn_bias)]
    w_hat = F.standardize_weight(*params, eps=1e-4)
    want = torch.autograd.grad(w_hat, params, want_what.to(device))
    for p, g in zip((m.weight, m.bn_weight, m.bn_bias), want):
        assert p.grad.abs().sum() > 0
        torch.testing.assert_close(p.grad, g)
    plain = snnspx.nn.SRMConv2d(4, 6, 3)
    assert plain.weight_norm is False and plain.bn_weight is None and plain.bn_bias is None
    assert "weight_norm=True" in repr(m) and "eps=0.0001" in repr(m)
    with pytest.raises(ValueError, match="weight_norm needs at least 2 inputs"):
        snnspx.nn.SRMConv2d(1, 1, 1, weight_norm=True)
    with pytest.raises(TypeError, match="weight_norm must be True or False"):
        snnspx.nn.SRMConv2d(1, 1, 1, weight_norm="yes")
