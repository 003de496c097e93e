"""snnspx.nn.SpikeDropout: one mask per sample for all T steps, per channel or per neuron."""

from __future__ import annotations

import pytest
import torch

import snnspx

SpikeDropout = snnspx.nn.SpikeDropout


def test_channel_mask_is_per_sample_and_channel():
    """[T, B, C, H, W]: each (sample, channel) is kept at every step and pixel (times 1 / (1 - p))
    or dropped everywhere; the dropped share is about p; the gradient has the same mask."""
    p = 0.3
    x = torch.ones(4, 50, 40, 3, 3, requires_grad=True)
    y = SpikeDropout(p)(x)
    planes = y.permute(1, 2, 0, 3, 4).reshape(50, 40, -1)  # [B, C, T * H * W]
    first = planes[..., :1]
    assert torch.all(planes == first), "one value per (sample, channel)"
    assert first.unique().tolist() == [0.0, pytest.approx(1 / (1 - p))]
    dropped = (first == 0).float().mean().item()
    assert abs(dropped - p) < 0.05, dropped
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(0))
    y.backward(g)
    torch.testing.assert_close(x.grad, g * y.detach())


def test_neuron_mask_is_per_sample_and_neuron():
    """mask="neuron": one draw per (sample, neuron), the same at every step, different across
    the pixels of a channel."""
    p = 0.5
    x = torch.ones(6, 8, 4, 5, 5)
    y = SpikeDropout(p, mask="neuron")(x)
    assert torch.all(y == y[:1]), "the same mask at every step"
    per_channel = y[0].reshape(8, 4, -1)
    assert ((per_channel == 0).any(-1) & (per_channel != 0).any(-1)).any(), "pixels of a channel differ"
    assert set(y.unique().tolist()) <= {0.0, 2.0}


def test_features_and_modes_agree_on_3d(seed):
    """[T, B, N]: both modes drop single features of each sample for all steps (the original's
    per-feature dropout), with the same draws."""
    x = torch.rand(7, 6, 20) + 0.5
    torch.manual_seed(seed)
    a = SpikeDropout(0.4)(x)
    torch.manual_seed(seed)
    b = SpikeDropout(0.4, mask="neuron")(x)
    assert torch.equal(a, b)
    kept = a[0] != 0
    assert torch.all((a != 0) == kept) and kept.any() and (~kept).any()
    torch.testing.assert_close(a[:, kept], x[:, kept] / 0.6)


def test_batch_first(seed):
    """[B, T, ...]: the mask is constant over dim 1, and equals the time-major one for the same draws."""
    x = torch.rand(5, 6, 3, 4, 4) + 0.5  # [B, T, C, H, W]
    torch.manual_seed(seed)
    y = SpikeDropout(0.5, batch_first=True)(x)
    assert torch.all((y != 0) == (y[:, :1] != 0))
    torch.manual_seed(seed)
    z = SpikeDropout(0.5)(x.transpose(0, 1))
    assert torch.equal(y, z.transpose(0, 1))
    assert "batch_first=True" in repr(SpikeDropout(batch_first=True))


def test_identity_cases_and_p_one():
    x = torch.rand(3, 2, 4)
    m = SpikeDropout(0.5).eval()
    assert m(x) is x
    assert SpikeDropout(0.0)(x) is x
    assert torch.equal(SpikeDropout(1.0)(x), torch.zeros_like(x))
    h = torch.ones(3, 2, 4, dtype=torch.float16)
    assert SpikeDropout(0.5)(h).dtype == torch.float16
    assert repr(SpikeDropout(0.25, mask="neuron")) == "SpikeDropout(p=0.25, mask='neuron', batch_first=False)"


def test_argument_checks():
    for kw, error, match in [
        (dict(p=-0.1), ValueError, r"p must be in \[0, 1\]"),
        (dict(p=1.5), ValueError, r"p must be in \[0, 1\]"),
        (dict(p="0.5"), TypeError, "p must be a Python number"),
        (dict(p=True), TypeError, "p must be a Python number"),
        (dict(mask="pixel"), ValueError, "mask must be 'channel' or 'neuron'"),
        (dict(batch_first=1), TypeError, "batch_first must be True or False"),
    ]:
        with pytest.raises(error, match=match):
            SpikeDropout(**kw)
    with pytest.raises(ValueError, match=r"x must be \[T, B, C, \.\.\.\]"):
        SpikeDropout()(torch.ones(3, 4))
    with pytest.raises(ValueError, match=r"x must be \[B, T, C, \.\.\.\]"):
        SpikeDropout(batch_first=True).eval()(torch.ones(3, 4))
    with pytest.raises(TypeError, match="floating-point"):
        SpikeDropout()(torch.ones(3, 4, 2, dtype=torch.int64))
