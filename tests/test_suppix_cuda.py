"""The CUDA superpixel kernels (skipped without a GPU): against the CPU kernel on large inputs,
against the reference, the no-sort and sorted pooling paths, the tiled and one-pixel gathers,
and the label range check's stream ordering."""

from __future__ import annotations

import math

import pytest
import torch

from snnspx import functional as F
from snnspx import reference as R
from suppix_helpers import (
    ALL_MODES,
    LABEL_DTYPES,
    LABEL_FORMS,
    MODES,
    SORTED_ONE_PIXEL,
    ForceStrategy,
    load_cuda,
    close,
    fwd_mode,
    offset_copy,
    op_labels,
    pool_and_grad,
    rand_labels,
    rand_x,
    ref_pool_and_grad,
    spikes,
    strategy,
)


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
    F.suppix_counts(labels.cuda(), num_superpixels=K)  # loads the cuda library
    lab = labels.reshape(1, B, H * W)
    y_c, aux_c = ops.suppix_pool(x.reshape(T, B, C, -1), lab, K, mode, True, "")
    runs = [ops.suppix_pool(x.cuda().reshape(T, B, C, -1), lab.cuda(), K, mode, True, "") for _ in range(3)]
    for y, aux in runs:
        assert torch.equal(y, runs[0][0]) and torch.equal(aux, runs[0][1])
    tol = dict(atol=2e-2, rtol=2e-2) if dtype == torch.float16 else {}
    if mode in ("sum", "avg") and dtype != torch.float16:
        # The GPU adds a superpixel's n values in a fixed tree order, the CPU in pixel
        # order: both are exact up to rounding, so the difference is bounded by about
        # n * eps * (the same pooling of |x|), not by a fixed relative tolerance.
        abs_pool, counts = ops.suppix_pool(x.abs().reshape(T, B, C, -1), lab, K, mode, True, "")  # counts [1, B, K]
        n = counts.reshape(1, B, 1, K).to(torch.float64)
        bound = (n + 2) * torch.finfo(dtype).eps * abs_pool.to(torch.float64)
        err = (runs[0][0].cpu().to(torch.float64) - y_c.to(torch.float64)).abs()
        worst = (err - bound).max()
        assert worst <= 0, f"GPU and CPU sums differ by more than rounding can explain ({worst.item():.3g} over)"
    else:
        torch.testing.assert_close(runs[0][0].cpu(), y_c, **tol)
    assert torch.equal(runs[0][1].cpu(), aux_c), "argmax / counts / non-zero counts are exact"
    g = rand_x(gen, (T, B, C, K), dtype)
    gx_c = ops.suppix_pool_backward(g, lab, aux_c, mode, "")
    gx = [ops.suppix_pool_backward(g.cuda(), lab.cuda(), runs[0][1], mode, "") for _ in range(2)]
    assert torch.equal(gx[0], gx[1])
    torch.testing.assert_close(gx[0].cpu(), gx_c, **tol)


# --------------------------------------------------------------------------- CUDA kernel choice
# By default (strategy "") the pooling forward runs "nosort" where its shared memory fits,
# "sorted" otherwise; the gathers (backward, unpooling) run "tiled" where P % 4 == 0 and the
# labels are aligned to 4 elements, "one_pixel" otherwise. torch.ops.snnspx._strategy says
# which; ForceStrategy(SORTED_ONE_PIXEL) runs the sorted pooling and the one-pixel gathers
# (the defaults before these) and counts the calls it forced. The opt-in strategies have
# their own files (test_suppix_cuda_maxkey.py, test_suppix_cuda_quad.py).


@pytest.mark.cuda
@pytest.mark.parametrize("mode", ALL_MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16], ids=["f32", "f64", "f16"])
@pytest.mark.parametrize("form", LABEL_FORMS)
@pytest.mark.parametrize("label_dtype", LABEL_DTYPES)
@pytest.mark.parametrize("legacy", [False, True], ids=["nosort", "sorted"])
def test_cuda_pool_matches_reference(mode, dtype, form, label_dtype, legacy, gen):
    """Every mode, label form and dtype against the reference, on the no-sort kernel (the
    default) and on the sorted path and one-pixel gather (legacy, forced); P = 407: several
    warps and a partial last step. aux (counts, argmax, m) equals the CPU kernel's exactly."""
    load_cuda()
    T, B, C, H, W, K = 3, 2, 2, 11, 37, 9
    P = H * W
    shape = (T, B, C, H, W)
    x = spikes(gen, shape, dtype, "cuda") if mode == "avg_spike" else rand_x(gen, shape, dtype, "cuda")
    labels = rand_labels(gen, form, T, B, H, W, K, "cuda", dtype=label_dtype)
    w = rand_x(gen, (T, B, C, K), dtype, "cuda")
    fmode, grad = fwd_mode(mode)
    lab = op_labels(labels, form, T, B, P)
    xo = x.reshape(T, B, C, P)
    assert strategy("suppix_pool", xo, lab, K, mode) == "nosort"
    assert strategy("suppix_pool_backward", w, lab, K, mode) == "one_pixel", "P % 4 != 0"
    with ForceStrategy(SORTED_ONE_PIXEL if legacy else {}) as forced:
        y, gx = pool_and_grad(x, labels, K, fmode, "cuda", w, grad=grad)
        y_gpu, aux_gpu = torch.ops.snnspx.suppix_pool(xo, lab, K, mode, True, "")
    assert forced.runs == ({"suppix_pool": 2, "suppix_pool_backward": 1} if legacy else {}), forced.runs
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
    y_cpu, aux_cpu = torch.ops.snnspx.suppix_pool(xo.cpu(), lab.cpu(), K, mode, True, "")
    assert torch.equal(aux_gpu.cpu(), aux_cpu), "counts / argmax / non-zero counts are exact"
    if mode == "max":
        assert torch.equal(y_gpu.cpu(), y_cpu), "max is exact"


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16], ids=["f32", "f64", "f16"])
def test_cuda_nosort_max_ties_and_nan(dtype, gen):
    """Many ties within a warp step, across steps and across warps (P = 4480: 8 warps): the
    lowest pixel wins; NaN propagates (the lowest NaN is the argmax). Bitwise the CPU's.
    (Every dtype takes the warp-row no-sort kernel; the opt-in key kernel has its own file.)"""
    load_cuda()
    T, B, C, H, W, K = 2, 2, 3, 64, 70, 50
    P = H * W
    x = torch.randint(-2, 3, (T, B, C, P), generator=gen).to(dtype)
    x[1, 1, 2] = 1.0  # a constant plane: every argmax is its superpixel's first pixel
    x[0, 0, 1, ::97] = math.nan
    lab = torch.randint(-1, K - 1, (1, B, P), generator=gen)
    lab[0, 0, 1000:3000] = 7  # one superpixel over several warps
    assert strategy("suppix_pool", x.cuda(), lab.cuda(), K, "max") == "nosort"
    y, aux = torch.ops.snnspx.suppix_pool(x.cuda(), lab.cuda(), K, "max", True, "")
    y_cpu, aux_cpu = torch.ops.snnspx.suppix_pool(x, lab, K, "max", True, "")
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
def test_cuda_nosort_edge_cases(mode, gen):
    """All labels negative, K = 1 (one group of up to 32 lanes per step), one pixel per
    superpixel (the identity, bit for bit), with P not a multiple of 32."""
    load_cuda()
    ops = torch.ops.snnspx
    fmode, grad = fwd_mode(mode)
    T, B, C, H, W = 2, 2, 3, 37, 45
    P = H * W
    x = rand_x(gen, (T, B, C, H, W), torch.float64, "cuda")
    if mode == "avg_spike":
        x = torch.where(x > 0.3, x, 0)
    # every pixel ignored
    neg = torch.full((1, B, P), -1, dtype=torch.int64, device="cuda")
    assert strategy("suppix_pool", x.reshape(T, B, C, P), neg, 3, mode) == "nosort"
    y, aux = ops.suppix_pool(x.reshape(T, B, C, P), neg, 3, mode, True, "")
    assert torch.all(y == 0) and not torch.isnan(y).any()
    want_aux = -1 if mode == "max" else 0
    assert torch.all(aux == want_aux)
    # K = 1: a plain reduction over the image
    zeros = torch.zeros(H, W, dtype=torch.int64, device="cuda")
    assert strategy("suppix_pool", x.reshape(T, B, C, P), zeros.reshape(1, 1, P), 1, mode) == "nosort"
    y1 = F.suppix_pool(x, zeros, num_superpixels=1, mode=fmode, grad=grad, backend="cuda")
    flat = x.reshape(T, B, C, P)
    want = {"sum": flat.sum(-1), "avg": flat.mean(-1), "max": flat.amax(-1), "avg_spike": flat.mean(-1)}[mode]
    close(y1[..., 0], want, "K = 1")
    # one pixel per superpixel: the identity, bit for bit (a plane whose K rows fit)
    xi = x[..., :13, :17]
    ident = torch.arange(13 * 17, device="cuda").reshape(13, 17)
    assert strategy("suppix_pool", xi.reshape(T, B, C, -1), ident.reshape(1, 1, -1), 13 * 17, mode) == "nosort"
    yk = F.suppix_pool(xi, ident, num_superpixels=13 * 17, mode=fmode, grad=grad, backend="cuda")
    assert torch.equal(yk, xi.reshape(T, B, C, -1)), "one pixel per superpixel must copy x"
    # a tiny plane: one warp, one partial step
    small = rand_x(gen, (T, B, C, 4, 5), torch.float32, "cuda")
    lab = rand_labels(gen, "per_image", T, B, 4, 5, 6, "cuda")
    want = R.suppix_pool(small.cpu(), lab.cpu(), num_superpixels=6, mode=fmode)
    close(F.suppix_pool(small, lab, num_superpixels=6, mode=fmode, grad=grad, backend="cuda"), want, "tiny plane")


@pytest.mark.cuda
@pytest.mark.parametrize("mode", ALL_MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["f32", "f16"])
def test_cuda_nosort_large_runs_are_bitwise_identical(mode, dtype, gen):
    """A large input (many planes, 8 warps, long runs of one label): three runs give the same
    bits; y matches the CPU kernel, aux exactly; the backward takes the new aux."""
    load_cuda()
    T, B, C, H, W, K = 2, 3, 8, 96, 80, 300
    P = H * W
    x = spikes(gen, (T, B, C, P), dtype) if mode == "avg_spike" else rand_x(gen, (T, B, C, P), dtype)
    lab = torch.randint(-2, K, (T, B, P), generator=gen, dtype=torch.int64).int()
    lab[:, :, : 4 * W] = torch.arange(4 * W, dtype=torch.int32) % 7  # long runs and big superpixels
    ops = torch.ops.snnspx
    assert strategy("suppix_pool", x.cuda(), lab.cuda(), K, mode) == "nosort"
    runs = [ops.suppix_pool(x.cuda(), lab.cuda(), K, mode, True, "") for _ in range(3)]
    for y, aux in runs[1:]:
        assert torch.equal(y, runs[0][0]) and torch.equal(aux, runs[0][1])
    y_c, aux_c = ops.suppix_pool(x, lab, K, mode, True, "")
    tol = dict(atol=2e-2, rtol=2e-2) if dtype == torch.float16 else {}
    torch.testing.assert_close(runs[0][0].cpu(), y_c, **tol)
    assert torch.equal(runs[0][1].cpu(), aux_c)
    g = rand_x(gen, (T, B, C, K), dtype)
    gx = ops.suppix_pool_backward(g.cuda(), lab.cuda(), runs[0][1], mode, "")
    torch.testing.assert_close(gx.cpu(), ops.suppix_pool_backward(g, lab, aux_c, mode, ""), **tol)


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
        (torch.float32, "max", 768, True),  # 8 * 768 * (4 + 4) B ("max_key", opt-in: its own file)
        (torch.float32, "max", 769, False),
        (torch.float16, "avg", 1536, True),  # float accumulators
        (torch.float32, "avg", 5000, False),
    ],
)
def test_cuda_nosort_falls_back_when_rows_do_not_fit(dtype, mode, K, nosort, gen):
    """Rows over 48 KiB of shared memory: the sorted path takes the call (forcing "nosort"
    there fails), same results."""
    load_cuda()
    T, B, C, P = 2, 2, 3, 1024  # 8 warps
    x = spikes(gen, (T, B, C, P), dtype) if mode == "avg_spike" else rand_x(gen, (T, B, C, P), dtype)
    lab = torch.randint(-1, K, (1, B, P), generator=gen)
    ops = torch.ops.snnspx
    assert strategy("suppix_pool", x.cuda(), lab.cuda(), K, mode) == ("nosort" if nosort else "sorted")
    if not nosort:
        with pytest.raises(RuntimeError, match="suppix_pool: strategy 'nosort' does not apply"):
            ops.suppix_pool(x.cuda(), lab.cuda(), K, mode, True, "nosort")
    y, aux = ops.suppix_pool(x.cuda(), lab.cuda(), K, mode, True, "")
    y_c, aux_c = ops.suppix_pool(x, lab, K, mode, True, "")
    tol = dict(atol=1e-2, rtol=1e-2) if dtype == torch.float16 else {}
    torch.testing.assert_close(y.cpu(), y_c, **tol)
    assert torch.equal(aux.cpu(), aux_c)


@pytest.mark.cuda
@pytest.mark.parametrize("legacy", [False, True], ids=["default", "legacy"])
def test_cuda_label_check_sees_labels_written_just_before(legacy, gen):
    """The range check copies the largest label to the host behind an event (csrc/cuda/glue.h;
    unpooling, the fused op and sorted pooling also find it there): it must come after the
    labels' producer on the current stream. legacy: the sorted pooling and one-pixel gathers
    forced. Labels hold K (a failing label) until a copy queued behind a long sleep makes them
    valid; a check that read them early would raise."""
    load_cuda()
    K = 6
    good = torch.randint(-1, K, (2, 4, 5), generator=gen).cuda()
    y = rand_x(gen, (3, 2, 3, K), torch.float32, "cuda")
    x = rand_x(gen, (3, 2, 3, 4, 5), torch.float32, "cuda")
    # The sorted pooling path (K too large for the no-sort kernels' 48 KiB of shared memory,
    # even with one warp of 20 pixels) checks on the side stream too.
    big_K = 20000
    ops = {
        "unpool": lambda lab: F.suppix_unpool(y, lab, backend="cuda"),
        "fused": lambda lab: F.srm_suppix_pool(x, lab, num_superpixels=K, mode="avg", backend="cuda"),
        "sorted pooling": lambda lab: F.suppix_pool(x, lab, num_superpixels=big_K, mode="sum", backend="cuda"),
        # the no-sort kernels' own count finds the largest label; only the copy is on the side
        "no-sort pooling": lambda lab: F.suppix_pool(x, lab, num_superpixels=K, mode="max", backend="cuda"),
    }
    lab3 = good.reshape(1, 2, 20)
    assert strategy("suppix_pool", x.reshape(3, 2, 3, 20), lab3, big_K, "sum") == "sorted"
    assert strategy("suppix_pool", x.reshape(3, 2, 3, 20), lab3, K, "max") == "nosort"
    forced = ForceStrategy(SORTED_ONE_PIXEL if legacy else {})
    for name, op in ops.items():
        with forced:
            want = op(good)
        # Small blocks of the caching allocator that hold a failing label: a copy that did not
        # wait would read the largest label's tensor before the current stream wrote it.
        poison = [torch.full((64,), 2**62, dtype=torch.int64, device="cuda") for _ in range(64)]
        torch.cuda.synchronize()
        del poison
        labels = torch.full_like(good, big_K if name == "sorted pooling" else K)
        torch.cuda._sleep(20_000_000)  # some milliseconds of the current stream
        labels.copy_(good)
        with forced:
            got = op(labels)
        assert torch.equal(got, want), name
    assert forced.runs == ({"suppix_unpool": 2, "suppix_pool": 4} if legacy else {}), forced.runs


@pytest.mark.cuda
def test_cuda_label_check_catches_labels_broken_just_before(gen):
    """The other way round: valid labels made invalid by in-flight work are caught."""
    load_cuda()
    K = 6
    good = torch.randint(-1, K, (2, 4, 5), generator=gen).cuda()
    y = rand_x(gen, (3, 2, 3, K), torch.float32, "cuda")
    labels = good.clone()
    torch.cuda._sleep(20_000_000)
    labels[1, 2, 3] = K
    with pytest.raises(ValueError, match=f"labels must be < num_superpixels = {K}"):
        F.suppix_unpool(y, labels, backend="cuda")


@pytest.mark.cuda
def test_cuda_nosort_label_checks_and_empty_shapes(gen):
    """The range check (read back after the kernels), unchecked labels >= K ignored, and the
    empty shapes (sorted path), and which strategy "" picks."""
    load_cuda()
    x = rand_x(gen, (2, 2, 3, 4, 5), torch.float64, "cuda")
    labels = torch.randint(-1, 9, (2, 4, 5), generator=gen).cuda()
    masked = torch.where(labels >= 5, -1, labels)
    bad = labels.clone()
    bad[1, 2, 3] = 8
    for mode in MODES:
        with pytest.raises(ValueError, match="labels must be < num_superpixels = 5.*got a label 8"):
            F.suppix_pool(x, bad, num_superpixels=5, mode=mode, backend="cuda")
        got = F.suppix_pool(x, labels, num_superpixels=5, mode=mode, check_labels=False, backend="cuda")
        assert torch.equal(got, F.suppix_pool(x, masked, num_superpixels=5, mode=mode, backend="cuda"))
        _, n = F.suppix_pool(x, masked, num_superpixels=5, mode=mode, return_counts=True, backend="cuda")
        want = torch.stack([torch.bincount(m[m >= 0], minlength=5) for m in masked.reshape(2, -1).cpu()])
        assert torch.equal(n.cpu(), want)
    with pytest.raises(ValueError, match="labels must be < num_superpixels = 0"):
        F.suppix_pool(x, labels.clamp(min=0), num_superpixels=0, backend="cuda")
    for shape in [(0, 2, 3, 4, 4), (2, 2, 0, 4, 4), (2, 2, 3, 0, 4)]:
        z = torch.zeros(shape, device="cuda")
        lab = torch.zeros(shape[1], shape[3], shape[4], dtype=torch.int64, device="cuda")
        for mode in MODES:
            y = F.suppix_pool(z, lab, num_superpixels=3, mode=mode, backend="cuda")
            assert y.shape == (*shape[:3], 3) and torch.all(y == 0)
    x4, lab3 = x.reshape(2, 2, 3, 20), masked.reshape(1, 2, 20)
    for mode in MODES:
        assert strategy("suppix_pool", x4, lab3, 5, mode) == "nosort", mode
        for empty in (x4[:0], x4[:, :, :0]):
            assert strategy("suppix_pool", empty, lab3, 5, mode) == "sorted", mode
        assert strategy("suppix_pool", x4[..., :0], lab3[..., :0], 5, mode) == "sorted", mode


@pytest.mark.cuda
@pytest.mark.parametrize("mode", ALL_MODES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16],
                         ids=["f32", "f64", "f16", "bf16"])
@pytest.mark.parametrize("form", LABEL_FORMS)
@pytest.mark.parametrize("label_dtype", LABEL_DTYPES)
def test_cuda_tiled_gather_is_the_one_pixel_gather(mode, dtype, form, label_dtype, gen):
    """The tiled gather (P % 4 == 0: the default) writes the bits of the one-pixel gather for the
    pooling backward of every mode and for unpooling, and matches the CPU kernel. P = 1200:
    a full tile of 1024 pixels and a partial one; C = 11: a full and a partial chunk of 8
    channels; labels with ignored pixels and empty superpixels."""
    load_cuda()
    T, B, C, H, W, K = 2, 3, 11, 20, 60, 13
    P = H * W
    shape = (T, B, C, P)
    x = spikes(gen, shape, dtype, "cuda") if mode == "avg_spike" else rand_x(gen, shape, dtype, "cuda")
    lab = op_labels(rand_labels(gen, form, T, B, H, W, K - 1, "cuda", dtype=label_dtype), form, T, B, P)
    ops = torch.ops.snnspx
    _, aux = ops.suppix_pool(x, lab, K, mode, True, "")
    g = rand_x(gen, (T, B, C, K), dtype, "cuda")
    for op in ("suppix_pool_backward", "suppix_unpool"):
        assert strategy(op, g, lab, K, mode) == "tiled", op
    gx, u = ops.suppix_pool_backward(g, lab, aux, mode, ""), ops.suppix_unpool(g, lab, True, "")
    with ForceStrategy({"suppix_pool_backward": "one_pixel", "suppix_unpool": "one_pixel"}) as forced:
        gx1, u1 = ops.suppix_pool_backward(g, lab, aux, mode, ""), ops.suppix_unpool(g, lab, True, "")
    assert forced.runs == {"suppix_pool_backward": 1, "suppix_unpool": 1}, "the one-pixel gather must have run"
    assert torch.equal(gx, gx1) and torch.equal(u, u1)
    assert torch.equal(u.cpu(), ops.suppix_unpool(g.cpu(), lab.cpu(), True, ""))
    torch.testing.assert_close(gx.cpu(), ops.suppix_pool_backward(g.cpu(), lab.cpu(), aux.cpu(), mode, ""),
                               rtol=0, atol=0)


@pytest.mark.cuda
def test_cuda_tiled_gather_does_not_apply(gen):
    """P % 4 != 0 or labels not aligned to 4 elements: the one-pixel gather (forcing "tiled"
    fails), same values."""
    load_cuda()
    ops = torch.ops.snnspx
    T, B, C, K = 2, 2, 3, 6
    g = rand_x(gen, (T, B, C, K), torch.float32, "cuda")
    odd = torch.randint(-1, K, (1, B, 35), generator=gen).cuda()  # P = 35
    shifted = torch.randint(-1, K, (B * 36 + 1,), generator=gen).cuda()[1:].view(1, B, 36)
    for lab in (odd, shifted):
        assert strategy("suppix_unpool", g, lab, K) == "one_pixel"
        with pytest.raises(RuntimeError, match="suppix_unpool: strategy 'tiled' does not apply"):
            ops.suppix_unpool(g, lab, True, "tiled")
        u = ops.suppix_unpool(g, lab, True, "")
        assert torch.equal(u.cpu(), ops.suppix_unpool(g.cpu(), lab.cpu(), True, ""))



# --------------------------------------------------------------------------- CUDA unpooling's label check
@pytest.mark.cuda
@pytest.mark.parametrize("form", LABEL_FORMS)
@pytest.mark.parametrize("label_dtype", LABEL_DTYPES)
def test_cuda_unpool_checked_equals_unchecked(form, label_dtype, gen):
    """Valid labels: a checked unpooling (tiled gather, partial last tile) gives the unchecked
    call's bits and the CPU's; so do the one-pixel gather's cases (odd P, labels off
    alignment) and K = 0."""
    load_cuda()
    ops = torch.ops.snnspx
    T, B, C, H, W, K = 2, 3, 11, 20, 60, 13
    P = H * W
    lab = op_labels(rand_labels(gen, form, T, B, H, W, K, "cuda", dtype=label_dtype), form, T, B, P)
    lab[..., -1] = K - 1  # the largest valid label, in the partial last tile
    g = rand_x(gen, (T, B, C, K), torch.float32, "cuda")
    assert strategy("suppix_unpool", g, lab, K) == "tiled"
    u = ops.suppix_unpool(g, lab, True, "")
    assert torch.equal(u, ops.suppix_unpool(g, lab, False, ""))
    assert torch.equal(u.cpu(), ops.suppix_unpool(g.cpu(), lab.cpu(), True, ""))
    odd = torch.randint(-1, K, (1, B, 35), generator=gen).to(label_dtype).cuda()
    zero_k = torch.full((1, B, 36), -1, dtype=label_dtype, device="cuda")
    for labels in (odd, offset_copy(lab)):
        assert strategy("suppix_unpool", g, labels, K) == "one_pixel"
    for labels, y in ((odd, g), (offset_copy(lab), g), (zero_k, g[..., :0])):
        out = ops.suppix_unpool(y, labels, True, "")
        assert torch.equal(out.cpu(), ops.suppix_unpool(y.cpu(), labels.cpu(), True, ""))


@pytest.mark.cuda
@pytest.mark.parametrize("label_dtype", LABEL_DTYPES)
def test_cuda_unpool_rejects_labels_ge_k(label_dtype, gen):
    """A checked unpooling on the tiled gather raises ValueError naming the largest label >= K,
    wherever it is: the first pixel of the first map, the last pixel of the
    last per-step map (in a partial tile), or exactly K. (A test of its own: on a machine
    whose PyTorch turns C++ exceptions from extensions into crashes, see
    benchmarks/diag_extension_exceptions.py, only it fails.)"""
    load_cuda()
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
            ops.suppix_unpool(g, lab.cuda(), True, "")
        with pytest.raises(ValueError, match=f"labels must be < num_superpixels = {K}.*got a label {worst}"):
            F.suppix_unpool(g, lab.reshape(lab.shape[0], lab.shape[1], H, W).cuda(), backend="cuda")
