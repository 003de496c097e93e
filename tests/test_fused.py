"""Fused SRM + superpixel pooling (docs/maths.md §6) against the composition of the unfused ops."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch

import snnspx
from snnspx import functional as F
from snnspx import reference as R
from snnspx import superpixels as S
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


def check_against_composition(x, labels, K, mode, backend, gen):
    """Fused y == the composition bitwise and its gradient close to the composed one, for a
    random weighting of y. Returns y and the two gradients (fused, composed)."""
    T, B, C = x.shape[:3]
    w = torch.randn((T, B, C, K), generator=gen, dtype=torch.float64).to(x.dtype)
    xg = x.clone().requires_grad_()
    y = F.srm_suppix_pool(xg, labels, K, mode, backend=backend)
    (y * w.to(x.device)).sum().backward()
    xr = x.detach().cpu().clone().requires_grad_()
    want = composed(xr, labels.cpu(), K, mode)
    (want * w).sum().backward()
    assert torch.equal(y.detach().cpu(), want.detach()), f"fused != composition ({backend}, {mode})"
    torch.testing.assert_close(xg.grad.cpu(), xr.grad)
    return y, xg.grad, xr.grad


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("form", ["shared", "batch", "step"])
@pytest.mark.parametrize("label_dtype", [torch.int32, torch.int64], ids=["i32", "i64"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_equals_composition(backend, device, mode, form, label_dtype, dtype, gen):
    T, B, C, H, W, K = 9, 2, 3, 5, 7, 6
    x = currents(gen, (T, B, C, H, W), dtype, device)
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
    _, _, want_grad = check_against_composition(x, labels, K, mode, backend, gen)
    assert want_grad.abs().sum() > 0


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("mode", MODES)
def test_fused_many_steps_and_superpixels(backend, device, mode, gen):
    # T * K large enough that the CPU kernel keeps a single spike histogram (its
    # interleaved copies are capped), most superpixels empty.
    T, B, C, H, W, K = 70, 1, 2, 6, 7, 4000
    x = currents(gen, (T, B, C, H, W), device=device)
    labels = make_labels(gen, "batch", T, B, H, W, K, device=device)
    check_against_composition(x, labels, K, mode, backend, gen)


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_fused_half_precision(backend, device, mode, dtype, gen):
    # Half inputs run float32 neuron state (docs/maths.md's precision rule); the pooled spikes are
    # then the composition's, and the gradient is the composed one in the input's dtype.
    T, B, C, H, W, K = 8, 2, 2, 6, 7, 5
    x = currents(gen, (T, B, C, H, W), dtype, device)
    labels = make_labels(gen, "batch", T, B, H, W, K, device=device)
    y, grad, _ = check_against_composition(x, labels, K, mode, backend, gen)
    assert y.dtype == dtype and grad.dtype == dtype


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
@pytest.mark.parametrize("mode", MODES)
def test_fused_edge_case_gradients(backend, device, mode, gen):
    """T = 1, empty superpixels, an image without labelled pixels, labels far below -1 and
    all-zero or huge inputs: output and gradient equal the composition's."""
    x = currents(gen, (1, 2, 2, 3, 3), device=device) * 4
    labels = torch.tensor([[[0, 0, 1], [1, 1, 0], [-1, 0, 1]], [[-1, -5, -(2**40)]] * 3], device=device)
    for K in (2, 5):
        y, _, _ = check_against_composition(x, labels, K, mode, backend, gen)
        assert torch.all(y[:, 1] == 0) and torch.all(y[..., 2:] == 0)
    long_x = currents(gen, (6, 2, 2, 3, 3), device=device)
    for scale in (0.0, 1e30):
        check_against_composition(long_x * scale, labels, 3, mode, backend, gen)
    i32 = torch.where(labels < -(2**31), -(2**31), labels).int()
    check_against_composition(long_x, i32, 3, mode, backend, gen)


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("mode", MODES)
def test_fused_threshold_tie(backend, device, mode):
    """A membrane exactly at v_th does not spike (strict >) and one ulp lower does, in the fused
    op as in the neuron; the gradient is the composition's in both cases."""
    x = torch.tensor([3.0, 2.0, 5.0], device=device).reshape(1, 1, 1, 1, 3)
    labels = torch.tensor([[0, 1, 2]], device=device)  # one pixel per superpixel
    _, du, _ = R.srm_forward(x.reshape(1, 3).cpu())  # T = 1: the membrane is du
    gen = torch.Generator().manual_seed(0)
    for n in range(3):
        u = du[0, n].item()
        below = torch.nextafter(torch.tensor(u, dtype=torch.float32), torch.tensor(-1e30)).item()
        for v_th, spikes in ((u, 0.0), (below, 1.0)):
            y = F.srm_suppix_pool(x, labels, 3, mode, v_th=v_th, backend=backend)
            assert y[0, 0, 0, n].item() == spikes, f"u = {u}, v_th = {v_th}"
            assert torch.equal(y.cpu(), composed(x.cpu(), labels.cpu(), 3, mode, v_th=v_th))
            xg = x.clone().requires_grad_()
            w = torch.randn(1, 1, 1, 3, generator=gen).to(device)
            (F.srm_suppix_pool(xg, labels, 3, mode, v_th=v_th, backend=backend) * w).sum().backward()
            xr = x.cpu().clone().requires_grad_()
            (composed(xr, labels.cpu(), 3, mode, v_th=v_th) * w.cpu()).sum().backward()
            torch.testing.assert_close(xg.grad.cpu(), xr.grad)


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("mode", MODES)
def test_fused_no_superpixels_trains(backend, device, mode, gen):
    # Every label negative and K inferred: K = 0, an empty output, and a gradient that is
    # exactly zero (the backward still walks every neuron's saved state).
    x = (currents(gen, (5, 2, 3, 4, 4), device=device) * 3).requires_grad_()
    labels = torch.full((2, 4, 4), -1, dtype=torch.long, device=device)
    y = F.srm_suppix_pool(x, labels, None, mode, backend=backend)
    assert y.shape == (5, 2, 3, 0)
    (y.sum() + 0 * x.sum()).backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("backend,device", GRID)
def test_fused_noncontiguous_and_long_T(backend, device, gen):
    base = currents(gen, (2, 3, 40, 5, 6), device=device)
    x = base.permute(2, 0, 1, 3, 4)  # [T=40, B, C, H, W], not contiguous
    labels = make_labels(gen, "batch", 40, 2, 5, 6, 5, device=device)
    for mode in MODES:
        y = F.srm_suppix_pool(x, labels, 5, mode, backend=backend)
        assert torch.equal(y, F.srm_suppix_pool(x.contiguous(), labels, 5, mode, backend=backend))
        assert torch.equal(y.cpu(), composed(x, labels, 5, mode).cpu())
        # the gradient through the non-contiguous x (clone keeps its strides)
        assert not x.clone().is_contiguous()
        check_against_composition(x, labels, 5, mode, backend, gen)
    # per-step labels as a transposed [B, T, H, W] view (what batch_first modules pass on):
    # the same results, and no warning from any layer below
    lab_bt = make_labels(gen, "step", 2, 40, 5, 6, 5, device=device)  # [B=2, T=40, H, W]
    lab_tb = lab_bt.transpose(0, 1)
    assert not lab_tb.is_contiguous()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for mode in MODES:
            check_against_composition(x, lab_tb, 5, mode, backend, gen)
    # a long run of steps
    x300 = currents(gen, (300, 1, 2, 3, 4), device=device)
    lab300 = make_labels(gen, "batch", 300, 1, 3, 4, 4, device=device)
    for mode in MODES:
        check_against_composition(x300, lab300, 4, mode, backend, gen)


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


@pytest.mark.parametrize("backend,device", [pytest.param("reference", "cpu", id="reference-cpu"), *GRID])
def test_fused_check_labels(backend, device, gen):
    """A label >= K fails in inference and training; check_labels=False ignores those
    pixels instead, exactly like negative labels."""
    _check_labels_flag(backend, device, gen)


@pytest.mark.cuda
def test_fused_check_labels_cuda_legacy(gen, monkeypatch):
    monkeypatch.setenv(LEGACY, "1")
    _check_labels_flag("cuda", "cuda", gen)


def _check_labels_flag(backend, device, gen):
    T, B, C, H, W, K = 6, 2, 3, 4, 5, 4
    x = currents(gen, (T, B, C, H, W), device=device) * 2
    labels = make_labels(gen, "batch", T, B, H, W, K + 3, device=device)  # labels up to K + 2
    for grad in (False, True):
        with pytest.raises(ValueError, match=f"labels must be < num_superpixels = {K}"):
            F.srm_suppix_pool(x.clone().requires_grad_(grad), labels, K, "sum", backend=backend)
    masked = torch.where(labels >= K, -1, labels)
    for mode in MODES:
        xg, xm = x.clone().requires_grad_(), x.clone().requires_grad_()
        y = F.srm_suppix_pool(xg, labels, K, mode, check_labels=False, backend=backend)
        want = F.srm_suppix_pool(xm, masked, K, mode, backend=backend)
        assert torch.equal(y, want)
        w = torch.randn(y.shape, generator=gen).to(device)
        (y * w).sum().backward()
        (want * w).sum().backward()
        assert torch.equal(xg.grad, xm.grad)
        with torch.no_grad():
            assert torch.equal(F.srm_suppix_pool(x, labels, K, mode, check_labels=False, backend=backend), want)


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
    before = snnspx.kernel_calls("cpu.srm_suppix_pool_fwd"), snnspx.kernel_calls("cpu.srm_suppix_pool_bwd")
    F.srm_suppix_pool(x.clone().requires_grad_(), labels, 10, backend="cpp").sum().backward()
    assert snnspx.kernel_calls("cpu.srm_suppix_pool_fwd") == before[0] + 1
    assert snnspx.kernel_calls("cpu.srm_suppix_pool_bwd") == before[1] + 1


@pytest.mark.parametrize("op", ["srm_suppix_pool", "srm_neuron", "srm_forward", "suppix_pool"])
def test_backward_zero_fills_no_unused_output(op, gen):
    """Autograd zero-fills the gradient of an unused output unless told not to. The saved
    state (fused op, srm_neuron: [2, T, ...]), du and dut (srm_forward) and the pooling's aux
    get none: no zeros are made, and the compiled backward allocates x's gradient and nothing
    else of size. (The torch backend's vectorised backward has temporaries and zeros of its
    own, so it is not measured.)"""
    backend = "cpp"
    from torch.profiler import ProfilerActivity, profile

    T, B, C, H, W, K = 8, 2, 4, 16, 16, 10
    x = currents(gen, (T, B, C, H, W)).requires_grad_()
    labels = make_labels(gen, "batch", T, B, H, W, K)
    if op == "srm_suppix_pool":
        out = F.srm_suppix_pool(x, labels, K, backend=backend)
    elif op == "srm_neuron":
        out = F.srm_neuron(x, backend=backend)
    elif op == "srm_forward":
        out = F.srm_forward(x, backend=backend)[0]
    else:
        out = F.suppix_pool(x, labels, K, backend=backend)
    g = torch.ones_like(out)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out.backward(g)
    fills = sorted({e.name for e in prof.events() if e.name in ("aten::zeros", "aten::zero_", "aten::fill_")})
    assert not fills, f"the backward zero-filled something: {fills}"
    allocated = sum(max(e.self_cpu_memory_usage, 0) for e in prof.events())
    # x's gradient; srm_forward's backward op also returns the (unused) gradient by time.
    allowed = (2 if op == "srm_forward" else 1) * x.numel() * x.element_size()
    assert allocated <= allowed * 1.25, f"the backward allocated {allocated} bytes, expected about {allowed}"
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.cuda
@pytest.mark.parametrize("legacy", [False, True], ids=["default", "legacy"])
def test_fused_cuda_kernels_actually_run(legacy, gen, monkeypatch):
    """With no backend given, CUDA tensors go to the fused CUDA kernels: the inference kernel
    without a gradient, the training forward and its backward with one. By default the
    inference counts spikes in the quad kernel (one label map per image, P % 4 == 0) and the
    training forward in the plane kernel; with SNNSPX_LEGACY_CUDA=1 neither runs."""
    if legacy:
        monkeypatch.setenv(LEGACY, "1")
    else:
        monkeypatch.delenv(LEGACY, raising=False)
    names = ["cuda.srm_suppix_pool", "cuda.srm_suppix_pool_fwd", "cuda.srm_suppix_pool_bwd", *SHARED_KERNELS]
    x = currents(gen, (6, 2, 3, 8, 8), device="cuda")
    labels = make_labels(gen, "batch", 6, 2, 8, 8, 5, device="cuda")
    on = 0 if legacy else 1
    before = {n: snnspx.kernel_calls(n) for n in names}
    with torch.no_grad():
        F.srm_suppix_pool(x, labels, 5)
    ran = {n: snnspx.kernel_calls(n) - before[n] for n in names}
    assert ran == {"cuda.srm_suppix_pool": 1, "cuda.srm_suppix_pool_fwd": 0, "cuda.srm_suppix_pool_bwd": 0,
                   "cuda.srm_suppix_pool_plane": 0, "cuda.srm_suppix_pool_quad": on}, ran
    y = F.srm_suppix_pool(x.clone().requires_grad_(), labels, 5)
    ran = {n: snnspx.kernel_calls(n) - before[n] for n in names}
    assert ran == {"cuda.srm_suppix_pool": 1, "cuda.srm_suppix_pool_fwd": 1, "cuda.srm_suppix_pool_bwd": 0,
                   "cuda.srm_suppix_pool_plane": on, "cuda.srm_suppix_pool_quad": on}, ran
    y.sum().backward()
    ran = {n: snnspx.kernel_calls(n) - before[n] for n in names}
    assert ran == {"cuda.srm_suppix_pool": 1, "cuda.srm_suppix_pool_fwd": 1, "cuda.srm_suppix_pool_bwd": 1,
                   "cuda.srm_suppix_pool_plane": on, "cuda.srm_suppix_pool_quad": on}, ran


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
    ops = torch.ops.snnspx
    F.srm_forward(torch.zeros(1, 1, device=device), backend=backend)
    args = (5.0, 3.0, 2.5, 1.0)
    samples = [  # float32 with one int64 map per image; float64 with int32 maps per step and image
        (currents(gen, (T, B, C, P), device=device), torch.randint(-1, K, (1, B, P), generator=gen).to(device)),
        (currents(gen, (T, B, C, P), torch.float64, device), torch.randint(-1, K, (T, B, P), generator=gen).int().to(device)),
    ]
    for (x, labels), mode in itertools.product(samples, MODES):
        torch.library.opcheck(ops.srm_suppix_pool.default, (x, labels, K, mode, *args, True))
        torch.library.opcheck(
            ops.srm_suppix_pool_fwd.default, (x.clone().requires_grad_(), labels, K, mode, *args, 4.0, 1e8, False)
        )
        y, saved, counts, argmax = ops.srm_suppix_pool_fwd.default(x, labels, K, mode, *args, 4.0, 1e8, True)
        g = torch.randn(y.shape, generator=gen).to(device, y.dtype)
        torch.library.opcheck(ops.srm_suppix_pool_bwd.default, (g, saved, labels, counts, argmax, mode, 5.0, 3.0, 2.5))


@pytest.mark.parametrize("backend,device", COMPILED)
def test_fused_inference_op_does_not_drop_gradients(backend, device, gen):
    """snnspx::srm_suppix_pool (the inference form) called directly on an x that needs a
    gradient: the backward raises, instead of autograd's fallback leaving x.grad None."""
    x = currents(gen, (4, 2, 3, 16), device=device).requires_grad_()
    labels = torch.randint(-1, 4, (1, 2, 16), generator=gen).to(device)
    F.srm_forward(torch.zeros(1, 1, device=device), backend=backend)
    y = torch.ops.snnspx.srm_suppix_pool.default(x, labels, 4, "avg", 5.0, 3.0, 2.5, 1.0, True)
    assert y.requires_grad
    with pytest.raises(RuntimeError, match="inference form of the fused op"):
        y.sum().backward()


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
    # per-step labels [B, T, H, W], every mode, and the gradient, against the reference
    lab_bt = make_labels(gen, "step", 2, 5, 4, 4, 3)  # [B, T, H, W]
    for mode in MODES:
        xg = x.clone().requires_grad_()
        y = snnspx.nn.SRMSupPixPool(mode, 3, batch_first=True)(xg, lab_bt)
        w = torch.randn(y.shape, generator=gen)
        (y * w).sum().backward()
        xr = x.clone().requires_grad_()
        want = composed(xr.transpose(0, 1), lab_bt.transpose(0, 1), 3, mode).transpose(0, 1)
        (want * w).sum().backward()
        assert torch.equal(y.detach(), want.detach())
        torch.testing.assert_close(xg.grad, xr.grad)


# The CUDA forward kernels (docs/build.md): by default the quad kernel (inference, one
# label map per image, P % 4 == 0, aligned) or else the plane kernel (per-block
# shared-memory histograms) where its histograms fit, the atomic kernel otherwise;
# SNNSPX_LEGACY_CUDA=1 runs the atomic kernel always. The C++ side reads the variable at
# every call, so monkeypatch switches it for one test.
LEGACY = "SNNSPX_LEGACY_CUDA"
SHARED_KERNELS = ("cuda.srm_suppix_pool_plane", "cuda.srm_suppix_pool_quad")


def _shared_memory_runs() -> int:
    return sum(snnspx.kernel_calls(n) for n in SHARED_KERNELS)


def _check_fused_cuda(x, labels, K, mode, gen, oracle=None, plane=True):
    """fused y == oracle bitwise, gradient == oracle's gradient, both repeatable bitwise;
    plane: whether every forward must have run a shared-memory kernel, plane or quad (else
    none may). Also the legacy atomic kernel's y, bit for bit."""
    oracle = oracle or (lambda x, lab: composed(x, lab, K, mode, du_inv_clamp=3.0))
    ran_before = _shared_memory_runs()
    T, B, C = x.shape[:3]
    w = torch.randn((T, B, C, K), generator=gen, dtype=torch.float64).to(x.dtype)
    with torch.no_grad():
        y = F.srm_suppix_pool(x, labels, K, mode, backend="cuda")
    xg = x.clone().requires_grad_()
    y_tr = F.srm_suppix_pool(xg, labels, K, mode, du_inv_clamp=3.0, backend="cuda")
    (y_tr * w.cuda()).sum().backward()
    xr = x.detach().cpu().clone().requires_grad_()
    want = oracle(xr, labels.cpu())
    (want * w).sum().backward()
    assert y.shape == (T, B, C, K) and y.dtype == x.dtype
    assert torch.equal(y.cpu(), want.detach()), f"inference y != composition ({mode})"
    assert torch.equal(y_tr.detach().cpu(), want.detach()), f"training y != composition ({mode})"
    torch.testing.assert_close(xg.grad.cpu(), xr.grad)
    for _ in range(2):
        with torch.no_grad():
            assert torch.equal(F.srm_suppix_pool(x, labels, K, mode, backend="cuda"), y)
        xg2 = x.clone().requires_grad_()
        y2 = F.srm_suppix_pool(xg2, labels, K, mode, du_inv_clamp=3.0, backend="cuda")
        (y2 * w.cuda()).sum().backward()
        assert torch.equal(y2, y_tr) and torch.equal(xg2.grad, xg.grad), "not repeatable bitwise"
    ran = _shared_memory_runs() - ran_before
    assert ran == (6 if plane else 0), f"a shared-memory kernel ran {ran} of 6 forwards"
    with pytest.MonkeyPatch.context() as m:
        m.setenv(LEGACY, "1")
        with torch.no_grad():
            assert torch.equal(F.srm_suppix_pool(x, labels, K, mode, backend="cuda"), y), "legacy kernel differs"
        xl = x.clone().requires_grad_()
        y_l = F.srm_suppix_pool(xl, labels, K, mode, du_inv_clamp=3.0, backend="cuda")
        (y_l * w.cuda()).sum().backward()
        assert torch.equal(y_l, y_tr) and torch.equal(xl.grad, xg.grad), "legacy training kernels differ"
    assert _shared_memory_runs() - ran_before == ran
    return xr.grad


@pytest.mark.cuda
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("form", ["shared", "batch", "step"])
@pytest.mark.parametrize("label_dtype", [torch.int32, torch.int64], ids=["i32", "i64"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_cuda_shared_memory_equals_composition(mode, form, label_dtype, dtype, gen, monkeypatch):
    monkeypatch.delenv(LEGACY, raising=False)
    # B * C = 6 planes of 35 pixels: one block per plane (the direct path).
    T, B, C, H, W, K = 9, 2, 3, 5, 7, 6
    x = currents(gen, (T, B, C, H, W), dtype, "cuda")
    labels = make_labels(gen, form, T, B, H, W, K, label_dtype, "cuda")
    _check_fused_cuda(x, labels, K, mode, gen)


@pytest.mark.cuda
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("form", ["shared", "step"])
def test_fused_cuda_shared_memory_split_planes(mode, form, gen, monkeypatch):
    # One plane of 96 x 96 pixels: too few planes for the GPU, so each is split over
    # several blocks that add their counts into the global scratch (argmax: lowest
    # spiking pixel over all blocks). Few superpixels, each spanning many blocks.
    monkeypatch.delenv(LEGACY, raising=False)
    T, B, C, H, W, K = 5, 1, 1, 96, 96, 7
    x = currents(gen, (T, B, C, H, W), device="cuda") * 0.7
    labels = make_labels(gen, form, T, B, H, W, K, torch.int32, "cuda")
    grad = _check_fused_cuda(x, labels, K, mode, gen)
    assert grad.abs().sum() > 0


@pytest.mark.cuda
@pytest.mark.parametrize("mode", MODES)
def test_fused_cuda_shared_memory_many_planes(mode, gen, monkeypatch):
    # 320 planes (>= 2 per SM on GPUs with up to 160 SMs) of 400 pixels: one block per
    # plane whose threads walk two pixels each. The oracle is the torch backend's
    # composition (itself bitwise equal to the reference), the reference being slow here.
    monkeypatch.delenv(LEGACY, raising=False)
    T, B, C, H, W, K = 6, 4, 80, 20, 20, 9
    x = currents(gen, (T, B, C, H, W), device="cuda")
    labels = make_labels(gen, "batch", T, B, H, W, K, torch.int64, "cuda")

    def oracle(x, lab):
        return F.srm_suppix_pool(x, lab, K, mode, du_inv_clamp=3.0, backend="torch")

    _check_fused_cuda(x, labels, K, mode, gen, oracle)


@pytest.mark.cuda
@pytest.mark.parametrize("mode", MODES)
def test_fused_cuda_shared_memory_falls_back(mode, gen, monkeypatch):
    # T * K * 4 bytes = 64 KB of histograms exceed the plane kernel's 48 KB: the
    # default kernel runs, with the same results.
    monkeypatch.delenv(LEGACY, raising=False)
    T, B, C, H, W, K = 4, 2, 2, 9, 11, 4096
    x = currents(gen, (T, B, C, H, W), device="cuda") * 2
    labels = make_labels(gen, "batch", T, B, H, W, K, torch.int64, "cuda")
    _check_fused_cuda(x, labels, K, mode, gen, plane=False)


@pytest.mark.cuda
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("form", ["shared", "batch", "grid"])
@pytest.mark.parametrize("label_dtype", [torch.int32, torch.int64], ids=["i32", "i64"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["f32", "f16", "bf16"])
def test_fused_cuda_quad_kernel(mode, form, label_dtype, dtype, gen, monkeypatch):
    """The quad kernel (inference, one label map per image, P % 4 == 0, one block per plane
    once there are >= 2 planes per SM): 320 planes of 12 x 100 pixels, so each thread walks
    two quads (300 > 256 threads); T = 9, not a multiple of the steps loaded ahead. Random
    labels give quads of 1 to 4 superpixels and ignored pixels; grid labels (4 x 4 cells)
    give quads of one superpixel, which add their spikes with one atomic. y equals the
    torch backend's composition and the legacy kernel bit for bit."""
    monkeypatch.delenv(LEGACY, raising=False)
    T, B, C, H, W, K = 9, 4, 80, 12, 100, 9
    x = currents(gen, (T, B, C, H, W), dtype, "cuda")
    if form == "grid":
        labels = S.grid_superpixels(H, W, 4).to(label_dtype).cuda()
        labels[0, :4] = -1  # one ignored quad
        K = int(labels.max()) + 1
    else:
        labels = make_labels(gen, form, T, B, H, W, K, label_dtype, "cuda")
    before = snnspx.kernel_calls("cuda.srm_suppix_pool_quad")
    with torch.no_grad():
        y = F.srm_suppix_pool(x, labels, K, mode, backend="cuda")
        assert snnspx.kernel_calls("cuda.srm_suppix_pool_quad") == before + 1, "the quad kernel must have run"
        want = F.srm_suppix_pool(x.cpu(), labels.cpu(), K, mode, backend="torch")
        assert torch.equal(y.cpu(), want), f"quad y != composition ({mode}, {form})"
        assert torch.equal(F.srm_suppix_pool(x, labels, K, mode, backend="cuda"), y), "not repeatable"
        monkeypatch.setenv(LEGACY, "1")
        assert torch.equal(F.srm_suppix_pool(x, labels, K, mode, backend="cuda"), y), "legacy kernel differs"
    assert snnspx.kernel_calls("cuda.srm_suppix_pool_quad") == before + 2


@pytest.mark.cuda
def test_fused_cuda_quad_kernel_does_not_apply(gen, monkeypatch):
    """Per-step label maps, P % 4 != 0, float64, a misaligned x and planes split over several
    blocks (few planes, P > 256) all leave the inference to the plane kernel, with the same y
    as the legacy kernel."""
    monkeypatch.delenv(LEGACY, raising=False)
    T, B, C, H, W, K = 5, 4, 80, 4, 8, 6
    cases = {
        "per-step labels": (currents(gen, (T, B, C, H, W), device="cuda"),
                            make_labels(gen, "step", T, B, H, W, K, device="cuda")),
        "P % 4 != 0": (currents(gen, (T, B, C, H + 1, W - 1), device="cuda"),
                       make_labels(gen, "batch", T, B, H + 1, W - 1, K, device="cuda")),
        "float64": (currents(gen, (T, B, C, H, W), torch.float64, "cuda"),
                    make_labels(gen, "batch", T, B, H, W, K, device="cuda")),
        "misaligned x": (currents(gen, (T * B * C * H * W + 1,), device="cuda")[1:].view(T, B, C, H, W),
                         make_labels(gen, "batch", T, B, H, W, K, device="cuda")),
        # 2 planes of 512 pixels: the plane kernel splits each over several blocks
        "few planes": (currents(gen, (T, 1, 2, 16, 32), device="cuda"),
                       make_labels(gen, "batch", T, 1, 16, 32, K, device="cuda")),
    }
    for name, (x, labels) in cases.items():
        quad, plane = snnspx.kernel_calls("cuda.srm_suppix_pool_quad"), snnspx.kernel_calls("cuda.srm_suppix_pool_plane")
        with torch.no_grad():
            y = F.srm_suppix_pool(x, labels, K, "avg", backend="cuda")
        assert snnspx.kernel_calls("cuda.srm_suppix_pool_quad") == quad, name
        assert snnspx.kernel_calls("cuda.srm_suppix_pool_plane") == plane + 1, name
        with monkeypatch.context() as m, torch.no_grad():
            m.setenv(LEGACY, "1")
            assert torch.equal(F.srm_suppix_pool(x, labels, K, "avg", backend="cuda"), y), name


@pytest.mark.cuda
def test_fused_cuda_shared_memory_edge_cases(gen, monkeypatch):
    # T = 1, K = 0 (all labels negative, K inferred), empty planes (P = 0), and
    # agreement with the legacy (atomic) kernel bit for bit.
    monkeypatch.delenv(LEGACY, raising=False)
    x = currents(gen, (1, 2, 3, 4, 5), device="cuda") * 4
    labels = make_labels(gen, "batch", 1, 2, 4, 5, 3, device="cuda")
    for mode in MODES:
        _check_fused_cuda(x, labels, 3, mode, gen)
    none = torch.full((4, 5), -1, device="cuda")
    xg = x.clone().requires_grad_()
    y = F.srm_suppix_pool(xg, none, None, "sum", backend="cuda")
    assert y.shape == (1, 2, 3, 0)
    y.sum().backward()
    assert torch.equal(xg.grad, torch.zeros_like(x))
    empty = currents(gen, (3, 2, 2, 0, 4), device="cuda")
    y = F.srm_suppix_pool(empty, torch.zeros(0, 4, dtype=torch.long, device="cuda"), 2, "avg", backend="cuda")
    assert y.shape == (3, 2, 2, 2) and torch.all(y == 0)
    x = currents(gen, (7, 3, 4, 13, 17), device="cuda")
    for form in ("shared", "step"):
        labels = make_labels(gen, form, 7, 3, 13, 17, 11, device="cuda")
        for mode in MODES:
            got = F.srm_suppix_pool(x, labels, 11, mode, backend="cuda")
            with monkeypatch.context() as m:
                m.setenv(LEGACY, "1")
                legacy = F.srm_suppix_pool(x, labels, 11, mode, backend="cuda")
            assert torch.equal(got, legacy)


# --------------------------------------------------------------------------- what the docs promise
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_gradient_is_the_cpp_composition_bit_for_bit(mode, dtype, gen):
    """float32/float64: the C++ fused gradient has the bits of srm_neuron then suppix_pool (cpp)."""
    T, B, C, H, W, K = 10, 2, 3, 6, 7, 5
    x = currents(gen, (T, B, C, H, W), dtype)
    labels = make_labels(gen, "batch", T, B, H, W, K)
    w = torch.randn((T, B, C, K), generator=gen, dtype=torch.float64).to(dtype)
    xf, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    (F.srm_suppix_pool(xf, labels, K, mode, backend="cpp") * w).sum().backward()
    (F.suppix_pool(F.srm_neuron(xc, backend="cpp"), labels, K, mode, backend="cpp") * w).sum().backward()
    assert xc.grad.abs().sum() > 0, "the test should exercise a non-zero gradient"
    assert torch.equal(xf.grad, xc.grad)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_fused_half_gradient_rounds_once(mode, dtype, gen):
    """float16/bfloat16 on the C++ backend: "sum" and "max" give the composition's bits; "avg"
    is at most one unit in the last place away from it and never farther from the exact value
    (the float32 composition: half inputs run float32 neuron state, so the spikes are the same)."""
    T, B, C, H, W, K = 10, 2, 3, 6, 7, 5
    x = currents(gen, (T, B, C, H, W), dtype)
    labels = make_labels(gen, "batch", T, B, H, W, K)
    w = torch.randn((T, B, C, K), generator=gen, dtype=torch.float64).to(dtype)
    xf, xc, x32 = x.clone().requires_grad_(), x.clone().requires_grad_(), x.float().requires_grad_()
    (F.srm_suppix_pool(xf, labels, K, mode, backend="cpp") * w).sum().backward()
    (F.suppix_pool(F.srm_neuron(xc, backend="cpp"), labels, K, mode, backend="cpp") * w).sum().backward()
    (F.suppix_pool(F.srm_neuron(x32, backend="cpp"), labels, K, mode, backend="cpp") * w.float()).sum().backward()
    assert x32.grad.abs().sum() > 0, "the test should exercise a non-zero gradient"
    if mode != "avg":
        assert torch.equal(xf.grad, xc.grad)
        return
    fused, comp, exact = xf.grad, xc.grad, x32.grad.double()
    big = torch.maximum(fused.abs(), comp.abs())
    ulp = (torch.nextafter(big, torch.full_like(big, float("inf"))) - big).double()
    assert torch.all((fused.double() - comp.double()).abs() <= ulp), "more than one rounding apart"
    assert torch.all((fused.double() - exact).abs() <= (comp.double() - exact).abs())


@pytest.mark.parametrize("mode", MODES)
def test_reference_fused_check_labels_matches_cpp(mode, gen):
    """reference.srm_suppix_pool takes check_labels like the functional op, with the same meaning."""
    T, B, C, H, W, K = 5, 2, 2, 4, 5, 4
    x = currents(gen, (T, B, C, H, W)) * 2
    labels = make_labels(gen, "batch", T, B, H, W, K + 3)  # labels up to K + 2, one of them K + 2
    for fn in (R.srm_suppix_pool, lambda *a, **k: F.srm_suppix_pool(*a, **k, backend="cpp")):
        with pytest.raises(ValueError, match=f"labels must be < num_superpixels = {K}"):
            fn(x, labels, K, mode)
        with pytest.raises(ValueError, match=f"labels must be < num_superpixels = {K}"):
            fn(x, labels, K, mode, check_labels=True)
    w = torch.randn((T, B, C, K), generator=gen, dtype=torch.float64).float()
    xr, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    want = F.srm_suppix_pool(xc, labels, K, mode, check_labels=False, backend="cpp")
    got = R.srm_suppix_pool(xr, labels, K, mode, check_labels=False)
    assert torch.equal(got, want)
    masked = torch.where(labels >= K, -1, labels)
    assert torch.equal(got, R.srm_suppix_pool(x, masked, K, mode))
    (got * w).sum().backward()
    (want * w).sum().backward()
    torch.testing.assert_close(xr.grad, xc.grad)
    # An inferred K bounds every label: nothing to check, the same result either way.
    assert torch.equal(R.srm_suppix_pool(x, labels, None, mode), F.srm_suppix_pool(x, labels, None, mode, backend="cpp"))


@pytest.mark.cuda
@pytest.mark.parametrize("legacy", [False, True], ids=["default", "legacy"])
def test_cuda_graph_capture(legacy, gen, monkeypatch):
    """Under CUDA graph capture the ops read nothing back (the label range check, a
    read-back, is skipped there) and the replay gives the eager results."""
    if legacy:
        monkeypatch.setenv(LEGACY, "1")
    else:
        monkeypatch.delenv(LEGACY, raising=False)
    x = currents(gen, (6, 2, 3, 8, 8), device="cuda")
    labels = make_labels(gen, "batch", 6, 2, 8, 8, 5, device="cuda")

    def run():
        y = F.srm_suppix_pool(x, labels, 5, "avg", backend="cuda")
        z = F.suppix_unpool(F.suppix_pool(x, labels, 5, "max", backend="cuda"), labels, backend="cuda")
        return y, z

    want = run()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as torch.cuda.graph asks
        run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = run()
    graph.replay()
    torch.cuda.synchronize()
    for got, ref in zip(out, want):
        assert torch.equal(got, ref)


_FRESH_TAUS = itertools.count()


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("warm", [True, False], ids=["cached-tables", "tables-made-in-capture"])
def test_cuda_graph_capture_of_the_backward(warm, dtype, gen):
    """A captured training step (fused op and srm_neuron, forward and backward) replays the
    eager gradient, also after the allocator has handed out and taken back other memory. The
    SRM backward's tables: after a warm-up with the same time constants (the usual way to
    capture) they come from the cache, made on the host, and the replay is bit for bit the
    eager gradient; with constants first seen inside the capture the device makes them
    (counter "cuda.srm_tables"), which matches up to rounding."""
    T, B, C, H, W, K = 6, 2, 3, 8, 8, 5
    x = currents(gen, (T, B, C, H, W), dtype, "cuda")
    labels = make_labels(gen, "batch", T, B, H, W, K, device="cuda")
    xg = x.clone().requires_grad_()
    # A fresh value per call: no table for it is cached yet, in this process.
    tau_m = 5.0 if warm else 7.0 + 1e-3 * next(_FRESH_TAUS) + 1e-7

    def step(tau):
        y = F.srm_suppix_pool(xg, labels, K, "avg", tau_m=tau, check_labels=False, backend="cuda")
        z = F.srm_neuron(xg, tau_m=tau, backend="cuda")
        return torch.autograd.grad(y.sum() + (z * 0.5).sum(), xg)[0]

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as torch.cuda.graph asks
        step(tau_m if warm else 5.0)
    torch.cuda.current_stream().wait_stream(side)
    made = snnspx.kernel_calls("cuda.srm_tables")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        got = step(tau_m)
    assert snnspx.kernel_calls("cuda.srm_tables") - made == (0 if warm else 2)  # fused and neuron backward
    graph.replay()
    torch.cuda.synchronize()
    first = got.clone()
    want = step(tau_m)
    # Other work in between: new tables, memory taken and given back.
    step(tau_m + 0.5)
    junk = [torch.randn(1 << 20, device="cuda") for _ in range(8)]
    del junk
    torch.cuda.empty_cache()
    graph.replay()
    torch.cuda.synchronize()
    assert want.abs().sum() > 0
    assert torch.equal(got, first), "a second replay differs"
    if warm:
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got, want)
