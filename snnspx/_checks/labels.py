"""Superpixel labels (docs/maths.md §1, §5): their checks and the canonical layout the ops take.

The ops see ``x`` as ``[T, B, C, P]`` (P = H * W pixels) and the labels as ``[L, Bl, P]``, with
``L`` in ``{1, T}`` and ``Bl`` in ``{1, B}``: a map shared by the steps or the batch stays one map.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .args import check_tensor

LABEL_DTYPES = (torch.int32, torch.int64)


class SupPixLayout(NamedTuple):
    """Canonical views of a superpixel op's arguments (see csrc/suppix_glue.h)."""

    data: torch.Tensor  # [T, B, C, P] (x, for pooling) or [T, B, C, K] (y, for unpooling)
    labels: torch.Tensor  # [L, Bl, P], L in {1, T}, Bl in {1, B}
    single_step: bool  # the data came without its time dimension
    spatial: tuple[int, int]  # (H, W)


def check_labels_tensor(labels, *, dims: tuple[int, ...] = (2, 3, 4)) -> None:
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dtype not in LABEL_DTYPES:
        raise TypeError(f"labels must be an int32 or int64 tensor, got {labels.dtype}")
    if labels.dim() not in dims:
        raise ValueError(f"labels must be [H, W], [B, H, W] or [T, B, H, W], got shape {tuple(labels.shape)}")


def suppix_layout(data: torch.Tensor, labels: torch.Tensor, *, pooled: bool) -> SupPixLayout:
    """Check `data` (x ``[T, B, C, H, W]`` / ``[B, C, H, W]``, or with ``pooled`` y ``[T, B, C, K]`` /
    ``[B, C, K]``) against `labels` and view both in the canonical layout. Never copies the labels
    to the data's size: a label map shared by the steps or the batch stays one map."""
    name = "y" if pooled else "x"
    check_tensor(data, name)
    check_labels_tensor(labels)
    if labels.device != data.device:
        raise ValueError(f"labels must be on {name}'s device {data.device}, got {labels.device}")
    full = 4 if pooled else 5
    if data.dim() == full:
        single = False
    elif data.dim() == full - 1:
        single = True
        data = data.unsqueeze(0)
    else:
        want = "[T, B, C, K] or [B, C, K]" if pooled else "[T, B, C, H, W] or [B, C, H, W]"
        raise ValueError(f"{name} must be {want}, got shape {tuple(data.shape)}")
    T, B = data.shape[0], data.shape[1]
    if labels.dim() == 4 and single:
        raise ValueError(
            f"per-step labels [T, B, H, W] need {name} with a time dimension, got {name} of shape "
            f"{tuple(data.shape[1:])} and labels of shape {tuple(labels.shape)}"
        )
    H, W = labels.shape[-2], labels.shape[-1]
    if not pooled and (data.shape[-2], data.shape[-1]) != (H, W):
        raise ValueError(
            f"labels must cover x's (H, W) = {tuple(data.shape[-2:])}, got labels of shape {tuple(labels.shape)}"
        )
    Bl = labels.shape[-3] if labels.dim() >= 3 else 1
    if Bl not in (1, B):
        raise ValueError(f"labels' batch size must be {name}'s B = {B} (or 1), got labels of shape {tuple(labels.shape)}")
    L = labels.shape[0] if labels.dim() == 4 else 1
    if L not in (1, T):
        raise ValueError(f"per-step labels' T must be {name}'s T = {T} (or 1), got labels of shape {tuple(labels.shape)}")
    lab = labels.reshape(L, Bl, H * W)
    if not pooled:
        data = data.reshape(T, B, data.shape[2], H * W)
    return SupPixLayout(data, lab, single, (H, W))


def num_superpixels(labels: torch.Tensor, K) -> tuple[int, bool]:
    """(K, inferred): `K` checked, or ``labels.max() + 1`` (0 for all-negative or empty labels)."""
    if K is None:
        if labels.device.type == "meta":
            raise ValueError("num_superpixels must be given for meta tensors: inferring it reads labels.max()")
        if torch.compiler.is_compiling():
            raise ValueError(
                "num_superpixels must be given under torch.compile: inferring it reads labels.max() back, "
                "and the output's shape would depend on the data"
            )
        if not labels.numel():
            return 0, True
        K = int(labels.max()) + 1
        if K >= 2**31 - 1:
            raise ValueError(
                f"labels.max() + 1 = {K} superpixels (num_superpixels inferred from the labels): "
                "at most 2^31 - 2 are supported; relabel with snnspx.superpixels.relabel_sequential"
            )
        return max(K, 0), True
    if not isinstance(K, int) or isinstance(K, bool):
        raise TypeError(f"num_superpixels must be an int or None, got {type(K).__name__}")
    if not 0 <= K < 2**31 - 1:
        raise ValueError(f"num_superpixels must be in [0, 2^31 - 1), got {K}")
    return K, False


def check_label_range(labels: torch.Tensor, K: int) -> None:
    """Every label < K (one read-back on a GPU). Same message as the compiled ops.

    Under torch.compile the verdict cannot steer Python: it becomes an asynchronous
    assertion (a RuntimeError on the CPU, a device-side assert on a GPU)."""
    if labels.device.type == "meta":
        return  # no values to check: shapes only
    if labels.numel() and torch.compiler.is_compiling():
        torch._assert_async(
            labels.max() < K, f"labels must be < num_superpixels = {K} (negative labels mark ignored pixels)"
        )
        return
    if labels.numel():
        top = int(labels.max())
        if top >= K:
            raise ValueError(
                f"labels must be < num_superpixels = {K} (negative labels mark ignored pixels), got a label {top}"
            )


SUPPIX_MODES = ("sum", "avg", "max")


SUPPIX_GRADS = ("exact", "spike")


def suppix_mode(mode, grad) -> str:
    """The ops' internal mode: "sum" | "avg" | "max" | "avg_spike" (avg with grad="spike")."""
    if mode not in SUPPIX_MODES:
        raise ValueError(f"mode must be one of {SUPPIX_MODES}, got {mode!r}")
    if grad not in SUPPIX_GRADS:
        raise ValueError(f"grad must be one of {SUPPIX_GRADS}, got {grad!r}")
    if grad == "spike":
        if mode != "avg":
            raise ValueError(f"grad='spike' is the backward of mode='avg' only, got mode={mode!r}")
        return "avg_spike"
    return mode

