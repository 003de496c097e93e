"""Second derivatives: pooling and unpooling are linear, so their backwards are differentiable
again on every backend; the SRM neuron's event-driven gradient is a surrogate with no derivative,
so a double backward through it is an error on every backend (never a silent None or zero).

snnspx.reference has no autograd: its pooling backward and double backward are checked here as
derivatives of its forward (finite differences, adjoints), the ops against them elementwise."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradgradcheck

import snnspx.functional as F
from snnspx import reference as R
from conftest import GRID, rand_labels, rand_x

MODES = ["sum", "avg", "max"]
LABEL_FORMS = ["shared", "per_image", "per_step"]


def dot(a, b):
    return (a.double() * b.double()).sum()


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("label_form", LABEL_FORMS)
def test_pool_gradgradcheck(backend, device, mode, label_form, gen):
    T, B, C, H, W, K = 3, 2, 2, 3, 4, 5
    lab = rand_labels(gen, label_form, T, B, H, W, K, device)
    x = rand_x(gen, (T, B, C, H, W), torch.float64, device).requires_grad_()  # no ties: max is differentiable

    def f(x):
        return F.suppix_pool(x, lab, num_superpixels=K, mode=mode, backend=backend)

    assert gradgradcheck(f, (x,))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("label_form", LABEL_FORMS)
def test_reference_pool_derivatives(mode, label_form, gen):
    """What gradgradcheck checks of an op, for the oracle's plain functions: suppix_pool_backward
    is the adjoint of the derivative of suppix_pool, suppix_pool_double_backward is that
    derivative (the adjoint of the backward, which is linear in grad_y), and the backward does
    not change with x (no ties, so max's argmax stays)."""
    T, B, C, H, W, K = 3, 2, 2, 3, 4, 5
    lab = rand_labels(gen, label_form, T, B, H, W, K)
    x = rand_x(gen, (T, B, C, H, W), torch.float64)
    u = rand_x(gen, x.shape, torch.float64)
    g = rand_x(gen, (T, B, C, K), torch.float64)
    kw = dict(num_superpixels=K, mode=mode)
    h = 1e-6
    fd = (R.suppix_pool(x + h * u, lab, **kw) - R.suppix_pool(x - h * u, lab, **kw)) / (2 * h)
    ju = R.suppix_pool_double_backward(u, x, lab, **kw)
    assert ju.shape == (T, B, C, K) and ju.abs().sum() > 0
    torch.testing.assert_close(ju, fd, rtol=1e-6, atol=1e-8)
    gx = R.suppix_pool_backward(g, x, lab, **kw)
    assert gx.shape == x.shape
    torch.testing.assert_close(dot(gx, u), dot(g, ju), rtol=1e-12, atol=1e-12)
    assert torch.equal(R.suppix_pool_backward(g, x + h * u, lab, **kw), gx)


@pytest.mark.parametrize("backend,device", GRID)
def test_unpool_gradgradcheck(backend, device, gen):
    T, B, C, H, W, K = 3, 2, 2, 3, 4, 5
    lab = rand_labels(gen, "per_image", T, B, H, W, K, device)
    y = rand_x(gen, (T, B, C, K), torch.float64, device).requires_grad_()
    assert gradgradcheck(lambda y: F.suppix_unpool(y, lab, backend=backend), (y,))


def test_reference_unpool_derivatives(gen):
    """Unpooling is linear: suppix_unpool_backward is its adjoint, and unpooling is the adjoint
    of that backward (its derivative)."""
    T, B, C, H, W, K = 3, 2, 2, 3, 4, 5
    lab = rand_labels(gen, "per_image", T, B, H, W, K)
    y = rand_x(gen, (T, B, C, K), torch.float64)
    gz = rand_x(gen, (T, B, C, H, W), torch.float64)
    gy = R.suppix_unpool_backward(gz, lab, num_superpixels=K)
    assert gy.shape == y.shape and gy.abs().sum() > 0
    torch.testing.assert_close(dot(R.suppix_unpool(y, lab), gz), dot(y, gy), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("mode,grad", [("sum", "exact"), ("avg", "exact"), ("avg", "spike"), ("max", "exact")])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_pool_second_derivative_matches_reference(backend, device, mode, grad, dtype, gen):
    """d/d(grad_y) of pooling's backward, elementwise against the reference: spike inputs
    (many zeros and ties) included, where gradgradcheck does not apply. In half precision the
    sums and divisions run in float32 and round once: bitwise equal to the reference on the CPU
    (same pixel order), to the dtype's tolerance on CUDA (another fixed order)."""
    T, B, C, H, W, K = 4, 2, 3, 8, 8, 6
    lab = rand_labels(gen, "per_image", T, B, H, W, K)
    x = (torch.rand(T, B, C, H, W, generator=gen, dtype=torch.float64) < 0.4).to(dtype)
    gy = rand_x(gen, (T, B, C, K), dtype)
    v = rand_x(gen, (T, B, C, H, W), dtype)

    def second(b, dev):
        xx = x.to(dev).requires_grad_()
        g = gy.to(dev).requires_grad_()
        y = F.suppix_pool(xx, lab.to(dev), num_superpixels=K, mode=mode, grad=grad, backend=b)
        (gx,) = torch.autograd.grad(y, xx, g, create_graph=True)
        (ggy,) = torch.autograd.grad(gx, g, v.to(dev))
        return ggy.cpu()

    ref = R.suppix_pool_double_backward(v, x, lab, num_superpixels=K, mode=mode, grad=grad)
    assert ref.abs().sum() > 0
    if device == "cpu":
        torch.testing.assert_close(second(backend, device), ref, rtol=0, atol=0)
    else:
        torch.testing.assert_close(second(backend, device), ref)


def srm_inputs(gen, device="cpu"):
    x = (4 * torch.randn(8, 2, 2, 3, 3, generator=gen)).to(device)
    lab = torch.arange(9).reshape(3, 3).remainder(4).to(device)
    return x, lab


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("op", ["srm_neuron", "srm_forward", "srm_suppix_pool"])
def test_srm_double_backward_raises(backend, device, op, gen):
    x, lab = srm_inputs(gen, device)
    x.requires_grad_()
    if op == "srm_neuron":
        out = F.srm_neuron(x, backend=backend)
    elif op == "srm_forward":
        out = F.srm_forward(x, backend=backend)[0]
    else:
        out = F.srm_suppix_pool(x, lab, num_superpixels=4, mode="sum", backend=backend)
    assert out.sum() > 0, "nothing spiked: the test would not reach the backward"
    loss = (out.sum() - 1) ** 2  # dL/dout depends on out: the backward is recorded for a second pass
    (gx,) = torch.autograd.grad(loss, x, create_graph=True)
    assert gx.requires_grad
    with pytest.raises(RuntimeError, match="double backward|differentiate twice"):
        gx.sum().backward()


def layer_inputs(gen, layer, device="cpu"):
    """(s_in, the tensor differentiated: weight, or the input of spike_avg_pool2d)."""
    s_in = (torch.rand(6, 2, 3, 5, 5, generator=gen) < 0.5).float().to(device)
    if layer == "srm_conv2d":
        return s_in, (2 * torch.randn(4, 3, 3, 3, generator=gen)).to(device)
    if layer == "spike_avg_pool2d":  # its spike-count gradient is a surrogate too
        return s_in, s_in.clone()
    return s_in.flatten(2), (2 * torch.randn(7, 75, generator=gen)).to(device)


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("layer", ["srm_conv2d", "srm_linear", "spike_avg_pool2d"])
def test_layer_double_backward_raises(backend, device, layer, gen):
    s_in, w = layer_inputs(gen, layer, device)
    w.requires_grad_()
    if layer == "srm_conv2d":
        out = F.srm_conv2d(s_in, w, padding=1, backend=backend)
    elif layer == "spike_avg_pool2d":
        out = F.spike_avg_pool2d(w, kernel_size=2, backend=backend)
    else:
        out = F.srm_linear(s_in, w, backend=backend)
    assert out.sum() > 0, "nothing spiked: the test would not reach the backward"
    loss = (out.sum() - 1) ** 2
    (gw,) = torch.autograd.grad(loss, w, create_graph=True)
    assert gw.requires_grad
    with pytest.raises(RuntimeError, match="double backward|differentiate twice"):
        gw.sum().backward()


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("wrt", ["grad_spikes", "du"])
def test_srm_backward_outputs_have_no_derivative(backend, device, wrt, gen):
    """srm_backward called directly with inputs that need a gradient: differentiating its
    outputs raises the same error on every backend (the torch ops' derivative on the torch
    backend and a silent detach on the reference one were the other behaviours)."""
    x = (torch.randn(8, 3, generator=gen) + 0.6).to(device)
    s, du, dut = F.srm_forward(x, backend=backend)
    assert s.sum() > 0, "nothing spiked: the backward would be all zeros"
    g = torch.randn(8, 3, generator=gen).to(device)
    g, du = (g.requires_grad_(), du) if wrt == "grad_spikes" else (g, du.clone().requires_grad_())
    grad_w, grad_t = F.srm_backward(g, s, du, dut, backend=backend)
    assert grad_w.requires_grad and grad_t.requires_grad
    with pytest.raises(RuntimeError, match="no double backward through .*srm_backward"):
        (grad_w.sum() + grad_t.sum()).backward()
    with torch.no_grad():  # the values are those of a call without autograd
        want = F.srm_backward(g, s, du, dut, backend=backend)
    assert torch.equal(grad_w.detach(), want[0]) and torch.equal(grad_t.detach(), want[1])


def test_reference_has_no_autograd(gen):
    """The oracle's functions are plain loops: given inputs that need a gradient (the inputs of
    the double-backward tests above), they return values that are no part of an autograd graph,
    so nothing can be differentiated through them by mistake."""
    x, lab = srm_inputs(gen)
    x.requires_grad_()
    outs = {"srm_forward": R.srm_forward(x), "srm_suppix_pool": R.srm_suppix_pool(x, lab, num_superpixels=4, mode="sum")}
    assert outs["srm_forward"][0].sum() > 0 and outs["srm_suppix_pool"].sum() > 0, "nothing spiked"
    g = torch.randn(x.shape, generator=gen).requires_grad_()
    outs["srm_backward"] = R.srm_backward(g, *outs["srm_forward"])
    outs["srm_neuron_backward"] = R.srm_neuron_backward(g, x)
    s_in, w = layer_inputs(gen, "srm_conv2d")
    w.requires_grad_()
    outs["srm_conv2d_forward"] = R.srm_conv2d_forward(s_in, w, padding=1)
    s_in, w = layer_inputs(gen, "srm_linear")
    w.requires_grad_()
    outs["srm_linear_forward"] = R.srm_linear_forward(s_in, w)
    s_in, v = layer_inputs(gen, "spike_avg_pool2d")
    v.requires_grad_()
    outs["spike_avg_pool2d"] = R.spike_avg_pool2d(v, kernel_size=2)
    for name, out in outs.items():
        for t in out if isinstance(out, tuple) else (out,):
            assert not t.requires_grad and t.grad_fn is None, name
