"""Figures: each function returns a Figure with something drawn on it, draws into a
given Axes, rejects bad shapes, and matplotlib stays an optional dependency."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from snnspx import viz

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def plt():
    """pyplot on the Agg backend; skips the test when matplotlib is not installed."""
    mpl = pytest.importorskip("matplotlib")
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    yield plt
    plt.close("all")


def _png_bytes(fig, tmp_path, name) -> int:
    path = tmp_path / f"{name}.png"
    fig.savefig(path, dpi=60)
    return path.stat().st_size


def _spikes(gen, T=30, N=12, p=0.2):
    return (torch.rand(T, N, generator=gen) < p).float()


def _labels(H=24, W=32):
    """A 3 x 4 grid of 8 x 8 superpixels, the top-left one unlabelled (-1)."""
    lab = (torch.arange(H)[:, None] // 8) * 4 + torch.arange(W)[None, :] // 8
    lab[:8, :8] = -1
    return lab


# --------------------------------------------------------------------------- spike_raster
def test_raster_figure(plt, gen, tmp_path):
    s = _spikes(gen)
    fig = viz.spike_raster(s, title="raster")
    assert isinstance(fig, plt.Figure)
    (ax,) = fig.axes
    offsets = ax.collections[0].get_offsets()
    assert len(offsets) == int(s.sum())  # one mark per spike
    t, n = torch.nonzero(s, as_tuple=True)
    assert sorted(map(tuple, offsets.tolist())) == sorted(zip(t.tolist(), n.tolist()))
    assert ax.get_title() == "raster"
    assert _png_bytes(fig, tmp_path, "raster") > 2000


@pytest.mark.parametrize("full", [False, True], ids=["membrane-T", "membrane-TN"])
def test_raster_with_membrane_panel(plt, gen, tmp_path, full):
    s = _spikes(gen)
    u = torch.randn(30, 12, generator=gen)
    fig = viz.spike_raster(s, u if full else u[:, 3], neuron=3, v_th=1.0)
    assert len(fig.axes) == 2
    ax_u = fig.axes[1]
    trace = ax_u.lines[0].get_ydata()
    assert torch.allclose(torch.as_tensor(trace, dtype=torch.float32), u[:, 3])
    assert any(list(line.get_ydata()) == [1.0, 1.0] for line in ax_u.lines[1:])  # the threshold
    assert _png_bytes(fig, tmp_path, "raster_u") > 2000


def test_raster_into_given_ax(plt, gen):
    fig, (a, b) = plt.subplots(1, 2)
    out = viz.spike_raster(_spikes(gen), ax=b)
    assert out is fig
    assert len(b.collections) == 1 and not a.collections
    # with a membrane trace and a given ax: a twin y axis on that ax
    fig2, ax = plt.subplots()
    viz.spike_raster(_spikes(gen), torch.randn(30), ax=ax)
    assert len(fig2.axes) == 2 and len(fig2.axes[1].lines) == 1


def test_raster_without_spikes_still_draws(plt, tmp_path):
    fig = viz.spike_raster(torch.zeros(10, 5))
    assert fig.axes[0].get_xlim() == (-0.5, 9.5)
    assert _png_bytes(fig, tmp_path, "empty") > 1000


# --------------------------------------------------------------------------- firing_rate_curves
def test_rate_curves(plt, gen, tmp_path):
    layers = {
        "input": (torch.rand(8, 2, 3, 4, 4, generator=gen) < 0.4).float(),
        "hidden": (torch.rand(8, 2, 16, generator=gen) < 0.1).float(),
    }
    fig = viz.firing_rate_curves(layers)
    (ax,) = fig.axes
    assert [line.get_label() for line in ax.lines] == ["input", "hidden"]
    for line, s in zip(ax.lines, layers.values()):
        expected = s.flatten(1).mean(1).double()
        assert torch.allclose(torch.as_tensor(line.get_ydata()), expected)
    assert ax.get_legend() is not None
    assert _png_bytes(fig, tmp_path, "rates") > 2000


def test_rate_curves_single_tensor_into_ax(plt, gen):
    fig, ax = plt.subplots()
    out = viz.firing_rate_curves(_spikes(gen), ax=ax)
    assert out is fig and len(ax.lines) == 1 and len(ax.lines[0].get_ydata()) == 30


# --------------------------------------------------------------------------- superpixel_rate_map
@pytest.mark.parametrize("rgb", [False, True], ids=["grey", "rgb"])
def test_superpixel_map(plt, gen, tmp_path, rgb):
    lab = _labels()
    image = torch.rand(24, 32, 3, generator=gen) if rgb else torch.rand(24, 32, generator=gen)
    rates = torch.rand(12, generator=gen)
    fig = viz.superpixel_rate_map(image, lab, rates, title="rates")
    ax = fig.axes[0]
    assert len(fig.axes) == 2  # the map and its colour bar
    assert len(ax.images) == 3  # image, rate overlay, boundaries
    overlay = ax.images[1].get_array()
    assert overlay.mask[:8, :8].all() and not overlay.mask[8:].any()  # label -1 stays uncoloured
    inside = lab >= 0
    assert torch.allclose(torch.as_tensor(overlay.data[inside.numpy()]), rates.double()[lab[inside]])
    edges = ax.images[2].get_array()[..., 3]  # boundary alpha
    assert edges[:, 7].all()  # the last column of the first superpixel column
    assert edges[:, 10].nonzero()[0].tolist() == [7, 15]  # inside: only the horizontal borders
    assert _png_bytes(fig, tmp_path, "map") > 3000


def test_superpixel_map_into_ax_without_extras(plt, gen):
    fig, ax = plt.subplots()
    out = viz.superpixel_rate_map(
        torch.rand(24, 32, generator=gen), _labels().int(), torch.rand(12, generator=gen), ax=ax,
        boundaries=False, colorbar=False,
    )
    assert out is fig and len(fig.axes) == 1 and len(ax.images) == 2


@pytest.mark.cuda
def test_cuda_tensors_are_accepted(plt, gen):
    s = _spikes(gen).cuda()
    viz.spike_raster(s, torch.randn(30, device="cuda"))
    viz.firing_rate_curves({"a": s})
    viz.superpixel_rate_map(torch.rand(24, 32).cuda(), _labels().cuda(), torch.rand(12).cuda())


# --------------------------------------------------------------------------- errors
def _map(image=None, labels=None, rates=None, **kw):
    image = torch.zeros(24, 32) if image is None else image
    labels = _labels() if labels is None else labels
    rates = torch.zeros(12) if rates is None else rates
    return viz.superpixel_rate_map(image, labels, rates, **kw)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: viz.spike_raster(torch.zeros(5)), r"spikes must be \[T, N\]"),
        (lambda: viz.spike_raster(torch.zeros(5, 2, 2)), r"spikes must be \[T, N\]"),
        (lambda: viz.spike_raster(torch.zeros(5, 3), torch.zeros(4)), r"membrane must be \[T\] or \[T, N\]"),
        (lambda: viz.spike_raster(torch.zeros(5, 3), torch.zeros(5, 2)), "membrane must be"),
        (lambda: viz.spike_raster(torch.zeros(5, 3), torch.zeros(5), neuron=3), r"neuron must be in \[0, 3\)"),
        (lambda: viz.firing_rate_curves({}), "at least one layer"),
        (lambda: viz.firing_rate_curves({"a": torch.zeros(0, 3)}), r"spikes_by_layer\['a'\] must be \[T, ...\]"),
        (lambda: _map(image=torch.zeros(3, 24, 32)), r"image must be \[H, W\]"),
        (lambda: _map(labels=_labels()[:20]), r"labels must be \[H, W\]"),
        (lambda: _map(labels=_labels().float()), "labels must be an integer"),
        (lambda: _map(rates=torch.zeros(2, 12)), r"rates must be \[K\]"),
        (lambda: _map(rates=torch.zeros(11)), "labels must be < K"),
        (lambda: _map(alpha=2), "alpha"),
        (lambda: _map(torch.zeros(0, 0), torch.zeros(0, 0, dtype=torch.long)), "image must have at least one pixel"),
        (lambda: _map(vmin=0.5, vmax=0.5), "vmin must be < vmax"),
        (lambda: _map(vmax=float("nan")), "vmax must be finite"),
    ],
)
def test_bad_shapes_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_wrong_types_raise():
    with pytest.raises(TypeError, match="spikes must be a torch.Tensor"):
        viz.spike_raster([[0, 1]])
    with pytest.raises(TypeError, match="spikes_by_layer must be"):
        viz.firing_rate_curves([torch.zeros(3)])
    with pytest.raises(TypeError, match="neuron must be an int"):
        viz.spike_raster(torch.zeros(5, 3), torch.zeros(5, 3), neuron=1.5)
    for kw in (dict(alpha="0.5"), dict(vmin="0"), dict(vmax=True)):
        with pytest.raises(TypeError, match=f"{next(iter(kw))} must be a number"):
            _map(**kw)


def test_superpixel_map_keeps_the_given_colour_limits(plt):
    """vmin and vmax are used as given; only a limit taken from the rates moves when it meets
    the given one (it overrode the caller's vmax before)."""
    rates = torch.linspace(0.5, 0.7, 12)

    def clim(**kw):
        return _map(rates=rates, **kw).axes[0].images[1].get_clim()

    assert clim(vmin=0.0, vmax=0.2) == (0.0, 0.2)
    assert clim(vmax=0.2) == pytest.approx((-0.8, 0.2))  # the rates' min 0.5 is above it
    assert clim(vmin=0.9) == pytest.approx((0.9, 1.9))  # the rates' max 0.7 is below it
    assert clim() == pytest.approx((0.5, 0.7))


# --------------------------------------------------------------------------- optional dependency
def test_import_snnspx_does_not_import_matplotlib():
    code = (
        "import sys, snnspx, snnspx.viz; "
        "assert snnspx.viz.spike_raster and snnspx.encoding.poisson_encode; "
        "assert 'matplotlib' not in sys.modules, 'matplotlib was imported'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


def test_missing_matplotlib_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r'pip install "snnspx\[demo\]"'):
        viz.spike_raster(torch.zeros(4, 2))
