"""Spike-count average pooling over non-overlapping windows (docs/maths.md §4, SPEC §4): its ops'
schemas, PyTorch kernels, fake kernels and autograd formula, and the public wrapper.

Ops (the compiled libraries add CPU and CUDA kernels for the same schemas), on ``x`` of shape
``[..., H, W]`` (at least 3 dimensions, ``H >= kh``, ``W >= kw``), windows ``kh x kw`` with
stride ``(kh, kw)``, floor mode (``OH = H // kh``, ``OW = W // kw``), ``kh * kw`` at most
``2**24`` (the kernels count in float32, exact up to there):

* ``spike_avg_pool2d(x, kh, kw) -> (y, count)``: ``y [..., OH, OW]`` in the dtype of ``x``,
  each value the mean of its window (summed in float32, float64 for float64, in row-major order
  within the window, and divided by ``kh * kw``: the order of ``F.avg_pool2d`` on the CPU);
  ``count [..., OH, OW]`` each window's number of non-zero inputs (``x != 0``: NaN counts, -0
  does not), made in the same pass. Its dtype follows from the kernel alone
  (:func:`count_dtype`): uint8 where ``kh * kw <= 255``, else int32.
* ``spike_avg_pool2d_bwd(grad_y, count, kh, kw, H, W) -> grad_x``: ``grad_x [..., H, W]`` in the
  dtype of ``grad_y``: every pixel of window ``(oh, ow)`` gets ``grad_y[oh, ow] / n``, ``n =
  count[oh, ow]``, and 0 where ``n = 0``; pixels in no window (the last ``H % kh`` rows and
  ``W % kw`` columns) get 0. The division is in float32 (float64 for float64) and the quotient
  is rounded once to the dtype, so every backend gives the same bits. It reads no input: the
  counts are all the backward needs, so autograd keeps them alone (1 byte per window for
  windows of up to 255 pixels), not ``x``.

The backward formula is a surrogate (the original ``PoolFunc``; exact where a window has no zero
input), so ``spike_avg_pool2d_bwd`` has no derivative of its own: differentiating it raises.
"""

from __future__ import annotations

import torch
import torch.nn.functional as TF

from .. import _checks, _library
from .._backend import kernels, resolve

__all__ = ["spike_avg_pool2d"]

MAX_WINDOW = 1 << 24  # pixels per window: the kernels count in float32, exact up to 2**24


def count_dtype(kh: int, kw: int) -> torch.dtype:
    """The dtype of the window counts: uint8 where a window has at most 255 pixels, else int32."""
    return torch.uint8 if kh * kw <= 255 else torch.int32


# --------------------------------------------------------------------------- argument checks
def _check_kernel(kh: int, kw: int) -> None:
    if kh < 1 or kw < 1:
        raise ValueError(f"kernel_size must be >= 1, got ({kh}, {kw})")
    if kh * kw > MAX_WINDOW:
        raise ValueError(f"kernel_size ({kh}, {kw}) must have at most 2**24 pixels per window, got {kh * kw}")


def _check_float(t: torch.Tensor, name: str) -> None:
    if t.dtype not in _checks.FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float64, float16 or bfloat16, got {t.dtype}")


def _check_op_input(x: torch.Tensor, kh: int, kw: int) -> None:
    """The forward's checks (the compiled kernels make the same ones, with the same wording)."""
    _check_float(x, "x")
    _check_kernel(kh, kw)
    if x.dim() < 3:
        raise ValueError(f"x must have at least 3 dimensions ([..., H, W]), got shape {tuple(x.shape)}")
    if x.shape[-2] < kh or x.shape[-1] < kw:
        raise ValueError(f"x's last two dimensions {tuple(x.shape[-2:])} must be at least the kernel ({kh}, {kw})")


def _out_shape(x: torch.Tensor, kh: int, kw: int) -> tuple:
    return (*x.shape[:-2], x.shape[-2] // kh, x.shape[-1] // kw)


def _check_bwd_args(grad_y: torch.Tensor, count: torch.Tensor, kh: int, kw: int, H, W) -> None:
    """The backward's checks (the compiled kernels make the same ones, with the same wording)."""
    _check_float(grad_y, "grad_y")
    _check_kernel(kh, kw)
    if grad_y.dim() < 3:
        raise ValueError(f"grad_y must have at least 3 dimensions ([..., OH, OW]), got shape {tuple(grad_y.shape)}")
    if H < kh or W < kw:
        raise ValueError(f"the input size (H, W) = ({H}, {W}) must be at least the kernel ({kh}, {kw})")
    want = (*grad_y.shape[:-2], H // kh, W // kw)
    if tuple(grad_y.shape) != want:
        raise ValueError(f"grad_y must have the output shape {want} of an input [..., {H}, {W}], "
                         f"got {tuple(grad_y.shape)}")
    if tuple(count.shape) != want:
        raise ValueError(f"count must have the shape of grad_y {want}, got {tuple(count.shape)}")
    want_dtype = count_dtype(kh, kw)
    if count.dtype != want_dtype:
        raise TypeError(f"count must be {want_dtype} for the kernel ({kh}, {kw}) (uint8 up to 255 pixels "
                        f"per window, int32 above), got {count.dtype}")
    _checks.check_devices("spike_avg_pool2d_bwd", grad_y=grad_y, count=count)


# --------------------------------------------------------------------------- PyTorch kernels
def _planes(x: torch.Tensor) -> torch.Tensor:
    """``[..., H, W]`` as ``[P, 1, H, W]`` (no -1: P may be 0)."""
    H, W = x.shape[-2:]
    P = 1
    for d in x.shape[:-2]:
        P *= d
    return x.reshape(P, 1, H, W)


def _forward_kernel(x: torch.Tensor, kh: int, kw: int) -> tuple[torch.Tensor, torch.Tensor]:
    _check_op_input(x, kh, kw)
    out = _out_shape(x, kh, kw)
    y = TF.avg_pool2d(_planes(x), (kh, kw), (kh, kw)).reshape(out)
    # Integer sums of the windows' (x != 0): exact whatever the window's size.
    OH, OW = out[-2:]
    nz = (x[..., : OH * kh, : OW * kw] != 0).reshape(*out[:-2], OH, kh, OW, kw)
    count = nz.sum(dim=(-3, -1), dtype=torch.int32).to(count_dtype(kh, kw))
    return y, count


def _backward_kernel(grad_y: torch.Tensor, count: torch.Tensor, kh: int, kw: int, H: int, W: int) -> torch.Tensor:
    _check_bwd_args(grad_y, count, kh, kw, H, W)
    # Divide in float32 (float64 for float64), rounding once to grad_y's dtype; the counts are
    # exact there (at most 2**24).
    acc = _checks.acc_dtype(grad_y.dtype)
    n = count.to(acc)
    g = torch.where(n > 0, grad_y.to(acc) / n.clamp(min=1), n.new_zeros(()))
    g = g.to(grad_y.dtype).repeat_interleave(kh, dim=-2).repeat_interleave(kw, dim=-1)
    return TF.pad(g, (0, W - g.shape[-1], 0, H - g.shape[-2]))


# --------------------------------------------------------------------------- schemas, fakes, autograd
_library.define("spike_avg_pool2d(Tensor x, int kh, int kw) -> (Tensor y, Tensor count)", _forward_kernel)
_library.define(
    "spike_avg_pool2d_bwd(Tensor grad_y, Tensor count, int kh, int kw, SymInt H, SymInt W) -> Tensor", _backward_kernel
)
_FORWARD = _library.op("spike_avg_pool2d")
_BACKWARD = _library.op("spike_avg_pool2d_bwd")


@torch.library.register_fake("snnspx::spike_avg_pool2d")
def _forward_fake(x, kh, kw):
    _check_op_input(x, kh, kw)
    out = _out_shape(x, kh, kw)
    return x.new_empty(out), x.new_empty(out, dtype=count_dtype(kh, kw))


@torch.library.register_fake("snnspx::spike_avg_pool2d_bwd")
def _backward_fake(grad_y, count, kh, kw, H, W):
    _check_bwd_args(grad_y, count, kh, kw, H, W)
    return grad_y.new_empty((*grad_y.shape[:-2], H, W))


def _setup(ctx, inputs, output):
    x, kh, kw = inputs
    count = output[1]
    ctx.save_for_backward(count)  # all the backward reads: not x
    ctx.mark_non_differentiable(count)
    ctx.set_materialize_grads(False)  # no zero-filled gradient for the count
    ctx.args = (kh, kw, x.shape[-2], x.shape[-1])


def _backward(ctx, grad_y, _grad_count):
    if grad_y is None:
        return None, None, None
    (count,) = ctx.saved_tensors
    return _BACKWARD(grad_y, count, *ctx.args), None, None


_library.register_autograd("spike_avg_pool2d", _backward, _setup)
_library.register_raising_autograd(
    "spike_avg_pool2d_bwd",
    "snnspx: no double backward through spike_avg_pool2d_bwd (nor any derivative of its output): the "
    "spike-count gradient of spike_avg_pool2d (docs/maths.md §4) is a surrogate with no derivative of its own",
)


# --------------------------------------------------------------------------- public wrapper
def spike_avg_pool2d(x: torch.Tensor, *, kernel_size=2, backend: str | None = None) -> torch.Tensor:
    """Average pooling of spikes over non-overlapping windows, with the spike-count gradient.

    Forward: :func:`torch.nn.functional.avg_pool2d` with ``stride = kernel_size`` on every
    ``[H, W]`` plane (floor mode: trailing rows and columns that fill no window are dropped).
    Backward (docs/maths.md §4, the original ``PoolFunc``): every input pixel of a window
    receives ``g / n``, ``n`` the number of non-zero inputs in that window, and 0 where ``n = 0``;
    dropped pixels receive 0. Where all inputs of a window are non-zero this is the exact
    gradient of the average. Autograd keeps the window counts only: 1 byte per window, a
    quarter byte per input for 2x2 windows (int32 counts, 4 bytes per window, for windows of
    more than 255 pixels); nothing under ``torch.no_grad()``.

    Args:
        x: ``[..., H, W]`` with at least 3 dimensions, e.g. spikes ``[T, B, C, H, W]`` (any
            strides; leading dimensions may be 0), float32, float64, float16 or bfloat16.
        kernel_size: int or ``(kH, kW)``, each >= 1 and at most the plane's size, with
            ``kH * kW <= 2**24``; also the stride.
        backend: ``"cuda"``, ``"cpp"``, ``"torch"`` or None (see :func:`snnspx.backends`): the
            compiled kernels (C++ on the CPU, CUDA on the GPU) or the PyTorch ones.

    Returns:
        ``[..., H // kH, W // kW]``, dtype of `x`.
    """
    kernel = _checks.kernel_pair(kernel_size)
    _checks.check_pool_input(x, kernel)
    b = resolve(backend, x.device)
    with kernels(b, x.device):
        return _FORWARD(x, *kernel)[0]
