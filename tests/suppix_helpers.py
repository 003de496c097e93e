"""Helpers shared by the superpixel pooling tests (tests/test_suppix_*.py): inputs, the op run
with autograd, the same values from snnspx.reference's forward and backward loops, and the
keyless oracles of the CUDA kernel tests (max pooling by scatter_reduce, sums in float64)."""

from __future__ import annotations

import math

import pytest
import torch

import snnspx
from snnspx import functional as F
from snnspx import reference as R
from conftest import ForceStrategy, rand_labels, rand_x  # noqa: F401  (re-exported for the test files)

MODES = ["sum", "avg", "max"]
ALL_MODES = ["sum", "avg", "max", "avg_spike"]  # the ops' internal modes
LABEL_FORMS = ["shared", "per_image", "per_step"]
LABEL_DTYPES = [pytest.param(torch.int32, id="i32"), pytest.param(torch.int64, id="i64")]

# The CUDA strategies that were the defaults before "nosort" and "tiled" (they passed the GPU
# check too): the sorted pooling and the one-pixel gathers. `with ForceStrategy(SORTED_ONE_PIXEL)`
# runs them wherever a call leaves the choice to the op.
SORTED_ONE_PIXEL = {"suppix_pool": "sorted", "suppix_pool_backward": "one_pixel", "suppix_unpool": "one_pixel"}


def load_cuda():
    F.suppix_counts(torch.zeros(1, 1, dtype=torch.int64, device="cuda"), num_superpixels=1)  # loads the cuda library


def strategy(op, x, labels, K, mode="sum"):
    """torch.ops.snnspx._strategy: the strategy that `op` runs with strategy "" for x (the op's
    first tensor, [T, B, C, P] or [T, B, C, K]) and labels [L, Bl, P]."""
    return torch.ops.snnspx._strategy(op, x, labels, K, mode)


@pytest.fixture(scope="module")
def cpp_loaded():
    """The cpp library loaded before a module's first test (where it builds), so that
    backend="torch" on the CPU is tested as users with the library get it: the PyTorch kernels
    chosen per call over the loaded CPU kernels, under the same autograd formula."""
    try:
        snnspx._build.load_library("cpu")
    except snnspx.BuildError:
        pass


def spikes(gen, shape, dtype=torch.float32, device="cpu", p=0.3):
    return (torch.rand(shape, generator=gen, dtype=torch.float64) < p).to(dtype).to(device)


def fwd_mode(mode):
    """(functional mode, grad) of an op mode."""
    return ("avg", "spike") if mode == "avg_spike" else (mode, "exact")


def op_labels(labels, form, T, B, P):
    """labels of `form` as the ops take them: [L, Bl, P]."""
    L, Bl = {"shared": (1, 1), "per_image": (1, B), "per_step": (T, B)}[form]
    return labels.reshape(L, Bl, P)


def close(got, want, msg=""):
    torch.testing.assert_close(got.cpu(), want.cpu(), msg=lambda m: f"{msg}: {m}")


# --------------------------------------------------------------------------- the op and the reference
def pool_and_grad(x, labels, K, mode, backend, w, grad="exact", **kw):
    """y = suppix_pool(x) and dL/dx for L = sum(y * w)."""
    xg = x.detach().clone().requires_grad_()
    y = F.suppix_pool(xg, labels, num_superpixels=K, mode=mode, grad=grad, backend=backend, **kw)
    (y * w).sum().backward()
    return y.detach(), xg.grad


def unpool_and_grad(y, labels, w, backend):
    """z = unpool(y) and dL/dy for L = sum(z * w); y's strides are kept."""
    yg = y.detach().clone(memory_format=torch.preserve_format).requires_grad_()
    z = F.suppix_unpool(yg, labels, backend=backend)
    (z * w).sum().backward()
    return z.detach(), yg.grad


def ref_pool_and_grad(x, labels, K, mode, w, grad="exact"):
    """The reference's y and dL/dx for L = sum(y * w) (its backward loop with grad_y = w), on the CPU."""
    x, labels, w = x.detach().cpu(), labels.cpu(), w.detach().cpu()
    y = R.suppix_pool(x, labels, num_superpixels=K, mode=mode)
    gx = R.suppix_pool_backward(w, x, labels, num_superpixels=K, mode=mode, grad=grad)
    return y, gx


def ref_unpool_and_grad(y, labels, w):
    """The reference's z and dL/dy for L = sum(z * w), on the CPU."""
    y, labels, w = y.detach().cpu(), labels.cpu(), w.detach().cpu()
    z = R.suppix_unpool(y, labels)
    return z, R.suppix_unpool_backward(w, labels, num_superpixels=y.shape[-1])


# --------------------------------------------------------------------------- CPU features
def cpu_has(flag: str) -> bool:
    """Whether /proc/cpuinfo lists the x86 feature `flag` (False where there is no such file)."""
    try:
        with open("/proc/cpuinfo") as f:
            return f" {flag}" in f.read()
    except OSError:
        return False


# --------------------------------------------------------------------------- float bits
_INT_OF = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}
# NaNs of each dtype by their bits: quiet, with payloads, negative, and a signalling one.
NAN_BITS = {
    torch.float32: [0x7FC00000, 0xFFC00123, 0x7FC0BEEF, 0x7F800001, 0xFFFFFFFF],
    torch.float16: [0x7E00, 0xFE21, 0x7E3F, 0x7C01, 0xFFFF],
    torch.bfloat16: [0x7FC0, 0xFFC5, 0x7FE1, 0x7F81, 0xFFFF],
}


def bits(t):
    """The raw bits of a float tensor as integers: compares -0.0 with +0.0 and NaN payloads."""
    return t.contiguous().view(_INT_OF[t.dtype])


def from_bits(values, dtype):
    width = 32 if dtype == torch.float32 else 16
    signed = [b - (1 << width) if b >= 1 << (width - 1) else b for b in values]
    return torch.tensor(signed, dtype=_INT_OF[dtype]).view(dtype)


def offset_copy(t):
    """t's values in a tensor that starts one element into its storage: contiguous, but not
    aligned for vector loads."""
    store = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)[1:]
    return store.copy_(t.reshape(-1)).view(t.shape)


def layout_case(x, labels, layout):
    """x and labels copied to the GPU as a layout case asks: "unaligned_x" / "unaligned_labels"
    one element off vector alignment, "noncontig_x" a non-contiguous x (same values)."""
    xd, labd = x.cuda(), labels.cuda()
    if layout == "unaligned_x":
        xd = offset_copy(xd)
    elif layout == "unaligned_labels":
        labd = offset_copy(labd)
    elif layout == "noncontig_x":
        xd = x.transpose(0, 2).contiguous().cuda().transpose(0, 2)
        assert not xd.is_contiguous()
    return xd, labd


# --------------------------------------------------------------------------- max oracle
def max_oracle(x, lab, K):
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
    xb = bits(x)
    y = torch.where(arg >= 0, xb.gather(-1, arg.clamp(min=0)), torch.zeros((), dtype=xb.dtype)).view(x.dtype)
    return y, arg.int()


def ref_argmax(x, labels, K):
    """The reference's argmax [T, B, C, K] (-1 where empty), read off its max backward: with
    dL/dy[k] = k + 1, only the argmax pixel of superpixel k gets k + 1."""
    T, B, C = x.shape[:3]
    w = (torch.arange(K, dtype=torch.float32) + 1).expand(T, B, C, K)
    _, g = ref_pool_and_grad(x.float(), labels, K, "max", w)
    hit = g.reshape(T, B, C, -1, 1) == w.reshape(T, B, C, 1, K)  # [T, B, C, P, K]
    assert torch.all(hit.sum(-2) <= 1), "one argmax pixel per superpixel"
    return torch.where(hit.any(-2), hit.int().argmax(-2), -1).int()


def special_max_inputs(gen, dtype, form, label_dtype, T, B, C, H, W, K):
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
    nans = from_bits(NAN_BITS[dtype], dtype)
    nan_pick = torch.randint(0, len(nans), (T, B, C, P), generator=gen)
    zeros = torch.where(torch.rand((T, B, C, P), generator=gen) < 0.5, -0.0, 0.0).to(dtype)
    x = torch.where(lab == 0, torch.tensor(-math.inf, dtype=dtype), x)
    x = torch.where(lab == 1, nans[nan_pick], x)
    x = torch.where(lab == 2, zeros, x)
    x = torch.where(lab == 3, -(x.float().nan_to_num(0.0).abs() + 1).to(dtype), x)
    return x.reshape(T, B, C, H, W), labels


def check_max(y, aux, x4, lab3, K, msg):
    """y, aux of a max pooling against max_oracle: the argmax exactly, y bit for bit."""
    want_y, want_arg = max_oracle(x4, lab3, K)
    assert torch.equal(aux.cpu(), want_arg), f"argmax ({msg})"
    assert torch.equal(bits(y.cpu()), bits(want_y)), f"y bits ({msg})"


# --------------------------------------------------------------------------- sum oracle
def sum_oracle(x4, lab3, K):
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


def check_sums(y, aux, x4, lab3, K, mode, msg):
    """y, aux of a sum / avg / avg_spike pooling against sum_oracle. y: NaN exactly where the
    oracle has NaN (a NaN, or both infinities, in the superpixel), the oracle's +-inf exactly,
    0 where a superpixel is empty, and otherwise within what rounding explains: the float
    (float64 for float64 inputs) sum in any order, the oracle's own float64 sum (the factor 2),
    the avg division and the rounding to y's dtype. aux: the counts [L, Bl, K] (sum, avg) or m
    [T, B, C, K] (avg_spike), exactly."""
    s, a, n, m, counts = sum_oracle(x4, lab3, K)
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
