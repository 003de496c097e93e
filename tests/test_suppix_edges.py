"""Superpixel pooling's edge cases on every backend (and, where the oracle must survive them
too, on snnspx.reference's loops): ignored pixels, one superpixel, label forms and dtypes,
strides, determinism, empty shapes, a huge inferred K, counts, half precision, unchecked labels."""

from __future__ import annotations

import functools
import types

import pytest
import torch

from snnspx import functional as F
from snnspx import reference as R
from conftest import GRID
from suppix_helpers import (  # noqa: F401  (cpp_loaded: a fixture)
    cpp_loaded,
    LABEL_FORMS,
    MODES,
    close,
    pool_and_grad,
    rand_labels,
    rand_x,
    ref_pool_and_grad,
    unpool_and_grad,
)

# GRID and the reference's loops (edge cases the oracle must survive too).
REF_AND_GRID = [pytest.param("reference", "cpu", id="reference-cpu"), *GRID]

pytestmark = pytest.mark.usefixtures("cpp_loaded")


def _ops(backend):
    """The forward ops of a GRID backend, or the reference's loops for "reference"."""
    if backend == "reference":
        return types.SimpleNamespace(
            pool=R.suppix_pool, unpool=R.suppix_unpool, counts=R.suppix_counts, fused=R.srm_suppix_pool
        )
    return types.SimpleNamespace(
        pool=functools.partial(F.suppix_pool, backend=backend),
        unpool=functools.partial(F.suppix_unpool, backend=backend),
        counts=functools.partial(F.suppix_counts, backend=backend),
        fused=functools.partial(F.srm_suppix_pool, backend=backend),
    )


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("mode", MODES)
def test_all_pixels_ignored(backend, device, mode, gen):
    x = rand_x(gen, (2, 2, 3, 4, 4), torch.float64, device).requires_grad_()
    labels = torch.full((2, 4, 4), -1, device=device)
    y = F.suppix_pool(x, labels, num_superpixels=3, mode=mode, backend=backend)
    assert y.shape == (2, 2, 3, 3) and torch.all(y == 0)
    y.sum().backward()
    assert torch.all(x.grad == 0)
    inferred = F.suppix_pool(x, labels, mode=mode, backend=backend)
    assert inferred.shape == (2, 2, 3, 0), "inferred K = 0"
    ones = torch.ones(2, 2, 3, 3, device=device)
    assert torch.all(F.suppix_unpool(ones, labels, backend=backend) == 0)
    # the reference's loops agree, backward included
    ry, rgx = ref_pool_and_grad(x, labels, 3, mode, torch.ones(2, 2, 3, 3, dtype=torch.float64))
    assert torch.all(ry == 0) and torch.all(rgx == 0) and rgx.shape == x.shape
    assert R.suppix_pool(x.detach().cpu(), labels.cpu(), mode=mode).shape == (2, 2, 3, 0)


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("mode", MODES)
def test_one_superpixel_and_one_pixel_per_superpixel(backend, device, mode, gen):
    T, B, C, H, W = 2, 2, 3, 4, 5
    x = rand_x(gen, (T, B, C, H, W), torch.float64, device)
    # K = 1: a plain reduction over the image
    zeros = torch.zeros(H, W, dtype=torch.int64, device=device)
    y1 = F.suppix_pool(x, zeros, num_superpixels=1, mode=mode, backend=backend)
    flat = x.reshape(T, B, C, H * W)
    want = {"sum": flat.sum(-1), "avg": flat.mean(-1), "max": flat.amax(-1)}[mode]
    close(y1[..., 0], want, "K = 1")
    # K = H * W, one pixel each: the identity
    ident = torch.arange(H * W, device=device).reshape(H, W)
    yk = F.suppix_pool(x, ident, num_superpixels=H * W, mode=mode, backend=backend)
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
    y = F.suppix_pool(x, per_step, num_superpixels=K, mode=mode, backend=backend)
    for t in range(T):
        assert torch.equal(y[t], F.suppix_pool(x[t], per_step[t], num_superpixels=K, mode=mode, backend=backend))


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("mode", MODES)
def test_noncontiguous_and_single_step(backend, device, mode, gen):
    T, B, C, H, W, K = 2, 3, 4, 6, 5, 8
    pool = functools.partial(F.suppix_pool, num_superpixels=K, mode=mode, backend=backend)
    base = rand_x(gen, (B, T, W, C, H), torch.float32, device)
    x = base.permute(1, 0, 3, 4, 2)  # [T, B, C, H, W], not contiguous
    assert not x.is_contiguous()
    labels = rand_labels(gen, "per_image", T, B, H, W, K, device)[:, :, :]
    y = pool(x, labels)
    assert torch.equal(y, pool(x.contiguous(), labels))
    assert torch.equal(pool(x[:, :, ::2], labels), y[:, :, ::2])
    # T = 1 and the [B, C, H, W] single-step form
    y1 = pool(x[1], labels)
    assert y1.shape == (B, C, K)
    assert torch.equal(y1, y[1])
    assert torch.equal(pool(x[1:], labels)[0], y1)
    z1 = F.suppix_unpool(y1, labels, backend=backend)
    assert z1.shape == (B, C, H, W)
    assert torch.equal(z1, F.suppix_unpool(y, labels, backend=backend)[1])
    # non-contiguous labels
    lab_nc = labels.transpose(1, 2).contiguous().transpose(1, 2)
    assert not lab_nc.is_contiguous()
    assert torch.equal(pool(x, lab_nc), y)
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


@pytest.mark.parametrize("backend,device", REF_AND_GRID)
def test_empty_shapes(backend, device):
    ops = _ops(backend)
    for shape in [(0, 2, 3, 4, 4), (2, 2, 0, 4, 4), (2, 2, 3, 0, 4), (2, 2, 3, 4, 0)]:
        x = torch.zeros(shape, device=device)
        labels = torch.zeros(shape[1], shape[3], shape[4], dtype=torch.int64, device=device)
        for mode in MODES:
            y = ops.pool(x, labels, num_superpixels=3, mode=mode)
            assert y.shape == (*shape[:3], 3) and torch.all(y == 0)
            if backend == "reference":  # the backward loop too
                g = R.suppix_pool_backward(torch.ones(*shape[:3], 3), x, labels, num_superpixels=3, mode=mode)
                assert g.shape == shape and torch.all(g == 0)
        assert ops.unpool(torch.zeros(*shape[:3], 3, device=device), labels).shape == shape
        n = ops.counts(labels, num_superpixels=3)
        want = torch.zeros(shape[1], 3, dtype=torch.int64)
        want[:, 0] = shape[3] * shape[4]  # every pixel has label 0
        assert torch.equal(n.cpu(), want)
        y = ops.fused(x, labels, num_superpixels=3, mode="avg")
        assert y.shape == (*shape[:3], 3) and torch.all(y == 0)


@pytest.mark.parametrize("backend,device", REF_AND_GRID)
def test_inferred_k_too_large(backend, device):
    """A huge label with K inferred: one clear error, not an allocation of K entries."""
    ops = _ops(backend)
    labels = torch.zeros(2, 2, dtype=torch.int64, device=device)
    labels[0, 0] = 10**10
    x = torch.randn(1, 1, 1, 2, 2, device=device)
    for call in (lambda: ops.pool(x, labels), lambda: ops.counts(labels), lambda: ops.fused(x, labels)):
        with pytest.raises(ValueError, match="labels.max\\(\\) \\+ 1 = 10000000001 superpixels"):
            call()


@pytest.mark.parametrize("backend,device", GRID)
def test_counts(backend, device, gen):
    T, B, H, W, K = 3, 2, 5, 6, 8
    for form in LABEL_FORMS:
        labels = rand_labels(gen, form, T, B, H, W, K, device)
        want = torch.stack([torch.bincount(m[m >= 0], minlength=K) for m in labels.reshape(-1, H * W).cpu()])
        want = want.reshape(*labels.shape[:-2], K)
        n = F.suppix_counts(labels, num_superpixels=K, backend=backend)
        assert n.dtype == torch.int64 and torch.equal(n.cpu(), want)
        assert torch.equal(R.suppix_counts(labels, num_superpixels=K).cpu(), want)
        x = rand_x(gen, (T, B, 2, H, W), torch.float32, device)
        for mode in MODES:
            _, n2 = F.suppix_pool(x, labels, num_superpixels=K, mode=mode, return_counts=True, backend=backend)
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
        assert torch.equal(ry, R.suppix_pool(x.float().cpu(), labels.cpu(), num_superpixels=K, mode=mode).to(dtype))
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
        got = F.suppix_pool(x, labels, num_superpixels=5, mode=mode, check_labels=False, backend=backend)
        assert torch.equal(got, F.suppix_pool(x, masked, num_superpixels=5, mode=mode, backend=backend))
        # the reference's loops ignore them too
        ref = R.suppix_pool(x.cpu(), labels.cpu(), num_superpixels=5, mode=mode, check_labels=False)
        close(ref, got, f"reference, {mode}")
    y = rand_x(gen, (2, 2, 3, 5), torch.float64, device)
    got = F.suppix_unpool(y, labels, check_labels=False, backend=backend)
    assert torch.equal(got, F.suppix_unpool(y, masked, backend=backend))
    assert torch.equal(R.suppix_unpool(y.cpu(), labels.cpu(), check_labels=False), got.cpu())
