"""nn.Module wrappers of superpixel pooling and unpooling (docs/maths.md §5)."""

from __future__ import annotations

import torch
from torch import nn

from .. import _checks
from ..functional import suppix as F
from ._base import backend_repr, check_backend

__all__ = ["SupPixPool", "SupPixUnpool"]


def _time_major(t: torch.Tensor, full_dim: int) -> torch.Tensor:
    """[B, T, ...] -> [T, B, ...] for tensors that carry a time dimension."""
    return t.transpose(0, 1) if t.dim() == full_dim else t


def _flags_repr(m: nn.Module) -> str:
    return f"check_labels={m.check_labels}, batch_first={m.batch_first}" + backend_repr(m.backend)


class SupPixPool(nn.Module):
    """Superpixel pooling of every step and channel: sum, average or max over each superpixel.

    See :func:`snnspx.functional.suppix_pool` for the exact definitions, the gradients
    and determinism.

    Args:
        mode: ``"avg"`` (default), ``"sum"`` or ``"max"``. Empty superpixels give 0.
        grad: ``"exact"`` (default) or ``"spike"`` (``"avg"`` only): the backward sends
            ``g[k] / m`` to every pixel of superpixel k, m its non-zero inputs at that step
            and channel (0 where m = 0), as SpikeAvgPool2d does for windows.
        num_superpixels: K, or None to infer ``labels.max() + 1`` per call (a GPU read-back;
            give K under ``torch.compile``).
        check_labels: raise ``ValueError`` on a label ``>= K`` (default); see the functional form.
        batch_first: inputs are ``[B, T, C, H, W]`` and per-step labels ``[B, T, H, W]``.
        backend: force a backend (see :func:`snnspx.backends`); None picks one.

    Shape:
        - x: ``[T, B, C, H, W]`` or ``[B, C, H, W]`` (one step), float.
        - labels: int32/int64 ``[H, W]``, ``[B, H, W]`` or ``[T, B, H, W]``; negative = ignored.
        - Output: ``[T, B, C, K]`` (``[B, T, C, K]`` with ``batch_first``) or ``[B, C, K]``.
    """

    def __init__(
        self,
        mode: str = "avg",
        grad: str = "exact",
        num_superpixels: int | None = None,
        check_labels: bool = True,
        batch_first: bool = False,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        _checks.suppix_mode(mode, grad)
        check_backend(backend)
        if num_superpixels is not None:
            _checks.num_superpixels(torch.empty(0), num_superpixels)
        self.mode, self.grad, self.num_superpixels = mode, grad, num_superpixels
        self.check_labels = _checks.check_flag(check_labels, "check_labels")
        self.batch_first = _checks.check_flag(batch_first, "batch_first")
        self.backend = backend

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.batch_first:
            x, labels = _time_major(x, 5), _time_major(labels, 4)
        y = F.suppix_pool(
            x, labels, num_superpixels=self.num_superpixels, mode=self.mode, grad=self.grad, check_labels=self.check_labels,
            backend=self.backend,
        )
        return _time_major(y, 4) if self.batch_first else y

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, grad={self.grad!r}, num_superpixels={self.num_superpixels}, " + _flags_repr(self)


class SupPixUnpool(nn.Module):
    """Superpixel unpooling: every pixel takes its superpixel's value, ignored pixels 0.

    The backward is sum pooling of the gradient. See :func:`snnspx.functional.suppix_unpool`.

    Args:
        check_labels: raise ``ValueError`` on a label ``>= K = y.shape[-1]`` (default).
        batch_first: y is ``[B, T, C, K]`` and per-step labels ``[B, T, H, W]``.
        backend: force a backend; None picks one.

    Shape:
        - y: ``[T, B, C, K]`` or ``[B, C, K]`` (one step), float.
        - labels: as for :class:`SupPixPool`; they give H and W.
        - Output: ``[T, B, C, H, W]`` (``[B, T, C, H, W]`` with ``batch_first``) or ``[B, C, H, W]``.
    """

    def __init__(self, check_labels: bool = True, batch_first: bool = False, backend: str | None = None) -> None:
        super().__init__()
        check_backend(backend)
        self.check_labels = _checks.check_flag(check_labels, "check_labels")
        self.batch_first = _checks.check_flag(batch_first, "batch_first")
        self.backend = backend

    def forward(self, y: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.batch_first:
            y, labels = _time_major(y, 4), _time_major(labels, 4)
        z = F.suppix_unpool(y, labels, check_labels=self.check_labels, backend=self.backend)
        return _time_major(z, 5) if self.batch_first else z

    def extra_repr(self) -> str:
        return _flags_repr(self)
