"""The registered superpixel ops: opcheck, torch.compile of a model that pools, which kernel
serves a call (the compiled one by default, the PyTorch one for backend="torch"), the
modules and the label makers."""

from __future__ import annotations

import math

import pytest
import torch

import snnspx
from snnspx import functional as F
from snnspx import superpixels as S
from conftest import COMPILED, GRID
from suppix_helpers import cpp_loaded, rand_labels, rand_x  # noqa: F401  (cpp_loaded: a fixture)

OPS = ("suppix_pool", "suppix_pool_backward", "suppix_unpool", "suppix_counts")

pytestmark = pytest.mark.usefixtures("cpp_loaded")


# --------------------------------------------------------------------------- registered ops
# opcheck's cheap checks; "test_aot_dispatch_dynamic" (a trace through AOTAutograd, about 0.2-0.5 s
# a call) runs on a covering subset of the cases.
CHEAP = ("test_schema", "test_autograd_registration", "test_faketensor")
FULL = (*CHEAP, "test_aot_dispatch_dynamic")


@pytest.mark.parametrize("backend,device", COMPILED)
def test_opcheck(backend, device, gen):
    """Schema, fake kernel and autograd registration of every op and mode for float32/64, half
    precision, a non-contiguous x and no superpixels, per-image and per-step label maps, int32
    and int64 labels (each label dtype meets each label form, x dtype and mode), the range check
    on and off; the AOT dispatch test for every op, mode and sample, with and without autograd,
    and for the per-step maps on every other sample."""
    F.suppix_counts(torch.zeros(1, 1, dtype=torch.int64, device=device), num_superpixels=1, backend=backend)  # loads it
    ops = torch.ops.snnspx
    T, B, C, P, K = 3, 2, 4, 10, 6
    samples = [  # (x, K): float32/64, half precision, a non-contiguous x, no superpixels
        *((rand_x(gen, (T, B, C, P), dtype, device), K) for dtype in (torch.float32, torch.float64, torch.bfloat16)),
        (rand_x(gen, (T, B, P, C), torch.float32, device).transpose(2, 3), K),
        (rand_x(gen, (T, B, C, P), torch.float16, device), 0),
    ]
    for i, (x, K) in enumerate(samples):
        dtype = x.dtype
        label_dtypes = (torch.int32, torch.int64) if i % 2 == 0 else (torch.int64, torch.int32)
        for j, (shape, label_dtype) in enumerate(zip(((1, B, P), (T, 1, P)), label_dtypes)):
            lab = torch.randint(-1, K, shape, generator=gen).to(label_dtype).to(device)
            g = rand_x(gen, (T, B, C, K), dtype, device)
            utils = FULL if (i + j) % 2 == 0 else CHEAP
            for mode in ("sum", "avg", "max", "avg_spike"):
                torch.library.opcheck(ops.suppix_pool.default, (x, lab, K, mode, True, ""), test_utils=utils)
                x_grad = x.clone().requires_grad_()
                torch.library.opcheck(ops.suppix_pool.default, (x_grad, lab, K, mode, False, ""), test_utils=utils)
                _, aux = ops.suppix_pool.default(x, lab, K, mode, True, "")
                torch.library.opcheck(ops.suppix_pool_backward.default, (g, lab, aux, mode, ""), test_utils=utils)
                # its own autograd formula (a double backward of pooling)
                g_grad = g.clone().requires_grad_()
                torch.library.opcheck(ops.suppix_pool_backward.default, (g_grad, lab, aux, mode, ""), test_utils=utils)
            torch.library.opcheck(ops.suppix_unpool.default, (g, lab, True, ""), test_utils=utils)
            torch.library.opcheck(ops.suppix_unpool.default, (g.clone().requires_grad_(), lab, False, ""), test_utils=utils)
            torch.library.opcheck(ops.suppix_counts.default, (lab, K), test_utils=utils)


class _SpikePoolNet(torch.nn.Module):
    def __init__(self, backend, K):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1, dtype=torch.float64)
        self.pool = snnspx.nn.SupPixPool("avg", num_superpixels=K, backend=backend)
        self.maxpool = snnspx.nn.SupPixPool("max", num_superpixels=K, backend=backend)
        self.unpool = snnspx.nn.SupPixUnpool(backend=backend)

    def forward(self, x, labels):
        T, B = x.shape[:2]
        h = self.conv(x.flatten(0, 1)).unflatten(0, (T, B))
        y = self.pool(h, labels) + self.maxpool(h, labels)
        return self.unpool(y, labels)


@pytest.mark.parametrize("backend,device", COMPILED)
def test_torch_compile_module(backend, device, gen):
    torch._dynamo.reset()
    K = 6
    model = _SpikePoolNet(backend, K).to(device)
    x = rand_x(gen, (3, 2, 3, 5, 6), torch.float64, device)
    labels = rand_labels(gen, "per_image", 3, 2, 5, 6, K, device)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    out_c = compiled(x, labels)
    out_c.square().sum().backward()
    grads_c = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    out_e = model(x, labels)
    out_e.square().sum().backward()
    assert torch.equal(out_c, out_e)
    for gc, ge in zip(grads_c, [p.grad for p in model.parameters()]):
        torch.testing.assert_close(gc, ge)


# --------------------------------------------------------------------------- which kernel serves a call
def _profiled_ops(device, backend, gen):
    """Counts of the profiler's op names while pooling (forward and backward), unpooling and
    counting run once each with `backend`."""
    x = rand_x(gen, (2, 2, 3, 4, 4), device=device).requires_grad_()
    labels = torch.zeros(4, 4, dtype=torch.int64, device=device)
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities) as prof:
        F.suppix_pool(x, labels, num_superpixels=2, mode="max", backend=backend).sum().backward()
        F.suppix_unpool(torch.ones(2, 2, 3, 2, device=device), labels, backend=backend)
        F.suppix_counts(labels, num_superpixels=2, backend=backend)
    names: dict[str, int] = {}
    for e in prof.events():
        names[e.name] = names.get(e.name, 0) + 1
    return names


def _check_served(device, dispatch_key, compiled, gen):
    F.suppix_counts(torch.zeros(2, 2, dtype=torch.int64, device=device), num_superpixels=1)  # loads the library
    for op in OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"snnspx::{op}", dispatch_key), op
    assert snnspx._backend.resolve(None, torch.device(device)) == compiled
    # the default backend: each op runs once, on the compiled kernel (the PyTorch kernel would
    # sort the labels and reduce segments)
    names = _profiled_ops(device, None, gen)
    assert {op: names.get(f"snnspx::{op}", 0) for op in OPS} == dict.fromkeys(OPS, 1), names
    assert "aten::segment_reduce" not in names and "aten::sort" not in names, names
    # backend="torch" on the same device runs the PyTorch kernels, under the same ops
    names = _profiled_ops(device, "torch", gen)
    assert all(names.get(f"snnspx::{op}", 0) >= 1 for op in OPS), names
    assert "aten::segment_reduce" in names and "aten::sort" in names, names


def test_cpp_kernels_actually_run(gen):
    _check_served("cpu", "CPU", "cpp", gen)


@pytest.mark.cuda
def test_cuda_kernels_actually_run(gen):
    _check_served("cuda", "CUDA", "cuda", gen)


@pytest.mark.skipif(torch.version.cuda is None, reason="needs a CUDA build of PyTorch")
@pytest.mark.skipif(snnspx._build.find_cuda_home() is None, reason="needs the CUDA toolkit (nvcc)")
def test_cuda_kernels_compile_and_register():
    """Runs without a GPU: the superpixel kernels compile, link and register for CUDA."""
    snnspx._build.load_library("cuda")
    for op in OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"snnspx::{op}", "CUDA"), op


# --------------------------------------------------------------------------- modules
@pytest.mark.parametrize("backend,device", GRID)
def test_modules(backend, device, gen):
    T, B, C, H, W = 3, 2, 4, 6, 8
    labels = S.grid_superpixels(H, W, 2, device=device)
    K = int(labels.max()) + 1
    x = rand_x(gen, (T, B, C, H, W), torch.float32, device)
    pool = snnspx.nn.SupPixPool("avg", backend=backend)
    pool_bf = snnspx.nn.SupPixPool("avg", batch_first=True, backend=backend)
    y = pool(x, labels)
    assert y.shape == (T, B, C, K)
    assert torch.equal(pool_bf(x.transpose(0, 1), labels), y.transpose(0, 1))
    per_step = labels.expand(T, B, H, W)
    assert torch.equal(pool_bf(x.transpose(0, 1), per_step.transpose(0, 1)), y.transpose(0, 1))
    # unpooling the average of a piecewise-constant image gives it back
    const = snnspx.nn.SupPixUnpool(backend=backend)(y, labels)
    unpool_bf = snnspx.nn.SupPixUnpool(batch_first=True, backend=backend)
    assert torch.equal(unpool_bf(y.transpose(0, 1), labels), const.transpose(0, 1))
    torch.testing.assert_close(pool(const, labels), y)
    assert "mode='avg', grad='exact'" in repr(pool)
    with pytest.raises(ValueError, match="grad='spike'"):
        snnspx.nn.SupPixPool("sum", grad="spike")


# --------------------------------------------------------------------------- label makers
def test_grid_superpixels():
    lab = S.grid_superpixels(5, 7, 3)
    assert lab.shape == (5, 7) and lab.dtype == torch.int64
    assert lab.tolist()[0] == [0, 0, 0, 1, 1, 1, 2] and lab.tolist()[4] == [3, 3, 3, 4, 4, 4, 5]
    assert int(lab.max()) + 1 == math.ceil(5 / 3) * math.ceil(7 / 3)
    assert S.grid_superpixels(4, 4, 2, dtype=torch.int32).dtype == torch.int32
    with pytest.raises(ValueError, match="cell must be >= 1"):
        S.grid_superpixels(4, 4, 0)
    with pytest.raises(TypeError, match="dtype must be"):
        S.grid_superpixels(4, 4, 2, dtype=torch.float32)


def test_relabel_sequential(gen):
    lab = torch.tensor([[[5, 5, -1], [9, 2, 2]], [[-3, 7, 7], [7, 7, 100]]], dtype=torch.int32)
    out = S.relabel_sequential(lab)
    assert out.dtype == torch.int32
    assert out.tolist() == [[[1, 1, -1], [2, 0, 0]], [[-1, 0, 0], [0, 0, 1]]]
    assert S.relabel_sequential(lab[0]).tolist() == out[0].tolist()
    per_step = torch.randint(-2, 50, (3, 2, 4, 5), generator=gen)
    out4 = S.relabel_sequential(per_step)
    for t in range(3):
        for b in range(2):
            m, o = per_step[t, b], out4[t, b]
            uniq = torch.unique(m[m >= 0])
            assert torch.equal(o[m >= 0], torch.searchsorted(uniq, m[m >= 0]))
            assert torch.all(o[m < 0] == -1)
    assert torch.equal(S.relabel_sequential(torch.full((2, 3), -4)), torch.full((2, 3), -1))
