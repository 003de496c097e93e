"""CUDA sum, avg and avg_spike pooling on the 4-pixel no-sort kernel (skipped without a GPU):
against the reference and a float64 oracle, NaN and infinities, plane sizes, vector and scalar
loads, and large inputs."""

from __future__ import annotations

import math

import pytest
import torch

from snnspx import functional as F
from snnspx import reference as R
from snnspx import superpixels as S
from suppix_helpers import (
    LABEL_DTYPES,
    LABEL_FORMS,
    SORTED_ONE_PIXEL,
    ForceStrategy,
    bits,
    check_sums,
    fwd_mode,
    layout_case,
    load_cuda,
    offset_copy,
    op_labels,
    rand_labels,
    rand_x,
    spikes,
    strategy,
)


# --------------------------------------------------------------------------- CUDA no-sort sum pooling, 4 pixels a lane
# Strategy "nosort_quad" of suppix_pool (sum, avg and avg_spike where the rows fit 48 KiB):
# a lane adds the runs of one superpixel among 4 consecutive pixels in registers, and the
# warp folds the lanes' runs round by round; vector loads where P % 4 == 0 and x and labels
# are aligned to 4 elements, scalar loads otherwise, in the same order, so with the same
# bits. Opt-in (it has not passed the GPU check yet): these tests force it with
# ForceStrategy and count the forced calls. Float sums are checked against a float64 oracle
# within what rounding can explain, aux (counts, m) exactly.
NOSORT_QUAD = {"suppix_pool": "nosort_quad"}
QUAD_MODES = ["sum", "avg", "avg_spike"]
SUM_DTYPES = [
    pytest.param(torch.float32, id="f32"),
    pytest.param(torch.float64, id="f64"),
    pytest.param(torch.float16, id="f16"),
    pytest.param(torch.bfloat16, id="bf16"),
]
QUAD_LAYOUTS = ["quad", "odd_p", "unaligned_x", "unaligned_labels", "noncontig_x"]


def _quad(fn):
    """fn()'s result, its one suppix_pool call forced to "nosort_quad" (which must have run)."""
    with ForceStrategy(NOSORT_QUAD) as forced:
        out = fn()
    assert forced.runs == {"suppix_pool": 1}, "nosort_quad must have run"
    return out


@pytest.mark.cuda
@pytest.mark.parametrize("mode", QUAD_MODES)
@pytest.mark.parametrize("dtype", SUM_DTYPES)
@pytest.mark.parametrize("label_dtype", LABEL_DTYPES)
@pytest.mark.parametrize("form", LABEL_FORMS)
@pytest.mark.parametrize("layout", QUAD_LAYOUTS)
def test_cuda_nosort_quad_matches_reference(mode, dtype, label_dtype, form, layout, gen):
    """The 4-pixel kernel against the reference and the float64 oracle, every label form, label
    dtype and float dtype, on both variants: the vector loads (P = 1440, also for a
    non-contiguous x, which the op copies) and the scalar ones (P = 1443, or x or the labels
    one element off alignment), which must give the vector variant's bits. P = 1440: 8 warps
    of at most 256 pixels (2 steps of 128), warps 0-4 whole, warp 5 partial, warps 6 and 7
    empty. The labels have ignored
    pixels, an empty superpixel (K - 1), a run of one superpixel over 500 pixels (across
    quads, lanes, steps and warps), a quad of 4 runs (0 1 0 1) and one with an ignored pixel
    inside a run (2 -1 2 5). Two runs give the same bits."""
    load_cuda()
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
    x4, lab3 = x.reshape(T, B, C, P), op_labels(labels, form, T, B, P)
    xo, labo = layout_case(x4, lab3, layout)
    assert torch.equal(xo.cpu(), x4) and torch.equal(labo.cpu(), lab3)
    assert strategy("suppix_pool", xo, labo, K, mode) == "nosort", "nosort_quad is opt-in"
    y, aux = _quad(lambda: ops.suppix_pool(xo, labo, K, mode, True, ""))
    assert y.dtype == dtype and y.shape == (T, B, C, K)
    check_sums(y, aux, x4, lab3, K, mode, f"{layout}, {form}")
    assert torch.all(y[..., K - 1] == 0), "an empty superpixel pools to 0"
    # the reference, from the float64 values of x
    fmode, grad = fwd_mode(mode)
    ry = R.suppix_pool(x.double(), labels, num_superpixels=K, mode=fmode).reshape(T, B, C, K)
    tol = {
        torch.float32: dict(rtol=1e-5, atol=1e-4),
        torch.float64: dict(rtol=1e-10, atol=1e-10),
    }.get(dtype, dict(rtol=1e-2, atol=1e-2))
    torch.testing.assert_close(y.cpu().double(), ry, **tol)
    # the same bits on a second run, and in the other load variant
    y2, aux2 = _quad(lambda: ops.suppix_pool(xo, labo, K, mode, True, ""))
    assert torch.equal(bits(y2), bits(y)) and torch.equal(aux2, aux), "run to run"
    if layout != "odd_p" and layout != "quad":
        y3, aux3 = _quad(lambda: ops.suppix_pool(x4.cuda(), lab3.cuda(), K, mode, True, ""))
        assert torch.equal(bits(y3), bits(y)) and torch.equal(aux3, aux), "vector and scalar loads, same bits"


@pytest.mark.cuda
@pytest.mark.parametrize("mode", QUAD_MODES)
@pytest.mark.parametrize("dtype", SUM_DTYPES)
@pytest.mark.parametrize("label_dtype", LABEL_DTYPES)
@pytest.mark.parametrize("layout", ["quad", "odd_p", "unaligned_x"])
def test_cuda_nosort_quad_nan_inf_and_unchecked_labels(mode, dtype, label_dtype, layout, gen):
    """NaN, +-inf, zeros and -0.0 among the values, labels >= K with the check off (ignored; an
    int64 one of 2^32 + 1 too, which would read 1 if cast to int32 first): superpixel 0 has a
    NaN (y NaN), 1 a +inf (y +inf), 2 a +inf and a -inf (y NaN), 3 a -inf (y -inf), the others
    finite values, zeros and -0.0 (y finite, within rounding); NaNs and infinities on ignored
    pixels change nothing. avg_spike's m counts a NaN as non-zero and a -0.0 as zero, exactly."""
    load_cuda()
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
        xo = offset_copy(xo)
    y, aux = _quad(lambda: ops.suppix_pool(xo, lab.cuda(), K, mode, False, ""))
    check_sums(y, aux, x, lab, K, mode, layout)
    yc = y.cpu().double()
    assert yc[..., 0].isnan().all() and yc[..., 2].isnan().all(), "a NaN, or both infinities: NaN"
    assert (yc[..., 1] == math.inf).all() and (yc[..., 3] == -math.inf).all(), "one infinity"
    assert yc[..., 4:].isfinite().all(), "ignored pixels and labels >= K contribute nothing"
    y2, aux2 = _quad(lambda: ops.suppix_pool(xo, lab.cuda(), K, mode, False, ""))
    assert torch.equal(bits(y2), bits(y)) and torch.equal(aux2, aux), "run to run (NaN bits included)"


@pytest.mark.cuda
@pytest.mark.parametrize("mode", QUAD_MODES)
@pytest.mark.parametrize("P", [1, 3, 4, 5, 8, 127, 128, 132, 257, 512, 1020, 1025, 4100])
def test_cuda_nosort_quad_plane_sizes_and_edge_cases(mode, P, gen):
    """Plane sizes from one pixel (one lane, a partial quad) through one warp to the 8-warp cap
    (P = 4100: 640 pixels a warp, 5 steps of 128 for warps 0-5, 3 for warp 6 with a last
    step of 4 pixels, none for warp 7), each with
    random labels (per step and image); every pixel ignored (y = 0, aux = 0, no NaN); K = 1
    (one run over the plane: every lane of a warp in one group, the longest leader loop,
    checked against the oracle); and, where the rows fit, one pixel per superpixel: each pixel
    is added once to a +0.0 row, so y = x (avg: x / 1), value for value (a -0.0 of avg_spike's
    inputs pools to +0.0). (The vector-load variant runs where P % 4 == 0.)"""
    load_cuda()
    ops = torch.ops.snnspx
    T, B, C = 2, 2, 3
    x = spikes(gen, (T, B, C, P)) * rand_x(gen, (T, B, C, P)) if mode == "avg_spike" else rand_x(gen, (T, B, C, P))
    xd = x.cuda()
    K = 7
    lab = torch.randint(-1, K, (T, B, P), generator=gen)
    y, aux = _quad(lambda: ops.suppix_pool(xd, lab.cuda(), K, mode, True, ""))
    check_sums(y, aux, x, lab, K, mode, f"random labels, P = {P}")
    # every pixel ignored
    neg = torch.full((1, B, P), -1, dtype=torch.int64)
    y, aux = _quad(lambda: ops.suppix_pool(xd, neg.cuda(), 3, mode, True, ""))
    assert torch.all(y == 0) and not y.isnan().any() and torch.all(aux == 0)
    # K = 1: one run over the whole plane
    zeros = torch.zeros((1, 1, P), dtype=torch.int32)
    y, aux = _quad(lambda: ops.suppix_pool(xd, zeros.cuda(), 1, mode, True, ""))
    check_sums(y, aux, x, zeros, 1, mode, f"K = 1, P = {P}")
    # one pixel per superpixel, where the rows fit 48 KiB (8 bytes a superpixel and warp at most)
    if P <= 512:
        ident = torch.arange(P, dtype=torch.int64).reshape(1, 1, P)
        y, aux = _quad(lambda: ops.suppix_pool(xd, ident.cuda(), P, mode, True, ""))
        assert torch.equal(y.cpu(), x), "one pixel per superpixel copies x"
        check_sums(y, aux, x, ident, P, mode, f"identity, P = {P}")


@pytest.mark.cuda
@pytest.mark.parametrize("mode", QUAD_MODES)
@pytest.mark.parametrize("dtype", SUM_DTYPES)
@pytest.mark.parametrize("case", ["cells", "runs", "random"])
def test_cuda_nosort_quad_large_inputs(mode, dtype, case, gen):
    """Shapes the reference is too slow for, against the float64 oracle: 64 x 64 planes (8 warps
    of 4 steps) of the benchmark's 4 x 4 cells with K = 256 (one round a step), runs of 37
    pixels not aligned to quads plus one superpixel over 3000 pixels, and uniform random labels
    (up to 4 runs a lane). Three runs give the same bits, and so does the scalar-load variant
    (x one element off alignment); the backward takes the new aux."""
    load_cuda()
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
        runs.append(_quad(lambda: ops.suppix_pool(xd, labd, K, mode, False, "")))
    y, aux = runs[0]
    for y2, aux2 in runs[1:]:
        assert torch.equal(bits(y2), bits(y)) and torch.equal(aux2, aux), "run to run"
    check_sums(y, aux, x, lab, K, mode, case)
    y3, aux3 = _quad(lambda: ops.suppix_pool(offset_copy(xd), labd, K, mode, False, ""))
    assert torch.equal(bits(y3), bits(y)) and torch.equal(aux3, aux), "vector and scalar loads, same bits"
    g = rand_x(gen, (T, B, C, K), dtype)
    gx = ops.suppix_pool_backward(g.cuda(), labd, aux, mode, "")
    torch.testing.assert_close(gx.cpu(), ops.suppix_pool_backward(g, lab, aux.cpu(), mode, ""), rtol=0, atol=0)


@pytest.mark.cuda
def test_cuda_nosort_quad_kernel_choice(gen):
    """"nosort_quad" (opt-in: "" picks "nosort" there) applies to sum, avg and avg_spike of
    every dtype where the rows fit 48 KiB, with or without P % 4 == 0 and alignment (its
    scalar-load variant, the vector variant's bits), through the op and the functional API;
    not to max or to rows over 48 KiB ("" picks "sorted" there). Its results equal "sorted"'s
    counts exactly and the float64 oracle within rounding."""
    load_cuda()
    ops = torch.ops.snnspx
    T, B, C, H, W, K = 2, 2, 3, 32, 32, 50
    P = H * W
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        x = rand_x(gen, (T, B, C, P), dtype).cuda()
        lab = torch.randint(-1, K, (1, B, P), generator=gen).cuda()
        for mode in QUAD_MODES:
            assert strategy("suppix_pool", x, lab, K, mode) == "nosort", (dtype, mode)
            y, aux = ops.suppix_pool(x, lab, K, mode, True, "nosort_quad")
            check_sums(y, aux, x, lab, K, mode, f"nosort_quad, {dtype}")
            y0, aux0 = ops.suppix_pool(x[..., : P - 1], lab[..., : P - 1], K, mode, True, "nosort_quad")
            check_sums(y0, aux0, x[..., : P - 1], lab[..., : P - 1], K, mode, f"nosort_quad, P % 4 != 0, {dtype}")
            for xo, labo in ((offset_copy(x), lab), (x, offset_copy(lab))):
                yo, auxo = ops.suppix_pool(xo, labo, K, mode, True, "nosort_quad")
                assert torch.equal(bits(yo), bits(y)) and torch.equal(auxo, aux), "the scalar variant's bits"
            fmode, grad = fwd_mode(mode)
            with ForceStrategy(NOSORT_QUAD) as forced:
                yf = F.suppix_pool(x.reshape(T, B, C, H, W), lab.reshape(B, H, W), num_superpixels=K, mode=fmode,
                                   grad=grad, backend="cuda")
            assert forced.runs == {"suppix_pool": 1}, (dtype, mode)
            assert torch.equal(bits(yf), bits(y)), (dtype, mode, "the functional API")
        assert strategy("suppix_pool", x, lab, K, "max") == "nosort", dtype
        with pytest.raises(RuntimeError, match="suppix_pool: strategy 'nosort_quad' does not apply"):
            ops.suppix_pool(x, lab, K, "max", True, "nosort_quad")
    x = rand_x(gen, (T, B, C, P), torch.float32).cuda()
    lab = torch.randint(-1, 1536, (1, B, P), generator=gen).cuda()
    assert strategy("suppix_pool", x, lab, 1536, "sum") == "nosort", "8 warps * 1536 * 4 B = 48 KiB: fits"
    y, aux = ops.suppix_pool(x, lab, 1536, "sum", True, "nosort_quad")
    check_sums(y, aux, x, lab, 1536, "sum", "nosort_quad, K = 1536")
    assert strategy("suppix_pool", x, lab, 1537, "sum") == "sorted", "rows over 48 KiB: the sorted path"
    with pytest.raises(RuntimeError, match="suppix_pool: strategy 'nosort_quad' does not apply"):
        ops.suppix_pool(x, lab, 1537, "sum", True, "nosort_quad")
    y, aux = ops.suppix_pool(x, lab, 1537, "sum", True, "")
    check_sums(y, aux, x, lab, 1537, "sum", "sorted")
    lab = torch.randint(-1, K, (1, B, P), generator=gen).cuda()
    y0, aux0 = ops.suppix_pool(x, lab, K, "avg", True, "nosort_quad")
    with ForceStrategy(SORTED_ONE_PIXEL) as forced:
        y1, aux1 = ops.suppix_pool(x, lab, K, "avg", True, "")
    assert forced.runs == {"suppix_pool": 1}
    assert torch.equal(aux1, aux0)
    check_sums(y1, aux1, x, lab, K, "avg", "sorted")
    check_sums(y0, aux0, x, lab, K, "avg", "nosort_quad")
