"""Layers of snnspx: thin modules over :mod:`snnspx.functional`."""

from .layers import SpikeAvgPool2d, SRMConv2d, SRMLinear
from .neuron import SRMNeuron
from .suppix import SupPixPool, SupPixUnpool
from .fused import SRMSupPixPool
from .quantizer import Quantizer
from .dropout import SpikeDropout
from ._base import SRMModule
from ._constants import LearnableConstants


def reset_state(model) -> None:
    """Forget the carried state of every SRM module in `model` (``stateful=True`` modules,
    :class:`SRMModule`): the next call of each starts a new sequence from zeros."""
    for m in model.modules():
        if isinstance(m, SRMModule):
            m.reset_state()


def detach_state(model) -> None:
    """Cut the gradient history of every carried state in `model`, keeping its values: call it
    after each ``backward`` of a stateful surrogate-mode model trained chunk by chunk."""
    for m in model.modules():
        if isinstance(m, SRMModule):
            m.detach_state()


__all__ = [
    "SRMNeuron", "SRMConv2d", "SRMLinear", "SpikeAvgPool2d", "Quantizer", "SupPixPool", "SupPixUnpool", "SRMSupPixPool",
    "SpikeDropout", "SRMModule", "LearnableConstants", "reset_state", "detach_state",
]
