"""Fused SRM + superpixel pooling (docs/maths.md §6): values and gradients on every backend
against the plain loops of snnspx.reference, edge cases, errors, label checks, the bits of the
unfused composition, the op registration (opcheck, torch.compile) and the module.

Which kernel serves each backend, memory, and the CUDA kernels and graphs: test_fused_kernels.py.
"""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch

import snnspx
from snnspx import functional as F
from snnspx import reference as R
from snnspx.params import decode_variant
from conftest import COMPILED, DTYPES, GRID

MODES = ["sum", "avg", "max"]


# --------------------------------------------------------------------------- helpers (also for test_fused_kernels.py)
def currents(gen, shape, dtype=torch.float32, device="cpu"):
    return (torch.randn(shape, generator=gen, dtype=torch.float64) + 0.5).to(dtype).to(device)


def make_labels(gen, form, T, B, H, W, K, dtype=torch.int64, device="cpu"):
    shape = {"shared": (H, W), "batch": (B, H, W), "step": (T, B, H, W)}[form]
    lab = torch.randint(-1, K, shape, generator=gen)  # -1: ignored pixels
    lab.view(-1)[0] = K - 1  # K is what the caller says, also when inferred
    return lab.to(dtype).to(device)


def fused(x, labels, K, mode, backend=None, **kw):
    return F.srm_suppix_pool(x, labels, num_superpixels=K, mode=mode, backend=backend, **kw)


def oracle(x, labels, K, mode, **neuron):
    """The reference y (on the CPU): reference pooling of the reference SRM spikes."""
    return R.srm_suppix_pool(x.detach().cpu(), labels.cpu(), num_superpixels=K, mode=mode, **neuron)


def oracle_grad(grad_y, x, labels, K, mode, **neuron):
    """The reference x.grad (on the CPU) for the gradient grad_y of y."""
    return R.srm_suppix_pool_backward(
        grad_y.detach().cpu(), x.detach().cpu(), labels.cpu(), num_superpixels=K, mode=mode, **neuron
    )


def check_against_reference(x, labels, K, mode, backend, gen, **neuron):
    """Fused y == the reference bitwise and x.grad close to the reference gradient, for a random
    weighting of y. Returns y, the fused gradient and the reference gradient."""
    T, B, C = x.shape[:3]
    w = torch.randn((T, B, C, K), generator=gen, dtype=torch.float64).to(x.dtype)
    xg = x.clone().requires_grad_()  # clone keeps the strides of x
    y = fused(xg, labels, K, mode, backend, **neuron)
    (y * w.to(x.device)).sum().backward()
    want = oracle(x, labels, K, mode, **neuron)
    assert torch.equal(y.detach().cpu(), want), f"fused != reference ({backend}, {mode})"
    want_grad = oracle_grad(w, x, labels, K, mode, **neuron)
    torch.testing.assert_close(xg.grad.cpu(), want_grad)
    return y, xg.grad, want_grad


# --------------------------------------------------------------------------- values against the reference
@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("form", ["shared", "batch", "step"])
@pytest.mark.parametrize("label_dtype", [torch.int32, torch.int64], ids=["i32", "i64"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_equals_reference(backend, device, mode, form, label_dtype, dtype, gen):
    T, B, C, H, W, K = 9, 2, 3, 5, 7, 6
    x = currents(gen, (T, B, C, H, W), dtype, device)
    labels = make_labels(gen, form, T, B, H, W, K, label_dtype, device)
    y = fused(x, labels, K, mode, backend)
    assert y.shape == (T, B, C, K) and y.dtype == x.dtype
    assert torch.equal(y.cpu(), oracle(x, labels, K, mode)), f"fused != reference ({backend}, {mode}, {form})"


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_gradient_equals_reference_gradient(backend, device, mode, dtype, gen):
    T, B, C, H, W, K = 12, 2, 2, 4, 5, 4
    x = currents(gen, (T, B, C, H, W), dtype, device)
    labels = make_labels(gen, "batch", T, B, H, W, K, device=device)
    w = torch.randn((T, B, C, K), generator=gen, dtype=torch.float64).to(dtype).to(device)
    xg = x.clone().requires_grad_()
    (fused(xg, labels, K, mode, backend, du_inv_clamp=3.0) * w).sum().backward()
    want = oracle_grad(w, x, labels, K, mode, du_inv_clamp=3.0)
    assert want.abs().sum() > 0, "the test should exercise a non-zero gradient"
    torch.testing.assert_close(xg.grad.cpu(), want)


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", range(1, 12))
def test_fused_variants_equal_reference(backend, device, dtype, variant, gen):
    """The neuron variants (docs/maths.md, "Neuron variants"; the other tests run variant 0):
    y bit for bit and x.grad against the reference, in every mode. The CUDA kernels run the
    default neuron only: backend="cuda" refuses the others."""
    neuron = decode_variant(variant)
    T, B, C, H, W, K = 8, 2, 2, 3, 4, 4
    x = currents(gen, (T, B, C, H, W), dtype, device)
    labels = make_labels(gen, "batch", T, B, H, W, K, device=device)
    if backend == "cuda":
        with pytest.raises(ValueError, match="run CUDA tensors with backend='torch'"):
            fused(x, labels, K, "avg", backend, **neuron)
        return
    for mode in MODES:
        y, _, want_grad = check_against_reference(x, labels, K, mode, backend, gen, **neuron)
        assert y.sum() > 0 and want_grad.abs().sum() > 0


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("form", ["shared", "step"])
def test_fused_large_images_span_kernel_blocks(backend, device, mode, form, gen):
    # 23 x 29 = 667 pixels: several of the CPU kernel's 256-pixel blocks, a ragged last
    # block, and superpixels (few labels, so large ones) whose pixels lie in more than one
    # block; max's argmax must be the lowest spiking index over all blocks.
    T, B, C, H, W, K = 6, 2, 2, 23, 29, 3
    x = currents(gen, (T, B, C, H, W), device=device) * 0.7
    labels = make_labels(gen, form, T, B, H, W, K, device=device)
    _, _, want_grad = check_against_reference(x, labels, K, mode, backend, gen)
    assert want_grad.abs().sum() > 0


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("mode", MODES)
def test_fused_many_steps_and_superpixels(backend, device, mode, gen):
    # T * (K + 1) > 2**18, so that the CPU kernel keeps a single spike histogram (its four
    # interleaved copies are capped at 2**20 counts), most superpixels empty.
    T, B, C, H, W, K = 70, 1, 1, 6, 7, 4000
    x = currents(gen, (T, B, C, H, W), device=device)
    labels = make_labels(gen, "batch", T, B, H, W, K, device=device)
    check_against_reference(x, labels, K, mode, backend, gen)


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_fused_half_precision(backend, device, mode, dtype, gen):
    # Half inputs run float32 neuron state (docs/maths.md's precision rule); the pooled spikes are
    # then the reference's, and the gradient is the reference one in the input's dtype.
    T, B, C, H, W, K = 8, 2, 2, 6, 7, 5
    x = currents(gen, (T, B, C, H, W), dtype, device)
    labels = make_labels(gen, "batch", T, B, H, W, K, device=device)
    y, grad, _ = check_against_reference(x, labels, K, mode, backend, gen)
    assert y.dtype == dtype and grad.dtype == dtype


# --------------------------------------------------------------------------- edge cases
@pytest.mark.parametrize("backend,device", GRID)
def test_fused_edge_cases(backend, device, gen):
    # T = 1, an empty superpixel (K larger than any label), all-negative images, K = 1.
    x = currents(gen, (1, 2, 2, 3, 3), device=device) * 4
    labels = torch.tensor([[[0, 0, 1], [1, 1, 0], [-1, 0, 1]], [[-1] * 3] * 3], device=device)
    for K in (2, 5):
        for mode in MODES:
            y = fused(x, labels, K, mode, backend)
            assert torch.isfinite(y).all()
            assert torch.equal(y.cpu(), oracle(x, labels, K, mode))
            assert torch.all(y[:, 1] == 0), "an image with no labelled pixel pools to zeros"
            assert torch.all(y[..., 2:] == 0), "empty superpixels pool to 0, not NaN"
    one = torch.zeros(3, 3, dtype=torch.long, device=device)
    y = fused(x, one, None, "sum", backend)
    assert y.shape[-1] == 1
    assert torch.equal(y.cpu(), R.srm_forward(x.cpu())[0].sum((-1, -2)).unsqueeze(-1))


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("mode", MODES)
def test_fused_edge_case_gradients(backend, device, mode, gen):
    """T = 1, empty superpixels, an image without labelled pixels, labels far below -1 and
    all-zero or huge inputs: output and gradient equal the reference's."""
    x = currents(gen, (1, 2, 2, 3, 3), device=device) * 4
    labels = torch.tensor([[[0, 0, 1], [1, 1, 0], [-1, 0, 1]], [[-1, -5, -(2**40)]] * 3], device=device)
    for K in (2, 5):
        y, _, _ = check_against_reference(x, labels, K, mode, backend, gen)
        assert torch.all(y[:, 1] == 0) and torch.all(y[..., 2:] == 0)
    long_x = currents(gen, (6, 2, 2, 3, 3), device=device)
    for scale in (0.0, 1e30):
        check_against_reference(long_x * scale, labels, 3, mode, backend, gen)
    i32 = torch.where(labels < -(2**31), -(2**31), labels).int()
    check_against_reference(long_x, i32, 3, mode, backend, gen)


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("mode", MODES)
def test_fused_threshold_tie(backend, device, mode, gen):
    """A membrane exactly at v_th does not spike (strict >) and one ulp lower does, in the fused
    op as in the neuron; the gradient is the reference's in both cases."""
    x = torch.tensor([3.0, 2.0, 5.0], device=device).reshape(1, 1, 1, 1, 3)
    labels = torch.tensor([[0, 1, 2]], device=device)  # one pixel per superpixel
    _, du, _ = R.srm_forward(x.reshape(1, 3).cpu())  # T = 1: the membrane is du
    for n in range(3):
        u = du[0, n].item()
        below = torch.nextafter(torch.tensor(u, dtype=torch.float32), torch.tensor(-1e30)).item()
        for v_th, spikes in ((u, 0.0), (below, 1.0)):
            y = fused(x, labels, 3, mode, backend, v_th=v_th)
            assert y[0, 0, 0, n].item() == spikes, f"u = {u}, v_th = {v_th}"
            assert torch.equal(y.cpu(), oracle(x, labels, 3, mode, v_th=v_th))
            xg = x.clone().requires_grad_()
            w = torch.randn(1, 1, 1, 3, generator=gen).to(device)
            (fused(xg, labels, 3, mode, backend, v_th=v_th) * w).sum().backward()
            torch.testing.assert_close(xg.grad.cpu(), oracle_grad(w, x, labels, 3, mode, v_th=v_th))


@pytest.mark.parametrize("backend,device", GRID)
@pytest.mark.parametrize("mode", MODES)
def test_fused_no_superpixels_trains(backend, device, mode, gen):
    # Every label negative and K inferred: K = 0, an empty output, and a gradient that is
    # exactly zero (the backward still runs and walks back every neuron).
    x = (currents(gen, (5, 2, 3, 4, 4), device=device) * 3).requires_grad_()
    labels = torch.full((2, 4, 4), -1, dtype=torch.long, device=device)
    y = fused(x, labels, None, mode, backend)
    assert y.shape == (5, 2, 3, 0)
    (y.sum() + 0 * x.sum()).backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    # the reference on the same edge case
    assert torch.equal(oracle(x, labels, None, mode), y.detach().cpu())
    assert torch.equal(oracle_grad(torch.ones_like(y), x, labels, None, mode), x.grad.cpu())


@pytest.mark.parametrize("backend,device", GRID)
def test_fused_noncontiguous_and_long_T(backend, device, gen):
    base = currents(gen, (2, 3, 40, 5, 6), device=device)
    x = base.permute(2, 0, 1, 3, 4)  # [T=40, B, C, H, W], not contiguous
    labels = make_labels(gen, "batch", 40, 2, 5, 6, 5, device=device)
    for mode in MODES:
        y = fused(x, labels, 5, mode, backend)
        assert torch.equal(y, fused(x.contiguous(), labels, 5, mode, backend))
        assert torch.equal(y.cpu(), oracle(x, labels, 5, mode))
        # the gradient through the non-contiguous x (clone keeps its strides)
        assert not x.clone().is_contiguous()
        check_against_reference(x, labels, 5, mode, backend, gen)
    # per-step labels as a transposed [B, T, H, W] view (what batch_first modules pass on):
    # the same results, and no warning from any layer below
    lab_bt = make_labels(gen, "step", 2, 40, 5, 6, 5, device=device)  # [B=2, T=40, H, W]
    lab_tb = lab_bt.transpose(0, 1)
    assert not lab_tb.is_contiguous()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for mode in MODES:
            check_against_reference(x, lab_tb, 5, mode, backend, gen)
    # a long run of steps
    x300 = currents(gen, (300, 1, 2, 3, 4), device=device)
    lab300 = make_labels(gen, "batch", 300, 1, 3, 4, 4, device=device)
    for mode in MODES:
        check_against_reference(x300, lab300, 4, mode, backend, gen)


# --------------------------------------------------------------------------- arguments and labels
@pytest.mark.parametrize("backend,device", GRID)
def test_fused_errors(backend, device):
    x = torch.randn(3, 1, 1, 2, 2, device=device)
    labels = torch.tensor([[0, 1], [2, 3]], device=device)
    with pytest.raises(ValueError, match="labels must be < num_superpixels"):
        fused(x, labels, 3, "avg", backend)
    with pytest.raises(TypeError, match="labels must be an int32 or int64"):
        fused(x, labels.float(), 4, "avg", backend)
    with pytest.raises(ValueError, match="mode must be one of"):
        fused(x, labels, 4, "median", backend)
    with pytest.raises(ValueError, match=r"x must be \[T, B, C, H, W\]"):
        fused(x[0], labels, 4, "avg", backend)
    with pytest.raises(ValueError, match="labels must cover"):
        fused(x, labels[:1], 4, "avg", backend)
    # every argument after the tensors is keyword-only; "reference" is no backend
    with pytest.raises(TypeError, match="positional"):
        F.srm_suppix_pool(x, labels, 4, backend=backend)
    with pytest.raises(ValueError, match="'reference' is not a backend"):
        fused(x, labels, 4, "avg", "reference")


@pytest.mark.parametrize("backend,device", GRID)
def test_fused_check_labels(backend, device, gen):
    """A label >= K fails in inference and training; check_labels=False ignores those
    pixels instead, exactly like negative labels."""
    _check_labels_flag(backend, device, gen)


def _check_labels_flag(backend, device, gen):
    T, B, C, H, W, K = 6, 2, 3, 4, 5, 4
    x = currents(gen, (T, B, C, H, W), device=device) * 2
    labels = make_labels(gen, "batch", T, B, H, W, K + 3, device=device)  # labels up to K + 2
    for grad in (False, True):
        with pytest.raises(ValueError, match=f"labels must be < num_superpixels = {K}"):
            fused(x.clone().requires_grad_(grad), labels, K, "sum", backend)
    masked = torch.where(labels >= K, -1, labels)
    for mode in MODES:
        xg, xm = x.clone().requires_grad_(), x.clone().requires_grad_()
        y = fused(xg, labels, K, mode, backend, check_labels=False)
        want = fused(xm, masked, K, mode, backend)
        assert torch.equal(y, want)
        w = torch.randn(y.shape, generator=gen).to(device)
        (y * w).sum().backward()
        (want * w).sum().backward()
        assert torch.equal(xg.grad, xm.grad)
        with torch.no_grad():
            assert torch.equal(fused(x, labels, K, mode, backend, check_labels=False), want)


def test_reference_check_labels(gen):
    """The checks above on the reference itself (it ran there as a backend): a label >= K
    raises; with check_labels=False the reference's y, and its backward's x.grad (which ignores
    labels >= K), are those of the labels with such pixels masked."""
    T, B, C, H, W, K = 6, 2, 3, 4, 5, 4
    x = currents(gen, (T, B, C, H, W)) * 2
    labels = make_labels(gen, "batch", T, B, H, W, K + 3)  # labels up to K + 2
    with pytest.raises(ValueError, match=f"labels must be < num_superpixels = {K}"):
        R.srm_suppix_pool(x, labels, num_superpixels=K, mode="sum")
    masked = torch.where(labels >= K, -1, labels)
    for mode in MODES:
        y = R.srm_suppix_pool(x, labels, num_superpixels=K, mode=mode, check_labels=False)
        assert torch.equal(y, oracle(x, masked, K, mode))
        w = torch.randn(y.shape, generator=gen)
        assert torch.equal(oracle_grad(w, x, labels, K, mode), oracle_grad(w, x, masked, K, mode))


@pytest.mark.parametrize("mode", MODES)
def test_reference_fused_check_labels_matches_cpp(mode, gen):
    """reference.srm_suppix_pool takes check_labels like the functional op, with the same meaning."""
    T, B, C, H, W, K = 5, 2, 2, 4, 5, 4
    x = currents(gen, (T, B, C, H, W)) * 2
    labels = make_labels(gen, "batch", T, B, H, W, K + 3)  # labels up to K + 2, one of them K + 2
    ref = lambda *a, **k: R.srm_suppix_pool(*a, **k)  # noqa: E731
    cpp = lambda *a, **k: F.srm_suppix_pool(*a, **k, backend="cpp")  # noqa: E731
    for fn in (ref, cpp):
        with pytest.raises(ValueError, match=f"labels must be < num_superpixels = {K}"):
            fn(x, labels, num_superpixels=K, mode=mode)
        with pytest.raises(ValueError, match=f"labels must be < num_superpixels = {K}"):
            fn(x, labels, num_superpixels=K, mode=mode, check_labels=True)
    w = torch.randn((T, B, C, K), generator=gen, dtype=torch.float64).float()
    xc = x.clone().requires_grad_()
    want = cpp(xc, labels, num_superpixels=K, mode=mode, check_labels=False)
    got = ref(x, labels, num_superpixels=K, mode=mode, check_labels=False)
    assert torch.equal(got, want)
    masked = torch.where(labels >= K, -1, labels)
    assert torch.equal(got, ref(x, masked, num_superpixels=K, mode=mode))
    (want * w).sum().backward()
    torch.testing.assert_close(oracle_grad(w, x, masked, K, mode), xc.grad)
    # An inferred K bounds every label: nothing to check, the same result either way.
    assert torch.equal(ref(x, labels, mode=mode), cpp(x, labels, mode=mode))


# --------------------------------------------------------------------------- the bits of the composition
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_gradient_is_the_cpp_composition_bit_for_bit(mode, dtype, gen):
    """float32/float64: the C++ fused gradient has the bits of srm_neuron then suppix_pool (cpp)."""
    T, B, C, H, W, K = 10, 2, 3, 6, 7, 5
    x = currents(gen, (T, B, C, H, W), dtype)
    labels = make_labels(gen, "batch", T, B, H, W, K)
    w = torch.randn((T, B, C, K), generator=gen, dtype=torch.float64).to(dtype)
    xf, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    (fused(xf, labels, K, mode, "cpp") * w).sum().backward()
    (_composition(xc, labels, K, mode) * w).sum().backward()
    assert xc.grad.abs().sum() > 0, "the test should exercise a non-zero gradient"
    assert torch.equal(xf.grad, xc.grad)


def _composition(x, labels, K, mode, backend="cpp"):
    return F.suppix_pool(F.srm_neuron(x, backend=backend), labels, num_superpixels=K, mode=mode, backend=backend)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_fused_half_gradient_rounds_once(mode, dtype, gen):
    """float16/bfloat16 on the C++ backend: "sum" and "max" give the composition's bits; "avg"
    is at most one unit in the last place away from it and never farther from the exact value
    (the float32 composition: half inputs run float32 neuron state, so the spikes are the same)."""
    T, B, C, H, W, K = 10, 2, 3, 6, 7, 5
    x = currents(gen, (T, B, C, H, W), dtype)
    labels = make_labels(gen, "batch", T, B, H, W, K)
    w = torch.randn((T, B, C, K), generator=gen, dtype=torch.float64).to(dtype)
    xf, xc, x32 = x.clone().requires_grad_(), x.clone().requires_grad_(), x.float().requires_grad_()
    (fused(xf, labels, K, mode, "cpp") * w).sum().backward()
    (_composition(xc, labels, K, mode) * w).sum().backward()
    (_composition(x32, labels, K, mode) * w.float()).sum().backward()
    assert x32.grad.abs().sum() > 0, "the test should exercise a non-zero gradient"
    if mode != "avg":
        assert torch.equal(xf.grad, xc.grad)
        return
    fused_g, comp, exact = xf.grad, xc.grad, x32.grad.double()
    big = torch.maximum(fused_g.abs(), comp.abs())
    ulp = (torch.nextafter(big, torch.full_like(big, float("inf"))) - big).double()
    assert torch.all((fused_g.double() - comp.double()).abs() <= ulp), "more than one rounding apart"
    assert torch.all((fused_g.double() - exact).abs() <= (comp.double() - exact).abs())


# --------------------------------------------------------------------------- op registration, compile
@pytest.mark.parametrize("backend,device", COMPILED)
def test_fused_opcheck(backend, device, gen):
    T, B, C, P, K = 5, 2, 3, 12, 4
    ops = torch.ops.snnspx
    F.srm_forward(torch.zeros(1, 1, device=device), backend=backend)
    args = (5.0, 3.0, 2.5, 1.0)
    samples = [  # float32 with one int64 map per image; float64 with int32 maps per step and image
        (currents(gen, (T, B, C, P), device=device), torch.randint(-1, K, (1, B, P), generator=gen).to(device)),
        (currents(gen, (T, B, C, P), torch.float64, device), torch.randint(-1, K, (T, B, P), generator=gen).int().to(device)),
    ]
    for (x, labels), mode in itertools.product(samples, MODES):
        torch.library.opcheck(ops.srm_suppix_pool.default, (x, labels, K, mode, *args, 0, True, ""))
        torch.library.opcheck(
            ops.srm_suppix_pool_fwd.default, (x.clone().requires_grad_(), labels, K, mode, *args, 4.0, 1e8, 0, False, "")
        )
        y, counts, argmax = ops.srm_suppix_pool_fwd.default(x, labels, K, mode, *args, 4.0, 1e8, 0, True, "")
        g = torch.randn(y.shape, generator=gen).to(device, y.dtype)
        torch.library.opcheck(ops.srm_suppix_pool_bwd.default, (g, x, labels, counts, argmax, mode, *args, 4.0, 1e8, 0, ""))


@pytest.mark.parametrize("backend", ["cpp", "torch"])
@pytest.mark.parametrize("mode", MODES)
def test_fused_saved_state_is_x_only(backend, mode, gen):
    """In training the fused op keeps its input x (the backward runs the neuron again from
    it), the labels, the counts and, for max, the argmax: no [2, T, ...] factors, nothing per
    neuron-step of its own, whichever kernel runs (one autograd formula)."""
    T, B, C, H, W, K = 6, 2, 3, 8, 8, 5
    x = currents(gen, (T, B, C, H, W)).requires_grad_()
    labels = make_labels(gen, "batch", T, B, H, W, K)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = fused(x, labels, K, mode, backend)
    big = [t for t in saved if t.numel() >= x.numel()]
    assert len(big) == 1 and big[0].data_ptr() == x.data_ptr() and big[0].numel() == x.numel(), [
        (tuple(t.shape), t.dtype) for t in saved]
    rest = sum(t.numel() * t.element_size() for t in saved if t is not big[0])
    assert rest < x.numel(), f"{rest} bytes besides x"  # per label map or superpixel, not per neuron-step
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("backend,device", COMPILED)
def test_fused_inference_op_does_not_drop_gradients(backend, device, gen):
    """snnspx::srm_suppix_pool (the inference form) called directly on an x that needs a
    gradient: the backward raises, instead of autograd's fallback leaving x.grad None."""
    x = currents(gen, (4, 2, 3, 16), device=device).requires_grad_()
    labels = torch.randint(-1, 4, (1, 2, 16), generator=gen).to(device)
    F.srm_forward(torch.zeros(1, 1, device=device), backend=backend)
    y = torch.ops.snnspx.srm_suppix_pool.default(x, labels, 4, "avg", 5.0, 3.0, 2.5, 1.0, 0, True, "")
    assert y.requires_grad
    with pytest.raises(RuntimeError, match="inference form of the fused op"):
        y.sum().backward()


@pytest.mark.parametrize("backend,device", COMPILED)
def test_fused_module_compiles(backend, device, gen):
    torch._dynamo.reset()
    T, B, C, H, W, K = 6, 2, 3, 4, 4, 5
    conv = torch.nn.Conv2d(2, C, 3, padding=1).to(device)
    head = snnspx.nn.SRMSupPixPool("avg", num_superpixels=K, backend=backend)
    x = currents(gen, (T, B, 2, H, W), device=device)
    labels = make_labels(gen, "batch", T, B, H, W, K, device=device)

    def model(x):
        return head(conv(x.flatten(0, 1)).unflatten(0, (T, B)), labels)

    out_c = torch.compile(model, backend="aot_eager", fullgraph=True)(x)
    out_c.sum().backward()
    g_c = conv.weight.grad.clone()
    conv.zero_grad()
    out_e = model(x)
    out_e.sum().backward()
    assert torch.equal(out_c, out_e)
    torch.testing.assert_close(g_c, conv.weight.grad)


# --------------------------------------------------------------------------- the module
def test_module_batch_first(gen):
    x = currents(gen, (2, 5, 3, 4, 4))  # [B, T, C, H, W]
    labels = make_labels(gen, "batch", 5, 2, 4, 4, 3)
    m = snnspx.nn.SRMSupPixPool("sum", 3, batch_first=True)
    y = m(x, labels)
    assert y.shape == (2, 5, 3, 3)
    assert torch.equal(y, snnspx.nn.SRMSupPixPool("sum", 3)(x.transpose(0, 1), labels).transpose(0, 1))
    assert "mode='sum'" in repr(m)
    # per-step labels [B, T, H, W], every mode, and the gradient, against the reference
    lab_bt = make_labels(gen, "step", 2, 5, 4, 4, 3)  # [B, T, H, W]
    for mode in MODES:
        xg = x.clone().requires_grad_()
        y = snnspx.nn.SRMSupPixPool(mode, 3, batch_first=True)(xg, lab_bt)
        w = torch.randn(y.shape, generator=gen)
        (y * w).sum().backward()
        xt, lt = x.transpose(0, 1), lab_bt.transpose(0, 1)
        assert torch.equal(y.detach(), oracle(xt, lt, 3, mode).transpose(0, 1))
        torch.testing.assert_close(xg.grad, oracle_grad(w.transpose(0, 1), xt, lt, 3, mode).transpose(0, 1))
