"""Surrogate-gradient mode of the SRM neuron (docs/maths.md §9-§11).

The spikes and every gradient (x, tau_m, tau_s, v_th, the carried state) are compared with an
independent oracle: §9's lines unrolled in plain PyTorch, the spike an autograd.Function with a
Heaviside forward and the surrogate derivative as its backward, so that autograd does the
backpropagation through time, with the time constants and the threshold as leaf tensors.
Also: the reference loops, chunked runs with a carried state, the event mode's forward,
opcheck, torch.compile, strides, and the argument errors.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from snnspx import functional as F
from snnspx import reference as R
from snnspx.functional.surrogate import SURROGATES
from conftest import DTYPES, profiled_ops

BACKENDS = ["torch", "cpp"]
KINDS = list(SURROGATES)
# A parameter other than the default, per surrogate (the default width of "triangle", 1, would
# hide a missing division by it).
OTHER_ALPHA = {"sigmoid": 2.5, "atan": 3.0, "fast_sigmoid": 10.0, "triangle": 0.7}
# Gradients: |got - want| <= TOL * max|want| per tensor. The backends and autograd add the same
# terms in other orders (float32 over up to 200 steps; the constants' gradients over all neurons).
TOL = {torch.float32: 3e-5, torch.float64: 1e-12}


# --------------------------------------------------------------------------- the oracle
def _sigma(kind, z, alpha):
    """§9's surrogate derivatives, as written there."""
    if kind == "sigmoid":
        sig = torch.sigmoid(alpha * z)
        return alpha * sig * (1 - sig)
    if kind == "atan":
        return (alpha / 2) / (1 + (math.pi / 2 * alpha * z) ** 2)
    if kind == "fast_sigmoid":
        return 1 / (1 + alpha * z.abs()) ** 2
    assert kind == "triangle"
    return torch.clamp(1 - z.abs() / alpha, min=0) / alpha


class _Spike(torch.autograd.Function):
    """S = H(z): forward the Heaviside step (H(0) = 1 only for ">="), backward sigma'(z)."""

    @staticmethod
    def forward(ctx, z, kind, alpha, ge):
        ctx.save_for_backward(z)
        ctx.kind, ctx.alpha = kind, alpha
        return (z >= 0 if ge else z > 0).to(z.dtype)

    @staticmethod
    def backward(ctx, grad):
        (z,) = ctx.saved_tensors
        return grad * _sigma(ctx.kind, z, ctx.alpha), None, None, None


def oracle(x, tau_m, tau_s, v_th, state=None, *, surrogate, detach_reset, fire_if, alpha=None, tau_grad=2.5):
    """§9 unrolled: (spikes, state_out), differentiable by autograd. The constants are computed
    in float64 from the leaves and rounded once to the state dtype, as §2 prescribes."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32

    def per_step(t):  # broadcast a [C] constant over one step [B, C, ...]
        t = t.to(acc)
        return t if t.dim() == 0 else t.reshape(t.shape[0], *([1] * (x.dim() - 3)))

    tm, ts = tau_m.to(torch.float64), tau_s.to(torch.float64)
    a_m, a_s, c = per_step(1 - 1 / tm), per_step(1 - 1 / ts), per_step(tm / (tm - ts))
    vth = per_step(v_th.to(torch.float64))
    a_g = torch.tensor(1 - 1 / tau_grad, dtype=torch.float64).to(acc)
    zeros = torch.zeros(x.shape[1:], dtype=acc)
    m, s, g, u_last = state.unbind(0) if state is not None else (zeros,) * 4
    spikes = []
    for t in range(x.shape[0]):
        xt = x[t].to(acc)
        m_hat, s_hat, g_hat = (m + xt) * a_m, (s + xt) * a_s, (g + xt) * a_g
        u = c * (m_hat - s_hat)
        S = _Spike.apply(u - vth, surrogate, SURROGATES[surrogate] if alpha is None else alpha, fire_if == ">=")
        keep = 1 - (S.detach() if detach_reset else S)
        m, s, g, u_last = m_hat * keep, s_hat * keep, g_hat * keep, u * keep
        spikes.append(S)
    return torch.stack(spikes).to(x.dtype), torch.stack([m, s, g, u_last])


# --------------------------------------------------------------------------- helpers
def constants(per_channel: bool):
    """(tau_m, tau_s, v_th) as float64 tensors: per channel (C = 3; tau_s a scalar, to mix the
    two forms) or scalars."""
    if per_channel:
        return (torch.tensor([5.0, 7.0, 4.0], dtype=torch.float64), torch.tensor(2.5, dtype=torch.float64),
                torch.tensor([1.0, 0.7, 1.3], dtype=torch.float64))
    return tuple(torch.tensor(v, dtype=torch.float64) for v in (5.0, 3.0, 1.0))


def run(fn, x0, consts0, state0, G, GS, constants_grad=True):
    """Leaves from the given values, fn(x, tau_m, tau_s, v_th, state) -> (spikes, state_out), the
    loss <spikes, G> + <state_out, GS>, backward. Returns (spikes, state_out, x.grad,
    [tau_m.grad, tau_s.grad, v_th.grad], state.grad); the constants are leaves that require a
    gradient only with `constants_grad`."""
    x = x0.clone().requires_grad_()
    consts = [c.clone().requires_grad_(constants_grad) for c in consts0]
    state = state0.clone().requires_grad_() if state0 is not None else None
    spikes, state_out = fn(x, *consts, state)
    ((spikes.to(G.dtype) * G).sum() + (state_out * GS).sum()).backward()
    return spikes.detach(), state_out.detach(), x.grad, [c.grad for c in consts], state.grad if state is not None else None


def assert_grad_close(got, want, dtype, what):
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)}, want {tuple(want.shape)}"
    scale = max(want.abs().max().item(), 1e-30)
    torch.testing.assert_close(got.double(), want.double(), rtol=0, atol=TOL[dtype] * scale,
                               msg=lambda m: f"{what}: {m}")


def assert_all_close(got, want, dtype, tag):
    assert torch.equal(got[0], want[0]), f"spikes differ ({tag})"
    assert_grad_close(got[1], want[1], dtype, f"state_out ({tag})")
    assert_grad_close(got[2], want[2], dtype, f"x.grad ({tag})")
    # The three constants' gradients as one vector: one of them can be 0 up to rounding
    # (for T = 1 from zero state, u = x / tau_s does not depend on tau_m at all).
    cat = lambda gs: torch.cat([g.double().reshape(-1) for g in gs])  # noqa: E731
    assert_grad_close(cat(got[3]), cat(want[3]), dtype, f"(tau_m, tau_s, v_th).grad ({tag})")
    if want[4] is not None:
        assert_grad_close(got[4], want[4], dtype, f"state.grad ({tag})")


def assert_without_constants_close(got, want, dtype, tag):
    """As assert_all_close, for a run whose constants needed no gradient."""
    assert got[3] == [None, None, None], "the constants got gradients they did not ask for"
    assert_all_close((*got[:3], want[3], got[4]), want, dtype, tag)


def inputs(gen, T, dtype, with_state, shape=(2, 3, 2)):
    """x (wide currents for T = 1, so that single steps spike too), a state, dL/dspikes, dL/dstate."""
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    std, mean = (4.0, 1.0) if T == 1 else (1.0, 0.4)
    x = (torch.randn((T, *shape), generator=gen, dtype=torch.float64) * std + mean).to(dtype)
    st = (torch.randn((4, *shape), generator=gen, dtype=torch.float64) * 0.5).to(acc) if with_state else None
    G = torch.randn((T, *shape), generator=gen, dtype=torch.float64).to(dtype)
    GS = torch.randn((4, *shape), generator=gen, dtype=torch.float64).to(acc)
    return x, st, G, GS


def op(backend, **kw):
    def fn(x, tau_m, tau_s, v_th, state):
        return F.srm_neuron_surrogate(x, tau_m=tau_m, tau_s=tau_s, v_th=v_th, state=state, return_state=True,
                                      backend=backend, **kw)

    return fn


# --------------------------------------------------------------------------- (a) against the oracle
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fire_if", [">", ">="])
@pytest.mark.parametrize("detach_reset", [False, True], ids=["reset_grad", "detach_reset"])
@pytest.mark.parametrize("surrogate", KINDS)
def test_matches_autograd_oracle(surrogate, detach_reset, fire_if, dtype, gen):
    """Spikes, state_out, and the gradients of x, the constants and the state, T = 1 and 200,
    both backends. Half the cases use per-channel constants, a carried state and the default
    alpha; the others scalar constants, no state and another alpha."""
    per_channel = detach_reset == (fire_if == ">=")
    kw = dict(surrogate=surrogate, detach_reset=detach_reset, fire_if=fire_if,
              alpha=None if per_channel else OTHER_ALPHA[surrogate])
    for T in (1, 200):
        x, st, G, GS = inputs(gen, T, dtype, with_state=per_channel)
        want = run(lambda *a: oracle(*a, **kw), x, constants(per_channel), st, G, GS)
        assert 0 < want[0].sum() < want[0].numel(), "the inputs should make some neurons spike, not all"
        for backend in BACKENDS:
            got = run(op(backend, **kw), x, constants(per_channel), st, G, GS)
            assert_all_close(got, want, dtype, f"{backend}, T={T}")
            # the kernels' path without the constants' sums
            got = run(op(backend, **kw), x, constants(per_channel), st, G, GS, constants_grad=False)
            assert_without_constants_close(got, want, dtype, f"{backend}, T={T}, constants without grad")


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda", "torch"])
@pytest.mark.parametrize("surrogate", KINDS)
def test_cuda_matches_autograd_oracle(backend, surrogate, gen):
    """CUDA tensors, the CUDA kernels (checkpointed backward: T = 37 ends in a part segment)
    and the PyTorch kernels, against the oracle on the CPU."""
    configs = ((torch.float32, True, False, ">", 200), (torch.float64, False, True, ">=", 1),
               (torch.float32, False, False, ">=", 37), (torch.float64, True, True, ">", 37))
    for dtype, per_channel, detach_reset, fire_if, T in configs:
        kw = dict(surrogate=surrogate, detach_reset=detach_reset, fire_if=fire_if)
        x, st, G, GS = inputs(gen, T, dtype, with_state=per_channel)
        want = run(lambda *a: oracle(*a, **kw), x, constants(per_channel), st, G, GS)
        on_gpu = [None if t is None else t.cuda() for t in (x, st, G, GS)]
        got = run(op(backend, **kw), on_gpu[0], [c.cuda() for c in constants(per_channel)], *on_gpu[1:])
        got = (got[0].cpu(), got[1].cpu(), got[2].cpu(), [g.cpu() for g in got[3]], None if got[4] is None else got[4].cpu())
        assert_all_close(got, want, dtype, f"{backend}, {dtype}, T={T}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_threshold_tie(backend):
    """u == v_th spikes with fire_if=">=" only; the gradient sees sigma'(0) there."""
    x = torch.tensor([[3.0, 2.0, 5.0]])
    _, st = R.srm_surrogate_forward(x, v_th=math.inf)
    for n in range(3):
        u = st[3, n].item()  # T = 1, no spike: u_last = u, exact in float32
        assert F.srm_neuron_surrogate(x[:, n:n + 1], v_th=u, backend=backend).item() == 0
        assert F.srm_neuron_surrogate(x[:, n:n + 1], v_th=u, fire_if=">=", backend=backend).item() == 1


# --------------------------------------------------------------------------- (b) the reference loops
@pytest.mark.parametrize("detach_reset", [False, True], ids=["reset_grad", "detach_reset"])
@pytest.mark.parametrize("surrogate", KINDS)
def test_reference_loops_match_oracle(surrogate, detach_reset, gen):
    fire_if = ">=" if detach_reset else ">"
    for dtype, per_channel in ((torch.float64, True), (torch.float32, False)):
        x, st, G, GS = inputs(gen, 12, dtype, with_state=per_channel)
        kw = dict(surrogate=surrogate, detach_reset=detach_reset, fire_if=fire_if,
                  alpha=None if per_channel else OTHER_ALPHA[surrogate])
        consts = constants(per_channel)
        want = run(lambda *a: oracle(*a, **kw), x, consts, st, G, GS)
        spikes, state_out = R.srm_surrogate_forward(x, tau_m=consts[0], tau_s=consts[1], v_th=consts[2], state=st,
                                                    fire_if=fire_if)
        assert 0 < spikes.sum() < spikes.numel()
        gx, gtm, gts, gvt, gst = R.srm_surrogate_backward(G, x, tau_m=consts[0], tau_s=consts[1], v_th=consts[2],
                                                          state=st, grad_state=GS, **kw)
        assert_all_close((spikes, state_out, gx, [gtm, gts, gvt], gst if per_channel else None), want, dtype,
                         f"reference, {dtype}")


# --------------------------------------------------------------------------- (c) chunks and a carried state
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_chunks_equal_one_pass(backend, dtype, gen):
    """x[:a], x[a:b], ... with the state carried: the spikes and state of one pass, bit for bit,
    and the same gradients (they cross the chunks through the state); also one step per call."""
    T = 30
    x, st, G, GS = inputs(gen, T, dtype, with_state=True)
    consts = constants(True)
    kw = dict(surrogate="atan", detach_reset=False, fire_if=">")
    whole = run(op(backend, **kw), x, consts, st, G, GS)
    for cuts in ([0, 7, 8, 20, 30], list(range(T + 1))):

        def chunked(x, tau_m, tau_s, v_th, state):
            out = []
            for a, b in zip(cuts[:-1], cuts[1:]):
                s, state = F.srm_neuron_surrogate(x[a:b], tau_m=tau_m, tau_s=tau_s, v_th=v_th, state=state,
                                                  return_state=True, backend=backend, **kw)
                out.append(s)
            return torch.cat(out), state

        got = run(chunked, x, consts, st, G, GS)
        assert torch.equal(got[1], whole[1]), "the carried state differs from one pass's"
        assert_all_close(got, whole, dtype, f"{len(cuts) - 1} chunks")


# --------------------------------------------------------------------------- (d) the event mode's forward
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16],
                         ids=["f32", "f64", "f16", "bf16"])
def test_spikes_equal_event_mode(backend, dtype, gen):
    x = (torch.randn(40, 3, 4, 5, generator=gen, dtype=torch.float64) + 0.5).to(dtype)
    for tau_m, tau_s, v_th in ((5.0, 3.0, 1.0), (2.7, 7.3, 0.6), (10.0, 1.5, 0.25)):
        want = F.srm_forward(x, tau_m=tau_m, tau_s=tau_s, v_th=v_th, backend=backend)[0]
        assert want.sum() > 0
        got = F.srm_neuron_surrogate(x, tau_m=tau_m, tau_s=tau_s, v_th=v_th, backend=backend)
        assert got.dtype == dtype and torch.equal(got, want)
        as_tensors = F.srm_neuron_surrogate(x, tau_m=torch.tensor(tau_m, dtype=torch.float64),
                                            tau_s=torch.tensor(tau_s, dtype=torch.float64),
                                            v_th=torch.tensor(v_th, dtype=torch.float64), backend=backend)
        assert torch.equal(as_tensors, want)
    # per channel: channel c runs the event mode with channel c's constants
    tm, ts, vt = torch.tensor([5.0, 2.7, 10.0, 4.0]), torch.tensor([3.0, 7.3, 1.5, 3.5]), torch.tensor([1.0, 0.6, 0.25, 2.0])
    got = F.srm_neuron_surrogate(x, tau_m=tm, tau_s=ts, v_th=vt, backend=backend)
    for c in range(4):
        want = F.srm_forward(x[:, :, c], tau_m=tm[c].item(), tau_s=ts[c].item(), v_th=vt[c].item(), backend=backend)
        assert torch.equal(got[:, :, c], want[0]), f"channel {c}"


# --------------------------------------------------------------------------- (e) opcheck
def test_opcheck(gen):
    ops = torch.ops.snnspx
    x = torch.randn(5, 2, 3, 4, generator=gen) + 0.5
    G = torch.randn(x.shape, generator=gen)
    f64 = dict(dtype=torch.float64)
    scalar = (torch.tensor(5.0, **f64), torch.tensor(3.0, **f64), torch.tensor(1.0))
    channel = (torch.tensor([5.0, 6.0, 7.0], **f64), torch.tensor(3.0), torch.tensor([1.0, 0.5, 0.8]))
    state = torch.randn(4, 2, 3, 4, generator=gen) * 0.3
    for consts, st, kind in ((scalar, None, "sigmoid"), (channel, state, "triangle")):
        leaves = [c.clone().requires_grad_() for c in consts]
        st_leaf = st.clone().requires_grad_() if st is not None else None
        rest = (2.5, st is not None, kind, SURROGATES[kind], st is None)
        torch.library.opcheck(ops.srm_sg_fwd.default, (x, *consts, st, *rest))
        torch.library.opcheck(ops.srm_sg_fwd.default, (x.clone().requires_grad_(), *leaves, st_leaf, *rest))
        gs = torch.randn(4, 2, 3, 4, generator=gen) if st is not None else None
        for constants_grad in (True, False):
            torch.library.opcheck(ops.srm_sg_bwd.default, (G, gs, x, *consts, st, *rest, constants_grad))


# --------------------------------------------------------------------------- (f) torch.compile
class _Net(torch.nn.Module):
    """Linear synapses into surrogate SRM neurons with learnable per-channel tau_m and v_th."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(6, 4)
        self.p_tau = torch.nn.Parameter(torch.zeros(4))
        self.v_th = torch.nn.Parameter(torch.full((4,), 0.5))

    def forward(self, x):  # x [T, B, 6]
        tau_m = 3.0 + torch.nn.functional.softplus(self.p_tau)  # > 3 > tau_s: valid for any p_tau
        spikes, state = F.srm_neuron_surrogate(self.fc(x), tau_m=tau_m, tau_s=2.0, v_th=self.v_th,
                                               surrogate="fast_sigmoid", return_state=True)
        return spikes.sum(0), state


def test_torch_compile_model(gen):
    net = _Net()
    x = torch.rand(8, 3, 6, generator=gen) * 2
    compiled = torch.compile(copy.deepcopy(net), backend="eager", fullgraph=True)
    outs = []
    for model in (net, compiled):
        counts, state = model(x)
        (counts * torch.arange(4.0)).sum().add(state.sum()).backward()
        outs.append((counts, state, [p.grad for p in model.parameters()]))
    (c0, s0, g0), (c1, s1, g1) = outs
    assert c0.sum() > 0
    assert torch.equal(c0, c1) and torch.equal(s0, s1)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(a, b)


# --------------------------------------------------------------------------- (g) strides, edges, errors
@pytest.mark.parametrize("backend", BACKENDS)
def test_noncontiguous_x(backend, gen):
    base = torch.randn(6, 4, 3, 5, generator=gen, dtype=torch.float64) + 0.5
    tm = torch.tensor([5.0, 6.0, 4.0], dtype=torch.float64)
    for view in (base[:, ::2], base[:, :, :, 1:4], base.permute(0, 3, 2, 1)):
        grads = []
        for x in (view, view.contiguous()):
            x = x.detach().requires_grad_()
            s = F.srm_neuron_surrogate(x, tau_m=tm, backend=backend)
            (s * torch.arange(s.numel(), dtype=s.dtype).reshape(s.shape).cos()).sum().backward()
            grads.append((s, x.grad))
        assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty(backend):
    """T = 0 returns the state it was given (a copy) and passes its gradient through; no neurons."""
    st = torch.randn(4, 2, 3).requires_grad_()
    x = torch.zeros(0, 2, 3, requires_grad=True)
    s, out = F.srm_neuron_surrogate(x, state=st, return_state=True, backend=backend)
    assert s.shape == (0, 2, 3) and torch.equal(out, st) and out.data_ptr() != st.data_ptr()
    out.sum().backward()
    assert torch.equal(st.grad, torch.ones_like(st)) and x.grad.shape == x.shape
    x = torch.zeros(5, 0, 3, requires_grad=True)
    s, out = F.srm_neuron_surrogate(x, tau_m=torch.tensor([5.0, 6, 7]), return_state=True, backend=backend)
    s.sum().backward()
    assert s.shape == x.shape and out.shape == (4, 0, 3) and x.grad.shape == x.shape


@pytest.mark.parametrize("backend", BACKENDS)
def test_half_inputs(backend, gen):
    """float16 currents: float32 state, gradients in float16, as the float32 run's rounded."""
    x = (torch.randn(20, 2, 3, generator=gen) + 0.5).half()
    x16, x32 = x.clone().requires_grad_(), x.float().requires_grad_()
    s16, st16 = F.srm_neuron_surrogate(x16, return_state=True, backend=backend)
    s32, st32 = F.srm_neuron_surrogate(x32, return_state=True, backend=backend)
    assert s16.dtype == torch.float16 and st16.dtype == torch.float32
    assert torch.equal(s16.float(), s32) and torch.equal(st16, st32)
    s16.float().sum().backward()
    s32.sum().backward()
    assert x16.grad.dtype == torch.float16 and torch.equal(x16.grad, x32.grad.half())


def test_meta():
    """Shapes on meta tensors (the fake kernels), gradients included; nothing is read or built."""
    x = torch.empty(5, 2, 3, 4, device="meta", requires_grad=True)
    v_th = torch.empty(3, device="meta", requires_grad=True)
    s, st = F.srm_neuron_surrogate(x, v_th=v_th, return_state=True)
    assert s.shape == x.shape and st.shape == (4, 2, 3, 4) and st.device.type == "meta"
    (s.sum() + st.sum()).backward()
    assert x.grad.shape == x.shape and v_th.grad.shape == (3,)


def test_no_double_backward(gen):
    x = (torch.randn(5, 3, generator=gen) + 1).requires_grad_()
    (g,) = torch.autograd.grad(F.srm_neuron_surrogate(x, backend="cpp").sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="no double backward"):
        g.sum().backward()


def test_saved_for_backward_is_x_and_the_state(gen):
    """Autograd keeps x and the input state (and the constants): 4 bytes per float32 neuron-step
    plus 16 per neuron, i.e. 5 bytes per neuron-step at T = 16."""
    T, shape = 16, (4, 8, 8)
    x = torch.randn(T, *shape, generator=gen).requires_grad_()
    state = torch.zeros(4, *shape)
    sizes = []

    def pack(t):
        sizes.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        F.srm_neuron_surrogate(x, state=state, backend="cpp")
    assert sum(sizes) <= 5 * x.numel() + 64, sizes


def test_cpp_kernels_run(gen):
    """backend="cpp" runs the compiled kernels (no per-step PyTorch ops), "torch" the PyTorch ones."""
    x = (torch.randn(6, 2, 3, generator=gen) + 0.5).requires_grad_()
    for backend, per_step in (("cpp", False), ("torch", True)):
        ops = profiled_ops(lambda: F.srm_neuron_surrogate(x, backend=backend).sum().backward())
        assert ops["snnspx::srm_sg_fwd"] == 1 and ops["snnspx::srm_sg_bwd"] == 1
        assert (ops["aten::where"] >= 6) == per_step, (backend, ops["aten::where"])


ERRORS = [
    (dict(surrogate="relu"), ValueError, "surrogate must be one of 'sigmoid', 'atan', 'fast_sigmoid', 'triangle'"),
    (dict(alpha=0.0), ValueError, r"alpha \(the sigmoid surrogate's alpha\) must be a finite number > 0"),
    (dict(surrogate="triangle", alpha=-1.0), ValueError, "triangle surrogate's width"),
    (dict(alpha=math.nan), ValueError, "alpha .* finite number > 0"),
    (dict(alpha="4"), TypeError, "alpha .* must be a Python number or None"),
    (dict(tau_m=1.0), ValueError, "tau_m must be finite and > 1"),
    (dict(tau_s=torch.tensor([3.0, 0.5, 2.0])), ValueError, r"tau_s must be finite and > 1 in every channel, got \[0.5\]"),
    (dict(tau_m=4.0, tau_s=4.0), ValueError, "tau_m and tau_s must differ"),
    (dict(tau_m=torch.tensor([5.0, 6.0, 7.0]), tau_s=torch.tensor([3.0, 6.0, 2.0])), ValueError,
     "must differ .* got 6.0 for both in channel 1"),
    (dict(tau_m=torch.tensor([5.0, 6.0])), ValueError, r"one value per channel of x \(C = x.shape\[2\] = 3\)"),
    (dict(tau_m=torch.ones(2, 3) * 5), ValueError, "a number, a 0-d tensor or one value per channel"),
    (dict(tau_m=torch.tensor(5)), TypeError, "tau_m must be a floating-point tensor or a Python number"),
    (dict(v_th=math.nan), ValueError, "v_th must not be NaN"),
    (dict(v_th="1"), TypeError, "v_th must be a Python number or a tensor"),
    (dict(tau_m=1000.0, tau_s=1000.001), ValueError, "too close for float32"),
    (dict(state=torch.zeros(4, 2, 3)), ValueError, r"state must be \[4, \*x.shape\[1:\]\] = \[4, 2, 3, 4\]"),
    (dict(state=torch.zeros(4, 2, 3, 4, dtype=torch.float64)), TypeError, "state must be torch.float32"),
    (dict(fire_if="=>"), ValueError, "fire_if must be '>' or '>='"),
    (dict(detach_reset="yes"), TypeError, "detach_reset must be True or False"),
    (dict(tau_grad=1.0), ValueError, "tau_grad must be a finite number > 1"),
    (dict(backend="reference"), ValueError, "not a backend"),
]


@pytest.mark.parametrize("kwargs,exc,match", ERRORS, ids=[f"{i}-{next(iter(e[0]))}" for i, e in enumerate(ERRORS)])
def test_errors_name_the_argument(kwargs, exc, match):
    x = torch.randn(5, 2, 3, 4)
    with pytest.raises(exc, match=match):
        F.srm_neuron_surrogate(x, **kwargs)


def test_per_channel_needs_a_channel_dim():
    with pytest.raises(ValueError, match=r"needs x \[T, B, C, ...\]"):
        F.srm_neuron_surrogate(torch.randn(5, 3), v_th=torch.ones(3))


@pytest.mark.parametrize("backend", BACKENDS)
def test_ops_check_the_constants_shape(backend):
    """A direct op call with a per-channel constant that does not fit x: the same error from
    the PyTorch and the compiled kernels."""
    from snnspx._library import torch_kernels

    x, one = torch.randn(4, 2, 3), torch.tensor(1.5, dtype=torch.float64)
    for tau_m, xx in ((torch.ones(2) * 4, x), (torch.ones(3) * 4, x[:, :, 0])):
        with torch_kernels(backend == "torch"), pytest.raises(ValueError, match="tau_m must be a 0-d tensor or one"):
            torch.ops.snnspx.srm_sg_fwd(xx, tau_m, one * 2, one, None, 2.5, False, "atan", 1.0, False)


def test_ops_check_their_arguments():
    """Direct op calls: the compiled kernels' checks name the argument too."""
    x, one = torch.randn(4, 2, 3), torch.tensor(1.5, dtype=torch.float64)
    fwd = torch.ops.snnspx.srm_sg_fwd
    with pytest.raises(ValueError, match="surrogate must be 'sigmoid'"):
        fwd(x, one * 4, one * 2, one, None, 2.5, False, "relu", 1.0, False)
    with pytest.raises(ValueError, match="alpha must be a finite number > 0"):
        fwd(x, one * 4, one * 2, one, None, 2.5, False, "atan", -1.0, False)
    with pytest.raises(ValueError, match=r"state must be \[4, \*x.shape\[1:\]\]"):
        fwd(x, one * 4, one * 2, one, torch.zeros(4, 2), 2.5, False, "atan", 1.0, False)
    with pytest.raises(ValueError, match="tau_m must be a 0-d tensor or one value per channel"):
        fwd(x, torch.ones(2), one * 2, one, None, 2.5, False, "atan", 1.0, False)


def test_fake_tensor_trace_leaves_no_fake_constant_behind():
    """Tracing under FakeTensorMode makes the number constants as fake tensors; none is kept
    for later calls, which then run on real tensors as before."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    x = torch.randn(5, 2, 3) + 0.5
    want = F.srm_neuron(x, grad="surrogate", tau_m=7.5, backend="torch")
    with FakeTensorMode() as mode:
        F.srm_neuron(mode.from_tensor(x), grad="surrogate", tau_m=7.5, v_th=0.7, backend="torch")
    assert torch.equal(F.srm_neuron(x, grad="surrogate", tau_m=7.5, backend="torch"), want)
    assert torch.equal(F.srm_neuron(x, grad="surrogate", tau_m=7.5, v_th=0.7, backend="torch"),
                       F.srm_neuron(x, grad="surrogate", tau_m=7.5, v_th=0.7, backend="cpp"))
