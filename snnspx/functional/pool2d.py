"""Spike-count average pooling over non-overlapping windows (docs/maths.md §4, SPEC §4): its ops'
schemas, PyTorch kernels, fake kernels and autograd formula, and the public wrapper.

Ops (the compiled libraries add CPU and CUDA kernels for the same schemas), on ``x`` of shape
``[..., H, W]`` (at least 3 dimensions, ``H >= kh``, ``W >= kw``), windows ``kh x kw`` with
stride ``(kh, kw)``, floor mode (``OH = H // kh``, ``OW = W // kw``):

* ``spike_avg_pool2d(x, kh, kw) -> y``: ``y [..., OH, OW]`` in the dtype of ``x``, each value
  the mean of its window (summed in float32, float64 for float64, in row-major order within
  the window, and divided by ``kh * kw``: the order of ``F.avg_pool2d`` on the CPU).
* ``spike_avg_pool2d_bwd(grad_y, x, kh, kw) -> grad_x``: ``grad_x [..., H, W]`` in the dtype of
  ``grad_y`` (which must be that of ``x``): every pixel of window ``(oh, ow)`` gets
  ``grad_y[oh, ow] / n``, ``n`` the window's non-zero inputs, and 0 where ``n = 0``; pixels in
  no window (the last ``H % kh`` rows and ``W % kw`` columns) get 0. The count and the division
  are in float32 (float64 for float64) and the quotient is rounded once to the dtype, so every
  backend gives the same bits.

The backward formula is a surrogate (the original ``PoolFunc``; exact where a window has no zero
input), so ``spike_avg_pool2d_bwd`` has no derivative of its own: differentiating it raises.
"""

from __future__ import annotations

import torch
import torch.nn.functional as TF

from .. import _checks, _library
from .._backend import kernels, resolve

__all__ = ["spike_avg_pool2d"]


# --------------------------------------------------------------------------- argument checks
def _check_op_input(x: torch.Tensor, kh: int, kw: int, name: str = "x") -> None:
    """The ops' own checks (the compiled kernels make the same ones, with the same wording)."""
    if x.dtype not in _checks.FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float64, float16 or bfloat16, got {x.dtype}")
    if kh < 1 or kw < 1:
        raise ValueError(f"kernel_size must be >= 1, got ({kh}, {kw})")
    if x.dim() < 3:
        raise ValueError(f"{name} must have at least 3 dimensions ([..., H, W]), got shape {tuple(x.shape)}")
    if x.shape[-2] < kh or x.shape[-1] < kw:
        raise ValueError(f"{name}'s last two dimensions {tuple(x.shape[-2:])} must be at least the kernel ({kh}, {kw})")


def _out_shape(x: torch.Tensor, kh: int, kw: int) -> tuple:
    return (*x.shape[:-2], x.shape[-2] // kh, x.shape[-1] // kw)


def _check_bwd_args(grad_y: torch.Tensor, x: torch.Tensor, kh: int, kw: int) -> None:
    _check_op_input(x, kh, kw)
    want = _out_shape(x, kh, kw)
    if tuple(grad_y.shape) != want:
        raise ValueError(f"grad_y must have the output shape {want} of x {tuple(x.shape)}, got {tuple(grad_y.shape)}")
    if grad_y.dtype != x.dtype:
        raise TypeError(f"grad_y must have the dtype of x ({x.dtype}), got {grad_y.dtype}")
    _checks.check_devices("spike_avg_pool2d_bwd", grad_y=grad_y, x=x)


# --------------------------------------------------------------------------- PyTorch kernels
def _planes(x: torch.Tensor) -> torch.Tensor:
    """``[..., H, W]`` as ``[P, 1, H, W]`` (no -1: P may be 0)."""
    H, W = x.shape[-2:]
    P = 1
    for d in x.shape[:-2]:
        P *= d
    return x.reshape(P, 1, H, W)


def _forward_kernel(x: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    _check_op_input(x, kh, kw)
    y = TF.avg_pool2d(_planes(x), (kh, kw), (kh, kw))
    return y.reshape(_out_shape(x, kh, kw))


def _backward_kernel(grad_y: torch.Tensor, x: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    _check_bwd_args(grad_y, x, kh, kw)
    # Count and divide in float32 (float64 for float64), rounding once to grad_y's dtype:
    # a half-precision count would round above 2048 (float16) or 256 (bfloat16) inputs.
    acc = _checks.acc_dtype(grad_y.dtype)
    n = TF.avg_pool2d(_planes((x != 0).to(acc)), (kh, kw), (kh, kw), divisor_override=1)
    n = n.reshape(grad_y.shape)  # exact integers (float32: up to 2**24)
    g = torch.where(n > 0, grad_y.to(acc) / n.clamp(min=1), n.new_zeros(()))
    g = g.to(grad_y.dtype).repeat_interleave(kh, dim=-2).repeat_interleave(kw, dim=-1)
    H, W = x.shape[-2:]
    return TF.pad(g, (0, W - g.shape[-1], 0, H - g.shape[-2]))


# --------------------------------------------------------------------------- schemas, fakes, autograd
_library.define("spike_avg_pool2d(Tensor x, int kh, int kw) -> Tensor", _forward_kernel)
_library.define("spike_avg_pool2d_bwd(Tensor grad_y, Tensor x, int kh, int kw) -> Tensor", _backward_kernel)
_FORWARD = _library.op("spike_avg_pool2d")
_BACKWARD = _library.op("spike_avg_pool2d_bwd")


@torch.library.register_fake("snnspx::spike_avg_pool2d")
def _forward_fake(x, kh, kw):
    _check_op_input(x, kh, kw)
    return x.new_empty(_out_shape(x, kh, kw))


@torch.library.register_fake("snnspx::spike_avg_pool2d_bwd")
def _backward_fake(grad_y, x, kh, kw):
    _check_bwd_args(grad_y, x, kh, kw)
    return grad_y.new_empty(x.shape)


def _setup(ctx, inputs, output):
    x, kh, kw = inputs
    ctx.save_for_backward(x)  # usually the previous layer's spikes: no memory of its own
    ctx.kernel = (kh, kw)


def _backward(ctx, grad_y):
    (x,) = ctx.saved_tensors
    return _BACKWARD(grad_y, x, *ctx.kernel), None, None


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
    gradient of the average. Autograd keeps `x` only (usually the previous layer's spikes).

    Args:
        x: ``[..., H, W]`` with at least 3 dimensions, e.g. spikes ``[T, B, C, H, W]`` (any
            strides; leading dimensions may be 0), float32, float64, float16 or bfloat16.
        kernel_size: int or ``(kH, kW)``, each >= 1 and at most the plane's size; also the stride.
        backend: ``"cuda"``, ``"cpp"``, ``"torch"`` or None (see :func:`snnspx.backends`): the
            compiled kernels (C++ on the CPU, CUDA on the GPU) or the PyTorch ones.

    Returns:
        ``[..., H // kH, W // kW]``, dtype of `x`.
    """
    kernel = _checks.kernel_pair(kernel_size)
    _checks.check_pool_input(x, kernel)
    b = resolve(backend, x.device)
    with kernels(b, x.device):
        return _FORWARD(x, *kernel)
