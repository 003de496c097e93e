"""Argument checks shared by every backend, so they all fail the same way."""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def check_tensor(x, name: str, *, min_dim: int = 1) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float64, float16 or bfloat16, got {x.dtype}")
    if x.dim() < min_dim:
        raise ValueError(f"{name} must have at least {min_dim} dimension(s) ([T, ...]), got shape {tuple(x.shape)}")


# The number checks below use comparisons only (no math.isfinite / math.isnan): under
# torch.compile a float argument can be symbolic, and a comparison of it is a guard
# Dynamo can trace, while math.* calls on it cannot be traced. NaN fails every comparison.


def _finite(val) -> bool:
    return -math.inf < val < math.inf


def check_srm_params(tau_m: float, tau_s: float, tau_grad: float, v_th: float | None = None) -> None:
    for name, val in (("tau_m", tau_m), ("tau_s", tau_s), ("tau_grad", tau_grad)):
        if not isinstance(val, (int, float)) or isinstance(val, bool):
            raise TypeError(f"{name} must be a Python number, got {type(val).__name__}")
        if not (_finite(val) and val > 1.0):
            raise ValueError(f"{name} must be a finite number > 1, got {val}")
    if tau_m == tau_s:
        raise ValueError(f"tau_m and tau_s must differ (the SRM kernel divides by tau_m - tau_s), got {tau_m} for both")
    if v_th is not None:
        if not isinstance(v_th, (int, float)) or isinstance(v_th, bool):
            raise TypeError(f"v_th must be a Python number, got {type(v_th).__name__}")
        if v_th != v_th:
            raise ValueError("v_th must not be NaN")


def check_backend_name(backend) -> None:
    """A module's `backend` argument, checked when the module is built rather than at its first call."""
    from ._backend import _check_name

    if backend is not None:
        _check_name(backend, "backend")


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


def cast_output(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`t` in `dtype`, calling ``.to`` only when it copies: for what a Python autograd.Function
    returns. The Dynamo of torch 2.11 gives wrong (zero) gradients to a Function output that a
    no-op ``.to`` or ``.contiguous`` returned, or that is a view of an intermediate (fixed by
    2.14); tests/test_compile.py checks the Functions of the package."""
    return t if t.dtype == dtype else t.to(dtype)


def check_srm_backward_dtypes(grad_spikes: torch.Tensor, spikes: torch.Tensor, du: torch.Tensor, dut: torch.Tensor) -> None:
    """srm_backward's dtype rules: spikes in the dtype of grad_spikes, du and dut in its state dtype."""
    if spikes.dtype != grad_spikes.dtype:
        raise TypeError(f"spikes must have the dtype of grad_spikes ({grad_spikes.dtype}), got {spikes.dtype}")
    if du.dtype != acc_dtype(grad_spikes.dtype) or dut.dtype != du.dtype:
        raise TypeError(
            f"du and dut must be {acc_dtype(grad_spikes.dtype)} for grad_spikes of dtype "
            f"{grad_spikes.dtype}, got {du.dtype} and {dut.dtype}"
        )


def to_acc_float(v: float, dtype: torch.dtype) -> float:
    """`v` as the kernels hold it in the neuron-state dtype of `dtype` inputs: a value beyond
    float32's range is +-inf there (for float32/float16/bfloat16 inputs), not an error."""
    v = float(v)
    if acc_dtype(dtype) == torch.float64:
        return v
    hi = torch.finfo(torch.float32).max
    return math.inf if v > hi else (-math.inf if v < -hi else v)


def srm_constants(tau_m: float, tau_s: float, tau_grad: float) -> tuple[float, float, float, float]:
    """(a_m, a_s, a_g, c) in double precision (docs/maths.md §2)."""
    return 1.0 - 1.0 / tau_m, 1.0 - 1.0 / tau_s, 1.0 - 1.0 / tau_grad, tau_m / (tau_m - tau_s)


def srm_tables(T: int, tau_m: float, tau_s: float, tau_grad: float) -> tuple[list[float], list[float]]:
    """epsw[d] = c (a_m^(d+1) - a_s^(d+1)), epst[d] = -a_g^(d+1), d < T, in double (docs/maths.md §3)."""
    a_m, a_s, a_g, c = srm_constants(tau_m, tau_s, tau_grad)
    epsw = [c * (a_m ** (d + 1) - a_s ** (d + 1)) for d in range(T)]
    epst = [-(a_g ** (d + 1)) for d in range(T)]
    return epsw, epst


# ------------------------------------------------------------- superpixel pooling (docs/maths.md §1, §5)
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
    if weight.dim() != 2 or weight.shape[1] < 2:
        raise ValueError(f"weight must be [out_features, in_features >= 2], got shape {tuple(weight.shape)}")
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


# --------------------------------------------------------------------------- single values (quantizer)
def is_real_number(v) -> bool:
    """A Python real number (bool excluded)."""
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
