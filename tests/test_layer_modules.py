"""SRM layers (docs/maths.md §4), continued: SpikeAvgPool2d, the modules, a compiled network and a
small training run (SRMConv2d and SRMLinear against the reference: test_layers.py).

Weights in the comparisons are small dyadic fractions (k / 16) and inputs are 0/1 spikes, so
every synaptic current is exact in float32 whatever the summation order: the spikes of every
backend must then equal the reference's bit for bit. Gradients are compared with assert_close.
"""

from __future__ import annotations

import pytest
import torch

import snnspx
from snnspx import functional as F
from snnspx import reference as R
from conftest import COMPILED, DTYPES, GRID, kernels_run
from layer_helpers import (  # noqa: F401 (no_tf32: an autouse fixture)
    no_tf32, WITH_ORACLE, spike_train, dyadic, randn, assert_spikes_equal, layer_grads, oracle_conv,
)


# --------------------------------------------------------------------------- SpikeAvgPool2d
POOL_CASES = [
    pytest.param((4, 2, 3, 6, 8), 2, id="k2"),
    pytest.param((3, 2, 2, 7, 5), 2, id="k2-odd"),
    pytest.param((2, 3, 2, 8, 7), 3, id="k3-odd"),
    pytest.param((2, 2, 1, 6, 6), (2, 3), id="k2x3"),
]


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,kernel", POOL_CASES)
def test_pool_matches_reference(backend, device, dtype, shape, kernel, gen):
    x = spike_train(gen, shape, dtype, device, p=0.3)
    x[0, 0, 0, :3, :3] = 0  # at least one empty window
    x[0, 0, 0, -1, -1] = 2.5  # a non-binary value counts as non-zero
    xg = x.clone().requires_grad_()
    y = F.spike_avg_pool2d(xg, kernel_size=kernel, backend=backend)
    yr = R.spike_avg_pool2d(x.cpu(), kernel_size=kernel)
    torch.testing.assert_close(y.detach().cpu(), yr)
    torch.testing.assert_close(y.detach(), torch.nn.functional.avg_pool2d(x.flatten(0, 1), kernel).reshape(y.shape))
    g = randn(gen, y.shape, dtype, device)
    y.backward(g)
    want = R.spike_avg_pool2d_backward(g.cpu(), x.cpu(), kernel_size=kernel)
    assert want.dtype == dtype and want.shape == x.shape
    torch.testing.assert_close(xg.grad.cpu(), want)


def test_pool_gradient_rule():
    """Each pixel of a window gets g / (non-zero inputs in the window), 0 for an empty window
    and for pixels that fill no window."""
    x = torch.tensor([[[[1.0, 0.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0, 1.0]]]]).requires_grad_()
    y = F.spike_avg_pool2d(x, kernel_size=2)  # [1, 1, 1, 2]
    assert y.tolist() == [[[[0.5, 0.0]]]]
    y.backward(torch.tensor([[[[3.0, 5.0]]]]))
    want = [[1.5, 1.5, 0.0, 0.0, 0.0], [1.5, 1.5, 0.0, 0.0, 0.0], [0.0] * 5]
    assert x.grad[0, 0].tolist() == want


@pytest.mark.parametrize("backend,device", WITH_ORACLE)
@pytest.mark.parametrize("dtype,k", [(torch.float16, 47), (torch.bfloat16, 17)], ids=["f16", "bf16"])
def test_pool_gradient_counts_exactly_in_half(backend, device, dtype, k, gen):
    """Windows of 47 x 47 = 2209 (float16) or 17 x 17 = 289 (bfloat16) non-zero inputs: more
    than the dtype holds exactly (2048, 256). The count and the division are in float32, and
    g / n is rounded once to the dtype."""
    x = torch.ones(2, 32, 1, k, k, dtype=dtype, device=device)
    x[1, :, :, 0, 0] = 0  # n = k*k - 1 in half of the windows
    g = randn(gen, (2, 32, 1, 1, 1), dtype, device)
    xg = x.clone().requires_grad_()
    if backend == "oracle":
        xg.grad = R.spike_avg_pool2d_backward(g, x, kernel_size=k)
    else:
        F.spike_avg_pool2d(xg, kernel_size=k, backend=backend).backward(g)
    n = torch.tensor([k * k, k * k - 1], dtype=torch.float32, device=device).reshape(2, 1, 1, 1, 1)
    want = (g.float() / n).to(dtype).expand(x.shape)  # every pixel of the window, zeros included
    assert xg.grad.dtype == dtype
    assert torch.equal(xg.grad, want), f"{int((xg.grad != want).sum())} of {x.numel()} gradients differ"


def test_pool_gradcheck(gen):
    """With no zero input the spike-count rule is the exact gradient of the average."""
    x = (torch.rand(2, 2, 3, 5, 7, generator=gen, dtype=torch.float64) + 0.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda v: F.spike_avg_pool2d(v, kernel_size=2), (x,))
    assert torch.autograd.gradcheck(lambda v: F.spike_avg_pool2d(v, kernel_size=(3, 2)), (x,))


def test_pool_module(gen):
    x = spike_train(gen, (4, 2, 3, 6, 6))
    m = snnspx.nn.SpikeAvgPool2d(2)
    assert torch.equal(m(x), F.spike_avg_pool2d(x, kernel_size=2))
    assert torch.equal(snnspx.nn.SpikeAvgPool2d(batch_first=True)(x.transpose(0, 1)), m(x).transpose(0, 1))
    assert "kernel_size=(2, 2)" in repr(m)
    with pytest.raises(ValueError, match="at least the kernel"):
        m(torch.zeros(2, 1, 1, 1, 5))
    with pytest.raises(ValueError, match="at least 3"):
        m(torch.zeros(4, 4))


# --------------------------------------------------------------------------- modules
def test_modules_init_and_repr():
    torch.manual_seed(0)
    conv = snnspx.nn.SRMConv2d(4, 6, 3, stride=2, padding=1, groups=2, v_th=0.7)
    assert conv.weight.shape == (6, 2, 3, 3) and not hasattr(conv, "bias")
    flat = conv.weight.detach().reshape(6, -1)
    torch.testing.assert_close(flat @ flat.T, torch.eye(6), atol=1e-5, rtol=0)  # orthogonal rows
    r = repr(conv)
    for text in ("4, 6", "kernel_size=(3, 3)", "stride=(2, 2)", "groups=2", "tau_m=5.0", "tau_s=3.0",
                 "tau_grad=2.5", "v_th=0.7", "input_grad_scale=0.85", "du_inv_clamp=4.0", "max_dudt_inv=123456789.0"):
        assert text in r, f"{text!r} missing from {r}"
    lin = snnspx.nn.SRMLinear(8, 5)
    torch.testing.assert_close(lin.weight @ lin.weight.T, torch.eye(5), atol=1e-5, rtol=0)
    assert {n for n, _ in lin.named_parameters()} == {"weight", "bn_weight", "bn_bias"}
    assert {n for n, _ in snnspx.nn.SRMLinear(8, 5, weight_norm=False).named_parameters()} == {"weight"}
    assert "weight_norm=True" in repr(lin) and "tau_m=5.0" in repr(lin)


def test_linear_batch_first(gen):
    torch.manual_seed(1)
    m = snnspx.nn.SRMLinear(6, 4, v_th=0.3, batch_first=True)
    x = spike_train(gen, (3, 7, 6))  # [B, T, N]
    y = m(x)
    m.batch_first = False
    assert torch.equal(y, m(x.transpose(0, 1)).transpose(0, 1))


def test_module_errors():
    with pytest.raises(ValueError, match="divisible by groups"):
        snnspx.nn.SRMConv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="tau_m and tau_s must differ"):
        snnspx.nn.SRMConv2d(3, 4, 3, tau_m=3.0)
    with pytest.raises(ValueError, match="in_features >= 2"):
        snnspx.nn.SRMLinear(1, 4)
    with pytest.raises(TypeError, match="padding must be an int or a pair"):
        snnspx.nn.SRMConv2d(3, 4, 3, padding="same")
    conv = snnspx.nn.SRMConv2d(3, 4, 3)
    with pytest.raises(ValueError, match=r"s_in must be \[T, B, C, H, W\]"):
        conv(torch.zeros(2, 3, 5, 5))
    with pytest.raises(ValueError, match="s_in has 2 channels"):
        conv(torch.zeros(2, 1, 2, 5, 5))
    with pytest.raises(ValueError, match="smaller than the kernel"):
        conv(torch.zeros(2, 1, 3, 2, 2))
    with pytest.raises(TypeError, match="weight must have the dtype of s_in"):
        conv(torch.zeros(2, 1, 3, 5, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="s_in has 3 features"):
        snnspx.nn.SRMLinear(4, 2)(torch.zeros(2, 1, 3))
    with pytest.raises(ValueError, match="runs on CUDA tensors"):
        F.srm_conv2d(torch.zeros(2, 1, 3, 5, 5), conv.weight.detach(), backend="cuda")


@pytest.mark.parametrize("backend,device", GRID)
def test_weight_bits(backend, device, gen):
    """With weight_bits the synapses see the quantized weight; its gradient goes straight to weight."""
    torch.manual_seed(3)
    conv = snnspx.nn.SRMConv2d(2, 3, 3, padding=1, v_th=0.3, weight_bits=4, backend=backend).to(device)
    s_in = spike_train(gen, (5, 2, 2, 5, 5), torch.float32, device)
    out = conv(s_in)
    q = conv.weight_quantizer
    scale = q.scale.item()
    w_q = F.quantize(conv.weight.detach(), scale, bits=4)
    assert torch.all(w_q * scale == torch.round(w_q * scale)) and (w_q * scale).abs().max() <= 7
    w = w_q.clone().requires_grad_()
    ref = F.srm_conv2d(s_in, w, padding=1, v_th=0.3, backend=backend)
    assert torch.equal(out, ref) and out.sum() > 0
    g = torch.randn(out.shape, generator=gen).to(device)
    out.backward(g)
    ref.backward(g)
    torch.testing.assert_close(conv.weight.grad, w.grad)

    lin = snnspx.nn.SRMLinear(6, 3, v_th=0.3, weight_bits=6, backend=backend).to(device)
    x = spike_train(gen, (6, 2, 6), torch.float32, device)
    lin(x)
    w_hat = F.standardize_weight(lin.weight, lin.bn_weight, lin.bn_bias, eps=lin.eps)
    torch.testing.assert_close(lin.effective_weight(), F.quantize(w_hat, lin.weight_quantizer.scale, bits=6))
    lin.eval()
    before = lin.weight_quantizer.state_dict()
    with torch.no_grad():
        lin.weight.mul_(10)
    lin(x)
    for k, v in lin.weight_quantizer.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed in eval mode"


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_half_inputs(backend, device, dtype, gen):
    """Half-precision spikes and weights run (neuron state in float32) and keep their dtype."""
    s_in = spike_train(gen, (4, 2, 3, 6, 6), dtype, device).requires_grad_()
    # |k| <= 5 over 27 taps: every current is a multiple of 1/16 below 16, exact in bfloat16's 8 bits
    weight = dyadic(gen, (4, 3, 3, 3), dtype, device, lo=-2, hi=6).requires_grad_()
    out = F.srm_conv2d(s_in, weight, padding=1, v_th=0.5, backend=backend)
    want = R.srm_conv2d_forward(s_in.detach().float().cpu(), weight.detach().float().cpu(), padding=1, v_th=0.5)[0]
    assert out.dtype == dtype and torch.equal(out.float().cpu(), want)
    F.spike_avg_pool2d(out, kernel_size=2).flatten(2).sum().backward()
    assert s_in.grad.dtype == weight.grad.dtype == dtype
    lin_in = spike_train(gen, (4, 2, 6), dtype, device).requires_grad_()
    F.srm_linear(lin_in, dyadic(gen, (3, 6), dtype, device), v_th=0.3, backend=backend).sum().backward()
    assert lin_in.grad.dtype == dtype


@pytest.mark.parametrize("backend,device", WITH_ORACLE)
def test_half_conv_input_gradient_masked_not_nan(backend, device, gen):
    """float16, v_th < 0: a neuron with no current fires at once with dut = 0, so its grad_t is
    G * max_dudt_inv (about 1e8), inf in float16. The input gradient where s_in is 0 must still
    be exactly 0: the mask is a select, not a product (inf * 0 is NaN)."""
    s_in = spike_train(gen, (4, 2, 2, 5, 5), torch.float16, device).requires_grad_()
    weight = dyadic(gen, (3, 2, 3, 3), torch.float16, device)
    ones = torch.ones(4, 2, 3, 5, 5, dtype=torch.float16, device=device)
    if backend == "oracle":
        spikes, gs, gw = oracle_conv(s_in, weight, ones, padding=1, v_th=-0.5)
    else:
        spikes, gs, gw = layer_grads(lambda s, w: F.srm_conv2d(s, w, padding=1, v_th=-0.5, backend=backend),
                                     s_in.detach(), weight, ones)
    silent = s_in.detach() == 0
    assert silent.any() and (~silent).any()
    assert not torch.isfinite(gs[~silent]).all(), "the test should overflow the float16 input gradient"
    assert torch.all(gs[silent] == 0), f"{int(gs[silent].isnan().sum())} NaN where s_in is 0"
    assert torch.isfinite(gw).all()
    if backend != "oracle":  # the finite values agree with the oracle's
        st = R.srm_conv2d_forward(s_in.detach().cpu(), weight.cpu(), padding=1, v_th=-0.5)
        want_s, want_w = R.srm_conv2d_backward(torch.ones_like(st[0]), s_in.detach().cpu(), weight.cpu(), *st,
                                               padding=1)
        assert_spikes_equal(spikes.cpu(), st[0])
        assert torch.all(want_s[silent.cpu()] == 0)
        both = torch.isfinite(gs.cpu()) & torch.isfinite(want_s)
        # a float16 convolution output rounded, then scaled and rounded again: an ulp or two
        torch.testing.assert_close(gs.cpu()[both], want_s[both], rtol=4e-3, atol=2e-2)
        torch.testing.assert_close(gw.cpu(), want_w, rtol=4e-3, atol=2e-2)


@pytest.mark.parametrize("backend,device", COMPILED)
def test_torch_compile_network(backend, device, gen):
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        snnspx.nn.SRMConv2d(2, 4, 3, padding=1, v_th=0.3, backend=backend),
        snnspx.nn.SpikeAvgPool2d(2),
        torch.nn.Flatten(2),
        snnspx.nn.SRMLinear(4 * 3 * 3, 5, v_th=0.3, backend=backend),
    ).to(device)
    x = spike_train(gen, (6, 2, 2, 6, 6), torch.float32, device)
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    out_c = compiled(x)
    out_c.sum().backward()
    grads_c = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    out_e = net(x)
    out_e.sum().backward()
    assert torch.equal(out_c, out_e)
    for gc, p in zip(grads_c, net.parameters()):
        torch.testing.assert_close(gc, p.grad)


# --------------------------------------------------------------------------- training
class _TimeGradient(torch.autograd.Function):
    """Identity whose backward hands a spike-count gradient to the layers as a spike-*time* gradient.

    The layers read dL/dspikes at a spike as the derivative with respect to that spike's time
    (docs/maths.md §3: grad_w = G * (-1/du) * eps). An extra spike needs earlier spikes, so a loss on
    spike counts passes ``-dL/dcount``.
    """

    @staticmethod
    def forward(ctx, spikes):
        return spikes.clone()

    @staticmethod
    def backward(ctx, grad):
        return -grad


def _train(backend, device, sign, steps=30):
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(16, 8, 2, 8, 8, generator=g) < 0.2).float().to(device)
    target = torch.randint(1, 6, (8, 10), generator=g).float().to(device)
    torch.manual_seed(1)
    net = torch.nn.Sequential(
        snnspx.nn.SRMConv2d(2, 8, 3, padding=1, v_th=0.3, backend=backend),
        snnspx.nn.SpikeAvgPool2d(2),
        torch.nn.Flatten(2),
        snnspx.nn.SRMLinear(8 * 4 * 4, 10, v_th=0.3, backend=backend),
    ).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=0.005)
    losses = []
    for _ in range(steps):
        out = net(x)
        count = (_TimeGradient.apply(out) if sign < 0 else out).sum(0)
        loss = ((count - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("backend,device", GRID)
def test_two_layer_network_learns(backend, device):
    """conv -> pool -> linear on a fixed spike batch: a spike-count MSE falls to under half
    (seen: 7.9 -> 1.6 on CPU) when its gradient is read as a spike-time gradient, and the
    same gradient with the opposite sign drives the loss up: the gradient is wired, with its sign."""
    losses = _train(backend, device, sign=-1)
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0], f"loss did not fall: {[round(v, 2) for v in losses]}"
    wrong = _train(backend, device, sign=+1, steps=10)
    assert wrong[-1] > 2 * wrong[0], f"ascent should raise the loss: {[round(v, 2) for v in wrong]}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_standardize_weight_half_standardises_in_float32(dtype):
    """A float16 variance overflows for a spread of a few hundred ((400 - 0)^2 / 2 > 65504);
    the rows are standardised in float32 and rounded once, as the reference does."""
    w = torch.tensor([[0.0, 400.0], [1.0, -3.0]], dtype=dtype, requires_grad=True)
    got = F.standardize_weight(w)
    assert got.dtype == dtype
    assert torch.equal(got, R.standardize_weight(w))
    got.sum().backward()
    assert torch.isfinite(w.grad).all()


def test_standardize_weight_edge_cases_agree_with_reference():
    """eps = 0 on a constant row divides 0 by 0 (NaN) on both; one input is a ValueError on both."""
    w = torch.ones(1, 3)
    assert F.standardize_weight(w, eps=0.0).isnan().all() and R.standardize_weight(w, eps=0.0).isnan().all()
    for fn in (F.standardize_weight, R.standardize_weight):
        with pytest.raises(ValueError, match="in_features >= 2"):
            fn(torch.ones(2, 1))
