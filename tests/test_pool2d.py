"""The spike-count window pooling ops (snnspx/functional/pool2d.py: spike_avg_pool2d and
spike_avg_pool2d_bwd) against snnspx.reference's loops, on every backend and dtype, with the
awkward shapes; the window counts, the only tensor autograd keeps; opcheck of both ops; which
kernel ran; a torch.compile'd module.

The backward is exact (a count and one division, rounded once), so every backend must give
the reference's values (computed from x); the forward's window sums of random values may
differ from the reference's (float64 loops) in the last bit, and are compared with
F.avg_pool2d's exactly.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as TF

import snnspx
from snnspx import functional as F
from snnspx import reference as R
from conftest import COMPILED, GRID, kernels_run

DTYPES = [
    pytest.param(torch.float32, id="f32"),
    pytest.param(torch.float64, id="f64"),
    pytest.param(torch.float16, id="f16"),
    pytest.param(torch.bfloat16, id="bf16"),
]
ops = torch.ops.snnspx

# (shape, kernel): odd H/W (dropped rows and columns), kernel (1, 1), (2, 3), 3-D and 5-D.
CASES = [
    pytest.param((3, 2, 3, 6, 8), (2, 2), id="5d-k2"),
    pytest.param((2, 3, 2, 7, 9), (2, 2), id="5d-k2-odd"),
    pytest.param((2, 2, 7, 8), (2, 3), id="4d-k2x3-odd"),
    pytest.param((4, 5, 5), (1, 1), id="3d-k1"),
    pytest.param((3, 7, 11), (3, 4), id="3d-k3x4-odd"),
    pytest.param((2, 1, 2, 5, 5), (5, 5), id="5d-one-window"),
    pytest.param((2, 17, 35), (16, 17), id="3d-k16x17-int32-counts"),  # 272 pixels per window
]


def spikes(gen, shape, dtype, device, p=0.3):
    """0/1 spikes with one all-zero window (n = 0) and a non-binary value (it counts as non-zero)."""
    x = (torch.rand(shape, generator=gen, dtype=torch.float64) < p).to(dtype)
    if x.numel():
        x.view(-1, *shape[-2:])[0, :3, :3] = 0
        x.view(-1, *shape[-2:])[-1, -1, -1] = -2.5
    return x.to(device)


def randn(gen, shape, dtype, device):
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype).to(device)


def bits(t):
    """The tensor's bits as integers (NaN payloads and -0.0 compare exactly)."""
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def load(backend, device):
    """Load the compiled library of `backend` (ops called directly do not)."""
    F.spike_avg_pool2d(torch.zeros(1, 2, 2, device=device), backend=backend)


def ref_count(x, kernel):
    """Each window's non-zero inputs, from Python loops over the reference's windows."""
    kh, kw = kernel
    H, W = x.shape[-2:]
    planes = x.reshape(-1, H, W)
    n = torch.zeros(planes.shape[0], H // kh, W // kw, dtype=torch.int64)
    for p in range(planes.shape[0]):
        for oh, ow, pixels in R._windows(H, W, kernel):
            n[p, oh, ow] = sum(1 for ih, iw in pixels if planes[p, ih, iw].item() != 0)
    return n.reshape(*x.shape[:-2], H // kh, W // kw).to(torch.uint8 if kh * kw <= 255 else torch.int32)


def op_grad(g, x, kernel):
    """spike_avg_pool2d_bwd from the counts of spike_avg_pool2d, as autograd calls it."""
    count = ops.spike_avg_pool2d(x, *kernel)[1]
    return ops.spike_avg_pool2d_bwd(g, count, *kernel, x.shape[-2], x.shape[-1])


def pool_and_grad(x, g, kernel, backend):
    xg = x.clone().requires_grad_()
    y = F.spike_avg_pool2d(xg, kernel_size=kernel, backend=backend)
    y.backward(g)
    return y.detach(), xg.grad


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,kernel", CASES)
def test_matches_reference(backend, device, dtype, shape, kernel, gen):
    x = spikes(gen, shape, dtype, device)
    oh, ow = shape[-2] // kernel[0], shape[-1] // kernel[1]
    g = randn(gen, (*shape[:-2], oh, ow), dtype, device)
    y, gx = pool_and_grad(x, g, kernel, backend)
    assert y.dtype == gx.dtype == dtype and y.shape == g.shape and gx.shape == x.shape
    torch.testing.assert_close(y.cpu(), R.spike_avg_pool2d(x.cpu(), kernel_size=kernel), rtol=0, atol=0)
    want = R.spike_avg_pool2d_backward(g.cpu(), x.cpu(), kernel_size=kernel)
    torch.testing.assert_close(gx.cpu(), want, rtol=0, atol=0)
    # the pixels that no window covers get 0
    assert not gx[..., oh * kernel[0]:, :].any() and not gx[..., :, ow * kernel[1]:].any()


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_is_avg_pool2d_bitwise(backend, device, dtype, gen):
    """Random values (not spikes): the forward sums each window as F.avg_pool2d does on the CPU
    (row-major, from 0, then one division), so the bits agree, -0.0 included (a window of -0.0
    sums to +0.0); NaN where F.avg_pool2d has NaN (payloads may differ between devices)."""
    x = randn(gen, (2, 3, 2, 9, 10), dtype, "cpu")
    x[0, 0, 0, 0, 0], x[0, 0, 0, 2, 2], x[0, 0, 0, 4, 4] = float("nan"), float("inf"), -0.0
    x[0, 0, 0, 4:6, 4:6] = -0.0
    for kernel in ((2, 2), (3, 2), (1, 3)):
        y = F.spike_avg_pool2d(x.to(device), kernel_size=kernel, backend=backend).cpu()
        want = TF.avg_pool2d(x.flatten(0, 2), kernel, kernel).reshape(y.shape)
        nan = want.isnan()
        assert nan.any() and torch.equal(y.isnan(), nan), kernel
        assert torch.equal(bits(y[~nan]), bits(want[~nan])), kernel


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_values_and_nan(backend, device, dtype, gen):
    """Random non-zero pattern and values: g / n per window exactly; a NaN or inf gradient of an
    empty window gives 0, of a non-empty one NaN or inf; a NaN input counts as non-zero."""
    x = randn(gen, (3, 2, 8, 10), dtype, "cpu")
    x[x.abs() < 0.6] = 0
    x[0, 0, :2, :2] = 0
    x[0, 1, 0, 0] = float("nan")
    x[0, 1, 0, 1] = -0.0  # counts as zero
    g = randn(gen, (3, 2, 4, 5), dtype, "cpu")
    g[0, 0, 0, 0] = float("nan")  # empty window
    g[0, 1, 0, 0] = float("inf")
    load(backend, device)
    with snnspx._library.torch_kernels(backend == "torch"):
        gx = op_grad(g.to(device), x.to(device), (2, 2)).cpu()
    want = R.spike_avg_pool2d_backward(g, x, kernel_size=2)
    torch.testing.assert_close(gx, want, rtol=0, atol=0, equal_nan=True)
    assert (gx[0, 0, :2, :2] == 0).all() and gx[0, 1, :2, :2].isinf().all()


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["f32", "f16"])
def test_non_contiguous_and_empty(backend, device, dtype, gen):
    base = spikes(gen, (4, 3, 2, 9, 14), dtype, device)
    views = {
        "transposed": base.transpose(0, 1),
        "strided": base[:, :, :, ::2, 1::2],  # [4, 3, 2, 5, 7]
        "channels_last": base.flatten(0, 1).contiguous(memory_format=torch.channels_last),
    }
    for name, x in views.items():
        assert not x.is_contiguous(), name
        g = randn(gen, (*x.shape[:-2], x.shape[-2] // 2, x.shape[-1] // 2), dtype, device)
        g = g.transpose(-1, -2).contiguous().transpose(-1, -2)  # a non-contiguous gradient too
        y, gx = pool_and_grad(x, g, 2, backend)
        torch.testing.assert_close(y.cpu(), R.spike_avg_pool2d(x.cpu(), kernel_size=2), rtol=0, atol=0, msg=name)
        torch.testing.assert_close(gx.cpu(), R.spike_avg_pool2d_backward(g.cpu(), x.cpu(), kernel_size=2),
                                   rtol=0, atol=0, msg=name)
    for shape in ((0, 2, 3, 6, 6), (2, 0, 5, 4), (0, 4, 3)):
        x = torch.zeros(shape, dtype=dtype, device=device)
        y, gx = pool_and_grad(x, torch.zeros((*shape[:-2], shape[-2] // 2, shape[-1] // 2), dtype=dtype, device=device),
                              2, backend)
        assert y.shape == (*shape[:-2], shape[-2] // 2, shape[-1] // 2) and gx.shape == shape


@pytest.mark.parametrize("backend,device", GRID)
def test_op_argument_errors(backend, device):
    """The ops called directly check their arguments with the same errors on every kernel."""
    x = torch.zeros(2, 3, 4, 5, device=device)
    load(backend, device)
    with snnspx._library.torch_kernels(backend == "torch"):
        with pytest.raises(ValueError, match="at least 3 dimensions"):
            ops.spike_avg_pool2d(torch.zeros(4, 5, device=device), 2, 2)
        with pytest.raises(ValueError, match=r"at least the kernel \(5, 2\)"):
            ops.spike_avg_pool2d(x, 5, 2)
        with pytest.raises(ValueError, match="kernel_size must be >= 1"):
            ops.spike_avg_pool2d(x, 0, 2)
        with pytest.raises(ValueError, match=r"at most 2\*\*24 pixels per window"):
            ops.spike_avg_pool2d(x, 4097, 4097)
        with pytest.raises(TypeError, match="x must be float32, float64, float16 or bfloat16"):
            ops.spike_avg_pool2d(x.to(torch.int32), 2, 2)
        g = torch.zeros(2, 3, 2, 2, device=device)
        count = torch.zeros(2, 3, 2, 2, dtype=torch.uint8, device=device)
        ops.spike_avg_pool2d_bwd(g, count, 2, 2, 4, 5)  # the valid call the errors below vary
        with pytest.raises(ValueError, match="grad_y must have the output shape"):
            ops.spike_avg_pool2d_bwd(torch.zeros(2, 3, 2, 3, device=device), count, 2, 2, 4, 5)
        with pytest.raises(ValueError, match="grad_y must have at least 3 dimensions"):
            ops.spike_avg_pool2d_bwd(g[0, 0], count[0, 0], 2, 2, 4, 5)
        with pytest.raises(TypeError, match="grad_y must be float32, float64, float16 or bfloat16"):
            ops.spike_avg_pool2d_bwd(count, count, 2, 2, 4, 5)
        with pytest.raises(ValueError, match=r"the input size \(H, W\) = \(4, 1\) must be at least the kernel"):
            ops.spike_avg_pool2d_bwd(g, count, 2, 2, 4, 1)
        with pytest.raises(ValueError, match="count must have the shape of grad_y"):
            ops.spike_avg_pool2d_bwd(g, count[..., :1], 2, 2, 4, 5)
        with pytest.raises(TypeError, match="count must be .*uint8 up to 255 pixels per window, int32 above"):
            ops.spike_avg_pool2d_bwd(g, count.to(torch.int32), 2, 2, 4, 5)
        with pytest.raises(TypeError, match="count must be .*uint8 up to 255 pixels per window, int32 above"):
            ops.spike_avg_pool2d_bwd(g[..., :1, :1], count[..., :1, :1], 16, 16, 16, 16)


@pytest.mark.parametrize("backend,device", COMPILED)
@pytest.mark.parametrize("dtype", DTYPES)
def test_opcheck(backend, device, dtype, gen):
    """Both ops: leftover rows and columns, a non-contiguous x, and int32 counts (kh * kw > 255)."""
    load(backend, device)
    base = spikes(gen, (3, 2, 7, 13), dtype, device)
    for x, kernel in ((base, (2, 2)), (base, (3, 1)), (base.transpose(0, 1)[..., ::2], (2, 3)),
                      (spikes(gen, (2, 17, 18), dtype, device), (16, 17))):
        torch.library.opcheck(ops.spike_avg_pool2d.default, (x.clone().requires_grad_(), *kernel))
        torch.library.opcheck(ops.spike_avg_pool2d.default, (x, *kernel))
        y, count = ops.spike_avg_pool2d(x, *kernel)
        assert count.dtype == (torch.uint8 if kernel[0] * kernel[1] <= 255 else torch.int32)
        g = randn(gen, y.shape, dtype, device)
        torch.library.opcheck(ops.spike_avg_pool2d_bwd.default, (g, count, *kernel, *x.shape[-2:]))


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,kernel", CASES)
def test_counts(backend, device, dtype, shape, kernel, gen):
    """The forward's second output: each window's non-zero inputs, as the reference's loops count
    them (a NaN input counts, -0 does not), uint8 up to 255 pixels per window, int32 above."""
    x = spikes(gen, shape, dtype, "cpu")
    flat = x.view(-1, *shape[-2:])
    flat[-1, 0, 0], flat[-1, 0, -1] = float("nan"), -0.0
    load(backend, device)
    with snnspx._library.torch_kernels(backend == "torch"):
        y, count = ops.spike_avg_pool2d(x.to(device), *kernel)
    want = ref_count(x, kernel)
    assert count.dtype == want.dtype and count.shape == y.shape
    assert torch.equal(count.cpu(), want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,kernel", CASES)
def test_cpp_and_torch_kernels_bitwise(dtype, shape, kernel, gen):
    """Random values (NaN, inf and -0 among them): the C++ and PyTorch kernels of both ops give the
    same bits, and NaN at the same places (the payloads may differ: PyTorch's vectorised
    conversion to bfloat16 makes a NaN of its own)."""
    x = randn(gen, shape, dtype, "cpu")
    x[x.abs() < 0.5] = 0
    flat = x.view(-1, *shape[-2:])
    flat[0, 0, 0], flat[-1, -1, 0], flat[-1, 0, -1] = float("nan"), float("inf"), -0.0
    g = randn(gen, (*shape[:-2], shape[-2] // kernel[0], shape[-1] // kernel[1]), dtype, "cpu")
    g.view(-1)[0] = float("nan")
    load("cpp", "cpu")
    outs = []
    for torch_kernels in (False, True):
        with snnspx._library.torch_kernels(torch_kernels):
            y, count = ops.spike_avg_pool2d(x, *kernel)
            outs.append((y, count, ops.spike_avg_pool2d_bwd(g, count, *kernel, *shape[-2:])))
    (y0, c0, gx0), (y1, c1, gx1) = outs
    assert torch.equal(c0, c1)
    for a, b in ((y0, y1), (gx0, gx1)):
        nan = a.isnan()
        assert nan.any() and torch.equal(nan, b.isnan())
        assert torch.equal(bits(a[~nan]), bits(b[~nan]))


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("kernel,nbytes", [((2, 2), 1), ((3, 2), 1), ((16, 17), 4)])
def test_training_keeps_only_the_counts(backend, device, kernel, nbytes, gen):
    """Autograd keeps the window counts alone, not x: 1 byte per window (a quarter byte per input
    for 2 x 2 windows), 4 for windows of more than 255 pixels; nothing under no_grad."""
    shape = (3, 2, 4, 33, 35)
    x = spikes(gen, shape, torch.float32, device).requires_grad_()
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = F.spike_avg_pool2d(x, kernel_size=kernel, backend=backend)
    assert len(saved) == 1 and saved[0].shape == y.shape
    assert saved[0].dtype == (torch.uint8 if nbytes == 1 else torch.int32)
    assert saved[0].numel() * saved[0].element_size() == nbytes * y.numel()
    if kernel == (2, 2):
        assert saved[0].numel() * saved[0].element_size() * 4 == x[..., :32, :34].numel()
    y.backward(torch.ones_like(y))  # the kept counts serve the backward
    saved.clear()
    with torch.no_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        F.spike_avg_pool2d(x, kernel_size=kernel, backend=backend)
    assert saved == []


def test_compiled_kernel_runs(gen):
    """The C++ kernels serve both ops on the CPU, by default and with backend="cpp"; backend="torch"
    runs the PyTorch kernels of the same ops under the same autograd formula."""
    x = spikes(gen, (3, 2, 2, 6, 6), torch.float32, "cpu")
    F.spike_avg_pool2d(x, backend="cpp")
    for op in ("spike_avg_pool2d", "spike_avg_pool2d_bwd"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"snnspx::{op}", "CPU"), op
    assert snnspx._backend.resolve(None, torch.device("cpu")) == "cpp"
    formulas = {}
    for backend, kind in ((None, "compiled"), ("cpp", "compiled"), ("torch", "torch")):
        xg = x.clone().requires_grad_()
        out = []
        ran = kernels_run(lambda: out.append(F.spike_avg_pool2d(xg, backend=backend)) or out[0].sum().backward())
        assert ran == {"snnspx::spike_avg_pool2d": [kind], "snnspx::spike_avg_pool2d_bwd": [kind]}, (backend, ran)
        formulas[backend] = type(out[0].grad_fn).__name__
    assert len(set(formulas.values())) == 1, formulas


def test_double_backward_raises(gen):
    x = spikes(gen, (2, 2, 4, 4), torch.float32, "cpu").requires_grad_()
    y = F.spike_avg_pool2d(x)
    (gx,) = torch.autograd.grad(((y.sum() - 1) ** 2), x, create_graph=True)
    with pytest.raises(RuntimeError, match="no double backward through spike_avg_pool2d_bwd"):
        gx.sum().backward()


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_compiled_module(backend, dynamic, gen):
    """torch.compile (full graph, through the fake kernels and the autograd formula; with
    dynamic=True the backward's H and W are symbolic) of the module: the same values and
    gradients as eager."""
    torch._dynamo.reset()
    module = snnspx.nn.SpikeAvgPool2d((2, 3), backend=backend)
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True, dynamic=dynamic)
    x = spikes(gen, (3, 2, 4, 7, 8), torch.float32, "cpu")
    g = randn(gen, (3, 2, 4, 3, 2), torch.float32, "cpu")
    results = []
    for run in (compiled, module):
        xg = x.clone().requires_grad_()
        y = run(xg)
        y.backward(g)
        results.append((y.detach(), xg.grad))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    assert torch.equal(results[1][1], R.spike_avg_pool2d_backward(g, x, kernel_size=(2, 3)))
