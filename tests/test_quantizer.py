"""Quantizer (SPEC §7): the power-of-two scale, rounding, straight-through gradient, running range."""

from __future__ import annotations

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
        got = F.quantize(x, scale, bits, rounding)
        want = R.quantize(x, scale, bits, rounding)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        q_max = 2 ** (bits - 1) - 1
        ints = got * scale
        assert torch.equal(ints, torch.round(ints)) and ints.abs().max() <= q_max
    assert torch.equal(F.quantize(x, 2.0, bits, rounding, backend="reference"), R.quantize(x, 2.0, bits, rounding))


def test_rounding_modes():
    x = torch.tensor([0.625, -0.625, 0.875, -0.875, 0.375, 100.0, -100.0])  # x * 4 = 2.5, -2.5, 3.5, -3.5, 1.5
    assert (F.quantize(x, 4.0, 4, "nearest") * 4).tolist() == [2, -2, 4, -4, 2, 7, -7]  # ties to even, clamp +-7
    assert (F.quantize(x, 4.0, 4, "truncate") * 4).tolist() == [2, -2, 3, -3, 1, 7, -7]  # toward zero


@pytest.mark.parametrize("rounding", ["nearest", "truncate"])
def test_straight_through_gradient(rounding, gen):
    """dL/dx = dL/dy exactly, also for values that clamp."""
    x = (torch.randn(50, generator=gen) * 20).requires_grad_()
    g = torch.randn(50, generator=gen)
    F.quantize(x, 2.0, 6, rounding).backward(g)
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
        return F.quantize(F.standardize_weight(a, b, c), scale, 32)

    assert torch.autograd.gradcheck(path, (w, gain, bias), eps=1e-3, atol=1e-5)
    x = torch.randn(20, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: F.quantize(v, 2.0**26, 32), (x,), eps=1e-3)


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
    assert torch.equal(y, F.quantize(x, 2.0**6, 8))
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
    for bits in (1, 33, 8.0, True):
        with pytest.raises(ValueError, match="bits must be an int"):
            snnspx.nn.Quantizer(bits)
    with pytest.raises(ValueError, match="rounding must be"):
        snnspx.nn.Quantizer(8, "floor")
    with pytest.raises(ValueError, match="rounding must be"):
        snnspx.nn.SRMConv2d(2, 2, 3, weight_bits=8, weight_rounding="up")
    assert "bits=8, rounding='nearest'" in repr(snnspx.nn.Quantizer())
