"""Superpixel pooling and unpooling (docs/maths.md §5) on every backend: forward and x.grad
against snnspx.reference's forward and backward loops elementwise, against
torch.Tensor.scatter_reduce where the semantics agree, gradcheck, and max's ties, NaN and
infinities."""

from __future__ import annotations

import math

import pytest
import torch

from snnspx import functional as F
from conftest import DTYPES, GRID
from suppix_helpers import (  # noqa: F401  (cpp_loaded: a fixture)
    cpp_loaded,
    LABEL_FORMS,
    MODES,
    close,
    pool_and_grad,
    rand_labels,
    rand_x,
    ref_pool_and_grad,
    ref_unpool_and_grad,
    spikes,
)

pytestmark = pytest.mark.usefixtures("cpp_loaded")


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
    assert gx.shape == x.shape and gx.dtype == dtype and rgx.shape == x.shape
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
        rz, rgy = ref_unpool_and_grad(y, labels, w)
        assert z.shape == (T, B, C, H, W)
        close(z, rz, f"z {form}")
        close(yg.grad, rgy, f"grad_y {form}")
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
    close(F.suppix_pool(x, labels, num_superpixels=K, mode=mode, backend=backend), want, mode)
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
    assert torch.autograd.gradcheck(
        lambda v: F.suppix_pool(v, labels, num_superpixels=K, mode=mode, backend=backend), (x,)
    )


@pytest.mark.parametrize("backend,device", GRID)
def test_gradcheck_unpool(backend, device, gen):
    y = rand_x(gen, (2, 2, 3, 6), torch.float64, device).requires_grad_()
    labels = rand_labels(gen, "per_image", 2, 2, 3, 4, 7, device)
    assert torch.autograd.gradcheck(lambda v: F.suppix_unpool(v, labels, backend=backend), (y,))


# --------------------------------------------------------------------------- max: ties, NaN, inf
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
    assert torch.equal(y.cpu().isnan(), ry.isnan()) and torch.equal(y.cpu().nan_to_num(), ry.nan_to_num())
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
