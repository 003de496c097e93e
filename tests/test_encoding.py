"""Image-to-spike encoders: shapes, dtypes, statistics of the Poisson code, the exact
timing of the latency code, reproducibility and argument errors."""

from __future__ import annotations

import math

import pytest
import torch

from snnspx.encoding import latency_encode, poisson_encode

DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", marks=pytest.mark.cuda, id="cuda")]


# --------------------------------------------------------------------------- shapes and dtypes
@pytest.mark.parametrize("encode", [poisson_encode, latency_encode], ids=["poisson", "latency"])
@pytest.mark.parametrize(
    "shape, out",
    [((2, 3, 4, 5), (7, 2, 3, 4, 5)), ((3, 4, 5), (7, 1, 3, 4, 5)), ((4, 5), (7, 1, 1, 4, 5))],
    ids=["BCHW", "CHW", "HW"],
)
def test_shapes(encode, shape, out, gen):
    s = encode(torch.rand(shape, generator=gen), 7)
    assert s.shape == out
    assert ((s == 0) | (s == 1)).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("encode", [poisson_encode, latency_encode], ids=["poisson", "latency"])
def test_dtype_and_device_follow_the_images(encode, dtype, device, gen):
    x = torch.rand(2, 1, 3, 3, generator=gen).to(device=device, dtype=dtype)
    s = encode(x, 4)
    assert s.dtype == dtype and s.device == x.device


@pytest.mark.parametrize("encode", [poisson_encode, latency_encode], ids=["poisson", "latency"])
def test_noncontiguous_images_match_their_contiguous_copy(encode, seed):
    x = torch.rand(2, 6, 5, 3, generator=torch.Generator().manual_seed(seed)).permute(0, 3, 2, 1)
    assert not x.is_contiguous()

    def kwargs():
        return {"generator": torch.Generator().manual_seed(seed)} if encode is poisson_encode else {}

    a = encode(x, 5, **kwargs())
    b = encode(x.contiguous(), 5, **kwargs())
    assert torch.equal(a, b)


# --------------------------------------------------------------------------- Poisson statistics
@pytest.mark.parametrize("max_rate", [1.0, 0.5])
def test_poisson_mean_rate_per_intensity(max_rate, gen):
    levels = torch.tensor([0.0, 0.05, 0.3, 0.5, 0.8, 1.0])
    n_pix, T = 400, 200
    x = levels.view(-1, 1, 1, 1).expand(-1, 1, 1, n_pix)  # [6, 1, 1, n_pix]: one row per level
    s = poisson_encode(x, T, max_rate=max_rate, generator=gen)
    rate = s.mean(dim=(0, 2, 3, 4))  # per level, over T * n_pix = 80000 Bernoulli draws
    for lvl, r in zip(levels.tolist(), rate.tolist()):
        p = lvl * max_rate
        if p in (0.0, 1.0):
            assert r == p, (lvl, r)
        else:
            sigma = math.sqrt(p * (1 - p) / (T * n_pix))
            assert abs(r - p) < 6 * sigma, f"intensity {lvl}: rate {r}, expected {p} +- {6 * sigma:.4f}"


def test_poisson_counts_are_binomial(gen):
    """Steps are independent: per-pixel spike counts have the binomial variance T p (1 - p)."""
    T, p, n_pix = 100, 0.3, 4000
    s = poisson_encode(torch.full((1, 1, n_pix), p), T, generator=gen)
    counts = s.sum(0).flatten()
    assert abs(counts.mean().item() - T * p) < 0.5
    assert counts.var().item() == pytest.approx(T * p * (1 - p), rel=0.2)


def test_poisson_clamps_intensities(gen):
    x = torch.tensor([[-1.0, -0.01, 1.01, 5.0]])
    s = poisson_encode(x, 50, generator=gen)[:, 0, 0, 0]
    assert s[:, :2].sum() == 0 and s[:, 2:].all()


def test_poisson_max_rate_zero_is_silent(gen):
    assert poisson_encode(torch.ones(2, 3, 3), 10, max_rate=0.0, generator=gen).sum() == 0


def test_poisson_is_reproducible_with_a_generator(seed):
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    a = poisson_encode(x, 10, generator=torch.Generator().manual_seed(seed))
    b = poisson_encode(x, 10, generator=torch.Generator().manual_seed(seed))
    c = poisson_encode(x, 10, generator=torch.Generator().manual_seed(seed + 1))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_poisson_without_generator_uses_the_global_rng(seed):
    x = torch.full((4, 8, 8), 0.5)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        a = poisson_encode(x, 6)
        torch.manual_seed(seed)
        b = poisson_encode(x, 6)
    assert torch.equal(a, b)


# --------------------------------------------------------------------------- latency code
def test_latency_linear_times_are_exact():
    T = 11
    x = torch.tensor([1.0, 0.9, 0.55, 0.5, 0.1, 0.01])
    s = latency_encode(x.view(1, -1), T)[:, 0, 0, 0]  # [T, 6]
    assert (s.sum(0) == 1).all()
    times = s.argmax(0)
    expected = torch.round((1 - x) * (T - 1)).long()
    assert torch.equal(times, expected)
    assert times.tolist() == [0, 1, 4, 5, 9, 10]


def test_latency_log_times_are_exact():
    T, tau = 20, 3.0
    x = torch.tensor([1.0, 0.5, 0.2, 0.001, 1e-6], dtype=torch.float64)
    s = latency_encode(x.view(1, -1), T, tau=tau)[:, 0, 0, 0]
    assert (s.sum(0) == 1).all()
    expected = [min(round(tau * math.log(1 / v)), T - 1) for v in x.tolist()]
    assert s.argmax(0).tolist() == expected  # the last two are held at T - 1


@pytest.mark.parametrize("tau", [None, 4.0], ids=["linear", "log"])
def test_latency_one_spike_above_threshold_none_below(tau, gen):
    threshold = 0.2
    x = torch.rand(3, 2, 9, 9, generator=gen)
    x[0, 0, 0, :4] = torch.tensor([0.0, threshold, 1.0, -0.5])
    s = latency_encode(x, 16, tau=tau, threshold=threshold)
    count = s.sum(0)
    assert torch.equal(count, (x > threshold).to(count.dtype))
    assert count[0, 0, 0, :4].tolist() == [0, 0, 1, 0]


@pytest.mark.parametrize("tau", [None, 2.5], ids=["linear", "log"])
def test_latency_brighter_fires_earlier(tau, gen):
    T = 25
    x = torch.rand(1, 1, 1, 500, generator=gen) * 0.98 + 0.01
    s = latency_encode(x, T, tau=tau)[:, 0, 0, 0]
    times = s.argmax(0).float()
    order = torch.argsort(x.flatten(), descending=True)
    t_sorted = times[order]
    assert (t_sorted[1:] >= t_sorted[:-1]).all(), "a brighter pixel fired after a darker one"
    assert t_sorted[0] < t_sorted[-1]


def test_latency_T1_and_nan():
    x = torch.tensor([[0.3, float("nan"), 0.0]])
    s = latency_encode(x, 1)
    assert s.flatten().tolist() == [1.0, 0.0, 0.0]


def test_poisson_nan_never_fires(gen):
    s = poisson_encode(torch.tensor([[float("nan")]]), 20, generator=gen)
    assert s.sum() == 0


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "call, err, match",
    [
        (lambda x: poisson_encode(x, 0), ValueError, "T must be >= 1"),
        (lambda x: latency_encode(x, -3), ValueError, "T must be >= 1"),
        (lambda x: poisson_encode(x, 2.0), TypeError, "T must be a Python int"),
        (lambda x: poisson_encode(x, 5, max_rate=1.5), ValueError, r"max_rate must be in \[0, 1\]"),
        (lambda x: poisson_encode(x, 5, max_rate=-0.1), ValueError, "max_rate"),
        (lambda x: poisson_encode((x * 255).to(torch.uint8), 5), ValueError, "images must be a floating-point"),
        (lambda x: latency_encode(x.long(), 5), ValueError, "images must be a floating-point"),
        (lambda x: poisson_encode(x[None, None], 5), ValueError, r"images must be \[B, C, H, W\]"),
        (lambda x: latency_encode(x[0, 0, 0], 5), ValueError, r"images must be \[B, C, H, W\]"),
        (lambda x: poisson_encode(x.numpy(), 5), TypeError, "images must be a torch.Tensor"),
        (lambda x: latency_encode(x, 5, tau=0.0), ValueError, "tau must be"),
        (lambda x: latency_encode(x, 5, tau=float("inf")), ValueError, "tau must be"),
        (lambda x: latency_encode(x, 5, threshold=float("nan")), ValueError, "threshold must be a finite"),
    ],
)
def test_bad_arguments_name_the_argument(call, err, match):
    with pytest.raises(err, match=match):
        call(torch.rand(2, 1, 3, 3))


@pytest.mark.cuda
def test_poisson_generator_on_another_device_is_an_error():
    x = torch.rand(1, 1, 3, 3, device="cuda")
    with pytest.raises(ValueError, match="generator must be on the device of images"):
        poisson_encode(x, 3, generator=torch.Generator())
    s = poisson_encode(x, 3, generator=torch.Generator(device="cuda").manual_seed(0))
    assert s.is_cuda


# --------------------------------------------------------------------------- extreme parameters and sizes
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("tau", [1e39, 1e300, 3.5e38], ids=["1e39", "1e300", "just-past-f32"])
def test_latency_tau_beyond_float32_keeps_white_pixels(tau, dtype):
    """tau overflowed to inf in float32 and inf * ln(1) = NaN dropped every white pixel. Every
    pixel above the threshold fires once: intensity 1 at step 0, anything darker at T - 1."""
    x = torch.tensor([[1.0, 0.5, 0.99, 0.0]], dtype=dtype)  # 0.99 stays < 1 in bfloat16
    s = latency_encode(x, 5, tau=tau)[:, 0, 0, 0]
    assert s.sum(0).tolist() == [1, 1, 1, 0]
    assert s[:, :3].argmax(0).tolist() == [0, 4, 4]


def test_latency_tau_beyond_float32_issue_example():
    assert latency_encode(torch.tensor([[1.0, 0.5]]), 5, tau=1e39).sum(0).flatten().tolist() == [1, 1]


@pytest.mark.parametrize("tau", [1e-300, 1e-30, 1e-3])
def test_latency_tiny_tau_fires_everything_at_step_0(tau):
    x = torch.tensor([[1.0, 0.5, 1e-6, 1e-30]])
    s = latency_encode(x, 6, tau=tau)[:, 0, 0, 0]
    assert s.sum(0).tolist() == [1, 1, 1, 1]
    assert s.argmax(0).tolist() == [0, 0, 0, 0]


def test_latency_log_black_pixel_above_negative_threshold_fires_last():
    """x = 0 with a negative threshold: ln(1/0) = inf, held at T - 1 (it fired at the step of
    ln(1 / tiny) = 87 when x was clamped to the smallest normal float)."""
    x = torch.tensor([[0.0, -0.3, 1.0]])
    s = latency_encode(x, 200, tau=1.0, threshold=-1.0)[:, 0, 0, 0]
    assert s.sum(0).tolist() == [1, 1, 1]
    assert s.argmax(0).tolist() == [199, 199, 0]


def test_latency_log_subnormal_intensity_time_is_exact():
    """A float32 subnormal x = 1e-40 fires at round(ln(1e40)) = 92, not at ln(1/tiny) = 87."""
    x = torch.tensor([[1e-40]], dtype=torch.float32)
    assert x.item() > 0
    s = latency_encode(x, 200, tau=1.0)[:, 0, 0, 0]
    assert s.argmax(0).tolist() == [round(math.log(1 / x.item()))]


@pytest.mark.parametrize("tau", [None, 0.5, 1e39], ids=["linear", "log", "huge-tau"])
def test_latency_T1_every_firing_pixel_fires_at_step_0(tau):
    x = torch.tensor([[1.0, 0.5, 1e-6, 0.0, float("nan")]])
    s = latency_encode(x, 1, tau=tau)
    assert s.shape == (1, 1, 1, 1, 5)
    assert s.flatten().tolist() == [1, 1, 1, 0, 0]


@pytest.mark.parametrize("threshold", [1e300, 1e39, -1e39, -1e300])
def test_latency_threshold_beyond_float32(threshold):
    """A finite threshold past float32's range compares as +-inf: all or nothing (but NaN)."""
    x = torch.tensor([[1.0, 0.5, 0.0, float("nan")]])
    count = latency_encode(x, 4, tau=2.0, threshold=threshold).sum(0).flatten().tolist()
    assert count == ([1, 1, 1, 0] if threshold < 0 else [0, 0, 0, 0])


@pytest.mark.parametrize("encode", [poisson_encode, latency_encode], ids=["poisson", "latency"])
@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (2, 0, 4, 4), (2, 3, 0, 4), (0, 0), (3, 0)])
@pytest.mark.parametrize("T", [1, 3])
def test_zero_size_images_give_empty_spikes(encode, shape, T):
    x = torch.zeros(shape)
    s = encode(x, T)
    want = {4: (T, *shape), 2: (T, 1, 1, *shape)}[len(shape)]
    assert s.shape == want and s.dtype == x.dtype
    if encode is latency_encode:
        assert latency_encode(x, T, tau=1e39).shape == want


def test_poisson_T1(gen):
    s = poisson_encode(torch.tensor([[0.0, 1.0, 0.5]]), 1, generator=gen)
    assert s.shape == (1, 1, 1, 1, 3)
    assert s[0, 0, 0, 0, :2].tolist() == [0, 1]


@pytest.mark.parametrize(
    "call, err, match",
    [
        (lambda x: latency_encode(x, 5, tau=float("nan")), ValueError, "tau must be"),
        (lambda x: latency_encode(x, 5, tau=float("-inf")), ValueError, "tau must be"),
        (lambda x: latency_encode(x, 5, tau=-1.0), ValueError, "tau must be"),
        (lambda x: latency_encode(x, 5, tau=10**400), ValueError, "tau must be"),
        (lambda x: latency_encode(x, 5, tau="2"), TypeError, "tau must be None or a Python number"),
        (lambda x: latency_encode(x, 5, tau=True), TypeError, "tau must be None or a Python number"),
        (lambda x: latency_encode(x, 5, threshold=float("inf")), ValueError, "threshold must be a finite"),
        (lambda x: latency_encode(x, 5, threshold=-(10**400)), ValueError, "threshold must be a finite"),
        (lambda x: latency_encode(x, 5, threshold=None), TypeError, "threshold must be a Python number"),
        (lambda x: latency_encode(x, 5.0), TypeError, "T must be a Python int"),
        (lambda x: latency_encode(x, True), TypeError, "T must be a Python int"),
        (lambda x: poisson_encode(x, 5, max_rate=float("nan")), ValueError, "max_rate must be in"),
        (lambda x: poisson_encode(x, 5, max_rate=float("inf")), ValueError, "max_rate must be in"),
        (lambda x: poisson_encode(x, 5, max_rate=10**400), ValueError, "max_rate must be in"),
        (lambda x: poisson_encode(x, 5, max_rate="1"), TypeError, "max_rate must be a Python number"),
        (lambda x: poisson_encode(x, 5, generator=0), TypeError, "generator must be None or a torch.Generator"),
    ],
)
def test_bad_parameters_name_the_argument(call, err, match):
    with pytest.raises(err, match=match):
        call(torch.rand(2, 1, 3, 3))
