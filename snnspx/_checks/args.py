"""Argument checks shared by every kernel, so that they all fail the same way: each names the
argument, what was expected and what came."""

from __future__ import annotations

import math
import numbers

import torch

from .dtypes import FLOAT_DTYPES, acc_dtype

def check_tensor(x, name: str, *, min_dim: int = 1) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float64, float16 or bfloat16, got {x.dtype}")
    if x.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimension(s) ([T, ...]), got shape {tuple(x.shape)}")


def _finite(val) -> bool:
    # Comparisons only (no math.isfinite): under torch.compile a float argument can be
    # symbolic, and Dynamo traces a comparison of it but not a math.* call. NaN fails both.
    return -math.inf < val < math.inf


def check_same_shape(ref: torch.Tensor, ref_name: str, **others: torch.Tensor) -> None:
    for name, t in others.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.shape != ref.shape:
            raise ValueError(f"{name} must have the shape of {ref_name} {tuple(ref.shape)}, got {tuple(t.shape)}")
        if t.device != ref.device:
            raise ValueError(f"{name} must be on {ref_name}'s device {ref.device}, got {t.device}")


def check_srm_backward_dtypes(grad_spikes: torch.Tensor, spikes: torch.Tensor, du: torch.Tensor, dut: torch.Tensor) -> None:
    """srm_backward's dtype rules: spikes in the dtype of grad_spikes, du and dut in its state dtype."""
    if spikes.dtype != grad_spikes.dtype:
        raise TypeError(f"spikes must have the dtype of grad_spikes ({grad_spikes.dtype}), got {spikes.dtype}")
    if du.dtype != acc_dtype(grad_spikes.dtype) or dut.dtype != du.dtype:
        raise TypeError(
            f"du and dut must be {acc_dtype(grad_spikes.dtype)} for grad_spikes of dtype "
            f"{grad_spikes.dtype}, got {du.dtype} and {dut.dtype}"
        )


def _int_pair(v, name: str) -> tuple[int, int]:
    if isinstance(v, int) and not isinstance(v, bool):
        return (v, v)
    if (
        isinstance(v, (tuple, list))
        and len(v) == 2
        and all(isinstance(i, int) and not isinstance(i, bool) for i in v)
    ):
        return (int(v[0]), int(v[1]))
    raise TypeError(f"{name} must be an int or a pair of ints, got {v!r}")


def conv2d_params(stride, padding, dilation, groups) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int], int]:
    """Normalised ``(stride, padding, dilation, groups)`` of a 2-D convolution."""
    stride, padding, dilation = _int_pair(stride, "stride"), _int_pair(padding, "padding"), _int_pair(dilation, "dilation")
    if min(stride) < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if min(padding) < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if min(dilation) < 1:
        raise ValueError(f"dilation must be >= 1, got {dilation}")
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"groups must be an int >= 1, got {groups!r}")
    return stride, padding, dilation, groups


def kernel_pair(kernel_size, name: str = "kernel_size") -> tuple[int, int]:
    k = _int_pair(kernel_size, name)
    if min(k) < 1:
        raise ValueError(f"{name} must be >= 1, got {k}")
    return k


def conv2d_output_size(hw, kernel, stride, padding, dilation) -> tuple[int, int]:
    """(H', W') of a convolution; a ValueError if the (padded) input is smaller than the dilated kernel."""
    out = tuple((n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, s, p, d in zip(hw, kernel, stride, padding, dilation))
    if min(out) < 1:
        raise ValueError(
            f"the input's spatial size {tuple(hw)} (padding {tuple(padding)}) is smaller than the kernel "
            f"{tuple(kernel)} with dilation {tuple(dilation)}: output size would be {out}"
        )
    return out


def check_srm_conv2d(s_in, weight, groups: int) -> None:
    check_tensor(s_in, "s_in")
    check_tensor(weight, "weight")
    if s_in.dim() != 5:
        raise ValueError(f"s_in must be [T, B, C, H, W], got shape {tuple(s_in.shape)}")
    if weight.dim() != 4:
        raise ValueError(f"weight must be [C_out, C_in / groups, kH, kW], got shape {tuple(weight.shape)}")
    _check_pair(s_in, weight)
    if s_in.shape[2] != weight.shape[1] * groups:
        raise ValueError(
            f"s_in has {s_in.shape[2]} channels, but weight {tuple(weight.shape)} with groups={groups} "
            f"expects {weight.shape[1] * groups}"
        )
    if weight.shape[0] == 0:
        raise ValueError(f"weight must have at least one output channel, got shape {tuple(weight.shape)}")
    if weight.shape[0] % groups:
        raise ValueError(f"weight's {weight.shape[0]} output channels are not divisible by groups={groups}")


def check_srm_linear(s_in, weight) -> None:
    check_tensor(s_in, "s_in")
    check_tensor(weight, "weight")
    if s_in.dim() < 2:
        raise ValueError(f"s_in must be [T, ..., in_features], got shape {tuple(s_in.shape)}")
    if weight.dim() != 2:
        raise ValueError(f"weight must be [out_features, in_features], got shape {tuple(weight.shape)}")
    _check_pair(s_in, weight)
    if s_in.shape[-1] != weight.shape[1]:
        raise ValueError(f"s_in has {s_in.shape[-1]} features in its last dimension, weight {tuple(weight.shape)} expects {weight.shape[1]}")


def _check_pair(s_in, weight) -> None:
    if weight.dtype != s_in.dtype:
        raise TypeError(f"weight must have the dtype of s_in ({s_in.dtype}), got {weight.dtype}")
    if weight.device != s_in.device:
        raise ValueError(f"weight must be on s_in's device {s_in.device}, got {weight.device}")


def check_standardize_args(weight, bn_weight, bn_bias) -> None:
    check_tensor(weight, "weight")
    if weight.dim() < 2 or math.prod(weight.shape[1:]) < 2:
        raise ValueError(
            "weight must be [out_features, in_features >= 2] or [C_out, ...] with at least 2 values "
            f"per output unit, got shape {tuple(weight.shape)}"
        )
    for name, t in (("bn_weight", bn_weight), ("bn_bias", bn_bias)):
        if t is not None and tuple(t.shape) != (weight.shape[0],):
            raise ValueError(f"{name} must be [{weight.shape[0]}] (one per output unit), got shape {tuple(t.shape)}")


def check_input_grad_scale(input_grad_scale) -> None:
    if not isinstance(input_grad_scale, (int, float)) or isinstance(input_grad_scale, bool):
        raise TypeError(f"input_grad_scale must be a Python number, got {type(input_grad_scale).__name__}")
    if not _finite(input_grad_scale):
        raise ValueError(f"input_grad_scale must be finite, got {input_grad_scale}")


def check_flag(v, name: str) -> bool:
    """A constructor's on/off argument: a Python bool (so that ``"no"`` is not silently true)."""
    if not isinstance(v, bool):
        raise TypeError(f"{name} must be True or False, got {v!r}")
    return v


def check_eps(eps) -> float:
    if not is_real_number(eps):
        raise TypeError(f"eps must be a Python number, got {type(eps).__name__}")
    if not (_finite(eps) and eps >= 0):
        raise ValueError(f"eps must be finite and >= 0, got {eps}")
    return float(eps)


def check_pool_input(x, kernel: tuple[int, int]) -> None:
    check_tensor(x, "x", min_dim=3)
    if x.shape[-2] < kernel[0] or x.shape[-1] < kernel[1]:
        raise ValueError(f"x's last two dimensions {tuple(x.shape[-2:])} must be at least the kernel {kernel}")


def check_quantizer_params(bits, rounding) -> None:
    if not isinstance(bits, int) or isinstance(bits, bool):
        raise TypeError(f"bits must be an int in [2, 32], got {type(bits).__name__} {bits!r}")
    if not 2 <= bits <= 32:
        raise ValueError(f"bits must be an int in [2, 32], got {bits!r}")
    check_rounding(rounding)


def check_rounding(rounding, name: str = "rounding") -> None:
    if rounding not in ("nearest", "truncate"):
        raise ValueError(f"{name} must be 'nearest' or 'truncate', got {rounding!r}")


def is_real_number(v) -> bool:
    """A Python real number (bool excluded)."""
    if type(v) is float or type(v) is int:  # the common cases, without the ABC check
        return True
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def number_as_float(v) -> float:
    """float(v), with Python ints beyond float64 as +-inf."""
    try:
        return float(v)
    except OverflowError:
        return math.inf if v > 0 else -math.inf


def check_one_value_tensor(t: torch.Tensor, name: str) -> None:
    """`t` holds one real value (any shape with one element)."""
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"{name} must be a real (floating or integer) tensor, got {t.dtype}")
    if t.numel() != 1:
        raise ValueError(
            f"{name} must be a single value (a Python number or a one-element tensor), "
            f"got a tensor of shape {tuple(t.shape)}"
        )



def check_devices(op: str, **tensors: torch.Tensor) -> None:
    """A direct op call (``torch.ops.snnspx.<op>``) with its tensors on one device."""
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{name} on {dev}" for name, dev in devices.items())
        raise ValueError(f"snnspx::{op} needs all its tensors on one device, got {listed}")
