"""Turn images into spike trains ``[T, B, C, H, W]`` for the SRM layers.

Two codes, both pure PyTorch (no compiled kernel, any device):

* :func:`poisson_encode` (rate code): at every step each pixel fires with a
  probability proportional to its intensity.
* :func:`latency_encode` (time-to-first-spike code): each pixel fires once, the
  brighter the earlier; dark pixels stay silent.

Intensities are expected in ``[0, 1]`` (divide 8-bit images by 255 first); values
outside are clamped. Accepted image shapes and the spike shapes they give:

==================  =======================
images              spikes
==================  =======================
``[B, C, H, W]``    ``[T, B, C, H, W]``
``[C, H, W]``       ``[T, 1, C, H, W]``
``[H, W]``          ``[T, 1, 1, H, W]``
==================  =======================

Spikes are 0/1 values in the dtype and on the device of the images.
"""

from __future__ import annotations

import math

import torch

__all__ = ["poisson_encode", "latency_encode"]


def _check_images(images) -> torch.Tensor:
    """`images` as a 4-D ``[B, C, H, W]`` view, after checking type, dtype and shape."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if not images.is_floating_point():
        raise ValueError(
            f"images must be a floating-point tensor with intensities in [0, 1], got {images.dtype} "
            "(for 8-bit images use images.float() / 255)"
        )
    if images.dim() == 2:
        return images[None, None]
    if images.dim() == 3:
        return images[None]
    if images.dim() == 4:
        return images
    raise ValueError(f"images must be [B, C, H, W], [C, H, W] or [H, W], got shape {tuple(images.shape)}")


def _check_T(T) -> int:
    if isinstance(T, bool) or not isinstance(T, int):
        raise TypeError(f"T must be a Python int, got {type(T).__name__}")
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    return T


def _is_finite(value: int | float) -> bool:
    """math.isfinite, also for ints too large for a float (those count as not finite here:
    the encoders compute in floating point)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """Comparisons run in float32 (float64 for float64 images) so that float16 and
    bfloat16 images keep a fine grid of probabilities and times."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def poisson_encode(
    images: torch.Tensor,
    T: int,
    max_rate: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Rate (Bernoulli/"Poisson") spike trains of `images`.

    At every step ``t`` and pixel ``p``, independently::

        spikes[t, ..., p] = 1  with probability  clamp(images[..., p], 0, 1) * max_rate

    so the expected firing rate of a pixel is its clamped intensity times
    `max_rate` spikes per step. A pixel of intensity 0 never fires; with
    ``max_rate=1`` a pixel of intensity 1 fires at every step. NaN pixels never fire.

    Args:
        images: float intensities in ``[0, 1]``: ``[B, C, H, W]``, ``[C, H, W]`` or
            ``[H, W]`` (see the module docstring for the output shape of each).
        T: number of time steps, >= 1.
        max_rate: firing probability per step of a pixel of intensity 1, in ``[0, 1]``.
        generator: a :class:`torch.Generator` on the device of `images`, for
            reproducible spikes; None uses PyTorch's global random state.

    Returns:
        spikes ``[T, B, C, H, W]``, 0/1 values in the dtype and on the device of `images`.

    Raises:
        TypeError: `images` is not a tensor, `T` not an int, `max_rate` not a number,
            `generator` not a :class:`torch.Generator`.
        ValueError: `images` is not floating point or has a bad shape; ``T < 1``;
            `max_rate` outside ``[0, 1]``; `generator` on another device.
    """
    x = _check_images(images)
    T = _check_T(T)
    if isinstance(max_rate, bool) or not isinstance(max_rate, (int, float)):
        raise TypeError(f"max_rate must be a Python number, got {type(max_rate).__name__}")
    if not 0.0 <= max_rate <= 1.0:
        raise ValueError(f"max_rate must be in [0, 1] (a probability per step), got {max_rate}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be None or a torch.Generator, got {type(generator).__name__}")
    if generator is not None and generator.device.type != x.device.type:
        raise ValueError(f"generator must be on the device of images ({x.device}), got one on {generator.device}")
    work = _work_dtype(x.dtype)
    p = x.to(work).clamp(0.0, 1.0) * max_rate
    u = torch.rand((T, *x.shape), generator=generator, dtype=work, device=x.device)
    return (u < p).to(x.dtype)  # u in [0, 1): p = 0 never fires, p = 1 always does


def latency_encode(
    images: torch.Tensor,
    T: int,
    tau: float | None = None,
    threshold: float = 0.0,
) -> torch.Tensor:
    """Time-to-first-spike code: one spike per bright pixel, earlier for brighter.

    With ``x = clamp(images, 0, 1)``, a pixel fires exactly once, at step

    * ``t = round((1 - x) * (T - 1))`` when `tau` is None (linear: ``x = 1`` fires at
      step 0, ``x -> 0`` at step ``T - 1``), or
    * ``t = min(round(tau * ln(1 / x)), T - 1)`` when `tau` is given (logarithmic, like
      the charging time of a leaky membrane with time constant `tau`: each factor
      ``e`` less light delays the spike by `tau` steps; late spikes are held at ``T - 1``),

    and never when ``x <= threshold`` (in particular, with the default threshold 0,
    black pixels and NaN pixels are silent). The comparison is PyTorch's ``x > threshold``
    for a tensor and a Python number, made in float32 (float64 for float64 images): the
    threshold is rounded to that precision first, so a float32 pixel ``0.2`` counts as
    equal to ``threshold=0.2`` and stays silent. ``round`` is :func:`torch.round`
    (halves to even). Brighter pixels never fire later than darker ones.

    Args:
        images: float intensities in ``[0, 1]``: ``[B, C, H, W]``, ``[C, H, W]`` or ``[H, W]``.
        T: number of time steps, >= 1 (with ``T = 1`` every firing pixel fires at step 0).
        tau: None for the linear code, else a finite time constant > 0 (in steps).
        threshold: pixels with intensity ``<= threshold`` never fire; a finite number.

    Returns:
        spikes ``[T, B, C, H, W]``, 0/1 values in the dtype and on the device of
        `images`, with at most one spike per pixel.

    Raises:
        TypeError: `images` is not a tensor, `T` not an int, `tau` or `threshold` not a number.
        ValueError: `images` is not floating point or has a bad shape; ``T < 1``;
            `tau` not a finite number > 0; `threshold` not finite (NaN, inf, or an int too
            large for a float).
    """
    x = _check_images(images)
    T = _check_T(T)
    if tau is not None:
        if isinstance(tau, bool) or not isinstance(tau, (int, float)):
            raise TypeError(f"tau must be None or a Python number, got {type(tau).__name__}")
        if not (_is_finite(tau) and tau > 0):
            raise ValueError(f"tau must be None (linear code) or a finite number > 0, got {tau}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"threshold must be a Python number, got {type(threshold).__name__}")
    if not _is_finite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold}")
    work = _work_dtype(x.dtype)
    xw = x.to(work)
    fires = xw > threshold  # False for NaN
    xc = xw.clamp(0.0, 1.0)
    if tau is None:
        t = torch.round((1.0 - xc) * (T - 1))
    else:
        # tau * ln(1/x), with ln(1/0) = inf (held at T - 1 below). x = 1 gives 0 without a
        # product: a tau beyond float32's range is inf there, and inf * ln(1) would be NaN.
        # A tau that large sends every x < 1 to T - 1 (tau * ln(1/x) >= 3.4e38 * 5.9e-8).
        log_inv = -torch.log(xc)  # in [0, inf]; NaN only for NaN pixels, which never fire
        t = torch.where(log_inv > 0, torch.round(tau * log_inv), 0.0)
    # hold at T - 1 (the float cast of T - 1 may round up: clamp again as an integer);
    # silent pixels get -1 before the cast, so NaN and inf never reach the integer conversion
    t = torch.where(fires, t.clamp_max(float(T - 1)), -1.0).to(torch.long).clamp_max(T - 1)
    steps = torch.arange(T, device=x.device).view(T, 1, 1, 1, 1)
    return (steps == t.unsqueeze(0)).to(x.dtype)
