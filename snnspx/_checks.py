"""Argument checks shared by every backend, so they all fail the same way."""

from __future__ import annotations

import math

import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def check_tensor(x, name: str, *, min_dim: int = 1) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float64, float16 or bfloat16, got {x.dtype}")
    if x.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimension(s) ([T, ...]), got shape {tuple(x.shape)}")


def check_srm_params(tau_m: float, tau_s: float, tau_grad: float, v_th: float | None = None) -> None:
    for name, val in (("tau_m", tau_m), ("tau_s", tau_s), ("tau_grad", tau_grad)):
        if not isinstance(val, (int, float)) or isinstance(val, bool):
            raise TypeError(f"{name} must be a Python number, got {type(val).__name__}")
        if not (math.isfinite(val) and val > 1.0):
            raise ValueError(f"{name} must be a finite number > 1, got {val}")
    if tau_m == tau_s:
        raise ValueError(f"tau_m and tau_s must differ (the SRM kernel divides by tau_m - tau_s), got {tau_m} for both")
    if v_th is not None:
        if not isinstance(v_th, (int, float)) or isinstance(v_th, bool):
            raise TypeError(f"v_th must be a Python number, got {type(v_th).__name__}")
        if math.isnan(v_th):
            raise ValueError("v_th must not be NaN")


def check_backward_params(du_inv_clamp: float, max_dudt_inv: float) -> None:
    for name, val in (("du_inv_clamp", du_inv_clamp), ("max_dudt_inv", max_dudt_inv)):
        if not isinstance(val, (int, float)) or isinstance(val, bool):
            raise TypeError(f"{name} must be a Python number, got {type(val).__name__}")
        if not val >= 0:
            raise ValueError(f"{name} must be >= 0, got {val}")


def check_same_shape(ref: torch.Tensor, ref_name: str, **others: torch.Tensor) -> None:
    for name, t in others.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.shape != ref.shape:
            raise ValueError(f"{name} must have the shape of {ref_name} {tuple(ref.shape)}, got {tuple(t.shape)}")
        if t.device != ref.device:
            raise ValueError(f"{name} must be on {ref_name}'s device {ref.device}, got {t.device}")


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Neuron state dtype: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def srm_constants(tau_m: float, tau_s: float, tau_grad: float) -> tuple[float, float, float, float]:
    """(a_m, a_s, a_g, c) in double precision (SPEC §2)."""
    return 1.0 - 1.0 / tau_m, 1.0 - 1.0 / tau_s, 1.0 - 1.0 / tau_grad, tau_m / (tau_m - tau_s)


def srm_tables(T: int, tau_m: float, tau_s: float, tau_grad: float) -> tuple[list[float], list[float]]:
    """epsw[d] = c (a_m^(d+1) - a_s^(d+1)), epst[d] = -a_g^(d+1), d < T, in double (SPEC §3)."""
    a_m, a_s, a_g, c = srm_constants(tau_m, tau_s, tau_grad)
    epsw = [c * (a_m ** (d + 1) - a_s ** (d + 1)) for d in range(T)]
    epst = [-(a_g ** (d + 1)) for d in range(T)]
    return epsw, epst


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


def check_input_grad_scale(input_grad_scale) -> None:
    if not isinstance(input_grad_scale, (int, float)) or isinstance(input_grad_scale, bool):
        raise TypeError(f"input_grad_scale must be a Python number, got {type(input_grad_scale).__name__}")
    if not math.isfinite(input_grad_scale):
        raise ValueError(f"input_grad_scale must be finite, got {input_grad_scale}")


def check_pool_input(x, kernel: tuple[int, int]) -> None:
    check_tensor(x, "x", min_dim=3)
    if x.shape[-2] < kernel[0] or x.shape[-1] < kernel[1]:
        raise ValueError(f"x's last two dimensions {tuple(x.shape[-2:])} must be at least the kernel {kernel}")


def check_quantizer_params(bits, rounding) -> None:
    if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= 32:
        raise ValueError(f"bits must be an int in [2, 32], got {bits!r}")
    if rounding not in ("nearest", "truncate"):
        raise ValueError(f"rounding must be 'nearest' or 'truncate', got {rounding!r}")
