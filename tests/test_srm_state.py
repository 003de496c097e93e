"""Carried state of the event-mode neuron (docs/maths.md, "Carried state"): ``srm_neuron(x,
state=..., return_state=True)`` and the ``state`` argument of the ``srm_neuron_fwd`` op, on the
torch and cpp backends, against the loops of ``snnspx.reference.srm_forward(..., state=...)``.

Chunked runs give the spikes and the end state of one run bit for bit; each chunk's gradient is
the reference event-driven backward of that chunk run from its state (the backward stops at a
chunk's end); the op passes opcheck with and without a state; bad states fail with messages
that name the argument.
"""

from __future__ import annotations

import pytest
import torch

import snnspx
from snnspx import SRMParams
from snnspx import functional as F
from snnspx import reference as R
from conftest import DTYPES, profiled_ops

CPU_BACKENDS = ["torch", "cpp"]
NEURONS = [
    pytest.param({}, id="default"),
    pytest.param(dict(fire_if=">="), id="fire-ge"),
    pytest.param(dict(forward_type="nonleaky", v_th=2.0), id="nonleaky"),
    pytest.param(dict(fire_if=">=", forward_type="nonleaky", gradient_type="original", v_th=2.0), id="ge-nonleaky-orig"),
]


@pytest.fixture(autouse=True, scope="module")
def _load_cpp():
    F.srm_forward(torch.zeros(1, 1), backend="cpp")


def currents(gen, shape, dtype, mean=0.4):
    return (torch.randn(shape, generator=gen, dtype=torch.float64) + mean).to(dtype)


def random_splits(gen, T: int) -> list[int]:
    """Chunk lengths that add up to T: single steps, a few random lengths, and an empty chunk."""
    lengths = [1, 1, 0]
    while sum(lengths) < T:
        lengths.append(min(int(torch.randint(1, 9, (1,), generator=gen)), T - sum(lengths)))
    lengths[-1] += T - sum(lengths)
    return lengths


def run_chunks(x, lengths, **kw):
    """srm_neuron over consecutive chunks of x, each from the previous one's state:
    (spikes of every chunk concatenated, the states after each chunk)."""
    state, spikes, states, t = None, [], [], 0
    for n in lengths:
        s, state = F.srm_neuron(x[t:t + n], state=state, return_state=True, **kw)
        spikes.append(s)
        states.append(state)
        t += n
    return torch.cat(spikes), states


# --------------------------------------------------------------------------- chunked == whole
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("neuron", NEURONS)
def test_chunks_equal_one_run(backend, dtype, neuron, gen):
    """Random splits (single steps and an empty chunk included), and one step per call: the
    spikes of one run and, after every chunk, the reference's state after that prefix, bit for bit."""
    p = SRMParams(**neuron)
    x = currents(gen, (30, 2, 3), dtype)
    whole, whole_state = F.srm_neuron(x, params=p, backend=backend, return_state=True)
    ref = R.srm_forward(x, params=p, return_state=True)
    assert torch.equal(whole, ref[0]) and torch.equal(whole_state, ref[3])
    assert 0 < whole.sum() < whole.numel() / 2, "the input should make neurons spike now and then"
    for lengths in (random_splits(gen, 30), random_splits(gen, 30), [1] * 30):
        spikes, states = run_chunks(x, lengths, params=p, backend=backend)
        assert torch.equal(spikes, whole), lengths
        ends = torch.tensor(lengths).cumsum(0).tolist()
        for end, state in zip(ends, states):
            assert state.dtype == snnspx._checks.acc_dtype(dtype) and state.shape == (4, 2, 3)
            assert torch.equal(state, R.srm_forward(x[:end], params=p, return_state=True)[3]), (lengths, end)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_from_any_state(backend, dtype, gen):
    """From a random state (not one a run reaches): spikes and end state as the reference's;
    a zero state is no state; strided x and state give their contiguous copies' results."""
    x = currents(gen, (9, 4, 5), dtype)
    state = torch.randn((4, 4, 5), generator=gen, dtype=torch.float64).to(snnspx._checks.acc_dtype(dtype))
    spikes, out = F.srm_neuron(x, state=state, backend=backend, return_state=True)
    rs, _, _, rout = R.srm_forward(x, state=state, return_state=True)
    assert torch.equal(spikes, rs) and torch.equal(out, rout)
    assert not torch.equal(spikes, F.srm_neuron(x, backend=backend)), "the state should change the spikes"
    assert torch.equal(F.srm_neuron(x, state=torch.zeros_like(state), backend=backend), F.srm_neuron(x, backend=backend))
    xt, st = x.transpose(1, 2), state.transpose(1, 2)
    got = F.srm_neuron(xt, state=st, backend=backend, return_state=True)
    want = F.srm_neuron(xt.contiguous(), state=st.contiguous(), backend=backend, return_state=True)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert torch.equal(got[0], R.srm_forward(xt, state=st)[0])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_edge_shapes_and_half(backend, gen):
    """T = 0 returns a copy of the state (zeros without one); [T] inputs take a [4] state;
    float16 keeps a float32 state and chunks still equal one run."""
    state = torch.randn((4, 3), generator=gen)
    s, out = F.srm_neuron(torch.zeros(0, 3), state=state, backend=backend, return_state=True)
    assert s.shape == (0, 3) and torch.equal(out, state) and out.data_ptr() != state.data_ptr()
    assert torch.equal(F.srm_neuron(torch.zeros(0, 3), backend=backend, return_state=True)[1], torch.zeros(4, 3))
    x1 = currents(gen, (12,), torch.float32)
    s1, st1 = F.srm_neuron(x1[:5], backend=backend, return_state=True)
    assert st1.shape == (4,)
    assert torch.equal(torch.cat([s1, F.srm_neuron(x1[5:], state=st1, backend=backend)]), F.srm_neuron(x1, backend=backend))
    xh = currents(gen, (16, 3, 4), torch.float16)
    spikes, states = run_chunks(xh, [5, 1, 10], backend=backend)
    assert states[-1].dtype == torch.float32
    assert torch.equal(spikes, F.srm_neuron(xh, backend=backend))


def test_cpp_runs_with_a_state(gen):
    """With a state, backend="cpp" (and the default for CPU tensors) runs the C++ kernels, not
    the PyTorch ones, forward and backward."""
    x = currents(gen, (6, 4), torch.float32)
    state = F.srm_neuron(x, backend="cpp", return_state=True)[1]
    for backend in ("cpp", None):
        xg = x.clone().requires_grad_()
        ran = profiled_ops(lambda: F.srm_neuron(xg, state=state, backend=backend).sum().backward())
        assert ran["snnspx::srm_neuron_fwd"] == 1 and ran["snnspx::srm_neuron_bwd"] == 1
        assert "aten::where" not in ran, f"backend={backend}: a PyTorch kernel ran"


# --------------------------------------------------------------------------- gradients within a chunk
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("neuron", NEURONS)
def test_gradient_within_chunk(backend, dtype, neuron, gen):
    """x.grad of each chunk is the reference event backward (srm_backward's grad_w) of that chunk
    run from its state; state_out has no gradient and the input state gets none."""
    p = SRMParams(du_inv_clamp=3.0, **neuron)
    x = currents(gen, (24, 3, 4), dtype)
    w = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(dtype)
    state, t = None, 0
    for n in (7, 1, 16):
        xc = x[t:t + n].clone().requires_grad_()
        st = None if state is None else state.clone().requires_grad_()
        spikes, state = F.srm_neuron(xc, params=p, state=st, backend=backend, return_state=True)
        assert not state.requires_grad
        (spikes * w[t:t + n]).sum().backward()
        ref = R.srm_forward(xc.detach(), params=p, state=None if st is None else st.detach())
        assert torch.equal(spikes.detach(), ref[0])
        torch.testing.assert_close(xc.grad, R.srm_backward(w[t:t + n], *ref, params=p)[0])
        assert st is None or st.grad is None
        t += n
    assert xc.grad.abs().sum() > 0


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_spike_with_nan_factor_keeps_its_gradient(backend):
    """A spike whose du is NaN (a given state with a NaN u_last) is still a spike in the
    backward: its gradient is NaN, as the reference's, not a silent 0."""
    x = torch.tensor([[9.0, 9.0], [0.0, 0.0], [0.0, 0.0]], requires_grad=True)
    state = torch.zeros(4, 2)
    state[3, 0] = float("nan")
    spikes = F.srm_neuron(x, state=state, backend=backend)
    spikes.backward(torch.ones_like(spikes))
    ref = R.srm_forward(x.detach(), state=state)
    assert torch.equal(spikes.detach(), ref[0]) and ref[1][0, 0].isnan()
    torch.testing.assert_close(x.grad, R.srm_backward(torch.ones_like(x), *ref)[0], equal_nan=True)
    assert x.grad[0, 0].isnan()


def test_chunk_end_truncates_the_gradient(gen):
    """The gradient of a chunk ignores the spikes of later chunks: the first chunk's x.grad
    is that of the first chunk run alone, and differs from the whole run's where a neuron's
    next spike lies beyond the chunk."""
    x = currents(gen, (20, 8), torch.float64)
    w = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    xw = x.clone().requires_grad_()
    (F.srm_neuron(xw) * w).sum().backward()
    xc = x[:10].clone().requires_grad_()
    spikes, _ = F.srm_neuron(xc, return_state=True)
    (spikes * w[:10]).sum().backward()
    torch.testing.assert_close(xc.grad, R.srm_neuron_backward(w[:10], x[:10]))
    assert not torch.equal(xc.grad, xw.grad[:10])


# --------------------------------------------------------------------------- the op
def test_opcheck_with_and_without_state(gen):
    ops = torch.ops.snnspx
    args = (5.0, 3.0, 2.5, 0.8, 4.0, 1e8)
    for dtype, variant in ((torch.float32, 0), (torch.float64, 3), (torch.bfloat16, 0)):
        x = currents(gen, (7, 3, 2), dtype)
        state = ops.srm_neuron_fwd.default(x, *args, variant, None, True)[1]
        g = torch.randn(x.shape, generator=gen).to(dtype)
        for st in (None, state, state.transpose(1, 2).contiguous().transpose(1, 2)):
            for flag in (False, True):
                torch.library.opcheck(ops.srm_neuron_fwd.default, (x.clone().requires_grad_(), *args, variant, st, flag))
                torch.library.opcheck(ops.srm_neuron_bwd.default, (g, x, st, *args, variant, flag))
    x = currents(gen, (0, 3), torch.float32)
    torch.library.opcheck(ops.srm_neuron_fwd.default, (x, *args, 0, torch.randn(4, 3, generator=gen), True))


DTYPE_MSG = r"state must be float32 \(the neuron-state dtype: float64 for float64 x, float32 otherwise\), "


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_bad_state(backend):
    """The wrapper's checks, and the op's own for direct calls (PyTorch and C++ kernels alike)."""
    x = torch.randn(5, 2, 3)
    cases = [
        (torch.zeros(4, 3, 2), ValueError, r"state must be \[4, \*x.shape\[1:\]\] = \[4, 2, 3\]"),
        (torch.zeros(3, 2, 3), ValueError, r"state must be \[4, \*x.shape\[1:\]\]"),
        (torch.zeros(4, 2, 3, dtype=torch.float64), TypeError, DTYPE_MSG + "got float64"),
        (torch.zeros(4, 2, 3, dtype=torch.float16), TypeError, DTYPE_MSG + "got float16"),
    ]
    for state, err, msg in cases:
        with pytest.raises(err, match=msg):
            F.srm_neuron(x, state=state, backend=backend)
        with snnspx._library.torch_kernels(backend == "torch"), pytest.raises(err, match=msg):
            torch.ops.snnspx.srm_neuron_fwd(x, 5.0, 3.0, 2.5, 1.0, 4.0, 1e8, 0, state, False)
        with snnspx._library.torch_kernels(backend == "torch"), pytest.raises(err, match=msg):
            torch.ops.snnspx.srm_neuron_bwd(x, x, state, 5.0, 3.0, 2.5, 1.0, 4.0, 1e8, 0, False)
    with pytest.raises(TypeError, match="state must be float64"):
        F.srm_neuron(x.double(), state=torch.zeros(4, 2, 3), backend=backend)
    with pytest.raises(TypeError, match="state must be a torch.Tensor or None"):
        F.srm_neuron(x, state=[0.0] * 4, backend=backend)
    with pytest.raises(ValueError, match="state must be on x's device cpu, got meta"):
        F.srm_neuron(x, state=torch.zeros(4, 2, 3, device="meta"), backend=backend)
    with pytest.raises(TypeError, match="return_state must be True or False"):
        F.srm_neuron(x, return_state=1, backend=backend)


# --------------------------------------------------------------------------- CUDA carries no state
def test_cuda_backend_gate(monkeypatch):
    """Where 'cuda' would carry a state: a request is a ValueError naming the way out; the default
    choice turns to 'torch'. (The device is faked: the gate looks at the resolved backend only.)"""
    from snnspx.functional import srm as S

    monkeypatch.setattr(S, "resolve", lambda backend, device: "cuda")
    monkeypatch.delenv("SNNSPX_BACKEND", raising=False)
    dev = torch.device("cpu")
    assert S.resolve_neuron("cuda", dev, SRMParams()) == "cuda"
    assert S.resolve_neuron(None, dev, SRMParams(), carried=True) == "torch"
    with pytest.raises(ValueError, match=r"does not carry the neuron state .*backend='torch'"):
        S.resolve_neuron("cuda", dev, SRMParams(), carried=True)


@pytest.mark.cuda
def test_cuda_tensors_with_state(gen):
    """On a GPU: backend='cuda' with a state or return_state is a ValueError (the wrapper's, and
    the op's own check for a direct call with a state); without a backend the PyTorch kernels
    carry it, as on the CPU."""
    x = currents(gen, (10, 4), torch.float32).cuda()
    state = torch.zeros(4, 4, device="cuda")
    for kw in (dict(state=state), dict(return_state=True)):
        with pytest.raises(ValueError, match="run CUDA tensors with backend='torch'"):
            F.srm_neuron(x, backend="cuda", **kw)
    with pytest.raises(ValueError, match="do not carry the neuron state"):
        torch.ops.snnspx.srm_neuron_fwd(x, 5.0, 3.0, 2.5, 1.0, 4.0, 1e8, 0, state, False)
    with pytest.raises(ValueError, match="do not carry the neuron state"):
        torch.ops.snnspx.srm_neuron_fwd(x, 5.0, 3.0, 2.5, 1.0, 4.0, 1e8, 0, None, True)
    spikes, states = run_chunks(x, [3, 1, 6])
    ref = R.srm_forward(x.cpu(), return_state=True)
    assert torch.equal(spikes.cpu(), ref[0]) and torch.equal(states[-1].cpu(), ref[3])
