"""Quantizer (docs/maths.md §7): the power-of-two scale, rounding, straight-through gradient, running range."""

from __future__ import annotations

import copy
import io

import pytest
import torch

import snnspx
from snnspx import functional as F
from snnspx import reference as R
from conftest import DTYPES


@pytest.mark.parametrize(
    "absmax,bits,want",
    [
        (1.0, 8, 6),  # round(2**6) = 64 < 128, round(2**7) = 128 is not
        (0.3, 8, 8),  # 0.3 * 256 = 76.8 -> 77 < 128; 0.3 * 512 -> 154
        (0.5, 2, 1),  # round(0.5) = 0 (ties to even), round(1.0) = 1 < 2; round(2.0) = 2 is not
        (127.4, 8, 0),  # round(127.4) = 127 < 128 at i = 0 only
        (200.0, 8, 0),  # nothing fits: scale 1
        (0.0, 8, 31),  # zeros fit at every scale: the largest allowed
        (float("inf"), 8, 0),
        (3e-10, 4, 31),
    ],
)
def test_scale_exponent(absmax, bits, want):
    got = F.pow2_scale_exponent(torch.tensor(absmax), bits)
    assert got.dtype == torch.int64 and got.item() == want
    assert R.pow2_scale_exponent(absmax, bits).item() == want


def test_scale_exponent_matches_reference(gen):
    for _ in range(200):
        absmax = float(torch.rand((), generator=gen, dtype=torch.float64) * 10 ** torch.randint(-6, 4, (), generator=gen))
        bits = int(torch.randint(2, 17, (), generator=gen))
        assert F.pow2_scale_exponent(torch.tensor(absmax, dtype=torch.float64), bits).item() == R.pow2_scale_exponent(absmax, bits).item()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rounding", ["nearest", "truncate"])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_quantize_matches_reference(dtype, rounding, bits, gen):
    x = (torch.randn(7, 9, generator=gen, dtype=torch.float64) * 3).to(dtype)
    x[0, :4] = torch.tensor([2.5, -2.5, 3.5, -0.5], dtype=dtype) / 4  # ties at scale 4
    for scale in (1.0, 4.0, 2.0**10):
        got = F.quantize(x, scale, bits=bits, rounding=rounding)
        want = R.quantize(x, scale, bits=bits, rounding=rounding)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        q_max = 2 ** (bits - 1) - 1
        ints = got * scale
        assert torch.equal(ints, torch.round(ints)) and ints.abs().max() <= q_max
    for backend in ("torch", "cpp"):  # a forced backend runs the same PyTorch ops (no compiled kernel)
        assert torch.equal(F.quantize(x, 2.0, bits=bits, rounding=rounding, backend=backend),
                           R.quantize(x, 2.0, bits=bits, rounding=rounding))


def test_rounding_modes():
    x = torch.tensor([0.625, -0.625, 0.875, -0.875, 0.375, 100.0, -100.0])  # x * 4 = 2.5, -2.5, 3.5, -3.5, 1.5
    # ties to even, clamp +-7; then toward zero
    assert (F.quantize(x, 4.0, bits=4, rounding="nearest") * 4).tolist() == [2, -2, 4, -4, 2, 7, -7]
    assert (F.quantize(x, 4.0, bits=4, rounding="truncate") * 4).tolist() == [2, -2, 3, -3, 1, 7, -7]


@pytest.mark.parametrize("rounding", ["nearest", "truncate"])
def test_straight_through_gradient(rounding, gen):
    """dL/dx = dL/dy exactly, also for values that clamp."""
    x = (torch.randn(50, generator=gen) * 20).requires_grad_()
    g = torch.randn(50, generator=gen)
    y = F.quantize(x, 2.0, bits=6, rounding=rounding)
    assert torch.equal(y.detach(), R.quantize(x.detach(), 2.0, bits=6, rounding=rounding))
    y.backward(g)
    assert torch.equal(x.grad, g)
    q = snnspx.nn.Quantizer(4, rounding)
    x.grad = None
    q(x).backward(g)
    assert torch.equal(x.grad, g)


def test_straight_through_gradcheck(gen):
    """With a resolution (2**-29 here) far below the finite-difference step, quantize is the
    identity up to rounding noise, and the straight-through gradient is its true derivative:
    gradcheck the weight path of SRMLinear (standardise, scale/shift, quantize)."""
    w = torch.randn(3, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    gain = (torch.rand(3, generator=gen, dtype=torch.float64) + 0.5).requires_grad_()
    bias = torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True) * 0.1
    bias = bias.detach().requires_grad_()
    w_hat = F.standardize_weight(w, gain, bias)
    scale = torch.exp2(F.pow2_scale_exponent(w_hat.abs().max() * 1.5, 32).double())
    assert scale >= 2**27

    def path(a, b, c):
        return F.quantize(F.standardize_weight(a, b, c), scale, bits=32)

    assert torch.autograd.gradcheck(path, (w, gain, bias), eps=1e-3, atol=1e-5)
    x = torch.randn(20, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: F.quantize(v, 2.0**26, bits=32), (x,), eps=1e-3)


def test_running_range_and_eval_freeze(gen):
    q = snnspx.nn.Quantizer(bits=8)
    assert q.running_min.item() == float("inf") and q.running_max.item() == float("-inf")
    assert q.scale_exponent.item() == -1
    q(torch.tensor([-0.2, 0.4]))
    assert q.running_min.item() == pytest.approx(-0.2) and q.running_max.item() == pytest.approx(0.4)
    assert q.scale_exponent.item() == 8  # round(0.4 * 256) = 102 < 128, round(0.4 * 512) = 205
    q(torch.tensor([0.1, 0.3]))  # inside the range: nothing moves (running extremes, not an average)
    assert q.running_min.item() == pytest.approx(-0.2) and q.running_max.item() == pytest.approx(0.4)
    q(torch.tensor([-1.5, 0.0]))
    assert q.running_min.item() == -1.5 and q.running_max.item() == pytest.approx(0.4)
    assert q.scale_exponent.item() == 6
    q.eval()
    before = {k: v.clone() for k, v in q.state_dict().items()}
    x = torch.tensor([-100.0, 0.3, 5.0])
    y = q(x)
    assert all(torch.equal(v, before[k]) for k, v in q.state_dict().items()), "eval must not move the range"
    assert torch.equal(y, F.quantize(x, 2.0**6, bits=8))
    assert y.tolist() == [-127 / 64, round(0.3 * 64) / 64, 127 / 64]


def test_state_dict_round_trip(gen):
    q = snnspx.nn.Quantizer(bits=6, rounding="truncate")
    x = torch.randn(100, generator=gen) * 2
    q(x)
    buf = io.BytesIO()
    torch.save(q.state_dict(), buf)
    buf.seek(0)
    fresh = snnspx.nn.Quantizer(bits=6, rounding="truncate").eval()
    with pytest.raises(RuntimeError, match="has no range yet"):
        fresh(x)
    fresh.load_state_dict(torch.load(buf))
    assert set(fresh.state_dict()) == {"running_min", "running_max", "scale_exponent"}
    q.eval()
    assert torch.equal(fresh(x), q(x))


def test_layer_with_quantizer_round_trips():
    torch.manual_seed(0)
    a = snnspx.nn.SRMLinear(8, 4, weight_bits=5, v_th=0.3)
    s_in = (torch.rand(6, 2, 8) < 0.4).float()
    a(s_in)
    b = snnspx.nn.SRMLinear(8, 4, weight_bits=5, v_th=0.3)
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    assert torch.equal(a.effective_weight(), b.effective_weight())
    assert torch.equal(a(s_in), b(s_in))
    assert "weight_quantizer.scale_exponent" in a.state_dict()


def test_half_module_keeps_integer_exponent():
    q = snnspx.nn.Quantizer(8)
    q(torch.tensor([0.0, 1e-9]))
    q.half()
    assert q.scale_exponent.dtype == torch.int64 and q.scale_exponent.item() == 31
    y = q.eval()(torch.tensor([1e-6, 0.5], dtype=torch.float16))
    assert y.dtype == torch.float16 and torch.isfinite(y).all()


def test_eval_without_data_and_empty_inputs():
    q = snnspx.nn.Quantizer(8).eval()
    assert q(torch.zeros(0)).shape == (0,)
    with pytest.raises(RuntimeError, match="training mode"):
        q(torch.ones(3))
    q.train()
    assert q(torch.zeros(0)).shape == (0,)
    assert q.scale_exponent.item() == -1, "an empty batch carries no range"


def test_bad_arguments():
    for bits in (1, 33):
        with pytest.raises(ValueError, match="bits must be an int"):
            snnspx.nn.Quantizer(bits)
    for bits in (8.0, True, "8"):  # a wrong type is a TypeError, as for every other argument
        with pytest.raises(TypeError, match="bits must be an int"):
            snnspx.nn.Quantizer(bits)
    with pytest.raises(ValueError, match="rounding must be"):
        snnspx.nn.Quantizer(8, "floor")
    with pytest.raises(ValueError, match="rounding must be"):
        snnspx.nn.SRMConv2d(2, 2, 3, weight_bits=8, weight_rounding="up")
    assert "bits=8, rounding='nearest'" in repr(snnspx.nn.Quantizer())


# --------------------------------------------------------------------------- non-finite inputs (regressions)
NAN, INF = float("nan"), float("inf")


def test_nan_in_training_does_not_corrupt_running_range():
    """One NaN used to turn running_min/max into NaN and pin the scale at 1 for good."""
    q = snnspx.nn.Quantizer(8)
    y = q(torch.tensor([0.5, NAN]))
    assert y[0].item() == 0.5 and torch.isnan(y[1]), "the NaN flows through, the rest is quantized"
    assert q.running_min.item() == 0.5 and q.running_max.item() == 0.5
    assert q.scale_exponent.item() == 7  # round(0.5 * 128) = 64 < 128, round(0.5 * 256) = 128
    q(torch.tensor([0.5, -0.25]))
    assert q.running_min.item() == -0.25 and q.running_max.item() == 0.5
    assert q.scale_exponent.item() == 7
    assert torch.equal(q(torch.tensor([0.3])), F.quantize(torch.tensor([0.3]), 2.0**7, bits=8))
    q.eval()
    assert torch.equal(q(torch.tensor([0.3, NAN]))[:1], torch.tensor([round(0.3 * 128) / 128]))


@pytest.mark.parametrize("bad", [INF, -INF])
def test_inf_in_training_does_not_pin_scale(bad):
    q = snnspx.nn.Quantizer(8)
    y = q(torch.tensor([0.5, bad]))
    assert q.running_min.item() == 0.5 and q.running_max.item() == 0.5 and q.scale_exponent.item() == 7
    assert y.tolist() == [0.5, (127 if bad > 0 else -127) / 128], "inf clamps to +-q_max / scale"
    q(torch.tensor([-0.25, 0.1]))
    assert q.running_min.item() == -0.25 and q.scale_exponent.item() == 7


def test_batch_without_finite_values_leaves_buffers_unchanged():
    q = snnspx.nn.Quantizer(6)
    q(torch.tensor([-0.2, 0.4]))
    before = {k: v.clone() for k, v in q.state_dict().items()}
    for batch in ([NAN, NAN], [INF, -INF, NAN]):
        q(torch.tensor(batch))
        assert all(torch.equal(v, before[k]) for k, v in q.state_dict().items())


def test_quantizer_that_saw_only_nonfinite_values_is_uncalibrated():
    q = snnspx.nn.Quantizer(8)
    y = q(torch.tensor([NAN, INF, -INF]))  # training: scale 1 while no finite value is known
    assert torch.isnan(y[0]) and y[1:].tolist() == [127.0, -127.0]
    assert q.scale_exponent.item() == -1
    assert q.running_min.item() == INF and q.running_max.item() == -INF
    q.eval()
    with pytest.raises(RuntimeError, match="has no range yet"):
        q(torch.ones(2))
    q.train()
    q(torch.tensor([1.0, NAN]))
    q.eval()
    assert q.scale_exponent.item() == 6
    assert q(torch.tensor([1.0])).item() == 1.0


def test_nan_range_from_checkpoint_is_replaced_by_finite_range():
    q = snnspx.nn.Quantizer(8)
    q.load_state_dict({"running_min": torch.tensor(NAN), "running_max": torch.tensor(NAN),
                       "scale_exponent": torch.tensor(0)})
    q(torch.tensor([-0.25, 0.5]))
    assert q.running_min.item() == -0.25 and q.running_max.item() == 0.5 and q.scale_exponent.item() == 7


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_nonfinite_ignored_for_every_dtype(dtype):
    q = snnspx.nn.Quantizer(8)
    y = q(torch.tensor([0.5, -0.25, NAN, INF, -INF], dtype=dtype))
    assert y.dtype == dtype and torch.isnan(y[2])
    assert q.running_min.item() == -0.25 and q.running_max.item() == 0.5 and q.scale_exponent.item() == 7


def test_quantizer_compiles_fullgraph_with_nonfinite_inputs():
    """No read-back in forward (train or eval): the checks stay on the device."""
    torch._dynamo.reset()
    q = snnspx.nn.Quantizer(8)
    c = torch.compile(q, backend="aot_eager", fullgraph=True)
    c(torch.tensor([0.5, NAN]))
    assert q.scale_exponent.item() == 7
    q.eval()
    y = c(torch.tensor([0.3, INF]))
    assert y.tolist() == [round(0.3 * 128) / 128, 127 / 128]


@pytest.mark.cuda
def test_nonfinite_ignored_on_cuda():
    x = torch.tensor([0.5, NAN, -0.25, INF])
    cpu, gpu = snnspx.nn.Quantizer(8), snnspx.nn.Quantizer(8).cuda()
    y_cpu, y_gpu = cpu(x), gpu(x.cuda())
    torch.testing.assert_close(y_gpu.cpu(), y_cpu, equal_nan=True, rtol=0, atol=0)
    assert {k: v.item() for k, v in gpu.state_dict().items()} == {k: v.item() for k, v in cpu.state_dict().items()}
    fresh = snnspx.nn.Quantizer(8).cuda()
    fresh(torch.tensor([NAN], device="cuda"))
    fresh.eval()
    with pytest.raises(RuntimeError, match="has no range yet"):
        fresh(torch.ones(2, device="cuda"))


# --------------------------------------------------------------------------- quantize: the scale (regressions)
@pytest.mark.parametrize("scale", [0.0, -0.0, -2.0, 3.0, 0.3, NAN, INF, -INF, 2.0**128, 2.0**-127, 2**1000])
def test_quantize_rejects_bad_number_scale(scale):
    with pytest.raises(ValueError, match="scale must be a positive power of two"):
        F.quantize(torch.ones(3), scale)


def test_quantize_scale_range_follows_arithmetic_dtype():
    x64 = torch.tensor([0.5], dtype=torch.float64)
    assert F.quantize(x64, 2.0**200, bits=8).item() == 127 / 2.0**200  # float64 arithmetic holds 2**200
    for dtype in (torch.float32, torch.float16, torch.bfloat16):  # float32 arithmetic does not
        with pytest.raises(ValueError, match="float32's normal range"):
            F.quantize(x64.to(dtype), 2.0**200, bits=8)
    assert F.quantize(torch.tensor([3.0]), 2**-2, bits=8).item() == 4.0  # negative exponents are powers of two too
    assert F.quantize(torch.tensor([0.3]), 4, bits=8).item() == 0.25  # an int is a number


@pytest.mark.parametrize("scale", [True, "4", None, [4.0]])
def test_quantize_rejects_scale_of_wrong_type(scale):
    with pytest.raises(TypeError, match="scale must be"):
        F.quantize(torch.ones(3), scale)


def test_quantize_tensor_scale_checks():
    x = torch.tensor([0.3, -1.2, 5.0])
    for ok in (torch.tensor(4.0), torch.tensor(4.0, dtype=torch.float64), torch.tensor(4), torch.tensor([4.0])):
        y = F.quantize(x, ok, bits=4)
        assert y.shape == x.shape and torch.equal(y, F.quantize(x, 4.0, bits=4))
    assert F.quantize(torch.tensor(0.3), torch.tensor([[4.0]])).shape == ()
    with pytest.raises(ValueError, match="scale must be a single value"):
        F.quantize(x, torch.tensor([4.0, 4.0]))
    with pytest.raises(ValueError, match="scale must be a single value"):
        F.quantize(x, torch.ones(3, 1))
    for dtype in (torch.bool, torch.complex64):
        with pytest.raises(TypeError, match="scale must be a real"):
            F.quantize(x, torch.ones((), dtype=dtype))


@pytest.mark.parametrize("scale", [0.0, -4.0, 3.0, NAN, INF, 2.0**-140])
def test_quantize_bad_tensor_scale_gives_nan_not_a_wrong_grid(scale):
    """A tensor scale is not read back; a bad value makes the whole output NaN, loudly."""
    x = torch.tensor([0.3, -1.2, 0.0], requires_grad=True)
    y = F.quantize(x, torch.tensor(scale), bits=8)
    assert torch.isnan(y).all()
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones(3))
    with pytest.raises(ValueError, match="scale must be a positive power of two"):
        R.quantize(x.detach(), torch.tensor(scale), bits=8)  # the oracle reads it anyway


@pytest.mark.cuda
def test_quantize_scale_checks_on_cuda():
    x = torch.tensor([0.3, -1.2], device="cuda")
    assert torch.equal(F.quantize(x, torch.tensor(4.0, device="cuda")).cpu(), F.quantize(x.cpu(), 4.0))
    assert torch.isnan(F.quantize(x, torch.tensor(0.0, device="cuda"))).all()
    with pytest.raises(ValueError, match="scale must be a positive power of two"):
        F.quantize(x, 0.0)


# --------------------------------------------------------------------------- pow2_scale_exponent (regressions)
@pytest.mark.parametrize("absmax,want", [(3.0, 5), (1, 6), (0, 31), (200, 0), (INF, 0), (NAN, 0), (10**400, 0)])
def test_scale_exponent_accepts_python_numbers(absmax, want):
    got = F.pow2_scale_exponent(absmax, 8)
    assert got.dtype == torch.int64 and got.shape == () and got.device.type == "cpu" and got.item() == want


@pytest.mark.parametrize("absmax", ["3", None, True, [1.0]])
def test_scale_exponent_rejects_wrong_type(absmax):
    with pytest.raises(TypeError, match="absmax must be"):
        F.pow2_scale_exponent(absmax, 8)


def test_scale_exponent_needs_one_value():
    for bad in (torch.tensor([1.0, 2.0]), torch.ones(2, 3), torch.zeros(0)):
        with pytest.raises(ValueError, match="absmax must be a single value"):
            F.pow2_scale_exponent(bad, 8)
    for bad in (torch.tensor(True), torch.tensor(1j)):
        with pytest.raises(TypeError, match="absmax must be a real"):
            F.pow2_scale_exponent(bad, 8)
    got = F.pow2_scale_exponent(torch.tensor([[1.0]]), 8)  # one element, any shape
    assert got.shape == () and got.item() == 6
    assert F.pow2_scale_exponent(torch.tensor(3), 8).item() == 5  # integer tensors too


@pytest.mark.parametrize("absmax", [1.0, 0.3, 127.4, 3e-10, 0.0])
def test_scale_exponent_of_negative_absmax_is_that_of_its_magnitude(absmax):
    want = F.pow2_scale_exponent(absmax, 8).item()
    assert F.pow2_scale_exponent(-absmax, 8).item() == want
    assert F.pow2_scale_exponent(torch.tensor(-absmax), 8).item() == want


@pytest.mark.cuda
def test_scale_exponent_stays_on_cuda():
    got = F.pow2_scale_exponent(torch.tensor(-1.0, device="cuda"), 8)
    assert got.device.type == "cuda" and got.item() == 6


# --------------------------------------------------------------------------- the reference follows the same rules
@pytest.mark.parametrize("absmax", [1.0, -1.0, 0.3, -0.3, 127.4, -127.4, 3e-10, -3e-10, 0.0, -200.0, 1e300, INF, -INF, NAN])
def test_reference_scale_exponent_matches_functional(absmax):
    """A negative absmax is read as its magnitude by both (-1.0 gives 6, not 31)."""
    for bits in (2, 8, 16):
        want = F.pow2_scale_exponent(absmax, bits)
        for arg in (absmax, torch.tensor(float(absmax), dtype=torch.float64)):
            got = R.pow2_scale_exponent(arg, bits)
            assert got.dtype == torch.int64 and got.shape == () and got.item() == want.item(), (arg, bits)
    assert R.pow2_scale_exponent(-1.0, 8).item() == 6


def test_reference_scale_exponent_argument_checks():
    assert R.pow2_scale_exponent(10**400, 8).item() == F.pow2_scale_exponent(10**400, 8).item() == 0
    for bad in ("3", None, True, [1.0], torch.tensor(True), torch.tensor(1j)):
        with pytest.raises(TypeError, match="absmax must be"):
            R.pow2_scale_exponent(bad, 8)
    for bad in (torch.tensor([1.0, 2.0]), torch.zeros(0)):
        with pytest.raises(ValueError, match="absmax must be a single value"):
            R.pow2_scale_exponent(bad, 8)
    assert R.pow2_scale_exponent(torch.tensor([[-1.0]]), 8).item() == 6  # one element, any shape
    assert R.pow2_scale_exponent(torch.tensor(3), 8).item() == 5  # integer tensors too


@pytest.mark.parametrize("scale", [0.0, -0.0, -2.0, 3.0, 0.3, NAN, INF, -INF, 2.0**128, 2.0**-127, 2**1000])
def test_reference_quantize_rejects_bad_scale(scale):
    """The reference reads the scale, number or tensor, and raises ValueError for a bad one."""
    x = torch.ones(3)
    with pytest.raises(ValueError, match="scale must be a positive power of two"):
        R.quantize(x, scale)
    if isinstance(scale, float):
        with pytest.raises(ValueError, match="scale must be a positive power of two"):
            R.quantize(x, torch.tensor(scale, dtype=torch.float64))
    with pytest.raises(ValueError, match="scale must be a positive power of two"):
        F.quantize(x, scale)  # the functional form agrees for numbers


def test_reference_quantize_scale_types_and_range():
    x = torch.tensor([0.3, -1.2, 5.0])
    for bad in (True, "4", None, [4.0], torch.ones((), dtype=torch.bool), torch.ones((), dtype=torch.complex64)):
        with pytest.raises(TypeError, match="scale must be"):
            R.quantize(x, bad)
    with pytest.raises(ValueError, match="scale must be a single value"):
        R.quantize(x, torch.tensor([4.0, 4.0]))
    for ok in (4.0, 4, torch.tensor(4.0), torch.tensor([4.0]), torch.tensor(4), 2.0**-2):
        assert torch.equal(R.quantize(x, ok, bits=4), F.quantize(x, ok, bits=4))
    x64 = torch.tensor([0.5], dtype=torch.float64)
    assert R.quantize(x64, 2.0**200, bits=8).item() == F.quantize(x64, 2.0**200, bits=8).item()  # float64 arithmetic
    with pytest.raises(ValueError, match="float32's normal range"):
        R.quantize(x64.float(), 2.0**200, bits=8)
    assert R.quantize(torch.tensor(0.3), 4.0).shape == ()  # 0-dim inputs, as the functional form


def test_running_range_keeps_float64_whatever_the_module_dtype():
    """The range buffers stay float64 through .half(), .bfloat16() and .to(dtype): kept in the
    module's dtype they rounded (a float64 batch's range in a float32 module) or overflowed to
    inf above 65504 (.half()), which moved the fitted scale for good."""
    from snnspx.functional.quant import pow2_scale_exponent

    q = snnspx.nn.Quantizer(8)
    q(torch.tensor([63.7499999999], dtype=torch.float64))  # just below the 2**1 boundary 63.75
    assert q.scale_exponent.item() == pow2_scale_exponent(63.7499999999, 8).item() == 1
    q = snnspx.nn.Quantizer(24)
    q(torch.tensor([70000.0]))
    for convert in (lambda m: m.half(), lambda m: m.bfloat16(), lambda m: m.to(torch.float16), lambda m: m.double()):
        c = convert(copy.deepcopy(q))
        assert c.running_min.dtype == c.running_max.dtype == torch.float64
        assert c.running_max.item() == 70000.0
        c(torch.tensor([1.0], dtype=torch.float16))
        assert c.scale_exponent.item() == pow2_scale_exponent(70000.0, 24).item() == 6
    q = snnspx.nn.Quantizer(8).bfloat16()
    q(torch.tensor([0.4979]))  # a float32 batch into a bfloat16 module
    assert q.scale_exponent.item() == pow2_scale_exponent(0.4979, 8).item() == 8
    # built on the meta device, then materialised: float64 buffers, reset by reset_running_stats
    m = snnspx.nn.Quantizer(8).to("meta").to_empty(device="cpu")
    m.reset_running_stats()
    assert m.running_min.dtype == torch.float64 and m.running_min.item() == float("inf")
    # a checkpoint with float32 buffers (from before) loads into the float64 ones
    q = snnspx.nn.Quantizer(8)
    q.load_state_dict({"running_min": torch.tensor(-1.0), "running_max": torch.tensor(2.5), "scale_exponent": torch.tensor(5)})
    assert q.running_max.dtype == torch.float64 and q.running_max.item() == 2.5 and q.scale_exponent.item() == 5
