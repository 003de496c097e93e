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
