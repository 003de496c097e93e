"""Fused SRM + superpixel pooling: its kernels. Which kernel serves each backend (profiler op
names), memory and zero-fills of the compiled kernels, the CUDA kernels (peak memory,
determinism, graphs) and the CUDA kernel strategies (the op's strategy function, answered by
``torch.ops.snnspx._strategy``, and strategies forced through conftest.ForceStrategy).

Values against snnspx.reference, on every backend: test_fused.py.
"""

from __future__ import annotations

import collections
import contextlib
import itertools

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import snnspx
from snnspx import functional as F
from snnspx import superpixels as S
from conftest import DTYPES, FORCED_STRATEGY, GRID, ForceStrategy, op_calls, profiled_ops
from test_fused import MODES, _check_labels_flag, currents, fused, make_labels, oracle, oracle_grad


# --------------------------------------------------------------------------- which kernel runs
# Under SNNSPX_TEST_STRATEGY every op passes through a forcing dispatch mode, which a profile of
# the default kernels would show as Python dispatch.
FORCING = pytest.mark.skipif(bool(FORCED_STRATEGY), reason="SNNSPX_TEST_STRATEGY: the forcing mode's Python dispatch shows in the profile")


@FORCING
@pytest.mark.parametrize("backend,device", GRID)
def test_fused_backend_runs_its_kernels(backend, device, gen):
    """A compiled backend: its library's kernels are registered for the device and chosen by
    default, and they serve the ops (no Python dispatch, none of the PyTorch kernels' aten
    arithmetic). backend="torch" with that library loaded: the same ops run their PyTorch
    kernels, in the forward and, through the same autograd formula, in the backward."""
    T, B, C, H, W, K = 4, 2, 3, 6, 6, 5
    x = currents(gen, (T, B, C, H, W), device=device)
    labels = make_labels(gen, "batch", T, B, H, W, K, device=device)
    fused(x, labels, K, "avg", backend)  # loads the library
    compiled = "cpp" if device == "cpu" else "cuda"
    if device == "cpu" or snnspx._backend._cuda_kernels_default():
        assert snnspx._backend.resolve(None, torch.device(device)) == compiled
    for name in ("srm_suppix_pool", "srm_suppix_pool_fwd", "srm_suppix_pool_bwd"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"snnspx::{name}", device.upper()), name
    with torch.no_grad():
        infer = profiled_ops(lambda: fused(x, labels, K, "avg", backend))
    assert infer["snnspx::srm_suppix_pool"] == 1 and infer["snnspx::srm_suppix_pool_fwd"] == 0, infer
    xg = x.clone().requires_grad_()
    ys = []
    train = profiled_ops(lambda: ys.append(fused(xg, labels, K, "avg", backend)))
    assert train["snnspx::srm_suppix_pool_fwd"] == 1 and train["snnspx::srm_suppix_pool"] == 0, train
    back = profiled_ops(lambda: ys[0].sum().backward())
    assert back["snnspx::srm_suppix_pool_bwd"] == 1, back
    for counts in (infer, train, back):
        ran_torch_kernels = counts["PythonDispatchMode"] > 0 and counts["aten::mul"] > 0
        ran_python = counts["PythonDispatchMode"] > 0 or counts["aten::mul"] > 0
        assert (ran_torch_kernels if backend == "torch" else not ran_python), counts


@FORCING
def test_fused_kernel_runs_and_writes_no_full_tensor(gen):
    """No-grad mode: the compiled kernel runs and no [T, B, C, H, W] buffer is allocated."""
    x = currents(gen, (8, 2, 4, 16, 16))
    labels = make_labels(gen, "batch", 8, 2, 16, 16, 10)
    fused(x, labels, 10, "avg", "cpp")  # build and warm up
    assert torch._C._dispatch_has_kernel_for_dispatch_key("snnspx::srm_suppix_pool", "CPU")
    assert snnspx._backend.resolve(None, torch.device("cpu")) == "cpp"
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fused(x, labels, 10, "avg", "cpp")
    ran = collections.Counter(e.name for e in prof.events())
    assert ran["snnspx::srm_suppix_pool"] == 1 and ran["PythonDispatchMode"] == 0, ran
    unfused = [n for n in ran if n.startswith(("snnspx::srm_neuron", "snnspx::srm_forward", "snnspx::suppix"))]
    assert not unfused, f"the fused op ran unfused ops: {unfused}"
    biggest = max((e.cpu_memory_usage for e in prof.events()), default=0)
    assert biggest < x.numel() * x.element_size() // 4, f"an allocation of {biggest} bytes"
    # With a gradient wanted, the training kernel runs instead, and its backward.
    ran = profiled_ops(lambda: fused(x.clone().requires_grad_(), labels, 10, "avg", "cpp").sum().backward())
    assert ran["snnspx::srm_suppix_pool_fwd"] == 1 and ran["snnspx::srm_suppix_pool"] == 0, ran
    assert ran["snnspx::srm_suppix_pool_bwd"] == 1 and ran["PythonDispatchMode"] == 0, ran


@pytest.mark.parametrize("op", ["srm_suppix_pool", "srm_neuron", "srm_forward", "suppix_pool"])
def test_backward_zero_fills_no_unused_output(op, gen):
    """Autograd zero-fills the gradient of an unused output unless told not to. The fused
    op's counts and argmax, srm_neuron's end state, du and dut (srm_forward) and the pooling's
    aux get none: no zeros are made, and the compiled backward allocates x's gradient and nothing
    else of size. (The torch backend's vectorised backward has temporaries and zeros of its
    own, so it is not measured.)"""
    backend = "cpp"
    T, B, C, H, W, K = 8, 2, 4, 16, 16, 10
    x = currents(gen, (T, B, C, H, W)).requires_grad_()
    labels = make_labels(gen, "batch", T, B, H, W, K)
    if op == "srm_suppix_pool":
        out = fused(x, labels, K, "avg", backend)
    elif op == "srm_neuron":
        out = F.srm_neuron(x, backend=backend)
    elif op == "srm_forward":
        out = F.srm_forward(x, backend=backend)[0]
    else:
        out = F.suppix_pool(x, labels, num_superpixels=K, backend=backend)
    g = torch.ones_like(out)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out.backward(g)
    fills = sorted({e.name for e in prof.events() if e.name in ("aten::zeros", "aten::zero_", "aten::fill_")})
    assert not fills, f"the backward zero-filled something: {fills}"
    allocated = sum(max(e.self_cpu_memory_usage, 0) for e in prof.events())
    # x's gradient; srm_forward's backward op also returns the (unused) gradient by time.
    allowed = (2 if op == "srm_forward" else 1) * x.numel() * x.element_size()
    assert allocated <= allowed * 1.25, f"the backward allocated {allocated} bytes, expected about {allowed}"
    assert x.grad is not None and torch.isfinite(x.grad).all()


# --------------------------------------------------------------------------- CUDA
@pytest.mark.cuda
def test_fused_cuda_peak_memory_and_determinism(gen):
    x = currents(gen, (16, 4, 8, 32, 32), device="cuda")
    labels = make_labels(gen, "batch", 16, 4, 32, 32, 64, device="cuda")
    fused(x, labels, 64, "avg", "cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with torch.no_grad():
        y = fused(x, labels, 64, "avg", "cuda")
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    assert extra < x.numel() * x.element_size() // 4, f"the fused op allocated {extra} bytes"
    for mode in MODES:
        first = fused(x, labels, 64, mode, "cuda")
        xg = x.clone().requires_grad_()
        fused(xg, labels, 64, mode, "cuda").sum().backward()
        for _ in range(3):
            assert torch.equal(fused(x, labels, 64, mode, "cuda"), first)
            xg2 = x.clone().requires_grad_()
            fused(xg2, labels, 64, mode, "cuda").sum().backward()
            assert torch.equal(xg2.grad, xg.grad)
    assert y.shape == (16, 4, 8, 64)


@pytest.mark.cuda
@pytest.mark.parametrize("legacy", [False, True], ids=["default", "legacy"])
def test_cuda_graph_capture(legacy, gen):
    """Under CUDA graph capture the ops read nothing back (the label range check, a
    read-back, is skipped there) and the replay gives the eager results; also with the
    legacy strategies forced on every call."""
    x = currents(gen, (6, 2, 3, 8, 8), device="cuda")
    labels = make_labels(gen, "batch", 6, 2, 8, 8, 5, device="cuda")

    def run():
        y = fused(x, labels, 5, "avg", "cuda")
        pooled = F.suppix_pool(x, labels, num_superpixels=5, mode="max", backend="cuda")
        return y, F.suppix_unpool(pooled, labels, backend="cuda")

    forced = ForceStrategy(LEGACY) if legacy else contextlib.nullcontext()
    with forced:
        want = run()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up on a side stream, as torch.cuda.graph asks
            run()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = run()
    graph.replay()
    torch.cuda.synchronize()
    for got, ref in zip(out, want):
        assert torch.equal(got, ref)
    if legacy:  # eager, warm-up and capture: each call ran its legacy strategy
        assert forced.runs == {"srm_suppix_pool": 3, "suppix_pool": 3, "suppix_unpool": 3}, forced.runs


_FRESH_TAUS = itertools.count()


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("warm", [True, False], ids=["cached-tables", "tables-made-in-capture"])
def test_cuda_graph_capture_of_the_backward(warm, dtype, gen):
    """A captured training step (fused op and srm_neuron, forward and backward) replays the
    eager gradient, also after the allocator has handed out and taken back other memory. The
    SRM backward's tables: after a warm-up with the same time constants (the usual way to
    capture) they come from the cache, made on the host, and the replay is bit for bit the
    eager gradient; with constants first seen inside the capture the device makes them,
    which matches up to rounding."""
    T, B, C, H, W, K = 6, 2, 3, 8, 8, 5
    x = currents(gen, (T, B, C, H, W), dtype, "cuda")
    labels = make_labels(gen, "batch", T, B, H, W, K, device="cuda")
    xg = x.clone().requires_grad_()
    # A fresh value per call: no table for it is cached yet, in this process.
    tau_m = 5.0 if warm else 7.0 + 1e-3 * next(_FRESH_TAUS) + 1e-7

    def step(tau):
        y = fused(xg, labels, K, "avg", "cuda", tau_m=tau, check_labels=False)
        z = F.srm_neuron(xg, tau_m=tau, backend="cuda")
        return torch.autograd.grad(y.sum() + (z * 0.5).sum(), xg)[0]

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as torch.cuda.graph asks
        step(tau_m if warm else 5.0)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        got = step(tau_m)
    graph.replay()
    torch.cuda.synchronize()
    first = got.clone()
    want = step(tau_m)
    # Other work in between: new tables, memory taken and given back.
    step(tau_m + 0.5)
    junk = [torch.randn(1 << 20, device="cuda") for _ in range(8)]
    del junk
    torch.cuda.empty_cache()
    graph.replay()
    torch.cuda.synchronize()
    assert want.abs().sum() > 0
    assert torch.equal(got, first), "a second replay differs"
    if warm:
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got, want)


# --------------------------------------------------------------------------- CUDA kernel strategies
# The CUDA forward strategies (csrc/cuda/strategy.h): by default "quad" (inference, one label
# map per image, P % 4 == 0, aligned, enough planes) or else "plane" (per-block shared-memory
# histograms) where its histograms fit, "atomic" otherwise; the backward "batched" with one
# label map for all steps, "per_spike" otherwise. LEGACY: the earlier CUDA defaults, forced
# for a bitwise comparison (the pooling ones for the graph-capture test).
LEGACY = {"suppix_pool": "sorted", "suppix_pool_backward": "one_pixel", "suppix_unpool": "one_pixel",
          "srm_suppix_pool": "atomic", "srm_suppix_pool_fwd": "atomic", "srm_suppix_pool_bwd": "per_spike"}


def strategy(op, x, labels, K, mode):
    """The strategy that `op` ("srm_suppix_pool", "srm_suppix_pool_fwd", "srm_suppix_pool_bwd")
    chooses for the call F.srm_suppix_pool(x, labels, ...) makes: its op's strategy function on
    the op's own views of x and labels."""
    layout = snnspx._checks.suppix_layout(x, labels, pooled=False)
    return torch.ops.snnspx._strategy(op, layout.data, layout.labels, K, mode)


@pytest.mark.cuda
def test_fused_check_labels_cuda_legacy(gen):
    with ForceStrategy(LEGACY) as forced:
        _check_labels_flag("cuda", "cuda", gen)
    # per mode: two training calls and their backwards, one inference call (the raising
    # calls count not: a forced call counts once it has returned)
    assert forced.runs == {"srm_suppix_pool": 3, "srm_suppix_pool_fwd": 6, "srm_suppix_pool_bwd": 6}, forced.runs


@pytest.mark.cuda
@pytest.mark.parametrize("legacy", [False, True], ids=["default", "legacy"])
def test_fused_cuda_kernels_actually_run(legacy, gen):
    """With no backend given, CUDA tensors go to the fused CUDA ops: the inference op without
    a gradient, the training forward and its backward with one. By default the inference runs
    "quad" (one label map per image, P % 4 == 0), the training forward "plane" and the
    backward "batched"; with LEGACY forced, "atomic" and "per_spike" run instead."""
    x = currents(gen, (6, 2, 3, 8, 8), device="cuda")
    labels = make_labels(gen, "batch", 6, 2, 8, 8, 5, device="cuda")
    assert strategy("srm_suppix_pool", x, labels, 5, "avg") == "quad"
    assert strategy("srm_suppix_pool_fwd", x, labels, 5, "avg") == "plane"
    assert strategy("srm_suppix_pool_bwd", x, labels, 5, "avg") == "batched"
    forced = ForceStrategy(LEGACY) if legacy else contextlib.nullcontext()
    with forced:
        with torch.no_grad():
            ran = op_calls(lambda: F.srm_suppix_pool(x, labels, num_superpixels=5))
        assert ran == {"snnspx::srm_suppix_pool": 1}, ran
        y = []
        ran = op_calls(lambda: y.append(F.srm_suppix_pool(x.clone().requires_grad_(), labels, num_superpixels=5)))
        assert ran == {"snnspx::srm_suppix_pool_fwd": 1}, ran
        ran = op_calls(lambda: y[0].sum().backward())
        assert ran == {"snnspx::srm_suppix_pool_bwd": 1}, ran
    if legacy:
        assert forced.runs == {"srm_suppix_pool": 1, "srm_suppix_pool_fwd": 1, "srm_suppix_pool_bwd": 1}, forced.runs


def _reference_oracle(K, mode):
    def run(x, lab, w):
        return oracle(x, lab, K, mode, du_inv_clamp=3.0), oracle_grad(w, x, lab, K, mode, du_inv_clamp=3.0)

    return run


def _check_fused_cuda(x, labels, K, mode, gen, oracle_fn=None, plane=True):
    """fused y == oracle_fn's y bitwise, gradient == its gradient, both repeatable bitwise;
    plane: whether the forwards choose a shared-memory strategy, "plane" or "quad" (else
    "atomic"). Also the legacy strategies' y and gradient (atomic, per_spike), bit for bit."""
    oracle_fn = oracle_fn or _reference_oracle(K, mode)
    T, B, C = x.shape[:3]
    infer, train = (strategy(op, x, labels, K, mode) for op in ("srm_suppix_pool", "srm_suppix_pool_fwd"))
    if plane:
        assert infer in ("plane", "quad") and train == "plane", (infer, train)
    else:
        assert infer == train == "atomic", (infer, train)
    w = torch.randn((T, B, C, K), generator=gen, dtype=torch.float64).to(x.dtype)
    with torch.no_grad():
        y = fused(x, labels, K, mode, "cuda")
    xg = x.clone().requires_grad_()
    y_tr = fused(xg, labels, K, mode, "cuda", du_inv_clamp=3.0)
    (y_tr * w.cuda()).sum().backward()
    want, want_grad = oracle_fn(x.cpu(), labels.cpu(), w)
    assert y.shape == (T, B, C, K) and y.dtype == x.dtype
    assert torch.equal(y.cpu(), want), f"inference y != reference ({mode})"
    assert torch.equal(y_tr.detach().cpu(), want), f"training y != reference ({mode})"
    torch.testing.assert_close(xg.grad.cpu(), want_grad)
    for _ in range(2):
        with torch.no_grad():
            assert torch.equal(fused(x, labels, K, mode, "cuda"), y)
        xg2 = x.clone().requires_grad_()
        y2 = fused(xg2, labels, K, mode, "cuda", du_inv_clamp=3.0)
        (y2 * w.cuda()).sum().backward()
        assert torch.equal(y2, y_tr) and torch.equal(xg2.grad, xg.grad), "not repeatable bitwise"
    with ForceStrategy(LEGACY) as forced:
        with torch.no_grad():
            assert torch.equal(fused(x, labels, K, mode, "cuda"), y), "legacy kernel differs"
        xl = x.clone().requires_grad_()
        y_l = fused(xl, labels, K, mode, "cuda", du_inv_clamp=3.0)
        (y_l * w.cuda()).sum().backward()
        assert torch.equal(y_l, y_tr) and torch.equal(xl.grad, xg.grad), "legacy training kernels differ"
    assert forced.runs == {"srm_suppix_pool": 1, "srm_suppix_pool_fwd": 1, "srm_suppix_pool_bwd": 1}, forced.runs
    return want_grad


@pytest.mark.cuda
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("form", ["shared", "batch", "step"])
@pytest.mark.parametrize("label_dtype", [torch.int32, torch.int64], ids=["i32", "i64"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_cuda_shared_memory_equals_composition(mode, form, label_dtype, dtype, gen):
    # B * C = 6 planes of 35 pixels: one block per plane (the direct path).
    T, B, C, H, W, K = 9, 2, 3, 5, 7, 6
    x = currents(gen, (T, B, C, H, W), dtype, "cuda")
    labels = make_labels(gen, form, T, B, H, W, K, label_dtype, "cuda")
    _check_fused_cuda(x, labels, K, mode, gen)


@pytest.mark.cuda
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("form", ["shared", "step"])
def test_fused_cuda_shared_memory_split_planes(mode, form, gen):
    # One plane of 96 x 96 pixels: too few planes for the GPU, so each is split over
    # several blocks that add their counts into the global scratch (argmax: lowest
    # spiking pixel over all blocks). Few superpixels, each spanning many blocks.
    T, B, C, H, W, K = 5, 1, 1, 96, 96, 7
    x = currents(gen, (T, B, C, H, W), device="cuda") * 0.7
    labels = make_labels(gen, form, T, B, H, W, K, torch.int32, "cuda")
    grad = _check_fused_cuda(x, labels, K, mode, gen)
    assert grad.abs().sum() > 0


@pytest.mark.cuda
@pytest.mark.parametrize("mode", MODES)
def test_fused_cuda_shared_memory_many_planes(mode, gen):
    # 320 planes (>= 2 per SM on GPUs with up to 160 SMs) of 400 pixels: one block per
    # plane whose threads walk two pixels each. The oracle is the torch backend's
    # composition (itself bitwise equal to the reference), the reference being slow here.
    T, B, C, H, W, K = 6, 4, 80, 20, 20, 9
    x = currents(gen, (T, B, C, H, W), device="cuda")
    labels = make_labels(gen, "batch", T, B, H, W, K, torch.int64, "cuda")

    def torch_backend(x, lab, w):
        xr = x.clone().requires_grad_()
        y = fused(xr, lab, K, mode, "torch", du_inv_clamp=3.0)
        (y * w).sum().backward()
        return y.detach(), xr.grad

    _check_fused_cuda(x, labels, K, mode, gen, torch_backend)


@pytest.mark.cuda
@pytest.mark.parametrize("mode", MODES)
def test_fused_cuda_shared_memory_falls_back(mode, gen):
    # T * K * 4 bytes = 64 KB of histograms exceed the plane kernel's 48 KB: "atomic" runs,
    # with the same results (and forcing "plane" is an error).
    T, B, C, H, W, K = 4, 2, 2, 9, 11, 4096
    x = currents(gen, (T, B, C, H, W), device="cuda") * 2
    labels = make_labels(gen, "batch", T, B, H, W, K, torch.int64, "cuda")
    _check_fused_cuda(x, labels, K, mode, gen, plane=False)
    with pytest.raises(RuntimeError, match="strategy 'plane' does not apply"), ForceStrategy({"srm_suppix_pool_fwd": "plane"}):
        fused(x.clone().requires_grad_(), labels, K, mode, "cuda")


@pytest.mark.cuda
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("form", ["shared", "batch", "grid"])
@pytest.mark.parametrize("label_dtype", [torch.int32, torch.int64], ids=["i32", "i64"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["f32", "f16", "bf16"])
def test_fused_cuda_quad_kernel(mode, form, label_dtype, dtype, gen):
    """The quad kernel (inference, one label map per image, P % 4 == 0, one block per plane
    once there are >= 2 planes per SM): 320 planes of 12 x 100 pixels, so each thread walks
    two quads (300 > 256 threads); T = 9, not a multiple of the steps loaded ahead. Random
    labels give quads of 1 to 4 superpixels and ignored pixels; grid labels (4 x 4 cells)
    give quads of one superpixel, which add their spikes with one atomic. The default is
    "quad"; y equals the torch backend's composition, "quad" forced and the legacy kernel
    bit for bit."""
    T, B, C, H, W, K = 9, 4, 80, 12, 100, 9
    x = currents(gen, (T, B, C, H, W), dtype, "cuda")
    if form == "grid":
        labels = S.grid_superpixels(H, W, 4).to(label_dtype).cuda()
        labels[0, :4] = -1  # one ignored quad
        K = int(labels.max()) + 1
    else:
        labels = make_labels(gen, form, T, B, H, W, K, label_dtype, "cuda")
    assert strategy("srm_suppix_pool", x, labels, K, mode) == "quad"
    with torch.no_grad():
        y = fused(x, labels, K, mode, "cuda")
        want = fused(x.cpu(), labels.cpu(), K, mode, "torch")
        assert torch.equal(y.cpu(), want), f"quad y != composition ({mode}, {form})"
        assert torch.equal(fused(x, labels, K, mode, "cuda"), y), "not repeatable"
        with ForceStrategy({"srm_suppix_pool": "quad"}) as quad:
            assert torch.equal(fused(x, labels, K, mode, "cuda"), y), "quad forced differs"
        with ForceStrategy(LEGACY) as legacy:
            assert torch.equal(fused(x, labels, K, mode, "cuda"), y), "legacy kernel differs"
    assert quad.runs == legacy.runs == {"srm_suppix_pool": 1}, (quad.runs, legacy.runs)


@pytest.mark.cuda
def test_fused_cuda_quad_kernel_does_not_apply(gen):
    """Per-step label maps, P % 4 != 0, float64, a misaligned x and planes split over several
    blocks (few planes, P > 256) all leave the inference to the plane kernel (forcing "quad"
    is an error), with the same y as the legacy kernel."""
    T, B, C, H, W, K = 5, 4, 80, 4, 8, 6
    cases = {
        "per-step labels": (currents(gen, (T, B, C, H, W), device="cuda"),
                            make_labels(gen, "step", T, B, H, W, K, device="cuda")),
        "P % 4 != 0": (currents(gen, (T, B, C, H + 1, W - 1), device="cuda"),
                       make_labels(gen, "batch", T, B, H + 1, W - 1, K, device="cuda")),
        "float64": (currents(gen, (T, B, C, H, W), torch.float64, "cuda"),
                    make_labels(gen, "batch", T, B, H, W, K, device="cuda")),
        "misaligned x": (currents(gen, (T * B * C * H * W + 1,), device="cuda")[1:].view(T, B, C, H, W),
                         make_labels(gen, "batch", T, B, H, W, K, device="cuda")),
        # 2 planes of 512 pixels: the plane kernel splits each over several blocks
        "few planes": (currents(gen, (T, 1, 2, 16, 32), device="cuda"),
                       make_labels(gen, "batch", T, 1, 16, 32, K, device="cuda")),
    }
    for name, (x, labels) in cases.items():
        assert strategy("srm_suppix_pool", x, labels, K, "avg") == "plane", name
        with torch.no_grad():
            y = fused(x, labels, K, "avg", "cuda")
            with pytest.raises(RuntimeError, match="strategy 'quad' does not apply"):
                with ForceStrategy({"srm_suppix_pool": "quad"}):
                    fused(x, labels, K, "avg", "cuda")
            with ForceStrategy({"srm_suppix_pool": "plane"}) as plane:
                assert torch.equal(fused(x, labels, K, "avg", "cuda"), y), name
            with ForceStrategy(LEGACY) as legacy:
                assert torch.equal(fused(x, labels, K, "avg", "cuda"), y), name
        assert plane.runs == legacy.runs == {"srm_suppix_pool": 1}, name


@pytest.mark.cuda
def test_fused_cuda_shared_memory_edge_cases(gen):
    # T = 1, K = 0 (all labels negative, K inferred), empty planes (P = 0), and
    # agreement with the legacy (atomic) kernel bit for bit.
    x = currents(gen, (1, 2, 3, 4, 5), device="cuda") * 4
    labels = make_labels(gen, "batch", 1, 2, 4, 5, 3, device="cuda")
    for mode in MODES:
        _check_fused_cuda(x, labels, 3, mode, gen)
    none = torch.full((4, 5), -1, device="cuda")
    xg = x.clone().requires_grad_()
    y = fused(xg, none, None, "sum", "cuda")
    assert y.shape == (1, 2, 3, 0)
    y.sum().backward()
    assert torch.equal(xg.grad, torch.zeros_like(x))
    empty = currents(gen, (3, 2, 2, 0, 4), device="cuda")
    y = fused(empty, torch.zeros(0, 4, dtype=torch.long, device="cuda"), 2, "avg", "cuda")
    assert y.shape == (3, 2, 2, 2) and torch.all(y == 0)
    x = currents(gen, (7, 3, 4, 13, 17), device="cuda")
    for form in ("shared", "step"):
        labels = make_labels(gen, form, 7, 3, 13, 17, 11, device="cuda")
        for mode in MODES:
            got = fused(x, labels, 11, mode, "cuda")
            with ForceStrategy(LEGACY) as forced:
                legacy = fused(x, labels, 11, mode, "cuda")
            assert torch.equal(got, legacy)
            assert forced.runs == {"srm_suppix_pool": 1}, forced.runs
