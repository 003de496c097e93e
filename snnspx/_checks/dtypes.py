"""Dtype policy: which dtypes the ops take, and the dtype the neuron state and sums use."""

from __future__ import annotations

import math

import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Neuron state dtype: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def cast_output(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`t` in `dtype`, calling ``.to`` only when it copies: what a Python autograd.Function
    returns must not come from a no-op ``.to`` or ``.contiguous`` (the Dynamo of torch 2.11, the
    oldest PyTorch snnspx compiles with, gives such outputs zero gradients)."""
    return t if t.dtype == dtype else t.to(dtype)


def to_acc_float(v: float, dtype: torch.dtype) -> float:
    """`v` as the kernels hold it in the neuron-state dtype of `dtype` inputs: a value beyond
    float32's range is +-inf there (for float32/float16/bfloat16 inputs), not an error."""
    v = float(v)
    if acc_dtype(dtype) == torch.float64:
        return v
    hi = torch.finfo(torch.float32).max
    return math.inf if v > hi else (-math.inf if v < -hi else v)

