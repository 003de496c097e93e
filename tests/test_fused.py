"""Fused SRM + superpixel pooling (SPEC §6) against the composition of the unfused ops."""

from __future__ import annotations

import pytest
import torch

import snnspx
from snnspx import functional as F
from snnspx import reference as R
from conftest import COMPILED, DTYPES, GRID, HAS_CUDA

MODES = ["sum", "avg", "max"]


def currents(gen, shape, dtype=torch.float32, device="cpu"):
    return (torch.randn(shape, generator=gen, dtype=torch.float64) + 0.5).to(dtype).to(device)


def make_labels(gen, form, T, B, H, W, K, dtype=torch.int64, device="cpu"):
    shape = {"shared": (H, W), "batch": (B, H, W), "step": (T, B, H, W)}[form]
    lab = torch.randint(-1, K, shape, generator=gen)  # -1: ignored pixels
    lab.view(-1)[0] = K - 1  # K is what the caller says, also when inferred
    return lab.to(dtype).to(device)


def composed(x, labels, K, mode, **kw):
    """The oracle: reference SRM spikes, reference pooling."""
    spikes = R.srm_neuron(x, **kw)
    return R.suppix_pool(spikes, labels, K, mode)


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("form", ["shared", "batch", "step"])
@pytest.mark.parametrize("label_dtype", [torch.int32, torch.int64], ids=["i32", "i64"])
def test_fused_equals_composition(backend, device, mode, form, label_dtype, gen):
    T, B, C, H, W, K = 9, 2, 3, 5, 7, 6
    x = currents(gen, (T, B, C, H, W), device=device)
    labels = make_labels(gen, form, T, B, H, W, K, label_dtype, device)
    y = F.srm_suppix_pool(x, labels, K, mode, backend=backend)
    want = composed(x, labels, K, mode)
    assert y.shape == (T, B, C, K) and y.dtype == x.dtype
    assert torch.equal(y.cpu(), want.cpu()), f"fused != composition ({backend}, {mode}, {form})"


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_gradient_equals_composed_gradient(backend, device, mode, dtype, gen):
    T, B, C, H, W, K = 12, 2, 2, 4, 5, 4
    x = currents(gen, (T, B, C, H, W), dtype, device)
    labels = make_labels(gen, "batch", T, B, H, W, K, device=device)
    w = torch.randn((T, B, C, K), generator=gen, dtype=torch.float64).to(dtype).to(device)
    xg = x.clone().requires_grad_()
    (F.srm_suppix_pool(xg, labels, K, mode, du_inv_clamp=3.0, backend=backend) * w).sum().backward()
    xr = x.detach().cpu().clone().requires_grad_()
    (composed(xr, labels.cpu(), K, mode, du_inv_clamp=3.0) * w.cpu()).sum().backward()
    assert xr.grad.abs().sum() > 0, "the test should exercise a non-zero gradient"
    torch.testing.assert_close(xg.grad.cpu(), xr.grad)


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("form", ["shared", "step"])
def test_fused_large_images_span_kernel_blocks(backend, device, mode, form, gen):
    # 23 x 29 = 667 pixels: several of the CPU kernel's 256-pixel blocks, a ragged last
    # block, and superpixels (few labels, so large ones) whose pixels lie in more than one
    # block; max's argmax must be the lowest spiking index over all blocks.
    T, B, C, H, W, K = 6, 2, 2, 23, 29, 3
    x = currents(gen, (T, B, C, H, W), device=device) * 0.7
    labels = make_labels(gen, form, T, B, H, W, K, device=device)
    w = torch.randn((T, B, C, K), generator=gen, dtype=torch.float64).to(device)
    xg = x.clone().requires_grad_()
    y = F.srm_suppix_pool(xg, labels, K, mode, backend=backend)
    (y * w).sum().backward()
    xr = x.detach().cpu().clone().requires_grad_()
    want = composed(xr, labels.cpu(), K, mode)
    (want * w.cpu()).sum().backward()
    assert torch.equal(y.detach().cpu(), want.detach()), f"fused != composition ({backend}, {mode}, {form})"
    assert xr.grad.abs().sum() > 0
    torch.testing.assert_close(xg.grad.cpu(), xr.grad)


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("mode", MODES)
def test_fused_many_steps_and_superpixels(backend, device, mode, gen):
    # T * K large enough that the CPU kernel keeps a single spike histogram (its
    # interleaved copies are capped), most superpixels empty.
    T, B, C, H, W, K = 70, 1, 2, 6, 7, 4000
    x = currents(gen, (T, B, C, H, W), device=device)
    labels = make_labels(gen, "batch", T, B, H, W, K, device=device)
    w = torch.randn((T, B, C, K), generator=gen, dtype=torch.float64).to(device)
    xg = x.clone().requires_grad_()
    y = F.srm_suppix_pool(xg, labels, K, mode, backend=backend)
    (y * w).sum().backward()
    xr = x.detach().cpu().clone().requires_grad_()
    want = composed(xr, labels.cpu(), K, mode)
    (want * w.cpu()).sum().backward()
    assert torch.equal(y.detach().cpu(), want.detach())
    torch.testing.assert_close(xg.grad.cpu(), xr.grad)


@pytest.mark.parametrize("backend,device", GRID)
def test_fused_edge_cases(backend, device, gen):
    # T = 1, an empty superpixel (K larger than any label), all-negative images, K = 1.
    x = currents(gen, (1, 2, 2, 3, 3), device=device) * 4
    labels = torch.tensor([[[0, 0, 1], [1, 1, 0], [-1, 0, 1]], [[-1] * 3] * 3], device=device)
    for K in (2, 5):
        for mode in MODES:
            y = F.srm_suppix_pool(x, labels, K, mode, backend=backend)
            assert torch.isfinite(y).all()
            assert torch.equal(y.cpu(), composed(x, labels, K, mode).cpu())
            assert torch.all(y[:, 1] == 0), "an image with no labelled pixel pools to zeros"
            assert torch.all(y[..., 2:] == 0), "empty superpixels pool to 0, not NaN"
    one = torch.zeros(3, 3, dtype=torch.long, device=device)
    y = F.srm_suppix_pool(x, one, None, "sum", backend=backend)
    assert y.shape[-1] == 1
    assert torch.equal(y.cpu(), R.srm_forward(x)[0].sum((-1, -2)).unsqueeze(-1).cpu())


@pytest.mark.parametrize("backend,device", GRID)
def test_fused_noncontiguous_and_long_T(backend, device, gen):
    base = currents(gen, (2, 3, 40, 5, 6), device=device)
    x = base.permute(2, 0, 1, 3, 4)  # [T=40, B, C, H, W], not contiguous
    labels = make_labels(gen, "batch", 40, 2, 5, 6, 5, device=device)
    for mode in MODES:
        y = F.srm_suppix_pool(x, labels, 5, mode, backend=backend)
        assert torch.equal(y, F.srm_suppix_pool(x.contiguous(), labels, 5, mode, backend=backend))
        assert torch.equal(y.cpu(), composed(x, labels, 5, mode).cpu())


@pytest.mark.parametrize("backend,device", GRID)
def test_fused_errors(backend, device):
    x = torch.randn(3, 1, 1, 2, 2, device=device)
    labels = torch.tensor([[0, 1], [2, 3]], device=device)
    with pytest.raises(ValueError, match="labels must be < num_superpixels"):
        F.srm_suppix_pool(x, labels, 3, backend=backend)
    with pytest.raises(TypeError, match="labels must be an int32 or int64"):
        F.srm_suppix_pool(x, labels.float(), 4, backend=backend)
    with pytest.raises(ValueError, match="mode must be one of"):
        F.srm_suppix_pool(x, labels, 4, "median", backend=backend)
    with pytest.raises(ValueError, match=r"x must be \[T, B, C, H, W\]"):
        F.srm_suppix_pool(x[0], labels, 4, backend=backend)
    with pytest.raises(ValueError, match="labels must cover"):
        F.srm_suppix_pool(x, labels[:1], 4, backend=backend)


def test_fused_kernel_runs_and_writes_no_full_tensor(gen):
    """No-grad mode: the compiled kernel runs and no [T, B, C, H, W] buffer is allocated."""
    from torch.profiler import ProfilerActivity, profile

    x = currents(gen, (8, 2, 4, 16, 16))
    labels = make_labels(gen, "batch", 8, 2, 16, 16, 10)
    F.srm_suppix_pool(x, labels, 10, backend="cpp")  # build and warm up
    before = snnspx.kernel_calls("cpu.srm_suppix_pool")
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        F.srm_suppix_pool(x, labels, 10, backend="cpp")
    assert snnspx.kernel_calls("cpu.srm_suppix_pool") == before + 1
    biggest = max((e.cpu_memory_usage for e in prof.events()), default=0)
    assert biggest < x.numel() * x.element_size() // 4, f"an allocation of {biggest} bytes"
    # With a gradient wanted, the training kernel runs instead.
    before = snnspx.kernel_calls("cpu.srm_suppix_pool_fwd")
    F.srm_suppix_pool(x.clone().requires_grad_(), labels, 10, backend="cpp").sum().backward()
    assert snnspx.kernel_calls("cpu.srm_suppix_pool_fwd") == before + 1


@pytest.mark.cuda
def test_fused_cuda_peak_memory_and_determinism(gen):
    x = currents(gen, (16, 4, 8, 32, 32), device="cuda")
    labels = make_labels(gen, "batch", 16, 4, 32, 32, 64, device="cuda")
    F.srm_suppix_pool(x, labels, 64, backend="cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with torch.no_grad():
        y = F.srm_suppix_pool(x, labels, 64, backend="cuda")
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    assert extra < x.numel() * x.element_size() // 4, f"the fused op allocated {extra} bytes"
    for mode in MODES:
        first = F.srm_suppix_pool(x, labels, 64, mode, backend="cuda")
        xg = x.clone().requires_grad_()
        F.srm_suppix_pool(xg, labels, 64, mode, backend="cuda").sum().backward()
        for _ in range(3):
            assert torch.equal(F.srm_suppix_pool(x, labels, 64, mode, backend="cuda"), first)
            xg2 = x.clone().requires_grad_()
            F.srm_suppix_pool(xg2, labels, 64, mode, backend="cuda").sum().backward()
            assert torch.equal(xg2.grad, xg.grad)
    assert y.shape == (16, 4, 8, 64)


@pytest.mark.parametrize("backend,device", COMPILED)
def test_fused_opcheck(backend, device, gen):
    T, B, C, P, K = 5, 2, 3, 12, 4
    x = currents(gen, (T, B, C, P), device=device)
    labels = torch.randint(-1, K, (1, B, P), generator=gen).to(device)
    ops = torch.ops.snnspx
    F.srm_forward(torch.zeros(1, 1, device=device), backend=backend)
    args = (5.0, 3.0, 2.5, 1.0)
    for mode in MODES:
        torch.library.opcheck(ops.srm_suppix_pool.default, (x, labels, K, mode, *args))
        torch.library.opcheck(ops.srm_suppix_pool_fwd.default, (x.clone().requires_grad_(), labels, K, mode, *args, 4.0, 1e8))
        y, saved, counts, argmax = ops.srm_suppix_pool_fwd.default(x, labels, K, mode, *args, 4.0, 1e8)
        g = torch.randn(y.shape, generator=gen).to(device)
        torch.library.opcheck(ops.srm_suppix_pool_bwd.default, (g, saved, labels, counts, argmax, mode, 5.0, 3.0, 2.5))


@pytest.mark.parametrize("backend,device", COMPILED)
def test_fused_module_compiles(backend, device, gen):
    torch._dynamo.reset()
    T, B, C, H, W, K = 6, 2, 3, 4, 4, 5
    conv = torch.nn.Conv2d(2, C, 3, padding=1).to(device)
    head = snnspx.nn.SRMSupPixPool("avg", num_superpixels=K, backend=backend)
    x = currents(gen, (T, B, 2, H, W), device=device)
    labels = make_labels(gen, "batch", T, B, H, W, K, device=device)

    def model(x):
        return head(conv(x.flatten(0, 1)).unflatten(0, (T, B)), labels)

    out_c = torch.compile(model, backend="aot_eager", fullgraph=True)(x)
    out_c.sum().backward()
    g_c = conv.weight.grad.clone()
    conv.zero_grad()
    out_e = model(x)
    out_e.sum().backward()
    assert torch.equal(out_c, out_e)
    torch.testing.assert_close(g_c, conv.weight.grad)


def test_module_batch_first(gen):
    x = currents(gen, (2, 5, 3, 4, 4))  # [B, T, C, H, W]
    labels = make_labels(gen, "batch", 5, 2, 4, 4, 3)
    m = snnspx.nn.SRMSupPixPool("sum", 3, batch_first=True)
    y = m(x, labels)
    assert y.shape == (2, 5, 3, 3)
    assert torch.equal(y, snnspx.nn.SRMSupPixPool("sum", 3)(x.transpose(0, 1), labels).transpose(0, 1))
    assert "mode='sum'" in repr(m)
