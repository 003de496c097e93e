"""CUDA max pooling by 64-bit keys (skipped without a GPU): against the reference and a keyless
oracle, with NaN payloads, signed zeros, ties, vector and scalar loads, and large inputs."""

from __future__ import annotations

import math

import pytest
import torch

from snnspx import reference as R
from suppix_helpers import (
    LABEL_DTYPES,
    LABEL_FORMS,
    NAN_BITS,
    ForceStrategy,
    bits,
    check_max,
    from_bits,
    layout_case,
    load_cuda,
    op_labels,
    pool_and_grad,
    rand_x,
    ref_argmax,
    ref_pool_and_grad,
    special_max_inputs,
    strategy,
)


# --------------------------------------------------------------------------- CUDA max pooling by keys
# Strategy "max_key" of suppix_pool (max of float32, float16 and bfloat16, K <= 6144): the max
# of 64-bit keys (ordered value, then the inverted pixel index), y read back from x at the
# argmax; a vector-load variant where P % 4 == 0 and x and labels are aligned to 4 elements,
# a scalar one otherwise. Opt-in (it has not passed the GPU check yet): these tests force it
# with ForceStrategy and count the forced calls.
MAX_KEY = {"suppix_pool": "max_key"}
KEY_DTYPES = [
    pytest.param(torch.float32, id="f32"),
    pytest.param(torch.float16, id="f16"),
    pytest.param(torch.bfloat16, id="bf16"),
]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", KEY_DTYPES)
@pytest.mark.parametrize("label_dtype", LABEL_DTYPES)
@pytest.mark.parametrize("form", LABEL_FORMS)
@pytest.mark.parametrize("layout", ["quad", "odd_p", "unaligned_x", "unaligned_labels", "noncontig_x"])
def test_cuda_max_key_matches_reference(dtype, label_dtype, form, layout, gen):
    """The key kernel against the reference, elementwise: y (NaN where the reference has NaN,
    -0.0 where it has -0.0) and the argmax (read off the reference's backward), with ties,
    +-0.0 ties, several NaNs in a superpixel (the lowest wins, y keeps that NaN's bits),
    a superpixel of -inf only, one of negative values only, an empty one and ignored pixels;
    the max backward against the reference. Layouts: the vector-load variant (P % 4 == 0,
    also for a non-contiguous x, which the op copies) and the scalar one (P % 4 != 0, x or
    labels one element off alignment)."""
    load_cuda()
    T, B, C, K = 2, 2, 3, 9
    H, W = (5, 7) if layout == "odd_p" else (8, 12)
    P = H * W
    x, labels = special_max_inputs(gen, dtype, form, label_dtype, T, B, C, H, W, K)
    xd, labd = layout_case(x, labels, layout)
    xo, labo = xd.reshape(T, B, C, P), op_labels(labd, form, T, B, P)
    assert torch.equal(bits(xo.cpu()), bits(x.reshape(T, B, C, P)))
    assert torch.equal(labo.cpu(), op_labels(labels, form, T, B, P))
    assert strategy("suppix_pool", xo, labo, K, "max") == "nosort", "max_key is opt-in"
    with ForceStrategy(MAX_KEY) as forced:
        y, aux = torch.ops.snnspx.suppix_pool(xo, labo, K, "max", True, "")
    assert forced.runs == {"suppix_pool": 1}
    # the reference: values (NaN and the sign of zeros included) and the argmax
    ry = R.suppix_pool(x, labels, num_superpixels=K, mode="max")
    torch.testing.assert_close(y.cpu(), ry.reshape(T, B, C, K), rtol=0, atol=0, equal_nan=True)
    num = ~ry.isnan()
    assert torch.equal(y.cpu().signbit()[num.reshape(T, B, C, K)], ry.signbit()[num]), "the sign of a zero"
    assert torch.equal(aux.cpu(), ref_argmax(x, labels, K)), "argmax"
    assert torch.all(aux[..., K - 1] == -1) and torch.all(y[..., K - 1] == 0), "an empty superpixel"
    assert torch.all(y[..., 0] == -math.inf) and torch.all(y[..., 1].isnan()), "-inf only, NaN only"
    assert torch.all(y[..., 3] < 0), "negative values only"
    # y has the exact bits of x at the argmax (NaN payloads, -0.0), as the oracle says
    check_max(y, aux, x.reshape(T, B, C, P), op_labels(labels, form, T, B, P), K, layout)
    # the backward: dL/dy[k] to the argmax pixel only, as the reference's
    w = rand_x(gen, (T, B, C, K), dtype)
    gx = torch.ops.snnspx.suppix_pool_backward(w.cuda(), labo, aux, "max", "")
    _, rgx = ref_pool_and_grad(x.float(), labels, K, "max", w.float())
    assert torch.equal(gx.cpu().float(), rgx.reshape(T, B, C, P)), "max backward"
    # and through autograd
    with ForceStrategy(MAX_KEY) as forced:
        yf, gxf = pool_and_grad(xd, labd, K, "max", "cuda", w.cuda())
    assert forced.runs == {"suppix_pool": 1}
    assert torch.equal(bits(yf.reshape(T, B, C, K)), bits(y))
    assert torch.equal(gxf.reshape(T, B, C, P), gx)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", KEY_DTYPES)
@pytest.mark.parametrize("label_dtype", LABEL_DTYPES)
def test_cuda_max_key_by_hand(dtype, label_dtype):
    """Worked cases, on both variants (P = 12 and, with an ignored 13th pixel, P = 13):
    +-0.0 ties keep the lowest pixel's zero and its sign; NaNs beat numbers, the lowest NaN
    wins with its bits; -inf only; negative values only; an empty superpixel; labels >= K
    ignored when unchecked; every label negative; K = 1."""
    load_cuda()
    nan_a, nan_b, nan_c = from_bits(NAN_BITS[dtype][1:4], dtype)  # distinct payloads and signs
    inf = math.inf
    # k:    0     0    0     0    1    1    1    1    2     2     3     3     (NaNs set below)
    row0 = [-0.0, 0.0, -0.0, 0.0, 0.0, 0.0, 5.0, 0.0, -inf, -inf, -3.0, -2.0]
    row1 = [0.0, -0.0, 0.0, -0.0, 7.0, 0.0, 7.0, 0.0, -inf, -1.0, -2.0, -2.0]
    lab12 = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 3, 3]
    for P in (12, 13):
        x = torch.tensor([row0, row1], dtype=torch.float32).to(dtype)
        x[0, 4], x[0, 5], x[0, 7] = nan_a, nan_b, nan_c  # copies: the bits stay
        x[1, 5], x[1, 7] = nan_b, nan_a
        if P == 13:
            x = torch.cat([x, torch.full((2, 1), 99.0, dtype=dtype)], 1)
        x4 = x.reshape(1, 1, 2, P)
        lab = torch.tensor(lab12 + [-1] * (P - 12), dtype=label_dtype).reshape(1, 1, P)
        y, aux = torch.ops.snnspx.suppix_pool(x4.cuda(), lab.cuda(), 5, "max", True, "max_key")
        assert aux.cpu().reshape(2, 5).tolist() == [[0, 4, 8, 11, -1], [0, 5, 9, 10, -1]]
        yb = bits(y.cpu().reshape(2, 5)).tolist()
        xb = bits(x).tolist()
        assert yb[0] == [xb[0][0], xb[0][4], xb[0][8], xb[0][11], 0], "-0.0, nan_a, -inf, -2, empty"
        assert yb[1] == [xb[1][0], xb[1][5], xb[1][9], xb[1][10], 0], "+0.0, nan_b, -1, -2, empty"
        assert xb[0][4] != xb[0][5] and xb[1][5] != xb[1][7], "the NaNs differ in their bits"
        assert y[0, 0, 0, 0].signbit() and not y[0, 0, 1, 0].signbit()
        # unchecked labels >= K are ignored: label 7 on the NaNs of superpixel 1
        lab_big = lab.clone()
        lab_big[..., [4, 5, 7]] = 7
        if label_dtype == torch.int64:
            lab_big[..., 7] = 2**32 + 1  # never cast to int32 before the range test (it would read 1)
        y2, aux2 = torch.ops.snnspx.suppix_pool(x4.cuda(), lab_big.cuda(), 5, "max", False, "max_key")
        assert aux2.cpu().reshape(2, 5)[:, 1].tolist() == [6, 6] and y2.cpu().reshape(2, 5)[:, 1].tolist() == [5.0, 7.0]
        # every label negative: y = 0 (not NaN), argmax -1
        y3, aux3 = torch.ops.snnspx.suppix_pool(x4.cuda(), torch.full_like(lab, -1).cuda(), 5, "max", True, "max_key")
        assert torch.all(y3 == 0) and not y3.isnan().any() and torch.all(aux3 == -1)
        # K = 1 over all pixels: the first NaN
        y4, aux4 = torch.ops.snnspx.suppix_pool(x4.cuda(), torch.zeros_like(lab).cuda(), 1, "max", True, "max_key")
        assert aux4.cpu().flatten().tolist() == [4, 5]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", KEY_DTYPES)
@pytest.mark.parametrize(
    "case", ["channel_groups_8", "channel_groups_4", "tiles", "tiles_odd_p", "k1", "runs", "ascending", "k6144"]
)
def test_cuda_max_key_large_inputs(dtype, case, gen):
    """Shapes the reference is too slow for, against the keyless oracle (argmax exactly, y bit
    for bit), three runs bitwise equal, and the backward: 8 and 4 channels per block (T * B * C
    of 32792 and 16408) with a partial last group of 3, several tiles of 1024 pixels with a
    partial last one (and P % 4 != 0), K = 1 (every lane of a warp in one run), long runs of
    one label across lanes and warps, ascending values in one superpixel (the most
    compare-and-swap retries), and K = 6144 (48 KiB of keys)."""
    load_cuda()
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
    x, labels = special_max_inputs(gen, dtype, "per_image", torch.int64, T, B, C, H, W, max(K, 5))
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
    with ForceStrategy(MAX_KEY) as forced:
        runs = [torch.ops.snnspx.suppix_pool(xd, labd, K, "max", True, "") for _ in range(3)]
    assert forced.runs == {"suppix_pool": 3}
    for y, aux in runs[1:]:
        assert torch.equal(bits(y), bits(runs[0][0])) and torch.equal(aux, runs[0][1]), "run to run"
    y, aux = runs[0]
    check_max(y, aux, x, lab, K, case)
    g = rand_x(gen, (T, B, C, K), dtype)
    gx = torch.ops.snnspx.suppix_pool_backward(g.cuda(), labd, aux, "max", "")
    idx = torch.where(aux.cpu() >= 0, aux.cpu(), P).long()
    want = torch.zeros(T, B, C, P + 1, dtype=dtype).scatter_(-1, idx, g)[..., :P]
    assert torch.equal(gx.cpu(), want), "the gradient goes to the argmax pixel only"


@pytest.mark.cuda
def test_cuda_max_key_kernel_choice(gen):
    """"max_key" applies to max of float32, float16 and bfloat16 with K <= 6144 (never the
    default: it has not passed the GPU check yet, so "" runs "nosort" or, where the warp rows
    exceed 48 KiB, "sorted"); float64 max, K = 6145 and the other modes reject it, and it
    gives the values and argmax of "nosort" and "sorted"."""
    load_cuda()
    ops = torch.ops.snnspx
    T, B, C, P = 2, 2, 3, 1024

    def inputs(dtype, K):
        return rand_x(gen, (T, B, C, P), dtype).cuda(), torch.randint(-1, K, (1, B, P), generator=gen).cuda()

    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        x, lab = inputs(dtype, 6144)
        # the warp rows of "nosort" need 8 warps * 6144 * 8 B here: "" runs "sorted"
        assert strategy("suppix_pool", x, lab, 6144, "max") == "sorted", dtype
        y, aux = ops.suppix_pool(x, lab, 6144, "max", True, "max_key")
        check_max(y, aux, x, lab, 6144, f"max_key, {dtype}")
    for dtype, K in ((torch.float32, 6145), (torch.float64, 50)):
        x, lab = inputs(dtype, K)
        assert strategy("suppix_pool", x, lab, K, "max") == ("sorted" if K > 6144 else "nosort"), (dtype, K)
        with pytest.raises(RuntimeError, match="suppix_pool: strategy 'max_key' does not apply"):
            ops.suppix_pool(x, lab, K, "max", True, "max_key")
    x, lab = inputs(torch.float32, 6145)
    y, aux = ops.suppix_pool(x, lab, 6145, "max", True, "")
    check_max(y, aux, x, lab, 6145, "sorted")
    x, lab = inputs(torch.float32, 50)
    for mode in ("sum", "avg", "avg_spike"):
        assert strategy("suppix_pool", x, lab, 50, mode) == "nosort", mode
        with pytest.raises(RuntimeError, match="suppix_pool: strategy 'max_key' does not apply"):
            ops.suppix_pool(x, lab, 50, mode, True, "max_key")
    x, lab = inputs(torch.float16, 50)
    y, aux = ops.suppix_pool(x, lab, 50, "max", True, "max_key")
    for name in ("", "nosort", "sorted"):
        y1, aux1 = ops.suppix_pool(x, lab, 50, "max", True, name)
        assert torch.equal(aux1, aux), name
        torch.testing.assert_close(y1, y, rtol=0, atol=0)
