"""Data-dependent initialisation of the SRM layers (docs/maths.md, "Rate initialisation").

A freshly initialised deep SRM network is often silent past its first layers, and a silent
layer has no event-driven gradient. :func:`rate_init` scales each layer's weight, one layer
after the other, until it fires at a chosen rate on a real batch (the original's
initialisation pass).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from . import _checks
from .nn._base import SRMModule
from .nn.layers import SRMConv2d, SRMLinear

__all__ = ["rate_init", "LayerRate"]


class LayerRate(NamedTuple):
    """One line of :func:`rate_init`'s report."""

    name: str
    """The layer's name in ``model.named_modules()`` (``""`` for the model itself)."""
    scale: float
    """The factor applied to its effective weight."""
    rate: float
    """Its mean spike count per neuron over all T steps on the batch, after the scaling."""


class _Captured(Exception):
    """Raised by the capture hook to stop the model's forward once the layer's input is seen."""


def _layer_input(model: nn.Module, batch, layer: nn.Module, name: str) -> torch.Tensor:
    """The input `layer` receives when `model` runs on `batch` (the forward stops there)."""
    seen = []

    def hook(module, args):
        seen.append(args[0])
        raise _Captured

    handle = layer.register_forward_pre_hook(hook)
    try:
        model(*batch) if isinstance(batch, tuple) else model(batch)
    except _Captured:
        pass
    finally:
        handle.remove()
    if not seen:
        raise RuntimeError(f"rate_init: layer {name!r} was not called by the model's forward on this batch")
    return seen[0]


def _scaled_params(layer) -> list[nn.Parameter]:
    """The tensors whose common factor scales the layer's effective weight ``W_hat``."""
    return [layer.bn_weight, layer.bn_bias] if layer.weight_norm else [layer.weight]


def _check_number(v, name: str) -> float:
    if not _checks.is_real_number(v):
        raise TypeError(f"{name} must be a Python number, got {type(v).__name__}")
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be finite and > 0, got {v}")
    return float(v)


def rate_init(
    model: nn.Module,
    batch,
    *,
    target: float = 1.0,
    low: float = 0.1,
    high: float = 100.0,
    tol: float = 1.01,
    verbose: bool = False,
) -> list[LayerRate]:
    """Scale every :class:`~snnspx.nn.SRMConv2d` and :class:`~snnspx.nn.SRMLinear` of `model`,
    in module order, so that it fires about `target` spikes per neuron over the T steps.

    For each layer: run `model` on `batch` (the layers before it already scaled) and take the
    layer's input; then search a factor ``s`` in ``[low, high]`` by geometric bisection
    (``mid = sqrt(low * high)``, until ``high / low < tol``), running the layer alone with its
    effective weight ``W_hat`` times ``mid``. With ``t0 = T * 2 // 3``, the criterion is the
    layer's mean spike count per neuron over steps ``t >= t0`` (all samples and neurons)::

        count(mid) > target / T * (T - t0) * 1.3   ->  high = mid,   else  low = mid

    (the original's: the last third of the window, where the network has settled, aimed 30 %
    above the uniform share of `target`). The last ``mid`` tried is the factor: it multiplies
    ``bn_weight`` and ``bn_bias`` (``weight_norm=True``, whose ``W_hat`` is linear in them)
    or ``weight``. Where ``high / low < tol`` from the start, the factor is ``sqrt(low * high)``.

    Everything runs under :func:`torch.no_grad` with `model` in eval mode (dropout off,
    quantizer ranges frozen: with ``weight_bits`` the search sees the quantizer's current
    scale); each module's train/eval mode is restored afterwards. No randomness is drawn:
    the same model and batch give the same factors.

    Args:
        model: any module; its SRM layers are found with ``named_modules()`` (a layer used
            twice is initialised once, on the input of its first call).
        batch: the model's input; a tuple is unpacked into positional arguments.
        target: spikes per neuron over the T steps to aim for (> 0). Default 1.0.
        low, high: the search interval of the factor, ``0 < low < high``. Defaults 0.1, 100.
        tol: stop when ``high / low < tol`` (> 1). Default 1.01.
        verbose: print one line per layer.

    Returns:
        a list of :class:`LayerRate` ``(name, scale, rate)``, one per layer, in module order.

    Raises:
        RuntimeError: naming the layer, if even the factor `high` leaves it below the
            criterion (its input is too sparse, or it is silent), or if the model's forward
            does not call it. The layers before it keep their new scale.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    target = _check_number(target, "target")
    low, high = _check_number(low, "low"), _check_number(high, "high")
    if not low < high:
        raise ValueError(f"low must be below high, got low={low}, high={high}")
    tol = _check_number(tol, "tol")
    if not tol > 1:
        raise ValueError(f"tol must be > 1, got {tol}")
    _checks.check_flag(verbose, "verbose")
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, (SRMConv2d, SRMLinear))]
    srm = [m for m in model.modules() if isinstance(m, SRMModule)]
    if any(m.step_mode != "multi" for m in srm):
        raise ValueError("rate_init runs whole sequences: give it a model whose SRM modules have step_mode='multi'")
    modes = {m: m.training for m in model.modules()}
    carried = {m: (m.stateful, m.state) for m in srm}  # every trial run starts from zeros
    report = []
    try:
        for m in srm:
            m.stateful, m.state = False, None
        model.eval()
        with torch.no_grad():
            for name, layer in layers:
                report.append(_init_layer(model, batch, name, layer, target, low, high, tol))
                if verbose:
                    print(f"rate_init: {name or type(layer).__name__}: scale {report[-1].scale:.4g}, "
                          f"{report[-1].rate:.4g} spikes per neuron over the window")
    finally:
        for m, training in modes.items():
            m.training = training
        for m, (stateful, state) in carried.items():
            m.stateful, m.state = stateful, state
    return report


def _init_layer(model, batch, name, layer, target, low, high, tol) -> LayerRate:
    x = _layer_input(model, batch, layer, name)
    params = _scaled_params(layer)
    originals = [p.detach().clone() for p in params]

    def run(scale: float) -> tuple[float, float]:
        """(spikes per neuron over t >= t0, over all steps) with W_hat times `scale`."""
        for p, p0 in zip(params, originals):
            p.copy_(p0 * scale)
        out = layer(x)
        out = out.transpose(0, 1) if layer.batch_first else out  # [T, B, ...]
        n = max(out[0].numel(), 1)
        return float(out[t0:].sum()) / n, float(out.sum()) / n

    label = name or type(layer).__name__
    T = x.shape[1] if layer.batch_first else x.shape[0]
    if T < 1:
        raise RuntimeError(f"rate_init: layer {label!r} receives an input with no time steps, shape {tuple(x.shape)}")
    t0 = T * 2 // 3
    goal = target / T * (T - t0) * 1.3
    at_high = run(high)[0]
    if not at_high > goal:
        for p, p0 in zip(params, originals):
            p.copy_(p0)
        raise RuntimeError(
            f"rate_init: layer {label!r} cannot reach the target: with its weight scaled by high={high} it fires "
            f"{at_high:.4g} spikes per neuron over steps >= {t0}, and needs more than {goal:.4g} "
            f"(target={target}, T={T}). Raise `high` or lower `target`, or check that its input has spikes."
        )
    mid, rate = math.sqrt(low * high), None
    while high / low >= tol:
        mid = math.sqrt(low * high)
        late, rate = run(mid)  # leaves the parameters at this factor
        if late > goal:
            high = mid
        else:
            low = mid
    if rate is None:  # the interval was narrower than tol from the start
        rate = run(mid)[1]
    return LayerRate(name, mid, rate)
