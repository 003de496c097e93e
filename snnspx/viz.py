"""Figures of spiking activity: rasters, firing-rate curves, superpixel rate maps.

Needs matplotlib (``pip install "snnspx[demo]"``), imported inside the functions, so
``import snnspx`` and ``import snnspx.viz`` work without it.

Every function:

* takes CPU or CUDA tensors (they are detached and copied to the CPU) or NumPy arrays;
* draws into `ax` when one is given, else into a new figure from :mod:`matplotlib.pyplot`;
* returns the :class:`matplotlib.figure.Figure` and never calls ``plt.show()``: call
  ``fig.savefig(...)`` or ``plt.show()`` yourself. Works with any backend, ``Agg`` included.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

__all__ = ["spike_raster", "firing_rate_curves", "superpixel_rate_map"]

_INSTALL_HINT = 'snnspx.viz needs matplotlib; install it with: pip install "snnspx[demo]" (or pip install matplotlib)'


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    return plt


def _numpy(x, name: str) -> np.ndarray:
    """A tensor or array as a NumPy array on the CPU (floats as float64, ints as int64)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = x.to(torch.float64) if x.is_floating_point() else x
        x = x.numpy()
    elif not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    return x


def spike_raster(
    spikes,
    membrane=None,
    ax=None,
    *,
    neuron: int = 0,
    v_th: float | None = None,
    title: str | None = None,
    color: str = "black",
    marker_size: float | None = None,
):
    """Raster plot of a ``[T, N]`` slice of spikes: neurons on the y axis, time on x.

    A dot (a short vertical bar) at ``(t, n)`` for every non-zero ``spikes[t, n]``.
    To plot part of a bigger output, flatten it first, e.g.
    ``spike_raster(out[:, 0].flatten(1)[:, :64])`` for the first 64 neurons of sample 0
    of a ``[T, B, C, H, W]`` tensor.

    Args:
        spikes: ``[T, N]`` tensor or array of 0/1 spikes (any non-zero value counts).
        membrane: optional membrane potential, ``[T]`` (of the neuron `neuron`) or
            ``[T, N]`` (then column `neuron` is shown). Without `ax` it is drawn in a
            second panel under the raster, sharing the time axis; with `ax` it is drawn
            on a twin y axis of `ax` (right-hand scale).
        ax: a matplotlib ``Axes`` to draw the raster into; None makes a new figure.
        neuron: which neuron's membrane to show; its row of the raster is highlighted.
        v_th: draws the threshold as a dashed line on the membrane plot.
        title: axes title.
        color: colour of the spike marks.
        marker_size: area of the spike marks in points squared (matplotlib's ``s``); None
            picks one from N.

    Returns:
        The :class:`~matplotlib.figure.Figure` that holds the plot.

    Raises:
        TypeError: `neuron` is not an int.
        ValueError: `spikes` is not 2-D, `membrane` does not match it, `neuron` is out of range.
    """
    if not isinstance(neuron, (int, np.integer)) or isinstance(neuron, bool):
        raise TypeError(f"neuron must be an int (a column of spikes), got {type(neuron).__name__}")
    s = _numpy(spikes, "spikes")
    if s.ndim != 2:
        raise ValueError(f"spikes must be [T, N] (time, neurons), got shape {tuple(s.shape)}")
    T, N = s.shape
    u = None
    if membrane is not None:
        u = _numpy(membrane, "membrane").astype(np.float64)
        if u.shape not in ((T,), (T, N)):
            raise ValueError(
                f"membrane must be [T] or [T, N] = [{T}] or [{T}, {N}] to match spikes, got shape {tuple(u.shape)}"
            )
        if not 0 <= neuron < N:
            raise ValueError(f"neuron must be in [0, {N}) for spikes of shape {tuple(s.shape)}, got {neuron}")
        if u.ndim == 2:
            u = u[:, neuron]
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    own_panel = ax is None and u is not None
    if ax is None:
        if u is None:
            fig, ax = plt.subplots(figsize=(7, 3.5), layout="constrained")
            ax_u = None
        else:
            # two panels sharing the time axis: raster on top, membrane below
            fig, (ax, ax_u) = plt.subplots(
                2, 1, figsize=(7, 5), sharex=True, height_ratios=(3, 1.3), layout="constrained"
            )
    else:
        fig = ax.figure
        ax_u = ax.twinx() if u is not None else None

    t_idx, n_idx = np.nonzero(s)
    size = marker_size if marker_size is not None else float(np.clip(2400.0 / max(N, 1), 4.0, 80.0))
    ax.scatter(t_idx, n_idx, marker="|", s=size, c=color, linewidths=1.5)
    if u is not None:
        ax.axhspan(neuron - 0.5, neuron + 0.5, color="tab:orange", alpha=0.15, lw=0)
    ax.set_xlim(-0.5, T - 0.5)
    ax.set_ylim(-0.5, N - 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("time step")
    ax.set_ylabel("neuron")
    if title is not None:
        ax.set_title(title)

    if ax_u is not None:
        ax_u.plot(np.arange(T), u, color="tab:orange", lw=1.2, label=f"membrane of neuron {neuron}")
        if v_th is not None:
            ax_u.axhline(v_th, color="tab:red", ls="--", lw=0.8, label="threshold")
        ax_u.set_ylabel("membrane")
        if own_panel:
            ax_u.set_xlabel("time step")
            ax.set_xlabel("")
        ax_u.legend(loc="upper right", fontsize="small", frameon=False)
    return fig


def firing_rate_curves(spikes_by_layer, ax=None, *, title: str | None = None):
    """Mean firing rate per time step, one curve per layer.

    ``rate[t] = spikes[t].mean()``: the fraction of a layer's neurons (over the batch
    and all other dimensions) that fire at step ``t``.

    Args:
        spikes_by_layer: a ``{name: spikes}`` mapping (insertion order is the legend
            order), or one tensor. Each tensor is ``[T, ...]``; layers may have
            different T.
        ax: a matplotlib ``Axes`` to draw into; None makes a new figure.
        title: axes title.

    Returns:
        The :class:`~matplotlib.figure.Figure` that holds the plot.

    Raises:
        ValueError: an empty mapping, or a tensor with no time dimension or no steps.
    """
    if isinstance(spikes_by_layer, (torch.Tensor, np.ndarray)):
        layers = {"spikes": spikes_by_layer}
    elif isinstance(spikes_by_layer, Mapping):
        layers = dict(spikes_by_layer)
        if not layers:
            raise ValueError("spikes_by_layer must hold at least one layer, got an empty mapping")
    else:
        raise TypeError(
            "spikes_by_layer must be a tensor or a mapping of layer name to tensor, "
            f"got {type(spikes_by_layer).__name__}"
        )
    rates = {}
    for name, spk in layers.items():
        a = _numpy(spk, f"spikes_by_layer[{name!r}]")
        if a.ndim < 1 or a.shape[0] == 0:
            raise ValueError(f"spikes_by_layer[{name!r}] must be [T, ...] with T >= 1, got shape {tuple(a.shape)}")
        flat = a.reshape(a.shape[0], -1).astype(np.float64)
        rates[str(name)] = flat.mean(axis=1) if flat.shape[1] else np.zeros(a.shape[0])
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 3.5), layout="constrained")
    else:
        fig = ax.figure
    for name, r in rates.items():
        ax.plot(np.arange(len(r)), r, marker="o", ms=3, lw=1.3, label=name)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("time step")
    ax.set_ylabel("firing rate (spikes / neuron / step)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize="small", frameon=False)
    if title is not None:
        ax.set_title(title)
    return fig


def superpixel_rate_map(
    image,
    labels,
    rates,
    ax=None,
    *,
    alpha: float = 0.6,
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
    boundaries: bool = True,
    boundary_color: str = "white",
    colorbar: bool = True,
    title: str | None = None,
):
    """An image with each superpixel coloured by its (pooled) firing rate.

    Pixel ``p`` gets the colour of ``rates[labels[p]]`` over the image, with
    opacity `alpha`; pixels with a negative label (no superpixel) stay uncoloured.

    Args:
        image: ``[H, W]`` (grey, shown with the ``gray`` colour map) or ``[H, W, 3]``
            (RGB, floats in ``[0, 1]`` or 8-bit integers). A channels-first tensor
            must be permuted first: ``image.permute(1, 2, 0)``.
        labels: ``[H, W]`` integer superpixel labels; ``-1`` (any negative) for none.
        rates: ``[K]`` one value per superpixel, ``K > labels.max()``, e.g. the
            pooled output of one channel averaged over time.
        ax: a matplotlib ``Axes`` to draw into; None makes a new figure.
        alpha: opacity of the rate colours, in ``[0, 1]``.
        cmap, vmin, vmax: colour map and its range (default: the range of `rates`).
        boundaries: draw the superpixel boundaries in `boundary_color`.
        colorbar: add a colour bar labelled "firing rate".
        title: axes title.

    Returns:
        The :class:`~matplotlib.figure.Figure` that holds the plot.

    Raises:
        TypeError: `alpha`, `vmin` or `vmax` is not a number.
        ValueError: shapes that do not fit, an image without pixels, non-integer labels, a
            label ``>= K``, `alpha` outside ``[0, 1]``, ``vmin >= vmax`` or either not finite.
    """
    for name, v in (("alpha", alpha), ("vmin", vmin), ("vmax", vmax)):
        if v is None and name != "alpha":
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise TypeError(f"{name} must be a number{' or None' if name != 'alpha' else ''}, got {type(v).__name__}")
        if not np.isfinite(v):
            raise ValueError(f"{name} must be finite, got {v}")
    if vmin is not None and vmax is not None and not vmin < vmax:
        raise ValueError(f"vmin must be < vmax, got vmin={vmin} and vmax={vmax}")
    img = _numpy(image, "image")
    lab = _numpy(labels, "labels")
    r = _numpy(rates, "rates")
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
        raise ValueError(f"image must be [H, W] or [H, W, 3], got shape {tuple(img.shape)}")
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"image must have at least one pixel, got shape {tuple(img.shape)}")
    if lab.ndim != 2 or lab.shape != img.shape[:2]:
        raise ValueError(f"labels must be [H, W] = {list(img.shape[:2])} to match image, got shape {tuple(lab.shape)}")
    if not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"labels must be an integer tensor, got {lab.dtype}")
    if r.ndim != 1:
        raise ValueError(f"rates must be [K] (one value per superpixel), got shape {tuple(r.shape)}")
    K = r.shape[0]
    if lab.size and lab.max() >= K:
        raise ValueError(f"labels must be < K = len(rates) = {K}, got a label {int(lab.max())}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")

    inside = lab >= 0
    rate_img = np.ma.masked_array(np.zeros(lab.shape, np.float64), mask=~inside)
    if K:
        rate_img[inside] = r.astype(np.float64)[lab[inside]]
    finite = r[np.isfinite(r)] if K else r
    lo = float(vmin) if vmin is not None else (float(finite.min()) if finite.size else 0.0)
    hi = float(vmax) if vmax is not None else (float(finite.max()) if finite.size else 1.0)
    if hi <= lo:  # a limit taken from the rates meets the other: move the one not given
        if vmax is None:
            hi = lo + 1.0
        else:
            lo = hi - 1.0

    plt = _pyplot()
    if ax is None:
        H, W = lab.shape
        fig, ax = plt.subplots(figsize=(5.5, 5.0 * H / max(W, 1) + 0.3), layout="constrained")
    else:
        fig = ax.figure
    if img.ndim == 2:
        ax.imshow(img, cmap="gray", interpolation="nearest")
    else:
        ax.imshow(img, interpolation="nearest")
    im = ax.imshow(rate_img, cmap=cmap, vmin=lo, vmax=hi, alpha=alpha, interpolation="nearest")
    if boundaries:
        # A pixel is on a boundary when its right or lower neighbour has another label.
        edge = np.zeros(lab.shape, bool)
        edge[:, :-1] |= lab[:, 1:] != lab[:, :-1]
        edge[:-1, :] |= lab[1:, :] != lab[:-1, :]
        from matplotlib.colors import to_rgba

        overlay = np.zeros((*lab.shape, 4))
        overlay[edge] = to_rgba(boundary_color)
        ax.imshow(overlay, interpolation="nearest")
    ax.set_axis_off()
    if colorbar:
        fig.colorbar(im, ax=ax, label="firing rate", shrink=0.85)
    if title is not None:
        ax.set_title(title)
    return fig
