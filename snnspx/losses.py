"""Losses on output spikes, with the gradient the SRM layers expect (docs/maths.md, "Losses").

The SRM layers read the gradient that reaches an output spike as a spike-*time* gradient
``dL/dt_spike`` (docs/maths.md §3): a positive value makes gradient descent move the spike
earlier. A loss written on spike counts (or on anything that grows with the spikes) has the
opposite sign: more spikes need earlier spikes. Such losses here pass their gradient through
:func:`reverse_grad` (``reverse=True``, the default, as the original's ``loss_reverse``), so
``loss.backward()`` hands the layers ``-dL/dspikes`` and the network learns with no sign trick
of its own. :func:`spike_timing_loss` produces a time gradient already and is never reversed.

With ``grad="surrogate"`` layers the gradient is ordinary autograd (docs/maths.md §9): pass
``reverse=False`` (a reversed gradient would make gradient descent climb the loss), and prefer
the count, kernel and TET losses (the timing loss's gradient is a spike-time gradient).

All take time-major spikes ``[T, B, N]`` (:func:`spike_kernel_loss`: any ``[T, B, ...]``);
with ``batch_first`` layers, pass ``out.transpose(0, 1)``. The values are float32 for
float16/bfloat16 spikes (float64 for float64), and computed there.

Losses that take class labels check their range, which reads the labels back (one device
synchronisation on a GPU).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as TF
from torch import nn
from torch.autograd.function import once_differentiable

from . import _checks

__all__ = [
    "reverse_grad",
    "spike_count_loss",
    "spike_kernel_loss",
    "spike_tet_loss",
    "spike_timing_loss",
    "SpikeCountLoss",
    "SpikeKernelLoss",
    "SpikeTETLoss",
    "SpikeTimingLoss",
]

_REDUCTIONS = ("sum", "mean")


# --------------------------------------------------------------------------- argument checks
def _check_spikes(spikes, name: str = "spikes", *, exact_dim: int | None = 3) -> None:
    _checks.check_tensor(spikes, name, min_dim=2)
    if exact_dim is not None and spikes.dim() != exact_dim:
        raise ValueError(f"{name} must be [T, B, N] (time-major output spikes), got shape {tuple(spikes.shape)}")
    if spikes.shape[0] < 1:
        raise ValueError(f"{name} must have at least one time step, got shape {tuple(spikes.shape)}")


def _check_target(target, spikes, name: str) -> None:
    _checks.check_tensor(target, name)
    if target.shape != spikes.shape:
        raise ValueError(f"{name} must have the shape of spikes {tuple(spikes.shape)}, got {tuple(target.shape)}")
    if target.device != spikes.device:
        raise ValueError(f"{name} must be on spikes' device {spikes.device}, got {target.device}")


def _check_labels(labels, spikes) -> None:
    """``labels`` ``[B]`` of int32/int64 class indices in ``[0, N)`` for spikes ``[T, B, N]``."""
    _, B, N = spikes.shape
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor of class indices, got {type(labels).__name__}")
    if labels.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"labels must be int32 or int64 class indices, got {labels.dtype}")
    if labels.shape != (B,):
        raise ValueError(f"labels must be [B] = [{B}] (one class per sample of spikes), got shape {tuple(labels.shape)}")
    if labels.device != spikes.device:
        raise ValueError(f"labels must be on spikes' device {spikes.device}, got {labels.device}")
    if B and bool(((labels < 0) | (labels >= N)).any()):
        raise ValueError(
            f"labels must be in [0, {N}) (spikes has {N} output neurons), got values from "
            f"{int(labels.min())} to {int(labels.max())}"
        )


def _check_number(v, name: str, *, low: float, inclusive: bool = True) -> float:
    if not _checks.is_real_number(v):
        raise TypeError(f"{name} must be a Python number, got {type(v).__name__}")
    v = float(v)
    ok = v >= low if inclusive else v > low
    if not (ok and math.isfinite(v)):
        raise ValueError(f"{name} must be finite and {'>=' if inclusive else '>'} {low}, got {v}")
    return v


def _check_reduction(reduction) -> str:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    return reduction


def _reduce(total: torch.Tensor, batch: int, reduction: str) -> torch.Tensor:
    """``total`` for "sum", ``total / batch`` for "mean" (the batch is dim 1 of the spikes)."""
    return total / batch if reduction == "mean" else total


# --------------------------------------------------------------------------- reverse_grad
class _ReverseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -grad


def reverse_grad(x: torch.Tensor) -> torch.Tensor:
    """Identity forward; the gradient passes back negated.

    The adapter between a loss written on spike counts (``dL/dcount``) and the SRM layers,
    which read ``dL/dspikes`` as a spike-time gradient (docs/maths.md §3): with it, any other
    count loss trains them, e.g.
    ``F.cross_entropy(reverse_grad(spikes).sum(0), labels)``.

    Args:
        x: any tensor.

    Returns:
        ``x`` (a view of it, the same values); in the backward, ``-grad``.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    return _ReverseGrad.apply(x)


def _maybe_reversed(spikes: torch.Tensor, reverse) -> torch.Tensor:
    return reverse_grad(spikes) if _checks.check_flag(reverse, "reverse") else spikes


# --------------------------------------------------------------------------- count
def spike_count_loss(
    spikes: torch.Tensor,
    labels: torch.Tensor,
    *,
    desired_count: float,
    undesired_count: float,
    reverse: bool = True,
    reduction: str = "sum",
) -> torch.Tensor:
    """Squared error between spike counts and a count target per class, with dead zones.

    For sample ``b`` and output neuron ``n``, with ``count = spikes.sum(0)``::

        target[b, n] = desired_count if n == labels[b] else undesired_count
        delta[b, n]  = (count[b, n] - target[b, n]) / T
        delta[b, n]  = 0   where n == labels[b] and delta > 0    (the true class may fire more)
                           or  n != labels[b] and delta < 0      (the others may fire less)
        loss = 1/2 * sum over t, b, n of delta[b, n]^2  =  T/2 * sum over b, n of delta^2

    (the original sums ``delta`` repeated over the T steps). ``dL/dspikes[t, b, n] = delta[b, n]``
    at every step; with ``reverse`` the layers receive ``-delta`` (the spike-time gradient that
    asks a neuron with too few spikes for earlier ones). ``reduction="mean"`` divides the loss
    and its gradient by ``B``.

    Args:
        spikes: output spikes ``[T, B, N]`` (float; any values are summed as counts).
        labels: ``[B]`` int32/int64 class indices in ``[0, N)`` (read back to check the range).
        desired_count: the true class's target count (finite, >= 0).
        undesired_count: the other classes' target count (finite, >= 0).
        reverse: negate the gradient (:func:`reverse_grad`). Default True (the original's).
        reduction: ``"sum"`` (the original's) or ``"mean"`` (divided by the batch size).

    Returns:
        a scalar, float32 for half-precision spikes, else their dtype.
    """
    _check_spikes(spikes)
    _check_labels(labels, spikes)
    desired = _check_number(desired_count, "desired_count", low=0.0)
    undesired = _check_number(undesired_count, "undesired_count", low=0.0)
    _check_reduction(reduction)
    T, B, N = spikes.shape
    acc = _checks.acc_dtype(spikes.dtype)
    count = _maybe_reversed(spikes, reverse).sum(0, dtype=acc)
    true = TF.one_hot(labels.long(), N).bool()
    target = torch.where(true, count.new_tensor(desired), count.new_tensor(undesired))
    delta = (count - target) / T
    dead = (true & (delta > 0)) | (~true & (delta < 0))
    delta = torch.where(dead, delta.new_zeros(()), delta)
    # d/dcount of T/2 * delta^2 is delta: the original's gradient at every step
    return _reduce(0.5 * T * delta.square().sum(), B, reduction)


# --------------------------------------------------------------------------- kernel
def _psp_matrix(T: int, tau_s: float, dtype: torch.dtype, device) -> torch.Tensor:
    """``K[t, k] = (1 - 1/tau_s)^(t - k) / tau_s`` for ``k <= t``, else 0: the synaptic filter
    ``syn[t] = (1 - 1/tau_s) * syn[t-1] + x[t]``, ``psp[t] = syn[t] / tau_s``, as one product."""
    t = torch.arange(T, dtype=torch.float64, device=device)
    lag = t[:, None] - t[None, :]
    decay = torch.where(lag >= 0, (1.0 - 1.0 / tau_s) ** lag.clamp(min=0), lag.new_zeros(()))
    return (decay / tau_s).to(dtype)


def spike_kernel_loss(
    spikes: torch.Tensor,
    target_spikes: torch.Tensor,
    *,
    tau_s: float,
    reverse: bool = True,
    reduction: str = "sum",
) -> torch.Tensor:
    """Squared error between output and target spike trains, both filtered by the synaptic kernel.

    With ``a = 1 - 1/tau_s`` and ``e = spikes - target_spikes``, per neuron::

        syn[t] = a * syn[t-1] + e[t]   (syn[-1] = 0),      psp[t] = syn[t] / tau_s
        loss   = 1/2 * sum over t and neurons of psp[t]^2

    The gradient is autograd's, through :func:`reverse_grad` when ``reverse`` (default, as the
    original). ``reduction="mean"`` divides by ``B``.

    Args:
        spikes: output spikes ``[T, B, ...]``.
        target_spikes: the desired spike trains, the shape of `spikes` (float; no gradient is
            needed: it gets one only if it requires it, through the filter, never reversed).
        tau_s: the filter's time constant (finite, >= 1), usually the neuron's ``tau_s``.
        reverse: negate the gradient for `spikes`. Default True.
        reduction: ``"sum"`` (the original's) or ``"mean"``.

    Returns:
        a scalar, float32 for half-precision spikes, else their dtype.
    """
    _check_spikes(spikes, exact_dim=None)
    _check_target(target_spikes, spikes, "target_spikes")
    tau_s = _check_number(tau_s, "tau_s", low=1.0)
    _check_reduction(reduction)
    T, B = spikes.shape[:2]
    acc = _checks.acc_dtype(spikes.dtype)
    e = _maybe_reversed(spikes, reverse).to(acc) - target_spikes.to(acc)
    psp = _psp_matrix(T, tau_s, acc, spikes.device) @ e.reshape(T, e[0].numel())
    return _reduce(0.5 * psp.square().sum(), B, reduction)


# --------------------------------------------------------------------------- TET
def spike_tet_loss(spikes: torch.Tensor, labels: torch.Tensor, *, reverse: bool = True) -> torch.Tensor:
    """Cross-entropy at every step (TET): each step's spikes are the logits.

    ::

        loss = 1 / (T * B) * sum over t, b of cross_entropy(spikes[t, b, :], labels[b])

    The gradient is autograd's, through :func:`reverse_grad` when ``reverse`` (default, as
    the original).

    Args:
        spikes: output spikes ``[T, B, N]``.
        labels: ``[B]`` int32/int64 class indices in ``[0, N)``.
        reverse: negate the gradient. Default True.

    Returns:
        a scalar (the mean over steps and samples), float32 for half-precision spikes.
    """
    _check_spikes(spikes)
    _check_labels(labels, spikes)
    T, B, N = spikes.shape
    logits = _maybe_reversed(spikes, reverse).to(_checks.acc_dtype(spikes.dtype)).reshape(T * B, N)
    return TF.cross_entropy(logits, labels.long().repeat(T))  # row t * B + b has labels[b]


# --------------------------------------------------------------------------- timing
def _spike_slots(fired: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[B, N, T]`` booleans -> ``[B, N, T]`` times: slot ``k`` holds the step (counted from 1)
    of the neuron's ``k``-th spike, ``T + 1`` past its last spike."""
    T = fired.shape[-1]
    t = torch.arange(T, device=fired.device)
    first = torch.where(fired, t, t + T).sort(dim=-1).values  # spike steps first, in time order
    return torch.where(first < T, first + 1, T + 1).to(dtype)


class _SpikeTimingLoss(torch.autograd.Function):
    """The loss value, and for each spike the gradient of its timing slot (computed together)."""

    @staticmethod
    def forward(ctx, spikes, target_spikes, labels, divisor):
        T, B, N = spikes.shape
        acc = _checks.acc_dtype(spikes.dtype)
        fired = spikes.detach().permute(1, 2, 0) != 0  # [B, N, T]
        out_t = _spike_slots(fired, acc)
        tar_t = _spike_slots(target_spikes.detach().permute(1, 2, 0) != 0, acc)
        delta = (out_t - tar_t + 0.5) / T
        correct = TF.one_hot(labels.long(), N).bool()[:, :, None]
        dead = (correct & (delta < 0)) | (~correct & (delta > 0))
        delta = torch.where(dead, delta.new_zeros(()), delta)
        # The k-th spike of a neuron gets slot k's delta; slots past its last spike (time T + 1)
        # have no spike to move and pass nothing on.
        slot_grad = torch.where(out_t > T, delta.new_zeros(()), delta)
        rank = fired.long().cumsum(-1) - 1
        grad = torch.where(fired, slot_grad.gather(-1, rank.clamp(min=0)), delta.new_zeros(()))
        ctx.save_for_backward(grad.permute(2, 0, 1))
        ctx.divisor, ctx.dtype = divisor, spikes.dtype
        return 0.5 * delta.square().sum() / divisor

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        (grad,) = ctx.saved_tensors
        return (grad * (grad_loss / ctx.divisor)).to(ctx.dtype), None, None, None


def spike_timing_loss(
    spikes: torch.Tensor,
    target_spikes: torch.Tensor,
    labels: torch.Tensor,
    *,
    reduction: str = "sum",
) -> torch.Tensor:
    """Squared error between the times of the k-th output and k-th target spike of each neuron.

    Per sample ``b`` and neuron ``n``, ``t_out[k]`` is the step (counted from 1) of the
    neuron's ``k``-th spike, ``k = 0 .. T-1``, and ``T + 1`` when it has fewer than ``k + 1``
    spikes; ``t_tar[k]`` likewise for `target_spikes`. Then::

        delta[k] = (t_out[k] - t_tar[k] + 0.5) / T
        delta[k] = 0   where n == labels[b] and delta < 0     (the true class may fire earlier)
                       or  n != labels[b] and delta > 0       (the others may fire later)
        loss = 1/2 * sum over b, n, k of delta[k]^2

    The gradient is a spike-time gradient already (never reversed): the ``k``-th spike of the
    neuron receives ``delta[k]`` (positive: too late, descent moves it earlier); slots with no
    output spike (``t_out = T + 1``) still count in the loss but pass nothing on, and
    `target_spikes` and `labels` get none. ``reduction="mean"`` divides the loss and its
    gradient by ``B``. (The original's training script builds its targets as one spike every
    other step for the true class, none for the others.)

    Args:
        spikes: output spikes ``[T, B, N]``; any non-zero value is a spike.
        target_spikes: the desired spikes, the shape of `spikes`.
        labels: ``[B]`` int32/int64 class indices in ``[0, N)``.
        reduction: ``"sum"`` (the original's) or ``"mean"``.

    Returns:
        a scalar, float32 for half-precision spikes, else their dtype.
    """
    _check_spikes(spikes)
    _check_target(target_spikes, spikes, "target_spikes")
    _check_labels(labels, spikes)
    _check_reduction(reduction)
    return _SpikeTimingLoss.apply(spikes, target_spikes, labels, spikes.shape[1] if reduction == "mean" else 1)


# --------------------------------------------------------------------------- modules
class SpikeCountLoss(nn.Module):
    """Module form of :func:`spike_count_loss`: ``loss = criterion(spikes, labels)``.

    Args:
        desired_count, undesired_count: the true and the other classes' target counts.
        reverse: negate the gradient for the SRM layers. Default True.
        reduction: ``"sum"`` (default, the original's) or ``"mean"``.

    Shape:
        - spikes ``[T, B, N]``, labels ``[B]`` (int32/int64); output: a scalar.
    """

    def __init__(self, *, desired_count: float, undesired_count: float, reverse: bool = True,
                 reduction: str = "sum") -> None:
        super().__init__()
        self.desired_count = _check_number(desired_count, "desired_count", low=0.0)
        self.undesired_count = _check_number(undesired_count, "undesired_count", low=0.0)
        self.reverse = _checks.check_flag(reverse, "reverse")
        self.reduction = _check_reduction(reduction)

    def forward(self, spikes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return spike_count_loss(spikes, labels, desired_count=self.desired_count,
                                undesired_count=self.undesired_count, reverse=self.reverse,
                                reduction=self.reduction)

    def extra_repr(self) -> str:
        return (f"desired_count={self.desired_count}, undesired_count={self.undesired_count}, "
                f"reverse={self.reverse}, reduction={self.reduction!r}")


class SpikeKernelLoss(nn.Module):
    """Module form of :func:`spike_kernel_loss`: ``loss = criterion(spikes, target_spikes)``.

    Args:
        tau_s: the synaptic filter's time constant (>= 1).
        reverse: negate the gradient for the SRM layers. Default True.
        reduction: ``"sum"`` (default) or ``"mean"``.

    Shape:
        - spikes and target_spikes ``[T, B, ...]``; output: a scalar.
    """

    def __init__(self, *, tau_s: float, reverse: bool = True, reduction: str = "sum") -> None:
        super().__init__()
        self.tau_s = _check_number(tau_s, "tau_s", low=1.0)
        self.reverse = _checks.check_flag(reverse, "reverse")
        self.reduction = _check_reduction(reduction)

    def forward(self, spikes: torch.Tensor, target_spikes: torch.Tensor) -> torch.Tensor:
        return spike_kernel_loss(spikes, target_spikes, tau_s=self.tau_s, reverse=self.reverse,
                                 reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"tau_s={self.tau_s}, reverse={self.reverse}, reduction={self.reduction!r}"


class SpikeTETLoss(nn.Module):
    """Module form of :func:`spike_tet_loss`: ``loss = criterion(spikes, labels)``.

    Args:
        reverse: negate the gradient for the SRM layers. Default True.

    Shape:
        - spikes ``[T, B, N]``, labels ``[B]``; output: a scalar (mean over steps and samples).
    """

    def __init__(self, *, reverse: bool = True) -> None:
        super().__init__()
        self.reverse = _checks.check_flag(reverse, "reverse")

    def forward(self, spikes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return spike_tet_loss(spikes, labels, reverse=self.reverse)

    def extra_repr(self) -> str:
        return f"reverse={self.reverse}"


class SpikeTimingLoss(nn.Module):
    """Module form of :func:`spike_timing_loss`: ``loss = criterion(spikes, target_spikes, labels)``.

    Args:
        reduction: ``"sum"`` (default, the original's) or ``"mean"``.

    Shape:
        - spikes and target_spikes ``[T, B, N]``, labels ``[B]``; output: a scalar.
    """

    def __init__(self, *, reduction: str = "sum") -> None:
        super().__init__()
        self.reduction = _check_reduction(reduction)

    def forward(self, spikes: torch.Tensor, target_spikes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return spike_timing_loss(spikes, target_spikes, labels, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"
