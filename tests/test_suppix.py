"""Superpixel pooling (docs/maths.md §5): every backend against snnspx.reference elementwise,
against torch.Tensor.scatter_reduce where the semantics agree, gradients, edge
cases, determinism, the registered ops and the label makers."""

from __future__ import annotations

import math

import pytest
import torch

import snnspx
from snnspx import functional as F
from snnspx import reference as R
from snnspx import superpixels as S
from conftest import ALL_BACKENDS, COMPILED, DTYPES, GRID, rand_labels, rand_x

MODES = ["sum", "avg", "max"]
LABEL_FORMS = ["shared", "per_image", "per_step"]


def spikes(gen, shape, dtype=torch.float32, device="cpu", p=0.3):
    return (torch.rand(shape, generator=gen, dtype=torch.float64) < p).to(dtype).to(device)


def pool_and_grad(x, labels, K, mode, backend, w, grad="exact"):
    xg = x.detach().clone().requires_grad_()
    y = F.suppix_pool(xg, labels, K, mode, grad=grad, backend=backend)
    (y * w).sum().backward()
    return y.detach(), xg.grad


def unpool_and_grad(y, labels, w, backend):
    """z = unpool(y) and dL/dy for L = sum(z * w); y's strides are kept."""
    yg = y.detach().clone(memory_format=torch.preserve_format).requires_grad_()
    z = F.suppix_unpool(yg, labels, backend=backend)
    (z * w).sum().backward()
    return z.detach(), yg.grad


def ref_pool_and_grad(x, labels, K, mode, w, grad="exact"):
    xg = x.detach().cpu().clone().requires_grad_()
    y = R.suppix_pool(xg, labels.cpu(), K, mode, grad=grad)
    (y * w.cpu()).sum().backward()
    return y.detach(), xg.grad


def close(got, want, msg=""):
    torch.testing.assert_close(got.cpu(), want.cpu(), msg=lambda m: f"{msg}: {m}")


# --------------------------------------------------------------------------- against the reference
@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("form", LABEL_FORMS)
def test_pool_matches_reference(backend, device, dtype, mode, form, gen):
    T, B, C, H, W, K = 3, 2, 3, 5, 6, 7
    x = rand_x(gen, (T, B, C, H, W), dtype, device)
    labels = rand_labels(gen, form, T, B, H, W, K, device)
    w = rand_x(gen, (T, B, C, K), dtype, device)
    y, gx = pool_and_grad(x, labels, K, mode, backend, w)
    ry, rgx = ref_pool_and_grad(x, labels, K, mode, w)
    assert y.shape == (T, B, C, K) and y.dtype == dtype and y.device.type == device
    close(y, ry, f"y ({backend}, {mode}, {form})")
    close(gx, rgx, f"grad_x ({backend}, {mode}, {form})")
    assert torch.all(y[..., K - 1] == 0), "an empty superpixel must pool to 0"
    assert not torch.isnan(y).any() and not torch.isnan(gx).any()


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form", LABEL_FORMS)
def test_avg_spike_grad_matches_reference(backend, device, dtype, form, gen):
    """grad="spike": g[k] / m (m = non-zero inputs of k at that step and channel), 0 where m = 0."""
    T, B, C, H, W, K = 3, 2, 2, 4, 5, 6
    x = spikes(gen, (T, B, C, H, W), dtype, device)
    x[0, 0, 0] = 0  # a plane with m = 0 everywhere
    labels = rand_labels(gen, form, T, B, H, W, K, device)
    w = rand_x(gen, (T, B, C, K), dtype, device)
    y, gx = pool_and_grad(x, labels, K, "avg", backend, w, grad="spike")
    ry, rgx = ref_pool_and_grad(x, labels, K, "avg", w, grad="spike")
    close(y, ry, "y")
    close(gx, rgx, "grad_x")
    assert torch.all(gx[0, 0, 0] == 0)
    # by hand for one superpixel: every pixel of k gets g / m, zero inputs included
    lab = labels if form == "shared" else (labels[0] if form == "per_image" else labels[1, 0])
    for k in range(K - 1):
        pix = lab == k
        m = int((x[1, 0, 1][pix] != 0).sum())
        want = w[1, 0, 1, k] / m if m else torch.zeros((), dtype=dtype, device=device)
        assert torch.allclose(gx[1, 0, 1][pix], want.expand(int(pix.sum()))), k


@pytest.mark.parametrize("backend,device", GRID)
def test_unpool_matches_reference(backend, device, gen):
    T, B, C, H, W, K = 2, 3, 2, 4, 7, 5
    for form in LABEL_FORMS:
        y = rand_x(gen, (T, B, C, K), torch.float64, device)
        labels = rand_labels(gen, form, T, B, H, W, K + 1, device)  # labels up to K - 1, some -1
        w = rand_x(gen, (T, B, C, H, W), torch.float64, device)
        yg = y.clone().requires_grad_()
        z = F.suppix_unpool(yg, labels, backend=backend)
        (z * w).sum().backward()
        ryg = y.cpu().clone().requires_grad_()
        rz = R.suppix_unpool(ryg, labels.cpu())
        (rz * w.cpu()).sum().backward()
        assert z.shape == (T, B, C, H, W)
        close(z, rz, f"z {form}")
        close(yg.grad, ryg.grad, f"grad_y {form}")
        assert torch.all(z.permute(0, 1, 3, 4, 2)[(labels < 0).expand(T, B, H, W)] == 0)


# --------------------------------------------------------------------------- an independent implementation
@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("mode,reduce", [("sum", "sum"), ("avg", "mean"), ("max", "amax")])
def test_pool_matches_scatter_reduce(backend, device, mode, reduce, gen):
    """scatter_reduce(include_self=False) into zeros agrees where both are defined: ignored
    pixels go to an extra bin that is dropped, and empty bins keep their 0."""
    T, B, C, H, W, K = 4, 3, 5, 8, 9, 12
    x = rand_x(gen, (T, B, C, H, W), torch.float32, device)
    labels = rand_labels(gen, "per_image", T, B, H, W, K, device)
    idx = torch.where(labels < 0, K, labels).reshape(1, B, 1, H * W).expand(T, B, C, H * W)
    want = torch.zeros(T, B, C, K + 1, device=device).scatter_reduce(
        -1, idx, x.reshape(T, B, C, H * W), reduce, include_self=False
    )[..., :K]
    close(F.suppix_pool(x, labels, K, mode, backend=backend), want, mode)
    # the gradients agree too (no ties in random floats, so amax's even split of ties never applies)
    w = rand_x(gen, (T, B, C, K), torch.float32, device)
    xs = x.clone().requires_grad_()
    s = torch.zeros(T, B, C, K + 1, device=device).scatter_reduce(
        -1, idx, xs.reshape(T, B, C, H * W), reduce, include_self=False
    )[..., :K]
    (s * w).sum().backward()
    close(pool_and_grad(x, labels, K, mode, backend, w)[1], xs.grad, f"grad_x {mode}")
    # unpooling is a gather
    y = rand_x(gen, (T, B, C, K), torch.float32, device)
    z = F.suppix_unpool(y, labels, backend=backend)
    gathered = torch.cat([y, torch.zeros(T, B, C, 1, device=device)], -1).gather(-1, idx)
    assert torch.equal(z.reshape(T, B, C, H * W), gathered)


# --------------------------------------------------------------------------- gradcheck
@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("form", ["shared", "per_step"])
def test_gradcheck_pool(backend, device, mode, form, gen):
    T, B, C, H, W, K = 2, 2, 2, 3, 4, 5
    x = rand_x(gen, (T, B, C, H, W), torch.float64, device).requires_grad_()  # no ties: max is differentiable
    labels = rand_labels(gen, form, T, B, H, W, K, device)
    assert torch.autograd.gradcheck(lambda v: F.suppix_pool(v, labels, K, mode, backend=backend), (x,))


@pytest.mark.parametrize("backend,device", GRID)
def test_gradcheck_unpool(backend, device, gen):
    y = rand_x(gen, (2, 2, 3, 6), torch.float64, device).requires_grad_()
    labels = rand_labels(gen, "per_image", 2, 2, 3, 4, 7, device)
    assert torch.autograd.gradcheck(lambda v: F.suppix_unpool(v, labels, backend=backend), (y,))


# --------------------------------------------------------------------------- edge cases
@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("mode", MODES)
def test_max_ties_go_to_the_lowest_pixel(backend, device, mode):
    """Equal values: the argmax is the lowest flat pixel index h * W + w; only it gets g."""
    labels = torch.tensor([[1, 0, 1], [0, 1, 0]], device=device)  # k=0: pixels 1, 3, 5; k=1: 0, 2, 4
    x = torch.tensor([[2.0, 3.0, 2.0], [3.0, 2.0, 1.0]], device=device).reshape(1, 1, 1, 2, 3)
    y, gx = pool_and_grad(x, labels, 2, mode, backend, torch.tensor([[[[10.0, 20.0]]]], device=device))
    ry, rgx = ref_pool_and_grad(x, labels, 2, mode, torch.tensor([[[[10.0, 20.0]]]]))
    close(y, ry), close(gx, rgx)
    if mode == "max":
        assert y.flatten().tolist() == [3.0, 2.0]
        assert gx.flatten().tolist() == [20.0, 10.0, 0.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("backend,device", GRID)
def test_max_propagates_nan_and_handles_inf(backend, device):
    labels = torch.tensor([[0, 0, 1, 1, 2, 2]], device=device)
    x = torch.tensor([[1.0, math.nan, -math.inf, -math.inf, math.nan, math.nan]], device=device).reshape(1, 1, 1, 1, 6)
    y, gx = pool_and_grad(x, labels, 3, "max", backend, torch.ones(1, 1, 1, 3, device=device))
    ry, rgx = ref_pool_and_grad(x, labels, 3, "max", torch.ones(1, 1, 1, 3))
    assert torch.isnan(y[0, 0, 0, 0]) and y[0, 0, 0, 1] == -math.inf and torch.isnan(y[0, 0, 0, 2])
    assert gx.flatten().tolist() == [0.0, 1.0, 1.0, 0.0, 1.0, 0.0] == rgx.flatten().tolist()


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_max_many_ties_signed_zeros_and_inf(backend, device, dtype, gen):
    """Values drawn from {-inf, -1, -0.0, +0.0, 1}, no NaN: most superpixels hold ties (-0.0 and
    +0.0 tie too), some hold only -inf, one is empty, some pixels are ignored; an odd number of
    pixels. The maxima bit for bit (the sign of a zero included) and the argmax (through the
    gradient) are the reference's."""
    T, B, C, H, W, K = 2, 2, 3, 5, 7, 6
    vals = torch.tensor([-math.inf, -1.0, -0.0, 0.0, 1.0], dtype=dtype)
    x = vals[torch.randint(0, 5, (T, B, C, H, W), generator=gen)]
    x[0, 0, 0] = -math.inf  # a plane of -inf only
    x[1, 1, 2] = -0.0
    x[1, 1, 2, ::2, ::3] = 0.0  # +0.0 at a few pixels among -0.0
    labels = torch.randint(-1, K - 1, (B, H, W), generator=gen)  # superpixel K - 1 is empty
    x, labels = x.to(device), labels.to(device)
    w = rand_x(gen, (T, B, C, K), dtype, device)
    y, gx = pool_and_grad(x, labels, K, "max", backend, w)
    ry, rgx = ref_pool_and_grad(x, labels, K, "max", w)
    assert torch.equal(y.cpu(), ry) and torch.equal(y.cpu().signbit(), ry.signbit()), (y, ry)
    assert torch.equal(gx.cpu(), rgx)


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("mode", MODES)
def test_all_pixels_ignored(backend, device, mode, gen):
    x = rand_x(gen, (2, 2, 3, 4, 4), torch.float64, device).requires_grad_()
    labels = torch.full((2, 4, 4), -1, device=device)
    y = F.suppix_pool(x, labels, 3, mode, backend=backend)
    assert y.shape == (2, 2, 3, 3) and torch.all(y == 0)
    y.sum().backward()
    assert torch.all(x.grad == 0)
    assert F.suppix_pool(x, labels, mode=mode, backend=backend).shape == (2, 2, 3, 0), "inferred K = 0"
    assert torch.all(F.suppix_unpool(torch.ones(2, 2, 3, 3, device=device), labels, backend=backend) == 0)


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("mode", MODES)
def test_one_superpixel_and_one_pixel_per_superpixel(backend, device, mode, gen):
    T, B, C, H, W = 2, 2, 3, 4, 5
    x = rand_x(gen, (T, B, C, H, W), torch.float64, device)
    # K = 1: a plain reduction over the image
    y1 = F.suppix_pool(x, torch.zeros(H, W, dtype=torch.int64, device=device), 1, mode, backend=backend)
    flat = x.reshape(T, B, C, H * W)
    want = {"sum": flat.sum(-1), "avg": flat.mean(-1), "max": flat.amax(-1)}[mode]
    close(y1[..., 0], want, "K = 1")
    # K = H * W, one pixel each: the identity
    ident = torch.arange(H * W, device=device).reshape(H, W)
    yk = F.suppix_pool(x, ident, H * W, mode, backend=backend)
    assert torch.equal(yk, flat), "one pixel per superpixel must copy x"
    assert torch.equal(F.suppix_unpool(yk, ident, backend=backend), x)


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("mode", MODES)
def test_label_forms_and_dtypes_agree(backend, device, mode, gen):
    """[H, W] == [B, H, W] == [T, B, H, W] repeating it; int32 == int64; bit for bit."""
    T, B, C, H, W, K = 3, 2, 4, 5, 5, 6
    x = rand_x(gen, (T, B, C, H, W), torch.float32, device)
    lab = rand_labels(gen, "shared", T, B, H, W, K, device)
    forms = [lab, lab.expand(B, H, W), lab.expand(T, B, H, W), lab[None].expand(1, 1, H, W), lab.int()]
    w = rand_x(gen, (T, B, C, K), torch.float32, device)
    runs = [pool_and_grad(x, f, K, mode, backend, w) for f in forms]
    for y, gx in runs[1:]:
        assert torch.equal(y, runs[0][0]) and torch.equal(gx, runs[0][1])
    # unpooling and its backward, int32 against int64 labels
    yv = rand_x(gen, (T, B, C, K), torch.float32, device)
    wz = rand_x(gen, (T, B, C, H, W), torch.float32, device)
    (z64, g64), (z32, g32) = (unpool_and_grad(yv, f, wz, backend) for f in (lab, lab.int()))
    assert torch.equal(z64, z32) and torch.equal(g64, g32)
    # per-step labels really are per step
    per_step = rand_labels(gen, "per_step", T, B, H, W, K, device)
    y = F.suppix_pool(x, per_step, K, mode, backend=backend)
    for t in range(T):
        assert torch.equal(y[t], F.suppix_pool(x[t], per_step[t], K, mode, backend=backend))


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("mode", MODES)
def test_noncontiguous_and_single_step(backend, device, mode, gen):
    T, B, C, H, W, K = 2, 3, 4, 6, 5, 8
    base = rand_x(gen, (B, T, W, C, H), torch.float32, device)
    x = base.permute(1, 0, 3, 4, 2)  # [T, B, C, H, W], not contiguous
    assert not x.is_contiguous()
    labels = rand_labels(gen, "per_image", T, B, H, W, K, device)[:, :, :]
    y = F.suppix_pool(x, labels, K, mode, backend=backend)
    assert torch.equal(y, F.suppix_pool(x.contiguous(), labels, K, mode, backend=backend))
    assert torch.equal(F.suppix_pool(x[:, :, ::2], labels, K, mode, backend=backend), y[:, :, ::2])
    # T = 1 and the [B, C, H, W] single-step form
    y1 = F.suppix_pool(x[1], labels, K, mode, backend=backend)
    assert y1.shape == (B, C, K)
    assert torch.equal(y1, y[1])
    assert torch.equal(F.suppix_pool(x[1:], labels, K, mode, backend=backend)[0], y1)
    z1 = F.suppix_unpool(y1, labels, backend=backend)
    assert z1.shape == (B, C, H, W)
    assert torch.equal(z1, F.suppix_unpool(y, labels, backend=backend)[1])
    # non-contiguous labels
    lab_nc = labels.transpose(1, 2).contiguous().transpose(1, 2)
    assert not lab_nc.is_contiguous()
    assert torch.equal(F.suppix_pool(x, lab_nc, K, mode, backend=backend), y)
    # gradients through non-contiguous x, and with a non-contiguous upstream gradient
    w = rand_x(gen, (T, B, K, C), torch.float32, device).transpose(2, 3)
    y_nc, gx_nc = pool_and_grad(x, labels, K, mode, backend, w)
    y_c, gx_c = pool_and_grad(x.contiguous(), labels, K, mode, backend, w.contiguous())
    assert torch.equal(y_nc, y_c) and torch.equal(gx_nc, gx_c)
    # unpooling of a non-contiguous y, forward and backward
    y_t = rand_x(gen, (T, B, K, C), torch.float32, device).transpose(2, 3)  # [T, B, C, K]
    wz = rand_x(gen, (T, B, C, H, W), torch.float32, device)
    assert not y_t.is_contiguous() and not y_t.clone(memory_format=torch.preserve_format).is_contiguous()
    (z_nc, g_nc), (z_c, g_c) = (unpool_and_grad(v, labels, wz, backend) for v in (y_t, y_t.contiguous()))
    assert torch.equal(z_nc, z_c) and torch.equal(g_nc, g_c)


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("mode", MODES)
def test_runs_are_bitwise_identical(backend, device, mode, gen):
    """Forward and backward give the same bits on every run (also on the GPU: no float atomics)."""
    T, B, C, H, W, K = 4, 3, 16, 24, 20, 37
    x = rand_x(gen, (T, B, C, H, W), torch.float32, device) * 100
    labels = rand_labels(gen, "per_image", T, B, H, W, K, device, low=-2)
    w = rand_x(gen, (T, B, C, K), torch.float32, device)
    runs = [pool_and_grad(x, labels, K, mode, backend, w) for _ in range(3)]
    for y, gx in runs[1:]:
        assert torch.equal(y, runs[0][0]) and torch.equal(gx, runs[0][1])


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_empty_shapes(backend, device):
    for shape in [(0, 2, 3, 4, 4), (2, 2, 0, 4, 4), (2, 2, 3, 0, 4), (2, 2, 3, 4, 0)]:
        x = torch.zeros(shape, device=device)
        labels = torch.zeros(shape[1], shape[3], shape[4], dtype=torch.int64, device=device)
        for mode in MODES:
            y = F.suppix_pool(x, labels, 3, mode, backend=backend)
            assert y.shape == (*shape[:3], 3) and torch.all(y == 0)
        assert F.suppix_unpool(torch.zeros(*shape[:3], 3, device=device), labels, backend=backend).shape == shape
        n = F.suppix_counts(labels, 3, backend=backend)
        want = torch.zeros(shape[1], 3, dtype=torch.int64)
        want[:, 0] = shape[3] * shape[4]  # every pixel has label 0
        assert torch.equal(n.cpu(), want)
        y = F.srm_suppix_pool(x, labels, 3, "avg", backend=backend)
        assert y.shape == (*shape[:3], 3) and torch.all(y == 0)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_inferred_k_too_large(backend, device):
    """A huge label with K inferred: one clear error, not an allocation of K entries."""
    labels = torch.zeros(2, 2, dtype=torch.int64, device=device)
    labels[0, 0] = 10**10
    x = torch.randn(1, 1, 1, 2, 2, device=device)
    for call in (
        lambda: F.suppix_pool(x, labels, backend=backend),
        lambda: F.suppix_counts(labels, backend=backend),
        lambda: F.srm_suppix_pool(x, labels, backend=backend),
    ):
        with pytest.raises(ValueError, match="labels.max\\(\\) \\+ 1 = 10000000001 superpixels"):
            call()


@pytest.mark.parametrize("backend,device", GRID)
def test_counts(backend, device, gen):
    T, B, H, W, K = 3, 2, 5, 6, 8
    for form in LABEL_FORMS:
        labels = rand_labels(gen, form, T, B, H, W, K, device)
        want = torch.stack([torch.bincount(m[m >= 0], minlength=K) for m in labels.reshape(-1, H * W).cpu()])
        want = want.reshape(*labels.shape[:-2], K)
        n = F.suppix_counts(labels, K, backend=backend)
        assert n.dtype == torch.int64 and torch.equal(n.cpu(), want)
        assert torch.equal(R.suppix_counts(labels, K).cpu(), want)
        x = rand_x(gen, (T, B, 2, H, W), torch.float32, device)
        for mode in MODES:
            _, n2 = F.suppix_pool(x, labels, K, mode, return_counts=True, backend=backend)
            assert torch.equal(n2.cpu(), want), mode


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("values", ["randn", "dyadic"])
def test_half_inputs(backend, device, dtype, values, gen):
    """float16/bfloat16 are reduced in float32 and rounded once to the input's dtype: y is the
    float32 pooling of the (exactly widened) inputs, rounded. What that guarantees:

    * y: the CPU kernel, the torch backend on the CPU and the reference all add in ascending
      pixel order, so they give the same bits. The CUDA kernels add in another fixed order,
      which may change a float32 sum's last bit and so, rarely, the rounded result: the dtype's
      default tolerance there for "randn" inputs. "dyadic" inputs (multiples of 1/32 below 4,
      exact in both dtypes) have sums of at most 20 pixels that are exact in float32 in any
      order, and avg divides that exact sum once (correctly rounded): the same bits on every
      backend.
    * grad_x: sum and max copy g (exact), avg rounds the float32 g / n once: the same bits on
      every backend, for any input.
    """
    T, B, C, H, W, K = 2, 2, 3, 4, 5, 6
    if values == "randn":
        x = rand_x(gen, (T, B, C, H, W), dtype, device)
    else:
        x = ((torch.randn((T, B, C, H, W), generator=gen) * 16).round().clamp(-127, 127) / 32).to(dtype).to(device)
    labels = rand_labels(gen, "per_image", T, B, H, W, K, device)
    bitwise_y = device == "cpu" or values == "dyadic"
    for mode in MODES:
        w = rand_x(gen, (T, B, C, K), dtype, device)
        y, gx = pool_and_grad(x, labels, K, mode, backend, w)
        ry, rgx = ref_pool_and_grad(x, labels, K, mode, w)
        assert y.dtype == gx.dtype == ry.dtype == rgx.dtype == dtype
        # the reference on half inputs is the float32 reference, rounded once
        assert torch.equal(ry, R.suppix_pool(x.float().cpu(), labels.cpu(), K, mode).to(dtype))
        if bitwise_y:
            assert torch.equal(y.cpu(), ry), f"y ({backend}, {mode}, {values})"
        else:
            close(y, ry, f"y ({backend}, {mode}, {values})")
        assert torch.equal(gx.cpu(), rgx), f"grad_x ({backend}, {mode}, {values})"


@pytest.mark.parametrize("backend,device", GRID)
def test_unchecked_labels_are_ignored(backend, device, gen):
    """check_labels=False: labels >= K are ignored like negative ones, never read out of bounds."""
    x = rand_x(gen, (2, 2, 3, 4, 5), torch.float64, device)
    labels = torch.randint(-1, 9, (2, 4, 5), generator=gen).to(device)
    masked = torch.where(labels >= 5, -1, labels)
    for mode in MODES:
        got = F.suppix_pool(x, labels, 5, mode, check_labels=False, backend=backend)
        assert torch.equal(got, F.suppix_pool(x, masked, 5, mode, backend=backend))
    y = rand_x(gen, (2, 2, 3, 5), torch.float64, device)
    got = F.suppix_unpool(y, labels, check_labels=False, backend=backend)
    assert torch.equal(got, F.suppix_unpool(y, masked, backend=backend))


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("backend", ["reference", "torch", "cpp"])
def test_bad_arguments_name_the_argument(backend):
    x = torch.randn(2, 2, 3, 4, 5)
    lab = torch.zeros(2, 4, 5, dtype=torch.int64)
    with pytest.raises(TypeError, match="labels must be an int32 or int64 tensor, got torch.float32"):
        F.suppix_pool(x, lab.float(), backend=backend)
    with pytest.raises(ValueError, match="labels must cover x's"):
        F.suppix_pool(x, lab[:, :3], backend=backend)
    with pytest.raises(ValueError, match="labels' batch size"):
        F.suppix_pool(x, torch.zeros(3, 4, 5, dtype=torch.int64), backend=backend)
    with pytest.raises(ValueError, match="per-step labels' T"):
        F.suppix_pool(x, torch.zeros(3, 2, 4, 5, dtype=torch.int64), backend=backend)
    with pytest.raises(ValueError, match=r"per-step labels \[T, B, H, W\] need x"):
        F.suppix_pool(x[0], torch.zeros(2, 2, 4, 5, dtype=torch.int64), backend=backend)
    with pytest.raises(ValueError, match="labels must be < num_superpixels = 3.*got a label 3"):
        F.suppix_pool(x, lab + 3, 3, backend=backend)
    with pytest.raises(ValueError, match="labels must be < num_superpixels = 2"):
        F.suppix_unpool(torch.randn(2, 2, 3, 2), lab + 2, backend=backend)
    with pytest.raises(ValueError, match="mode must be one of"):
        F.suppix_pool(x, lab, mode="mean", backend=backend)
    with pytest.raises(ValueError, match="grad must be one of"):
        F.suppix_pool(x, lab, grad="approx", backend=backend)
    with pytest.raises(ValueError, match="grad='spike' is the backward of mode='avg' only"):
        F.suppix_pool(x, lab, mode="max", grad="spike", backend=backend)
    with pytest.raises(ValueError, match="num_superpixels must be in"):
        F.suppix_pool(x, lab, -1, backend=backend)
    with pytest.raises(TypeError, match="num_superpixels must be an int"):
        F.suppix_pool(x, lab, 2.0, backend=backend)
    with pytest.raises(ValueError, match=r"x must be \[T, B, C, H, W\] or \[B, C, H, W\]"):
        F.suppix_pool(x[0, 0], lab, backend=backend)
    with pytest.raises(TypeError, match="x must be float32"):
        F.suppix_pool(x.long(), lab, backend=backend)
    with pytest.raises(ValueError, match=r"y must be \[T, B, C, K\] or \[B, C, K\]"):
        F.suppix_unpool(x, lab, backend=backend)


def test_compiled_ops_check_their_arguments():
    """The C++ checks stand on their own, for callers of torch.ops.snnspx directly."""
    F.suppix_pool(torch.zeros(1, 1, 1, 1, 1), torch.zeros(1, 1, dtype=torch.int64), 1, backend="cpp")
    ops = torch.ops.snnspx
    x = torch.randn(2, 3, 4, 10)
    lab = torch.zeros(1, 3, 10, dtype=torch.int64)
    with pytest.raises(RuntimeError, match="mode must be 'sum', 'avg', 'max' or 'avg_spike'"):
        ops.suppix_pool(x, lab, 2, "mean", True)
    with pytest.raises(RuntimeError, match="labels must be an int32 or int64 tensor"):
        ops.suppix_pool(x, lab.float(), 2, "sum", True)
    with pytest.raises(RuntimeError, match=r"labels.size\(2\) must be the pixel count P = 10"):
        ops.suppix_pool(x, lab[..., :9], 2, "sum", True)
    with pytest.raises(RuntimeError, match=r"labels.size\(1\) must be 1 \(shared by the batch\) or B = 3"):
        ops.suppix_pool(x, torch.zeros(1, 2, 10, dtype=torch.int64), 2, "sum", True)
    with pytest.raises(ValueError, match="labels must be < num_superpixels = 2"):
        ops.suppix_pool(x, lab + 2, 2, "sum", True)
    with pytest.raises(RuntimeError, match="num_superpixels must be in"):
        ops.suppix_pool(x, lab, -3, "sum", True)
    with pytest.raises(RuntimeError, match=r"x must be \[T, B, C, P\]"):
        ops.suppix_pool(x[0], lab, 2, "sum", True)
    y, aux = ops.suppix_pool(x, lab, 2, "max", True)
    with pytest.raises(RuntimeError, match="aux must have the shape of grad_y"):
        ops.suppix_pool_backward(y, lab, aux[:1], "max")
    _, counts = ops.suppix_pool(x, lab, 2, "avg", True)
    with pytest.raises(RuntimeError, match=r"aux must be the counts \[L, Bl, K\]"):
        ops.suppix_pool_backward(y, lab, aux, "avg")
    assert ops.suppix_pool_backward(y, lab, counts, "avg").shape == x.shape


# --------------------------------------------------------------------------- registered ops
@pytest.mark.parametrize("backend,device", COMPILED)
@pytest.mark.parametrize("label_dtype", [torch.int32, torch.int64], ids=["i32", "i64"])
def test_opcheck(backend, device, label_dtype, gen):
    F.suppix_counts(torch.zeros(1, 1, dtype=torch.int64, device=device), 1, backend=backend)  # loads the library
    ops = torch.ops.snnspx
    T, B, C, P, K = 3, 2, 4, 10, 6
    samples = [  # (x, K): float32/64, half precision, a non-contiguous x, no superpixels
        *((rand_x(gen, (T, B, C, P), dtype, device), K) for dtype in (torch.float32, torch.float64, torch.bfloat16)),
        (rand_x(gen, (T, B, P, C), torch.float32, device).transpose(2, 3), K),
        (rand_x(gen, (T, B, C, P), torch.float16, device), 0),
    ]
    for x, K in samples:
        dtype = x.dtype
        for lab in (
            torch.randint(-1, K, (1, B, P), generator=gen).to(label_dtype).to(device),
            torch.randint(-1, K, (T, 1, P), generator=gen).to(label_dtype).to(device),
        ):
            g = rand_x(gen, (T, B, C, K), dtype, device)
            for mode in ("sum", "avg", "max", "avg_spike"):
                torch.library.opcheck(ops.suppix_pool.default, (x, lab, K, mode, True))
                torch.library.opcheck(ops.suppix_pool.default, (x.clone().requires_grad_(), lab, K, mode, False))
                _, aux = ops.suppix_pool.default(x, lab, K, mode, True)
                torch.library.opcheck(ops.suppix_pool_backward.default, (g, lab, aux, mode))
                # its own autograd formula (a double backward of pooling)
                torch.library.opcheck(ops.suppix_pool_backward.default, (g.clone().requires_grad_(), lab, aux, mode))
            torch.library.opcheck(ops.suppix_unpool.default, (g, lab, True))
            torch.library.opcheck(ops.suppix_unpool.default, (g.clone().requires_grad_(), lab, False))
            torch.library.opcheck(ops.suppix_counts.default, (lab, K))


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


def test_cpp_kernels_actually_run(gen):
    names = ["cpu.suppix_pool", "cpu.suppix_pool_backward", "cpu.suppix_unpool", "cpu.suppix_counts"]
    F.suppix_counts(torch.zeros(2, 2, dtype=torch.int64), 1, backend="cpp")
    before = {n: snnspx.kernel_calls(n) for n in names}
    x = rand_x(gen, (2, 2, 3, 4, 4)).requires_grad_()
    labels = torch.zeros(4, 4, dtype=torch.int64)
    F.suppix_pool(x, labels, 2, "max").sum().backward()  # default backend: the compiled kernel
    F.suppix_unpool(torch.ones(2, 2, 3, 2), labels)
    F.suppix_counts(labels, 2)
    assert {n: snnspx.kernel_calls(n) - before[n] for n in names} == dict.fromkeys(names, 1)


@pytest.mark.cuda
def test_cuda_kernels_actually_run(gen):
    names = ["cuda.suppix_pool", "cuda.suppix_pool_backward", "cuda.suppix_unpool", "cuda.suppix_counts"]
    F.suppix_counts(torch.zeros(2, 2, dtype=torch.int64, device="cuda"), 1)
    before = {n: snnspx.kernel_calls(n) for n in names}
    x = rand_x(gen, (2, 2, 3, 4, 4), device="cuda").requires_grad_()
    labels = torch.zeros(4, 4, dtype=torch.int64, device="cuda")
    F.suppix_pool(x, labels, 2, "avg").sum().backward()
    F.suppix_unpool(torch.ones(2, 2, 3, 2, device="cuda"), labels)
    F.suppix_counts(labels, 2)
    assert {n: snnspx.kernel_calls(n) - before[n] for n in names} == dict.fromkeys(names, 1)


@pytest.mark.cuda
@pytest.mark.parametrize("mode", ["sum", "avg", "max", "avg_spike"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16], ids=["f32", "f64", "f16"])
@pytest.mark.parametrize("HW,K", [((32, 32), 64), ((160, 160), 100)], ids=["staged", "unstaged"])
def test_cuda_matches_cpp_on_large_inputs(mode, dtype, HW, K, gen):
    """Shapes the reference is too slow for: many warps and channel chunks per block, and
    planes too large for shared memory (the unstaged kernel); run-to-run bitwise equality."""
    H, W = HW
    T, B, C = 3, 2, 5
    x = spikes(gen, (T, B, C, H, W), dtype) if mode == "avg_spike" else rand_x(gen, (T, B, C, H, W), dtype)
    labels = torch.randint(-1, K, (B, H, W), generator=gen)
    labels[:, :4] = torch.arange(4 * W).reshape(4, W) % 7  # long runs and big superpixels
    ops = torch.ops.snnspx
    F.suppix_counts(labels.cuda(), K)  # loads the cuda library
    lab = labels.reshape(1, B, H * W)
    y_c, aux_c = ops.suppix_pool(x.reshape(T, B, C, -1), lab, K, mode, True)
    runs = [ops.suppix_pool(x.cuda().reshape(T, B, C, -1), lab.cuda(), K, mode, True) for _ in range(3)]
    for y, aux in runs:
        assert torch.equal(y, runs[0][0]) and torch.equal(aux, runs[0][1])
    tol = dict(atol=2e-2, rtol=2e-2) if dtype == torch.float16 else {}
    if mode in ("sum", "avg") and dtype != torch.float16:
        # The GPU adds a superpixel's n values in a fixed tree order, the CPU in pixel
        # order: both are exact up to rounding, so the difference is bounded by about
        # n * eps * (the same pooling of |x|), not by a fixed relative tolerance.
        abs_pool, counts = ops.suppix_pool(x.abs().reshape(T, B, C, -1), lab, K, mode, True)  # counts [1, B, K]
        n = counts.reshape(1, B, 1, K).to(torch.float64)
        bound = (n + 2) * torch.finfo(dtype).eps * abs_pool.to(torch.float64)
        err = (runs[0][0].cpu().to(torch.float64) - y_c.to(torch.float64)).abs()
        worst = (err - bound).max()
        assert worst <= 0, f"GPU and CPU sums differ by more than rounding can explain ({worst.item():.3g} over)"
    else:
        torch.testing.assert_close(runs[0][0].cpu(), y_c, **tol)
    assert torch.equal(runs[0][1].cpu(), aux_c), "argmax / counts / non-zero counts are exact"
    g = rand_x(gen, (T, B, C, K), dtype)
    gx_c = ops.suppix_pool_backward(g, lab, aux_c, mode)
    gx = [ops.suppix_pool_backward(g.cuda(), lab.cuda(), runs[0][1], mode) for _ in range(2)]
    assert torch.equal(gx[0], gx[1])
    torch.testing.assert_close(gx[0].cpu(), gx_c, **tol)


# --------------------------------------------------------------------------- CUDA kernel choice
# By default the pooling forward runs a no-sort kernel where its shared memory fits
# ("cuda.suppix_pool_nosort" counts its runs; for max of float32/16 and bfloat16 that is the
# key kernel, see below), the sorted path otherwise; the gathers
# (backward, unpooling) run the tiled kernel where P % 4 == 0 ("cuda.suppix_gather_tiled").
# SNNSPX_LEGACY_CUDA=1 (read at every call) selects the sorted path and the one-pixel
# gather always.
NOSORT = "cuda.suppix_pool_nosort"
ALL_MODES = ["sum", "avg", "max", "avg_spike"]


LEGACY = "SNNSPX_LEGACY_CUDA"
TILED = "cuda.suppix_gather_tiled"


def _kernels(monkeypatch, legacy=False):
    if legacy:
        monkeypatch.setenv(LEGACY, "1")
    else:
        monkeypatch.delenv(LEGACY, raising=False)
    F.suppix_counts(torch.zeros(1, 1, dtype=torch.int64, device="cuda"), 1)  # loads the cuda library


def _fwd_mode(mode):
    """(functional mode, grad) of an op mode."""
    return ("avg", "spike") if mode == "avg_spike" else (mode, "exact")


def _op_labels(labels, form, T, B, P):
    L, Bl = {"shared": (1, 1), "per_image": (1, B), "per_step": (T, B)}[form]
    return labels.reshape(L, Bl, P)


@pytest.mark.cuda
@pytest.mark.parametrize("mode", ALL_MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16], ids=["f32", "f64", "f16"])
@pytest.mark.parametrize("form", LABEL_FORMS)
@pytest.mark.parametrize("label_dtype", [torch.int32, torch.int64], ids=["i32", "i64"])
@pytest.mark.parametrize("legacy", [False, True], ids=["nosort", "sorted"])
def test_cuda_pool_matches_reference(mode, dtype, form, label_dtype, legacy, gen, monkeypatch):
    """Every mode, label form and dtype against the reference, on the no-sort kernel and on the
    sorted path (legacy); P = 407: several warps and a partial last step. aux (counts, argmax,
    m) equals the CPU kernel's exactly."""
    _kernels(monkeypatch, legacy)
    T, B, C, H, W, K = 3, 2, 2, 11, 37, 9
    P = H * W
    shape = (T, B, C, H, W)
    x = spikes(gen, shape, dtype, "cuda") if mode == "avg_spike" else rand_x(gen, shape, dtype, "cuda")
    labels = rand_labels(gen, form, T, B, H, W, K, "cuda", dtype=label_dtype)
    w = rand_x(gen, (T, B, C, K), dtype, "cuda")
    fmode, grad = _fwd_mode(mode)
    before = snnspx.kernel_calls(NOSORT)
    y, gx = pool_and_grad(x, labels, K, fmode, "cuda", w, grad=grad)
    assert snnspx.kernel_calls(NOSORT) == before + (0 if legacy else 1), "the no-sort kernel runs by default only"
    assert y.dtype == dtype and not torch.isnan(y).any()
    assert torch.all(y[..., K - 1] == 0), "an empty superpixel must pool to 0"
    if dtype == torch.float16:
        ry, rgx = ref_pool_and_grad(x.float(), labels, K, fmode, w.float(), grad=grad)
        tol = dict(atol=1e-2, rtol=1e-2)
        torch.testing.assert_close(y.cpu().float(), ry, **tol)
        torch.testing.assert_close(gx.cpu().float(), rgx, **tol)
    else:
        ry, rgx = ref_pool_and_grad(x, labels, K, fmode, w, grad=grad)
        close(y, ry, f"y ({mode}, {form})")
        close(gx, rgx, f"grad_x ({mode}, {form})")
    lab = _op_labels(labels, form, T, B, P)
    xo = x.reshape(T, B, C, P)
    y_gpu, aux_gpu = torch.ops.snnspx.suppix_pool(xo, lab, K, mode, True)
    y_cpu, aux_cpu = torch.ops.snnspx.suppix_pool(xo.cpu(), lab.cpu(), K, mode, True)
    assert torch.equal(aux_gpu.cpu(), aux_cpu), "counts / argmax / non-zero counts are exact"
    if mode == "max":
        assert torch.equal(y_gpu.cpu(), y_cpu), "max is exact"


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16], ids=["f32", "f64", "f16"])
def test_cuda_nosort_max_ties_and_nan(dtype, gen, monkeypatch):
    """Many ties within a warp step, across steps and across warps (P = 4480: 8 warps): the
    lowest pixel wins; NaN propagates (the lowest NaN is the argmax). Bitwise the CPU's.
    (float32 and float16 take the key kernel, float64 the warp-row no-sort kernel.)"""
    _kernels(monkeypatch)
    T, B, C, H, W, K = 2, 2, 3, 64, 70, 50
    P = H * W
    x = torch.randint(-2, 3, (T, B, C, P), generator=gen).to(dtype)
    x[1, 1, 2] = 1.0  # a constant plane: every argmax is its superpixel's first pixel
    x[0, 0, 1, ::97] = math.nan
    lab = torch.randint(-1, K - 1, (1, B, P), generator=gen)
    lab[0, 0, 1000:3000] = 7  # one superpixel over several warps
    before = snnspx.kernel_calls(NOSORT)
    y, aux = torch.ops.snnspx.suppix_pool(x.cuda(), lab.cuda(), K, "max", True)
    assert snnspx.kernel_calls(NOSORT) == before + 1
    y_cpu, aux_cpu = torch.ops.snnspx.suppix_pool(x, lab, K, "max", True)
    assert torch.equal(aux.cpu(), aux_cpu)
    torch.testing.assert_close(y.cpu(), y_cpu, rtol=0, atol=0, equal_nan=True)
    pix = torch.arange(P)
    valid = lab[0, 1] >= 0
    first = torch.full((K,), P).scatter_reduce(0, lab[0, 1][valid], pix[valid], "amin")
    first = torch.where(first == P, -1, first).to(torch.int32)
    assert torch.equal(aux[1, 1, 2].cpu(), first)
    assert torch.equal(aux[..., K - 1].cpu(), torch.full((T, B, C), -1, dtype=torch.int32))


@pytest.mark.cuda
@pytest.mark.parametrize("mode", ALL_MODES)
def test_cuda_nosort_edge_cases(mode, gen, monkeypatch):
    """All labels negative, K = 1 (one group of up to 32 lanes per step), one pixel per
    superpixel (the identity, bit for bit), with P not a multiple of 32."""
    _kernels(monkeypatch)
    ops = torch.ops.snnspx
    fmode, grad = _fwd_mode(mode)
    T, B, C, H, W = 2, 2, 3, 37, 45
    P = H * W
    x = rand_x(gen, (T, B, C, H, W), torch.float64, "cuda")
    if mode == "avg_spike":
        x = torch.where(x > 0.3, x, 0)
    before = snnspx.kernel_calls(NOSORT)
    # every pixel ignored
    neg = torch.full((1, B, P), -1, dtype=torch.int64, device="cuda")
    y, aux = ops.suppix_pool(x.reshape(T, B, C, P), neg, 3, mode, True)
    assert torch.all(y == 0) and not torch.isnan(y).any()
    want_aux = -1 if mode == "max" else 0
    assert torch.all(aux == want_aux)
    # K = 1: a plain reduction over the image
    zeros = torch.zeros(H, W, dtype=torch.int64, device="cuda")
    y1 = F.suppix_pool(x, zeros, 1, fmode, grad=grad, backend="cuda")
    flat = x.reshape(T, B, C, P)
    want = {"sum": flat.sum(-1), "avg": flat.mean(-1), "max": flat.amax(-1), "avg_spike": flat.mean(-1)}[mode]
    close(y1[..., 0], want, "K = 1")
    # one pixel per superpixel: the identity, bit for bit (a plane whose K rows fit)
    xi = x[..., :13, :17]
    ident = torch.arange(13 * 17, device="cuda").reshape(13, 17)
    yk = F.suppix_pool(xi, ident, 13 * 17, fmode, grad=grad, backend="cuda")
    assert torch.equal(yk, xi.reshape(T, B, C, -1)), "one pixel per superpixel must copy x"
    assert snnspx.kernel_calls(NOSORT) == before + 3
    # a tiny plane: one warp, one partial step
    small = rand_x(gen, (T, B, C, 4, 5), torch.float32, "cuda")
    lab = rand_labels(gen, "per_image", T, B, 4, 5, 6, "cuda")
    want = R.suppix_pool(small.cpu(), lab.cpu(), 6, fmode)
    close(F.suppix_pool(small, lab, 6, fmode, grad=grad, backend="cuda"), want, "tiny plane")


@pytest.mark.cuda
@pytest.mark.parametrize("mode", ALL_MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["f32", "f16"])
def test_cuda_nosort_large_runs_are_bitwise_identical(mode, dtype, gen, monkeypatch):
    """A large input (many planes, 8 warps, long runs of one label): three runs give the same
    bits; y matches the CPU kernel, aux exactly; the backward takes the new aux."""
    _kernels(monkeypatch)
    T, B, C, H, W, K = 2, 3, 8, 96, 80, 300
    P = H * W
    x = spikes(gen, (T, B, C, P), dtype) if mode == "avg_spike" else rand_x(gen, (T, B, C, P), dtype)
    lab = torch.randint(-2, K, (T, B, P), generator=gen, dtype=torch.int64).int()
    lab[:, :, : 4 * W] = torch.arange(4 * W, dtype=torch.int32) % 7  # long runs and big superpixels
    ops = torch.ops.snnspx
    before = snnspx.kernel_calls(NOSORT)
    runs = [ops.suppix_pool(x.cuda(), lab.cuda(), K, mode, True) for _ in range(3)]
    assert snnspx.kernel_calls(NOSORT) == before + 3
    for y, aux in runs[1:]:
        assert torch.equal(y, runs[0][0]) and torch.equal(aux, runs[0][1])
    y_c, aux_c = ops.suppix_pool(x, lab, K, mode, True)
    tol = dict(atol=2e-2, rtol=2e-2) if dtype == torch.float16 else {}
    torch.testing.assert_close(runs[0][0].cpu(), y_c, **tol)
    assert torch.equal(runs[0][1].cpu(), aux_c)
    g = rand_x(gen, (T, B, C, K), dtype)
    gx = ops.suppix_pool_backward(g.cuda(), lab.cuda(), runs[0][1], mode)
    torch.testing.assert_close(gx.cpu(), ops.suppix_pool_backward(g, lab, aux_c, mode), **tol)


@pytest.mark.cuda
@pytest.mark.parametrize(
    "dtype,mode,K,nosort",
    [
        (torch.float32, "sum", 1536, True),  # 8 warps * 1536 * 4 B = 48 KiB: fits
        (torch.float32, "sum", 1537, False),
        (torch.float32, "avg_spike", 768, True),  # 8 * 768 * (4 + 4) B
        (torch.float32, "avg_spike", 769, False),
        (torch.float64, "max", 512, True),  # 8 * 512 * (8 + 4) B
        (torch.float64, "max", 513, False),
        (torch.float32, "max", 6144, True),  # the key kernel: 1 channel * 6144 * 8 B
        (torch.float32, "max", 6145, False),
        (torch.float16, "avg", 1536, True),  # float accumulators
        (torch.float32, "avg", 5000, False),
    ],
)
def test_cuda_nosort_falls_back_when_rows_do_not_fit(dtype, mode, K, nosort, gen, monkeypatch):
    """Rows over 48 KiB of shared memory: the sorted path takes the call, same results."""
    _kernels(monkeypatch)
    T, B, C, P = 2, 2, 3, 1024  # 8 warps
    x = spikes(gen, (T, B, C, P), dtype) if mode == "avg_spike" else rand_x(gen, (T, B, C, P), dtype)
    lab = torch.randint(-1, K, (1, B, P), generator=gen)
    ops = torch.ops.snnspx
    before, calls = snnspx.kernel_calls(NOSORT), snnspx.kernel_calls("cuda.suppix_pool")
    y, aux = ops.suppix_pool(x.cuda(), lab.cuda(), K, mode, True)
    assert snnspx.kernel_calls(NOSORT) - before == int(nosort)
    assert snnspx.kernel_calls("cuda.suppix_pool") - calls == 1
    y_c, aux_c = ops.suppix_pool(x, lab, K, mode, True)
    tol = dict(atol=1e-2, rtol=1e-2) if dtype == torch.float16 else {}
    torch.testing.assert_close(y.cpu(), y_c, **tol)
    assert torch.equal(aux.cpu(), aux_c)


@pytest.mark.cuda
@pytest.mark.parametrize("legacy", [False, True], ids=["side-stream", "legacy"])
def test_cuda_label_check_sees_labels_written_just_before(legacy, gen, monkeypatch):
    """The range check copies the largest label to the host on a side stream (csrc/cuda/glue.h;
    unpooling, the fused op and sorted pooling also find it there): it must wait for the
    labels' producer on the current stream.
    Labels hold K (a failing label) until a copy queued behind a long sleep makes them valid;
    a check that read them early would raise."""
    if legacy:
        monkeypatch.setenv(LEGACY, "1")
    else:
        monkeypatch.delenv(LEGACY, raising=False)
    K = 6
    good = torch.randint(-1, K, (2, 4, 5), generator=gen).cuda()
    y = rand_x(gen, (3, 2, 3, K), torch.float32, "cuda")
    x = rand_x(gen, (3, 2, 3, 4, 5), torch.float32, "cuda")
    # The sorted pooling path (K too large for the no-sort kernels' 48 KiB of shared memory,
    # even with one warp of 20 pixels) checks on the side stream too.
    big_K = 20000
    ops = {
        "unpool": lambda lab: F.suppix_unpool(y, lab, backend="cuda"),
        "fused": lambda lab: F.srm_suppix_pool(x, lab, K, "avg", backend="cuda"),
        "sorted pooling": lambda lab: F.suppix_pool(x, lab, big_K, "sum", backend="cuda"),
        # the no-sort kernels' own count finds the largest label; only the copy is on the side
        "no-sort pooling": lambda lab: F.suppix_pool(x, lab, K, "max", backend="cuda"),
    }
    for name, op in ops.items():
        want = op(good)
        # Small blocks of the caching allocator that hold a failing label: a copy that did not
        # wait would read the largest label's tensor before the current stream wrote it.
        poison = [torch.full((64,), 2**62, dtype=torch.int64, device="cuda") for _ in range(64)]
        torch.cuda.synchronize()
        del poison
        labels = torch.full_like(good, big_K if name == "sorted pooling" else K)
        torch.cuda._sleep(20_000_000)  # some milliseconds of the current stream
        labels.copy_(good)
        nosort = snnspx.kernel_calls(NOSORT)
        assert torch.equal(op(labels), want), name
        if name == "sorted pooling":
            assert snnspx.kernel_calls(NOSORT) == nosort, "the sorted path should have run"
        if name == "no-sort pooling":  # SNNSPX_LEGACY_CUDA=1 takes the sorted path
            assert snnspx.kernel_calls(NOSORT) == nosort + (0 if legacy else 1), name


@pytest.mark.cuda
def test_cuda_label_check_catches_labels_broken_just_before(gen, monkeypatch):
    """The other way round: valid labels made invalid by in-flight work are caught."""
    monkeypatch.delenv(LEGACY, raising=False)
    K = 6
    good = torch.randint(-1, K, (2, 4, 5), generator=gen).cuda()
    y = rand_x(gen, (3, 2, 3, K), torch.float32, "cuda")
    labels = good.clone()
    torch.cuda._sleep(20_000_000)
    labels[1, 2, 3] = K
    with pytest.raises(ValueError, match=f"labels must be < num_superpixels = {K}"):
        F.suppix_unpool(y, labels, backend="cuda")


@pytest.mark.cuda
def test_cuda_nosort_label_checks_and_empty_shapes(gen, monkeypatch):
    """The range check (read back after the kernels), unchecked labels >= K ignored, and the
    empty shapes (sorted path); SNNSPX_LEGACY_CUDA=1, and only "1", selects the sorted path."""
    _kernels(monkeypatch)
    x = rand_x(gen, (2, 2, 3, 4, 5), torch.float64, "cuda")
    labels = torch.randint(-1, 9, (2, 4, 5), generator=gen).cuda()
    masked = torch.where(labels >= 5, -1, labels)
    bad = labels.clone()
    bad[1, 2, 3] = 8
    for mode in MODES:
        with pytest.raises(ValueError, match="labels must be < num_superpixels = 5.*got a label 8"):
            F.suppix_pool(x, bad, 5, mode, backend="cuda")
        got = F.suppix_pool(x, labels, 5, mode, check_labels=False, backend="cuda")
        assert torch.equal(got, F.suppix_pool(x, masked, 5, mode, backend="cuda"))
        _, n = F.suppix_pool(x, masked, 5, mode, return_counts=True, backend="cuda")
        want = torch.stack([torch.bincount(m[m >= 0], minlength=5) for m in masked.reshape(2, -1).cpu()])
        assert torch.equal(n.cpu(), want)
    with pytest.raises(ValueError, match="labels must be < num_superpixels = 0"):
        F.suppix_pool(x, labels.clamp(min=0), 0, backend="cuda")
    for shape in [(0, 2, 3, 4, 4), (2, 2, 0, 4, 4), (2, 2, 3, 0, 4)]:
        z = torch.zeros(shape, device="cuda")
        lab = torch.zeros(shape[1], shape[3], shape[4], dtype=torch.int64, device="cuda")
        for mode in MODES:
            y = F.suppix_pool(z, lab, 3, mode, backend="cuda")
            assert y.shape == (*shape[:3], 3) and torch.all(y == 0)
    for value, runs in (("0", 1), ("1", 0)):  # only exactly "1" selects the legacy kernels
        monkeypatch.setenv(LEGACY, value)
        before = snnspx.kernel_calls(NOSORT)
        F.suppix_pool(x, masked, 5, "avg", backend="cuda")
        assert snnspx.kernel_calls(NOSORT) == before + runs, value


@pytest.mark.cuda
@pytest.mark.parametrize("mode", ALL_MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16],
                         ids=["f32", "f64", "f16", "bf16"])
@pytest.mark.parametrize("form", LABEL_FORMS)
@pytest.mark.parametrize("label_dtype", [torch.int32, torch.int64], ids=["i32", "i64"])
def test_cuda_tiled_gather_is_the_one_pixel_gather(mode, dtype, form, label_dtype, gen, monkeypatch):
    """The tiled gather (P % 4 == 0) writes the bits of the one-pixel gather (legacy) for the
    pooling backward of every mode and for unpooling, and matches the CPU kernel. P = 1200:
    a full tile of 1024 pixels and a partial one; C = 11: a full and a partial chunk of 8
    channels; labels with ignored pixels and empty superpixels."""
    _kernels(monkeypatch)
    T, B, C, H, W, K = 2, 3, 11, 20, 60, 13
    P = H * W
    shape = (T, B, C, P)
    x = spikes(gen, shape, dtype, "cuda") if mode == "avg_spike" else rand_x(gen, shape, dtype, "cuda")
    lab = _op_labels(rand_labels(gen, form, T, B, H, W, K - 1, "cuda", dtype=label_dtype), form, T, B, P)
    ops = torch.ops.snnspx
    _, aux = ops.suppix_pool(x, lab, K, mode, True)
    g = rand_x(gen, (T, B, C, K), dtype, "cuda")
    before = snnspx.kernel_calls(TILED)
    gx, u = ops.suppix_pool_backward(g, lab, aux, mode), ops.suppix_unpool(g, lab, True)
    assert snnspx.kernel_calls(TILED) == before + 2, "the tiled gather must have run"
    monkeypatch.setenv(LEGACY, "1")
    gx1, u1 = ops.suppix_pool_backward(g, lab, aux, mode), ops.suppix_unpool(g, lab, True)
    assert snnspx.kernel_calls(TILED) == before + 2, "legacy: the one-pixel gather"
    assert torch.equal(gx, gx1) and torch.equal(u, u1)
    assert torch.equal(u.cpu(), ops.suppix_unpool(g.cpu(), lab.cpu(), True))
    torch.testing.assert_close(gx.cpu(), ops.suppix_pool_backward(g.cpu(), lab.cpu(), aux.cpu(), mode),
                               rtol=0, atol=0)


@pytest.mark.cuda
def test_cuda_tiled_gather_does_not_apply(gen, monkeypatch):
    """P % 4 != 0 or labels not aligned to 4 elements: the one-pixel gather, same values."""
    _kernels(monkeypatch)
    ops = torch.ops.snnspx
    T, B, C, K = 2, 2, 3, 6
    g = rand_x(gen, (T, B, C, K), torch.float32, "cuda")
    odd = torch.randint(-1, K, (1, B, 35), generator=gen).cuda()  # P = 35
    shifted = torch.randint(-1, K, (B * 36 + 1,), generator=gen).cuda()[1:].view(1, B, 36)
    for lab in (odd, shifted):
        before = snnspx.kernel_calls(TILED)
        u = ops.suppix_unpool(g, lab, True)
        assert snnspx.kernel_calls(TILED) == before
        assert torch.equal(u.cpu(), ops.suppix_unpool(g.cpu(), lab.cpu(), True))


# --------------------------------------------------------------------------- CUDA max pooling by keys
# Max of float32, float16 and bfloat16 runs the key kernel ("cuda.suppix_pool_max_key", also
# counted as "cuda.suppix_pool_nosort"): the max of 64-bit keys (ordered value, then the
# inverted pixel index), y read back from x at the argmax. "cuda.suppix_pool_max_key_quad"
# counts its vector-load variant (P % 4 == 0, x and labels aligned to 4 elements).
MAXKEY = "cuda.suppix_pool_max_key"
MAXKEY_QUAD = "cuda.suppix_pool_max_key_quad"
KEY_DTYPES = [
    pytest.param(torch.float32, id="f32"),
    pytest.param(torch.float16, id="f16"),
    pytest.param(torch.bfloat16, id="bf16"),
]
_INT_OF = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}
# NaNs of each dtype by their bits: quiet, with payloads, negative, and a signalling one.
_NAN_BITS = {
    torch.float32: [0x7FC00000, 0xFFC00123, 0x7FC0BEEF, 0x7F800001, 0xFFFFFFFF],
    torch.float16: [0x7E00, 0xFE21, 0x7E3F, 0x7C01, 0xFFFF],
    torch.bfloat16: [0x7FC0, 0xFFC5, 0x7FE1, 0x7F81, 0xFFFF],
}


def _bits(t):
    """The raw bits of a float tensor as integers: compares -0.0 with +0.0 and NaN payloads."""
    return t.contiguous().view(_INT_OF[t.dtype])


def _from_bits(bits, dtype):
    width = 32 if dtype == torch.float32 else 16
    signed = [b - (1 << width) if b >= 1 << (width - 1) else b for b in bits]
    return torch.tensor(signed, dtype=_INT_OF[dtype]).view(dtype)


def _max_oracle(x, lab, K):
    """Max pooling of x [T, B, C, P] over labels [L, Bl, P] without keys (scatter_reduce on the
    CPU): NaN above everything, equal values (and -0.0 == +0.0, and two NaNs) to the lowest
    pixel; y is x at the argmax (its exact bits), 0 with argmax -1 where a superpixel is empty."""
    x = x.cpu()
    T, B, C, P = x.shape
    lab = lab.cpu().long().reshape(lab.shape[0], lab.shape[1], 1, P).expand(T, B, C, P)
    idx = torch.where((lab >= 0) & (lab < K), lab, K)  # bin K: pixels pooled nowhere, dropped
    xf = x.float()
    isnan = xf.isnan()
    nan_any = torch.zeros(T, B, C, K + 1).scatter_reduce(-1, idx, isnan.float(), "amax", include_self=True) > 0
    top = torch.full((T, B, C, K + 1), -math.inf).scatter_reduce(
        -1, idx, torch.where(isnan, -math.inf, xf), "amax", include_self=True
    )
    cand = torch.where(nan_any.gather(-1, idx), isnan, ~isnan & (xf == top.gather(-1, idx)))
    pix = torch.arange(P).expand(T, B, C, P)
    arg = torch.full((T, B, C, K + 1), P).scatter_reduce(-1, idx, torch.where(cand, pix, P), "amin", include_self=True)
    arg = arg[..., :K]
    arg = torch.where(arg == P, -1, arg)
    # gathered as integers: the CPU gather of float16/bfloat16 rewrites NaN payloads
    xb = _bits(x)
    y = torch.where(arg >= 0, xb.gather(-1, arg.clamp(min=0)), torch.zeros((), dtype=xb.dtype)).view(x.dtype)
    return y, arg.int()


def _ref_argmax(x, labels, K):
    """The reference's argmax [T, B, C, K] (-1 where empty), read off its max backward: with
    dL/dy[k] = k + 1, only the argmax pixel of superpixel k gets k + 1."""
    T, B, C = x.shape[:3]
    w = (torch.arange(K, dtype=torch.float32) + 1).expand(T, B, C, K)
    _, g = ref_pool_and_grad(x.float(), labels, K, "max", w)
    hit = g.reshape(T, B, C, -1, 1) == w.reshape(T, B, C, 1, K)  # [T, B, C, P, K]
    assert torch.all(hit.sum(-2) <= 1), "one argmax pixel per superpixel"
    return torch.where(hit.any(-2), hit.int().argmax(-2), -1).int()


def _special_max_inputs(gen, dtype, form, label_dtype, T, B, C, H, W, K):
    """x [T, B, C, H, W] of few values (many ties) and labels of `form` in [-1, K - 2] (K - 1
    empty), with superpixel 0 all -inf, 1 all NaN (assorted signs and payloads), 2 all +-0.0
    (random signs), 3 all negative, and stray NaNs elsewhere. Each of 0..3 has a pixel
    near each end of the image."""
    P = H * W
    labels = rand_labels(gen, form, T, B, H, W, K, dtype=label_dtype)
    flat = labels.view(*labels.shape[:-2], P)
    for s in range(4):
        flat[..., s] = s
        flat[..., P - 1 - s] = s
    x = torch.randint(-3, 4, (T, B, C, P), generator=gen).to(dtype)
    x.view(-1)[:: 23] = math.nan
    L, Bl = {"shared": (1, 1), "per_image": (1, B), "per_step": (T, B)}[form]
    lab = flat.reshape(L, Bl, 1, P).expand(T, B, C, P)
    nans = _from_bits(_NAN_BITS[dtype], dtype)
    nan_pick = torch.randint(0, len(nans), (T, B, C, P), generator=gen)
    zeros = torch.where(torch.rand((T, B, C, P), generator=gen) < 0.5, -0.0, 0.0).to(dtype)
    x = torch.where(lab == 0, torch.tensor(-math.inf, dtype=dtype), x)
    x = torch.where(lab == 1, nans[nan_pick], x)
    x = torch.where(lab == 2, zeros, x)
    x = torch.where(lab == 3, -(x.float().nan_to_num(0.0).abs() + 1).to(dtype), x)
    return x.reshape(T, B, C, H, W), labels


def _offset_copy(t):
    """t's values in a tensor that starts one element into its storage: contiguous, but not
    aligned for vector loads."""
    store = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)[1:]
    return store.copy_(t.reshape(-1)).view(t.shape)


def _layout_case(x, labels, layout):
    """x and labels copied to the GPU as a layout case asks: "unaligned_x" / "unaligned_labels"
    one element off vector alignment, "noncontig_x" a non-contiguous x (same values)."""
    xd, labd = x.cuda(), labels.cuda()
    if layout == "unaligned_x":
        xd = _offset_copy(xd)
    elif layout == "unaligned_labels":
        labd = _offset_copy(labd)
    elif layout == "noncontig_x":
        xd = x.transpose(0, 2).contiguous().cuda().transpose(0, 2)
        assert not xd.is_contiguous()
    return xd, labd


def _check_max(y, aux, x4, lab3, K, msg):
    """y, aux of a max pooling against _max_oracle: the argmax exactly, y bit for bit."""
    want_y, want_arg = _max_oracle(x4, lab3, K)
    assert torch.equal(aux.cpu(), want_arg), f"argmax ({msg})"
    assert torch.equal(_bits(y.cpu()), _bits(want_y)), f"y bits ({msg})"


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", KEY_DTYPES)
@pytest.mark.parametrize("label_dtype", [torch.int32, torch.int64], ids=["i32", "i64"])
@pytest.mark.parametrize("form", LABEL_FORMS)
@pytest.mark.parametrize("layout", ["quad", "odd_p", "unaligned_x", "unaligned_labels", "noncontig_x"])
def test_cuda_max_key_matches_reference(dtype, label_dtype, form, layout, gen, monkeypatch):
    """The key kernel against the reference, elementwise: y (NaN where the reference has NaN,
    -0.0 where it has -0.0) and the argmax (read off the reference's backward), with ties,
    +-0.0 ties, several NaNs in a superpixel (the lowest wins, y keeps that NaN's bits),
    a superpixel of -inf only, one of negative values only, an empty one and ignored pixels;
    the max backward against the reference. Layouts: the vector-load variant (P % 4 == 0,
    also for a non-contiguous x, which the op copies) and the scalar one (P % 4 != 0, x or
    labels one element off alignment)."""
    _kernels(monkeypatch)
    T, B, C, K = 2, 2, 3, 9
    H, W = (5, 7) if layout == "odd_p" else (8, 12)
    P = H * W
    x, labels = _special_max_inputs(gen, dtype, form, label_dtype, T, B, C, H, W, K)
    xd, labd = _layout_case(x, labels, layout)
    xo, labo = xd.reshape(T, B, C, P), _op_labels(labd, form, T, B, P)
    assert torch.equal(_bits(xo.cpu()), _bits(x.reshape(T, B, C, P)))
    assert torch.equal(labo.cpu(), _op_labels(labels, form, T, B, P))
    before = {n: snnspx.kernel_calls(n) for n in (MAXKEY, MAXKEY_QUAD, NOSORT)}
    y, aux = torch.ops.snnspx.suppix_pool(xo, labo, K, "max", True)
    ran = {n: snnspx.kernel_calls(n) - before[n] for n in before}
    quad = layout in ("quad", "noncontig_x")
    assert ran == {MAXKEY: 1, MAXKEY_QUAD: int(quad), NOSORT: 1}, ran
    # the reference: values (NaN and the sign of zeros included) and the argmax
    ry = R.suppix_pool(x, labels, K, "max")
    torch.testing.assert_close(y.cpu(), ry.reshape(T, B, C, K), rtol=0, atol=0, equal_nan=True)
    num = ~ry.isnan()
    assert torch.equal(y.cpu().signbit()[num.reshape(T, B, C, K)], ry.signbit()[num]), "the sign of a zero"
    assert torch.equal(aux.cpu(), _ref_argmax(x, labels, K)), "argmax"
    assert torch.all(aux[..., K - 1] == -1) and torch.all(y[..., K - 1] == 0), "an empty superpixel"
    assert torch.all(y[..., 0] == -math.inf) and torch.all(y[..., 1].isnan()), "-inf only, NaN only"
    assert torch.all(y[..., 3] < 0), "negative values only"
    # y has the exact bits of x at the argmax (NaN payloads, -0.0), as the oracle says
    _check_max(y, aux, x.reshape(T, B, C, P), _op_labels(labels, form, T, B, P), K, layout)
    # the backward: dL/dy[k] to the argmax pixel only, as the reference's
    w = rand_x(gen, (T, B, C, K), dtype)
    gx = torch.ops.snnspx.suppix_pool_backward(w.cuda(), labo, aux, "max")
    _, rgx = ref_pool_and_grad(x.float(), labels, K, "max", w.float())
    assert torch.equal(gx.cpu().float(), rgx.reshape(T, B, C, P)), "max backward"
    # and through autograd
    yf, gxf = pool_and_grad(xd, labd, K, "max", "cuda", w.cuda())
    assert torch.equal(_bits(yf.reshape(T, B, C, K)), _bits(y))
    assert torch.equal(gxf.reshape(T, B, C, P), gx)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", KEY_DTYPES)
@pytest.mark.parametrize("label_dtype", [torch.int32, torch.int64], ids=["i32", "i64"])
def test_cuda_max_key_by_hand(dtype, label_dtype, monkeypatch):
    """Worked cases, on both variants (P = 12 and, with an ignored 13th pixel, P = 13):
    +-0.0 ties keep the lowest pixel's zero and its sign; NaNs beat numbers, the lowest NaN
    wins with its bits; -inf only; negative values only; an empty superpixel; labels >= K
    ignored when unchecked; every label negative; K = 1."""
    _kernels(monkeypatch)
    nan_a, nan_b, nan_c = _from_bits(_NAN_BITS[dtype][1:4], dtype)  # distinct payloads and signs
    inf = math.inf
    # k:    0     0    0     0    1    1    1    1    2     2     3     3     (NaNs set below)
    row0 = [-0.0, 0.0, -0.0, 0.0, 0.0, 0.0, 5.0, 0.0, -inf, -inf, -3.0, -2.0]
    row1 = [0.0, -0.0, 0.0, -0.0, 7.0, 0.0, 7.0, 0.0, -inf, -1.0, -2.0, -2.0]
    lab12 = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 3, 3]
    for P, quad in ((12, True), (13, False)):
        x = torch.tensor([row0, row1], dtype=torch.float32).to(dtype)
        x[0, 4], x[0, 5], x[0, 7] = nan_a, nan_b, nan_c  # copies: the bits stay
        x[1, 5], x[1, 7] = nan_b, nan_a
        if P == 13:
            x = torch.cat([x, torch.full((2, 1), 99.0, dtype=dtype)], 1)
        x4 = x.reshape(1, 1, 2, P)
        lab = torch.tensor(lab12 + [-1] * (P - 12), dtype=label_dtype).reshape(1, 1, P)
        before = snnspx.kernel_calls(MAXKEY_QUAD)
        y, aux = torch.ops.snnspx.suppix_pool(x4.cuda(), lab.cuda(), 5, "max", True)
        assert snnspx.kernel_calls(MAXKEY_QUAD) - before == int(quad)
        assert aux.cpu().reshape(2, 5).tolist() == [[0, 4, 8, 11, -1], [0, 5, 9, 10, -1]]
        bits = _bits(y.cpu().reshape(2, 5)).tolist()
        xb = _bits(x).tolist()
        assert bits[0] == [xb[0][0], xb[0][4], xb[0][8], xb[0][11], 0], "-0.0, nan_a, -inf, -2, empty"
        assert bits[1] == [xb[1][0], xb[1][5], xb[1][9], xb[1][10], 0], "+0.0, nan_b, -1, -2, empty"
        assert xb[0][4] != xb[0][5] and xb[1][5] != xb[1][7], "the NaNs differ in their bits"
        assert y[0, 0, 0, 0].signbit() and not y[0, 0, 1, 0].signbit()
        # unchecked labels >= K are ignored: label 7 on the NaNs of superpixel 1
        lab_big = lab.clone()
        lab_big[..., [4, 5, 7]] = 7
        if label_dtype == torch.int64:
            lab_big[..., 7] = 2**32 + 1  # never cast to int32 before the range test (it would read 1)
        y2, aux2 = torch.ops.snnspx.suppix_pool(x4.cuda(), lab_big.cuda(), 5, "max", False)
        assert aux2.cpu().reshape(2, 5)[:, 1].tolist() == [6, 6] and y2.cpu().reshape(2, 5)[:, 1].tolist() == [5.0, 7.0]
        # every label negative: y = 0 (not NaN), argmax -1
        y3, aux3 = torch.ops.snnspx.suppix_pool(x4.cuda(), torch.full_like(lab, -1).cuda(), 5, "max", True)
        assert torch.all(y3 == 0) and not y3.isnan().any() and torch.all(aux3 == -1)
        # K = 1 over all pixels: the first NaN
        y4, aux4 = torch.ops.snnspx.suppix_pool(x4.cuda(), torch.zeros_like(lab).cuda(), 1, "max", True)
        assert aux4.cpu().flatten().tolist() == [4, 5]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", KEY_DTYPES)
@pytest.mark.parametrize(
    "case", ["channel_groups_8", "channel_groups_4", "tiles", "tiles_odd_p", "k1", "runs", "ascending", "k6144"]
)
def test_cuda_max_key_large_inputs(dtype, case, gen, monkeypatch):
    """Shapes the reference is too slow for, against the keyless oracle (argmax exactly, y bit
    for bit), three runs bitwise equal, and the backward: 8 and 4 channels per block (T * B * C
    of 32792 and 16408) with a partial last group of 3, several tiles of 1024 pixels with a
    partial last one (and P % 4 != 0), K = 1 (every lane of a warp in one run), long runs of
    one label across lanes and warps, ascending values in one superpixel (the most
    compare-and-swap retries), and K = 6144 (48 KiB of keys)."""
    _kernels(monkeypatch)
    T, B, C, H, W, K = {
        "channel_groups_8": (2, 4, 4099, 8, 12, 13),
        "channel_groups_4": (2, 4, 2051, 8, 12, 13),
        "tiles": (2, 2, 3, 64, 70, 50),
        "tiles_odd_p": (2, 2, 3, 63, 71, 50),
        "k1": (2, 2, 3, 64, 70, 1),
        "runs": (2, 2, 5, 64, 70, 40),
        "ascending": (1, 2, 3, 64, 64, 3),
        "k6144": (1, 2, 2, 128, 128, 6144),
    }[case]
    P = H * W
    x, labels = _special_max_inputs(gen, dtype, "per_image", torch.int64, T, B, C, H, W, max(K, 5))
    x = x.reshape(T, B, C, P)
    lab = labels.reshape(1, B, P)
    if case == "k1":
        lab = torch.where(lab >= 0, 0, lab)
    elif case == "runs":
        lab[0, 0, 100:3100] = 7  # one superpixel over many lanes, warps and tiles
        lab[0, 1] = torch.arange(P) // 37 % K  # runs of 37 pixels, not aligned to quads
    elif case == "ascending":
        x = torch.arange(T * B * C * P, dtype=torch.float32).reshape(T, B, C, P).to(dtype)
        lab = torch.randint(0, K, (1, B, P), generator=gen)
        lab[0, 0] = 0
    elif case == "k6144":
        lab = torch.randint(-1, K, (1, B, P), generator=gen)
    xd, labd = x.cuda(), lab.cuda()
    before = snnspx.kernel_calls(MAXKEY)
    runs = [torch.ops.snnspx.suppix_pool(xd, labd, K, "max", True) for _ in range(3)]
    assert snnspx.kernel_calls(MAXKEY) == before + 3
    for y, aux in runs[1:]:
        assert torch.equal(_bits(y), _bits(runs[0][0])) and torch.equal(aux, runs[0][1]), "run to run"
    y, aux = runs[0]
    _check_max(y, aux, x, lab, K, case)
    g = rand_x(gen, (T, B, C, K), dtype)
    gx = torch.ops.snnspx.suppix_pool_backward(g.cuda(), labd, aux, "max")
    idx = torch.where(aux.cpu() >= 0, aux.cpu(), P).long()
    want = torch.zeros(T, B, C, P + 1, dtype=dtype).scatter_(-1, idx, g)[..., :P]
    assert torch.equal(gx.cpu(), want), "the gradient goes to the argmax pixel only"


@pytest.mark.cuda
def test_cuda_max_key_kernel_choice(gen, monkeypatch):
    """The key kernel takes max of float32, float16 and bfloat16 with K <= 6144; float64 max
    keeps the warp-row no-sort kernel, K = 6145 the sorted path, and SNNSPX_LEGACY_CUDA=1 the
    sorted path, with the same values and argmax."""
    _kernels(monkeypatch)
    ops = torch.ops.snnspx
    T, B, C, P = 2, 2, 3, 1024

    def run(dtype, mode, K):
        x = rand_x(gen, (T, B, C, P), dtype).cuda()
        lab = torch.randint(-1, K, (1, B, P), generator=gen).cuda()
        before = {n: snnspx.kernel_calls(n) for n in (MAXKEY, NOSORT)}
        y, aux = ops.suppix_pool(x, lab, K, mode, True)
        return x, lab, y, aux, tuple(snnspx.kernel_calls(n) - before[n] for n in (MAXKEY, NOSORT))

    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        assert run(dtype, "max", 6144)[-1] == (1, 1), dtype
    x, lab, y, aux, ran = run(torch.float32, "max", 6145)
    assert ran == (0, 0), "K > 6144: the sorted path"
    _check_max(y, aux, x, lab, 6145, "sorted")
    assert run(torch.float64, "max", 50)[-1] == (0, 1)
    for mode in ("sum", "avg", "avg_spike"):
        assert run(torch.float32, mode, 50)[-1] == (0, 1), mode
    x, lab, y, aux, ran = run(torch.float16, "max", 50)
    assert ran == (1, 1)
    monkeypatch.setenv(LEGACY, "1")
    before = snnspx.kernel_calls(MAXKEY)
    y1, aux1 = ops.suppix_pool(x, lab, 50, "max", True)
    assert snnspx.kernel_calls(MAXKEY) == before, "SNNSPX_LEGACY_CUDA=1: not the key kernel"
    assert torch.equal(aux1, aux)
    torch.testing.assert_close(y1, y, rtol=0, atol=0)


# --------------------------------------------------------------------------- CUDA no-sort sum pooling, 4 pixels a lane
# Sum, avg and avg_spike run the 4-pixel no-sort kernel: a lane adds the runs of one
# superpixel among 4 consecutive pixels in registers, and the warp folds the lanes' runs
# round by round. "cuda.suppix_pool_nosort_quad" counts its vector-load variant (P % 4 == 0,
# x and labels aligned to 4 elements), beside "cuda.suppix_pool_nosort"; the scalar-load
# variant adds in the same order, so it gives the same bits. Float sums are checked against
# a float64 oracle within what rounding can explain, aux (counts, m) exactly.
NOSORT_QUAD = "cuda.suppix_pool_nosort_quad"
QUAD_MODES = ["sum", "avg", "avg_spike"]
SUM_DTYPES = [
    pytest.param(torch.float32, id="f32"),
    pytest.param(torch.float64, id="f64"),
    pytest.param(torch.float16, id="f16"),
    pytest.param(torch.bfloat16, id="bf16"),
]
QUAD_LAYOUTS = ["quad", "odd_p", "unaligned_x", "unaligned_labels", "noncontig_x"]


def _sum_oracle(x4, lab3, K):
    """Sum pooling of x [T, B, C, P] over labels [L, Bl, P] in float64 on the CPU (scatter_add;
    labels outside [0, K) pooled nowhere). Returns, [T, B, C, K] each: the sums, the sums of
    the finite |x|, the pixels n and the non-zero inputs m (NaN counts), and the counts
    [L, Bl, K] (int32)."""
    x = x4.detach().cpu().double()
    T, B, C, P = x.shape
    L, Bl = lab3.shape[0], lab3.shape[1]
    lab = lab3.cpu().long()
    idx3 = torch.where((lab >= 0) & (lab < K), lab, K)  # bin K: pixels pooled nowhere, dropped
    idx = idx3.reshape(L, Bl, 1, P).expand(T, B, C, P)

    def pool(v):
        return torch.zeros(T, B, C, K + 1, dtype=torch.float64).scatter_add_(-1, idx, v)[..., :K]

    s = pool(x)
    a = pool(torch.where(x.isfinite(), x.abs(), 0.0))
    n = pool(torch.ones_like(x))
    m = pool((x != 0).double())
    counts = torch.zeros(L, Bl, K + 1, dtype=torch.int64).scatter_add_(-1, idx3, torch.ones_like(idx3))[..., :K]
    return s, a, n, m, counts.int()


def _check_sums(y, aux, x4, lab3, K, mode, msg):
    """y, aux of a sum / avg / avg_spike pooling against _sum_oracle. y: NaN exactly where the
    oracle has NaN (a NaN, or both infinities, in the superpixel), the oracle's +-inf exactly,
    0 where a superpixel is empty, and otherwise within what rounding explains: the float
    (float64 for float64 inputs) sum in any order, the oracle's own float64 sum (the factor 2),
    the avg division and the rounding to y's dtype. aux: the counts [L, Bl, K] (sum, avg) or m
    [T, B, C, K] (avg_spike), exactly."""
    s, a, n, m, counts = _sum_oracle(x4, lab3, K)
    eps_acc = torch.finfo(torch.float64 if y.dtype == torch.float64 else torch.float32).eps
    want = s if mode == "sum" else torch.where(n > 0, s / n.clamp(min=1), 0.0)
    div = 1.0 if mode == "sum" else n.clamp(min=1)
    finite_want = torch.where(want.isfinite(), want.abs(), 0.0)
    bound = 2 * (n + 2) * eps_acc * a / div + 2 * torch.finfo(y.dtype).eps * finite_want + torch.finfo(y.dtype).tiny
    got = y.detach().cpu().double()
    assert got.shape == want.shape, msg
    assert torch.equal(got.isnan(), want.isnan()), f"NaN exactly where the oracle has NaN ({msg})"
    inf = want.isinf()
    assert torch.equal(got.isinf(), inf) and torch.equal(got[inf], want[inf]), f"+-inf as the oracle ({msg})"
    fin = want.isfinite()
    over = ((got - want).abs() - bound)[fin]
    assert over.numel() == 0 or over.max() <= 0, f"off by more than rounding explains: {over.max().item():.3g} ({msg})"
    assert torch.all(got[n == 0] == 0), f"an empty superpixel pools to 0 ({msg})"
    want_aux = m.int() if mode == "avg_spike" else counts
    assert aux.dtype == torch.int32 and torch.equal(aux.cpu(), want_aux), f"aux exactly ({msg})"


def _quad_calls(fn):
    """fn()'s result and how many times it ran (nosort, nosort_quad, max_key, max_key_quad)."""
    names = (NOSORT, NOSORT_QUAD, MAXKEY, MAXKEY_QUAD)
    before = [snnspx.kernel_calls(n) for n in names]
    out = fn()
    return out, tuple(snnspx.kernel_calls(n) - b for n, b in zip(names, before))


@pytest.mark.cuda
@pytest.mark.parametrize("mode", QUAD_MODES)
@pytest.mark.parametrize("dtype", SUM_DTYPES)
@pytest.mark.parametrize("label_dtype", [torch.int32, torch.int64], ids=["i32", "i64"])
@pytest.mark.parametrize("form", LABEL_FORMS)
@pytest.mark.parametrize("layout", QUAD_LAYOUTS)
def test_cuda_nosort_quad_matches_reference(mode, dtype, label_dtype, form, layout, gen, monkeypatch):
    """The 4-pixel kernel against the reference and the float64 oracle, every label form, label
    dtype and float dtype, on both variants: the vector loads (P = 1440, also for a
    non-contiguous x, which the op copies) and the scalar ones (P = 1443, or x or the labels
    one element off alignment), which must give the vector variant's bits. P = 1440: 8 warps
    of at most 256 pixels (2 steps of 128), warps 0-4 whole, warp 5 partial, warps 6 and 7
    empty. The labels have ignored
    pixels, an empty superpixel (K - 1), a run of one superpixel over 500 pixels (across
    quads, lanes, steps and warps), a quad of 4 runs (0 1 0 1) and one with an ignored pixel
    inside a run (2 -1 2 5). Two runs give the same bits."""
    _kernels(monkeypatch)
    ops = torch.ops.snnspx
    T, B, C, K = 2, 2, 3, 11
    H, W = (37, 39) if layout == "odd_p" else (36, 40)
    P = H * W
    shape = (T, B, C, H, W)
    x = spikes(gen, shape, dtype) if mode == "avg_spike" else rand_x(gen, shape, dtype)
    labels = rand_labels(gen, form, T, B, H, W, K, dtype=label_dtype)  # [-1, K - 2]: K - 1 empty
    flat = labels.view(*labels.shape[:-2], P)
    flat[..., 200:700] = 3
    flat[..., 700:704] = torch.tensor([0, 1, 0, 1], dtype=label_dtype)
    flat[..., 704:708] = torch.tensor([2, -1, 2, 5], dtype=label_dtype)
    flat[..., 708:712] = -1
    x4, lab3 = x.reshape(T, B, C, P), _op_labels(labels, form, T, B, P)
    xo, labo = _layout_case(x4, lab3, layout)
    assert torch.equal(xo.cpu(), x4) and torch.equal(labo.cpu(), lab3)
    quad = layout in ("quad", "noncontig_x")
    (y, aux), ran = _quad_calls(lambda: ops.suppix_pool(xo, labo, K, mode, True))
    assert ran == (1, int(quad), 0, 0), ran
    assert y.dtype == dtype and y.shape == (T, B, C, K)
    _check_sums(y, aux, x4, lab3, K, mode, f"{layout}, {form}")
    assert torch.all(y[..., K - 1] == 0), "an empty superpixel pools to 0"
    # the reference, from the float64 values of x
    fmode, grad = _fwd_mode(mode)
    ry = R.suppix_pool(x.double(), labels, K, fmode, grad=grad).reshape(T, B, C, K)
    tol = {
        torch.float32: dict(rtol=1e-5, atol=1e-4),
        torch.float64: dict(rtol=1e-10, atol=1e-10),
    }.get(dtype, dict(rtol=1e-2, atol=1e-2))
    torch.testing.assert_close(y.cpu().double(), ry, **tol)
    # the same bits on a second run, and in the other load variant
    y2, aux2 = ops.suppix_pool(xo, labo, K, mode, True)
    assert torch.equal(_bits(y2), _bits(y)) and torch.equal(aux2, aux), "run to run"
    if layout != "odd_p" and layout != "quad":
        (y3, aux3), ran = _quad_calls(lambda: ops.suppix_pool(x4.cuda(), lab3.cuda(), K, mode, True))
        assert ran == (1, 1, 0, 0), ran
        assert torch.equal(_bits(y3), _bits(y)) and torch.equal(aux3, aux), "vector and scalar loads, same bits"


@pytest.mark.cuda
@pytest.mark.parametrize("mode", QUAD_MODES)
@pytest.mark.parametrize("dtype", SUM_DTYPES)
@pytest.mark.parametrize("label_dtype", [torch.int32, torch.int64], ids=["i32", "i64"])
@pytest.mark.parametrize("layout", ["quad", "odd_p", "unaligned_x"])
def test_cuda_nosort_quad_nan_inf_and_unchecked_labels(mode, dtype, label_dtype, layout, gen, monkeypatch):
    """NaN, +-inf, zeros and -0.0 among the values, labels >= K with the check off (ignored; an
    int64 one of 2^32 + 1 too, which would read 1 if cast to int32 first): superpixel 0 has a
    NaN (y NaN), 1 a +inf (y +inf), 2 a +inf and a -inf (y NaN), 3 a -inf (y -inf), the others
    finite values, zeros and -0.0 (y finite, within rounding); NaNs and infinities on ignored
    pixels change nothing. avg_spike's m counts a NaN as non-zero and a -0.0 as zero, exactly."""
    _kernels(monkeypatch)
    ops = torch.ops.snnspx
    T, B, C, K = 2, 3, 2, 13
    P = 1022 if layout == "odd_p" else 1024
    x = rand_x(gen, (T, B, C, P), dtype)
    r = torch.rand((T, B, C, P), generator=gen)
    x = torch.where(r < 0.3, torch.zeros((), dtype=dtype), x)
    x = torch.where((r >= 0.3) & (r < 0.4), torch.tensor(-0.0, dtype=dtype), x)
    lab = torch.randint(-1, K - 1, (1, B, P), generator=gen).to(label_dtype)
    lab[..., 10::50] = K + 3  # unchecked labels >= K
    specials = {40: (0, math.nan), 41: (1, math.inf), 42: (2, math.inf), 900: (2, -math.inf), 43: (3, -math.inf),
                44: (-1, math.nan), 45: (K + 3, math.nan), 46: (K, -math.inf), 47: (-5, math.inf)}
    for p, (k, v) in specials.items():
        lab[..., p] = k
        x[..., p] = v
    if label_dtype == torch.int64:
        lab[..., 48] = 2**32 + 1
        x[..., 48] = math.nan
    for k in range(4):  # the special values are the only ones of their kind in superpixels 0..3
        assert (lab == k).sum() > 1
    xo = x.cuda()
    if layout == "unaligned_x":
        xo = _offset_copy(xo)
    (y, aux), ran = _quad_calls(lambda: ops.suppix_pool(xo, lab.cuda(), K, mode, False))
    assert ran == (1, int(layout == "quad"), 0, 0), ran
    _check_sums(y, aux, x, lab, K, mode, layout)
    yc = y.cpu().double()
    assert yc[..., 0].isnan().all() and yc[..., 2].isnan().all(), "a NaN, or both infinities: NaN"
    assert (yc[..., 1] == math.inf).all() and (yc[..., 3] == -math.inf).all(), "one infinity"
    assert yc[..., 4:].isfinite().all(), "ignored pixels and labels >= K contribute nothing"
    y2, aux2 = ops.suppix_pool(xo, lab.cuda(), K, mode, False)
    assert torch.equal(_bits(y2), _bits(y)) and torch.equal(aux2, aux), "run to run (NaN bits included)"


@pytest.mark.cuda
@pytest.mark.parametrize("mode", QUAD_MODES)
@pytest.mark.parametrize("P", [1, 3, 4, 5, 8, 127, 128, 132, 257, 512, 1020, 1025, 4100])
def test_cuda_nosort_quad_plane_sizes_and_edge_cases(mode, P, gen, monkeypatch):
    """Plane sizes from one pixel (one lane, a partial quad) through one warp to the 8-warp cap
    (P = 4100: 640 pixels a warp, 5 steps of 128 for warps 0-5, 3 for warp 6 with a last
    step of 4 pixels, none for warp 7), each with
    random labels (per step and image); every pixel ignored (y = 0, aux = 0, no NaN); K = 1
    (one run over the plane: every lane of a warp in one group, the longest leader loop,
    checked against the oracle); and, where the rows fit, one pixel per superpixel: each pixel
    is added once to a +0.0 row, so y = x (avg: x / 1), value for value (a -0.0 of avg_spike's
    inputs pools to +0.0). The vector-load variant runs exactly where P % 4 == 0."""
    _kernels(monkeypatch)
    ops = torch.ops.snnspx
    T, B, C = 2, 2, 3
    quad = int(P % 4 == 0)
    x = spikes(gen, (T, B, C, P)) * rand_x(gen, (T, B, C, P)) if mode == "avg_spike" else rand_x(gen, (T, B, C, P))
    xd = x.cuda()
    K = 7
    lab = torch.randint(-1, K, (T, B, P), generator=gen)
    (y, aux), ran = _quad_calls(lambda: ops.suppix_pool(xd, lab.cuda(), K, mode, True))
    assert ran == (1, quad, 0, 0), ran
    _check_sums(y, aux, x, lab, K, mode, f"random labels, P = {P}")
    # every pixel ignored
    neg = torch.full((1, B, P), -1, dtype=torch.int64)
    (y, aux), ran = _quad_calls(lambda: ops.suppix_pool(xd, neg.cuda(), 3, mode, True))
    assert ran == (1, quad, 0, 0), ran
    assert torch.all(y == 0) and not y.isnan().any() and torch.all(aux == 0)
    # K = 1: one run over the whole plane
    zeros = torch.zeros((1, 1, P), dtype=torch.int32)
    (y, aux), ran = _quad_calls(lambda: ops.suppix_pool(xd, zeros.cuda(), 1, mode, True))
    assert ran == (1, quad, 0, 0), ran
    _check_sums(y, aux, x, zeros, 1, mode, f"K = 1, P = {P}")
    # one pixel per superpixel, where the rows fit 48 KiB (8 bytes a superpixel and warp at most)
    if P <= 512:
        ident = torch.arange(P, dtype=torch.int64).reshape(1, 1, P)
        (y, aux), ran = _quad_calls(lambda: ops.suppix_pool(xd, ident.cuda(), P, mode, True))
        assert ran == (1, quad, 0, 0), ran
        assert torch.equal(y.cpu(), x), "one pixel per superpixel copies x"
        _check_sums(y, aux, x, ident, P, mode, f"identity, P = {P}")


@pytest.mark.cuda
@pytest.mark.parametrize("mode", QUAD_MODES)
@pytest.mark.parametrize("dtype", SUM_DTYPES)
@pytest.mark.parametrize("case", ["cells", "runs", "random"])
def test_cuda_nosort_quad_large_inputs(mode, dtype, case, gen, monkeypatch):
    """Shapes the reference is too slow for, against the float64 oracle: 64 x 64 planes (8 warps
    of 4 steps) of the benchmark's 4 x 4 cells with K = 256 (one round a step), runs of 37
    pixels not aligned to quads plus one superpixel over 3000 pixels, and uniform random labels
    (up to 4 runs a lane). Three runs give the same bits, and so does the scalar-load variant
    (x one element off alignment); the backward takes the new aux."""
    _kernels(monkeypatch)
    ops = torch.ops.snnspx
    T, B, C, H, W = 2, 3, 8, 64, 64
    P = H * W
    K = 256 if case == "cells" else 40
    if case == "cells":
        cell = S.grid_superpixels(H, W, 4).reshape(P)
        lab = torch.stack([torch.randperm(K, generator=gen)[cell] for _ in range(B)]).reshape(1, B, P)
    elif case == "runs":
        lab = (torch.arange(P) // 37 % (K + 2) - 1).expand(T, B, P).clone()  # -1 and K included
        lab[:, 0, 100:3100] = 7
    else:
        lab = torch.randint(-1, K, (T, B, P), generator=gen)
    x = spikes(gen, (T, B, C, P), dtype) if mode == "avg_spike" else rand_x(gen, (T, B, C, P), dtype)
    xd, labd = x.cuda(), lab.cuda()
    runs = []
    for _ in range(3):
        out, ran = _quad_calls(lambda: ops.suppix_pool(xd, labd, K, mode, False))
        assert ran == (1, 1, 0, 0), ran
        runs.append(out)
    y, aux = runs[0]
    for y2, aux2 in runs[1:]:
        assert torch.equal(_bits(y2), _bits(y)) and torch.equal(aux2, aux), "run to run"
    _check_sums(y, aux, x, lab, K, mode, case)
    (y3, aux3), ran = _quad_calls(lambda: ops.suppix_pool(_offset_copy(xd), labd, K, mode, False))
    assert ran == (1, 0, 0, 0), ran
    assert torch.equal(_bits(y3), _bits(y)) and torch.equal(aux3, aux), "vector and scalar loads, same bits"
    g = rand_x(gen, (T, B, C, K), dtype)
    gx = ops.suppix_pool_backward(g.cuda(), labd, aux, mode)
    torch.testing.assert_close(gx.cpu(), ops.suppix_pool_backward(g, lab, aux.cpu(), mode), rtol=0, atol=0)


@pytest.mark.cuda
def test_cuda_nosort_quad_kernel_choice(gen, monkeypatch):
    """"cuda.suppix_pool_nosort_quad" counts the vector-load variant: sum, avg and avg_spike of
    every dtype with P % 4 == 0 and x and the labels aligned to 4 elements, through the op and
    the functional API. Not the scalar variant (P % 4 != 0, x or labels off alignment), max
    (the key kernel; float64's one-pixel max kernel), rows over 48 KiB (the sorted path) or
    SNNSPX_LEGACY_CUDA=1; the values of those calls match."""
    _kernels(monkeypatch)
    ops = torch.ops.snnspx
    T, B, C, H, W, K = 2, 2, 3, 32, 32, 50
    P = H * W
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        x = rand_x(gen, (T, B, C, P), dtype).cuda()
        lab = torch.randint(-1, K, (1, B, P), generator=gen).cuda()
        for mode in QUAD_MODES:
            (y, aux), ran = _quad_calls(lambda: ops.suppix_pool(x, lab, K, mode, True))
            assert ran == (1, 1, 0, 0), (dtype, mode, ran)
            _, ran = _quad_calls(lambda: ops.suppix_pool(x[..., : P - 1], lab[..., : P - 1], K, mode, True))
            assert ran == (1, 0, 0, 0), (dtype, mode, "P % 4 != 0", ran)
            for xo, labo in ((_offset_copy(x), lab), (x, _offset_copy(lab))):
                (yo, auxo), ran = _quad_calls(lambda: ops.suppix_pool(xo, labo, K, mode, True))
                assert ran == (1, 0, 0, 0), (dtype, mode, "off alignment", ran)
                assert torch.equal(_bits(yo), _bits(y)) and torch.equal(auxo, aux), "the scalar variant's bits"
            fmode, grad = _fwd_mode(mode)
            _, ran = _quad_calls(lambda: F.suppix_pool(x.reshape(T, B, C, H, W), lab.reshape(B, H, W), K, fmode,
                                                       grad=grad, backend="cuda"))
            assert ran == (1, 1, 0, 0), (dtype, mode, ran)
        key = dtype != torch.float64
        _, ran = _quad_calls(lambda: ops.suppix_pool(x, lab, K, "max", True))
        assert ran == (1, 0, int(key), int(key)), (dtype, "max", ran)
    x = rand_x(gen, (T, B, C, P), torch.float32).cuda()
    lab = torch.randint(-1, 1536, (1, B, P), generator=gen).cuda()
    _, ran = _quad_calls(lambda: ops.suppix_pool(x, lab, 1536, "sum", True))
    assert ran == (1, 1, 0, 0), "8 warps * 1536 * 4 B = 48 KiB: fits"
    (y, aux), ran = _quad_calls(lambda: ops.suppix_pool(x, lab, 1537, "sum", True))
    assert ran == (0, 0, 0, 0), "rows over 48 KiB: the sorted path"
    _check_sums(y, aux, x, lab, 1537, "sum", "sorted")
    lab = torch.randint(-1, K, (1, B, P), generator=gen).cuda()
    y0, aux0 = ops.suppix_pool(x, lab, K, "avg", True)
    monkeypatch.setenv(LEGACY, "1")
    (y1, aux1), ran = _quad_calls(lambda: ops.suppix_pool(x, lab, K, "avg", True))
    assert ran == (0, 0, 0, 0), "SNNSPX_LEGACY_CUDA=1: the sorted path"
    assert torch.equal(aux1, aux0)
    _check_sums(y1, aux1, x, lab, K, "avg", "legacy")
    _check_sums(y0, aux0, x, lab, K, "avg", "nosort")


# --------------------------------------------------------------------------- CUDA unpooling's label check
@pytest.mark.cuda
@pytest.mark.parametrize("form", LABEL_FORMS)
@pytest.mark.parametrize("label_dtype", [torch.int32, torch.int64], ids=["i32", "i64"])
def test_cuda_unpool_checked_equals_unchecked(form, label_dtype, gen, monkeypatch):
    """Valid labels: a checked unpooling (tiled gather, partial last tile) gives the unchecked
    call's bits and the CPU's; so do the one-pixel gather's cases (odd P, labels off
    alignment) and K = 0."""
    _kernels(monkeypatch)
    ops = torch.ops.snnspx
    T, B, C, H, W, K = 2, 3, 11, 20, 60, 13
    P = H * W
    lab = _op_labels(rand_labels(gen, form, T, B, H, W, K, "cuda", dtype=label_dtype), form, T, B, P)
    lab[..., -1] = K - 1  # the largest valid label, in the partial last tile
    g = rand_x(gen, (T, B, C, K), torch.float32, "cuda")
    before = snnspx.kernel_calls(TILED)
    u = ops.suppix_unpool(g, lab, True)
    assert snnspx.kernel_calls(TILED) - before == 1
    assert torch.equal(u, ops.suppix_unpool(g, lab, False))
    assert torch.equal(u.cpu(), ops.suppix_unpool(g.cpu(), lab.cpu(), True))
    odd = torch.randint(-1, K, (1, B, 35), generator=gen).to(label_dtype).cuda()
    zero_k = torch.full((1, B, 36), -1, dtype=label_dtype, device="cuda")
    for labels, y in ((odd, g), (_offset_copy(lab), g), (zero_k, g[..., :0])):
        out = ops.suppix_unpool(y, labels, True)
        assert torch.equal(out.cpu(), ops.suppix_unpool(y.cpu(), labels.cpu(), True))


@pytest.mark.cuda
@pytest.mark.parametrize("label_dtype", [torch.int32, torch.int64], ids=["i32", "i64"])
def test_cuda_unpool_rejects_labels_ge_k(label_dtype, gen, monkeypatch):
    """A checked unpooling on the tiled gather raises ValueError naming the largest label >= K,
    wherever it is: the first pixel of the first map, the last pixel of the
    last per-step map (in a partial tile), or exactly K. (A test of its own: on a machine
    whose PyTorch turns C++ exceptions from extensions into crashes, see
    benchmarks/diag_extension_exceptions.py, only it fails.)"""
    _kernels(monkeypatch)
    ops = torch.ops.snnspx
    T, B, C, H, W, K = 2, 3, 11, 20, 60, 13
    P = H * W
    g = rand_x(gen, (T, B, C, K), torch.float32, "cuda")
    per_step = torch.randint(-1, K, (T, B, P), generator=gen).to(label_dtype)
    cases = []
    lab = per_step.clone()
    lab[T - 1, B - 1, P - 1] = K + 5
    lab[0, 0, 0] = K + 2
    cases.append((lab, K + 5))
    shared = torch.randint(-1, K, (1, 1, P), generator=gen).to(label_dtype)
    shared[0, 0, 0] = K
    cases.append((shared, K))
    for lab, worst in cases:
        with pytest.raises(ValueError, match=f"labels must be < num_superpixels = {K}.*got a label {worst}"):
            ops.suppix_unpool(g, lab.cuda(), True)
        with pytest.raises(ValueError, match=f"labels must be < num_superpixels = {K}.*got a label {worst}"):
            F.suppix_unpool(g, lab.reshape(lab.shape[0], lab.shape[1], H, W).cuda(), backend="cuda")


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
    assert torch.equal(snnspx.nn.SupPixUnpool(batch_first=True, backend=backend)(y.transpose(0, 1), labels), const.transpose(0, 1))
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


@pytest.mark.skipif(torch.version.cuda is None, reason="needs a CUDA build of PyTorch")
@pytest.mark.skipif(snnspx._build.find_cuda_home() is None, reason="needs the CUDA toolkit (nvcc)")
def test_cuda_kernels_compile_and_register():
    """Runs without a GPU: the superpixel kernels compile, link and register for CUDA."""
    snnspx._build.load_library("cuda")
    for op in ("suppix_pool", "suppix_pool_backward", "suppix_unpool", "suppix_counts"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"snnspx::{op}", "CUDA"), op


# --------------------------------------------------------------------------- the CPU's AVX-512 lookup
def _cpu_has(flag: str) -> bool:
    """Whether /proc/cpuinfo lists the x86 feature `flag` (False where there is no such file)."""
    try:
        with open("/proc/cpuinfo") as f:
            return f" {flag}" in f.read()
    except OSError:
        return False


def _cpu_has_avx512() -> bool:
    return _cpu_has("avx512f")


SIMD = "cpu.suppix_gather_avx512"


@pytest.mark.skipif(not _cpu_has_avx512(), reason="needs a CPU with AVX-512F")
@pytest.mark.parametrize("K", [1, 5, 16, 33, 64, 65, 128, 129, 200, 256])
@pytest.mark.parametrize("P", [(4, 4), (5, 7), (32, 33)])
@pytest.mark.parametrize("form", ["shared", "per_step"])
def test_cpu_simd_lookup_matches_scalar_and_reference(K, P, form, gen, monkeypatch):
    """float32 unpooling and the sum/avg/avg_spike backward gathers take the AVX-512 lookup for
    K <= 256 (two-register permutes: one path up to 64, pairs of registers above); bitwise equal to the scalar loop (SNNSPX_CPU_SIMD=0) and to the reference, with
    ignored pixels, labels >= K (check_labels=False), empty superpixels and a partial last vector."""
    T, B, C = 3, 2, 2
    H, W = P
    shape = {"shared": (H, W), "per_step": (T, B, H, W)}[form]
    labels = torch.randint(-2, K + 2, shape, generator=gen)
    y = rand_x(gen, (T, B, C, K))
    x = spikes(gen, (T, B, C, H, W), p=0.5)
    w = rand_x(gen, (T, B, C, K))

    def run():
        out = {"unpool": F.suppix_unpool(y, labels, check_labels=False, backend="cpp")}
        for mode, grad in (("sum", "exact"), ("avg", "exact"), ("avg", "spike")):
            xg = x.clone().requires_grad_()
            (F.suppix_pool(xg, labels, K, mode, grad=grad, check_labels=False, backend="cpp") * w).sum().backward()
            out[mode + grad] = xg.grad
        return out

    before = snnspx.kernel_calls(SIMD)
    fast = run()
    assert snnspx.kernel_calls(SIMD) - before == 4, "the AVX-512 lookup must have run"
    monkeypatch.setenv("SNNSPX_CPU_SIMD", "0")
    before = snnspx.kernel_calls(SIMD)
    slow = run()
    assert snnspx.kernel_calls(SIMD) == before, "SNNSPX_CPU_SIMD=0 must turn it off"
    for name in fast:
        assert torch.equal(fast[name], slow[name]), name
    assert torch.equal(fast["unpool"], R.suppix_unpool(y, labels, check_labels=False))
    for mode, grad in (("sum", "exact"), ("avg", "exact"), ("avg", "spike")):
        _, want = ref_pool_and_grad(x, torch.where(labels >= K, -1, labels), K, mode, w, grad)
        assert torch.equal(fast[mode + grad], want), mode + grad


@pytest.mark.skipif(not _cpu_has_avx512(), reason="needs a CPU with AVX-512F")
def test_cpu_simd_lookup_only_where_it_applies(gen):
    """K > 256, float64 and max's backward keep the scalar loop."""
    labels = torch.randint(0, 257, (6, 6), generator=gen)
    before = snnspx.kernel_calls(SIMD)
    F.suppix_unpool(rand_x(gen, (2, 1, 1, 257)), labels, backend="cpp")
    F.suppix_unpool(rand_x(gen, (2, 1, 1, 64), torch.float64), labels.clamp(max=63), backend="cpp")
    x = rand_x(gen, (2, 1, 1, 6, 6)).requires_grad_()
    F.suppix_pool(x, labels.clamp(max=63), 64, "max", backend="cpp").sum().backward()
    assert snnspx.kernel_calls(SIMD) == before


# --------------------------------------------------------------------------- the CPU's AVX2 group pooling
def _cpu_has_avx2() -> bool:
    return _cpu_has("avx2")


GROUP = "cpu.suppix_pool_avx2"


def _group_and_scalar(xs, labels, K, mode, check_labels, monkeypatch):
    """The CPU op's (y, aux) for xs [T, B, C, P] and labels [H, W] / [B, H, W] / [T, B, H, W]
    with the AVX2 group path (which must run once) and with SNNSPX_CPU_SIMD=0 (which must
    turn it off)."""
    T, B = xs.shape[:2]
    L = T if labels.dim() == 4 else 1
    Bl = B if labels.dim() >= 3 else 1
    lab = labels.reshape(L, Bl, xs.shape[-1])
    before = snnspx.kernel_calls(GROUP)
    fast = torch.ops.snnspx.suppix_pool.default(xs, lab, K, mode, check_labels)
    assert snnspx.kernel_calls(GROUP) - before == 1, "the AVX2 group path must have run"
    monkeypatch.setenv("SNNSPX_CPU_SIMD", "0")
    slow = torch.ops.snnspx.suppix_pool.default(xs, lab, K, mode, check_labels)
    assert snnspx.kernel_calls(GROUP) - before == 1, "SNNSPX_CPU_SIMD=0 must turn it off"
    return fast, slow


@pytest.mark.skipif(not _cpu_has_avx2(), reason="needs a CPU with AVX2")
@pytest.mark.parametrize("mode", ["sum", "avg", "avg_spike", "max"])
@pytest.mark.parametrize("C", [8, 13, 16])
@pytest.mark.parametrize("HW", [(4, 4), (5, 7), (9, 9)])
@pytest.mark.parametrize("form", ["shared", "per_step"])
@pytest.mark.parametrize("nan", [False, True])
def test_cpu_group_pool_matches_scalar_and_reference(mode, C, HW, form, nan, gen, monkeypatch):
    """float32 sum/avg/avg_spike/max pooling of 8 channels at once (AVX2) gives the scalar
    loop's bits (SNNSPX_CPU_SIMD=0), values and aux (max's argmax, avg_spike's non-zero
    counts), and the reference's values: with ties
    (-0.0 and +0.0 among them), a plane of -inf, ignored pixels, labels >= K
    (check_labels=False), an empty superpixel, a partial last block of pixels, channels
    left over after the groups of 8 (C = 13), and a NaN (its group takes the exact path)."""
    T, B, K = 2, 2, 6
    H, W = HW
    shape = {"shared": (H, W), "per_step": (T, B, H, W)}[form]
    labels = torch.randint(-1, K + 1, shape, generator=gen)
    labels[labels == K - 1] = K  # superpixel K - 1 is empty; label K is out of range
    x = torch.randint(-3, 4, (T, B, C, H, W), generator=gen).float() / 2
    x[x == 0] = -0.0
    x[..., ::3, ::2] = x[..., ::3, ::2].abs()  # +0.0 beside -0.0
    x[0, 1, 2] = -math.inf
    if nan:
        x[1, 0, 3, H // 2, W // 2] = math.nan
    xs = x.reshape(T, B, C, H * W)
    (y, aux), (y0, aux0) = _group_and_scalar(xs, labels, K, mode, False, monkeypatch)
    assert torch.equal(y, y0) or (nan and torch.equal(y.isnan(), y0.isnan()) and torch.equal(y.nan_to_num(), y0.nan_to_num()))
    assert torch.equal(y.signbit(), y0.signbit()) and torch.equal(aux, aux0)

    ry = R.suppix_pool(x, torch.where(labels >= K, -1, labels), K, "avg" if mode == "avg_spike" else mode)
    ry = ry.reshape(T, B, C, K)
    if mode == "avg_spike":  # m: the non-zero inputs of each superpixel (NaN counts)
        lab = torch.where(labels >= K, -1, labels).expand(T, B, H, W).reshape(T, B, 1, H * W)
        nz = (xs != 0) & (lab >= 0)
        m = torch.zeros(T, B, C, K + 1, dtype=torch.int64).scatter_add_(-1, lab.clamp(min=0).expand(T, B, C, -1) + K * (lab < 0), nz.long())
        assert torch.equal(aux.long(), m[..., :K])
    if mode == "max":
        torch.testing.assert_close(y, ry, rtol=0, atol=0, equal_nan=True)
        assert torch.equal(y.signbit(), ry.signbit())
    else:
        close(y.nan_to_num(), ry.nan_to_num(), mode)


@pytest.mark.skipif(not _cpu_has_avx2(), reason="needs a CPU with AVX2")
def test_cpu_group_pool_only_where_it_applies(gen):
    """Fewer than 8 channels, float64 and float16 keep the scalar loop."""
    labels = torch.randint(0, 4, (5, 5), generator=gen)
    before = snnspx.kernel_calls(GROUP)
    F.suppix_pool(rand_x(gen, (2, 1, 7, 5, 5)), labels, 4, "sum", backend="cpp")
    for dtype in (torch.float64, torch.float16):
        F.suppix_pool(rand_x(gen, (2, 1, 8, 5, 5), dtype), labels, 4, "max", backend="cpp")
    assert snnspx.kernel_calls(GROUP) == before


@pytest.mark.skipif(not _cpu_has_avx2(), reason="needs a CPU with AVX2")
@pytest.mark.parametrize("mode", ["sum", "avg", "avg_spike", "max"])
@pytest.mark.parametrize("form", LABEL_FORMS)
@pytest.mark.parametrize("HW,K", [((1, 5), 3), ((9, 9), 7), ((9, 9), 0)], ids=["p5", "p81", "k0"])
def test_cpu_group_pool_random_values_match_scalar(mode, form, HW, K, gen, monkeypatch):
    """Random values (float32 sums that round, unlike the halves of the test above), planes of
    fewer pixels than a vector block, K = 0, every label form, and enough (t, b) for several
    parallel tasks: the AVX2 group path gives the scalar loop's bits, values and aux."""
    T, B, C = 4, 8, 16
    H, W = HW
    labels = rand_labels(gen, form, T, B, H, W, max(K, 1), "cpu")
    if K == 0:
        labels = torch.full_like(labels, -1)
    x = rand_x(gen, (T, B, C, H, W))
    x[x.abs() < 0.3] = 0.0  # zeros for avg_spike's counts
    xs = x.reshape(T, B, C, H * W)
    (y, aux), (y0, aux0) = _group_and_scalar(xs, labels, K, mode, True, monkeypatch)
    assert torch.equal(y, y0) and torch.equal(y.signbit(), y0.signbit()) and torch.equal(aux, aux0)
    if K:
        ry = R.suppix_pool(x, labels, K, "avg" if mode == "avg_spike" else mode).reshape(T, B, C, K)
        close(y, ry, mode)
