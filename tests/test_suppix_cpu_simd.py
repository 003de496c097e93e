"""The CPU kernel's vector paths: the AVX-512 lookup of unpooling and the backward gathers
(strategy "avx512"), and the AVX2 pooling of 8 channels at once (strategy "avx2"). The values
of the default path against the reference run everywhere; the comparisons of the vector path
with the scalar loop (strategy "scalar") need a CPU with the instructions.
torch.ops.snnspx._strategy says which strategy an op's "" picks; ForceStrategy forces one."""

from __future__ import annotations

import math

import pytest
import torch

from snnspx import functional as F
from snnspx import reference as R
from suppix_helpers import (
    LABEL_FORMS,
    ForceStrategy,
    close,
    cpu_has,
    op_labels,
    rand_labels,
    rand_x,
    ref_pool_and_grad,
    spikes,
)

GATHERS = (("sum", "exact"), ("avg", "exact"), ("avg", "spike"))
GATHER_OPS = ("suppix_unpool", "suppix_pool_backward")


# --------------------------------------------------------------------------- the CPU's AVX-512 lookup


def _lookup_inputs(gen, K, P, form):
    T, B, C = 3, 2, 2
    H, W = P
    shape = {"shared": (H, W), "per_step": (T, B, H, W)}[form]
    labels = torch.randint(-2, K + 2, shape, generator=gen)
    return labels, rand_x(gen, (T, B, C, K)), spikes(gen, (T, B, C, H, W), p=0.5), rand_x(gen, (T, B, C, K))


def _lookup_run(labels, y, x, w, K):
    """float32 unpooling and the sum/avg/avg_spike backward gathers (labels >= K unchecked)."""
    out = {"unpool": F.suppix_unpool(y, labels, check_labels=False, backend="cpp")}
    for mode, grad in GATHERS:
        xg = x.clone().requires_grad_()
        y_k = F.suppix_pool(xg, labels, num_superpixels=K, mode=mode, grad=grad, check_labels=False, backend="cpp")
        (y_k * w).sum().backward()
        out[mode + grad] = xg.grad
    return out


def _lookup_check_reference(out, labels, y, x, w, K):
    """Bitwise the reference's unpooling and backward loops."""
    assert torch.equal(out["unpool"], R.suppix_unpool(y, labels, check_labels=False))
    for mode, grad in GATHERS:
        _, want = ref_pool_and_grad(x, torch.where(labels >= K, -1, labels), K, mode, w, grad)
        assert torch.equal(out[mode + grad], want), mode + grad


@pytest.mark.parametrize("K", [1, 65, 256])
@pytest.mark.parametrize("form", ["shared", "per_step"])
def test_cpu_gathers_match_reference(K, form, gen):
    """The default path of unpooling and the backward gathers, bitwise the reference, with
    ignored pixels, labels >= K (check_labels=False), empty superpixels and K on both sides of
    the lookup's register paths (on an AVX-512 machine the lookup runs here)."""
    labels, y, x, w = _lookup_inputs(gen, K, (5, 7), form)
    _lookup_check_reference(_lookup_run(labels, y, x, w, K), labels, y, x, w, K)


@pytest.mark.skipif(not cpu_has("avx512f"), reason="needs a CPU with AVX-512F")
@pytest.mark.parametrize("K", [1, 5, 16, 33, 64, 65, 128, 129, 200, 256])
@pytest.mark.parametrize("P", [(4, 4), (5, 7), (32, 33)])
@pytest.mark.parametrize("form", ["shared", "per_step"])
def test_cpu_simd_lookup_matches_scalar_and_reference(K, P, form, gen):
    """float32 unpooling and the sum/avg/avg_spike backward gathers take the AVX-512 lookup for
    K <= 256 (strategy "avx512", the default there: two-register permutes, one path up to 64,
    pairs of registers above); bitwise equal to the scalar loop (strategy "scalar") and to the
    reference, with ignored pixels, labels >= K (check_labels=False), empty superpixels and a
    partial last vector."""
    labels, y, x, w = _lookup_inputs(gen, K, P, form)
    T, B = x.shape[:2]
    lab = op_labels(labels, form, T, B, P[0] * P[1])
    for op in GATHER_OPS:
        for mode in ("sum", "avg", "avg_spike"):
            assert torch.ops.snnspx._strategy(op, y, lab, K, mode) == "avx512", (op, mode)
    with ForceStrategy(dict.fromkeys(GATHER_OPS, "scalar")) as forced:
        slow = _lookup_run(labels, y, x, w, K)
    assert forced.runs == {"suppix_unpool": 1, "suppix_pool_backward": 3}, "the scalar loop must have run"
    fast = _lookup_run(labels, y, x, w, K)  # strategy "": the AVX-512 lookup
    for name in fast:
        assert torch.equal(fast[name], slow[name]), name
    _lookup_check_reference(fast, labels, y, x, w, K)


@pytest.mark.skipif(not cpu_has("avx512f"), reason="needs a CPU with AVX-512F")
def test_cpu_simd_lookup_only_where_it_applies(gen):
    """K > 256, float64 and max's backward keep the scalar loop; forcing the lookup there
    fails, and so does a strategy of another device."""
    lab = torch.randint(0, 64, (1, 1, 36), generator=gen)
    ops = torch.ops.snnspx
    cases = [("suppix_unpool", rand_x(gen, (2, 1, 1, 257)), 257, "sum"),
             ("suppix_unpool", rand_x(gen, (2, 1, 1, 64), torch.float64), 64, "sum"),
             ("suppix_pool_backward", rand_x(gen, (2, 1, 1, 64)), 64, "max")]
    for op, y, K, mode in cases:
        assert ops._strategy(op, y, lab, K, mode) == "scalar", (op, K, mode)
    assert ops._strategy("suppix_unpool", rand_x(gen, (2, 1, 1, 256)), lab, 256, "sum") == "avx512"
    with pytest.raises(RuntimeError, match="suppix_unpool: strategy 'avx512' does not apply"):
        ops.suppix_unpool(rand_x(gen, (2, 1, 1, 257)), lab, False, "avx512")
    with pytest.raises(RuntimeError, match="suppix_unpool: strategy 'avx512' does not apply"):
        ops.suppix_unpool(rand_x(gen, (2, 1, 1, 64), torch.float64), lab, False, "avx512")
    y, aux = ops.suppix_pool(rand_x(gen, (2, 1, 1, 36)), lab, 64, "max", True, "")
    with pytest.raises(RuntimeError, match="suppix_pool_backward: strategy 'avx512' does not apply"):
        ops.suppix_pool_backward(y, lab, aux, "max", "avx512")
    with pytest.raises(RuntimeError, match="suppix_unpool: unknown strategy 'tiled'"):
        ops.suppix_unpool(rand_x(gen, (2, 1, 1, 4)), lab.clamp(max=3), False, "tiled")


# --------------------------------------------------------------------------- the CPU's AVX2 group pooling
def _op_labels(xs, labels):
    """labels [H, W] / [B, H, W] / [T, B, H, W] as the op takes them, [L, Bl, P], for xs [T, B, C, P]."""
    T, B = xs.shape[:2]
    L = T if labels.dim() == 4 else 1
    Bl = B if labels.dim() >= 3 else 1
    return labels.reshape(L, Bl, xs.shape[-1])


def _op_pool(xs, labels, K, mode, check_labels):
    """The CPU op's (y, aux) for xs [T, B, C, P] and labels [H, W] / [B, H, W] / [T, B, H, W]."""
    return torch.ops.snnspx.suppix_pool.default(xs, _op_labels(xs, labels), K, mode, check_labels, "")


def _group_and_scalar(xs, labels, K, mode, check_labels):
    """_op_pool with the AVX2 group path (strategy "avx2": the op's choice here, which
    _strategy must say) and forced to the scalar loop (strategy "scalar", which must run once)."""
    assert torch.ops.snnspx._strategy("suppix_pool", xs, _op_labels(xs, labels), K, mode) == "avx2"
    fast = _op_pool(xs, labels, K, mode, check_labels)
    with ForceStrategy({"suppix_pool": "scalar"}) as forced:
        slow = _op_pool(xs, labels, K, mode, check_labels)
    assert forced.runs == {"suppix_pool": 1}, "the scalar loop must have run"
    return fast, slow


def _ties_inputs(gen, C, HW, form, nan, K):
    """Halves with ties (-0.0 and +0.0 among them), a plane of -inf, ignored pixels, labels >= K,
    an empty superpixel K - 1 and, with `nan`, one NaN."""
    T, B = 2, 2
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
    return labels, x


def _check_ties_reference(y, aux, x, labels, K, mode):
    """The reference's values (max bit for bit, the sign of zeros included) and avg_spike's m."""
    T, B, C, H, W = x.shape
    masked = torch.where(labels >= K, -1, labels)
    ry = R.suppix_pool(x, masked, num_superpixels=K, mode="avg" if mode == "avg_spike" else mode)
    ry = ry.reshape(T, B, C, K)
    if mode == "avg_spike":  # m: the non-zero inputs of each superpixel (NaN counts)
        lab = masked.expand(T, B, H, W).reshape(T, B, 1, H * W)
        nz = (x.reshape(T, B, C, H * W) != 0) & (lab >= 0)
        idx = lab.clamp(min=0).expand(T, B, C, -1) + K * (lab < 0)
        m = torch.zeros(T, B, C, K + 1, dtype=torch.int64).scatter_add_(-1, idx, nz.long())
        assert torch.equal(aux.long(), m[..., :K])
    if mode == "max":
        torch.testing.assert_close(y, ry, rtol=0, atol=0, equal_nan=True)
        assert torch.equal(y.signbit(), ry.signbit())
    else:
        close(y.nan_to_num(), ry.nan_to_num(), mode)


@pytest.mark.parametrize("mode", ["sum", "avg", "avg_spike", "max"])
@pytest.mark.parametrize("form", ["shared", "per_step"])
@pytest.mark.parametrize("nan", [False, True])
def test_cpu_pool_ties_match_reference(mode, form, nan, gen):
    """The default path (the AVX2 group path on an AVX2 machine) on _ties_inputs, with a group of
    8 channels and 5 left over and a partial last block of pixels: the reference's values and m."""
    K = 6
    labels, x = _ties_inputs(gen, 13, (5, 7), form, nan, K)
    y, aux = _op_pool(x.reshape(*x.shape[:3], -1), labels, K, mode, False)
    _check_ties_reference(y, aux, x, labels, K, mode)


@pytest.mark.skipif(not cpu_has("avx2"), reason="needs a CPU with AVX2")
@pytest.mark.parametrize("mode", ["sum", "avg", "avg_spike", "max"])
@pytest.mark.parametrize("C", [8, 13, 16])
@pytest.mark.parametrize("HW", [(4, 4), (5, 7), (9, 9)])
@pytest.mark.parametrize("form", ["shared", "per_step"])
@pytest.mark.parametrize("nan", [False, True])
def test_cpu_group_pool_matches_scalar_and_reference(mode, C, HW, form, nan, gen):
    """float32 sum/avg/avg_spike/max pooling of 8 channels at once (AVX2) gives the scalar
    loop's bits (strategy "scalar"), values and aux (max's argmax, avg_spike's non-zero
    counts), and the reference's values: with ties
    (-0.0 and +0.0 among them), a plane of -inf, ignored pixels, labels >= K
    (check_labels=False), an empty superpixel, a partial last block of pixels, channels
    left over after the groups of 8 (C = 13), and a NaN (its group takes the exact path)."""
    K = 6
    labels, x = _ties_inputs(gen, C, HW, form, nan, K)
    xs = x.reshape(*x.shape[:3], -1)
    (y, aux), (y0, aux0) = _group_and_scalar(xs, labels, K, mode, False)
    assert torch.equal(y, y0) or (nan and torch.equal(y.isnan(), y0.isnan()) and torch.equal(y.nan_to_num(), y0.nan_to_num()))
    assert torch.equal(y.signbit(), y0.signbit()) and torch.equal(aux, aux0)
    _check_ties_reference(y, aux, x, labels, K, mode)


@pytest.mark.skipif(not cpu_has("avx2"), reason="needs a CPU with AVX2")
def test_cpu_group_pool_only_where_it_applies(gen):
    """Fewer than 8 channels, float64 and float16 keep the scalar loop; forcing AVX2 there
    fails, and so does a strategy of another device."""
    lab = torch.randint(0, 4, (1, 1, 25), generator=gen)
    ops = torch.ops.snnspx
    assert ops._strategy("suppix_pool", rand_x(gen, (2, 1, 8, 25)), lab, 4, "sum") == "avx2"
    assert ops._strategy("suppix_pool", rand_x(gen, (2, 1, 7, 25)), lab, 4, "sum") == "scalar"
    for dtype in (torch.float64, torch.float16):
        x = rand_x(gen, (2, 1, 8, 25), dtype)
        assert ops._strategy("suppix_pool", x, lab, 4, "max") == "scalar", dtype
        with pytest.raises(RuntimeError, match="suppix_pool: strategy 'avx2' does not apply"):
            ops.suppix_pool(x, lab, 4, "max", False, "avx2")
    with pytest.raises(RuntimeError, match="suppix_pool: strategy 'avx2' does not apply"):
        ops.suppix_pool(rand_x(gen, (2, 1, 7, 25)), lab, 4, "sum", False, "avx2")
    with pytest.raises(RuntimeError, match="suppix_pool: unknown strategy 'nosort'"):
        ops.suppix_pool(rand_x(gen, (2, 1, 8, 25)), lab, 4, "sum", False, "nosort")


def _random_inputs(gen, form, HW, K):
    """Random values (float32 sums that round), zeros among them, labels of `form` (all ignored
    for K = 0), and enough (t, b) for several parallel tasks."""
    T, B, C = 4, 8, 16
    H, W = HW
    labels = rand_labels(gen, form, T, B, H, W, max(K, 1), "cpu")
    if K == 0:
        labels = torch.full_like(labels, -1)
    x = rand_x(gen, (T, B, C, H, W))
    x[x.abs() < 0.3] = 0.0  # zeros for avg_spike's counts
    return labels, x


@pytest.mark.parametrize("mode", ["sum", "avg", "avg_spike", "max"])
@pytest.mark.parametrize("form", LABEL_FORMS)
def test_cpu_pool_random_values_match_reference(mode, form, gen):
    """The default path on _random_inputs (P = 81, K = 7): the reference's values."""
    K = 7
    labels, x = _random_inputs(gen, form, (9, 9), K)
    y, _ = _op_pool(x.reshape(*x.shape[:3], -1), labels, K, mode, True)
    ry = R.suppix_pool(x, labels, num_superpixels=K, mode="avg" if mode == "avg_spike" else mode)
    close(y, ry.reshape(y.shape), mode)


@pytest.mark.skipif(not cpu_has("avx2"), reason="needs a CPU with AVX2")
@pytest.mark.parametrize("mode", ["sum", "avg", "avg_spike", "max"])
@pytest.mark.parametrize("form", LABEL_FORMS)
@pytest.mark.parametrize("HW,K", [((1, 5), 3), ((9, 9), 7), ((9, 9), 0)], ids=["p5", "p81", "k0"])
def test_cpu_group_pool_random_values_match_scalar(mode, form, HW, K, gen):
    """Random values (float32 sums that round, unlike the halves of the test above), planes of
    fewer pixels than a vector block, K = 0, every label form, and enough (t, b) for several
    parallel tasks: the AVX2 group path gives the scalar loop's bits, values and aux."""
    labels, x = _random_inputs(gen, form, HW, K)
    T, B, C = x.shape[:3]
    xs = x.reshape(T, B, C, -1)
    (y, aux), (y0, aux0) = _group_and_scalar(xs, labels, K, mode, True)
    assert torch.equal(y, y0) and torch.equal(y.signbit(), y0.signbit()) and torch.equal(aux, aux0)
    if K:
        ry = R.suppix_pool(x, labels, num_superpixels=K, mode="avg" if mode == "avg_spike" else mode).reshape(T, B, C, K)
        close(y, ry, mode)
